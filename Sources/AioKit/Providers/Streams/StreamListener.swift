import Glibc

/// Accepts connections on a TCP or Unix-domain address ([STR-1]..[STR-4]).
///
/// `init(url:)` only parses the URL (bad ones throw `.addressInvalid`);
/// `listen()` binds and listens; `accept(aio)` completes with the new stream
/// in output 0. Accept survives EMFILE, ENFILE and ECONNABORTED: it backs off
/// and keeps accepting once descriptors free up ([STR-4]).
public final class StreamListener: Sendable {
    private let state: ListenerState

    public init(url: String, runtime: AioRuntime = .shared) throws {
        state = ListenerState(url: try StreamURL(url, forListener: true), runtime: runtime)
    }

    deinit { state.close() }

    /// Binds and listens ([STR-2]): `.addressInUse` if taken (a stale socket
    /// file of a dead ipc listener is replaced), `.addressInvalid` if the
    /// host does not resolve to a local address; `.closed` after `close()`.
    public func listen() throws { try state.listen() }

    /// The runtime whose poller serves this listener.
    public var runtime: AioRuntime { state.runtime }

    /// The TCP port bound (after `listen()`; 0 before, and for ipc).
    public var boundPort: Int { state.boundPort }

    /// The address bound (after `listen()`).
    public var localAddress: SocketAddress? { state.localAddress }

    /// Accepts one connection: output 0 is the new `SocketStream` (as `any AioStream`).
    /// Before `listen()`: `.invalidArgument`; after `close()`: `.closed`.
    public func accept(_ aio: AioHandle) { state.accept(aio) }

    /// Completes pending accepts with `.closed`, later ones too; removes an ipc
    /// socket file it created. Calling it again does nothing ([STR-9]).
    public func close() { state.close() }
}

final class ListenerState: PollHandler, @unchecked Sendable {  // vars guarded by `lock`
    let url: StreamURL
    let runtime: AioRuntime
    private let lock = Lock()
    private var fd: Int32 = -1
    private var registration: PollRegistration?
    private var accepts = HandleQueue()
    private var closed = false
    private var port = 0
    private var ipcPath: String?
    /// Retry after EMFILE/ENFILE: a sleep on an internal handle.
    private var backoff: AioHandle?
    private var backoffPending = false
    private var backoffMillis = 0
    private var cancelRoutine: AioHandle.CancelRoutine!

    init(url: StreamURL, runtime: AioRuntime) {
        self.url = url
        self.runtime = runtime
        cancelRoutine = { [weak self] aio, error, seq in self?.cancel(aio, error, seq) }
    }

    var boundPort: Int { lock.withLock { port } }
    var localAddress: SocketAddress? { lock.withLock { fd >= 0 ? SocketAddress.of(fd, peer: false) : nil } }

    func listen() throws {
        lock.lock()
        defer { lock.unlock() }
        if closed { throw AioError.closed }
        if fd >= 0 { throw AioError.busy }
        let address: ResolvedAddress
        switch url.kind {
        case .ipc(let path):
            address = .unix(path)
        case .tcp(let host, let p, let family):
            if let a = ResolvedAddress.numeric(host: host, port: p, family: family) {
                address = a
            } else {
                address = try ResolvedAddress.resolve(host: host!, port: p, family: family, passive: true)
            }
        }
        let s = try Sys.socket(domain: address.family, type: Int32(SOCK_STREAM.rawValue))
        var ok = false
        defer { if !ok { Sys.close(s) } }
        if address.family != AF_UNIX {
            _ = Sys.setOption(s, SOL_SOCKET, SO_REUSEADDR, 1)
            if case .tcp(_, _, .ipv6) = url.kind { _ = Sys.setOption(s, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
        }
        var rc = address.withSockaddr { bind(s, $0, $1) }
        if rc != 0 && errno == EADDRINUSE, case .ipc(let path) = url.kind, Self.isStaleSocket(path) {
            unlink(path)
            rc = address.withSockaddr { bind(s, $0, $1) }
        }
        if rc != 0 { throw Self.bindError(errno) }
        if Glibc.listen(s, SOMAXCONN) != 0 { throw AioError.fromErrno }
        registration = try runtime.poller.register(s, interest: .readable, handler: self)
        ok = true
        fd = s
        if case .ipc(let path) = url.kind { ipcPath = path }
        port = SocketAddress.of(s, peer: false)?.port ?? 0
    }

    private static func bindError(_ e: Int32) -> AioError {
        switch e {
        case EADDRINUSE: return .addressInUse
        case EADDRNOTAVAIL, ENOENT, ENOTDIR: return .addressInvalid
        default: return AioError(errno: e)
        }
    }

    /// True if `path` is a socket file no process listens on (a dead listener's).
    static func isStaleSocket(_ path: String) -> Bool {
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else { return false }
        guard let probe = try? Sys.socket(domain: AF_UNIX, type: Int32(SOCK_STREAM.rawValue)) else { return false }
        defer { Sys.close(probe) }
        let a = ResolvedAddress.unix(path)
        let rc = a.withSockaddr { connect(probe, $0, $1) }
        return rc != 0 && errno == ECONNREFUSED
    }

    func accept(_ aio: AioHandle) {
        // begin under the listener lock, so that no cancel can slip in before the queueing.
        lock.lock()
        guard aio.begin(onCancel: nil, cancelRoutine: cancelRoutine, defaultTimeout: -1, sleepDeadline: 0, reset: true)
        else {
            lock.unlock()
            return
        }
        if closed || fd < 0 {
            let e: AioError = closed ? .closed : .invalidArgument
            lock.unlock()
            aio.finish(e)
            return
        }
        aio.providerWord = Int(aio.operationNumber) << 32 | 1
        accepts.append(aio)
        if accepts.head!.takeUnretainedValue() === aio && !backoffPending { drain() }
        lock.unlock()
    }

    /// Accepts for queued handles until the kernel has none (lock held).
    private func drain() {
        while let u = accepts.head {
            let aio = u.takeUnretainedValue()
            switch Sys.accept(fd) {
            case .done(let s):
                accepts.remove(aio)
                aio.providerWord = 0
                backoffMillis = 0
                do {
                    let stream = try SocketStream(
                        connected: s, runtime: runtime, registration: nil, isTCP: url.kind.isTCP)
                    aio.setOutput(0, stream as any AioStream)
                    aio.finish()
                } catch {
                    Sys.close(s)
                    aio.finish(error)
                }
            case .wouldBlock:
                return
            case .failed(let e):
                switch e {
                case ECONNABORTED, EPROTO, EPERM:
                    continue  // that connection is gone; take the next
                case EMFILE, ENFILE, ENOBUFS, ENOMEM:
                    scheduleBackoff()  // no busy loop: retry later ([STR-4])
                    return
                default:
                    accepts.remove(aio)
                    aio.providerWord = 0
                    aio.finish(AioError(errno: e))
                }
            }
        }
    }

    private func scheduleBackoff() {
        if backoffPending { return }
        backoffPending = true
        backoffMillis = min(max(backoffMillis * 2, 5), 200)
        if backoff == nil {
            backoff = AioHandle(runtime: runtime) { [weak self] _ in self?.backoffExpired() }
        }
        backoff!.sleep(.milliseconds(backoffMillis))
    }

    private func backoffExpired() {
        lock.lock()
        backoffPending = false
        if !closed && fd >= 0 { drain() }
        lock.unlock()
    }

    private func cancel(_ aio: AioHandle, _ error: AioError, _ seq: UInt32) {
        lock.lock()
        let word = aio.providerWord
        if word & 1 != 0 && UInt32(truncatingIfNeeded: word >> 32) == seq {
            accepts.remove(aio)
            aio.providerWord = 0
            aio.finish(error)
        }
        lock.unlock()
    }

    func pollEvents(_ events: PollEvents, _ registration: PollRegistration) {
        lock.lock()
        if !closed && !backoffPending { drain() }
        lock.unlock()
    }

    func close() {
        lock.lock()
        if closed {
            lock.unlock()
            return
        }
        closed = true
        let pending = accepts.removeAll()
        let reg = registration
        registration = nil
        let s = fd
        fd = -1
        let path = ipcPath
        let timer = backoff
        for aio in pending {
            aio.providerWord = 0
            aio.finish(.closed)
        }
        lock.unlock()
        timer?.close()
        if let reg { runtime.poller.deregister(reg) }
        if s >= 0 {
            if let path { unlink(path) }
            Sys.close(s)
        }
    }
}
