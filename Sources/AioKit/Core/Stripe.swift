import Glibc

/// One of a runtime's lock stripes. Every handle is bound to one stripe at
/// init (round robin); the stripe's mutex guards the handle's lifecycle state
/// (`AioHandle` fields marked "stripe"), its condition variable is where
/// `wait()` parks, and it keeps the list of the handles whose operation is in
/// flight, which `AioRuntime.shutdown()` walks ([RT-2]).
///
/// Striping keeps a handle small (no mutex of its own) while handles of
/// different stripes never contend.
///
/// A `Stripe` is a plain pointer to two cache lines of its own (a value, not
/// an object, so that locking a handle's stripe costs no retain and release,
/// which on a stripe shared by handles on several cores would be contended
/// atomics): the mutex and the fields it guards that every start and finish
/// writes (live list, pending count) in the first, the condition variable
/// and `closed` in the second. The runtime's `RuntimeCore` makes them
/// (`make`) and frees them (`destroy`) in its deinit, after the last handle,
/// which holds the runtime, is gone.
struct Stripe: @unchecked Sendable {  // every field in `memory` past the mutex is guarded by the mutex
    private let memory: UnsafeMutableRawPointer
    private static let liveHeadOffset = 40
    private static let pendingOffset = 48
    private static let condOffset = 64
    private static let closedOffset = 112

    @inline(__always) var mutex: UnsafeMutablePointer<pthread_mutex_t> {
        memory.assumingMemoryBound(to: pthread_mutex_t.self)
    }
    @inline(__always) var cond: UnsafeMutablePointer<pthread_cond_t> {
        (memory + Self.condOffset).assumingMemoryBound(to: pthread_cond_t.self)
    }

    /// Handles with an operation in flight (linked through `liveNext`/`livePrev`).
    var liveHead: Unmanaged<AioHandle>? {
        @inline(__always) get {
            (memory + Self.liveHeadOffset).load(as: UnsafeMutableRawPointer?.self).map { Unmanaged.fromOpaque($0) }
        }
        @inline(__always) nonmutating set {
            (memory + Self.liveHeadOffset).storeBytes(of: newValue?.toOpaque(), as: UnsafeMutableRawPointer?.self)
        }
    }
    /// Operations of this stripe's handles started and not yet over: their
    /// callback has not returned (the sum of their `busy`). Unlike the live
    /// list it also counts a completion between `finish` and its callback
    /// (queued, in a LIFO slot, deferred), which shutdown must wait for ([RT-2]).
    var pending: Int {
        @inline(__always) get { (memory + Self.pendingOffset).load(as: Int.self) }
        @inline(__always) nonmutating set { (memory + Self.pendingOffset).storeBytes(of: newValue, as: Int.self) }
    }
    /// Set by shutdown: starts are refused with `.stopped`.
    var closed: Bool {
        @inline(__always) get { (memory + Self.closedOffset).load(as: Bool.self) }
        @inline(__always) nonmutating set { (memory + Self.closedOffset).storeBytes(of: newValue, as: Bool.self) }
    }

    private init(memory: UnsafeMutableRawPointer) { self.memory = memory }

    /// A new stripe: its memory, mutex and condition variable.
    static func make() -> Stripe {
        precondition(MemoryLayout<pthread_mutex_t>.size <= liveHeadOffset)
        precondition(condOffset + MemoryLayout<pthread_cond_t>.size <= closedOffset)
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 128, alignment: 64)
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: 128)
        let s = Stripe(memory: memory)
        s.mutex.initialize(to: pthread_mutex_t())
        s.cond.initialize(to: pthread_cond_t())
        initializeMutexAndCondition(s.mutex, s.cond)
        return s
    }

    /// Frees the stripe (its owner's deinit: no handle uses it any more).
    func destroy() {
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
    }
}
