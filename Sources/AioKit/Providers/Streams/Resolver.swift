import Glibc

/// Host-name resolution off the poller and task threads ([STR-3]): one
/// thread per runtime, started on first use, that runs getaddrinfo.
final class Resolver: @unchecked Sendable {  // vars guarded by `lock`
    private let lock = ConditionLock()
    private var jobs: [@Sendable () -> Void] = []
    private var thread: pthread_t?
    private var stopped = false
    private let name: String

    init(name: String) { self.name = name }

    /// Runs `job` on the resolver thread; false after the runtime stopped.
    func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if stopped { return false }
        if thread == nil {
            thread = Thread.spawn(name: name) { [self] in run() }
            if thread == nil { return false }
        }
        jobs.append(job)
        lock.signal()
        return true
    }

    private func run() {
        lock.lock()
        while true {
            if !jobs.isEmpty {
                let job = jobs.removeFirst()
                lock.unlock()
                job()
                lock.lock()
                continue
            }
            if stopped { break }
            lock.wait()
        }
        lock.unlock()
    }

    func stop() {
        let t: pthread_t? = lock.withLock {
            stopped = true
            lock.signal()
            return thread
        }
        if let t { Thread.join(t) }
    }
}
