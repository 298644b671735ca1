import AioKit
import Glibc
import Synchronization
import Testing

// Specs/Handle.md: the handle's lifecycle, the provider protocol, timeouts and
// sleep ([AIO-1]..[AIO-30]). [AIO-1] and [AIO-28] name traps; their tests check
// the side of the boundary that must not trap (chaining from a callback, and a
// provider that finishes exactly once while its cancel routine races).
//
// Callbacks run on AioKit's threads, so they only record what they see (in
// Counter, Box, Gate); every expectation is checked on the test's thread.

// MARK: - Helpers (private to this file)

/// The calling thread's id.
private func threadID() -> UInt { UInt(pthread_self()) }

/// True when the process runs under ThreadSanitizer: the stress loops are
/// shortened there (TSan makes every atomic and lock many times slower).
private let underThreadSanitizer: Bool = {
    guard let me = dlopen(nil, RTLD_NOW) else { return false }
    defer { dlclose(me) }
    return dlsym(me, "__tsan_init") != nil
}()

/// Rounds of the exactly-once races, and the length of the long chains.
private let raceRounds = underThreadSanitizer ? 2_500 : 5_000
private let chainLength = underThreadSanitizer ? 250_000 : 1_000_000

/// A one-shot gate a callback (or a provider) can block on, boundedly.
private final class Gate: Sendable {
    private let opened = Counter()
    func open() { opened.increment() }
    var isOpen: Bool { opened.count > 0 }
    /// Blocks until the gate is open (at most `seconds`); returns whether it is.
    @discardableResult func pass(within seconds: Double = 10) -> Bool { eventually(within: seconds) { isOpen } }
}

/// What the callbacks of one handle (or one operation) saw.
private final class Outcome: Sendable {
    let calls = Counter()
    let error = Box<AioError?>(nil)
    let count = Box<Int>(-1)
    let thread = Box<UInt>(0)
    let errors = Box<[AioError?]>([])

    func record(_ h: AioHandle) {
        let e = h.error
        error.value = e
        count.value = h.count
        thread.value = threadID()
        errors.mutate { $0.append(e) }
        calls.increment()
    }
}

/// One operation of a minimal custom provider. It follows the provider
/// protocol: the operation ends exactly once, by whichever of the provider's
/// own completion or its cancel routine claims it first (an atomic flag).
private final class Op: Sendable {
    enum OnCancel: Sendable {
        /// Finish with the cancel error through the pool.
        case finish
        /// Finish with the cancel error on the canceling thread.
        case finishSync
        /// Only record the call; the test finishes the operation itself.
        case record
    }

    private let claimed = Atomic<Bool>(false)
    let cancelCalls = Counter()
    let cancelError = Box<AioError?>(nil)
    let cancelThread = Box<UInt>(0)
    /// Set by the cancel routine when a call into the handle from inside it returned.
    let cancelTouchedHandle = Counter()

    /// Claims the operation; true for the one caller that may finish it.
    func claim() -> Bool { !claimed.exchange(true, ordering: .acquiringAndReleasing) }

    /// Starts the operation on `h`; false when the start was refused (the
    /// provider then does nothing more, [AIO-12]).
    @discardableResult
    func start(_ h: AioHandle, onCancel mode: OnCancel = .finish, touchHandle: Bool = false) -> Bool {
        let started = h.start(onCancel: { [self] h, e in
            cancelThread.value = threadID()
            cancelError.value = e
            cancelCalls.increment()
            if touchHandle {
                // Deadlocks if the caller still held the handle's lock ([AIO-13], [DL-7]).
                _ = h.isBusy
                _ = h.error
                cancelTouchedHandle.increment()
            }
            switch mode {
            case .finish: if claim() { h.finish(e) }
            case .finishSync: if claim() { h.finishSync(e) }
            case .record: break
            }
        })
        if !started { _ = claim() }
        return started
    }

    /// The provider's own completion; false if the cancel routine got there first.
    @discardableResult
    func complete(_ h: AioHandle, _ error: AioError? = nil, count: Int = 0, sync: Bool = false) -> Bool {
        guard claim() else { return false }
        if sync { h.finishSync(error, count: count) } else { h.finish(error, count: count) }
        return true
    }
}

/// A pthread barrier (the blocking kind: fair to a loaded 2-core machine).
private final class Barrier: @unchecked Sendable {  // the pthread barrier is its own guard
    private let barrier: UnsafeMutablePointer<pthread_barrier_t>
    init(_ count: Int) {
        barrier = .allocate(capacity: 1)
        barrier.initialize(to: pthread_barrier_t())
        pthread_barrier_init(barrier, nil, UInt32(count))
    }
    deinit {
        pthread_barrier_destroy(barrier)
        barrier.deinitialize(count: 1)
        barrier.deallocate()
    }
    func wait() { _ = pthread_barrier_wait(barrier) }
}

/// Runs `rounds` rounds on `threads` threads. In each round thread 0 runs
/// `setup(round)` while the others wait, then every thread runs
/// `body(thread, round)` at once; the next round starts when all are done.
private func inRounds(
    _ rounds: Int, threads: Int, setup: @escaping @Sendable (Int) -> Void,
    _ body: @escaping @Sendable (_ thread: Int, _ round: Int) -> Void
) {
    let barrier = Barrier(threads)
    concurrently(threads) { t in
        for r in 0..<rounds {
            if t == 0 { setup(r) }
            barrier.wait()
            body(t, r)
            barrier.wait()
        }
    }
}

/// A varying delay before a racer acts: none in half of the rounds, else a
/// busy wait of up to ~150 µs, so that every racer (the 50 µs timeout
/// included) wins some rounds.
private func jitter(_ thread: Int, _ round: Int) {
    var x = UInt64(truncatingIfNeeded: round &* 7919 &+ thread &* 104_729) | 1
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    guard x & 1 == 0 else { return }
    let until = now() + Double((x >> 1) % 150) / 1_000_000
    while now() < until {}
}

/// A weak reference to a handle, to see it freed.
private final class WeakHandle: @unchecked Sendable {  // only touched by the test's thread
    weak var handle: AioHandle?
}

/// Every error AioError names, and one system error.
private let allErrors: [AioError] = [
    .timedOut, .canceled, .stopped, .closed, .invalidArgument, .busy,
    .connectionRefused, .connectionReset, .connectionShutdown, .connectionAborted,
    .addressInUse, .addressInvalid, .unreachable, .tooManyOpenFiles, .noMemory, .notSupported,
    .system(errno: ENOENT),
]

// MARK: - Tests

@Suite("Handle: lifecycle, provider protocol, timeouts (Specs/Handle.md)")
struct HandleTests {

    // MARK: [AIO-1] chaining (the non-trapping side of one-operation-at-a-time)

    @Test("[AIO-1] [AIO-7] a callback may start the next operation on its own handle (chaining)")
    func chainFromCallback() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let startedInCallback = Counter()
        let h = AioHandle(runtime: rt) { h in
            o.record(h)
            if o.calls.count < 5 {
                let op = Op()
                if op.start(h) { startedInCallback.increment() }
                op.complete(h, count: o.calls.count)
            }
        }
        let op = Op()
        #expect(op.start(h))
        op.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.calls.count == 5)
        #expect(startedInCallback.count == 4)
        #expect(o.errors.value == [nil, nil, nil, nil, nil])
        #expect(h.count == 4)
        #expect(!h.isBusy)
    }

    @Test("[AIO-1] [AIO-8] [AIO-31] an operation may start while the previous callback runs; its callback waits for that one")
    func startWhileCallbackRunning() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let gate = Gate()
        let entered = Gate()
        let o = Outcome()
        let threads = Box<[UInt]>([])
        let h = AioHandle(runtime: rt) { h in
            let first = o.calls.count == 0
            o.record(h)
            threads.mutate { $0.append(threadID()) }
            if first {
                entered.open()
                gate.pass()
            }
        }
        let op1 = Op()
        #expect(op1.start(h))
        op1.complete(h, count: 1)
        #expect(entered.pass())
        // The first callback is running (blocked on the gate): a new start is allowed.
        let op2 = Op()
        #expect(op2.start(h))
        #expect(h.isBusy)
        op2.complete(h, count: 2)
        sleepMillis(50)
        // The second completion waits for the first callback: they never overlap ([AIO-31]).
        #expect(o.calls.count == 1)
        #expect(h.isBusy)
        gate.open()
        #expect(finishes(within: 10) { h.wait() })
        #expect(!h.isBusy)
        #expect(o.calls.count == 2)
        #expect(o.errors.value == [nil, nil])
        // The deferred callback ran right after, on the same task thread.
        #expect(threads.value.count == 2 && threads.value[0] == threads.value[1])
    }

    @Test("[AIO-31] [DL-1] a chained completion runs after its predecessor's callback; wait() inside it returns at once")
    func chainedCallbackDoesNotOverlap() throws {
        // The first callback chains a 1 ms sleep and stays 50 ms longer; the
        // sleep's callback must not start before the first returns, and its
        // wait() on its own handle must return at once ([DL-1]).
        let rt = try makeRuntime(taskThreads: 2)
        let calls = Counter()
        let inside = Counter()
        let overlaps = Counter()
        let secondWaited = Gate()
        let h = AioHandle(runtime: rt) { h in
            if inside.increment() != 1 { overlaps.increment() }
            let n = calls.increment()
            if n == 1 {
                h.sleep(.milliseconds(1))
                sleepMillis(50)
            } else if n == 2 {
                h.wait()
                secondWaited.open()
            }
            inside.decrement()
        }
        h.sleep(.zero)
        let ok = finishes(within: 10) { h.wait() }
        #expect(ok, "wait() inside the chained callback did not return: the callback waits for itself")
        #expect(secondWaited.isOpen)
        #expect(calls.count == 2)
        #expect(overlaps.count == 0, "two callbacks of one handle ran at once")
        if ok { rt.shutdown() }
    }

    @Test("[AIO-31] [AIO-4] [AIO-7] finishSync while the callback runs elsewhere defers; a later wait() on that thread still waits")
    func finishSyncDefersBehindRunningCallback() throws {
        let rt = try makeRuntime(taskThreads: 1)
        let calls = Counter()
        let chained = Gate()
        let firstMayReturn = Gate()
        let firstThread = Box<UInt>(0)
        let secondThread = Box<UInt>(0)
        let op2 = Op()
        let h = AioHandle(runtime: rt) { h in
            let n = calls.increment()
            if n == 1 {
                firstThread.value = threadID()
                op2.start(h)
                chained.open()
                firstMayReturn.pass()
            } else if n == 2 {
                secondThread.value = threadID()
            }
        }
        let op1 = Op()
        #expect(op1.start(h))
        op1.complete(h)
        #expect(chained.pass())
        op2.complete(h, sync: true)  // the first callback still runs on W: this one is deferred
        #expect(calls.count == 1)
        firstMayReturn.open()
        #expect(finishes(within: 10) { h.wait() })
        #expect(calls.count == 2)
        #expect(secondThread.value == firstThread.value)  // ran after it, on its thread
        // A new operation in flight on h, and a callback on W that waits for it.
        let op3 = Op()
        #expect(op3.start(h))
        let busyAfterWait = Box<Bool?>(nil)
        let g = AioHandle(runtime: rt) { _ in
            h.wait()
            busyAfterWait.value = h.isBusy
        }
        let opG = Op()
        #expect(opG.start(g))
        opG.complete(g)  // its callback runs on the only task thread
        sleepMillis(100)
        let early = busyAfterWait.value
        op3.complete(h)
        #expect(finishes(within: 10) { g.wait() })
        #expect(early == nil, "wait() returned while the handle's operation was still in flight")
        #expect(busyAfterWait.value == false)
        #expect(finishes(within: 10) { h.wait() })
        rt.shutdown()
    }

    // Starting while the previous operation's completion is still queued (its
    // callback has not begun) traps by design ([AIO-1]): the handle has one
    // result, which the queued callback has yet to read. That is not testable
    // in-process; a refused start after the callback began is allowed:
    @Test("[AIO-1] [AIO-12] a refused start from inside the callback runs the callback again, once")
    func refusedStartFromCallback() throws {
        let rt = try makeRuntime(taskThreads: 1)
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in
            o.record(h)
            if o.calls.count < 3 { _ = h.start(onCancel: nil) }  // refused: stopped
        }
        h.close()
        #expect(!Op().start(h))
        #expect(eventually(within: 10) { o.calls.count == 3 })
        #expect(finishes(within: 10) { h.wait() })
        sleepMillis(20)
        #expect(o.calls.count == 3)
        #expect(o.errors.value == [.stopped, .stopped, .stopped])
        rt.shutdown()
    }

    // MARK: [AIO-2] exactly once, whatever ends the operation

    enum Ending: String, CaseIterable, Sendable {
        case success, error, finishSync, timeout, cancel, abort, stop, close, reap, shutdown
        case refusedStopped, refusedAbort, refusedZeroTimeout, refusedExpired, refusedShutDownRuntime

        var expected: AioError? {
            switch self {
            case .success, .finishSync: return nil
            case .error: return .connectionRefused
            case .timeout, .refusedZeroTimeout, .refusedExpired: return .timedOut
            case .cancel: return .canceled
            case .abort: return .connectionReset
            case .stop, .close, .reap, .shutdown, .refusedStopped, .refusedShutDownRuntime: return .stopped
            case .refusedAbort: return .connectionAborted
            }
        }

        var refused: Bool { rawValue.hasPrefix("refused") }
    }

    @Test("[AIO-2] [AIO-12] the callback runs exactly once whatever ended the operation", arguments: Ending.allCases)
    func exactlyOnce(_ ending: Ending) throws {
        let rt = try makeRuntime()
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        let op = Op()
        let started: Bool
        switch ending {
        case .success:
            started = op.start(h)
            op.complete(h)
        case .error:
            started = op.start(h)
            op.complete(h, .connectionRefused)
        case .finishSync:
            started = op.start(h)
            op.complete(h, sync: true)
        case .timeout:
            h.timeout = .after(.milliseconds(5))
            started = op.start(h)
        case .cancel:
            started = op.start(h)
            h.cancel()
        case .abort:
            started = op.start(h)
            h.abort(.connectionReset)
        case .stop:
            started = op.start(h)
            #expect(finishes(within: 10) { h.stop() })
        case .close:
            started = op.start(h)
            h.close()
        case .reap:
            started = op.start(h)
            h.reap()
        case .shutdown:
            started = op.start(h)
            rt.shutdown()
        case .refusedStopped:
            h.close()
            started = op.start(h)
        case .refusedAbort:
            h.abort(.connectionAborted)
            started = op.start(h)
        case .refusedZeroTimeout:
            h.timeout = .after(.zero)
            started = op.start(h)
        case .refusedExpired:
            h.setExpiration(.now - .milliseconds(1))
            started = op.start(h)
        case .refusedShutDownRuntime:
            rt.shutdown()
            started = op.start(h)
        }
        #expect(started == !ending.refused)
        #expect(eventually(within: 10) { o.calls.count >= 1 })
        sleepMillis(20)  // room for a second callback, which must never come
        #expect(o.calls.count == 1)
        #expect(o.error.value == ending.expected)
        #expect(finishes(within: 10) { h.wait() })
        #expect(!h.isBusy)
        rt.shutdown()
    }

    // MARK: [AIO-3] [AIO-4] where the callback runs

    @Test("[AIO-3] [POOL-1] finish() from other threads runs the callback on one of the runtime's task threads")
    func finishRunsOnTaskThread() throws {
        let rt = try makeRuntime(taskThreads: 2)
        defer { rt.shutdown() }
        let onCaller = Counter()
        let done = Counter()
        let callbackThreads = Box<Set<UInt>>([])
        concurrently(4) { _ in
            let me = threadID()
            for _ in 0..<50 {
                let h = AioHandle(runtime: rt) { _ in
                    let t = threadID()
                    if t == me { onCaller.increment() }
                    callbackThreads.mutate { $0.insert(t) }
                    done.increment()
                }
                let op = Op()
                if op.start(h) { op.complete(h) }
                h.wait()
            }
        }
        // And from the test's own thread.
        let me = threadID()
        let h = AioHandle(runtime: rt) { _ in
            if threadID() == me { onCaller.increment() }
            callbackThreads.mutate { $0.insert(threadID()) }
            done.increment()
        }
        let op = Op()
        #expect(op.start(h))
        op.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        #expect(done.count == 201)
        #expect(onCaller.count == 0)
        // Never blocked, the pool keeps its 2 task threads: every callback ran on one of them.
        #expect(callbackThreads.value.count >= 1 && callbackThreads.value.count <= 2)
    }

    @Test("[AIO-3] finish() called inside a callback does not run the next callback inside the call")
    func finishInsideCallbackDefers() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let firstThread = Box<UInt>(0)  // the thread running the first callback, 0 once it returned
        let nested = Counter()
        let calls = Counter()
        let h = AioHandle(runtime: rt) { h in
            let n = calls.increment()
            if n == 1 {
                firstThread.value = threadID()
                let op = Op()
                if op.start(h) { op.complete(h) }
                firstThread.value = 0
            } else if firstThread.value == threadID() {
                nested.increment()  // run on the same thread while the first callback was still inside finish()
            }
        }
        let op = Op()
        #expect(op.start(h))
        op.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        #expect(calls.count == 2)
        #expect(nested.count == 0)
    }

    @Test("[AIO-4] finishSync() runs the callback on the calling thread before it returns")
    func finishSyncRunsInline() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        // From the test's thread.
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        let op = Op()
        #expect(op.start(h))
        op.complete(h, nil, count: 3, sync: true)
        #expect(o.calls.count == 1)
        #expect(o.thread.value == threadID())
        #expect(o.count.value == 3)
        #expect(!h.isBusy)
        // From another thread, many times.
        let wrong = Counter()
        concurrently(2) { _ in
            for i in 0..<200 {
                let seen = Outcome()
                let g = AioHandle(runtime: rt) { g in seen.record(g) }
                let op = Op()
                guard op.start(g) else {
                    wrong.increment()
                    continue
                }
                op.complete(g, .connectionReset, count: i, sync: true)
                if seen.calls.count != 1 || seen.thread.value != threadID() || seen.count.value != i
                    || seen.error.value != .connectionReset || g.isBusy
                {
                    wrong.increment()
                }
            }
        }
        #expect(wrong.count == 0)
    }

    @Test("[AIO-4] [DL-1] finishSync() from inside another handle's callback runs the callback nested there")
    func finishSyncNested() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let inner = Outcome()
        let innerHandle = AioHandle(runtime: rt) { h in
            inner.record(h)
            h.wait()  // its own callback: returns at once ([DL-1])
        }
        let outerSaw = Box<Int>(-1)
        let outerThread = Box<UInt>(0)
        let outer = AioHandle(runtime: rt) { _ in
            outerThread.value = threadID()
            let op = Op()
            if op.start(innerHandle) { op.complete(innerHandle, count: 9, sync: true) }
            outerSaw.value = inner.calls.count
        }
        let op = Op()
        #expect(op.start(outer))
        op.complete(outer)
        #expect(finishes(within: 10) { outer.wait() })
        #expect(outerSaw.value == 1)
        #expect(inner.thread.value == outerThread.value)
        #expect(inner.count.value == 9)
    }

    // MARK: [AIO-5] results and visibility

    @Test("[AIO-5] error, count, outputs and buffer contents written by the provider are visible in the callback and after wait()")
    func resultsVisible() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        let seenBytes = Box<[UInt8]>([])
        let seenOutputs = Box<[String]>([])
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in
            let b = h.iov[0].buffer
            seenBytes.value = (0..<8).map { b[$0] }
            seenOutputs.value = [
                h.output(0).map { "\($0)" } ?? "nil", h.output(1).map { "\($0)" } ?? "nil",
                h.output(3).map { "\($0)" } ?? "nil",
            ]
            o.record(h)
        }
        try h.setIOV([AioIOV(buffer)])
        let op = Op()
        #expect(op.start(h))
        // The provider runs on a thread of its own.
        concurrently(1) { _ in
            let b = h.iov[0].buffer
            for i in 0..<8 { b[i] = UInt8(0xA0 + i) }
            h.setOutput(0, "done")
            h.setOutput(3, 42)
            op.complete(h, nil, count: 8)
        }
        #expect(finishes(within: 10) { h.wait() })
        let expectedBytes: [UInt8] = (0..<8).map { UInt8(0xA0 + $0) }
        #expect(o.calls.count == 1)
        #expect(o.error.value == nil)
        #expect(o.count.value == 8)
        #expect(seenBytes.value == expectedBytes)
        #expect(seenOutputs.value == ["done", "nil", "42"])
        // After wait(), on the waiting thread.
        #expect(h.error == nil)
        #expect(h.count == 8)
        #expect(h.output(0) as? String == "done")
        #expect(h.output(3) as? Int == 42)
        #expect((0..<8).map { buffer[$0] } == expectedBytes)

        // A failed operation reports its error and the count the provider gave.
        let op2 = Op()
        #expect(op2.start(h))
        concurrently(1) { _ in op2.complete(h, .connectionAborted, count: 2) }
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.error.value == .connectionAborted)
        #expect(o.count.value == 2)
        #expect(h.error == .connectionAborted)
        #expect(h.count == 2)
    }

    // MARK: [AIO-6] [AIO-7] [AIO-8] wait and busy

    @Test("[AIO-6] wait() returns at once on a handle never started and on one whose operations are done")
    func waitIdle() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let fresh = AioHandle(runtime: rt) { _ in }
        #expect(finishes(within: 5) { fresh.wait() })
        let noCallback = AioHandle(runtime: rt)
        #expect(finishes(within: 5) { noCallback.wait() })
        #expect(!fresh.isBusy && !noCallback.isBusy)

        let calls = Counter()
        let used = AioHandle(runtime: rt) { _ in calls.increment() }
        used.sleep(.milliseconds(1))
        #expect(eventually(within: 10) { calls.count == 1 && !used.isBusy })
        #expect(finishes(within: 5) { used.wait() })
        #expect(finishes(within: 5) { used.wait() })
    }

    @Test("[AIO-7] wait() returns only after the callback and everything it chained have returned")
    func waitCoversChainedCallbacks() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let calls = Counter()
        let lastReturned = Counter()
        let h = AioHandle(runtime: rt) { h in
            let n = calls.increment()
            if n < 5 {
                h.sleep(.milliseconds(2))
            } else {
                sleepMillis(50)
                lastReturned.increment()  // the very end of the last callback
            }
        }
        h.sleep(.milliseconds(2))
        let returnedAtWait = Box<Int>(-1)
        let callsAtWait = Box<Int>(-1)
        #expect(
            finishes(within: 10) {
                h.wait()
                returnedAtWait.value = lastReturned.count
                callsAtWait.value = calls.count
            })
        #expect(callsAtWait.value == 5)
        #expect(returnedAtWait.value == 1)

        // A handle without a callback: wait() covers the operation itself.
        let plain = AioHandle(runtime: rt)
        let op = Op()
        #expect(op.start(plain))
        let finishedAt = Box<Double>(0)
        let waitedUntil = Box<Double>(0)
        concurrently(2) { i in
            if i == 0 {
                sleepMillis(50)
                finishedAt.value = now()
                op.complete(plain, .connectionReset, count: 1)
            } else {
                plain.wait()
                waitedUntil.value = now()
            }
        }
        #expect(waitedUntil.value >= finishedAt.value)
        #expect(plain.error == .connectionReset)
    }

    @Test("[AIO-8] isBusy is true from the start until the callback has returned, refused starts included")
    func busyFlag() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let gate = Gate()
        let entered = Gate()
        let busyInside = Box<Bool>(false)
        let h = AioHandle(runtime: rt) { h in
            busyInside.value = h.isBusy
            entered.open()
            gate.pass()
        }
        #expect(!h.isBusy)
        let op = Op()
        #expect(op.start(h))
        #expect(h.isBusy)
        sleepMillis(5)
        #expect(h.isBusy)
        op.complete(h)
        #expect(entered.pass())
        #expect(h.isBusy)  // its callback is still running
        gate.open()
        #expect(finishes(within: 10) { h.wait() })
        #expect(!h.isBusy)
        #expect(busyInside.value)

        // A refused start keeps the handle busy until its callback has returned too.
        let gate2 = Gate()
        let entered2 = Gate()
        let g = AioHandle(runtime: rt) { _ in
            entered2.open()
            gate2.pass()
        }
        g.close()
        #expect(!Op().start(g))
        #expect(entered2.pass())
        #expect(g.isBusy)
        gate2.open()
        #expect(finishes(within: 10) { g.wait() })
        #expect(!g.isBusy)
    }

    // MARK: [AIO-9] [AIO-10] [AIO-11] slots, iov, reset

    @Test("[AIO-9] a handle has 4 input and 4 output slots; other indices are refused or read as nil")
    func slots() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let h = AioHandle(runtime: rt) { _ in }
        for i in 0..<4 { #expect(h.input(i) == nil && h.output(i) == nil) }
        for i in 0..<4 { try h.setInput(i, "in\(i)") }
        for i in 0..<4 { #expect(h.input(i) as? String == "in\(i)") }
        for bad in [-1, 4, 5, Int.max, Int.min] {
            #expect(throws: AioError.invalidArgument) { try h.setInput(bad, 1) }
            #expect(h.input(bad) == nil)
            #expect(h.output(bad) == nil)
        }
        try h.setInput(2, nil)
        #expect(h.input(2) == nil)
        #expect(h.input(1) as? String == "in1")
        // Outputs 0..<4 (a provider's side; out of range would trap, [AIO-9]).
        let op = Op()
        #expect(op.start(h))
        for i in 0..<4 { h.setOutput(i, i * 10) }
        op.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        for i in 0..<4 { #expect(h.output(i) as? Int == i * 10) }
        #expect(h.output(4) == nil)
    }

    @Test("[AIO-10] setIOV takes up to 8 buffers; 9 throw .invalidArgument and leave the list as it was")
    func iovLimit() throws {
        #expect(AioHandle.maxIOV == 8)
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let h = AioHandle(runtime: rt) { _ in }
        #expect(h.iov.isEmpty)
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 9 * 16, alignment: 16)
        defer { memory.deallocate() }
        let buffers = (0..<9).map { AioIOV(UnsafeMutableRawBufferPointer(rebasing: memory[($0 * 16)..<($0 * 16 + 16)])) }
        try h.setIOV(Array(buffers[0..<3]))
        #expect(h.iov.count == 3)
        try h.setIOV(Array(buffers[0..<8]))
        #expect(h.iov.count == 8)
        #expect(throws: AioError.invalidArgument) { try h.setIOV(buffers) }
        #expect(h.iov.count == 8)
        #expect(h.iov.map { $0.buffer.baseAddress } == buffers[0..<8].map { $0.buffer.baseAddress })
        try h.setIOV([])
        #expect(h.iov.isEmpty)
    }

    @Test("[AIO-11] reset() clears the result, count and outputs and keeps the inputs, iov and timeout")
    func resetClears() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let h = AioHandle(runtime: rt) { _ in }
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 32, alignment: 8)
        defer { memory.deallocate() }
        try h.setInput(0, "kept")
        try h.setInput(3, 7)
        try h.setIOV([AioIOV(memory)])
        h.timeout = .after(.seconds(30))
        let op = Op()
        #expect(op.start(h))
        h.setOutput(1, "out")
        op.complete(h, .connectionReset, count: 11)
        #expect(finishes(within: 10) { h.wait() })
        #expect(h.error == .connectionReset && h.count == 11 && h.output(1) as? String == "out")
        h.reset()
        #expect(h.error == nil)
        #expect(h.count == 0)
        #expect(h.output(1) == nil)
        #expect(h.input(0) as? String == "kept")
        #expect(h.input(3) as? Int == 7)
        #expect(h.iov.count == 1 && h.iov[0].buffer.baseAddress == memory.baseAddress)
        #expect(h.timeout == .after(.seconds(30)))
        // And the handle is usable again.
        let op2 = Op()
        #expect(op2.start(h))
        op2.complete(h, count: 1)
        #expect(finishes(within: 10) { h.wait() })
        #expect(h.error == nil && h.count == 1)
    }

    // MARK: [AIO-12] refused starts

    enum Refusal: String, CaseIterable, Sendable {
        case stoppedHandle, shutDownRuntime, rememberedAbort, zeroTimeout, negativeTimeout, passedExpiration

        var expected: AioError {
            switch self {
            case .stoppedHandle, .shutDownRuntime: return .stopped
            case .rememberedAbort: return .addressInUse
            case .zeroTimeout, .negativeTimeout, .passedExpiration: return .timedOut
            }
        }
    }

    @Test("[AIO-12] a refused start returns false and completes the operation at once through the task pool", arguments: Refusal.allCases)
    func refusedStart(_ refusal: Refusal) throws {
        let rt = try makeRuntime()
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        switch refusal {
        case .stoppedHandle: h.stop()
        case .shutDownRuntime: rt.shutdown()
        case .rememberedAbort: h.abort(.addressInUse)
        case .zeroTimeout: h.timeout = .after(.zero)
        case .negativeTimeout: h.timeout = .after(.milliseconds(-10))
        case .passedExpiration: h.setExpiration(.now - .seconds(1))
        }
        let op = Op()
        let t0 = now()
        #expect(!op.start(h))
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(now() - t0 < 5)
        #expect(o.error.value == refusal.expected)
        #expect(o.thread.value != threadID())  // through the pool, not inline
        // The operation is over: an abort now reaches no cancel routine.
        h.cancel()
        sleepMillis(10)
        #expect(op.cancelCalls.count == 0)
        #expect(o.calls.count == 1)
        #expect(finishes(within: 10) { h.wait() })
        rt.shutdown()
    }

    @Test("[AIO-12] a sleep on a stopped handle, or on a shut-down runtime's handle, ends with .stopped")
    func refusedSleep() throws {
        let rt = try makeRuntime()
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        h.stop()
        h.sleep(.seconds(60))
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == .stopped)
        rt.shutdown()
        let o2 = Outcome()
        let g = AioHandle(runtime: rt) { h in o2.record(h) }  // made after the shutdown
        g.sleep(.seconds(60))
        #expect(eventually(within: 10) { o2.calls.count == 1 })
        #expect(o2.error.value == .stopped)
    }

    // MARK: [AIO-13] .. [AIO-16] abort and cancel

    @Test("[AIO-13] [DL-7] abort calls the cancel routine once, on the aborting thread, outside every lock")
    func abortCallsRoutineOnce() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        h.timeout = .after(.milliseconds(30))
        let op = Op()
        #expect(op.start(h, onCancel: .record, touchHandle: true))
        let aborted = finishes(within: 5) { h.abort(.connectionReset) }
        #expect(aborted, "the cancel routine could not touch the handle: abort held its lock")
        #expect(op.cancelCalls.count == 1)
        #expect(op.cancelTouchedHandle.count == 1)
        #expect(op.cancelError.value == .connectionReset)
        // A second abort, a cancel and the timeout find no routine.
        h.abort(.closed)
        h.cancel()
        sleepMillis(100)
        #expect(op.cancelCalls.count == 1)
        #expect(h.isBusy)  // the provider has not finished yet
        // The provider finishes with the error it was given.
        op.complete(h, op.cancelError.value)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.calls.count == 1)
        #expect(o.error.value == .connectionReset)
        #expect(op.cancelCalls.count == 1)
    }

    @Test("[AIO-13] abort with a custom error: the cancel routine finishes with it, seen in the callback")
    func abortCustomError() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        let op = Op()
        #expect(op.start(h))
        let me = threadID()
        h.abort(.connectionReset)
        #expect(op.cancelThread.value == me)  // called on the aborting thread, before abort returned
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == .connectionReset)
        #expect(op.cancelCalls.count == 1)
        // Also with finishSync from inside the routine ([DL-7]): the callback runs in abort().
        let o2 = Outcome()
        let g = AioHandle(runtime: rt) { h in o2.record(h) }
        let op2 = Op()
        #expect(op2.start(g, onCancel: .finishSync))
        #expect(finishes(within: 5) { g.abort(.system(errno: EIO)) })
        #expect(o2.calls.count == 1)
        #expect(o2.error.value == .system(errno: EIO))
    }

    @Test("[AIO-13] a shutdown after an abort finds no cancel routine; the provider's error stands")
    func shutdownAfterAbort() throws {
        let rt = try makeRuntime()
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        let op = Op()
        #expect(op.start(h, onCancel: .record))
        h.abort(.connectionReset)
        #expect(op.cancelCalls.count == 1)
        // The shutdown waits for the operation (it has no routine left); the provider finishes it.
        concurrently(2) { i in
            if i == 0 {
                rt.shutdown()
            } else {
                sleepMillis(100)
                op.complete(h, op.cancelError.value)
            }
        }
        #expect(op.cancelCalls.count == 1)
        #expect(o.calls.count == 1)
        #expect(o.error.value == .connectionReset)
    }

    @Test("[AIO-14] an abort on an idle handle is remembered for the next start, once")
    func abortBeforeStart() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        h.abort(.connectionReset)
        let op = Op()
        #expect(!op.start(h))
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == .connectionReset)
        #expect(op.cancelCalls.count == 0)
        // Once: the following start goes ahead.
        let op2 = Op()
        #expect(op2.start(h))
        op2.complete(h)
        #expect(eventually(within: 10) { o.calls.count == 2 })
        #expect(o.error.value == nil)
        // Also after operations have come and gone, and with sleep as the provider.
        #expect(finishes(within: 10) { h.wait() })
        h.abort(.connectionShutdown)
        h.sleep(.seconds(60))
        #expect(eventually(within: 10) { o.calls.count == 3 })
        #expect(o.error.value == .connectionShutdown)
        h.sleep(.milliseconds(1))
        #expect(eventually(within: 10) { o.calls.count == 4 })
        #expect(o.error.value == nil)
    }

    @Test("[AIO-15] an abort after the finish, while the callback is pending or running, has no effect and is not remembered")
    func lateAbort() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let gate = Gate()
        let entered = Gate()
        let abortedInside = Counter()
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in
            o.record(h)
            if o.calls.count == 1 {
                entered.open()
                gate.pass()
            } else if o.calls.count == 2 {
                h.abort(.connectionAborted)  // from its own callback: too late as well
                abortedInside.increment()
            }
        }
        let op = Op()
        #expect(op.start(h))
        op.complete(h, count: 4)
        h.abort(.connectionReset)  // right after the finish: callback pending or running
        #expect(entered.pass())
        h.abort(.connectionReset)  // callback running
        gate.open()
        #expect(finishes(within: 10) { h.wait() })
        #expect(op.cancelCalls.count == 0)
        #expect(o.error.value == nil && o.count.value == 4)
        // Not remembered: the next operation starts and succeeds.
        let op2 = Op()
        #expect(op2.start(h))
        op2.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.calls.count == 2)
        #expect(o.error.value == nil)
        #expect(abortedInside.count == 1)
        let op3 = Op()
        #expect(op3.start(h))
        op3.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.errors.value == [nil, nil, nil])
    }

    @Test("[AIO-15] [AIO-23] an abort while an operation without a cancel routine is in flight has no effect and is not remembered")
    func abortWithoutRoutine() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        #expect(h.start(onCancel: nil))
        h.abort(.connectionReset)
        h.cancel()
        sleepMillis(20)
        #expect(h.isBusy)
        #expect(o.calls.count == 0)
        h.finish(nil, count: 5)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.error.value == nil && o.count.value == 5)
        let op = Op()
        #expect(op.start(h))
        op.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.errors.value == [nil, nil])
    }

    @Test("[AIO-16] cancel() is abort(.canceled): in flight, and remembered on an idle handle")
    func cancelIsAbortCanceled() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        let op = Op()
        #expect(op.start(h))
        h.cancel()
        #expect(op.cancelError.value == .canceled)
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == .canceled)
        #expect(finishes(within: 10) { h.wait() })
        h.cancel()
        let op2 = Op()
        #expect(!op2.start(h))
        #expect(eventually(within: 10) { o.calls.count == 2 })
        #expect(o.error.value == .canceled)
        #expect(op2.cancelCalls.count == 0)
    }

    // MARK: [AIO-17] .. [AIO-19] stop, close, reap

    @Test("[AIO-17] stop() aborts with .stopped, waits for the callback, and every later start fails with .stopped")
    func stopAbortsAndWaits() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let returned = Counter()
        let h = AioHandle(runtime: rt) { h in
            o.record(h)
            sleepMillis(50)
            returned.increment()
        }
        let op = Op()
        #expect(op.start(h))
        #expect(finishes(within: 10) { h.stop() })
        #expect(returned.count == 1)  // stop() returned after the callback had
        #expect(op.cancelError.value == .stopped)
        #expect(o.error.value == .stopped)
        #expect(!h.isBusy)
        // For good: every later start is refused, and its callback still runs.
        // (One at a time: several refused completions of one handle pending at
        // once would trap by design: [AIO-1].)
        let op2 = Op()
        #expect(!op2.start(h))
        #expect(finishes(within: 10) { h.wait() })
        h.sleep(.milliseconds(1))
        #expect(finishes(within: 10) { h.wait() })
        #expect(!Op().start(h))
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.calls.count == 4)
        #expect(o.errors.value == [.stopped, .stopped, .stopped, .stopped])
        #expect(op2.cancelCalls.count == 0)
    }

    @Test("[AIO-17] stop() on an idle handle, then a start: refused with .stopped, callback run once")
    func stopThenStart() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        #expect(finishes(within: 5) { h.stop() })
        let op = Op()
        #expect(!op.start(h))
        #expect(eventually(within: 10) { o.calls.count == 1 })
        sleepMillis(20)
        #expect(o.calls.count == 1)
        #expect(o.error.value == .stopped)
        #expect(finishes(within: 5) { h.stop() })  // stopping again is harmless
        #expect(o.calls.count == 1)
    }

    @Test("[AIO-18] close() aborts with .stopped and refuses later starts without waiting for the callback")
    func closeDoesNotWait() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let gate = Gate()
        let entered = Gate()
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in
            o.record(h)
            if o.calls.count == 1 {
                entered.open()
                gate.pass()
            }
        }
        let op = Op()
        #expect(op.start(h))
        #expect(finishes(within: 5) { h.close() })
        #expect(entered.pass())
        #expect(h.isBusy)  // close() returned while the callback is still blocked
        #expect(o.error.value == .stopped)
        #expect(!Op().start(h))
        gate.open()
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.errors.value == [.stopped, .stopped])
        // close() on an idle handle is remembered for good, too.
        let g = AioHandle(runtime: rt) { h in o.record(h) }
        g.close()
        g.sleep(.milliseconds(1))
        #expect(eventually(within: 10) { o.calls.count == 3 })
        #expect(o.error.value == .stopped)
    }

    @Test("[AIO-19] [AIO-27] reap() stops the handle in flight, and the handle is freed once idle")
    func reapFrees() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        weak var weakHandle: AioHandle?
        do {
            let h = AioHandle(runtime: rt) { h in o.record(h) }
            weakHandle = h
            h.sleep(.seconds(60))
            h.reap()
        }
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == .stopped)
        #expect(eventually(within: 10) { weakHandle == nil })
        // Reaping an idle handle frees it too.
        weak var weakIdle: AioHandle?
        do {
            let h = AioHandle(runtime: rt) { _ in }
            weakIdle = h
            h.reap()
        }
        #expect(eventually(within: 10) { weakIdle == nil })
    }

    @Test("[AIO-19] [DL-5] reap() from the handle's own callback")
    func reapFromCallback() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        weak var weakHandle: AioHandle?
        do {
            let h = AioHandle(runtime: rt) { h in
                o.record(h)
                h.reap()
            }
            weakHandle = h
            h.sleep(.milliseconds(1))
        }
        #expect(eventually(within: 10) { weakHandle == nil })
        #expect(o.calls.count == 1)
        #expect(o.error.value == nil)
    }

    // MARK: [AIO-20] .. [AIO-24] timeouts

    @Test("[AIO-20] a new handle's timeout is .infinite: an operation is never timed out")
    func defaultTimeout() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        #expect(h.timeout == .infinite)
        #expect(AioHandle(runtime: rt).timeout == .infinite)
        let op = Op()
        #expect(op.start(h))
        sleepMillis(100)
        #expect(op.cancelCalls.count == 0)
        #expect(h.isBusy)
        op.complete(h)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.error.value == nil)
        // Setting a timeout and then .infinite again.
        h.timeout = .after(.milliseconds(1))
        h.timeout = .infinite
        #expect(h.timeout == .infinite)
        h.sleep(.milliseconds(30))
        #expect(finishes(within: 10) { h.wait() })
        #expect(h.error == nil)
    }

    @Test("[AIO-21] [TMR-1] an operation still in flight at its timeout has its cancel routine called with .timedOut")
    func timeoutCallsRoutine() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let endedAt = Box<Double>(0)
        let h = AioHandle(runtime: rt) { h in
            endedAt.value = now()
            o.record(h)
        }
        h.timeout = .after(.milliseconds(50))
        #expect(h.timeout == .after(.milliseconds(50)))
        for round in 1...2 {  // the timeout applies to every operation, from its own start
            let op = Op()
            let t0 = now()
            #expect(op.start(h))
            #expect(eventually(within: 10) { o.calls.count == round })
            #expect(op.cancelCalls.count == 1)
            #expect(op.cancelError.value == .timedOut)
            #expect(o.error.value == .timedOut)
            #expect(endedAt.value - t0 >= 0.050)
            #expect(endedAt.value - t0 < 5)
            #expect(finishes(within: 10) { h.wait() })
        }
        // An operation finished in time is not touched by its timer later.
        let op = Op()
        #expect(op.start(h))
        op.complete(h, count: 1)
        sleepMillis(120)
        #expect(op.cancelCalls.count == 0)
        #expect(o.calls.count == 3)
        #expect(o.error.value == nil)
    }

    @Test("[AIO-22] setExpiration sets an absolute deadline for the following operations, overriding timeout until timeout is set")
    func expiration() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let endedAt = Box<Double>(0)
        let h = AioHandle(runtime: rt) { h in
            endedAt.value = now()
            o.record(h)
        }
        h.timeout = .after(.seconds(60))
        let t0 = now()
        h.setExpiration(.now + .milliseconds(60))
        let op = Op()
        #expect(op.start(h))
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == .timedOut)
        #expect(op.cancelError.value == .timedOut)
        #expect(endedAt.value - t0 >= 0.055)
        #expect(endedAt.value - t0 < 5)
        #expect(finishes(within: 10) { h.wait() })
        // The deadline still holds for the next operation: it has passed.
        let op2 = Op()
        #expect(!op2.start(h))
        #expect(eventually(within: 10) { o.calls.count == 2 })
        #expect(o.error.value == .timedOut)
        // Setting timeout again drops the expiration.
        h.timeout = .infinite
        let op3 = Op()
        #expect(op3.start(h))
        sleepMillis(30)
        #expect(op3.cancelCalls.count == 0)
        op3.complete(h)
        #expect(eventually(within: 10) { o.calls.count == 3 })
        #expect(o.error.value == nil)
        // An expiration overrides a shorter timeout as well: it is the deadline, not the minimum.
        #expect(finishes(within: 10) { h.wait() })
        h.timeout = .after(.milliseconds(10))
        h.setExpiration(.now + .seconds(60))
        let op4 = Op()
        #expect(op4.start(h))
        sleepMillis(80)
        #expect(op4.cancelCalls.count == 0)
        op4.complete(h)
        #expect(eventually(within: 10) { o.calls.count == 4 })
        #expect(o.error.value == nil)
    }

    @Test("[AIO-23] an operation started without a cancel routine is not timed out, aborted or canceled")
    func noRoutineNoTimer() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        h.timeout = .after(.milliseconds(10))
        #expect(h.start(onCancel: nil))
        sleepMillis(80)
        h.cancel()
        h.abort(.connectionReset)
        sleepMillis(10)
        #expect(h.isBusy)
        #expect(o.calls.count == 0)
        h.finish(nil, count: 3)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.calls.count == 1)
        #expect(o.error.value == nil && o.count.value == 3)
        // With an expiration as well.
        h.setExpiration(.now + .milliseconds(10))
        #expect(h.start(onCancel: nil))
        sleepMillis(60)
        #expect(h.isBusy)
        h.finish(.connectionAborted, count: 1)
        #expect(finishes(within: 10) { h.wait() })
        #expect(o.errors.value == [nil, .connectionAborted])
    }

    @Test("[AIO-24] .providerDefault: sleep has no limit, nor has start()")
    func providerDefault() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let endedAt = Box<Double>(0)
        let h = AioHandle(runtime: rt) { h in
            endedAt.value = now()
            o.record(h)
        }
        h.timeout = .providerDefault
        #expect(h.timeout == .providerDefault)
        let t0 = now()
        h.sleep(.milliseconds(80))
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == nil)
        #expect(endedAt.value - t0 >= 0.080)
        let op = Op()
        #expect(op.start(h))
        sleepMillis(80)
        #expect(op.cancelCalls.count == 0)
        #expect(h.isBusy)
        op.complete(h)
        #expect(eventually(within: 10) { o.calls.count == 2 })
        #expect(o.error.value == nil)
    }

    // MARK: [AIO-25] [AIO-26] sleep

    @Test("[AIO-25] [TMR-1] sleep(d) succeeds once d has passed")
    func sleepSucceeds() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let endedAt = Box<Double>(0)
        let h = AioHandle(runtime: rt) { h in
            endedAt.value = now()
            o.record(h)
        }
        for ms in [1, 20, 70] {
            let t0 = now()
            h.sleep(.milliseconds(ms))
            #expect(finishes(within: 10) { h.wait() })
            #expect(o.error.value == nil)
            #expect(o.count.value == 0)
            #expect(endedAt.value - t0 >= Double(ms) / 1000)
            #expect(endedAt.value - t0 < 5)
        }
        #expect(o.calls.count == 3)
        // A handle without a callback: wait() then error.
        let plain = AioHandle(runtime: rt)
        let t0 = now()
        plain.sleep(.milliseconds(30))
        #expect(finishes(within: 10) { plain.wait() })
        #expect(now() - t0 >= 0.030)
        #expect(plain.error == nil)
    }

    @Test("[AIO-25] [AIO-21] [AIO-22] a sleep whose timeout or expiration comes first ends then with .timedOut")
    func sleepTimesOut() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let endedAt = Box<Double>(0)
        let h = AioHandle(runtime: rt) { h in
            endedAt.value = now()
            o.record(h)
        }
        h.timeout = .after(.milliseconds(40))
        var t0 = now()
        h.sleep(.seconds(60))
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == .timedOut)
        #expect(endedAt.value - t0 >= 0.040)
        #expect(endedAt.value - t0 < 5)
        #expect(finishes(within: 10) { h.wait() })

        t0 = now()
        h.setExpiration(.now + .milliseconds(40))
        h.sleep(.seconds(60))
        #expect(eventually(within: 10) { o.calls.count == 2 })
        #expect(o.error.value == .timedOut)
        #expect(endedAt.value - t0 >= 0.035)
        #expect(endedAt.value - t0 < 5)
        #expect(finishes(within: 10) { h.wait() })

        // A sleep shorter than the timeout succeeds.
        h.timeout = .after(.seconds(60))
        h.sleep(.milliseconds(10))
        #expect(eventually(within: 10) { o.calls.count == 3 })
        #expect(o.error.value == nil)
    }

    @Test("[AIO-25] [AIO-3] a sleep of zero or less succeeds at once through the task pool")
    func zeroSleep() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let h = AioHandle(runtime: rt) { h in o.record(h) }
        let me = threadID()
        for (i, d) in [Duration.zero, .milliseconds(-5), .seconds(-3600), .nanoseconds(-1)].enumerated() {
            let t0 = now()
            h.sleep(d)
            #expect(eventually(within: 10) { o.calls.count == i + 1 })
            #expect(now() - t0 < 5)
            #expect(o.error.value == nil)
            #expect(o.thread.value != me)
            #expect(finishes(within: 10) { h.wait() })
        }
        #expect(o.calls.count == 4)
    }

    enum SleepEnd: String, CaseIterable, Sendable {
        case cancel, abort, stop, close, reap

        var expected: AioError {
            switch self {
            case .cancel: return .canceled
            case .abort: return .connectionReset
            case .stop, .close, .reap: return .stopped
            }
        }
    }

    @Test("[AIO-26] a sleep can be canceled, aborted and stopped: it ends at once with that error", arguments: SleepEnd.allCases)
    func sleepInterrupted(_ end: SleepEnd) throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        let endedAt = Box<Double>(0)
        let h = AioHandle(runtime: rt) { h in
            endedAt.value = now()
            o.record(h)
        }
        h.sleep(.seconds(60))
        sleepMillis(5)
        #expect(h.isBusy)
        let t0 = now()
        switch end {
        case .cancel: h.cancel()
        case .abort: h.abort(.connectionReset)
        case .stop: #expect(finishes(within: 5) { h.stop() })
        case .close: h.close()
        case .reap: h.reap()
        }
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == end.expected)
        #expect(endedAt.value - t0 < 5)
        sleepMillis(10)
        #expect(o.calls.count == 1)
    }

    // MARK: [AIO-27] lifetime

    @Test("[AIO-27] a handle whose last reference goes while its operation is in flight lives until the callback returned, then is freed")
    func lifetimeInFlight() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let o = Outcome()
        weak var weakHandle: AioHandle?
        do {
            let h = AioHandle(runtime: rt) { h in
                sleepMillis(10)
                o.record(h)  // the handle is still alive here
            }
            weakHandle = h
            h.sleep(.milliseconds(30))
        }
        #expect(weakHandle != nil)  // held by the runtime while in flight
        #expect(eventually(within: 10) { o.calls.count == 1 })
        #expect(o.error.value == nil)
        // The runtime drops its in-flight reference just after the callback returns.
        #expect(eventually(within: 10) { weakHandle == nil })

        // Without a callback too.
        weak var weakPlain: AioHandle?
        let op = Op()
        do {
            let h = AioHandle(runtime: rt)
            weakPlain = h
            #expect(op.start(h))
        }
        #expect(weakPlain != nil)
        if let h = weakPlain { op.complete(h) }
        #expect(eventually(within: 10) { weakPlain == nil })

        // An idle handle with no references is freed.
        weak var weakIdle: AioHandle?
        do {
            let h = AioHandle(runtime: rt) { _ in }
            weakIdle = h
            h.sleep(.zero)
            h.wait()
        }
        #expect(eventually(within: 10) { weakIdle == nil })
    }

    @Test("[AIO-27] [DL-5] releasing the last reference from the handle's own callback is safe")
    func releaseInOwnCallback() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let holder = Box<AioHandle?>(nil)
        let o = Outcome()
        weak var weakHandle: AioHandle?
        do {
            let h = AioHandle(runtime: rt) { h in
                o.record(h)
                holder.value = nil  // the last reference but the runtime's
            }
            holder.value = h
            weakHandle = h
            h.sleep(.milliseconds(1))
        }
        #expect(eventually(within: 10) { weakHandle == nil })
        #expect(o.calls.count == 1)
        // And many at once, each released inside its own callback; half chain one more operation first.
        let n = 500
        let holders = (0..<n).map { _ in Box<AioHandle?>(nil) }
        let weakBoxes = (0..<n).map { _ in WeakHandle() }
        let calls = (0..<n).map { _ in Counter() }
        for i in 0..<n {
            let h = AioHandle(runtime: rt) { h in
                if calls[i].increment() == 1 && i % 2 == 0 { h.sleep(.zero) }
                holders[i].value = nil
            }
            holders[i].value = h
            weakBoxes[i].handle = h
            h.sleep(.microseconds(Int64(i % 50)))
        }
        #expect(eventually(within: 10) { weakBoxes.allSatisfy { $0.handle == nil } })
        #expect((0..<n).allSatisfy { calls[$0].count == ($0 % 2 == 0 ? 2 : 1) })
    }

    // MARK: [AIO-29] [AIO-30]

    private final class Target: AioCallback {
        let calls = Counter()
        let error = Box<AioError?>(nil)
        let handleSeen = Box<ObjectIdentifier?>(nil)
        func aioDidComplete(_ handle: AioHandle) {
            error.value = handle.error
            handleSeen.value = ObjectIdentifier(handle)
            calls.increment()
        }
    }

    @Test("[AIO-29] a handle made with target: calls aioDidComplete and keeps the target alive")
    func callbackObject() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        weak var weakTarget: Target?
        weak var weakHandle: AioHandle?
        do {
            let h: AioHandle
            do {
                let target = Target()
                weakTarget = target
                h = AioHandle(runtime: rt, target: target)
            }
            weakHandle = h
            // Only the handle references the target now.
            #expect(weakTarget != nil)
            h.sleep(.milliseconds(5))
            #expect(finishes(within: 10) { h.wait() })
            let target = try #require(weakTarget)
            #expect(target.calls.count == 1)
            #expect(target.error.value == nil)
            #expect(target.handleSeen.value == ObjectIdentifier(h))
            h.abort(.connectionRefused)
            h.sleep(.seconds(60))
            #expect(finishes(within: 10) { h.wait() })
            #expect(target.calls.count == 2)
            #expect(target.error.value == .connectionRefused)
        }
        // Once the handle goes, the target goes with it.
        #expect(eventually(within: 10) { weakHandle == nil })
        #expect(eventually(within: 10) { weakTarget == nil })
    }

    @Test("[AIO-30] every AioError has a readable, distinct description; other OS errors are system(errno:)")
    func errorDescriptions() {
        var seen = Set<String>()
        for e in allErrors {
            let d = e.description
            #expect(!d.isEmpty)
            #expect(d.count >= 4)
            #expect(!d.contains("AioError"))  // readable text, not a case dump
            #expect(seen.insert(d).inserted, "duplicate description \(d)")
            #expect("\(e)" == d)
        }
        let system = AioError.system(errno: ENOENT).description
        #expect(system.contains("\(ENOENT)"))
        #expect(system.lowercased().contains("no such file"))
        #expect(AioError.system(errno: EIO) != AioError.system(errno: ENOENT))
        #expect(AioError.system(errno: EIO) == AioError.system(errno: EIO))
        #expect(Set(allErrors).count == allErrors.count)
        // An Error a caller can throw and match.
        #expect(throws: AioError.timedOut) { throw AioError.timedOut }
        let asError: any Error = AioError.connectionReset
        #expect((asError as? AioError) == .connectionReset)
        #expect(AioError.timedOut.description == "timed out")
    }
}

// MARK: - Exactly once under races, and long chains

extension HandleTests {
    @Suite("Handle races and chains", .serialized)
    struct Races {
        @Test("[AIO-2] [AIO-5] [AIO-13] [AIO-21] [AIO-28] [TMR-4] exactly once: finish vs cancel vs abort vs a 50 µs timeout, one reused handle")
        func raceReusedHandle() throws {
            let rounds = raceRounds
            let rt = try makeRuntime()
            defer { rt.shutdown() }
            let outcomes = (0..<rounds).map { _ in Outcome() }
            let ops = (0..<rounds).map { _ in Op() }
            let stray = Counter()
            let h = AioHandle(runtime: rt) { h in
                guard let r = h.input(0) as? Int, r >= 0, r < outcomes.count else {
                    stray.increment()
                    return
                }
                outcomes[r].record(h)
            }
            h.timeout = .after(.microseconds(50))
            inRounds(rounds, threads: 3) { r in
                _ = try? h.setInput(0, r)
                // Most rounds start before the racers go; every fourth races its start too.
                if r % 4 != 0 { ops[r].start(h) }
            } _: { t, r in
                if t == 0 && r % 4 == 0 { ops[r].start(h) }
                jitter(t, r)
                switch t {
                case 0:
                    ops[r].complete(h, nil, count: r + 1)  // does nothing if the routine claimed it
                    h.wait()
                case 1:
                    h.cancel()
                default:
                    h.abort(.connectionReset)
                }
            }
            #expect(finishes(within: 10) { h.wait() })
            sleepMillis(20)
            let allowed: Set<AioError?> = [nil, .canceled, .connectionReset, .timedOut]
            var wrongCalls = 0
            var wrongErrors = 0
            var wrongCount = 0
            var routineTwice = 0
            var seen: Set<AioError?> = []
            for r in 0..<rounds {
                let o = outcomes[r]
                if o.calls.count != 1 { wrongCalls += 1 }
                let e = o.error.value
                seen.insert(e)
                if !allowed.contains(e) { wrongErrors += 1 }
                if e == nil && o.count.value != r + 1 { wrongCount += 1 }
                if ops[r].cancelCalls.count > 1 { routineTwice += 1 }
            }
            #expect(stray.count == 0)
            #expect(wrongCalls == 0, "operations whose callback did not run exactly once")
            #expect(wrongErrors == 0)
            #expect(wrongCount == 0)
            #expect(routineTwice == 0, "a cancel routine was called twice for one operation ([AIO-13])")
            // The race is real: it went more than one way, and cancel routines ran.
            #expect(seen.count >= 2)
            #expect(ops.contains { $0.cancelCalls.count > 0 })
        }

        @Test("[AIO-2] [AIO-17] [AIO-27] [AIO-28] exactly once: finish vs cancel/abort vs stop from two threads vs a 50 µs timeout, fresh handles")
        func raceWithStop() throws {
            let rounds = raceRounds
            let rt = try makeRuntime()
            defer { rt.shutdown() }
            let outcomes = (0..<rounds).map { _ in Outcome() }
            let ops = (0..<rounds).map { _ in Op() }
            let current = Box<AioHandle?>(nil)
            let stopReturnedEarly = Counter()
            inRounds(rounds, threads: 4) { r in
                let h = AioHandle(runtime: rt) { h in outcomes[r].record(h) }
                h.timeout = .after(.microseconds(50))
                current.value = h  // the previous round's handle goes: freed once idle
                if r % 4 != 0 { ops[r].start(h) }
            } _: { t, r in
                guard let h = current.value else { return }
                if t == 0 && r % 4 == 0 { ops[r].start(h) }  // a start racing the stops
                jitter(t, r)
                switch t {
                case 0:
                    ops[r].complete(h, nil, count: 1)
                case 1:
                    if r % 2 == 0 { h.cancel() } else { h.abort(.connectionReset) }
                default:
                    let busyBefore = h.isBusy
                    h.stop()
                    // A stop that found the operation started returns after its callback.
                    if busyBefore && outcomes[r].calls.count == 0 { stopReturnedEarly.increment() }
                }
            }
            current.value = nil
            #expect(eventually(within: 10) { outcomes.allSatisfy { $0.calls.count >= 1 } })
            sleepMillis(20)
            let allowed: Set<AioError?> = [nil, .canceled, .connectionReset, .stopped, .timedOut]
            var wrongCalls = 0
            var wrongErrors = 0
            var routineTwice = 0
            for r in 0..<rounds {
                if outcomes[r].calls.count != 1 { wrongCalls += 1 }
                if !allowed.contains(outcomes[r].error.value) { wrongErrors += 1 }
                if ops[r].cancelCalls.count > 1 { routineTwice += 1 }
            }
            #expect(wrongCalls == 0, "operations whose callback did not run exactly once")
            #expect(wrongErrors == 0)
            #expect(routineTwice == 0)
            #expect(stopReturnedEarly.count == 0, "stop() returned before the callback of the operation it stopped")
            #expect(Set(outcomes.map { $0.error.value }).count >= 2)
            #expect(ops.contains { $0.cancelCalls.count > 0 })
        }

        @Test("[AIO-2] [AIO-4] [AIO-18] [AIO-28] [DL-7] exactly once: finishSync vs cancel (finishSync in the routine) vs close vs a 50 µs timeout")
        func raceFinishSync() throws {
            let rounds = raceRounds
            let rt = try makeRuntime()
            defer { rt.shutdown() }
            let outcomes = (0..<rounds).map { _ in Outcome() }
            let ops = (0..<rounds).map { _ in Op() }
            let current = Box<AioHandle?>(nil)
            let notInline = Counter()
            inRounds(rounds, threads: 3) { r in
                let h = AioHandle(runtime: rt) { h in outcomes[r].record(h) }
                h.timeout = .after(.microseconds(50))
                current.value = h
                if r % 4 != 0 { ops[r].start(h, onCancel: .finishSync) }
            } _: { t, r in
                guard let h = current.value else { return }
                if t == 0 && r % 4 == 0 { ops[r].start(h, onCancel: .finishSync) }
                jitter(t, r)
                switch t {
                case 0:
                    if ops[r].complete(h, nil, count: 2, sync: true) {
                        // finishSync returned: its callback has run, here.
                        if outcomes[r].calls.count != 1 || outcomes[r].thread.value != threadID() {
                            notInline.increment()
                        }
                    }
                case 1:
                    h.cancel()
                default:
                    h.close()
                }
            }
            current.value = nil
            #expect(eventually(within: 10) { outcomes.allSatisfy { $0.calls.count >= 1 } })
            sleepMillis(20)
            let allowed: Set<AioError?> = [nil, .canceled, .stopped, .timedOut]
            var wrongCalls = 0
            var wrongErrors = 0
            for r in 0..<rounds {
                if outcomes[r].calls.count != 1 { wrongCalls += 1 }
                if !allowed.contains(outcomes[r].error.value) { wrongErrors += 1 }
            }
            #expect(wrongCalls == 0, "operations whose callback did not run exactly once")
            #expect(wrongErrors == 0)
            #expect(notInline.count == 0)
            #expect(Set(outcomes.map { $0.error.value }).count >= 2)
            #expect(ops.contains { $0.cancelCalls.count > 0 })
        }

        @Test("[AIO-1] [AIO-3] [AIO-7] [AIO-25] 1,000,000 sleep(.zero) operations chained inside callbacks on one handle")
        func millionChainedSleeps() throws {
            let total = chainLength
            let rt = try makeRuntime()
            defer { rt.shutdown() }
            let calls = Counter()
            let failed = Counter()
            let h = AioHandle(runtime: rt) { h in
                if h.error != nil { failed.increment() }
                if calls.increment() < total { h.sleep(.zero) }
            }
            h.sleep(.zero)
            #expect(finishes(within: 120) { h.wait() })
            #expect(calls.count == total)
            #expect(failed.count == 0)
            #expect(!h.isBusy)
        }

        @Test("[AIO-1] [AIO-3] [AIO-7] [AIO-2] 1,000,000 start+finish operations chained inside callbacks on one handle")
        func millionChainedStartFinish() throws {
            let total = chainLength
            let rt = try makeRuntime()
            defer { rt.shutdown() }
            let calls = Counter()
            let wrong = Counter()
            let h = AioHandle(runtime: rt) { h in
                let n = calls.increment()
                if h.error != nil || h.count != n { wrong.increment() }
                if n < total {
                    if h.start(onCancel: nil) {
                        h.finish(nil, count: n + 1)
                    } else {
                        wrong.increment()
                    }
                }
            }
            #expect(h.start(onCancel: nil))
            h.finish(nil, count: 1)
            #expect(finishes(within: 120) { h.wait() })
            #expect(calls.count == total)
            #expect(wrong.count == 0)
        }
    }
}
