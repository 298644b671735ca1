import Glibc

/// The runtime's timer machinery: a timing wheel under one lock, and one
/// thread that sleeps until the earliest deadline and expires what is due
/// ([TMR-1]..[TMR-5]).
///
/// Lock order: a handle's stripe, then this lock (start and finish arm and
/// disarm under the stripe); the timer thread never holds this lock while it
/// takes a stripe: it retains what is due, lets go, then expires each entry
/// under its stripe, where the operation number tells a stale entry ([TMR-4]).
final class TimerQueue: @unchecked Sendable {  // `wheel`, `wakeAt`, `running` guarded by `lock`
    /// A tick is 2^16 ns (65.5 µs): the granularity of lateness.
    static let tickShift: UInt64 = 16

    let lock = ConditionLock()
    private var wheel: TimingWheel
    /// When the thread will wake next (nanoseconds); 0 while it is awake.
    private var wakeAt: UInt64 = 0
    private var running = true
    private(set) var thread: pthread_t?
    private var due = ContiguousArray<(Unmanaged<AioHandle>, UInt32)>()
    /// Sleeps' completions of one wake-up, queued on the pool together (timer thread only).
    private var completions = ContiguousArray<Unmanaged<AioHandle>>()

    /// Where the sleeps' completions go.
    private let pool: TaskPool

    init(pool: TaskPool) {
        self.pool = pool
        wheel = TimingWheel(startTick: Clock.nanos() >> Self.tickShift)
        due.reserveCapacity(1024)
        completions.reserveCapacity(1024)
    }

    deinit {
        wheel.deallocate()
    }

    func start(name: String) -> Bool {
        thread = Thread.spawn(name: name) { [self] in run() }
        return thread != nil
    }

    @inline(__always) static func tick(forNanos ns: UInt64) -> UInt64 {
        // Rounded up: an entry never fires before its deadline ([TMR-1]).
        let (sum, overflow) = ns.addingReportingOverflow((1 << tickShift) - 1)
        return overflow ? (UInt64.max >> tickShift) : sum >> tickShift
    }

    /// Arms `h` for operation `seq` at `deadline` (caller holds h's stripe).
    func insert(_ h: AioHandle, deadline: UInt64, seq: UInt32) {
        lock.lock()
        if h.timerSlot >= 0 { wheel.remove(h) }
        h.timerSeq = seq
        wheel.insert(h, tick: Self.tick(forNanos: deadline))
        if deadline < wakeAt { lock.signal() }
        lock.unlock()
    }

    /// Disarms `h` if it is still in the wheel (caller holds h's stripe).
    func remove(_ h: AioHandle) {
        lock.lock()
        if h.timerSlot >= 0 { wheel.remove(h) }
        lock.unlock()
    }

    var pendingCount: Int { lock.withLock { wheel.count } }

    private func run() {
        lock.lock()
        while running {
            let nowTick = Clock.nanos() >> Self.tickShift
            wheel.advance(to: nowTick, into: &due)
            if !due.isEmpty {
                lock.unlock()
                for (u, seq) in due {
                    let h = u.takeRetainedValue()
                    h.timerExpired(seq: seq, batch: &completions)
                }
                due.removeAll(keepingCapacity: true)
                if !completions.isEmpty {
                    pool.enqueue(batch: completions)  // one lock, at most one wake-up for all of them
                    completions.removeAll(keepingCapacity: true)
                }
                lock.lock()
                continue
            }
            if let next = wheel.nextTick {
                wakeAt = next << Self.tickShift
                lock.wait(untilNanos: wakeAt)
            } else {
                wakeAt = UInt64.max
                lock.wait()
            }
            wakeAt = 0
        }
        lock.unlock()
    }

    /// Stops and joins the thread (entries left are the runtime's to end).
    func stop() {
        lock.withLock {
            running = false
            lock.signal()
        }
        // `thread` stays set: other threads compare against it (set once, before they exist).
        if let thread { Thread.join(thread) }
    }
}
