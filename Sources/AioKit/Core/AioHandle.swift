import Glibc
import Synchronization

/// An asynchronous operation handle, after NNG's `nng_aio`: one operation at a
/// time, and a completion callback that runs exactly once for every operation
/// started on it, whatever ended it ([AIO-1], [AIO-2]).
///
/// The consumer allocates a handle (usually one per kind of operation, reused
/// for each), sets its inputs, iov and timeout, hands it to a provider
/// (`sleep`, a stream's `send`/`receive`, a listener's `accept`...), and reads
/// `error`, `count` and the outputs in the callback or after `wait()`.
/// Operations are usually chained: the callback starts the next one.
///
/// A provider calls `reset()` and `start(onCancel:)` to begin an operation and
/// `finish(_:count:)` (or `finishSync`) exactly once to end it.
///
/// Thread safety: every consumer call may come from any thread and from inside
/// callbacks, including the handle's own ([DL-1]..[DL-7]). The lifecycle state
/// is guarded by the handle's lock stripe; the inputs, iov and timeout belong
/// to the consumer between operations and are read by the provider while the
/// operation is in flight (set them only while the handle is idle).
public final class AioHandle: @unchecked Sendable {  // fields guarded as marked: stripe lock, timer lock, pool lock, or owner
    /// The most buffers one iov list may hold ([AIO-10]).
    public static let maxIOV: Int = 8
    static let slotCount = 4

    let runtime: AioRuntime
    let stripe: Stripe  // freed by the runtime's core, which `runtime` keeps alive
    let callback: (@Sendable (AioHandle) -> Void)?

    // MARK: stripe lock
    var flags: UInt32 = 0
    /// Operations started whose callback has not returned yet. Written only
    /// under the stripe lock; atomic so that `wait()` may also look at it
    /// without the lock while it spins (relaxed loads and stores: plain moves).
    let busyWord = Atomic<UInt32>(0)
    var busy: UInt32 {
        @inline(__always) get { busyWord.load(ordering: .relaxed) }
        @inline(__always) set { busyWord.store(newValue, ordering: .releasing) }
    }
    /// Counts operations; a timer entry is valid only for the one it was armed for.
    var seq: UInt32 = 0
    /// The last result and byte count: written only under the stripe lock,
    /// read without it (`error`, `count`: one load each, [AIO-5]). A callback
    /// reads them after its completion was handed to it (through the pool's
    /// lock or on the finishing thread), so the releasing store is seen.
    let resultWord = Atomic<UInt64>(0)
    let transferredWord = Atomic<Int>(0)
    var result: AioError? {
        @inline(__always) get { AioError(code: resultWord.load(ordering: .acquiring)) }
        @inline(__always) set { resultWord.store(newValue.code, ordering: .releasing) }
    }
    var transferred: Int {
        @inline(__always) get { transferredWord.load(ordering: .acquiring) }
        @inline(__always) set { transferredWord.store(newValue, ordering: .releasing) }
    }
    var cancelFn: (@Sendable (AioHandle, AioError) -> Void)?
    /// The core's own providers' cancel routine: told which operation it cancels.
    var cancelSeqFn: CancelRoutine?
    var pendingAbort: AioError?
    /// `perform`'s continuation: resumed once, at completion, instead of a callback.
    var resumeHook: UnsafeContinuation<Void, any Error>?
    /// Live list while in flight; the task pool's queue link once finished.
    var liveNext: Unmanaged<AioHandle>?
    var livePrev: Unmanaged<AioHandle>?

    // MARK: consumer (set while idle)
    /// -1: infinite, -2: provider default, else nanoseconds.
    var timeoutNanos: Int64 = -1
    /// Absolute deadline on `Clock`, 0: none.
    var expirationNanos: UInt64 = 0
    var slots: Slots?
    var iovList: [AioIOV] = []

    // MARK: timer lock
    var timerNext: Unmanaged<AioHandle>?
    var timerPrev: Unmanaged<AioHandle>?
    var timerTick: UInt64 = 0
    var timerSlot: Int16 = -1
    var timerSeq: UInt32 = 0

    // MARK: provider (while in flight)
    /// Links for a provider's intrusive queues (a stream's pending receives...).
    var providerNext: Unmanaged<AioHandle>?
    var providerPrev: Unmanaged<AioHandle>?
    /// Scratch words for the provider of the operation in flight.
    var providerWord: Int = 0
    var providerCount: Int = 0

    /// The thread running this handle's callback (0: none): `wait()` and
    /// `stop()` from inside it must not wait for it ([DL-1]).
    let callbackThread = Atomic<UInt>(0)

    /// A cancel routine that is given the number of the operation it was taken
    /// for, so that a routine running late never touches a later operation.
    typealias CancelRoutine = @Sendable (AioHandle, AioError, UInt32) -> Void

    // Flags (stripe lock).
    static let inFlight: UInt32 = 1 << 0
    static let stopped: UInt32 = 1 << 1
    static let timerArmed: UInt32 = 1 << 2
    static let waiters: UInt32 = 1 << 3
    static let succeedAtExpiry: UInt32 = 1 << 4
    /// A callback of this handle is running (callbacks of one handle never overlap, [AIO-31]).
    static let callbackRunning: UInt32 = 1 << 5
    /// An operation finished whose callback has not begun (queued, or deferred).
    static let completionPending: UInt32 = 1 << 6
    /// That completion waits for the running callback to return, then runs on its thread.
    static let deferred: UInt32 = 1 << 7

    /// A handle whose callback is `callback` (nil: no callback; use `wait()`).
    public init(runtime: AioRuntime = .shared, callback: (@Sendable (AioHandle) -> Void)? = nil) {
        self.runtime = runtime
        self.stripe = runtime.nextStripe()
        self.callback = callback
    }

    /// A handle whose callback is `target.aioDidComplete(_:)`; the handle keeps
    /// a strong reference to `target` ([AIO-29]).
    public convenience init(runtime: AioRuntime = .shared, target: some AioCallback) {
        self.init(runtime: runtime, callback: { [target] handle in target.aioDidComplete(handle) })
    }

    // MARK: - Consumer side

    /// The result of the last completed operation: nil is success ([AIO-5]).
    /// One atomic load: no lock on the callback's path.
    public var error: AioError? { result }

    /// Bytes transferred by the last completed operation ([AIO-5]). One atomic load.
    public var count: Int { transferred }

    /// The time limit of the next operations ([AIO-20]..[AIO-24]). Setting it
    /// clears an expiration set with `setExpiration`.
    public var timeout: AioTimeout {
        get {
            switch timeoutNanos {
            case -1: return .infinite
            case -2: return .providerDefault
            default: return .after(.nanoseconds(timeoutNanos))
            }
        }
        set {
            switch newValue {
            case .infinite: timeoutNanos = -1
            case .providerDefault: timeoutNanos = -2
            case .after(let d): timeoutNanos = max(0, Clock.nanoseconds(d))
            }
            expirationNanos = 0
        }
    }

    /// An absolute deadline for the next operations; overrides `timeout` until
    /// `timeout` is set again. A deadline already past fails the next start
    /// with `.timedOut` ([AIO-22]).
    public func setExpiration(_ deadline: ContinuousClock.Instant) {
        expirationNanos = max(1, Clock.deadline(of: deadline))
    }

    /// Sets input `index` (0..<4) for the provider; other indices throw
    /// `.invalidArgument` ([AIO-9]).
    public func setInput(_ index: Int, _ value: (any Sendable)?) throws {
        guard index >= 0 && index < Self.slotCount else { throw AioError.invalidArgument }
        slotStorage().inputs[index] = value
    }

    /// Input `index`, or nil (also for an index out of range) ([AIO-9]).
    public func input(_ index: Int) -> (any Sendable)? {
        guard index >= 0 && index < Self.slotCount, let slots = lockedSlots() else { return nil }
        return slots.inputs[index]
    }

    /// Output `index` of the last operation, or nil (also for an index out of range) ([AIO-9]).
    public func output(_ index: Int) -> (any Sendable)? {
        guard index >= 0 && index < Self.slotCount, let slots = lockedSlots() else { return nil }
        return slots.outputs[index]
    }

    /// Sets the scatter/gather list; more than `maxIOV` buffers throw
    /// `.invalidArgument` and leave the list unchanged ([AIO-10]).
    public func setIOV(_ iov: [AioIOV]) throws {
        guard iov.count <= Self.maxIOV else { throw AioError.invalidArgument }
        iovList = iov
    }

    /// The scatter/gather list.
    public var iov: [AioIOV] { iovList }

    /// True from the start of an operation until its callback has returned ([AIO-8]).
    public var isBusy: Bool {
        stripe.lock()
        defer { stripe.unlock() }
        return busy != 0
    }

    /// Waits until no operation is in flight and no callback is running
    /// ([AIO-6], [AIO-7]); returns at once if nothing was started. Called from
    /// the handle's own callback it returns at once ([DL-1]); called from other
    /// callbacks it never deadlocks the task pool ([DL-3]). Off the task pool
    /// it looks for the end for up to 20 µs before it parks (`Spinning`).
    public func wait() {
        if callbackThread.load(ordering: .relaxed) == Thread.current { return }
        stripe.lock()
        if busy == 0 {
            stripe.unlock()
            return
        }
        let worker = runtime.pool.currentWorker()
        var helping = false
        if let worker {
            stripe.unlock()
            helping = runtime.pool.workerWillBlock(worker)
            stripe.lock()
        } else {
            // Off the pool: look for the end for a moment before parking; an
            // operation about to end (a cancel on its way to the callback)
            // then costs no wake-up on either side.
            stripe.unlock()
            Spinning.spin(until: Clock.nanos() &+ Self.waitSpinNanos) { busyWord.load(ordering: .acquiring) == 0 }
            stripe.lock()
        }
        while busy != 0 {
            flags |= Self.waiters
            if helping {
                // At the pool's ceiling: run queued callbacks while waiting ([POOL-5]).
                stripe.unlock()
                let ran = runtime.pool.runOneQueued()
                stripe.lock()
                if !ran && busy != 0 {
                    flags |= Self.waiters
                    stripe.wait(untilNanos: Clock.nanos() &+ 1_000_000)
                }
            } else {
                stripe.wait()
            }
        }
        stripe.unlock()
        if let worker { runtime.pool.workerDidUnblock(worker) }
    }

    /// How long `wait()` off the task pool looks for the end before parking.
    static let waitSpinNanos: UInt64 = 20_000

    /// `abort(.canceled)` ([AIO-16]).
    public func cancel() {
        abort(.canceled)
    }

    /// Ends the operation in flight with `error`, through the provider's cancel
    /// routine ([AIO-13]). On an idle handle the error is remembered and the
    /// next start fails with it ([AIO-14]). Never waits ([DL-4]).
    public func abort(_ error: AioError) {
        stripe.lock()
        if let fn = cancelFn {
            cancelFn = nil
            stripe.unlock()
            fn(self, error)  // outside the lock ([DL-7])
            return
        }
        if let fn = cancelSeqFn {
            cancelSeqFn = nil
            let s = seq
            stripe.unlock()
            fn(self, error, s)
            return
        }
        if flags & Self.inFlight == 0 && busy == 0 {
            pendingAbort = error
        }
        stripe.unlock()
    }

    /// Refuses new operations for good, aborts the one in flight with
    /// `.stopped`, and waits for it and its callback ([AIO-17]); from the
    /// handle's own callback it does not wait ([DL-2]).
    public func stop() {
        close()
        wait()
    }

    /// `stop()` without the wait ([AIO-18]).
    public func close() {
        stripe.lock()
        flags |= Self.stopped
        stripe.unlock()
        abort(.stopped)
    }

    /// Stops the handle on the runtime's reaper thread and drops the reaper's
    /// reference once it is idle: the teardown that is safe anywhere, the
    /// handle's own callback included ([AIO-19], [DL-5]).
    public func reap() {
        close()
        runtime.reaper.reap(self)
    }

    // MARK: - Provider side

    /// Clears the result, the count and the outputs before an operation ([AIO-11]).
    public func reset() {
        stripe.lock()
        precondition(
            flags & Self.inFlight == 0,
            "AioKit: reset() called on a handle whose operation is still in flight (one operation at a time)")
        result = nil
        transferred = 0
        let s = slots
        stripe.unlock()
        s?.clearOutputs()
    }

    /// Begins an operation. Returns false, and completes the handle at once
    /// through the task pool, when the handle is stopped or its runtime shut
    /// down (`.stopped`), was aborted before the start (that error), or its
    /// timeout is zero or expiration passed (`.timedOut`) ([AIO-12]); the
    /// provider must then do nothing more. Otherwise `onCancel` is registered:
    /// `abort` and a timeout call it once, outside any lock, with the error,
    /// and the provider finishes the operation ([AIO-13], [AIO-21]).
    public func start(onCancel: (@Sendable (AioHandle, AioError) -> Void)?) -> Bool {
        begin(onCancel: onCancel, cancelRoutine: nil, defaultTimeout: -1, sleepDeadline: 0, reset: false)
    }

    /// `reset()` (if `reset`) and `start` under one lock, with the provider's
    /// own default for `.providerDefault` (nanoseconds, -1: none) and, for
    /// sleeps, the deadline at which the operation succeeds.
    func begin(
        onCancel: (@Sendable (AioHandle, AioError) -> Void)?, cancelRoutine: CancelRoutine? = nil,
        defaultTimeout: Int64, sleepDeadline: UInt64, reset: Bool
    ) -> Bool {
        // The previous outputs are taken out under the stripe lock below (no
        // lock of their own) and let go only once it is released: their
        // deinit may run any code.
        var dropped: Slots.Taken?
        let started = begin(
            onCancel: onCancel, cancelRoutine: cancelRoutine, defaultTimeout: defaultTimeout,
            sleepDeadline: sleepDeadline, reset: reset, dropping: &dropped)
        withExtendedLifetime(dropped) {}
        return started
    }

    /// The sleep deadline of a sleep that is due at once (a duration of zero
    /// or less): no clock read needed to know it ([AIO-25]).
    static let sleepDueNow: UInt64 = 1

    /// `begin`; with `reset`, the previous outputs are moved to `dropped`.
    @inline(__always) private func begin(
        onCancel: (@Sendable (AioHandle, AioError) -> Void)?, cancelRoutine: CancelRoutine?,
        defaultTimeout: Int64, sleepDeadline: UInt64, reset: Bool, dropping dropped: inout Slots.Taken?
    ) -> Bool {
        _ = Unmanaged.passRetained(self)  // the in-flight reference ([AIO-27])
        var now: UInt64 = 0
        var deadline: UInt64 = 0
        var failure: AioError?
        stripe.lock()
        precondition(
            flags & Self.inFlight == 0,
            "AioKit: an operation was started on a handle whose operation is still in flight (one operation at a time)")
        precondition(
            flags & Self.completionPending == 0,
            "AioKit: an operation was started on a handle whose previous operation has not reached its callback yet "
                + "(one operation at a time: wait() for it, or start the next one from its callback)")
        if reset {
            result = nil
            transferred = 0
            if let slots { dropped = slots.takeOutputs() }
        }
        busy += 1
        stripe.pending += 1
        seq &+= 1
        if flags & Self.stopped != 0 || stripe.closed {
            failure = .stopped
        } else if let e = pendingAbort {
            pendingAbort = nil
            failure = e
        } else {
            let t = timeoutNanos == -2 ? defaultTimeout : timeoutNanos
            if expirationNanos != 0 {
                now = Clock.nanos()
                if expirationNanos <= now { failure = .timedOut } else { deadline = expirationNanos }
            } else if t >= 0 {
                now = Clock.nanos()
                if t == 0 {
                    failure = .timedOut
                } else {
                    let (d, o) = now.addingReportingOverflow(UInt64(t))
                    deadline = o ? UInt64.max : d
                }
            }
        }
        if let failure {
            result = failure
            transferred = 0
            let action = completionLocked()
            stripe.unlock()
            carryOut(action)
            return false
        }
        if sleepDeadline != 0 {
            if now == 0 && sleepDeadline != Self.sleepDueNow { now = Clock.nanos() }
            if sleepDeadline <= now || sleepDeadline == Self.sleepDueNow {
                // A sleep already due: success through the pool, no timer ([AIO-25]).
                result = nil
                transferred = 0
                let action = completionLocked()
                stripe.unlock()
                carryOut(action)
                return false
            }
            if deadline == 0 || sleepDeadline <= deadline {
                deadline = sleepDeadline
                flags |= Self.succeedAtExpiry
            } else {
                flags &= ~Self.succeedAtExpiry
            }
        } else {
            flags &= ~Self.succeedAtExpiry
        }
        flags |= Self.inFlight
        cancelFn = onCancel
        cancelSeqFn = cancelRoutine
        stripe.link(self)
        if deadline != 0 && (onCancel != nil || cancelRoutine != nil) {  // no cancel routine: nothing a timer could do ([AIO-23])
            flags |= Self.timerArmed
            runtime.timers.insert(self, deadline: deadline, seq: seq)  // lock order: stripe, then timer
        }
        stripe.unlock()
        return true
    }

    /// Sets output `index` (0..<4) of the operation in flight ([AIO-9]).
    /// Another index is a provider bug and traps.
    public func setOutput(_ index: Int, _ value: (any Sendable)?) {
        precondition(index >= 0 && index < Self.slotCount, "AioKit: setOutput index \(index) is out of range 0..<4")
        slotStorage().outputs[index] = value
    }

    /// Ends the operation in flight with `error` (nil: success) and `count`
    /// bytes; its callback runs on the task pool, never on this thread ([AIO-3]).
    /// Finishing a handle with no operation in flight is a provider bug and traps ([AIO-28]).
    public func finish(_ error: AioError? = nil, count: Int = 0) {
        stripe.lock()
        markFinished(error, count)
        let action = completionLocked()
        stripe.unlock()
        carryOut(action)
    }

    /// `finish`, but the callback runs on this thread before it returns ([AIO-4]).
    /// The caller must hold no lock the callback could need. If the handle's
    /// previous callback is still running on another thread, this completion
    /// runs after it, on that thread ([AIO-31]).
    public func finishSync(_ error: AioError? = nil, count: Int = 0) {
        stripe.lock()
        markFinished(error, count)
        if callback == nil || (flags & Self.callbackRunning != 0 && callbackThread.load(ordering: .relaxed) != Thread.current) {
            let action = completionLocked()
            stripe.unlock()
            carryOut(action)
            return
        }
        let depth = Self.inlineCallbackDepth.get()
        Self.inlineCallbackDepth.set(depth.map { $0 + 1 } ?? UnsafeMutableRawPointer(bitPattern: 1))
        defer { Self.inlineCallbackDepth.set(depth) }
        if flags & Self.callbackRunning != 0 {
            // Nested in this handle's own callback, on this thread: run it here.
            stripe.unlock()
            let outer = callbackThread.load(ordering: .relaxed)  // written only by the thread running the callback
            callbackThread.store(Thread.current, ordering: .relaxed)
            callback?(self)
            callbackThread.store(outer, ordering: .relaxed)
            stripe.lock()
            busy -= 1
            stripe.pending -= 1
            stripe.unlock()
        } else {
            flags |= Self.callbackRunning
            stripe.unlock()
            runCallbacks(dequeued: false)
        }
        Unmanaged.passUnretained(self).release()  // the in-flight reference; the caller still holds one
    }

    // MARK: - Internals

    /// How many `finishSync` callbacks the calling thread is inside (nil:
    /// none): a shutdown called from one of them, on a thread that is not the
    /// runtime's, must not wait for the callback it runs in ([RT-5]).
    static let inlineCallbackDepth = ThreadLocalKey()

    /// True when the calling thread is running a callback through `finishSync`.
    static var inInlineCallback: Bool { inlineCallbackDepth.get() != nil }

    /// Records the end of the operation in flight (stripe lock held).
    @inline(__always) func markFinished(_ error: AioError?, _ count: Int) {
        precondition(
            flags & Self.inFlight != 0,
            "AioKit: finish() called on a handle with no operation in flight (finished twice, or never started)")
        flags &= ~Self.inFlight
        cancelFn = nil
        cancelSeqFn = nil
        result = error
        transferred = count
        stripe.unlink(self)
        if flags & Self.timerArmed != 0 {
            flags &= ~Self.timerArmed
            runtime.timers.remove(self)
        }
    }

    /// What to do with a finished operation once the stripe lock is released.
    enum CompletionAction {
        case enqueue, deferred, released
        case resume(UnsafeContinuation<Void, any Error>, AioError?)
    }

    /// Decides how the finished (or refused) operation's callback runs
    /// (stripe lock held): through the pool; after the running callback of
    /// this handle, on its thread ([AIO-31]); or, with no callback, not at all
    /// (waiters are woken here).
    @inline(__always) func completionLocked() -> CompletionAction {
        if callback == nil {
            busy -= 1
            stripe.pending -= 1
            wakeWaitersIfIdle()
            if let hook = resumeHook {
                resumeHook = nil
                return .resume(hook, result)
            }
            return .released
        }
        flags |= Self.completionPending
        if flags & Self.callbackRunning != 0 {
            flags |= Self.deferred
            return .deferred
        }
        return .enqueue
    }

    /// Carries out `completionLocked`'s decision (no lock held); the in-flight
    /// reference goes to the pool, stays with the deferred completion, or is dropped.
    @inline(__always) func carryOut(_ action: CompletionAction) {
        switch action {
        case .enqueue: runtime.pool.dispatch(Unmanaged.passUnretained(self))
        case .deferred: break
        case .released: Unmanaged.passUnretained(self).release()
        case .resume(let continuation, let error):
            Unmanaged.passUnretained(self).release()
            if let error { continuation.resume(throwing: error) } else { continuation.resume() }
        }
    }

    @inline(__always) func wakeWaitersIfIdle() {
        if busy == 0 && flags & Self.waiters != 0 {
            flags &= ~Self.waiters
            stripe.broadcast()
        }
    }

    /// Runs this handle's pending callback on this thread. A completion
    /// deferred while it ran ([AIO-31]) then goes on: on a task thread whose
    /// pool allows it (`TaskPool.mayRunAgain`: its LIFO slot empty, within
    /// the fairness limit or nobody queued, [POOL-3]) it is marked running
    /// under the same lock and true is returned, for the caller to run its
    /// callback next (`dequeued: false`) and drop its in-flight reference;
    /// otherwise it is dispatched with that reference and false is returned.
    /// The caller owns the in-flight reference of the callback it runs and
    /// drops it after this returns.
    @discardableResult
    func runCallbacks(dequeued: Bool, worker: Unmanaged<TaskPool.WorkerContext>? = nil, streak: Int = 0) -> Bool {
        if dequeued {
            stripe.lock()
            flags = (flags & ~Self.completionPending) | Self.callbackRunning
            stripe.unlock()
        }
        let outer = callbackThread.load(ordering: .relaxed)  // written only by the thread running the callback
        callbackThread.store(Thread.current, ordering: .relaxed)
        callback?(self)
        callbackThread.store(outer, ordering: .relaxed)
        stripe.lock()
        busy -= 1
        stripe.pending -= 1
        if flags & Self.deferred != 0 {
            if let worker, worker._withUnsafeGuaranteedRef({ runtime.pool.mayRunAgain($0, streak: streak) }) {
                // Still running: the deferred completion's callback is next, here.
                flags &= ~(Self.deferred | Self.completionPending)
                stripe.unlock()
                return true
            }
            flags &= ~(Self.deferred | Self.callbackRunning)  // still pending: now queued
            stripe.unlock()
            runtime.pool.dispatch(Unmanaged.passUnretained(self))
            return false
        }
        flags &= ~Self.callbackRunning
        wakeWaitersIfIdle()
        stripe.unlock()
        return false
    }

    /// The timer reached the deadline of operation `armedSeq` ([AIO-21], [TMR-4]).
    /// A sleep's completion bound for the pool is appended to `batch` (with
    /// its in-flight reference), for the timer thread to queue all of one
    /// wake-up's completions at once ([TMR-3]).
    func timerExpired(seq armedSeq: UInt32, batch: inout ContiguousArray<Unmanaged<AioHandle>>) {
        stripe.lock()
        guard flags & Self.inFlight != 0, seq == armedSeq, cancelFn != nil || cancelSeqFn != nil else {
            stripe.unlock()  // finished, or already being canceled: the finisher wins
            return
        }
        flags &= ~Self.timerArmed  // it is out of the wheel
        if flags & Self.succeedAtExpiry != 0 {
            markFinished(nil, 0)  // a sleep reached its end ([AIO-25])
            let action = completionLocked()
            stripe.unlock()
            if case .enqueue = action {
                batch.append(Unmanaged.passUnretained(self))
            } else {
                carryOut(action)
            }
            return
        }
        let fn = cancelFn, seqFn = cancelSeqFn
        cancelFn = nil
        cancelSeqFn = nil
        stripe.unlock()
        if let fn { fn(self, .timedOut) } else { seqFn?(self, .timedOut, armedSeq) }
    }

    /// Shutdown: the cancel routine of the operation in flight, taken (stripe
    /// lock held), as a closure to call with the error.
    func takeCancelForShutdown() -> ((AioError) -> Void)? {
        flags |= Self.stopped
        if let fn = cancelFn {
            cancelFn = nil
            return { [self] e in fn(self, e) }
        }
        if let fn = cancelSeqFn {
            cancelSeqFn = nil
            let s = seq
            return { [self] e in fn(self, e, s) }
        }
        return nil
    }

    /// The number of the operation in flight (its provider may read it after `begin`).
    var operationNumber: UInt32 { seq }

    /// The slots, read under the stripe lock: a provider writes them before
    /// `finish` (which takes the lock), so a reader that takes it too sees
    /// them, however the completion reached it (a callback, `wait()`, an
    /// awaited continuation) ([AIO-5]).
    @inline(__always) func lockedSlots() -> Slots? {
        stripe.lock()
        defer { stripe.unlock() }
        return slots
    }

    @inline(__always) func slotStorage() -> Slots {
        stripe.lock()
        defer { stripe.unlock() }
        if let slots { return slots }
        let s = Slots()
        slots = s
        return s
    }

    /// Inputs and outputs, allocated on first use so that a handle that never
    /// uses them stays small.
    final class Slots {
        var inputs: [(any Sendable)?] = [nil, nil, nil, nil]
        var outputs: [(any Sendable)?] = [nil, nil, nil, nil]

        /// Outputs taken out of the slots, boxed so that the common case
        /// (nothing to take) costs a nil reference, not a tuple of existentials.
        /// (Allocated only when there were outputs: accept and dial, which
        /// allocate their stream anyway.)
        final class Taken {
            let values: ((any Sendable)?, (any Sendable)?, (any Sendable)?, (any Sendable)?)
            init(_ o: [(any Sendable)?]) { values = (o[0], o[1], o[2], o[3]) }
        }

        func clearOutputs() {
            if outputs[0] != nil || outputs[1] != nil || outputs[2] != nil || outputs[3] != nil {
                for i in 0..<4 { outputs[i] = nil }
            }
        }

        /// Empties the outputs and returns what they held (for the caller to
        /// let go outside the stripe lock).
        func takeOutputs() -> Taken? {
            if outputs[0] == nil && outputs[1] == nil && outputs[2] == nil && outputs[3] == nil { return nil }
            let taken = Taken(outputs)
            for i in 0..<4 { outputs[i] = nil }
            return taken
        }
    }
}
