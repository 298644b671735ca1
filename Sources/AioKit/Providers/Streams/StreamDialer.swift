import Glibc

/// Connects to a TCP or Unix-domain address ([STR-1], [STR-6], [STR-7]).
///
/// `dial(aio)` completes with the connected `SocketStream` in output 0. The
/// handle's timeout bounds the whole dial (name resolution included): past it
/// the dial ends with `.timedOut`. A refused connection is
/// `.connectionRefused`, an unreachable network `.unreachable`.
public final class StreamDialer: Sendable {
    private let state: DialerState

    public init(url: String, runtime: AioRuntime = .shared) throws {
        state = DialerState(url: try StreamURL(url, forListener: false), runtime: runtime)
    }

    deinit { state.close() }

    public func dial(_ aio: AioHandle) { state.dial(aio) }

    /// The runtime whose poller serves this dialer.
    public var runtime: AioRuntime { state.runtime }

    /// Pending and later dials complete with `.closed`. Calling it again does nothing.
    public func close() { state.close() }
}

final class DialerState: @unchecked Sendable {  // vars guarded by `lock`
    let url: StreamURL
    let runtime: AioRuntime
    private let lock = Lock()
    private var closed = false
    private var pending: [ObjectIdentifier: Connector] = [:]

    init(url: StreamURL, runtime: AioRuntime) {
        self.url = url
        self.runtime = runtime
    }

    func dial(_ aio: AioHandle) {
        let connector = Connector(dialer: self, aio: aio)
        guard aio.begin(
            onCancel: nil, cancelRoutine: { _, error, _ in connector.abandon(error) }, defaultTimeout: -1,
            sleepDeadline: 0, reset: true)
        else { return }
        lock.lock()
        if closed {
            lock.unlock()
            connector.abandon(.closed)
            return
        }
        pending[ObjectIdentifier(connector)] = connector
        lock.unlock()
        switch url.kind {
        case .ipc(let path):
            connector.connect(to: .unix(path))
        case .tcp(let host, let port, let family):
            if let a = ResolvedAddress.numeric(host: host, port: port, family: family) {
                connector.connect(to: a)
            } else {
                let name = host!
                let submitted = runtime.resolver.submit {
                    do {
                        let a = try ResolvedAddress.resolve(host: name, port: port, family: family, passive: false)
                        connector.connect(to: a)
                    } catch {
                        connector.abandon(error as? AioError ?? .addressInvalid)
                    }
                }
                if !submitted { connector.abandon(.stopped) }
            }
        }
    }

    func forget(_ c: Connector) {
        lock.withLock { _ = pending.removeValue(forKey: ObjectIdentifier(c)) }
    }

    func close() {
        let all: [Connector] = lock.withLock {
            if closed { return [] }
            closed = true
            let a = Array(pending.values)
            pending.removeAll()
            return a
        }
        for c in all { c.abandon(.closed) }
    }
}

/// One dial in progress: the socket until it connects, fails, or is abandoned.
final class Connector: PollHandler, @unchecked Sendable {  // vars guarded by `lock`
    private let lock = Lock()
    private let dialer: DialerState  // a cycle with `pending`, broken by forget() or close()
    private let runtime: AioRuntime
    private let aio: AioHandle
    private var fd: Int32 = -1
    private var registration: PollRegistration?
    private var done = false
    /// The address dialed is a TCP one (set with `fd`).
    private var isTCP = true

    init(dialer: DialerState, aio: AioHandle) {
        self.dialer = dialer
        self.runtime = dialer.runtime
        self.aio = aio
    }

    func connect(to address: ResolvedAddress) {
        lock.lock()
        if done {
            lock.unlock()
            return
        }
        let s: Int32
        do {
            s = try Sys.socket(domain: address.family, type: Int32(SOCK_STREAM.rawValue))
        } catch {
            fail(error)
            return
        }
        fd = s
        isTCP = address.family != AF_UNIX
        let rc = Sys.retrying { Int(address.withSockaddr { Glibc.connect(s, $0, $1) }) }
        if rc == 0 {
            succeed(registration: nil)
            return
        }
        let e = Int32(-rc)
        guard e == EINPROGRESS else {
            fail(Self.connectError(e))
            return
        }
        // A loopback TCP handshake is usually over by the time connect
        // returns: look once, and finish here without a trip through the
        // poller ([STR-14]).
        var p = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
        if Glibc.poll(&p, 1, 0) == 1 && p.revents & Int16(POLLOUT | POLLERR | POLLHUP) != 0 {
            settle()
            return
        }
        do {
            registration = try runtime.poller.register(s, interest: .writable, handler: self)
        } catch {
            fail(error)
            return
        }
        lock.unlock()
    }

    static func connectError(_ e: Int32) -> AioError {
        switch e {
        case ECONNREFUSED, ENOENT, EAGAIN: return .connectionRefused
        default: return AioError(errno: e)
        }
    }

    /// The socket became writable or failed (poller thread, registration lock held).
    func pollEvents(_ events: PollEvents, _ registration: PollRegistration) {
        lock.lock()
        if done || fd < 0 {
            lock.unlock()
            return
        }
        settle()
    }

    /// The connect is over: its result (SO_ERROR) ends the dial (lock held; releases it).
    private func settle() {
        let err = Sys.getOption(fd, SOL_SOCKET, SO_ERROR) ?? EINVAL
        if err == 0 {
            succeed(registration: registration)
        } else {
            fail(Self.connectError(err))
        }
    }

    /// Lock held; releases it.
    private func succeed(registration reg: PollRegistration?) {
        done = true
        let s = fd
        fd = -1
        registration = nil
        lock.unlock()
        dialer.forget(self)
        do {
            let stream = try SocketStream(connected: s, runtime: runtime, registration: reg, isTCP: isTCP)
            aio.setOutput(0, stream as any AioStream)
            aio.finish()
        } catch {
            if let reg { runtime.poller.deregister(reg) }
            Sys.close(s)
            aio.finish(error)
        }
    }

    /// Lock held; releases it.
    private func fail(_ error: AioError) {
        done = true
        let s = fd
        fd = -1
        let reg = registration
        registration = nil
        lock.unlock()
        dialer.forget(self)
        if let reg { runtime.poller.deregister(reg) }
        if s >= 0 { Sys.close(s) }
        aio.finish(error)
    }

    /// Timeout, cancel, dialer close or a resolution failure.
    func abandon(_ error: AioError) {
        lock.lock()
        if done {
            lock.unlock()
            return
        }
        fail(error)
    }
}
