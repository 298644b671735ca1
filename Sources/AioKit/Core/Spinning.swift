import Glibc
import Synchronization

/// Brief spinning before parking, for threads that wait for something the
/// runtime is about to do: an idle task thread (new work, 20 µs), a poller
/// thread that just handled events (the next ones, 20 µs), `wait()`
/// off the pool (the operation's end, 20 µs), `ReadinessLoop.runOnce` and
/// `Watcher.waitIO` (an event or a result, 50 µs). What comes within the spin
/// is taken without a wake-up, a thread switch each way saved. The caller
/// bounds the time; the spinner yields the core between looks, and at most
/// half the CPUs (at least one) spin at once in the process, so spinners
/// never hold the cores that the threads producing their events need.
enum Spinning {
    private static let spinners = Atomic<Int>(0)
    static let limit = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) / 2)
    /// The facades' spin (`ReadinessLoop`, `Watcher`).
    static let nanos: UInt64 = 50_000

    /// Spins until `ready()` holds or the monotonic clock reads `end`; returns
    /// at once when enough threads spin already. `counted: false` (the
    /// poller's threads, `Configuration.pollerThreads` of them, default 1)
    /// spins outside that limit: counted, the poller's spin took the only
    /// slot of a 2-core machine from the task thread it had just handed an
    /// event to, which then parked and needed a wake-up for the next one
    /// (tcp-pingpong through the reactor swung between 22 k and 60 k round
    /// trips/s from run to run; uncounted, 65-73 k in every run).
    @inline(__always) static func spin(until end: UInt64, counted: Bool = true, _ ready: () -> Bool) {
        if !counted {
            spinLoop(until: end, ready)
            return
        }
        if spinners.add(1, ordering: .relaxed).newValue > limit {
            spinners.subtract(1, ordering: .relaxed)
            return
        }
        defer { spinners.subtract(1, ordering: .relaxed) }
        spinLoop(until: end, ready)
    }

    /// A flag that its owner sets under its lock when something arrives (work,
    /// an event, a result) and clears when it takes it: what a waiter reads
    /// without the lock, and spins on before it parks.
    struct Flag: ~Copyable {
        private let word = Atomic<Bool>(false)

        init() {}

        @inline(__always) var isSet: Bool { word.load(ordering: .acquiring) }
        @inline(__always) func set() { word.store(true, ordering: .releasing) }
        @inline(__always) func clear() { word.store(false, ordering: .relaxed) }

        /// Spins (counted against the limit) until the flag is set, for at
        /// most `nanos` and not past `deadline`.
        @inline(__always) func spin(for nanos: UInt64, notPast deadline: UInt64? = nil) {
            if isSet { return }
            var end = Clock.nanos() &+ nanos
            if let deadline, deadline < end { end = deadline }
            Spinning.spin(until: end) { isSet }
        }
    }

    @inline(__always) private static func spinLoop(until end: UInt64, _ ready: () -> Bool) {
        var i = 0
        while !ready() {
            i &+= 1
            if i & 7 == 0 {
                if Clock.nanos() >= end { return }
                sched_yield()  // a thread that would produce the event may need this core
            }
        }
    }
}
