import Glibc
import Synchronization

// The reactor facade ([SVC-1]..[SVC-12]): readiness notifications for sockets
// the user owns, on the runtime's task threads, level-triggered.
//
// Design. Each descriptor has one `ServiceSocket`: one edge-triggered
// registration with the runtime's poller for the union of what its readers
// and writers want (epoll takes a descriptor once). Each reader or writer
// registration (`ServiceRegistration`) owns an internal `AioHandle` whose
// callback calls the user's `notifyForRead`/`notifyForWrite`. An edge from the
// poller "starts and finishes" that handle at once (a completion through the
// task pool); the handle's own guarantees then give the threads (the task
// pool's) and "never two at once" ([AIO-31]). After the user's call returns,
// a poll(2) with a zero timeout re-checks the descriptor: still ready (or an
// edge came meanwhile), the handle is started again from its callback (a
// chain, so a busy socket cannot starve others: [POOL-3]). That is level
// triggering at the cost of edges: an idle registration costs an epoll entry
// and a few hundred bytes, no thread and no scan ([SVC-11]).

/// Receives readiness-to-read notifications from an `AioService` ([SVC-1]).
public protocol AioReader: AnyObject, Sendable { func notifyForRead() }

/// Receives readiness-to-write notifications from an `AioService` ([SVC-1]).
public protocol AioWriter: AnyObject, Sendable { func notifyForWrite() }

/// A reactor: register a reader or a writer per socket and be notified, on
/// the runtime's task threads, while the socket is readable or writable
/// ([SVC-1]..[SVC-12]).
///
/// Notifications are level-triggered: `notifyForRead` runs whenever the socket
/// is readable while the service is started, and again after it returns if
/// the socket is still readable (a peer's close or a pending error counts as
/// readable, so a reader sees them). A registration is never notified twice at
/// once. The socket is the user's: the service neither reads it, changes its
/// flags nor closes it; unregister before closing it.
///
/// Registrations may be made before `start()`; nothing is notified before
/// `start()` or after `stop()` returns, except a notification already running
/// (which `stopAndWait()` waits for). `start()` after `stop()` starts again with
/// the registrations kept. `unregisterReader`/`unregisterWriter` and
/// `stopAndWait` synchronise with running notifications, and never deadlock
/// when called from inside one.
public final class AioService: Sendable {
    private let core: ServiceCore

    /// A stopped service on `runtime`'s poller and task threads.
    public init(runtime: AioRuntime = .shared) {
        core = ServiceCore(runtime: runtime)
    }

    deinit { core.close() }

    /// Registers `reader` for `socket` ([SVC-2]); returns a registration id,
    /// unique for the life of the service. The service holds a strong
    /// reference to `reader` while it is registered ([SVC-3]). Not a valid
    /// descriptor (or one epoll refuses, such as a regular file): throws
    /// `.invalidArgument` or `.system`.
    public func registerReader(_ socket: Int32, _ reader: any AioReader) throws -> Int {
        try core.register(socket, .reader(reader))
    }

    /// Ends registration `id` ([SVC-6]): once this returns, no notification
    /// for it runs or will run, and the service's reference to the reader is
    /// dropped. From inside that registration's own notification it returns
    /// at once, and none follows. An unknown id (or one already unregistered,
    /// or a writer's): no effect.
    public func unregisterReader(_ id: Int) { core.unregister(id, reader: true) }

    /// Registers `writer` for `socket` ([SVC-2]), as `registerReader`.
    public func registerWriter(_ socket: Int32, _ writer: any AioWriter) throws -> Int {
        try core.register(socket, .writer(writer))
    }

    /// Ends a writer's registration `id` ([SVC-6]), as `unregisterReader`.
    public func unregisterWriter(_ id: Int) { core.unregister(id, reader: false) }

    /// Starts notifying ([SVC-7]): every registration whose socket is ready
    /// now is notified, and the rest as they become ready. Already started:
    /// throws `.busy`; the runtime shut down: `.stopped`.
    public func start() throws { try core.start() }

    /// Stops notifying ([SVC-8]): once this returns no new notification
    /// begins (one already running finishes). Registrations are kept.
    /// Already stopped: no effect.
    public func stop() { core.stop() }

    /// `stop()`, then returns once no notification runs ([SVC-9]). From inside
    /// a notification it waits for the others, not for its caller (nor for
    /// notifications themselves waiting in `stopAndWait`), so it never deadlocks.
    public func stopAndWait() { core.stopAndWait() }
}

/// What a registration notifies.
enum ServiceTarget: Sendable {
    case reader(any AioReader)
    case writer(any AioWriter)
}

/// The service's state, apart from `AioService` so that its `deinit` can
/// unregister everything while notifications still hold registrations.
final class ServiceCore: @unchecked Sendable {  // vars guarded by `lock`; `started`, `running`, `stopWaiters` atomics
    let runtime: AioRuntime
    /// Guards `sockets`, `registrations`, `nextID`, `parked`, `closed`;
    /// its condition wakes `stopAndWait`.
    let lock = ConditionLock()
    private var sockets: [Int32: ServiceSocket] = [:]
    private var registrations: [Int: ServiceRegistration] = [:]
    private var nextID = 1
    private var closed = false
    /// Notifications blocked in `stopAndWait` (not counted as running for it).
    private var parked = 0
    let started = Atomic<Bool>(false)
    /// Notifications inside the user's code (entered after checking `started`).
    let running = Atomic<Int>(0)
    let stopWaiters = Atomic<Int>(0)

    /// The service whose notification the current thread runs (its innermost).
    static let currentKey = ThreadLocalKey()

    init(runtime: AioRuntime) {
        self.runtime = runtime
    }

    func register(_ fd: Int32, _ target: ServiceTarget) throws -> Int {
        guard let identity = DescriptorIdentity(fd) else { throw AioError.invalidArgument }
        let isReader: Bool
        if case .reader = target { isReader = true } else { isReader = false }
        var stale: ServiceSocket?
        lock.lock()
        defer { lock.unlock() }
        if closed { throw AioError.closed }
        var socket = sockets[fd]
        if let s = socket, s.identity != identity {
            // The descriptor was closed while registered and its number reused:
            // the old socket is gone (the kernel dropped it from epoll).
            sockets[fd] = nil
            s.detach()
            stale = s
            socket = nil
        }
        if let stale { stale.retire(descriptorClosed: true) }
        stale = nil
        let id = nextID
        if let socket {
            let reg = ServiceRegistration(id: id, target: target, socket: socket, core: self)
            do {
                try socket.add(reg, isReader: isReader)
            } catch {
                reg.abandon()
                throw error
            }
            registrations[id] = reg
            nextID += 1
            return id
        }
        let s = ServiceSocket(fd: fd, identity: identity, core: self)
        let reg = ServiceRegistration(id: id, target: target, socket: s, core: self)
        s.readers = isReader ? [reg] : []
        s.writers = isReader ? [] : [reg]
        do {
            try s.attach(interest: isReader ? .readable : .writable)  // reports readiness already there ([POLL-2])
        } catch {
            reg.abandon()
            throw error
        }
        sockets[fd] = s
        registrations[id] = reg
        nextID += 1
        return id
    }

    func unregister(_ id: Int, reader: Bool) {
        lock.lock()
        guard let reg = registrations[id], reg.isReader == reader else {
            lock.unlock()
            return
        }
        registrations[id] = nil
        let socket = reg.socket
        let empty = socket.remove(reg)
        if empty && sockets[socket.fd] === socket { sockets[socket.fd] = nil }
        // Deregistering waits only for a running poller handler, which never takes this lock.
        if empty { socket.retire(descriptorClosed: !socket.identityHolds) }
        lock.unlock()
        reg.finish()  // waits for a running notification unless it is the caller's
    }

    func start() throws {
        lock.lock()
        if closed || runtime.isShutDown {
            lock.unlock()
            throw AioError.stopped
        }
        if started.load(ordering: .sequentiallyConsistent) {
            lock.unlock()
            throw AioError.busy
        }
        started.store(true, ordering: .sequentiallyConsistent)
        let all = Array(sockets.values)
        lock.unlock()
        // Edges are not kept while stopped: look once at every socket.
        ServiceSocket.notifyReady(all)
    }

    func stop() {
        started.store(false, ordering: .sequentiallyConsistent)
    }

    func stopAndWait() {
        stop()
        let inside = isInsideNotification
        lock.lock()
        if inside {
            parked += 1
            lock.broadcast()
        }
        stopWaiters.add(1, ordering: .sequentiallyConsistent)
        while running.load(ordering: .sequentiallyConsistent) > parked { lock.wait() }
        stopWaiters.subtract(1, ordering: .sequentiallyConsistent)
        if inside { parked -= 1 }
        lock.unlock()
    }

    /// True on a thread running one of this service's notifications.
    private var isInsideNotification: Bool {
        Self.currentKey.get() == Unmanaged.passUnretained(self).toOpaque()
    }

    /// A notification is about to call the user: false when the service is
    /// stopped (checked after counting it, so that `stop` never misses it).
    @inline(__always) func enter() -> Bool {
        running.add(1, ordering: .sequentiallyConsistent)
        if started.load(ordering: .sequentiallyConsistent) { return true }
        leave()
        return false
    }

    @inline(__always) func leave() {
        running.subtract(1, ordering: .sequentiallyConsistent)
        if stopWaiters.load(ordering: .sequentiallyConsistent) > 0 {
            lock.lock()
            lock.broadcast()
            lock.unlock()
        }
    }

    /// The service is gone: stop, and drop every registration without waiting.
    func close() {
        stop()
        lock.lock()
        closed = true
        let all = Array(sockets.values)
        let regs = Array(registrations.values)
        sockets = [:]
        registrations = [:]
        lock.unlock()
        for r in regs { r.abandon() }
        for s in all { s.retire(descriptorClosed: !s.identityHolds) }
    }
}

/// What tells one open socket from another that later got the same number.
struct DescriptorIdentity: Equatable, Sendable {
    let device: UInt
    let inode: UInt

    /// nil when `fd` is not an open descriptor.
    init?(_ fd: Int32) {
        var st = stat()
        guard fd >= 0, fstat(fd, &st) == 0 else { return nil }
        device = UInt(st.st_dev)
        inode = UInt(st.st_ino)
    }
}

/// One descriptor of a service: its poller registration and the readers and
/// writers registered on it.
final class ServiceSocket: PollHandler, @unchecked Sendable {  // vars guarded by `lock` (registrations' state too)
    let fd: Int32
    let identity: DescriptorIdentity
    let core: ServiceCore
    let lock = Lock()
    var readers: [ServiceRegistration] = []
    var writers: [ServiceRegistration] = []
    private var registration: PollRegistration?
    private var interest: PollEvents = []

    init(fd: Int32, identity: DescriptorIdentity, core: ServiceCore) {
        self.fd = fd
        self.identity = identity
        self.core = core
    }

    /// The descriptor still names the socket registered.
    var identityHolds: Bool { DescriptorIdentity(fd) == identity }

    /// Registers with the poller (core lock held; the poller's handler never takes it).
    func attach(interest: PollEvents) throws(AioError) {
        self.interest = interest
        registration = try core.runtime.poller.register(fd, interest: interest, handler: self)
    }

    /// Adds a registration and widens the poller interest if needed (core lock held).
    func add(_ reg: ServiceRegistration, isReader: Bool) throws(AioError) {
        lock.lock()
        if isReader { readers.append(reg) } else { writers.append(reg) }
        let wanted: PollEvents = isReader ? .readable : .writable
        let missing = !interest.contains(wanted)
        let newInterest = interest.union(wanted)
        lock.unlock()
        guard missing, let registration else {
            // No re-arm (no new edge): look now, level-triggered ([SVC-2]).
            if core.started.load(ordering: .sequentiallyConsistent) && isReady(reader: isReader) {
                lock.withLock { reg.schedule() }
            }
            return
        }
        do {
            // Re-arming reports readiness that is already there ([POLL-2]).
            try core.runtime.poller.rearm(registration, interest: newInterest)
            lock.withLock { interest = newInterest }
        } catch {
            _ = remove(reg)
            throw error
        }
    }

    /// Removes a registration; true when none is left (core lock held).
    func remove(_ reg: ServiceRegistration) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        readers.removeAll { $0 === reg }
        writers.removeAll { $0 === reg }
        reg.active = false
        return readers.isEmpty && writers.isEmpty
    }

    /// Forgets every registration (a stale socket whose number was reused).
    func detach() {
        lock.lock()
        for r in readers + writers { r.active = false }
        lock.unlock()
    }

    /// Deregisters from the poller (no lock held: it waits for a running handler).
    func retire(descriptorClosed: Bool) {
        let reg: PollRegistration? = lock.withLock {
            defer { registration = nil }
            return registration
        }
        if let reg { core.runtime.poller.deregister(reg, descriptorClosed: descriptorClosed) }
    }

    /// An edge from the poller ([POLL-3]): schedules the registrations it concerns.
    func pollEvents(_ events: PollEvents, _ registration: PollRegistration) {
        guard core.started.load(ordering: .relaxed) else { return }  // start() looks at every socket
        let readable = !events.isDisjoint(with: [.readable, .hangUp, .error])
        let writable = !events.isDisjoint(with: [.writable, .hangUp, .error])
        lock.lock()
        if readable { for r in readers { r.schedule() } }
        if writable { for w in writers { w.schedule() } }
        lock.unlock()
    }

    /// poll(2) with a zero timeout: is `fd` readable (or writable) now?
    func isReady(reader: Bool) -> Bool {
        let wanted = reader ? Int16(POLLIN) | pollReadHangUp : Int16(POLLOUT)
        var p = pollfd(fd: fd, events: wanted, revents: 0)
        let n = Glibc.poll(&p, 1, 0)
        guard n > 0 else { return false }
        if p.revents & Int16(POLLNVAL) != 0 { return false }
        return p.revents & (wanted | Int16(POLLERR) | Int16(POLLHUP)) != 0
    }

    /// At `start()`: one poll(2) over every socket; notifies those ready.
    static func notifyReady(_ sockets: [ServiceSocket]) {
        var fds: [pollfd] = []
        fds.reserveCapacity(sockets.count)
        for s in sockets {
            fds.append(pollfd(fd: s.fd, events: Int16(POLLIN | POLLOUT) | pollReadHangUp, revents: 0))
        }
        var start = 0
        while start < fds.count {
            let n = min(4096, fds.count - start)
            let got = fds.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress! + start, nfds_t(n), 0) }
            if got > 0 {
                for i in start..<(start + n) {
                    let r = fds[i].revents
                    if r == 0 || r & Int16(POLLNVAL) != 0 { continue }
                    let readable = r & (Int16(POLLIN | POLLERR | POLLHUP) | pollReadHangUp) != 0
                    let writable = r & Int16(POLLOUT | POLLERR | POLLHUP) != 0
                    let s = sockets[i]
                    s.lock.lock()
                    if readable { for reg in s.readers { reg.schedule() } }
                    if writable { for reg in s.writers { reg.schedule() } }
                    s.lock.unlock()
                }
            }
            start += n
        }
    }
}

/// One reader or writer registration: its internal handle runs the user's
/// notification, one at a time ([SVC-4], [SVC-5]).
final class ServiceRegistration: @unchecked Sendable {  // vars guarded by `socket.lock`
    let id: Int
    let isReader: Bool
    let socket: ServiceSocket
    let core: ServiceCore
    /// The user's object: held while registered ([SVC-3]).
    var target: ServiceTarget?
    /// The handle's callback holds this registration: the cycle is broken when it ends.
    var handle: AioHandle?
    var active = true
    /// A notification is queued or running (the handle is busy with it).
    var scheduled = false
    /// An edge came while scheduled: look again after the notification.
    var again = false

    init(id: Int, target: ServiceTarget, socket: ServiceSocket, core: ServiceCore) {
        self.id = id
        if case .reader = target { isReader = true } else { isReader = false }
        self.target = target
        self.socket = socket
        self.core = core
        handle = AioHandle(runtime: core.runtime) { [self] h in fire(h) }
    }

    /// Queues a notification unless one is queued or running (socket lock held).
    @inline(__always) func schedule() {
        guard active else { return }
        if scheduled {
            again = true
            return
        }
        scheduled = true
        dispatch()
    }

    /// Starts and finishes the handle: its callback runs on a task thread
    /// (socket lock held; never blocks).
    @inline(__always) private func dispatch() {
        guard let handle else {
            scheduled = false
            return
        }
        if handle.start(onCancel: nil) { handle.finish() }
    }

    /// The handle's callback: the user's notification, then the level re-check.
    private func fire(_ h: AioHandle) {
        let lock = socket.lock
        lock.lock()
        guard active, h.error == nil, let target else {
            scheduled = false
            lock.unlock()
            return
        }
        again = false
        lock.unlock()
        if core.enter() {
            let outer = ServiceCore.currentKey.get()
            ServiceCore.currentKey.set(Unmanaged.passUnretained(core).toOpaque())
            switch target {
            case .reader(let r): r.notifyForRead()
            case .writer(let w): w.notifyForWrite()
            }
            ServiceCore.currentKey.set(outer)
            core.leave()
        } else {
            lock.withLock { scheduled = false }  // stopped: start() looks again
            return
        }
        lock.lock()
        if active && !again {
            lock.unlock()
            let ready = socket.isReady(reader: isReader)
            lock.lock()
            if ready { again = true }
        }
        if active && again && core.started.load(ordering: .relaxed) {
            again = false
            dispatch()  // still ready: notify again, after this callback returns ([SVC-4])
        } else {
            scheduled = false
        }
        lock.unlock()
    }

    /// Unregistered (`active` already false): waits for a notification in
    /// flight unless called from it, then drops the user's object and the handle.
    func finish() {
        let h = socket.lock.withLock { handle }
        h?.wait()  // returns at once from the handle's own callback ([DL-1])
        let (t, hh) = socket.lock.withLock { () -> (ServiceTarget?, AioHandle?) in
            defer {
                target = nil
                handle = nil
            }
            return (target, handle)
        }
        withExtendedLifetime((t, hh)) {}  // released outside the lock
    }

    /// The service is gone: drop everything without waiting.
    func abandon() {
        let (t, h) = socket.lock.withLock { () -> (ServiceTarget?, AioHandle?) in
            active = false
            defer {
                target = nil
                handle = nil
            }
            return (target, handle)
        }
        withExtendedLifetime((t, h)) {}
    }
}

/// POLLRDHUP (a GNU flag Glibc's Swift module leaves out): the peer closed its side.
private let pollReadHangUp: Int16 = 0x2000
