import AioKit
import Glibc
import Synchronization
import Testing

// Specs/Streams.md: byte streams over TCP and Unix-domain sockets
// ([STR-1]..[STR-13]), through the public surface only.
//
// Every test uses loopback or Unix-domain sockets: kernel-chosen ports
// (`tcp://127.0.0.1:0` + `boundPort`) and ipc paths under /tmp made unique
// with the process id and a counter. Callbacks only record what they see;
// expectations run on the test's thread. Buffers are freed only after the
// test's private runtime has shut down (no operation can touch them then).
//
// Two tests touch the network stack beyond plain loopback transfers, both
// without leaving the machine: the .unreachable dial (a TCP connect to a
// multicast address, refused by the local kernel) and the name that does not
// resolve (an RFC 6761 ".invalid" name: glibc may ask the configured DNS
// server; without network it fails at once, also .addressInvalid; a server
// that never answers cancels that test). Accept under EMFILE runs in a child
// process (the descriptor limit is process-wide).

// MARK: - Helpers (private to this file)

private enum Transport: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case tcp, ipc
    var testDescription: String { rawValue }
}

private let pathCounter = Counter()

/// A fresh ipc path under /tmp: the process id and a counter make it unique.
private func uniquePath(_ tag: String) -> String {
    "/tmp/aiokit-st-\(getpid())-\(pathCounter.increment())-\(tag).sock"
}

/// Waits (bounded) until the handle's operation and callback are done.
@discardableResult
private func completes(_ h: AioHandle, within seconds: Double = 20) -> Bool {
    eventually(within: seconds) { !h.isBusy }
}

/// Caller-owned buffers, freed together once nothing can touch them.
private final class Buffers: Sendable {
    private let all = Box<[AioIOV]>([])

    /// `count` zeroed bytes (at least one is allocated).
    func make(_ count: Int) -> UnsafeMutableRawBufferPointer {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        all.mutate { $0.append(AioIOV(b)) }
        return UnsafeMutableRawBufferPointer(rebasing: b[0..<count])
    }

    func make(_ text: String) -> UnsafeMutableRawBufferPointer {
        let bytes = Array(text.utf8)
        let b = make(bytes.count)
        b.copyBytes(from: bytes)
        return b
    }

    func freeAll() {
        all.mutate { list in
            for v in list { v.buffer.deallocate() }
            list.removeAll()
        }
    }
}

/// A private runtime and the buffers its operations use. `finish()` shuts the
/// runtime down (bounded) and frees the buffers only if that completed.
private final class Fixture {
    let rt: AioRuntime
    let mem = Buffers()
    private var finished = false

    let name: String
    private static let serial = Counter()

    init(name: String? = nil, taskThreads: Int = 2) throws {
        // A name of its own, so that a failed shutdown can report this runtime's threads.
        let n = name ?? "st\(Self.serial.increment())"
        self.name = n
        rt = try AioRuntime(configuration: .init(taskThreads: taskThreads, name: n))
    }

    /// Idempotent.
    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        if finished { return }
        finished = true
        let rt = self.rt
        let done = finishes(within: 30) { rt.shutdown() }
        #expect(
            done, "the runtime's shutdown did not finish within 30 s; its threads: \(threadReport(name + "-"))",
            sourceLocation: sourceLocation)
        if done { mem.freeAll() }  // else leak them: an operation might still use them
    }

    func handle(_ callback: (@Sendable (AioHandle) -> Void)? = nil) -> AioHandle {
        AioHandle(runtime: rt, callback: callback)
    }

    /// Starts `start` on a callback-less handle and waits (bounded) for it.
    func run(
        _ h: AioHandle? = nil, within seconds: Double = 20, sourceLocation: SourceLocation = #_sourceLocation,
        _ start: (AioHandle) -> Void
    ) -> AioHandle {
        let h = h ?? handle()
        start(h)
        let ok = completes(h, within: seconds)
        #expect(ok, "the operation did not complete within \(seconds) s", sourceLocation: sourceLocation)
        return h
    }

    /// Sends all of `text` on `stream`.
    func send(_ text: String, on stream: SocketStream, sourceLocation: SourceLocation = #_sourceLocation) {
        let buf = mem.make(text)
        let h = handle()
        try? h.setIOV([AioIOV(buf)])
        _ = run(h, sourceLocation: sourceLocation) { stream.sendAll($0) }
        #expect(h.error == nil, sourceLocation: sourceLocation)
        #expect(h.count == buf.count, sourceLocation: sourceLocation)
    }

    /// One receive into a buffer of `capacity` bytes: the bytes and the error.
    func receiveOnce(_ stream: SocketStream, capacity: Int = 4096, within seconds: Double = 20) -> ([UInt8], AioError?) {
        let buf = mem.make(capacity)
        let h = handle()
        try? h.setIOV([AioIOV(buf)])
        stream.receive(h)
        guard completes(h, within: seconds) else {
            h.cancel()
            completes(h)
            return ([], .timedOut)
        }
        if let e = h.error { return ([], e) }
        return (Array(UnsafeRawBufferPointer(rebasing: buf[0..<h.count])), nil)
    }

    /// Receives until `limit` bytes arrived (nil: until an error, e.g. the
    /// peer's close); returns the bytes and the error that ended it.
    func receiveAll(_ stream: SocketStream, limit: Int? = nil, chunk: Int = 1 << 20) -> ([UInt8], AioError?) {
        let buf = mem.make(chunk)
        let h = handle()
        var out: [UInt8] = []
        while limit.map({ out.count < $0 }) ?? true {
            let want = min(chunk, limit.map { $0 - out.count } ?? chunk)
            try? h.setIOV([AioIOV(UnsafeMutableRawBufferPointer(rebasing: buf[0..<want]))])
            stream.receive(h)
            guard completes(h) else {
                h.cancel()
                completes(h)
                return (out, .timedOut)
            }
            if let e = h.error { return (out, e) }
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buf[0..<h.count]))
        }
        return (out, nil)
    }

    /// A listener on `transport` and a connected pair: the dialed client end and the accepted server end.
    func connect(_ transport: Transport = .tcp, sourceLocation: SourceLocation = #_sourceLocation) throws
        -> Connection
    {
        let listener: StreamListener
        let dialURL: String
        var path: String?
        switch transport {
        case .tcp:
            listener = try StreamListener(url: "tcp://127.0.0.1:0", runtime: rt)
            try listener.listen()
            dialURL = "tcp://127.0.0.1:\(listener.boundPort)"
        case .ipc:
            let p = uniquePath("pair")
            path = p
            listener = try StreamListener(url: "ipc://" + p, runtime: rt)
            try listener.listen()
            dialURL = "ipc://" + p
        }
        let dialer = try StreamDialer(url: dialURL, runtime: rt)
        let a = handle()
        let d = handle()
        listener.accept(a)
        dialer.dial(d)
        #expect(completes(a), "accept did not complete", sourceLocation: sourceLocation)
        #expect(completes(d), "dial did not complete", sourceLocation: sourceLocation)
        try #require(a.error == nil, "accept: \(String(describing: a.error))", sourceLocation: sourceLocation)
        try #require(d.error == nil, "dial: \(String(describing: d.error))", sourceLocation: sourceLocation)
        let server = try #require(a.output(0) as? SocketStream, sourceLocation: sourceLocation)
        let client = try #require(d.output(0) as? SocketStream, sourceLocation: sourceLocation)
        return Connection(listener: listener, dialer: dialer, client: client, server: server, path: path)
    }
}

private struct Connection {
    let listener: StreamListener
    let dialer: StreamDialer
    let client: SocketStream
    let server: SocketStream
    let path: String?
}

/// Fills `buf` with a pseudo-random pattern (xorshift64 from `seed`).
private func fillPattern(_ buf: UnsafeMutableRawBufferPointer, seed: UInt64) {
    var x = seed | 1
    var i = 0
    let n = buf.count
    while i + 8 <= n {
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        buf.storeBytes(of: x, toByteOffset: i, as: UInt64.self)
        i += 8
    }
    while i < n {
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        buf[i] = UInt8(truncatingIfNeeded: x)
        i += 1
    }
}

/// `buf` cut at the offsets in `cuts` (increasing, inside the buffer).
private func pieces(_ buf: UnsafeMutableRawBufferPointer, cuts: [Int]) -> [AioIOV] {
    var out: [AioIOV] = []
    var start = 0
    for c in cuts + [buf.count] {
        out.append(AioIOV(UnsafeMutableRawBufferPointer(rebasing: buf[start..<c])))
        start = c
    }
    return out
}

/// The part of `iov` past its first `skip` bytes.
private func remaining(_ iov: [AioIOV], after skip: Int) -> [AioIOV] {
    var out: [AioIOV] = []
    var s = skip
    for v in iov {
        let n = v.buffer.count
        if s >= n {
            s -= n
            continue
        }
        out.append(AioIOV(UnsafeMutableRawBufferPointer(rebasing: v.buffer[s...])))
        s = 0
    }
    return out
}

private func equalBytes(_ a: UnsafeMutableRawBufferPointer, _ b: UnsafeMutableRawBufferPointer) -> Bool {
    a.count == b.count && memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0
}

/// File status flags and descriptor flags of `fd`.
private func isNonBlockingCloseOnExec(_ fd: Int32) -> Bool {
    let fl = fcntl(fd, F_GETFL)
    let fdf = fcntl(fd, F_GETFD)
    return fl >= 0 && fdf >= 0 && fl & O_NONBLOCK != 0 && fdf & FD_CLOEXEC != 0
}

private func intOption(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32 {
    var v: Int32 = -1
    var len = socklen_t(MemoryLayout<Int32>.size)
    return getsockopt(fd, level, name, &v, &len) == 0 ? v : -1
}

/// An IPv4 loopback address with `port`.
private func loopback(port: Int) -> sockaddr_in {
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    sin.sin_port = UInt16(port).bigEndian
    sin.sin_addr.s_addr = inet_addr("127.0.0.1")
    return sin
}

private func withSockaddr<T>(_ sin: sockaddr_in, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    withUnsafePointer(to: sin) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

private func withUnixSockaddr<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    var sun = sockaddr_un()
    sun.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
    withUnsafeMutableBytes(of: &sun) { raw in
        for (i, b) in bytes.enumerated() { raw[offset + i] = b }
    }
    return withUnsafePointer(to: sun) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(offset + bytes.count + 1)) }
    }
}

/// The local port of a socket.
private func localPort(_ fd: Int32) -> Int {
    var sin = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return rc == 0 ? Int(UInt16(bigEndian: sin.sin_port)) : -1
}

/// A plain (blocking) IPv4 TCP socket bound to 127.0.0.1 with a kernel-chosen port.
private func boundTCPSocket() -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return (-1, -1) }
    let rc = withSockaddr(loopback(port: 0)) { bind(fd, $0, $1) }
    guard rc == 0 else {
        close(fd)
        return (-1, -1)
    }
    return (fd, localPort(fd))
}

/// A Unix-domain socket bound to `path` and closed without unlinking: the
/// stale socket file a dead listener leaves behind.
private func makeStaleSocketFile(_ path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    return withUnixSockaddr(path) { bind(fd, $0, $1) } == 0
}

private func fileType(_ path: String) -> mode_t? {
    var st = stat()
    return lstat(path, &st) == 0 ? st.st_mode & S_IFMT : nil
}

/// A TCP listener on 127.0.0.1 whose accept queue is full (backlog 0, never
/// accepting): further connection attempts hang in SYN-SENT, on loopback only.
/// Nil if the kernel does not behave that way.
private final class FullBacklogListener {
    let fd: Int32
    let port: Int
    private var clients: [Int32] = []

    init?() {
        let (fd, port) = boundTCPSocket()
        guard fd >= 0, listen(fd, 0) == 0 else {
            if fd >= 0 { Glibc.close(fd) }
            return nil
        }
        self.fd = fd
        self.port = port
        let flags = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        for _ in 0..<32 {
            let c = socket(AF_INET, flags, 0)
            guard c >= 0 else { break }
            clients.append(c)
            let rc = withSockaddr(loopback(port: port)) { Glibc.connect(c, $0, $1) }
            if rc == 0 { continue }
            guard errno == EINPROGRESS else { break }
            var p = pollfd(fd: c, events: Int16(POLLOUT), revents: 0)
            if poll(&p, 1, 300) == 0 { return }  // this one hangs: the queue is full
        }
        close()
        return nil
    }

    func close() {
        for c in clients { Glibc.close(c) }
        clients.removeAll()
        Glibc.close(fd)
    }
}

// MARK: - The suite

@Suite("Streams (Specs/Streams.md)")
struct StreamTests {

    // MARK: [STR-1] URLs

    /// URLs neither a listener nor a dialer accepts.
    static let badURLs: [String] = [
        "",
        "tcp",
        "127.0.0.1:5",
        "http://127.0.0.1:5",  // unknown scheme
        "udp://127.0.0.1:5",
        "inproc://name",
        "://127.0.0.1:5",  // empty scheme
        "tcp:/127.0.0.1:5",
        "tcp//127.0.0.1:5",
        "tcp://127.0.0.1:",  // a colon without a port
        "tcp://:",
        "tcp6://[::1]:",
        "tcp://127.0.0.1:65536",  // out of range
        "tcp://127.0.0.1:99999",
        "tcp://127.0.0.1:12x",  // not decimal digits
        "tcp://127.0.0.1:x12",
        "tcp://127.0.0.1:-1",
        "tcp://127.0.0.1:+80",
        "tcp://127.0.0.1: 80",
        "tcp://127.0.0.1:0x50",
        "tcp://127.0.0.1:5/path",
        "tcp://127.0.0.1:5:6",
        "tcp://::1:5",  // IPv6 without brackets
        "tcp://::1",
        "tcp://fe80::1:5",
        "tcp://[::1:5",  // unclosed bracket
        "tcp://[::1]5",  // no colon after the bracket
        "tcp://[::1]x:5",
        "tcp://[]:5",
        "tcp://[not-v6]:5",
        "tcp://[127.0.0.1]:5",  // brackets hold IPv6 only
        "tcp://host name:5",  // characters outside letters, digits, '-', '_' and dots
        "tcp://exa$mple.com:5",
        "tcp://user@host:5",
        "tcp://host/x:5",
        "tcp://h\u{e9}st:5",
        "tcp://bad..dots:5",
        "tcp4://[::1]:5",  // tcp4 is IPv4 only
        "tcp6://127.0.0.1:5",  // tcp6 is IPv6 only
        "ipc://",  // empty path
        "ipc:///" + String(repeating: "a", count: 107),  // 108 bytes: past sun_path
        "ipc:///" + String(repeating: "b", count: 200),
    ]

    /// URLs a listener accepts but a dialer does not (a dialer needs a host and a port in 1...65535).
    static let listenerOnlyURLs: [String] = [
        "tcp://",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:0",
        "tcp://:0",
        "tcp://:5555",
        "tcp4://",
        "tcp4://:0",
        "tcp6://[::1]",
        "tcp6://[::]:0",
        "tcp://localhost",
    ]

    /// URLs both accept.
    static let goodURLs: [String] = [
        "tcp://127.0.0.1:5",
        "tcp://127.0.0.1:1",
        "tcp://127.0.0.1:65535",
        "tcp://localhost:80",
        "tcp://my-host.example_1.com:8080",
        "tcp://a:5",
        "tcp://[::1]:5",
        "tcp://[::ffff:127.0.0.1]:5",
        "tcp://[fe80::1]:443",
        "tcp4://127.0.0.1:5",
        "tcp4://localhost:5",
        "tcp6://[::1]:5",
        "tcp6://localhost:5",
        "ipc:///tmp/aiokit-some.sock",
        "ipc://relative.sock",
        "ipc:///" + String(repeating: "c", count: 106),  // 107 bytes: fits sun_path
    ]

    @Test("[STR-1] a bad URL throws .addressInvalid from init, for listeners and dialers", arguments: badURLs)
    func badURL(_ url: String) throws {
        let rt = AioRuntime.shared
        #expect(throws: AioError.addressInvalid) { _ = try StreamListener(url: url, runtime: rt) }
        #expect(throws: AioError.addressInvalid) { _ = try StreamDialer(url: url, runtime: rt) }
    }

    @Test(
        "[STR-1] a dialer needs a host and a port in 1...65535: .addressInvalid, where a listener accepts it",
        arguments: listenerOnlyURLs)
    func listenerOnlyURL(_ url: String) throws {
        #expect(throws: AioError.addressInvalid) { _ = try StreamDialer(url: url) }
        #expect(throws: Never.self) { _ = try StreamListener(url: url) }
    }

    @Test("[STR-1] good URLs are accepted by listeners and dialers (init only parses)", arguments: goodURLs)
    func goodURL(_ url: String) throws {
        #expect(throws: Never.self) { _ = try StreamListener(url: url) }
        #expect(throws: Never.self) { _ = try StreamDialer(url: url) }
    }

    @Test("[STR-1] [STR-2] port 0: the kernel picks a port, read from boundPort and localAddress")
    func portZero() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let l = try StreamListener(url: "tcp://127.0.0.1:0", runtime: fx.rt)
        #expect(l.boundPort == 0)
        try l.listen()
        #expect(l.boundPort > 0 && l.boundPort <= 65535)
        #expect(l.localAddress?.port == l.boundPort)
        #expect(l.localAddress?.host == "127.0.0.1")
        // A listener without a host binds any address: reachable through loopback.
        let any = try StreamListener(url: "tcp://:0", runtime: fx.rt)
        try any.listen()
        #expect(any.boundPort > 0)
        let d = try StreamDialer(url: "tcp://127.0.0.1:\(any.boundPort)", runtime: fx.rt)
        let a = fx.handle()
        any.accept(a)
        let h = fx.run { d.dial($0) }
        #expect(h.error == nil)
        #expect(completes(a))
        #expect(a.error == nil)
        l.close()
        any.close()
    }

    @Test("[STR-1] an ipc path of 107 bytes (the most sun_path holds) listens and connects")
    func longestIPCPath() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let base = "/tmp/aiokit-st-\(getpid())-\(pathCounter.increment())-"
        let path = base + String(repeating: "x", count: 107 - base.utf8.count)
        #expect(path.utf8.count == 107)
        let l = try StreamListener(url: "ipc://" + path, runtime: fx.rt)
        try l.listen()
        defer { l.close() }
        let d = try StreamDialer(url: "ipc://" + path, runtime: fx.rt)
        let a = fx.handle()
        l.accept(a)
        let h = fx.run { d.dial($0) }
        #expect(h.error == nil)
        #expect(completes(a))
        #expect(a.error == nil)
    }

    // MARK: [STR-2] Listen

    @Test("[STR-2] a TCP address already listened on: .addressInUse")
    func tcpAddressInUse() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let first = try StreamListener(url: "tcp://127.0.0.1:0", runtime: fx.rt)
        try first.listen()
        let second = try StreamListener(url: "tcp://127.0.0.1:\(first.boundPort)", runtime: fx.rt)
        #expect(throws: AioError.addressInUse) { try second.listen() }
        first.close()
    }

    @Test("[STR-2] an ipc path where a live listener answers: .addressInUse, and the live listener keeps working")
    func ipcLiveListener() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let path = uniquePath("live")
        let live = try StreamListener(url: "ipc://" + path, runtime: fx.rt)
        try live.listen()
        #expect(fileType(path) == S_IFSOCK)
        let intruder = try StreamListener(url: "ipc://" + path, runtime: fx.rt)
        #expect(throws: AioError.addressInUse) { try intruder.listen() }
        intruder.close()
        #expect(fileType(path) == S_IFSOCK, "the live listener's socket file must stay")
        let d = try StreamDialer(url: "ipc://" + path, runtime: fx.rt)
        let a = fx.handle()
        live.accept(a)
        let h = fx.run { d.dial($0) }
        #expect(h.error == nil)
        #expect(completes(a))
        #expect(a.error == nil)
        live.close()
    }

    @Test("[STR-2] a stale ipc socket file (a dead listener's) is replaced by a new listener")
    func staleSocketReplaced() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let path = uniquePath("stale")
        defer { unlink(path) }
        try #require(makeStaleSocketFile(path))
        #expect(fileType(path) == S_IFSOCK)
        let l = try StreamListener(url: "ipc://" + path, runtime: fx.rt)
        try l.listen()
        let d = try StreamDialer(url: "ipc://" + path, runtime: fx.rt)
        let a = fx.handle()
        l.accept(a)
        let h = fx.run { d.dial($0) }
        #expect(h.error == nil)
        #expect(completes(a))
        #expect(a.error == nil)
        l.close()
    }

    @Test("[STR-2] an ipc path that is a regular file or a directory: .addressInUse, and it is never removed")
    func ipcPathNotASocket() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let path = uniquePath("file")
        defer { unlink(path) }
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o600)
        try #require(fd >= 0)
        #expect(write(fd, "keep me", 7) == 7)
        close(fd)
        let l = try StreamListener(url: "ipc://" + path, runtime: fx.rt)
        #expect(throws: AioError.addressInUse) { try l.listen() }
        l.close()
        #expect(fileType(path) == S_IFREG, "the regular file must still exist")
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_size == 7, "and keep its content")

        let dir = uniquePath("dir")
        try #require(mkdir(dir, 0o700) == 0)
        defer { rmdir(dir) }
        let l2 = try StreamListener(url: "ipc://" + dir, runtime: fx.rt)
        #expect(throws: AioError.addressInUse) { try l2.listen() }
        l2.close()
        #expect(fileType(dir) == S_IFDIR, "the directory must still exist")
    }

    @Test("[STR-2] [STR-9] close() removes the ipc socket file the listener created; a second close does nothing")
    func ipcCloseRemovesFile() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let path = uniquePath("rm")
        let l = try StreamListener(url: "ipc://" + path, runtime: fx.rt)
        #expect(fileType(path) == nil, "init only parses")
        try l.listen()
        #expect(fileType(path) == S_IFSOCK)
        l.close()
        #expect(fileType(path) == nil)
        l.close()
        // The path is free again for a new listener.
        let again = try StreamListener(url: "ipc://" + path, runtime: fx.rt)
        try again.listen()
        again.close()
        #expect(fileType(path) == nil)
    }

    // MARK: [STR-3] Resolution

    @Test("[STR-3] localhost resolves, on a resolver thread of the runtime's own")
    func localhostResolves() throws {
        let fx = try Fixture(name: "stres")
        defer { fx.finish() }
        let l = try StreamListener(url: "tcp://127.0.0.1:0", runtime: fx.rt)
        try l.listen()
        defer { l.close() }
        // A numeric host needs no resolution.
        let numeric = try StreamDialer(url: "tcp://127.0.0.1:\(l.boundPort)", runtime: fx.rt)
        let a0 = fx.handle()
        l.accept(a0)
        let h0 = fx.run { numeric.dial($0) }
        #expect(h0.error == nil)
        #expect(completes(a0))
        #expect(threadCount(named: "stres-resolve") == 0, "no resolver thread for a numeric host")

        let named = try StreamDialer(url: "tcp://localhost:\(l.boundPort)", runtime: fx.rt)
        let a = fx.handle()
        l.accept(a)
        let h = fx.run { named.dial($0) }
        #expect(h.error == nil)
        #expect(completes(a))
        #expect(a.error == nil)
        let s = try #require(h.output(0) as? SocketStream)
        #expect(s.remoteAddress?.port == l.boundPort)
        #expect(s.remoteAddress?.host == "127.0.0.1")
        #expect(threadCount(named: "stres-resolve") == 1, "the name is resolved on a thread of its own")
        s.close()
    }

    @Test("[STR-3] a name that does not resolve ends the dial with .addressInvalid")
    func nameDoesNotResolve() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        // ".invalid" never resolves (RFC 6761). glibc may ask the configured DNS
        // server: with no network it fails at once (EAI_AGAIN/EAI_NONAME, also
        // .addressInvalid); only a server that never answers makes it slow.
        let d = try StreamDialer(url: "tcp://no-such-host.aiokit-test.invalid:5", runtime: fx.rt)
        let h = fx.handle()
        h.timeout = .after(.seconds(40))
        d.dial(h)
        #expect(completes(h, within: 60))
        if h.error == .timedOut {
            try Test.cancel("the DNS server configured here did not answer within 40 s: the outcome depends on the network")
        }
        #expect(h.error == .addressInvalid)
    }

    // MARK: [STR-4] Accept

    @Test("[STR-4] accept completes with the new stream in output 0, connected to the dialer's stream")
    func acceptOutput() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        for transport in Transport.allCases {
            let c = try fx.connect(transport)
            fx.send("hello", on: c.client)
            let (got, e) = fx.receiveAll(c.server, limit: 5)
            #expect(e == nil)
            #expect(got == Array("hello".utf8))
            fx.send("back", on: c.server)
            #expect(fx.receiveAll(c.client, limit: 4).0 == Array("back".utf8))
            if transport == .tcp {
                #expect(c.server.remoteAddress == c.client.localAddress)
                #expect(c.client.remoteAddress == c.server.localAddress)
            }
            c.client.close()
            c.server.close()
            c.listener.close()
        }
    }

    @Test("[STR-4] [STR-5] 1,000 concurrent connections echo in one process, each chained inside callbacks")
    func thousandConnections() throws {
        var rl = rlimit()
        let nofile = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        try #require(getrlimit(nofile, &rl) == 0)
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max
            #expect(setrlimit(nofile, &rl) == 0)
        }
        try #require(rl.rlim_cur >= 2_200, "RLIMIT_NOFILE hard limit \(rl.rlim_max) is too low for 1,000 connections")

        let n = 1_000
        let size = 64
        let fx = try Fixture(name: "stecho")
        defer { fx.finish() }
        let rt = fx.rt
        let listener = try StreamListener(url: "tcp://127.0.0.1:0", runtime: rt)
        try listener.listen()
        let dialer = try StreamDialer(url: "tcp://127.0.0.1:\(listener.boundPort)", runtime: rt)

        // The server: a few accepts always pending; each accepted stream echoes
        // on one handle that alternates receive and sendAll in its callback.
        let sessions = Box<[EchoSession]>([])
        let sessionsClosed = Counter()
        let acceptErrors = Box<[AioError]>([])
        let onAccept: @Sendable (AioHandle) -> Void = { h in
            if let e = h.error {
                if e != .closed && e != .stopped { acceptErrors.mutate { $0.append(e) } }
                return
            }
            guard let s = h.output(0) as? SocketStream else {
                acceptErrors.mutate { $0.append(.invalidArgument) }
                return
            }
            let session = EchoSession(stream: s, runtime: rt, size: 256, closed: sessionsClosed)
            sessions.mutate { $0.append(session) }
            session.start()
            listener.accept(h)
        }
        let acceptors = (0..<8).map { _ in AioHandle(runtime: rt, callback: onAccept) }
        for a in acceptors { listener.accept(a) }

        // The clients: dial, sendAll a message, receiveExactly its echo, compare, close: one handle, chained.
        let results = EchoResults()
        let clients = (0..<n).map { EchoClient(index: $0, size: size, runtime: rt, results: results) }
        for c in clients { dialer.dial(c.handle) }

        let allDone = eventually(within: 90) { results.ok.count + results.failures.value.count == n }
        #expect(allDone, "\(results.ok.count) of \(n) echoes done")
        #expect(results.ok.count == n)
        #expect(results.failures.value.isEmpty, "failures: \(results.failures.value.prefix(10))")
        #expect(acceptErrors.value.isEmpty, "accept errors: \(acceptErrors.value.prefix(10))")
        // Each client closed its end: every server session sees .connectionShutdown and closes.
        #expect(eventually(within: 30) { sessionsClosed.count == n })
        listener.close()
        for a in acceptors { #expect(completes(a)) }
        dialer.close()
        #expect(eventually(within: 30) { !clients.contains { $0.handle.isBusy } })
        fx.finish()  // shut down before freeing the sessions' and clients' buffers
        for s in sessions.value { s.buffer.buffer.deallocate() }
        for c in clients {
            c.out.buffer.deallocate()
            c.inb.buffer.deallocate()
        }
    }

    // MARK: [STR-5] Transfers

    enum Mode: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case sendAllReceiveExactly, partialChained
        var testDescription: String { rawValue }
    }

    @Test(
        "[STR-5] [STR-10] 8 MiB gathered from 8 buffers and scattered into 7 arrive byte for byte",
        arguments: ["tcp", "ipc"], Mode.allCases)
    func bigTransfer(_ transportName: String, _ mode: Mode) throws {
        let transport = Transport(rawValue: transportName)!
        let fx = try Fixture()
        defer { fx.finish() }
        let total = 8 << 20
        let src = fx.mem.make(total)
        let dst = fx.mem.make(total)
        fillPattern(src, seed: 0x5EED_1234_ABCD)
        let sendIOV = pieces(src, cuts: [1, 4097, 65_536, 1 << 20, (3 << 20) + 7, 5 << 20, (7 << 20) + 13])
        let recvIOV = pieces(dst, cuts: [3, 70_000, 2 << 20, (2 << 20) + 1, 6 << 20, (8 << 20) - 5])
        #expect(sendIOV.count == 8 && recvIOV.count == 7)
        let c = try fx.connect(transport)

        switch mode {
        case .sendAllReceiveExactly:
            let s = fx.handle()
            let r = fx.handle()
            try s.setIOV(sendIOV)
            try r.setIOV(recvIOV)
            c.server.receiveExactly(r)
            c.client.sendAll(s)
            #expect(completes(s, within: 60))
            #expect(completes(r, within: 60))
            #expect(s.error == nil)
            #expect(r.error == nil)
            #expect(s.count == total)
            #expect(r.count == total)
        case .partialChained:
            // Plain send/receive: each completes once some bytes moved; the
            // callback restarts with the rest of the iov.
            let sender = PartialLoop(total: total, iov: sendIOV)
            let receiver = PartialLoop(total: total, iov: recvIOV)
            let client = c.client
            let server = c.server
            let s = fx.handle { h in sender.step(h) { client.send($0) } }
            let r = fx.handle { h in receiver.step(h) { server.receive($0) } }
            try s.setIOV(sendIOV)
            try r.setIOV(recvIOV)
            server.receive(r)
            client.send(s)
            #expect(eventually(within: 60) { sender.finished.count == 1 && receiver.finished.count == 1 })
            #expect(sender.error.value == nil)
            #expect(receiver.error.value == nil)
            #expect(sender.moved.value == total)
            #expect(receiver.moved.value == total)
            #expect(sender.badCounts.count == 0, "a send reported 0 bytes or more than its iov held")
            #expect(receiver.badCounts.count == 0, "a receive reported 0 bytes or more than its iov held")
            #expect(sender.operations.count >= 1 && receiver.operations.count >= 1)
        }
        #expect(equalBytes(src, dst), "the received bytes differ from the sent ones")
        c.client.close()
        c.server.close()
        c.listener.close()
    }

    @Test("[STR-5] a receive completes with the bytes available, scattered in order, without waiting to fill its buffers")
    func receiveDoesNotWaitToFill() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        for transport in Transport.allCases {
            let c = try fx.connect(transport)
            let a = fx.mem.make(2)
            let b = fx.mem.make(3)
            let rest = fx.mem.make(100_000)
            let r = fx.handle()
            try r.setIOV([AioIOV(a), AioIOV(b), AioIOV(rest)])
            c.server.receive(r)
            fx.send("abcdefg", on: c.client)
            #expect(completes(r))
            #expect(r.error == nil)
            #expect(r.count == 7)
            #expect(Array(a) == Array("ab".utf8))
            #expect(Array(b) == Array("cde".utf8))
            #expect(Array(rest.prefix(2)) == Array("fg".utf8))
            c.client.close()
            c.server.close()
        }
    }

    @Test("[STR-5] pending receives complete in FIFO order")
    func receivesInOrder() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.tcp)
        let bufs = (0..<4).map { _ in fx.mem.make(1) }
        let hs = bufs.map { b in
            let h = fx.handle()
            try? h.setIOV([AioIOV(b)])
            return h
        }
        for h in hs { c.server.receive(h) }
        sleepMillis(20)
        #expect(hs.allSatisfy { $0.isBusy }, "no data yet: all pending")
        fx.send("wxyz", on: c.client)
        for h in hs {
            #expect(completes(h))
            #expect(h.error == nil && h.count == 1)
        }
        #expect(bufs.map { $0[0] } == Array("wxyz".utf8))
        c.client.close()
        c.server.close()
    }

    @Test("[STR-5] an empty iov is .invalidArgument, for send and receive")
    func emptyIOV() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.tcp)
        let s = fx.run { c.client.send($0) }
        #expect(s.error == .invalidArgument)
        let r = fx.run { c.server.receive($0) }
        #expect(r.error == .invalidArgument)
        // Buffers of zero bytes are no better.
        let empty = fx.mem.make(0)
        let s2 = fx.handle()
        try s2.setIOV([AioIOV(empty), AioIOV(empty)])
        _ = fx.run(s2) { c.client.send($0) }
        #expect(s2.error == .invalidArgument)
        // The stream still works.
        fx.send("ok", on: c.client)
        #expect(fx.receiveAll(c.server, limit: 2).0 == Array("ok".utf8))
        c.client.close()
        c.server.close()
    }

    // MARK: [STR-14] Dials finished at once

    @Test("[STR-14] a loopback dial whose handshake is over when connect returns finishes before dial() returns")
    func dialFinishedAtOnce() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let l = try StreamListener(url: "tcp://127.0.0.1:0", runtime: fx.rt)
        try l.listen()
        defer { l.close() }
        let d = try StreamDialer(url: "tcp://127.0.0.1:\(l.boundPort)", runtime: fx.rt)
        defer { d.close() }
        var atOnce = 0
        let rounds = 200
        for _ in 0..<rounds {
            let accepted = fx.handle()
            l.accept(accepted)
            let dialed = fx.handle()
            d.dial(dialed)
            if !dialed.isBusy { atOnce += 1 }  // finished on this thread, inside dial()
            #expect(completes(dialed, within: 20))
            #expect(completes(accepted, within: 20))
            #expect(dialed.error == nil)
            #expect(accepted.error == nil)
            let client = try #require(dialed.output(0) as? SocketStream)
            let server = try #require(accepted.output(0) as? SocketStream)
            // The stream made without the poller's help has every guarantee ([STR-12]) and works.
            #expect(client.noDelay)
            #expect(client.remoteAddress?.port == l.boundPort)
            fx.send("x", on: client)
            let (bytes, error) = fx.receiveOnce(server, capacity: 1)
            #expect(error == nil)
            #expect(bytes == Array("x".utf8))
            client.close()
            server.close()
        }
        // The kernel may defer a handshake to ksoftirqd under load; most are over at once.
        #expect(atOnce >= rounds / 2, "only \(atOnce) of \(rounds) dials finished inside dial()")
    }

    // MARK: [STR-6] Dial results

    @Test("[STR-6] a dial to a port with no listener: .connectionRefused")
    func dialRefused() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let (fd, port) = boundTCPSocket()  // bound, never listening: the port stays ours and refuses
        try #require(fd >= 0)
        defer { close(fd) }
        let d = try StreamDialer(url: "tcp://127.0.0.1:\(port)", runtime: fx.rt)
        let h = fx.run { d.dial($0) }
        #expect(h.error == .connectionRefused)
        #expect(h.output(0) == nil)

        // A listener that was closed refuses too.
        let l = try StreamListener(url: "tcp://127.0.0.1:0", runtime: fx.rt)
        try l.listen()
        let (fd2, _) = boundTCPSocket()
        defer { if fd2 >= 0 { close(fd2) } }
        let closedPort = l.boundPort
        l.close()
        let d2 = try StreamDialer(url: "tcp://127.0.0.1:\(closedPort)", runtime: fx.rt)
        let h2 = fx.run { d2.dial($0) }
        #expect(h2.error == .connectionRefused)

        // An ipc socket file nobody listens on.
        let path = uniquePath("refuse")
        defer { unlink(path) }
        try #require(makeStaleSocketFile(path))
        let d3 = try StreamDialer(url: "ipc://" + path, runtime: fx.rt)
        let h3 = fx.run { d3.dial($0) }
        #expect(h3.error == .connectionRefused)
    }

    @Test("[STR-6] a dial to a multicast address (no route for TCP, refused locally): .unreachable")
    func dialUnreachable() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        // The kernel rejects a TCP connect to a multicast address with
        // ENETUNREACH before sending anything: no network is involved.
        let d = try StreamDialer(url: "tcp://224.0.0.1:80", runtime: fx.rt)
        let h = fx.handle()
        h.timeout = .after(.seconds(10))
        _ = fx.run(h) { d.dial($0) }
        #expect(h.error == .unreachable)
    }

    @Test("[STR-6] the handle's timeout ends a dial that cannot connect with .timedOut, resolution included")
    func dialTimeout() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        guard let full = FullBacklogListener() else {
            try Test.cancel("this kernel does not leave a connect to a full accept queue pending")
        }
        defer { full.close() }
        for url in ["tcp://127.0.0.1:\(full.port)", "tcp://localhost:\(full.port)"] {
            let d = try StreamDialer(url: url, runtime: fx.rt)
            let h = fx.handle()
            h.timeout = .after(.milliseconds(300))
            let t0 = now()
            _ = fx.run(h) { d.dial($0) }
            #expect(h.error == .timedOut, "\(url)")
            #expect(now() - t0 >= 0.25, "not before the timeout")
            #expect(h.output(0) == nil)
        }
    }

    // MARK: [STR-7] Dial close

    @Test("[STR-7] [STR-9] StreamDialer.close() ends pending dials and later ones with .closed; close again does nothing")
    func dialerClose() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        guard let full = FullBacklogListener() else {
            try Test.cancel("this kernel does not leave a connect to a full accept queue pending")
        }
        defer { full.close() }
        let d = try StreamDialer(url: "tcp://127.0.0.1:\(full.port)", runtime: fx.rt)
        let pending = (0..<3).map { _ in fx.handle() }
        for h in pending { d.dial(h) }
        sleepMillis(50)
        #expect(pending.allSatisfy { $0.isBusy }, "the dials wait on a full accept queue")
        d.close()
        for h in pending {
            #expect(completes(h))
            #expect(h.error == .closed)
        }
        let later = fx.run { d.dial($0) }
        #expect(later.error == .closed)
        d.close()
        let again = fx.run { d.dial($0) }
        #expect(again.error == .closed)

        // The same for a dialer that never dialed, and for an ipc dialer.
        let d2 = try StreamDialer(url: "ipc://" + uniquePath("never"), runtime: fx.rt)
        d2.close()
        #expect(fx.run { d2.dial($0) }.error == .closed)
    }

    // MARK: [STR-8] Cancel and timeouts keep the stream

    @Test("[STR-8] cancel of a pending receive: .canceled, and the stream stays usable", arguments: ["tcp", "ipc"])
    func cancelPendingReceive(_ transportName: String) throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(Transport(rawValue: transportName)!)
        let buf = fx.mem.make(64)
        let r = fx.handle()
        try r.setIOV([AioIOV(buf)])
        c.server.receive(r)
        sleepMillis(20)
        #expect(r.isBusy)
        r.cancel()
        #expect(completes(r))
        #expect(r.error == .canceled)
        #expect(r.count == 0)
        // abort with another code completes with that code.
        c.server.receive(r)
        r.abort(.connectionAborted)
        #expect(completes(r))
        #expect(r.error == .connectionAborted)
        fx.send("after cancel", on: c.client)
        #expect(fx.receiveAll(c.server, limit: 12).0 == Array("after cancel".utf8))
        c.client.close()
        c.server.close()
    }

    @Test("[STR-8] a canceled receive in the middle of the FIFO takes no byte")
    func cancelMiddleReceive() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.tcp)
        let bufs = (0..<3).map { _ in fx.mem.make(1) }
        let hs = bufs.map { b in
            let h = fx.handle()
            try? h.setIOV([AioIOV(b)])
            return h
        }
        for h in hs { c.server.receive(h) }
        hs[1].cancel()
        #expect(completes(hs[1]))
        #expect(hs[1].error == .canceled)
        fx.send("ab", on: c.client)
        #expect(completes(hs[0]) && completes(hs[2]))
        #expect(hs[0].error == nil && hs[2].error == nil)
        #expect(bufs[0][0] == UInt8(ascii: "a"))
        #expect(bufs[2][0] == UInt8(ascii: "b"))
        #expect(bufs[1][0] == 0)
        c.client.close()
        c.server.close()
    }

    @Test("[STR-8] a receive timeout: .timedOut, and the stream stays usable with no byte lost", arguments: ["tcp", "ipc"])
    func receiveTimeout(_ transportName: String) throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(Transport(rawValue: transportName)!)
        let buf = fx.mem.make(64)
        let r = fx.handle()
        try r.setIOV([AioIOV(buf)])
        r.timeout = .after(.milliseconds(100))
        _ = fx.run(r) { c.server.receive($0) }
        #expect(r.error == .timedOut)
        #expect(r.count == 0)
        fx.send("still here", on: c.client)
        r.timeout = .infinite
        #expect(fx.receiveAll(c.server, limit: 10).0 == Array("still here".utf8))
        // And the other direction too.
        fx.send("reply", on: c.server)
        #expect(fx.receiveAll(c.client, limit: 5).0 == Array("reply".utf8))
        c.client.close()
        c.server.close()
    }

    /// Sends the 1 MiB `chunk` with plain sends until one stays pending on a
    /// full socket buffer; returns the counts of the completed sends and the
    /// handle of the pending one (nil if none ever stayed pending).
    private func fillUntilPending(_ fx: Fixture, _ stream: SocketStream, _ chunk: UnsafeMutableRawBufferPointer)
        -> ([Int], AioHandle?)
    {
        var counts: [Int] = []
        for _ in 0..<400 {
            let h = fx.handle()
            try? h.setIOV([AioIOV(chunk)])
            stream.send(h)
            if completes(h, within: 0.3) {
                guard h.error == nil else {
                    Issue.record("a send failed while filling the buffer: \(String(describing: h.error))")
                    return (counts, nil)
                }
                counts.append(h.count)
                continue
            }
            return (counts, h)
        }
        return (counts, nil)
    }

    /// The bytes the peer must read: each count's prefix of `chunk`, in order.
    private func expectedStream(_ chunk: UnsafeMutableRawBufferPointer, _ counts: [Int]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(counts.reduce(0, +))
        for n in counts { out.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<n])) }
        return out
    }

    @Test(
        "[STR-8] cancel of a send blocked on a full socket buffer: .canceled, then no byte lost or duplicated",
        arguments: ["tcp", "ipc"])
    func cancelBlockedSend(_ transportName: String) throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(Transport(rawValue: transportName)!)
        let chunk = fx.mem.make(1 << 20)
        fillPattern(chunk, seed: 77)
        var counts: [Int] = []
        var canceled = false
        for _ in 0..<10 where !canceled {
            let (done, pending) = fillUntilPending(fx, c.client, chunk)
            counts += done
            guard let h = pending else { break }
            h.cancel()
            #expect(completes(h))
            if h.error == .canceled {
                canceled = true
                #expect(h.count == 0, "a canceled plain send moved nothing")
                counts.append(h.count)
            } else if h.error == nil {
                counts.append(h.count)  // the peer's buffer drained just in time: it completed
            } else {
                Issue.record("unexpected \(String(describing: h.error))")
                break
            }
        }
        #expect(canceled, "a send stayed pending on a full buffer and cancel ended it")
        // The stream still works: a trailer goes after the accepted bytes.
        let trailer = fx.mem.make("<END>")
        let t = fx.handle()
        try t.setIOV([AioIOV(trailer)])
        c.client.sendAll(t)  // pending until the peer reads
        var expected = expectedStream(chunk, counts)
        expected += Array("<END>".utf8)
        let (got, e) = fx.receiveAll(c.server, limit: expected.count)
        #expect(e == nil)
        #expect(completes(t))
        #expect(t.error == nil && t.count == 5)
        #expect(got.count == expected.count, "bytes read \(got.count), bytes reported sent \(expected.count)")
        #expect(got == expected, "the peer read exactly the bytes the sends reported, in order")
        c.client.close()
        let (extra, end) = fx.receiveAll(c.server)
        #expect(extra.isEmpty, "no byte beyond those reported")
        #expect(end == .connectionShutdown)
        c.server.close()
    }

    @Test(
        "[STR-9] [STR-8] close while a send is blocked on a full buffer: .closed, and the peer reads exactly the bytes reported",
        arguments: ["tcp", "ipc"])
    func closeBlockedSend(_ transportName: String) throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(Transport(rawValue: transportName)!)
        let chunk = fx.mem.make(1 << 20)
        fillPattern(chunk, seed: 99)
        let (counts, pending) = fillUntilPending(fx, c.client, chunk)
        let h = try #require(pending, "no send stayed pending")
        c.client.close()
        #expect(completes(h))
        #expect(h.error == .closed)
        #expect(h.count == 0)
        let later = fx.handle()
        try later.setIOV([AioIOV(chunk)])
        _ = fx.run(later) { c.client.send($0) }
        #expect(later.error == .closed)
        let expected = expectedStream(chunk, counts)
        let (got, end) = fx.receiveAll(c.server)
        #expect(end == .connectionShutdown)
        #expect(got.count == expected.count, "bytes read \(got.count), bytes reported sent \(expected.count)")
        #expect(got == expected)
        c.server.close()
    }

    // MARK: [STR-9] Close

    @Test("[STR-9] stream close: a pending receive gets .closed, later sends and receives too; close again does nothing")
    func streamClose() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        for transport in Transport.allCases {
            let c = try fx.connect(transport)
            let buf = fx.mem.make(16)
            let r = fx.handle()
            try r.setIOV([AioIOV(buf)])
            c.server.receive(r)
            sleepMillis(10)
            #expect(r.isBusy)
            c.server.close()
            #expect(completes(r))
            #expect(r.error == .closed)
            #expect(c.server.descriptor == -1)
            c.server.close()
            let s = fx.handle()
            try s.setIOV([AioIOV(buf)])
            _ = fx.run(s) { c.server.send($0) }
            #expect(s.error == .closed)
            _ = fx.run(r) { c.server.receive($0) }
            #expect(r.error == .closed)
            _ = fx.run(s) { c.server.sendAll($0) }
            #expect(s.error == .closed)
            _ = fx.run(r) { c.server.receiveExactly($0) }
            #expect(r.error == .closed)
            // The peer sees the close.
            #expect(fx.receiveOnce(c.client).1 == .connectionShutdown)
            c.client.close()
            c.client.close()
        }
    }

    @Test("[STR-9] listener close: a pending accept gets .closed, later accepts too; close again does nothing")
    func listenerClose() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        for url in ["tcp://127.0.0.1:0", "ipc://" + uniquePath("lc")] {
            let l = try StreamListener(url: url, runtime: fx.rt)
            try l.listen()
            let a = fx.handle()
            l.accept(a)
            sleepMillis(10)
            #expect(a.isBusy)
            l.close()
            #expect(completes(a))
            #expect(a.error == .closed)
            #expect(a.output(0) == nil)
            l.close()
            let b = fx.run { l.accept($0) }
            #expect(b.error == .closed)
        }
    }

    // MARK: [STR-10] All of it

    @Test("[STR-10] a canceled sendAll reports in count the bytes it moved, and the peer reads exactly those")
    func sendAllCanceledCount() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        for transport in Transport.allCases {
            let c = try fx.connect(transport)
            let big = fx.mem.make(64 << 20)  // more than any socket buffer pair holds
            fillPattern(big, seed: 4242)
            let s = fx.handle()
            try s.setIOV(pieces(big, cuts: [100, 1 << 20, 33 << 20]))
            c.client.sendAll(s)
            sleepMillis(300)
            #expect(s.isBusy, "the peer does not read: sendAll cannot finish")
            s.cancel()
            #expect(completes(s))
            #expect(s.error == .canceled)
            let moved = s.count
            #expect(moved > 0 && moved < big.count, "count: \(moved)")
            c.client.close()
            let (got, end) = fx.receiveAll(c.server)
            #expect(end == .connectionShutdown)
            #expect(got.count == moved)
            #expect(got == Array(UnsafeRawBufferPointer(rebasing: big[0..<min(moved, big.count)])))
            c.server.close()
        }
    }

    @Test("[STR-10] receiveExactly: a timeout ends it with .timedOut and count = the bytes received, which stay in order")
    func receiveExactlyTimeout() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.tcp)
        let buf = fx.mem.make(200)
        let r = fx.handle()
        try r.setIOV([AioIOV(buf)])
        r.timeout = .after(.milliseconds(200))
        fx.send(String(repeating: "a", count: 100), on: c.client)
        _ = fx.run(r) { c.server.receiveExactly($0) }
        #expect(r.error == .timedOut)
        #expect(r.count == 100)
        #expect(buf.prefix(100).allSatisfy { $0 == UInt8(ascii: "a") })
        fx.send(String(repeating: "b", count: 100), on: c.client)
        let (rest, e) = fx.receiveAll(c.server, limit: 100)
        #expect(e == nil)
        #expect(rest == [UInt8](repeating: UInt8(ascii: "b"), count: 100))
        c.client.close()
        c.server.close()
    }

    @Test("[STR-10] the timeout of receiveExactly covers the whole transfer, not each partial receive")
    func receiveExactlyTimeoutCoversAll() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.tcp)
        let buf = fx.mem.make(100_000)
        let drip = fx.mem.make("0123456789")
        let r = fx.handle()
        try r.setIOV([AioIOV(buf)])
        r.timeout = .after(.milliseconds(300))
        let stop = Counter()
        let dripped = Counter()
        let client = c.client
        let server = c.server
        let dripHandle = fx.handle()
        try dripHandle.setIOV([AioIOV(drip)])
        // 10 bytes every 20 ms for up to 15 s: progress never stops, yet the transfer must time out.
        concurrently(2) { i in
            if i == 0 {
                let end = now() + 15
                while stop.count == 0 && now() < end {
                    client.sendAll(dripHandle)
                    if completes(dripHandle, within: 5), dripHandle.error == nil { dripped.increment() }
                    sleepMillis(20)
                }
            } else {
                server.receiveExactly(r)
                _ = completes(r, within: 14)
                stop.increment()
            }
        }
        #expect(!r.isBusy)
        #expect(r.error == .timedOut)
        #expect(r.count > 0 && r.count < 100_000)
        // Everything received so far is in order.
        let got = Array(buf.prefix(r.count))
        let pattern = Array("0123456789".utf8)
        #expect(got.enumerated().allSatisfy { $0.element == pattern[$0.offset % 10] })
        client.close()
        server.close()
    }

    // MARK: [STR-11] Peer ends

    @Test("[STR-11] peer close: the data sent before arrives, then receives complete with .connectionShutdown", arguments: ["tcp", "ipc"])
    func peerClose(_ transportName: String) throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(Transport(rawValue: transportName)!)
        fx.send("last words", on: c.client)
        c.client.close()
        #expect(fx.receiveAll(c.server, limit: 10).0 == Array("last words".utf8))
        #expect(fx.receiveOnce(c.server).1 == .connectionShutdown)
        #expect(fx.receiveOnce(c.server).1 == .connectionShutdown)
        // A pending receive when the peer closes.
        let c2 = try fx.connect(Transport(rawValue: transportName)!)
        let buf = fx.mem.make(16)
        let r = fx.handle()
        try r.setIOV([AioIOV(buf)])
        c2.server.receive(r)
        sleepMillis(10)
        #expect(r.isBusy)
        c2.client.close()
        #expect(completes(r))
        #expect(r.error == .connectionShutdown)
        c.server.close()
        c2.server.close()
    }

    @Test("[STR-11] peer reset (SO_LINGER 0, close): a pending receive completes with .connectionReset")
    func peerReset() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.tcp)
        let buf = fx.mem.make(16)
        let r = fx.handle()
        try r.setIOV([AioIOV(buf)])
        c.server.receive(r)
        sleepMillis(10)
        #expect(r.isBusy)
        var lg = linger(l_onoff: 1, l_linger: 0)
        let fd = c.client.descriptor
        #expect(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, socklen_t(MemoryLayout<linger>.size)) == 0)
        c.client.close()  // closes with an RST
        #expect(completes(r))
        #expect(r.error == .connectionReset)
        // A send to the reset peer fails with one of the peer-ended codes.
        let s = fx.handle()
        try s.setIOV([AioIOV(buf)])
        var errors: [AioError?] = []
        for _ in 0..<3 {
            _ = fx.run(s) { c.server.send($0) }
            errors.append(s.error)
        }
        #expect(errors.allSatisfy { $0 == .connectionReset || $0 == .connectionShutdown }, "\(errors)")
        c.server.close()
    }

    @Test("[STR-11] sends to a closed peer fail with .connectionReset or .connectionShutdown, and never raise SIGPIPE", arguments: ["tcp", "ipc"])
    func noSIGPIPE(_ transportName: String) throws {
        let fx = try Fixture()
        defer { fx.finish() }
        var before = sigaction()
        sigaction(SIGPIPE, nil, &before)
        // Block SIGPIPE on this thread: sends that fail at once run their system
        // call here, so a SIGPIPE they raised would stay pending, visible to sigpending.
        var block = sigset_t()
        sigemptyset(&block)
        sigaddset(&block, SIGPIPE)
        var oldMask = sigset_t()
        pthread_sigmask(SIG_BLOCK, &block, &oldMask)
        defer {
            var pending = sigset_t()
            sigpending(&pending)
            if sigismember(&pending, SIGPIPE) == 1 {
                var zero = timespec()
                _ = sigtimedwait(&block, nil, &zero)
            }
            pthread_sigmask(SIG_SETMASK, &oldMask, nil)
        }
        let c = try fx.connect(Transport(rawValue: transportName)!)
        c.server.close()
        let buf = fx.mem.make(1000)
        let s = fx.handle()
        try s.setIOV([AioIOV(buf)])
        var failures = 0
        var others: [AioError] = []
        for _ in 0..<200 {
            _ = fx.run(s) { c.client.send($0) }
            if let e = s.error {
                failures += 1
                if e != .connectionReset && e != .connectionShutdown { others.append(e) }
            }
        }
        #expect(failures >= 190, "sends to a closed peer fail (the first may still be accepted by the kernel)")
        #expect(others.isEmpty, "\(others.prefix(5))")
        var pending = sigset_t()
        sigpending(&pending)
        #expect(sigismember(&pending, SIGPIPE) == 0, "a SIGPIPE was raised")
        var after = sigaction()
        sigaction(SIGPIPE, nil, &after)
        #expect(
            unsafeBitCast(after.__sigaction_handler, to: UInt.self)
                == unsafeBitCast(before.__sigaction_handler, to: UInt.self)
                && after.sa_flags == before.sa_flags,
            "the SIGPIPE disposition is left alone")
        c.client.close()
    }

    // MARK: [STR-12] Options

    @Test("[STR-12] TCP streams have TCP_NODELAY on; keep-alive can be set; local and remote addresses")
    func tcpOptions() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.tcp)
        for s in [c.client, c.server] {
            #expect(s.noDelay)
            #expect(intOption(s.descriptor, Int32(IPPROTO_TCP), TCP_NODELAY) != 0)
            try s.setKeepAlive(true)
            #expect(s.keepAlive)
            #expect(intOption(s.descriptor, SOL_SOCKET, SO_KEEPALIVE) != 0)
            try s.setKeepAlive(false)
            #expect(!s.keepAlive)
            #expect(intOption(s.descriptor, SOL_SOCKET, SO_KEEPALIVE) == 0)
        }
        let port = c.listener.boundPort
        #expect(c.client.remoteAddress?.port == port)
        #expect(c.client.remoteAddress?.host == "127.0.0.1")
        #expect(c.server.localAddress?.port == port)
        #expect(c.client.localAddress?.port == localPort(c.client.descriptor))
        #expect(c.server.remoteAddress?.port == c.client.localAddress?.port)
        #expect(c.client.remoteAddress?.description == "127.0.0.1:\(port)")
        c.client.close()
        c.server.close()
    }

    @Test("[STR-12] IPv6 loopback: tcp6 streams have TCP_NODELAY on and report [::1] addresses")
    func ipv6Options() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let l = try StreamListener(url: "tcp6://[::1]:0", runtime: fx.rt)
        do {
            try l.listen()
        } catch {
            try Test.cancel("no IPv6 loopback here (listen: \(error))")
        }
        let d = try StreamDialer(url: "tcp6://[::1]:\(l.boundPort)", runtime: fx.rt)
        let a = fx.handle()
        l.accept(a)
        let h = fx.run { d.dial($0) }
        #expect(h.error == nil)
        #expect(completes(a))
        let client = try #require(h.output(0) as? SocketStream)
        let server = try #require(a.output(0) as? SocketStream)
        #expect(client.noDelay && server.noDelay)
        #expect(client.remoteAddress?.host == "::1")
        #expect(client.remoteAddress?.port == l.boundPort)
        #expect(client.remoteAddress?.description == "[::1]:\(l.boundPort)")
        #expect(server.remoteAddress?.port == client.localAddress?.port)
        client.close()
        server.close()
        l.close()
    }

    @Test("[STR-12] ipc streams: the addresses name the path")
    func ipcOptions() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let c = try fx.connect(.ipc)
        let path = try #require(c.path)
        #expect(c.client.remoteAddress?.host == path)
        #expect(c.server.localAddress?.host == path)
        #expect(c.client.remoteAddress?.port == nil)
        c.client.close()
        c.server.close()
    }

    // MARK: [STR-13] Adopting

    @Test("[STR-13] adopting one end of a socketpair: non-blocking, close-on-exec, and every guarantee")
    func adoptSocketpair() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        var fds: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let peer = fds[1]
        #expect(fcntl(fds[0], F_GETFL) & O_NONBLOCK == 0)
        let s = try SocketStream(adopting: fds[0], runtime: fx.rt)
        #expect(isNonBlockingCloseOnExec(fds[0]))
        #expect(s.descriptor == fds[0])
        fx.send("ping", on: s)
        var got = [UInt8](repeating: 0, count: 4)
        #expect(read(peer, &got, 4) == 4)
        #expect(got == Array("ping".utf8))
        #expect(write(peer, "pong", 4) == 4)
        #expect(fx.receiveAll(s, limit: 4).0 == Array("pong".utf8))
        // A pending receive, then the peer closes.
        let buf = fx.mem.make(8)
        let r = fx.handle()
        try r.setIOV([AioIOV(buf)])
        s.receive(r)
        sleepMillis(10)
        #expect(r.isBusy)
        close(peer)
        #expect(completes(r))
        #expect(r.error == .connectionShutdown)
        s.close()
        #expect(s.descriptor == -1)
    }

    @Test("[STR-13] adopting a TCP socket connected with plain connect(): TCP_NODELAY on, transfers work")
    func adoptTCP() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        let l = try StreamListener(url: "tcp://127.0.0.1:0", runtime: fx.rt)
        try l.listen()
        defer { l.close() }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(fd >= 0)
        let a = fx.handle()
        l.accept(a)
        let rc = withSockaddr(loopback(port: l.boundPort)) { Glibc.connect(fd, $0, $1) }
        try #require(rc == 0, "connect: errno \(errno)")
        let s = try SocketStream(adopting: fd, runtime: fx.rt)
        #expect(isNonBlockingCloseOnExec(fd))
        #expect(s.noDelay)
        #expect(s.remoteAddress?.port == l.boundPort)
        #expect(completes(a))
        let server = try #require(a.output(0) as? SocketStream)
        fx.send("adopted", on: s)
        #expect(fx.receiveAll(server, limit: 7).0 == Array("adopted".utf8))
        s.close()
        #expect(fx.receiveOnce(server).1 == .connectionShutdown)
        server.close()
    }

    @Test("[STR-13] adopting what is not a connected stream socket throws .invalidArgument and leaves it open")
    func adoptInvalid() throws {
        let fx = try Fixture()
        defer { fx.finish() }
        func expectRefused(_ fd: Int32, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
            #expect(throws: AioError.invalidArgument, "\(what)", sourceLocation: sourceLocation) {
                _ = try SocketStream(adopting: fd, runtime: fx.rt)
            }
            #expect(fcntl(fd, F_GETFD) >= 0, "\(what): the descriptor stays open", sourceLocation: sourceLocation)
        }
        #expect(throws: AioError.invalidArgument) { _ = try SocketStream(adopting: -1, runtime: fx.rt) }

        var p: [Int32] = [-1, -1]
        try #require(pipe(&p) == 0)
        expectRefused(p[0], "a pipe's read end")
        expectRefused(p[1], "a pipe's write end")
        close(p[0])
        close(p[1])

        let file = open("/dev/null", O_RDWR | O_CLOEXEC)
        try #require(file >= 0)
        expectRefused(file, "/dev/null")
        close(file)

        let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(udp >= 0)
        expectRefused(udp, "an unconnected UDP socket")
        let rc = withSockaddr(loopback(port: 9)) { Glibc.connect(udp, $0, $1) }
        #expect(rc == 0)
        expectRefused(udp, "a connected UDP socket")
        close(udp)

        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(tcp >= 0)
        expectRefused(tcp, "an unconnected TCP socket")
        close(tcp)

        let (listening, _) = boundTCPSocket()
        try #require(listening >= 0)
        #expect(listen(listening, 4) == 0)
        expectRefused(listening, "a listening TCP socket")
        close(listening)

        var dg: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0, &dg) == 0)
        expectRefused(dg[0], "a Unix datagram socketpair end")
        close(dg[0])
        close(dg[1])
    }
}

// MARK: - The echo parts of the 1,000-connection test

/// What the echo clients saw.
private final class EchoResults: Sendable {
    let ok = Counter()
    let failures = Box<[String]>([])
    func fail(_ why: String) { failures.mutate { $0.append(why) } }
}

/// One accepted connection: a handle that alternates receive and sendAll
/// (the echo) in its own callback, until the peer closes.
private final class EchoSession: Sendable {
    let stream: SocketStream
    let buffer: AioIOV
    let handle: AioHandle

    init(stream: SocketStream, runtime: AioRuntime, size: Int, closed: Counter) {
        let buf = AioIOV(UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16))
        let sending = Box<Bool>(false)
        self.stream = stream
        self.buffer = buf
        self.handle = AioHandle(runtime: runtime) { h in
            if h.error != nil {
                stream.close()  // the peer closed (or the runtime stops): done
                closed.increment()
                return
            }
            if sending.value {
                sending.value = false
                try? h.setIOV([buf])
                stream.receive(h)
            } else {
                sending.value = true
                try? h.setIOV([AioIOV(UnsafeMutableRawBufferPointer(rebasing: buf.buffer[0..<h.count]))])
                stream.sendAll(h)
            }
        }
    }

    func start() {
        try? handle.setIOV([buffer])
        stream.receive(handle)
    }
}

/// One client: dial, sendAll its message, receiveExactly the echo, compare,
/// close: one handle, each step started by the previous step's callback.
private final class EchoClient: Sendable {
    let out: AioIOV
    let inb: AioIOV
    let handle: AioHandle

    init(index: Int, size: Int, runtime: AioRuntime, results: EchoResults) {
        let o = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        fillPattern(o, seed: UInt64(index) &* 0x9E37_79B9_7F4A_7C15 &+ 1)
        let i = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        i.initializeMemory(as: UInt8.self, repeating: 0)
        let out = AioIOV(o)
        let inb = AioIOV(i)
        self.out = out
        self.inb = inb
        let step = Box<Int>(0)
        let stream = Box<SocketStream?>(nil)
        handle = AioHandle(runtime: runtime) { h in
            switch step.value {
            case 0:
                guard h.error == nil, let s = h.output(0) as? SocketStream else {
                    results.fail("#\(index) dial: \(String(describing: h.error))")
                    return
                }
                stream.value = s
                step.value = 1
                try? h.setIOV([out])
                s.sendAll(h)
            case 1:
                guard let s = stream.value else { return }
                guard h.error == nil, h.count == size else {
                    results.fail("#\(index) send: \(String(describing: h.error)) \(h.count)")
                    s.close()
                    return
                }
                step.value = 2
                try? h.setIOV([inb])
                s.receiveExactly(h)
            default:
                guard let s = stream.value else { return }
                if h.error == nil && h.count == size && memcmp(out.buffer.baseAddress!, inb.buffer.baseAddress!, size) == 0 {
                    results.ok.increment()
                } else {
                    results.fail("#\(index) echo: \(String(describing: h.error)) \(h.count)")
                }
                s.close()
            }
        }
    }
}

/// A chain of plain sends or receives: the callback adds the count and
/// restarts with the rest of the iov until `total` bytes moved.
private final class PartialLoop: Sendable {
    let total: Int
    let iov: [AioIOV]
    let moved = Box<Int>(0)
    let operations = Counter()
    let badCounts = Counter()
    let finished = Counter()
    let error = Box<AioError?>(nil)

    init(total: Int, iov: [AioIOV]) {
        self.total = total
        self.iov = iov
    }

    func step(_ h: AioHandle, _ restart: (AioHandle) -> Void) {
        operations.increment()
        if let e = h.error {
            error.value = e
            finished.increment()
            return
        }
        let n = h.count
        var before = 0
        var progress = 0
        moved.mutate {
            before = $0
            $0 += n
            progress = $0
        }
        if n < 1 || n > total - before { badCounts.increment() }
        if progress >= total {
            finished.increment()
            return
        }
        try? h.setIOV(remaining(iov, after: progress))
        restart(h)
    }
}

// MARK: - Accept under a descriptor limit

/// CPU time of the threads whose name starts with a prefix, read from
/// /proc/self/task/<tid>/stat files opened beforehand (no descriptor is
/// needed while the limit is low).
private final class ThreadCPU {
    private var fds: [Int32] = []

    init(prefix: String) {
        guard let dir = opendir("/proc/self/task") else { return }
        defer { closedir(dir) }
        while let e = readdir(dir) {
            let tid = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if tid == "." || tid == ".." { continue }
            guard let f = fopen("/proc/self/task/\(tid)/comm", "r") else { continue }
            var buf = [UInt8](repeating: 0, count: 64)
            let got = fread(&buf, 1, 63, f)
            fclose(f)
            guard String(decoding: buf.prefix(got), as: UTF8.self).hasPrefix(prefix) else { continue }
            let fd = open("/proc/self/task/\(tid)/stat", O_RDONLY | O_CLOEXEC)
            if fd >= 0 { fds.append(fd) }
        }
    }

    var threads: Int { fds.count }

    /// User + system time in clock ticks, summed over the threads.
    func ticks() -> Int {
        var total = 0
        var buf = [UInt8](repeating: 0, count: 1024)
        for fd in fds {
            let n = pread(fd, &buf, buf.count, 0)
            guard n > 0 else { continue }
            let text = String(decoding: buf.prefix(n), as: UTF8.self)
            guard let close = text.lastIndex(of: ")") else { continue }
            let fields = text[text.index(after: close)...].split(separator: " ")
            // After the name: state(0) ppid(1) ... utime(11) stime(12).
            if fields.count > 12, let u = Int(fields[11]), let s = Int(fields[12]) { total += u + s }
        }
        return total
    }

    func close() {
        for fd in fds { Glibc.close(fd) }
        fds.removeAll()
    }
}

/// The highest descriptor number open in this process.
private func highestOpenDescriptor() -> Int32 {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var highest: Int32 = -1
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let n = Int32(name), n > highest { highest = n }
    }
    return highest
}

/// Set (to the path of a marker file) only in the child process the
/// descriptor-limit test spawns.
private let descriptorLimitChildMarker: String? = getenv("AIOKIT_STREAMTESTS_EMFILE_CHILD").map { String(cString: $0) }

/// This test binary (the test runner), run again with `arguments` and the
/// environment plus `extra`; stdout and stderr go to `log`. Every inherited
/// descriptor past stderr is closed in the child. Returns the child's pid.
private func spawnTestRunner(arguments: [String], extra: [String], log: String) -> pid_t? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    let exe = String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    // The environment, from /proc/self/environ (NUL-separated).
    var environment: [String] = []
    if let f = fopen("/proc/self/environ", "r") {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let got = fread(&chunk, 1, chunk.count, f)
            if got <= 0 { break }
            bytes += chunk.prefix(got)
        }
        fclose(f)
        environment = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }
    environment += extra
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>?, Int32) -> Int32
    if let sym = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") {
        _ = unsafeBitCast(sym, to: AddCloseFrom.self)(&actions, 3)  // glibc 2.34+
    }
    posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv: [UnsafeMutablePointer<CChar>?] = ([exe] + arguments).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = environment.map { strdup($0) } + [nil]
    defer {
        for p in argv { free(p) }
        for p in envp { free(p) }
    }
    var pid: pid_t = 0
    guard posix_spawn(&pid, exe, &actions, nil, argv, envp) == 0 else { return nil }
    return pid
}

/// The lines of a file that report issues (a child's test output), for a failure message.
private func issueLines(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "(no output)" }
    defer { fclose(f) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let got = fread(&chunk, 1, chunk.count, f)
        if got <= 0 { break }
        bytes += chunk.prefix(got)
    }
    let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n")
    let wanted = lines.filter { $0.contains("\u{2718}") || $0.contains("\u{21b3}") || $0.contains("error") || $0.contains("Sanitizer") }
    return (wanted.isEmpty ? Array(lines.suffix(20)) : Array(wanted.prefix(40))).joined(separator: "\n")
}

/// Accept under EMFILE. The descriptor limit (RLIMIT_NOFILE) is process-wide:
/// lowering it here would make every test running meanwhile fail to open
/// descriptors. So the scenario runs in a child process: the test runner
/// binary again, filtered to `emfileChildBody`, which is enabled only there.
@Suite("Streams: accept under a descriptor limit (in a child process)", .serialized)
struct StreamTestsDescriptorLimit {
    @Test(
        "[STR-4] accept under EMFILE stays pending without a busy loop, and completes once descriptors free up (child process)",
        .enabled(if: descriptorLimitChildMarker == nil))
    func acceptUnderEMFILE() throws {
        let base = "/tmp/aiokit-st-\(getpid())-\(pathCounter.increment())-emfile"
        let log = base + ".log"
        let marker = base + ".ran"
        defer {
            unlink(log)
            unlink(marker)
        }
        let pid = try #require(
            spawnTestRunner(
                arguments: ["--testing-library", "swift-testing", "--filter", "emfileChildBody"],
                extra: ["AIOKIT_STREAMTESTS_EMFILE_CHILD=" + marker], log: log),
            "posix_spawn of the test runner failed")
        var status: Int32 = 0
        let exited = eventually(within: 120) { waitpid(pid, &status, WNOHANG) == pid }
        if !exited {
            kill(pid, SIGKILL)  // our own child
            waitpid(pid, &status, 0)
        }
        #expect(exited, "the child did not finish within 120 s:\n\(issueLines(log))")
        let exitedNormally = status & 0x7F == 0
        let code = (status >> 8) & 0xFF
        #expect(exited && exitedNormally && code == 0, "the child failed (status \(status)):\n\(issueLines(log))")
        #expect(fileType(marker) == S_IFREG, "the child ran the scenario to its end:\n\(issueLines(log))")
    }

    @Test(
        "[STR-4] (runs only in the child process the test above spawns) accept under EMFILE",
        .enabled(if: descriptorLimitChildMarker != nil))
    func emfileChildBody() throws {
        let fx = try Fixture(name: "stemfile")
        defer { fx.finish() }
        let rt = fx.rt
        let listener = try StreamListener(url: "tcp://127.0.0.1:0", runtime: rt)
        try listener.listen()
        defer { listener.close() }
        let dialer = try StreamDialer(url: "tcp://127.0.0.1:\(listener.boundPort)", runtime: rt)
        // Connections waiting in the listen queue, dialed before the limit drops.
        var clients: [SocketStream] = []
        for _ in 0..<3 {
            let d = fx.run { dialer.dial($0) }
            clients.append(try #require(d.output(0) as? SocketStream))
        }
        let cpu = ThreadCPU(prefix: "stemfile-")
        defer { cpu.close() }
        #expect(cpu.threads >= 3)

        let nofile = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        var saved = rlimit()
        try #require(getrlimit(nofile, &saved) == 0)
        var dummies: [Int32] = []
        var restored = false
        func restore() {
            if restored { return }
            restored = true
            var r = saved
            _ = setrlimit(nofile, &r)
            for fd in dummies { close(fd) }
            dummies.removeAll()
        }
        defer { restore() }
        // Fill every free descriptor number below a low limit: from here on
        // accept() fails with EMFILE.
        func fillFree() {
            while true {
                let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
                if fd < 0 { break }
                dummies.append(fd)
            }
        }
        let ticks0 = cpu.ticks()
        var low = saved
        low.rlim_cur = rlim_t(highestOpenDescriptor() + 8)
        try #require(setrlimit(nofile, &low) == 0)
        fillFree()
        let probe = open("/dev/null", O_RDONLY | O_CLOEXEC)
        let probeErrno = errno
        if probe >= 0 { close(probe) }
        #expect(probe < 0 && probeErrno == EMFILE, "the descriptor table is full below the limit")
        let accepts = (0..<3).map { _ in fx.handle() }
        for a in accepts { listener.accept(a) }
        let windowStart = now()
        while now() - windowStart < 0.4 {
            sleepMillis(50)
            fillFree()  // take any number freed meanwhile
        }
        let stillPending = accepts.filter { $0.isBusy }.count
        let ticks1 = cpu.ticks()
        restore()

        #expect(stillPending == accepts.count, "accepts stay pending while accept() fails with EMFILE")
        let cpuMillis = (ticks1 - ticks0) * 1000 / max(1, sysconf(Int32(_SC_CLK_TCK)))
        #expect(cpuMillis < 120, "the runtime's threads used \(cpuMillis) ms of CPU in a 400 ms window: a busy loop?")
        // Descriptors are free again: the pending accepts complete.
        for a in accepts {
            #expect(completes(a, within: 15))
            #expect(a.error == nil, "\(String(describing: a.error))")
        }
        let ports = Set(clients.compactMap { $0.localAddress?.port })
        let accepted = accepts.compactMap { $0.output(0) as? SocketStream }
        #expect(accepted.count == accepts.count)
        #expect(Set(accepted.compactMap { $0.remoteAddress?.port }) == ports)
        // And they work.
        if let first = accepted.first, let peer = clients.first(where: { $0.localAddress?.port == first.remoteAddress?.port }) {
            fx.send("alive", on: peer)
            #expect(fx.receiveAll(first, limit: 5).0 == Array("alive".utf8))
        }
        for s in accepted { s.close() }
        for s in clients { s.close() }
        if let marker = descriptorLimitChildMarker {
            let fd = open(marker, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o600)
            if fd >= 0 { close(fd) }
        }
    }
}
