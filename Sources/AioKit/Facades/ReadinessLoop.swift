import Glibc

// The readiness-loop facade ([RDY-1]..[RDY-11]), in mio's shape: tokens,
// interests, edge-triggered multi-shot events with hints, a loop the caller
// runs on its own thread.
//
// Design. No second event loop: each registered descriptor is a registration
// with the runtime's poller (edge-triggered, made once). Its handler, on a
// poller thread, ORs the event into the registration's pending bits and, if
// the registration was not pending yet, appends it to the loop's queue and
// signals the condition variable `runOnce` waits on. `runOnce` takes the whole
// queue and calls the handler on the caller's thread, outside every lock, so
// the handler may register, reregister and deregister. A registration is in
// the queue at most once (like epoll's ready list), so the queue is bounded by
// the number of registrations.

/// What a registration waits for ([RDY-2]).
public struct Interest: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let readable = Interest(rawValue: 1)
    public static let writable = Interest(rawValue: 2)
}

/// Why a descriptor was reported readable ([RDY-5]). A hint only: whatever it
/// says, read until the call would block (EAGAIN), as with any edge-triggered
/// interface; data may still be waiting before a hang-up or an error.
public enum ReadHint: Sendable, Hashable {
    /// Readable: data (or a connection to accept) arrived.
    case data
    /// The peer closed its side (EPOLLRDHUP), or both sides are down (EPOLLHUP).
    case hangUp
    /// The socket has a pending error (EPOLLERR), such as a reset connection.
    case error
    /// The backend could not tell (not produced on Linux today).
    case unknown
}

/// Receives a `ReadinessLoop`'s events, on the thread that runs the loop.
public protocol ReadinessHandler: AnyObject {
    func readable(_ loop: ReadinessLoop, token: Int, hint: ReadHint)
    func writable(_ loop: ReadinessLoop, token: Int)
}

/// An edge-triggered readiness loop over the runtime's poller ([RDY-1]..[RDY-11]).
///
/// Register a descriptor with a token and an interest; `runOnce` (or `run`)
/// waits on the calling thread and calls the handler there for each event:
/// `readable(token:hint:)` and/or `writable(token:)`. Events are edge-triggered
/// and multi-shot: a descriptor is reported when it becomes ready (and once at
/// registration or reregistration if it already is), with no re-arming; after
/// an event, read (or write) until the call would block, or no further event
/// may come. The descriptor stays the caller's (made non-blocking by the caller,
/// never closed by the loop). Closing it removes it from the loop.
///
/// One thread at a time should run the loop (events are handed out in
/// batches; two runners would each get some). `shutdown()` from any thread
/// makes `run()` return at once and ends the loop.
public final class ReadinessLoop: Sendable {
    private let core: LoopCore

    /// A loop on `runtime`'s poller; `.stopped` if the runtime is shut down.
    public init(runtime: AioRuntime = .shared) throws {
        if runtime.isShutDown { throw AioError.stopped }
        core = LoopCore(runtime: runtime)
    }

    deinit { core.shutdown() }

    /// Registers `descriptor` ([RDY-1], [RDY-3]). Empty interest: `.invalidArgument`;
    /// not an open descriptor: `.invalidArgument`; one epoll refuses (a regular
    /// file): `.system`; already registered (here or with another loop or stream of
    /// the runtime): `.busy`; after `shutdown()`: `.closed`.
    public func register(_ descriptor: Int32, token: Int, interest: Interest) throws {
        try core.register(descriptor, token: token, interest: interest)
    }

    /// Changes the token and interest of a registered descriptor ([RDY-7]); an
    /// event arrives if it is ready now for the new interest. Not registered:
    /// `.invalidArgument`.
    public func reregister(_ descriptor: Int32, token: Int, interest: Interest) throws {
        try core.reregister(descriptor, token: token, interest: interest)
    }

    /// Removes `descriptor` ([RDY-8]): no event for it is delivered once this
    /// returns (an event of the batch being delivered is skipped). Not
    /// registered (or already closed: it is gone): `.invalidArgument`.
    public func deregister(_ descriptor: Int32) throws {
        try core.deregister(descriptor)
    }

    /// Waits at most `timeout` (nil: until an event or shutdown) and calls the
    /// handler, on this thread, for each event ([RDY-9]). Returns the number of
    /// events: descriptors reported (one event may be both readable and
    /// writable). 0 on time-out and after `shutdown()`.
    @discardableResult
    public func runOnce(_ handler: some ReadinessHandler, timeout: Duration?) throws -> Int {
        try core.runOnce(self, handler, timeout: timeout)
    }

    /// Runs the loop until `shutdown()` ([RDY-10]); returns at once if it was already called.
    public func run(_ handler: some ReadinessHandler) throws {
        while !core.isShutDown {
            _ = try core.runOnce(self, handler, timeout: nil)
        }
    }

    /// Ends the loop, from any thread ([RDY-10]): a waiting `run()`/`runOnce`
    /// returns at once, every registration is removed, later registrations
    /// throw `.closed` and `run()`/`runOnce` return at once. Idempotent.
    public func shutdown() { core.shutdown() }
}

/// One registered descriptor.
final class LoopRegistration: PollHandler, @unchecked Sendable {  // vars guarded by the loop's `queueLock`
    let fd: Int32
    let identity: DescriptorIdentity
    unowned let core: LoopCore  // the core outlives its registrations' events (deregistered first)
    var token: Int
    var interest: Interest
    /// Events not delivered yet (empty: not in the queue).
    var pending: PollEvents = []
    var dead = false
    /// Set by `registryLock` holders only.
    var pollRegistration: PollRegistration?

    init(fd: Int32, identity: DescriptorIdentity, token: Int, interest: Interest, core: LoopCore) {
        self.fd = fd
        self.identity = identity
        self.token = token
        self.interest = interest
        self.core = core
    }

    /// On a poller thread ([RDY-3], [RDY-4]).
    func pollEvents(_ events: PollEvents, _ registration: PollRegistration) {
        core.enqueue(self, events)
    }
}

final class LoopCore: @unchecked Sendable {  // `registered` guarded by `registryLock`; the rest by `queueLock`
    let runtime: AioRuntime
    /// Serialises register/reregister/deregister/shutdown; never taken on a poller thread.
    private let registryLock = Lock()
    private var registered: [Int32: LoopRegistration] = [:]
    /// Guards the queue and every registration's `token`, `interest`, `pending`, `dead`.
    private let queueLock = ConditionLock()
    private var queue: [LoopRegistration] = []
    private var spare: [LoopRegistration] = []
    private var waiting = 0
    private var stopped = false

    init(runtime: AioRuntime) {
        self.runtime = runtime
    }

    var isShutDown: Bool { queueLock.withLock { stopped } }

    static func pollInterest(_ i: Interest) -> PollEvents {
        var e: PollEvents = []
        if i.contains(.readable) { e.insert(.readable) }
        if i.contains(.writable) { e.insert(.writable) }
        return e
    }

    func register(_ fd: Int32, token: Int, interest: Interest) throws {
        guard !interest.isEmpty, interest.rawValue & ~3 == 0 else { throw AioError.invalidArgument }
        guard let identity = DescriptorIdentity(fd) else { throw AioError.invalidArgument }
        registryLock.lock()
        defer { registryLock.unlock() }
        if queueLock.withLock({ stopped }) { throw AioError.closed }
        if let old = registered[fd] {
            if old.identity == identity { throw AioError.busy }
            // Closed and its number reused: the old one is gone ([RDY-6]).
            drop(old, descriptorClosed: true)
        }
        let reg = LoopRegistration(fd: fd, identity: identity, token: token, interest: interest, core: self)
        let result: Result<PollRegistration, AioError>
        do {
            result = .success(try runtime.poller.register(fd, interest: Self.pollInterest(interest), handler: reg))
        } catch {
            result = .failure(error)
        }
        switch result {
        case .success(let pr):
            reg.pollRegistration = pr
            registered[fd] = reg
        case .failure(.system(errno: EEXIST)):
            throw AioError.busy  // registered elsewhere on this runtime's poller
        case .failure(let e):
            throw e
        }
    }

    func reregister(_ fd: Int32, token: Int, interest: Interest) throws {
        guard !interest.isEmpty, interest.rawValue & ~3 == 0 else { throw AioError.invalidArgument }
        registryLock.lock()
        defer { registryLock.unlock() }
        if queueLock.withLock({ stopped }) { throw AioError.closed }
        guard let reg = registered[fd], let pr = reg.pollRegistration else { throw AioError.invalidArgument }
        if DescriptorIdentity(fd) != reg.identity {
            drop(reg, descriptorClosed: true)
            throw AioError.invalidArgument
        }
        queueLock.withLock {
            reg.token = token
            reg.interest = interest
        }
        // Outside `queueLock`: the poller's handler holds its lock while it takes ours.
        try runtime.poller.rearm(pr, interest: Self.pollInterest(interest))
    }

    func deregister(_ fd: Int32) throws {
        registryLock.lock()
        defer { registryLock.unlock() }
        if queueLock.withLock({ stopped }) { throw AioError.closed }
        guard let reg = registered[fd] else { throw AioError.invalidArgument }
        let closed = DescriptorIdentity(fd) != reg.identity
        drop(reg, descriptorClosed: closed)
        if closed { throw AioError.invalidArgument }  // it was gone already
    }

    /// Removes a registration (registry lock held).
    private func drop(_ reg: LoopRegistration, descriptorClosed: Bool) {
        registered[reg.fd] = nil
        queueLock.withLock { reg.dead = true }
        if let pr = reg.pollRegistration {
            reg.pollRegistration = nil
            runtime.poller.deregister(pr, descriptorClosed: descriptorClosed)  // waits for a running handler
        }
    }

    /// A poller thread reports `events` for `reg`.
    @inline(__always) func enqueue(_ reg: LoopRegistration, _ events: PollEvents) {
        queueLock.lock()
        if !reg.dead {
            if reg.pending.isEmpty {
                queue.append(reg)
                queued.set()
                if waiting > 0 { queueLock.signal() }
            }
            reg.pending.formUnion(events)
        }
        queueLock.unlock()
    }

    /// Set (under `queueLock`) when the queue gets a registration, cleared
    /// when `runOnce` takes it: `runOnce` spins on it before parking.
    private let queued = Spinning.Flag()

    func runOnce(_ loop: ReadinessLoop, _ handler: some ReadinessHandler, timeout: Duration?) throws -> Int {
        let deadline: UInt64? = timeout.map { Clock.deadline(after: $0) }
        while true {
            queued.spin(for: Spinning.nanos, notPast: deadline)
            queueLock.lock()
            while queue.isEmpty && !stopped {
                if let deadline {
                    if Clock.nanos() >= deadline { break }
                    waiting += 1
                    queueLock.wait(untilNanos: deadline)
                    waiting -= 1
                } else {
                    waiting += 1
                    queueLock.wait()
                    waiting -= 1
                }
            }
            if stopped || queue.isEmpty {
                queueLock.unlock()
                return 0
            }
            // Take the queue, leaving the spare (empty) array in its place.
            var batch: [LoopRegistration] = []
            swap(&batch, &spare)
            swap(&batch, &queue)
            queued.clear()
            queueLock.unlock()

            let delivered = deliver(loop, handler, batch)
            batch.removeAll(keepingCapacity: true)
            queueLock.withLock { if spare.capacity < batch.capacity { spare = batch } }
            if delivered > 0 { return delivered }
            if let deadline, Clock.nanos() >= deadline { return 0 }
        }
    }

    /// Calls the handler for each registration of `batch` (no lock held) ([RDY-4], [RDY-5]).
    private func deliver(_ loop: ReadinessLoop, _ handler: some ReadinessHandler, _ batch: [LoopRegistration]) -> Int {
        var count = 0
        for reg in batch {
            queueLock.lock()
            let events = reg.pending
            reg.pending = []
            let dead = reg.dead
            let token = reg.token
            let interest = reg.interest
            queueLock.unlock()
            if dead || events.isEmpty { continue }
            // Closed by the user since the event came: gone from the loop ([RDY-6]).
            if DescriptorIdentity(reg.fd) != reg.identity { continue }
            let readable =
                interest.contains(.readable) && !events.isDisjoint(with: [.readable, .hangUp, .error])
            let writable =
                interest.contains(.writable) && !events.isDisjoint(with: [.writable, .hangUp, .error])
            if !readable && !writable { continue }
            count += 1
            if readable {
                let hint: ReadHint =
                    events.contains(.error) ? .error : events.contains(.hangUp) ? .hangUp : .data
                handler.readable(loop, token: token, hint: hint)
            }
            if writable {
                // The read side may have deregistered it.
                if readable && queueLock.withLock({ reg.dead }) { continue }
                handler.writable(loop, token: token)
            }
        }
        return count
    }

    func shutdown() {
        queueLock.lock()
        if stopped {
            queueLock.unlock()
            return
        }
        stopped = true
        queueLock.broadcast()
        queueLock.unlock()
        registryLock.lock()
        let all = Array(registered.values)
        registered = [:]
        for reg in all {
            queueLock.withLock { reg.dead = true }
            if let pr = reg.pollRegistration {
                reg.pollRegistration = nil
                runtime.poller.deregister(pr, descriptorClosed: DescriptorIdentity(reg.fd) != reg.identity)
            }
        }
        registryLock.unlock()
        queueLock.withLock {
            queue.removeAll()
            spare.removeAll()
        }
    }
}
