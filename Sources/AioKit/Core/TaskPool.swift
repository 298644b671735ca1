import Glibc

/// The runtime's callback workers ([POOL-1]..[POOL-6]).
///
/// A FIFO of finished handles (intrusive, linked through `liveNext`), guarded
/// by one mutex, and `taskThreads` workers parked on its condition variable.
/// A completion finished on a worker goes to that worker's LIFO slot and runs
/// right after the current callback, without a wake-up ([POOL-3]). A worker
/// that blocks in `wait()`/`stop()` is replaced by a spare thread, up to
/// `maxTaskThreads` ([POOL-4]); at that ceiling it runs queued callbacks while
/// it waits ([POOL-5]), so waits inside callbacks never starve the pool. A
/// worker out of work looks for more for up to 20 µs before it parks
/// (`Spinning`), so a completion queued right after (the poller's next
/// event) costs no wake-up on either side: while a worker spins, `enqueue`
/// signals nobody (the spinner looks at the queue under the lock before it
/// parks), and a spinner that finds work passes the rest on to a parked
/// worker.
final class TaskPool: @unchecked Sendable {  // every var below is guarded by `lock` (`hasWork` is an atomic mirror of `head != nil`); WorkerContext fields by their thread
    let lock = ConditionLock()
    private var head: Unmanaged<AioHandle>?
    private var tail: Unmanaged<AioHandle>?
    /// Threads alive, parked idle, blocked in wait(), running a callback.
    private var threads = 0
    private var idle = 0
    private var blocked = 0
    private var active = 0
    /// Workers in `spinBeforeParking`: each will look at the queue again
    /// under the lock before it parks, so `enqueue` need not wake anyone.
    private var spinning = 0
    private var terminated = false
    /// A transient thread drains the queue after termination.
    private var drainer = false
    /// Workers that have exited (or are exiting) and still need a join.
    private var exited: [pthread_t] = []
    let minThreads: Int
    let maxThreads: Int
    private let name: String

    /// How many LIFO-slot runs in a row before the slot goes to the queue (fairness).
    static let lifoLimit = 32
    /// How long a surplus worker lingers idle before it exits.
    static let surplusLingerNanos: UInt64 = 200_000_000

    static let workerKey = ThreadLocalKey()

    /// A worker's own state, reachable through the thread-local key.
    final class WorkerContext {
        unowned(unsafe) let pool: TaskPool
        var lifo: Unmanaged<AioHandle>?
        var blocking = 0
        init(pool: TaskPool) { self.pool = pool }
    }

    init(threads: Int, maxThreads: Int, name: String) {
        self.minThreads = threads
        self.maxThreads = maxThreads
        self.name = name
    }

    /// Starts the initial workers; false if the system refused a thread.
    func start() -> Bool {
        for _ in 0..<minThreads {
            lock.lock()
            threads += 1
            lock.unlock()
            if !spawnWorker() { return false }
        }
        return true
    }

    private func spawnWorker() -> Bool {
        joinExited()
        let ok = Thread.spawn(name: name) { [self] in workerMain(joinable: true) } != nil
        if !ok {
            lock.lock()
            threads -= 1
            lock.broadcast()
            lock.unlock()
        }
        return ok
    }

    /// The calling thread's worker context if it is one of this pool's workers.
    @inline(__always) func currentWorker() -> WorkerContext? {
        guard let raw = Self.workerKey.get() else { return nil }
        let ctx = Unmanaged<WorkerContext>.fromOpaque(raw).takeUnretainedValue()
        return ctx.pool === self ? ctx : nil
    }

    /// Queues a finished handle's callback; takes over its in-flight reference.
    @inline(__always) func dispatch(_ h: Unmanaged<AioHandle>) {
        if let ctx = currentWorker(), ctx.blocking == 0 {
            let previous = ctx.lifo
            ctx.lifo = h
            guard let previous else { return }
            enqueue(previous)
            return
        }
        enqueue(h)
    }

    /// Out of line: `dispatch`, inlined into every finish, keeps only the slot fast path
    /// (inlined here, this cost sleep0 about 10% through code layout).
    @inline(never) private func enqueue(_ h: Unmanaged<AioHandle>) {
        h._withUnsafeGuaranteedRef { $0.liveNext = nil }
        append(first: h, last: h)
    }

    /// Queues finished handles' callbacks in order, under one lock and with
    /// at most one wake-up (the woken worker runs the queue until it is
    /// empty); takes over their in-flight references. For the timer thread,
    /// whose one wake-up may end many sleeps.
    func enqueue(batch: ContiguousArray<Unmanaged<AioHandle>>) {
        guard let first = batch.first, let last = batch.last else { return }
        for i in batch.indices {
            let next = i + 1 < batch.count ? batch[i + 1] : nil
            batch[i]._withUnsafeGuaranteedRef { $0.liveNext = next }
        }
        append(first: first, last: last)
    }

    /// Appends the chain `first`...`last` (linked through `liveNext`, nil
    /// after `last`) to the queue and wakes a parked worker if nobody spins
    /// (after termination: starts the drainer).
    private func append(first: Unmanaged<AioHandle>, last: Unmanaged<AioHandle>) {
        lock.lock()
        if let t = tail {
            t._withUnsafeGuaranteedRef { $0.liveNext = first }
        } else {
            head = first
        }
        tail = last
        hasWork.set()
        if idle > 0 && spinning == 0 {
            lock.signal()
        } else if terminated && !drainer && threads == 0 {
            startDrainer()
        }
        lock.unlock()
    }

    /// Lock held.
    @inline(__always) private func dequeue() -> Unmanaged<AioHandle>? {
        guard let h = head else { return nil }
        head = h._withUnsafeGuaranteedRef { $0.liveNext }
        if head == nil { tail = nil }
        if head == nil { hasWork.clear() }
        return h
    }

    /// `head != nil`, readable without the lock (written under it): what an
    /// idle worker spins on.
    private let hasWork = Spinning.Flag()
    /// How long a worker that ran out of work looks for more before parking.
    static let idleSpinNanos: UInt64 = 20_000

    /// A worker with nothing to run (lock held, and held again on return):
    /// looks for new work for a moment, without the lock and counted in
    /// `spinning` (not `idle`), so that a completion queued meanwhile (the
    /// poller's next event, a cancel) needs no wake-up on either side.
    private func spinBeforeParking() {
        spinning += 1
        lock.unlock()
        hasWork.spin(for: Self.idleSpinNanos)
        lock.lock()
        spinning -= 1
    }

    /// Runs one callback and then whatever it put in the LIFO slot. A
    /// completion of the same handle deferred while its callback ran goes on
    /// here at once (`runCallbacks` returns true, one lock for the hand-over)
    /// as if it had gone through the slot, under the same fairness limit.
    private func run(_ first: Unmanaged<AioHandle>, _ ctx: WorkerContext) {
        var next: Unmanaged<AioHandle>? = first
        var streak = 0
        let worker = Unmanaged.passUnretained(ctx)  // the thread keeps it alive
        while let current = next {
            let handle = current.takeRetainedValue()  // the in-flight reference, dropped after the callback
            var dequeued = true
            while handle.runCallbacks(dequeued: dequeued, worker: worker, streak: streak) {
                current.release()  // the deferred operation's in-flight reference: `handle` holds one
                dequeued = false
                streak = streak + 1 >= Self.lifoLimit ? 0 : streak + 1
            }
            next = ctx.lifo
            ctx.lifo = nil
            streak += 1
            if let n = next, streak >= Self.lifoLimit {
                if hasWork.isSet {
                    // Others wait in the queue: the slot's handle goes behind them.
                    enqueue(n)
                    next = nil
                } else {
                    streak = 0  // nobody to be fair to: no hand-over, no wake-up
                }
            }
        }
    }

    /// May the deferred completion of the callback that just returned on
    /// `ctx`'s thread run there next, without the slot ([POOL-3])? Only when
    /// the slot is empty (what the callback finished runs first otherwise),
    /// the worker is not blocked in a wait, and the streak is under the
    /// fairness limit or nobody is queued.
    @inline(__always) func mayRunAgain(_ ctx: WorkerContext, streak: Int) -> Bool {
        ctx.lifo == nil && ctx.blocking == 0 && (streak + 1 < Self.lifoLimit || !hasWork.isSet)
    }

    private func joinExited() {
        let zombies: [pthread_t] = lock.withLock {
            let z = exited
            exited.removeAll()
            return z
        }
        for t in zombies { Thread.join(t) }
    }

    private func workerMain(joinable: Bool) {
        let ctx = WorkerContext(pool: self)
        let raw = Unmanaged.passRetained(ctx).toOpaque()
        Self.workerKey.set(raw)
        lock.lock()
        var spun = false
        while true {
            if let h = dequeue() {
                if spun && head != nil && idle > 0 && spinning == 0 {
                    // Work queued while this worker spun woke nobody: pass
                    // the rest on to a parked worker.
                    lock.signal()
                }
                spun = false
                active += 1
                lock.unlock()
                run(h, ctx)
                lock.lock()
                active -= 1
                continue
            }
            if terminated { break }
            if !spun {
                // Once per idle spell: look for work for a moment before
                // parking, then look at everything again (work, termination).
                spun = true
                spinBeforeParking()
                continue
            }
            spun = false
            idle += 1
            if threads - blocked > minThreads {
                // A spare thread, no longer needed: linger a little, then exit ([POOL-4]).
                lock.wait(untilNanos: Clock.nanos() &+ Self.surplusLingerNanos)
                idle -= 1
                if head == nil && threads - blocked > minThreads { break }
            } else {
                lock.wait()
                idle -= 1
            }
        }
        threads -= 1
        if joinable { exited.append(pthread_self()) } else { drainer = false }
        lock.broadcast()
        lock.unlock()
        Self.workerKey.set(nil)
        Unmanaged<WorkerContext>.fromOpaque(raw).release()
    }

    // MARK: - Blocking inside callbacks

    /// A worker is about to block in wait(): its LIFO slot goes to the queue
    /// and a spare worker takes its place if the ceiling allows. Returns true
    /// when it may not (the caller then helps run queued callbacks).
    func workerWillBlock(_ ctx: WorkerContext) -> Bool {
        if let l = ctx.lifo {
            ctx.lifo = nil
            enqueue(l)
        }
        ctx.blocking += 1
        lock.lock()
        blocked += 1
        var spawn = false
        var atCeiling = false
        if threads - blocked < minThreads {
            if threads < maxThreads {
                threads += 1
                spawn = true
            } else {
                atCeiling = true
            }
        }
        lock.unlock()
        if spawn && !spawnWorker() { atCeiling = true }
        return atCeiling
    }

    func workerDidUnblock(_ ctx: WorkerContext) {
        lock.lock()
        blocked -= 1
        lock.unlock()
        ctx.blocking -= 1
    }

    /// Runs one queued callback on this thread (a worker helping while it waits).
    func runOneQueued() -> Bool {
        lock.lock()
        guard let h = dequeue() else {
            lock.unlock()
            return false
        }
        active += 1
        lock.unlock()
        let handle = h.takeRetainedValue()
        handle.runCallbacks(dequeued: true)
        lock.lock()
        active -= 1
        lock.unlock()
        return true
    }

    // MARK: - Shutdown

    /// True when nothing is queued and no callback runs.
    var isQuiet: Bool {
        lock.withLock { head == nil && active == 0 }
    }

    /// Workers exit once the queue is empty; returns when they all have.
    func terminate() {
        lock.lock()
        terminated = true
        lock.broadcast()
        while threads > 0 { lock.wait() }
        lock.unlock()
        joinExited()
    }

    /// After termination, a callback still dispatched (an operation refused
    /// with `.stopped`) runs on a transient thread: never on the finisher's ([RT-3]).
    private func startDrainer() {
        drainer = true
        threads += 1
        if Thread.spawn(name: "aio-drain", detached: true, { [self] in workerMain(joinable: false) }) == nil {
            threads -= 1
            drainer = false
            // No thread at all: run it here rather than lose the callback.
            while let h = dequeue() {
                lock.unlock()
                h.takeRetainedValue().runCallbacks(dequeued: true)
                lock.lock()
            }
        }
    }
}
