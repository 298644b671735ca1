import AioKit
import Glibc
import Synchronization
import Testing

// The promises of NNG's own aio test suite that need no sockets, restated for
// AioKit (written from the behaviour NNG checks, not from its code). Each
// display name cites the clauses of Specs/*.md the promise rests on.
//
// Callbacks only record what they see; expectations run on the test's thread.

/// A weak reference to a handle, to see it freed.
private final class WeakHandle: @unchecked Sendable {  // only touched by the test's thread
    weak var handle: AioHandle?
}

/// What a handle's callbacks saw.
private final class Seen: Sendable {
    let calls = Counter()
    let error = Box<AioError?>(nil)
    let at = Box<Double>(0)
    let errors = Box<[AioError?]>([])

    func record(_ h: AioHandle) {
        let e = h.error
        error.value = e
        at.value = now()
        errors.mutate { $0.append(e) }
        calls.increment()
    }
}

/// A custom provider's operation that never completes by itself: only its
/// cancel routine (abort, cancel, timeout, stop, shutdown) finishes it, with
/// the error it is given. `claimed` keeps it to one finish ([AIO-28]).
private final class PendingOp: Sendable {
    private let claimed = Atomic<Bool>(false)
    let routineCalls = Counter()
    let routineError = Box<AioError?>(nil)

    func start(_ h: AioHandle) -> Bool {
        let started = h.start(onCancel: { [self] h, e in
            routineError.value = e
            routineCalls.increment()
            if !claimed.exchange(true, ordering: .acquiringAndReleasing) { h.finish(e) }
        })
        if !started { _ = claimed.exchange(true, ordering: .acquiringAndReleasing) }
        return started
    }
}

@Suite("NNG aio test suite, restated (no sockets)")
struct NNGPortTests {
    @Test("[AIO-25] [TMR-1] sleep: a 100 ms sleep succeeds, and not before 100 ms")
    func sleep() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        let t0 = now()
        h.sleep(.milliseconds(100))
        #expect(finishes(within: 10) { h.wait() })
        #expect(seen.calls.count == 1)
        #expect(seen.error.value == nil)
        #expect(seen.at.value - t0 >= 0.100)
        #expect(seen.at.value - t0 < 5)
    }

    @Test("[AIO-25] [AIO-21] sleep with a shorter timeout: it ends at the timeout with .timedOut")
    func sleepTimeout() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        h.timeout = .after(.milliseconds(20))
        let t0 = now()
        h.sleep(.seconds(10))
        #expect(finishes(within: 10) { h.wait() })
        #expect(seen.calls.count == 1)
        #expect(seen.error.value == .timedOut)
        #expect(seen.at.value - t0 >= 0.020)
        #expect(seen.at.value - t0 < 5)  // long before the sleep's own end
    }

    @Test("[RT-2] [RT-4] [AIO-2] [AIO-26] shutdown of a private runtime with one pending sleep: its callback runs once with .stopped")
    func shutdownOnePendingSleep() throws {
        let rt = try makeRuntime()
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        h.sleep(.seconds(3600))
        sleepMillis(5)
        #expect(h.isBusy)
        let t0 = now()
        #expect(finishes(within: 10) { rt.shutdown() })
        #expect(now() - t0 < 5)
        #expect(seen.calls.count == 1)  // shutdown() returned after the callback ran
        #expect(seen.error.value == .stopped)
        #expect(!h.isBusy)
        sleepMillis(20)
        #expect(seen.calls.count == 1)
    }

    @Test("[RT-2] [RT-4] [AIO-2] [AIO-19] [DL-5] shutdown with 2,000 pending sleeps whose callbacks reap their own handle")
    func shutdownManyPendingSleepsReaping() throws {
        let n = 2_000
        let rt = try makeRuntime()
        let calls = (0..<n).map { _ in Counter() }
        let stopped = Counter()
        let total = Counter()
        let weak = (0..<n).map { _ in WeakHandle() }
        for i in 0..<n {
            let h = AioHandle(runtime: rt) { h in
                if h.error == .stopped { stopped.increment() }
                calls[i].increment()
                total.increment()
                h.reap()  // from its own callback, during the shutdown
            }
            weak[i].handle = h
            h.sleep(.seconds(3600))
        }
        // Only the runtime holds the handles now.
        sleepMillis(5)
        #expect(total.count == 0)
        #expect(finishes(within: 30) { rt.shutdown() })
        #expect(total.count == n)
        #expect(stopped.count == n)
        #expect(eventually(within: 10) { weak.allSatisfy { $0.handle == nil } })
        sleepMillis(20)
        #expect(calls.allSatisfy { $0.count == 1 })
        #expect(total.count == n)
    }

    @Test("[AIO-10] too many iov: 9 buffers are refused with .invalidArgument, 8 are accepted")
    func tooManyIOV() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let h = AioHandle(runtime: rt)
        var storage = [UInt8](repeating: 0, count: 9)
        try storage.withUnsafeMutableBytes { raw in
            let iov = (0..<9).map { AioIOV(UnsafeMutableRawBufferPointer(rebasing: raw[$0..<($0 + 1)])) }
            #expect(throws: AioError.invalidArgument) { try h.setIOV(iov) }
            #expect(h.iov.isEmpty)
            try h.setIOV(Array(iov.prefix(8)))
            #expect(h.iov.count == 8)
            #expect(throws: AioError.invalidArgument) { try h.setIOV(iov) }
            #expect(h.iov.count == 8)
            try h.setIOV([])
        }
    }

    @Test("[AIO-13] [AIO-16] provider cancel: cancel() reaches the provider's routine, which finishes with the error given")
    func providerCancel() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        let op = PendingOp()
        #expect(op.start(h))
        h.cancel()
        #expect(finishes(within: 10) { h.wait() })
        #expect(op.routineCalls.count == 1)
        #expect(op.routineError.value == .canceled)
        #expect(seen.error.value == .canceled)
        // The routine finishes with whatever error the abort gives.
        let op2 = PendingOp()
        #expect(op2.start(h))
        h.abort(.connectionShutdown)
        #expect(finishes(within: 10) { h.wait() })
        #expect(op2.routineError.value == .connectionShutdown)
        #expect(seen.errors.value == [.canceled, .connectionShutdown])
    }

    @Test("[AIO-21] [TMR-1] explicit timeout: an operation with a 40 ms timeout ends with .timedOut, not before 40 ms")
    func explicitTimeout() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        h.timeout = .after(.milliseconds(40))
        let op = PendingOp()
        let t0 = now()
        #expect(op.start(h))
        #expect(finishes(within: 10) { h.wait() })
        #expect(op.routineError.value == .timedOut)
        #expect(seen.error.value == .timedOut)
        #expect(seen.at.value - t0 >= 0.040)
        #expect(seen.at.value - t0 < 5)
    }

    @Test("[AIO-22] [TMR-1] explicit expiration: setExpiration 40 ms ahead ends the operation then with .timedOut")
    func explicitExpiration() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        let t0 = now()
        h.setExpiration(.now + .milliseconds(40))
        let op = PendingOp()
        #expect(op.start(h))
        #expect(finishes(within: 10) { h.wait() })
        #expect(op.routineError.value == .timedOut)
        #expect(seen.error.value == .timedOut)
        #expect(seen.at.value - t0 >= 0.035)  // the deadline was taken a moment after t0
        #expect(seen.at.value - t0 < 5)
        // A sleep past the same expiration is refused now that it has passed.
        h.sleep(.seconds(10))
        #expect(finishes(within: 10) { h.wait() })
        #expect(seen.errors.value == [.timedOut, .timedOut])
    }

    @Test("[AIO-12] [AIO-21] zero timeout: a start with a zero timeout is refused at once with .timedOut")
    func zeroTimeout() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        h.timeout = .after(.zero)
        let op = PendingOp()
        let t0 = now()
        #expect(!op.start(h))
        #expect(finishes(within: 10) { h.wait() })
        #expect(seen.calls.count == 1)
        #expect(seen.error.value == .timedOut)
        #expect(op.routineCalls.count == 0)
        h.sleep(.seconds(10))
        #expect(finishes(within: 10) { h.wait() })
        #expect(seen.errors.value == [.timedOut, .timedOut])
        #expect(now() - t0 < 5)
    }

    @Test("[AIO-19] [AIO-27] [DL-5] reap from the own callback: the handle is stopped and freed")
    func reapFromOwnCallback() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let chained = Counter()
        let w = WeakHandle()
        do {
            let h = AioHandle(runtime: rt) { h in
                seen.record(h)
                if seen.calls.count == 1 {
                    h.reap()
                    h.sleep(.milliseconds(1))  // after the reap: refused with .stopped, callback still once
                    chained.increment()
                }
            }
            w.handle = h
            h.sleep(.milliseconds(10))
        }
        #expect(eventually(within: 10) { w.handle == nil })
        #expect(chained.count == 1)
        #expect(seen.errors.value == [nil, .stopped])
    }

    @Test("[AIO-1] [AIO-7] [AIO-25] sleep loop: a callback chaining 100 sleeps of 1 ms")
    func sleepLoop() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let count = Counter()
        let failures = Counter()
        let h = AioHandle(runtime: rt) { h in
            if h.error != nil { failures.increment() }
            if count.increment() < 100 { h.sleep(.milliseconds(1)) }
        }
        let t0 = now()
        h.sleep(.milliseconds(1))
        #expect(finishes(within: 30) { h.wait() })
        #expect(count.count == 100)
        #expect(failures.count == 0)
        #expect(now() - t0 >= 0.100)
        #expect(!h.isBusy)
    }

    @Test("[AIO-26] [AIO-16] sleep cancel: canceling a long sleep ends it at once with .canceled")
    func sleepCancel() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let seen = Seen()
        let h = AioHandle(runtime: rt) { h in seen.record(h) }
        h.sleep(.seconds(3600))
        sleepMillis(10)
        #expect(seen.calls.count == 0)
        let t0 = now()
        h.cancel()
        #expect(finishes(within: 10) { h.wait() })
        #expect(seen.calls.count == 1)
        #expect(seen.error.value == .canceled)
        #expect(seen.at.value - t0 < 5)
        // The handle is reusable after the cancel.
        h.sleep(.milliseconds(1))
        #expect(finishes(within: 10) { h.wait() })
        #expect(seen.errors.value == [.canceled, nil])
    }

    @Test("[AIO-8] [AIO-6] [AIO-7] busy: isBusy while a sleep is pending, false after wait()")
    func busy() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let calls = Counter()
        let h = AioHandle(runtime: rt) { _ in calls.increment() }
        #expect(!h.isBusy)
        h.sleep(.milliseconds(100))
        #expect(h.isBusy)
        sleepMillis(20)
        #expect(h.isBusy)
        #expect(calls.count == 0)
        #expect(finishes(within: 10) { h.wait() })
        #expect(!h.isBusy)
        #expect(calls.count == 1)
        #expect(h.error == nil)
        // Also for a handle without a callback.
        let plain = AioHandle(runtime: rt)
        plain.sleep(.milliseconds(50))
        #expect(plain.isBusy)
        #expect(finishes(within: 10) { plain.wait() })
        #expect(!plain.isBusy)
    }
}
