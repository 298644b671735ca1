import Glibc
import Synchronization

/// The machinery behind handles: task threads that run callbacks, the timer
/// thread, the reaper, and the lock stripes of its handles ([RT-1]..[RT-7]).
///
/// `AioRuntime.shared` starts on first use and serves every handle made
/// without a runtime; private runtimes isolate a subsystem (or a test) and are
/// shut down with `shutdown()` (or when their last reference goes).
public final class AioRuntime: Sendable {
    /// How a runtime is sized.
    public struct Configuration: Sendable {
        /// Callback workers kept running (default: max(2, cores)).
        public var taskThreads: Int
        /// The most workers the pool grows to while workers are blocked in
        /// `wait()`/`stop()` inside callbacks (default: taskThreads + 64) ([POOL-4]).
        public var maxTaskThreads: Int
        /// Threads waiting in epoll_wait for socket readiness (default 1),
        /// started when the first descriptor is registered.
        public var pollerThreads: Int
        /// Prefix of the runtime's thread names ("aio": aio-task, aio-timer,
        /// aio-reaper), as `top -H` and debuggers show them (15 bytes kept).
        public var name: String
        /// The backend of asynchronous files ([FILE-10]): `.automatic` (io_uring
        /// where the system allows it, else blocking threads; the environment
        /// variable AIOKIT_FILE_BACKEND=uring|threads decides when set), or forced.
        public var fileBackend: FileBackend = .automatic

        public init() {
            let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
            taskThreads = max(2, cores)
            maxTaskThreads = taskThreads + 64
            pollerThreads = 1
            name = "aio"
        }

        public init(taskThreads: Int, maxTaskThreads: Int? = nil, pollerThreads: Int = 1, name: String = "aio") {
            self.taskThreads = taskThreads
            self.maxTaskThreads = maxTaskThreads ?? (taskThreads + 64)
            self.pollerThreads = pollerThreads
            self.name = name
        }
    }

    private static let sharedRuntime: AioRuntime = {
        do {
            return try AioRuntime()
        } catch {
            fatalError("AioKit: the shared runtime cannot start its threads: \(error)")
        }
    }()

    /// The process-wide runtime, started on first use ([RT-1]).
    public static var shared: AioRuntime { sharedRuntime }

    public let configuration: Configuration
    let core: RuntimeCore
    let pool: TaskPool
    let timers: TimerQueue
    let reaper: Reaper
    let poller: Poller
    let resolver: Resolver
    let files: FileService
    private let stripes: [Stripe]
    private let stripeCounter = Atomic<Int>(0)
    static let stripeCount = 256

    /// Starts a runtime's threads. A configuration with fewer than one task
    /// thread, or a ceiling below `taskThreads` (or above 4096), throws
    /// `.invalidArgument`; a system that refuses threads throws ([RT-7]).
    public init(configuration: Configuration = .init()) throws {
        guard configuration.taskThreads >= 1, configuration.taskThreads <= 4096,
            configuration.maxTaskThreads >= configuration.taskThreads, configuration.maxTaskThreads <= 4096,
            configuration.pollerThreads >= 1, configuration.pollerThreads <= 64
        else { throw AioError.invalidArgument }
        self.configuration = configuration
        stripes = (0..<Self.stripeCount).map { _ in Stripe.make() }
        pool = TaskPool(
            threads: configuration.taskThreads, maxThreads: configuration.maxTaskThreads,
            name: configuration.name + "-task")
        timers = TimerQueue(pool: pool)
        reaper = Reaper()
        poller = try Poller(threads: configuration.pollerThreads, name: configuration.name + "-poll")
        resolver = Resolver(name: configuration.name + "-resolve")
        files = FileService(backend: configuration.fileBackend, name: configuration.name)
        core = RuntimeCore(
            stripes: stripes, pool: pool, timers: timers, reaper: reaper, poller: poller, resolver: resolver,
            files: files)
        let started =
            timers.start(name: configuration.name + "-timer") && reaper.start(name: configuration.name + "-reaper")
            && pool.start()
        if !started {
            core.shutdown()
            throw AioError.system(errno: EAGAIN)
        }
    }

    deinit {
        core.shutdown()
    }

    @inline(__always) func nextStripe() -> Stripe {
        let i = stripeCounter.add(1, ordering: .relaxed).newValue
        return stripes[i & (Self.stripeCount - 1)]
    }

    /// Completes every pending operation with `.stopped` (callbacks still run,
    /// exactly once), refuses new operations with `.stopped`, and joins the
    /// runtime's threads ([RT-2]..[RT-4]). Idempotent; a second caller waits
    /// for the first to finish. Called from one of the runtime's own threads
    /// (a callback), it starts the shutdown and returns ([RT-5]).
    public func shutdown() {
        core.shutdown()
    }

    /// True once `shutdown()` has started.
    public var isShutDown: Bool { core.isShuttingDown }
}

/// The runtime's parts and its shutdown, apart from `AioRuntime` so that a
/// shutdown finished on another thread never touches a runtime being freed.
final class RuntimeCore: @unchecked Sendable {  // `state` guarded by `lock`
    private enum State { case running, stopping, stopped }

    let stripes: [Stripe]
    let pool: TaskPool
    let timers: TimerQueue
    let reaper: Reaper
    let poller: Poller
    let resolver: Resolver
    let files: FileService
    private let lock = ConditionLock()
    private var state = State.running

    init(
        stripes: [Stripe], pool: TaskPool, timers: TimerQueue, reaper: Reaper, poller: Poller, resolver: Resolver,
        files: FileService
    ) {
        self.stripes = stripes
        self.files = files
        self.poller = poller
        self.resolver = resolver
        self.pool = pool
        self.timers = timers
        self.reaper = reaper
    }

    deinit {
        // Every handle holds its runtime, which holds this core: none is left.
        for s in stripes { s.destroy() }
    }

    var isShuttingDown: Bool { lock.withLock { state != .running } }

    /// True on a thread of this runtime (a callback, the timer, the reaper,
    /// the poller) or inside a callback run by `finishSync` on any thread.
    private var onOwnThread: Bool {
        if pool.currentWorker() != nil { return true }
        let me = pthread_self()
        if let t = reaper.thread, pthread_equal(t, me) != 0 { return true }
        if let t = timers.thread, pthread_equal(t, me) != 0 { return true }
        if poller.onPollerThread { return true }
        return AioHandle.inInlineCallback
    }

    func shutdown() {
        let own = onOwnThread
        lock.lock()
        switch state {
        case .running:
            state = .stopping
        case .stopping:
            if !own {
                while state != .stopped { lock.wait() }
            }
            lock.unlock()
            return
        case .stopped:
            lock.unlock()
            return
        }
        lock.unlock()

        // Refuse new operations, and take the cancel routine of every one in flight ([RT-2], [RT-3]).
        var pending: [(AioError) -> Void] = []
        for s in stripes {
            s.lock()
            s.closed = true
            var h = s.liveHead
            while let u = h {
                let handle = u.takeUnretainedValue()
                if let fn = handle.takeCancelForShutdown() { pending.append(fn) }
                h = handle.liveNext
            }
            s.unlock()
        }
        for fn in pending { fn(.stopped) }
        pending.removeAll()

        if own {
            // From a callback: the rest happens elsewhere ([RT-5]).
            if Thread.spawn(name: "aio-shutdown", detached: true, { [self] in finish() }) == nil {
                lock.withLock { state = .stopped; lock.broadcast() }
            }
            return
        }
        finish()
    }

    /// Waits until every operation started is over (its callback returned:
    /// a completion queued, in a worker's LIFO slot or deferred still counts)
    /// and the reaper is idle, then stops the threads ([RT-2]).
    private func finish() {
        var quietRounds = 0
        while quietRounds < 2 {
            var pending = 0
            for s in stripes {
                s.lock()
                pending += s.pending
                s.unlock()
            }
            if pending == 0 && pool.isQuiet && reaper.isQuiet {
                quietRounds += 1
            } else {
                quietRounds = 0
                var ts = timespec(tv_sec: 0, tv_nsec: 200_000)
                nanosleep(&ts, nil)
            }
        }
        resolver.stop()
        reaper.stop()
        timers.stop()
        files.stop()  // its threads joined, its rings' eventfds deregistered ([FILE-10])
        poller.stop()
        pool.terminate()
        lock.withLock {
            state = .stopped
            lock.broadcast()
        }
    }
}
