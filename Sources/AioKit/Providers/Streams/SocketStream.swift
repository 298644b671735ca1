import CAioShims
import Glibc

/// A byte stream: asynchronous sends and receives through handles ([STR-5]..[STR-12]).
public protocol AioStream: AnyObject, Sendable {
    /// Gathers `aio.iov`; completes once some bytes moved: `aio.count` may be
    /// less than the iov holds ([STR-5]).
    func send(_ aio: AioHandle)
    /// Scatters into `aio.iov`; completes as soon as some bytes arrived ([STR-5]).
    func receive(_ aio: AioHandle)
    /// Pending operations complete with `.closed`; later ones too ([STR-9]).
    func close()
}

/// An intrusive FIFO of handles, linked through their provider links.
struct HandleQueue {
    private(set) var head: Unmanaged<AioHandle>?
    private var tail: Unmanaged<AioHandle>?

    var isEmpty: Bool { head == nil }

    mutating func append(_ h: AioHandle) {
        let u = Unmanaged.passUnretained(h)
        h.providerNext = nil
        h.providerPrev = tail
        if let t = tail { t._withUnsafeGuaranteedRef { $0.providerNext = u } } else { head = u }
        tail = u
    }

    mutating func remove(_ h: AioHandle) {
        let next = h.providerNext, prev = h.providerPrev
        if let next { next._withUnsafeGuaranteedRef { $0.providerPrev = prev } } else { tail = prev }
        if let prev { prev._withUnsafeGuaranteedRef { $0.providerNext = next } } else { head = next }
        h.providerNext = nil
        h.providerPrev = nil
    }

    mutating func removeAll() -> [AioHandle] {
        var out: [AioHandle] = []
        while let u = head {
            let h = u.takeUnretainedValue()
            remove(h)
            out.append(h)
        }
        return out
    }
}

/// A connected TCP or Unix-domain stream socket driven by the runtime's
/// poller: what listeners and dialers hand out, and what `init(adopting:)`
/// makes of a socket connected elsewhere.
///
/// Every descriptor is non-blocking and close-on-exec; sends use MSG_NOSIGNAL,
/// so a stream never raises SIGPIPE ([STR-11]). TCP streams have TCP_NODELAY
/// on ([STR-12]). A pending operation keeps its stream alive; a stream whose
/// last reference goes away closes its descriptor.
public final class SocketStream: AioStream, PollHandler, @unchecked Sendable {  // mutable state guarded by `lock`
    let runtime: AioRuntime
    private let lock = Lock()
    private var fd: Int32
    private var registration: PollRegistration?
    private var receives = HandleQueue()
    private var sends = HandleQueue()
    private var closed = false
    private let isTCP: Bool
    /// The cancel routine of this stream's operations (weak: no cycle).
    private var cancelRoutine: AioHandle.CancelRoutine!

    // providerWord: bits 0-1 the queue (1 receive, 2 send), bit 2 "all of it", bit 3 "complete with
    // finishSync", bit 4 "into a swap buffer", bits 32... the operation number.
    private static let inReceives = 1
    private static let inSends = 2
    private static let full = 4
    private static let inline = 8
    private static let swap = 16

    /// Takes ownership of a connected stream socket made elsewhere (a plain
    /// `socket()`/`connect()`, or one inherited): it is made non-blocking and
    /// close-on-exec, and `close()` closes it. Not a socket, not connected or
    /// not a stream: `.invalidArgument` ([STR-13]).
    public convenience init(adopting descriptor: Int32, runtime: AioRuntime = .shared) throws {
        var st = stat()
        guard descriptor >= 0, fstat(descriptor, &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else {
            throw AioError.invalidArgument
        }
        guard Sys.getOption(descriptor, SOL_SOCKET, SO_TYPE) == Int32(SOCK_STREAM.rawValue),
            SocketAddress.of(descriptor, peer: true) != nil || errno != ENOTCONN
        else { throw AioError.invalidArgument }
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let connected = withUnsafeMutablePointer(to: &ss) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(descriptor, $0, &len) == 0 }
        }
        guard connected else { throw AioError.invalidArgument }
        try Sys.makeNonBlockingCloseOnExec(descriptor)
        try self.init(connected: descriptor, runtime: runtime, registration: nil)
    }

    /// A connected, non-blocking descriptor; registers it unless a registration
    /// is handed over. `isTCP`: known by listeners and dialers (nil: asked of
    /// the socket, one system call).
    init(connected descriptor: Int32, runtime: AioRuntime, registration: PollRegistration?, isTCP known: Bool? = nil)
        throws(AioError)
    {
        self.runtime = runtime
        self.fd = descriptor
        if let known {
            isTCP = known
        } else {
            var ss = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let family = withUnsafeMutablePointer(to: &ss) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa -> Int32 in
                    getsockname(descriptor, sa, &len) == 0 ? Int32(sa.pointee.sa_family) : -1
                }
            }
            isTCP = family == AF_INET || family == AF_INET6
        }
        if isTCP { _ = Sys.setOption(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
        cancelRoutine = { [weak self] aio, error, seq in self?.cancel(aio, error, seq) }
        if let registration {
            // Handed over by a dialer: this stream takes its events, both ways.
            self.registration = registration
            runtime.poller.setHandler(registration, self)
            do {
                try runtime.poller.rearm(registration, interest: [.readable, .writable])
            } catch {
                self.registration = nil
                self.fd = -1
                throw error
            }
        } else {
            do {
                self.registration = try runtime.poller.register(
                    descriptor, interest: [.readable, .writable], handler: self)
            } catch {
                self.fd = -1
                throw error
            }
        }
    }

    deinit {
        // No operation is pending (each keeps the stream alive).
        if let registration { runtime.poller.deregister(registration) }
        if fd >= 0 { Sys.close(fd) }
    }

    /// The socket's descriptor; -1 once closed.
    public var descriptor: Int32 { lock.withLock { fd } }

    /// The local address (nil once closed).
    public var localAddress: SocketAddress? {
        lock.withLock { fd >= 0 ? SocketAddress.of(fd, peer: false) : nil }
    }

    /// The peer's address (nil once closed).
    public var remoteAddress: SocketAddress? {
        lock.withLock { fd >= 0 ? SocketAddress.of(fd, peer: true) : nil }
    }

    /// TCP_NODELAY (on by default for TCP streams); `.notSupported` for Unix-domain streams.
    public func setNoDelay(_ on: Bool) throws {
        try setOption(Int32(IPPROTO_TCP), TCP_NODELAY, on ? 1 : 0, tcpOnly: true)
    }

    /// SO_KEEPALIVE.
    public func setKeepAlive(_ on: Bool) throws {
        try setOption(SOL_SOCKET, SO_KEEPALIVE, on ? 1 : 0, tcpOnly: false)
    }

    /// Whether TCP_NODELAY is on (false for Unix-domain streams).
    public var noDelay: Bool {
        lock.withLock { isTCP && fd >= 0 && Sys.getOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY) ?? 0 != 0 }
    }

    /// Whether SO_KEEPALIVE is on.
    public var keepAlive: Bool {
        lock.withLock { fd >= 0 && Sys.getOption(fd, SOL_SOCKET, SO_KEEPALIVE) ?? 0 != 0 }
    }

    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32, tcpOnly: Bool) throws {
        lock.lock()
        defer { lock.unlock() }
        if fd < 0 { throw AioError.closed }
        if tcpOnly && !isTCP { throw AioError.notSupported }
        if !Sys.setOption(fd, level, name, value) { throw AioError.fromErrno }
    }

    // MARK: - Operations

    public func send(_ aio: AioHandle) {
        start(aio, queue: Self.inSends, all: false)
    }

    public func receive(_ aio: AioHandle) {
        start(aio, queue: Self.inReceives, all: false)
    }

    /// Sends every byte of `aio.iov`, looping over partial transfers; the
    /// handle's timeout covers the whole transfer, and `count` holds the bytes
    /// sent even when it ends early ([STR-10]).
    public func sendAll(_ aio: AioHandle) {
        start(aio, queue: Self.inSends, all: true)
    }

    /// Receives until `aio.iov` is full (gaio's ReadFull), with the same rules ([STR-10]).
    public func receiveExactly(_ aio: AioHandle) {
        start(aio, queue: Self.inReceives, all: true)
    }

    private func start(_ aio: AioHandle, queue: Int, all: Bool, options: Int = 0) {
        // begin under the stream lock: a cancel routine (which takes this lock)
        // can then never run between the start and the queueing, and be lost.
        lock.lock()
        guard aio.begin(onCancel: nil, cancelRoutine: cancelRoutine, defaultTimeout: -1, sleepDeadline: 0, reset: true)
        else {
            lock.unlock()
            return
        }
        aio.providerCount = 0
        if closed {
            lock.unlock()
            aio.finish(.closed)
            return
        }
        let isReceive = queue == Self.inReceives
        aio.providerWord = Int(aio.operationNumber) << 32 | queue | (all ? Self.full : 0) | options
        if isReceive ? receives.isEmpty : sends.isEmpty {
            // Nothing ahead of it: try at once (edge-triggered: a miss here is
            // followed by an event once the socket is ready).
            if transfer(aio, isReceive: isReceive) {
                lock.unlock()
                return
            }
        }
        _ = Unmanaged.passRetained(self)  // a queued operation keeps its stream
        if isReceive { receives.append(aio) } else { sends.append(aio) }
        lock.unlock()
    }

    /// One or more system calls for `aio` (lock held). Returns true when the
    /// operation finished (and was finished), false when it must wait.
    private func transfer(_ aio: AioHandle, isReceive: Bool) -> Bool {
        if aio.providerWord & Self.swap != 0 { return swapTransfer(aio) }
        let all = aio.providerWord & Self.full != 0
        while true {
            let done = aio.providerCount
            let r: IOResult<Int> = withIOVecs(aio, skipping: done) { vecs, n, remaining in
                if remaining == 0 { return .failed(0) }
                return isReceive ? Sys.readv(fd, vecs, n) : Sys.writev(fd, vecs, n)
            }
            switch r {
            case .done(let n):
                if n == 0 && isReceive {
                    complete(aio, .connectionShutdown)
                    return true
                }
                aio.providerCount = done + n
                if all && aio.providerCount < totalBytes(aio) { continue }
                complete(aio, nil)
                return true
            case .wouldBlock:
                return false
            case .failed(let e):
                if e == 0 {
                    // Nothing to move: an empty iov is a caller error, unless an
                    // all-of-it transfer just completed its last byte.
                    complete(aio, done > 0 ? nil : .invalidArgument)
                } else {
                    complete(aio, Self.streamError(e))
                }
                return true
            }
        }
    }

    @inline(__always) private func complete(_ aio: AioHandle, _ error: AioError?) {
        let inline = aio.providerWord & Self.inline != 0
        aio.providerWord = 0
        if inline {
            aio.finishSync(error, count: aio.providerCount)
        } else {
            aio.finish(error, count: aio.providerCount)
        }
    }

    // MARK: - For the watcher facade

    /// Starts a receive (`all`: as `receiveExactly`) or a send (`all`: as
    /// `sendAll`) for the watcher facade ([WAT-1]): its completion runs the
    /// handle's callback on the finishing thread (`finishSync`, with this
    /// stream's lock held: the watcher's callbacks only queue a result and
    /// never call back into the stream). `swap`: a receive with no iov of its
    /// own, into a buffer that `aio.input(0)` (a `SwapBufferSource`) lends for
    /// the one system call, kept (output 0) only when bytes arrived ([WAT-4]).
    func startForWatcher(_ aio: AioHandle, receive: Bool, all: Bool, swap: Bool) {
        start(
            aio, queue: receive ? Self.inReceives : Self.inSends, all: all,
            options: Self.inline | (swap ? Self.swap : 0))
    }

    /// One receive into a lent swap buffer (lock held); as `transfer`.
    private func swapTransfer(_ aio: AioHandle) -> Bool {
        guard let source = aio.input(0) as? any SwapBufferSource else {
            complete(aio, .invalidArgument)
            return true
        }
        let buffer = source.takeSwapBuffer()
        var vec = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        switch Sys.readv(fd, &vec, 1) {
        case .done(let n) where n > 0:
            aio.setOutput(0, AioIOV(buffer))
            aio.providerCount = n
            complete(aio, nil)
        case .done:
            source.returnSwapBuffer(buffer)
            complete(aio, .connectionShutdown)
        case .wouldBlock:
            source.returnSwapBuffer(buffer)
            return false
        case .failed(let e):
            source.returnSwapBuffer(buffer)
            complete(aio, Self.streamError(e))
        }
        return true
    }

    static func streamError(_ e: Int32) -> AioError {
        switch e {
        case EPIPE, ESHUTDOWN: return .connectionShutdown
        case ECONNRESET: return .connectionReset
        default: return AioError(errno: e)
        }
    }

    private func totalBytes(_ aio: AioHandle) -> Int {
        var t = 0
        for v in aio.iovList { t += v.buffer.count }
        return t
    }

    /// The iov of `aio` past its first `skip` bytes, as iovecs.
    @inline(__always) private func withIOVecs<T>(
        _ aio: AioHandle, skipping skip: Int, _ body: (UnsafeMutablePointer<iovec>, Int, Int) -> T
    ) -> T {
        withUnsafeTemporaryAllocation(of: iovec.self, capacity: AioHandle.maxIOV) { buf in
            var n = 0
            var remaining = 0
            var toSkip = skip
            for v in aio.iovList {
                var base = v.buffer.baseAddress
                var len = v.buffer.count
                if toSkip >= len {
                    toSkip -= len
                    continue
                }
                if toSkip > 0 {
                    base = base.map { $0 + toSkip }
                    len -= toSkip
                    toSkip = 0
                }
                buf[n] = iovec(iov_base: base, iov_len: len)
                remaining += len
                n += 1
            }
            return body(buf.baseAddress!, n, remaining)
        }
    }

    /// Works a queue from its head until one operation must wait (lock held).
    private func drain(isReceive: Bool) {
        while let u = isReceive ? receives.head : sends.head {
            let aio = u.takeUnretainedValue()
            if isReceive { receives.remove(aio) } else { sends.remove(aio) }
            if !transfer(aio, isReceive: isReceive) {
                // Still waiting: back at the head.
                if isReceive { receives.prepend(aio) } else { sends.prepend(aio) }
                return
            }
            Unmanaged.passUnretained(self).release()  // the queued operation's reference
        }
    }

    /// A cancel routine ran for operation `seq` of `aio` ([STR-8]).
    private func cancel(_ aio: AioHandle, _ error: AioError, _ seq: UInt32) {
        lock.lock()
        let word = aio.providerWord
        guard word & 3 != 0, UInt32(truncatingIfNeeded: word >> 32) == seq else {
            lock.unlock()  // finished already (or a later operation): nothing to do
            return
        }
        if word & 3 == Self.inReceives { receives.remove(aio) } else { sends.remove(aio) }
        complete(aio, error)  // with the bytes an all-of-it transfer had moved
        lock.unlock()
        Unmanaged.passUnretained(self).release()
    }

    func pollEvents(_ events: PollEvents, _ registration: PollRegistration) {
        lock.lock()
        if !closed {
            if !events.isDisjoint(with: [.readable, .hangUp, .error]) { drain(isReceive: true) }
            if !events.isDisjoint(with: [.writable, .hangUp, .error]) { drain(isReceive: false) }
        }
        lock.unlock()
    }

    /// Completes pending operations with `.closed`, stops the poller's
    /// notifications and closes the descriptor; later operations complete with
    /// `.closed`. Calling it again does nothing ([STR-9]).
    public func close() {
        lock.lock()
        if closed {
            lock.unlock()
            return
        }
        closed = true
        let pending = receives.removeAll() + sends.removeAll()
        let reg = registration
        registration = nil
        let descriptor = fd
        fd = -1
        for aio in pending { complete(aio, .closed) }
        lock.unlock()
        for _ in pending { Unmanaged.passUnretained(self).release() }
        if let reg { runtime.poller.deregister(reg) }  // no event handler runs after this
        if descriptor >= 0 { Sys.close(descriptor) }
    }
}

extension HandleQueue {
    mutating func prepend(_ h: AioHandle) {
        let u = Unmanaged.passUnretained(h)
        h.providerPrev = nil
        h.providerNext = head
        if let f = head { f._withUnsafeGuaranteedRef { $0.providerPrev = u } } else { tail = u }
        head = u
    }
}

/// Lends buffers to swap receives (`SocketStream.startForWatcher`): one is
/// taken for each attempt and given back at once unless bytes landed in it.
protocol SwapBufferSource: AnyObject, Sendable {
    func takeSwapBuffer() -> UnsafeMutableRawBufferPointer
    func returnSwapBuffer(_ buffer: UnsafeMutableRawBufferPointer)
}
