import Glibc

/// Deferred teardown on a thread of its own ([AIO-19], [DL-5]): `reap()`
/// hands a handle here; the reaper stops it (waiting for its operation and
/// callback, which it can do because it is not a task thread) and then drops
/// its reference. Other internal teardown that must not run on the thread
/// that asks for it can be queued as work.
final class Reaper: @unchecked Sendable {  // `items`, `processing`, `running` guarded by `lock`
    private enum Item {
        case handle(Unmanaged<AioHandle>)
        case work(@Sendable () -> Void)
    }

    private let lock = ConditionLock()
    private var items: [Item] = []
    private var head = 0
    private var processing = 0
    private var running = true
    private(set) var thread: pthread_t?

    func start(name: String) -> Bool {
        thread = Thread.spawn(name: name) { [self] in run() }
        return thread != nil
    }

    /// Stops `h` and drops the reaper's reference once it is idle.
    func reap(_ h: AioHandle) {
        let u = Unmanaged.passRetained(h)
        if !submit(.handle(u)) {
            // The runtime is gone: a thread of its own does the same.
            _ = Thread.spawn(name: "aio-reap", detached: true) {
                let handle = u.takeRetainedValue()
                handle.stop()
            }
        }
    }

    /// Runs `work` on the reaper thread (or a thread of its own after shutdown).
    func later(_ work: @escaping @Sendable () -> Void) {
        if !submit(.work(work)) {
            _ = Thread.spawn(name: "aio-reap", detached: true, work)
        }
    }

    private func submit(_ item: Item) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        guard running else { return false }
        items.append(item)
        lock.signal()
        return true
    }

    private func run() {
        lock.lock()
        while true {
            if head < items.count {
                let item = items[head]
                head += 1
                if head == items.count {
                    items.removeAll(keepingCapacity: true)
                    head = 0
                }
                processing += 1
                lock.unlock()
                switch item {
                case .handle(let u):
                    let handle = u.takeRetainedValue()
                    handle.stop()
                case .work(let w):
                    w()
                }
                lock.lock()
                processing -= 1
                continue
            }
            if !running { break }
            lock.wait()
        }
        lock.unlock()
    }

    var isQuiet: Bool { lock.withLock { head >= items.count && processing == 0 } }

    /// Drains what is queued, then joins the thread.
    func stop() {
        lock.withLock {
            running = false
            lock.signal()
        }
        // `thread` stays set: other threads compare against it (set once, before they exist).
        if let thread { Thread.join(thread) }
    }
}
