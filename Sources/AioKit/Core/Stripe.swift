import Glibc

/// One of a runtime's lock stripes. Every handle is bound to one stripe at
/// init (round robin); the stripe's mutex guards the handle's lifecycle state
/// (`AioHandle` fields marked "stripe"), its condition variable is where
/// `wait()` parks, and it keeps the list of the handles whose operation is in
/// flight, which `AioRuntime.shutdown()` walks ([RT-2]).
///
/// Striping keeps a handle small (no mutex of its own) while handles of
/// different stripes never contend.
final class Stripe: @unchecked Sendable {  // every var is guarded by `mutex`
    let mutex: UnsafeMutablePointer<pthread_mutex_t>
    let cond: UnsafeMutablePointer<pthread_cond_t>
    private let memory: UnsafeMutableRawPointer

    /// Handles with an operation in flight (linked through `liveNext`/`livePrev`).
    var liveHead: Unmanaged<AioHandle>?
    var liveCount = 0
    /// Operations of this stripe's handles started and not yet over: their
    /// callback has not returned (the sum of their `busy`). Unlike the live
    /// list it also counts a completion between `finish` and its callback
    /// (queued, in a LIFO slot, deferred), which shutdown must wait for ([RT-2]).
    var pending = 0
    /// Set by shutdown: starts are refused with `.stopped`.
    var closed = false

    init() {
        // One cache line each for the mutex and the condition variable's
        // neighbours, so that stripes do not share lines.
        memory = .allocate(byteCount: 128, alignment: 64)
        mutex = memory.bindMemory(to: pthread_mutex_t.self, capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let condMemory = memory + 64
        cond = condMemory.bindMemory(to: pthread_cond_t.self, capacity: 1)
        cond.initialize(to: pthread_cond_t())
        initializeMutexAndCondition(mutex, cond)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        memory.deallocate()
    }

    @inline(__always) func lock() {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "AioKit: pthread_mutex_lock failed (\(rc))")
    }

    @inline(__always) func unlock() {
        let rc = pthread_mutex_unlock(mutex)
        precondition(rc == 0, "AioKit: pthread_mutex_unlock failed (\(rc))")
    }

    @inline(__always) func wait() {
        let rc = pthread_cond_wait(cond, mutex)
        precondition(rc == 0, "AioKit: pthread_cond_wait failed (\(rc))")
    }

    func wait(untilNanos deadline: UInt64) {
        _ = conditionWait(cond, mutex, untilNanos: deadline)
    }

    @inline(__always) func broadcast() { pthread_cond_broadcast(cond) }

    // MARK: live list (caller holds the lock)

    @inline(__always) func link(_ h: AioHandle) {
        let u = Unmanaged.passUnretained(h)
        h.livePrev = nil
        h.liveNext = liveHead
        if let head = liveHead { head._withUnsafeGuaranteedRef { $0.livePrev = u } }
        liveHead = u
        liveCount += 1
    }

    @inline(__always) func unlink(_ h: AioHandle) {
        let next = h.liveNext, prev = h.livePrev
        if let next { next._withUnsafeGuaranteedRef { $0.livePrev = prev } }
        if let prev {
            prev._withUnsafeGuaranteedRef { $0.liveNext = next }
        } else {
            liveHead = next
        }
        h.liveNext = nil
        h.livePrev = nil
        liveCount -= 1
    }
}
