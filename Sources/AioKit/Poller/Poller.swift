import CAioShims
import Glibc
import Synchronization

/// What a poller registration can report ([POLL-3]).
struct PollEvents: OptionSet, Sendable {
    let rawValue: UInt32
    static let readable = PollEvents(rawValue: 1)
    static let writable = PollEvents(rawValue: 2)
    /// The peer closed its side (EPOLLRDHUP) or both sides are down (EPOLLHUP).
    static let hangUp = PollEvents(rawValue: 4)
    /// The socket has a pending error (EPOLLERR).
    static let error = PollEvents(rawValue: 8)

    init(rawValue: UInt32) { self.rawValue = rawValue }

    init(epoll ev: UInt32) {
        var r: UInt32 = 0
        if ev & Epoll.input != 0 { r |= 1 }
        if ev & Epoll.output != 0 { r |= 2 }
        if ev & (Epoll.readHangUp | Epoll.hangUp) != 0 { r |= 4 }
        if ev & Epoll.error != 0 { r |= 8 }
        rawValue = r
    }

    var epoll: UInt32 {
        var e: UInt32 = 0
        if contains(.readable) { e |= Epoll.input | Epoll.readHangUp }
        if contains(.writable) { e |= Epoll.output }
        return e
    }
}

/// The receiver of a registration's events; called on a poller thread with
/// the registration's lock held (so never twice at once for one registration).
protocol PollHandler: AnyObject, Sendable {
    func pollEvents(_ events: PollEvents, _ registration: PollRegistration)
}

/// One descriptor registered with the poller ([POLL-1]).
final class PollRegistration: @unchecked Sendable {  // `handler`, `dead`, `interest` guarded by `lock`
    let fd: Int32
    let lock = Lock()
    /// Held weakly: a registration never keeps its handler alive.
    weak var handler: (any PollHandler)?
    var dead = false
    var interest: PollEvents
    /// The thread running the handler now (0: none); read without the lock
    /// only to compare with the reader's own thread.
    let runningThread = Atomic<UInt>(0)
    unowned(unsafe) let poller: Poller

    init(fd: Int32, interest: PollEvents, handler: any PollHandler, poller: Poller) {
        self.fd = fd
        self.interest = interest
        self.handler = handler
        self.poller = poller
    }

    /// True when the calling thread is inside this registration's handler
    /// (it holds the lock).
    var isCurrentThreadHandling: Bool { runningThread.load(ordering: .relaxed) == Thread.current }
}

/// The runtime's epoll poller ([POLL-1]..[POLL-7]): edge-triggered
/// registrations made once per descriptor (no re-arming per event), one or
/// more threads in `epoll_wait`, an eventfd to wake them.
///
/// A registration's handler runs with the registration's lock held, so
/// `deregister` synchronises with a running handler by taking that lock; from
/// inside the handler (same thread) it marks the registration dead at once.
/// The registration's memory outlives any event a thread may still hold for
/// it: it is released only after every poller thread has passed a quiescent
/// point (just before `epoll_wait`) twice since it was retired.
final class Poller: @unchecked Sendable {  // vars guarded by `lock`
    private let epfd: Int32
    private let wakeFd: Int32
    private let lock = ConditionLock()
    private let threadCount: Int
    private let name: String
    private var threads: [pthread_t] = []
    private(set) var threadIDs: [pthread_t] = []
    private var started = false
    private var stopping = false
    /// The CPU the threads are pinned to (`setAffinity`), nil: none.
    private var affinity: Int?
    // Quiescent-state reclamation of retired registrations.
    private var generation: UInt64 = 1
    private var seen: [UInt64] = []
    private var retiredCurrent: [Unmanaged<PollRegistration>] = []
    private var retiredPrevious: [Unmanaged<PollRegistration>] = []
    static let batch: Int32 = 256

    init(threads: Int, name: String) throws(AioError) {
        threadCount = threads
        self.name = name
        epfd = try Epoll.create()
        do {
            wakeFd = try EventFD.create()
            try Epoll.add(epfd, wakeFd, events: Epoll.input, data: 0)
        } catch {
            Sys.close(epfd)
            throw error
        }
    }

    deinit {
        for u in retiredCurrent + retiredPrevious { u.release() }
        Sys.close(wakeFd)
        Sys.close(epfd)
    }

    /// Starts the threads on first use; false if the system refused.
    private func ensureStarted() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if started { return !threads.isEmpty }
        started = true
        seen = Array(repeating: 0, count: threadCount)
        for i in 0..<threadCount {
            guard let t = Thread.spawn(name: name, { [self] in run(index: i) }) else { break }
            if let affinity { _ = CPUAffinity.pin(t, affinity) }
            threads.append(t)
            threadIDs.append(t)
        }
        seen = Array(repeating: 0, count: threads.count)
        return !threads.isEmpty
    }

    /// Registers `fd` for `interest` ([POLL-1], [POLL-2]). Edge-triggered: an
    /// event arrives when the descriptor becomes ready, and once at
    /// registration if it already is.
    func register(_ fd: Int32, interest: PollEvents, handler: any PollHandler) throws(AioError) -> PollRegistration {
        guard ensureStarted() else { throw AioError.system(errno: EAGAIN) }
        lock.lock()
        let refused = stopping
        lock.unlock()
        if refused { throw AioError.stopped }
        let reg = PollRegistration(fd: fd, interest: interest, handler: handler, poller: self)
        let token = Unmanaged.passRetained(reg)  // the poller's reference, until retired
        do {
            try Epoll.add(
                epfd, fd, events: interest.epoll | Epoll.edge,
                data: UInt64(UInt(bitPattern: token.toOpaque())))
        } catch {
            token.release()
            throw error
        }
        return reg
    }

    /// Changes the interest ([POLL-2]); also re-reports readiness that is already there.
    func rearm(_ reg: PollRegistration, interest: PollEvents) throws(AioError) {
        let own = reg.isCurrentThreadHandling
        if !own { reg.lock.lock() }
        defer { if !own { reg.lock.unlock() } }
        if reg.dead { throw AioError.closed }
        reg.interest = interest
        try Epoll.modify(
            epfd, reg.fd, events: interest.epoll | Epoll.edge,
            data: UInt64(UInt(bitPattern: Unmanaged.passUnretained(reg).toOpaque())))
    }

    /// Replaces the handler (a connecting socket handing over to its stream).
    func setHandler(_ reg: PollRegistration, _ handler: any PollHandler) {
        let own = reg.isCurrentThreadHandling
        if !own { reg.lock.lock() }
        reg.handler = handler
        if !own { reg.lock.unlock() }
    }

    /// Removes the registration ([POLL-4]): once this returns, its handler is
    /// not running and never runs again, whether called from that handler,
    /// from another poller callback or from any other thread. The caller
    /// closes the descriptor afterwards. `descriptorClosed`: the owner already
    /// closed the descriptor (the kernel dropped it from the epoll set, and its
    /// number may now name another registration's socket): no epoll_ctl.
    func deregister(_ reg: PollRegistration, descriptorClosed: Bool = false) {
        let own = reg.isCurrentThreadHandling
        if !own { reg.lock.lock() }
        let wasDead = reg.dead
        reg.dead = true
        reg.handler = nil
        if !own { reg.lock.unlock() }
        if wasDead { return }
        if !descriptorClosed { Epoll.remove(epfd, reg.fd) }
        retire(reg)
    }

    /// Pins the poller's threads (running now, and any started later) to
    /// `cpu` (the watcher facade's `setPollerAffinity`); `.invalidArgument`
    /// when the system refuses that CPU.
    func setAffinity(_ cpu: Int) throws(AioError) {
        lock.lock()
        defer { lock.unlock() }
        for t in threads {
            if let e = CPUAffinity.pin(t, cpu) { throw e }
        }
        affinity = cpu
    }

    private func retire(_ reg: PollRegistration) {
        let u = Unmanaged.passUnretained(reg)
        lock.lock()
        if threads.isEmpty {
            // No poller thread can hold it.
            lock.unlock()
            u.release()
            return
        }
        retiredCurrent.append(u)
        let many = retiredCurrent.count >= 256
        lock.unlock()
        if many { EventFD.signal(wakeFd) }  // let idle threads pass a quiescent point
    }

    /// Called by poller thread `index` just before it waits: it holds no registration.
    private func quiescent(_ index: Int) -> [Unmanaged<PollRegistration>] {
        lock.lock()
        defer { lock.unlock() }
        seen[index] = generation
        guard seen.allSatisfy({ $0 == generation }) else { return [] }
        let free = retiredPrevious
        retiredPrevious = retiredCurrent
        retiredCurrent = []
        generation += 1
        return free
    }

    /// How long a poller thread that just handled events polls without
    /// sleeping before it blocks in epoll_wait.
    static let spinNanos: UInt64 = 20_000

    private func run(index: Int) {
        let events = UnsafeMutablePointer<epoll_event>.allocate(capacity: Int(Self.batch))
        defer { events.deallocate() }
        let me = Thread.current
        var busy = false
        while true {
            for u in quiescent(index) { u.release() }
            var n = 0
            if busy {
                // Events came last time: look again without sleeping for a
                // moment (the answer to what a callback just sent is often
                // due within microseconds), saving this thread a wake-up.
                let end = Clock.nanos() &+ Self.spinNanos
                Spinning.spin(until: end, counted: false) {
                    n = Epoll.wait(epfd, events, Self.batch, timeoutMillis: 0)
                    return n > 0
                }
            }
            if n == 0 { n = Epoll.wait(epfd, events, Self.batch, timeoutMillis: -1) }
            busy = n > 0
            for i in 0..<n {
                let e = events + i
                let data = Epoll.data(e)
                if data == 0 {
                    // Stopping: leave the (level-triggered) eventfd readable so that
                    // every poller thread wakes, not just the first.
                    if !lock.withLock({ stopping }) { EventFD.drain(wakeFd) }
                    continue
                }
                let reg = Unmanaged<PollRegistration>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(data))!)
                    .takeUnretainedValue()
                reg.lock.lock()
                // The handler is held weakly: this strong reference may be its
                // last one. It must go only after the lock is released, since
                // the handler's deinit may deregister (which takes the lock).
                let handler = reg.dead ? nil : reg.handler
                if let handler {
                    reg.runningThread.store(me, ordering: .relaxed)
                    handler.pollEvents(PollEvents(epoll: Epoll.events(e)), reg)
                    reg.runningThread.store(0, ordering: .relaxed)
                }
                reg.lock.unlock()
                withExtendedLifetime(handler) {}  // [POLL-4]: a deinit here deregisters without deadlock
            }
            lock.lock()
            let stop = stopping
            lock.unlock()
            if stop { break }
        }
    }

    /// Stops and joins the threads ([POLL-7]); registrations stay valid for
    /// `deregister`, and no handler runs any more.
    func stop() {
        lock.lock()
        stopping = true
        let ts = threads
        lock.unlock()
        EventFD.signal(wakeFd)  // stays readable until every thread has seen it
        for t in ts { Thread.join(t) }
        EventFD.drain(wakeFd)
        lock.lock()
        threads = []
        let free = retiredCurrent + retiredPrevious
        retiredCurrent = []
        retiredPrevious = []
        lock.unlock()
        for u in free { u.release() }
    }

    /// True on one of this poller's threads.
    var onPollerThread: Bool {
        let me = pthread_self()
        return lock.withLock { threadIDs.contains { pthread_equal($0, me) != 0 } }
    }
}
