import Glibc

// The locks of AioKit: a pthread mutex (and condition variable) in stable heap
// memory, the NIOLock pattern. pthread primitives are what ThreadSanitizer
// understands; Synchronization's `Mutex` is invisible to it on Linux, so it is
// not used anywhere TSan must check.

/// A pthread mutex at a stable address.
final class Lock: @unchecked Sendable {  // the mutex is its own guard
    let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "AioKit: pthread_mutex_init failed (\(rc))")
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    @inline(__always) func lock() {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "AioKit: pthread_mutex_lock failed (\(rc))")
    }

    @inline(__always) func unlock() {
        let rc = pthread_mutex_unlock(mutex)
        precondition(rc == 0, "AioKit: pthread_mutex_unlock failed (\(rc))")
    }

    @inline(__always) func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }
}

/// A mutex with a condition variable on CLOCK_MONOTONIC, both at stable addresses.
final class ConditionLock: @unchecked Sendable {  // the mutex guards the condition
    let mutex: UnsafeMutablePointer<pthread_mutex_t>
    let cond: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        initializeMutexAndCondition(mutex, cond)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deinitialize(count: 1)
        mutex.deinitialize(count: 1)
        cond.deallocate()
        mutex.deallocate()
    }

    @inline(__always) func lock() {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "AioKit: pthread_mutex_lock failed (\(rc))")
    }

    @inline(__always) func unlock() {
        let rc = pthread_mutex_unlock(mutex)
        precondition(rc == 0, "AioKit: pthread_mutex_unlock failed (\(rc))")
    }

    @inline(__always) func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits for a signal; the caller holds the lock.
    @inline(__always) func wait() {
        let rc = pthread_cond_wait(cond, mutex)
        precondition(rc == 0, "AioKit: pthread_cond_wait failed (\(rc))")
    }

    /// Waits for a signal or until the monotonic clock reads `deadline`
    /// nanoseconds; the caller holds the lock. Returns false on time-out.
    @discardableResult
    func wait(untilNanos deadline: UInt64) -> Bool {
        conditionWait(cond, mutex, untilNanos: deadline)
    }

    @inline(__always) func signal() { pthread_cond_signal(cond) }
    @inline(__always) func broadcast() { pthread_cond_broadcast(cond) }
}

/// Initialises a mutex and a condition variable that measures time-outs on
/// CLOCK_MONOTONIC (the clock of `Clock.nanos()`).
func initializeMutexAndCondition(
    _ mutex: UnsafeMutablePointer<pthread_mutex_t>, _ cond: UnsafeMutablePointer<pthread_cond_t>
) {
    var rc = pthread_mutex_init(mutex, nil)
    precondition(rc == 0, "AioKit: pthread_mutex_init failed (\(rc))")
    var attr = pthread_condattr_t()
    pthread_condattr_init(&attr)
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
    rc = pthread_cond_init(cond, &attr)
    pthread_condattr_destroy(&attr)
    precondition(rc == 0, "AioKit: pthread_cond_init failed (\(rc))")
}

/// `pthread_cond_timedwait` to an absolute CLOCK_MONOTONIC time in nanoseconds.
/// Returns false on time-out.
func conditionWait(
    _ cond: UnsafeMutablePointer<pthread_cond_t>, _ mutex: UnsafeMutablePointer<pthread_mutex_t>,
    untilNanos deadline: UInt64
) -> Bool {
    var ts = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
    let rc = pthread_cond_timedwait(cond, mutex, &ts)
    if rc == ETIMEDOUT { return false }
    precondition(rc == 0, "AioKit: pthread_cond_timedwait failed (\(rc))")
    return true
}
