// aio-bench: tcp-pingpong and tcp-stream through the facades (`--via reactor`,
// `--via readiness`, `--via watcher`), the same work as Streams.swift does on
// the bare streams, written as a user of each shape would write it:
//
// - reactor: raw non-blocking sockets; `AioService` readers (and writers while
//   a send would block) do the system calls in their notifications.
// - readiness: raw non-blocking sockets in `ReadinessLoop`s run on our own
//   threads (one loop for tcp-pingpong; a client loop and a server loop for
//   tcp-stream), reading and writing until EAGAIN after each event.
// - watcher: adopted `SocketStream`s and one `Watcher` whose results the main
//   thread collects; reads and writes use the run's own buffers.

import AioKit
import Glibc
import Synchronization

/// The workloads each facade offers.
let facadeVias: Set<String> = ["reactor", "readiness", "watcher"]

func runFacadePingPong(_ args: BenchArgs) -> Report {
    switch args.via {
    case "reactor": return reactorPingPong(args)
    case "readiness": return readinessPingPong(args)
    default: return watcherPingPong(args)
    }
}

func runFacadeStream(_ args: BenchArgs) -> Report {
    switch args.via {
    case "reactor": return reactorStream(args)
    case "readiness": return readinessStream(args)
    default: return watcherStream(args)
    }
}

// MARK: - Helpers

/// A connected loopback TCP pair of raw sockets (client, server): non-blocking,
/// close-on-exec, TCP_NODELAY on both (as AioKit's streams have it).
private func rawTCPPair() -> (Int32, Int32) {
    let ls = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if ls < 0 { die("socket: errno \(errno)") }
    defer { close(ls) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let listening = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
            bind(ls, sa, len) == 0 && listen(ls, 16) == 0 && getsockname(ls, sa, &len) == 0
        }
    }
    if !listening { die("listen on 127.0.0.1: errno \(errno)") }
    let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    let connected = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(c, $0, len) == 0 }
    }
    if c < 0 || !connected { die("connect: errno \(errno)") }
    let s = accept(ls, nil, nil)
    if s < 0 { die("accept: errno \(errno)") }
    for fd in [c, s] {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
    }
    return (c, s)
}

/// One non-blocking recv into `buffer[from...]`: bytes, 0 for EAGAIN; dies on EOF or error.
@inline(__always)
private func recvSome(_ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, from: Int, _ what: StaticString) -> Int {
    while true {
        let n = recv(fd, buffer.baseAddress! + from, buffer.count - from, 0)
        if n > 0 { return n }
        if n == 0 { die("\(what): the peer closed") }
        if errno == EINTR { continue }
        if errno == EAGAIN { return 0 }
        die("\(what): errno \(errno)")
    }
}

/// One non-blocking send of `buffer[from..<to]`: bytes, 0 for EAGAIN; dies on error.
@inline(__always)
private func sendSome(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, from: Int, to: Int, _ what: StaticString) -> Int {
    while true {
        let n = send(fd, buffer.baseAddress! + from, to - from, Int32(MSG_NOSIGNAL))
        if n > 0 { return n }
        if n < 0 && errno == EINTR { continue }
        if n < 0 && errno == EAGAIN { return 0 }
        die("\(what): errno \(errno)")
    }
}

/// Sends all of `buffer`, waiting in poll(2) while the socket is full (only
/// the small messages of tcp-pingpong are sent this way).
private func sendAllWaiting(_ fd: Int32, _ buffer: UnsafeRawBufferPointer, _ what: StaticString) {
    var done = 0
    while done < buffer.count {
        let n = sendSome(fd, buffer, from: done, to: buffer.count, what)
        done += n
        if n == 0 {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, 1000)
        }
    }
}

/// A thread of our own (the readiness loops' second loop); the closure returned joins it.
private func startThread(_ body: @escaping @Sendable () -> Void) -> () -> Void {
    final class Start: @unchecked Sendable {  // immutable
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { p in
        Unmanaged<Start>.fromOpaque(p!).takeRetainedValue().body()
        return nil
    }, Unmanaged.passRetained(Start(body)).toOpaque())
    if rc != 0 { die("pthread_create: \(rc)") }
    return { pthread_join(tid, nil) }
}

/// Round trips: state of the client side, shared by the three facades.
private final class RoundTrips: @unchecked Sendable {  // vars: the client's side only (one notification / the loop's thread)
    let size: Int
    let rounds: Int
    let payload: UnsafeMutableRawBufferPointer
    let inbox: UnsafeMutableRawBufferPointer
    let serverBuffer: UnsafeMutableRawBufferPointer
    let rtt: UnsafeMutablePointer<Int64>
    let roundsDone = Atomic<Int>(0)
    let done = Latch()
    var round = 0
    var roundStart: UInt64 = 0
    var clientGot = 0
    var serverGot = 0  // the server's side only

    init(size: Int, rounds: Int) {
        self.size = size
        self.rounds = rounds
        payload = makePayload(size)
        inbox = zeroedBuffer(size)
        serverBuffer = zeroedBuffer(size)
        rtt = .allocate(capacity: rounds)
        rtt.initialize(repeating: 0, count: rounds)
    }

    deinit {
        payload.deallocate()
        inbox.deallocate()
        serverBuffer.deallocate()
        rtt.deallocate()
    }

    /// The client has the whole echo: check it, record the round trip. True when another round follows.
    func echoed() -> Bool {
        if memcmp(inbox.baseAddress!, payload.baseAddress!, size) != 0 { die("tcp-pingpong: echo differs from what was sent") }
        let now = nowNanos()
        rtt[round] = Int64(bitPattern: now &- roundStart)
        round += 1
        roundsDone.store(round, ordering: .relaxed)
        roundStart = now
        if round == rounds {
            done.open()
            return false
        }
        return true
    }

    func report(_ args: BenchArgs, wall: Double) -> Report {
        var report = Report(args, wall: wall)
        report.addRoundTrips(Array(UnsafeBufferPointer(start: rtt, count: rounds)))
        return report
    }
}

/// Byte streams: what every connection of a tcp-stream run shares.
private final class StreamProgress: Sendable {
    let bytesBack = Atomic<Int>(0)
    let clientsLeft: Atomic<Int>
    let done = Latch()
    init(_ connections: Int) { clientsLeft = Atomic(connections) }
    func clientFinished() {
        if clientsLeft.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done.open() }
    }
}

// MARK: - Reactor

private final class Reader: AioReader {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    func notifyForRead() { body() }
}

private final class Writer: AioWriter {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    func notifyForWrite() { body() }
}

private func reactorPingPong(_ args: BenchArgs) -> Report {
    let (client, server) = rawTCPPair()
    let rt = RoundTrips(size: args.size, rounds: args.n)
    let service = AioService()
    let serverReader = Reader { [rt] in
        rt.serverGot += recvSome(server, rt.serverBuffer, from: rt.serverGot, "tcp-pingpong: server receive")
        if rt.serverGot == rt.size {
            rt.serverGot = 0
            sendAllWaiting(server, UnsafeRawBufferPointer(rt.serverBuffer), "tcp-pingpong: server send")
        }
    }
    let clientReader = Reader { [rt] in
        rt.clientGot += recvSome(client, rt.inbox, from: rt.clientGot, "tcp-pingpong: client receive")
        if rt.clientGot == rt.size {
            rt.clientGot = 0
            if rt.echoed() { sendAllWaiting(client, UnsafeRawBufferPointer(rt.payload), "tcp-pingpong: client send") }
        }
    }
    do {
        _ = try service.registerReader(server, serverReader)
        _ = try service.registerReader(client, clientReader)
        try service.start()
    } catch {
        die("AioService: \(error)")
    }
    let span = Span.begin()
    rt.roundStart = span.startNanos
    sendAllWaiting(client, UnsafeRawBufferPointer(rt.payload), "tcp-pingpong: client send")
    rt.done.waitBounded("tcp-pingpong", progress: { [rt] in rt.roundsDone.load(ordering: .relaxed) })
    let (wall, _) = span.end()
    Watchdog.shared.bounded("tcp-pingpong teardown") { service.stopAndWait() }
    close(client)
    close(server)
    return rt.report(args, wall: wall)
}

/// One tcp-stream connection on the reactor.
private final class ReactorConnection: @unchecked Sendable {  // client vars: its notifications; server vars: guarded by `lock`
    let service: AioService
    let progress: StreamProgress
    let client: Int32
    let server: Int32
    let size: Int
    let chunks: Int
    let expected: Int
    let payload: UnsafeRawBufferPointer
    let inbox: UnsafeMutableRawBufferPointer
    let buffer: UnsafeMutableRawBufferPointer
    let lock = PthreadLock()
    // Client
    var chunksSent = 0
    var chunkOffset = 0
    var received = 0
    var clientWriter = 0
    // Server: `pending` bytes of `buffer` from `sent` wait to go back.
    var pending = 0
    var sent = 0
    var serverID = 0

    init(_ service: AioService, _ progress: StreamProgress, size: Int, chunks: Int, payload: UnsafeRawBufferPointer) {
        self.service = service
        self.progress = progress
        (client, server) = rawTCPPair()
        self.size = size
        self.chunks = chunks
        expected = size * chunks
        self.payload = payload
        inbox = zeroedBuffer(size)
        buffer = zeroedBuffer(size)
    }

    deinit {
        inbox.deallocate()
        buffer.deallocate()
        close(client)
        close(server)
    }

    func start() throws {
        serverID = try service.registerReader(server, Reader { [self] in serverReadable() })
        _ = try service.registerReader(client, Reader { [self] in clientReadable() })
        if chunks == 0 { progress.clientFinished() } else {
            clientWriter = try service.registerWriter(client, Writer { [self] in clientWritable() })
        }
    }

    func clientWritable() {
        while chunksSent < chunks {
            let n = sendSome(client, payload, from: chunkOffset, to: size, "tcp-stream: client send")
            if n == 0 { return }  // full: told again once writable
            chunkOffset += n
            if chunkOffset == size {
                chunkOffset = 0
                chunksSent += 1
            }
        }
        service.unregisterWriter(clientWriter)  // all sent
    }

    func clientReadable() {
        while case let n = recvSome(client, inbox, from: 0, "tcp-stream: client receive"), n > 0 {
            received += n
            progress.bytesBack.add(n, ordering: .relaxed)
            if received == expected { progress.clientFinished() }
            if received > expected { die("tcp-stream: received more bytes than were sent") }
        }
    }

    /// Receives up to SIZE bytes and sends them back; a send that would block
    /// swaps the reader for a writer until the rest has gone.
    func serverReadable() {
        lock.lock()
        defer { lock.unlock() }
        while true {
            let n = recvSome(server, buffer, from: 0, "tcp-stream: server receive")
            if n == 0 { return }
            pending = n
            sent = 0
            if !flush() { break }
        }
        service.unregisterReader(serverID)
        do { serverID = try service.registerWriter(server, Writer { [self] in serverWritable() }) } catch {
            die("registerWriter: \(error)")
        }
    }

    func serverWritable() {
        lock.lock()
        defer { lock.unlock() }
        guard flush() else { return }
        service.unregisterWriter(serverID)
        do { serverID = try service.registerReader(server, Reader { [self] in serverReadable() }) } catch {
            die("registerReader: \(error)")
        }
    }

    private func flush() -> Bool {
        while sent < pending {
            let n = sendSome(server, UnsafeRawBufferPointer(buffer), from: sent, to: pending, "tcp-stream: server send")
            if n == 0 { return false }
            sent += n
        }
        return true
    }
}

private func reactorStream(_ args: BenchArgs) -> Report {
    let service = AioService()
    let progress = StreamProgress(args.concurrency)
    let payload = makePayload(args.size)
    let connections = (0..<args.concurrency).map { i in
        ReactorConnection(
            service, progress, size: args.size, chunks: evenShare(args.n, parts: args.concurrency, index: i),
            payload: UnsafeRawBufferPointer(payload))
    }
    do { for c in connections { try c.start() } } catch { die("AioService: \(error)") }
    let span = Span.begin()
    do { try service.start() } catch { die("AioService: \(error)") }
    progress.done.waitBounded("tcp-stream", progress: { [progress] in progress.bytesBack.load(ordering: .relaxed) })
    let (wall, _) = span.end()
    Watchdog.shared.bounded("tcp-stream teardown") { service.stopAndWait() }
    withExtendedLifetime(connections) {}
    payload.deallocate()
    var report = Report(args, wall: wall)
    report.add("mb_per_s", Double(args.n) * Double(args.size) / wall / 1e6, decimals: 2)
    return report
}

// MARK: - Readiness loop

/// tcp-pingpong on one loop, run by the main thread.
private final class PingPongHandler: ReadinessHandler {
    let rt: RoundTrips
    let client: Int32
    let server: Int32
    init(_ rt: RoundTrips, client: Int32, server: Int32) {
        self.rt = rt
        self.client = client
        self.server = server
    }

    func readable(_ loop: ReadinessLoop, token: Int, hint: ReadHint) {
        if token == 1 {
            // Edge-triggered: read until EAGAIN.
            while case let n = recvSome(server, rt.serverBuffer, from: rt.serverGot, "tcp-pingpong: server receive"), n > 0 {
                rt.serverGot += n
                if rt.serverGot == rt.size {
                    rt.serverGot = 0
                    sendAllWaiting(server, UnsafeRawBufferPointer(rt.serverBuffer), "tcp-pingpong: server send")
                }
            }
        } else {
            while case let n = recvSome(client, rt.inbox, from: rt.clientGot, "tcp-pingpong: client receive"), n > 0 {
                rt.clientGot += n
                if rt.clientGot == rt.size {
                    rt.clientGot = 0
                    if rt.echoed() { sendAllWaiting(client, UnsafeRawBufferPointer(rt.payload), "tcp-pingpong: client send") }
                }
            }
        }
    }

    func writable(_ loop: ReadinessLoop, token: Int) {}
}

private func readinessPingPong(_ args: BenchArgs) -> Report {
    let (client, server) = rawTCPPair()
    let rt = RoundTrips(size: args.size, rounds: args.n)
    let handler = PingPongHandler(rt, client: client, server: server)
    let loop: ReadinessLoop
    do {
        loop = try ReadinessLoop()
        try loop.register(server, token: 1, interest: .readable)
        try loop.register(client, token: 2, interest: .readable)
    } catch {
        die("ReadinessLoop: \(error)")
    }
    Watchdog.shared.arm("tcp-pingpong", progress: { [rt] in rt.roundsDone.load(ordering: .relaxed) })
    let span = Span.begin()
    rt.roundStart = span.startNanos
    sendAllWaiting(client, UnsafeRawBufferPointer(rt.payload), "tcp-pingpong: client send")
    while rt.round < rt.rounds {
        do { try loop.runOnce(handler, timeout: nil) } catch { die("runOnce: \(error)") }
    }
    let (wall, _) = span.end()
    Watchdog.shared.disarm()
    loop.shutdown()
    close(client)
    close(server)
    return rt.report(args, wall: wall)
}

/// tcp-stream, one side of every connection per loop (and thread).
private final class StreamSides: ReadinessHandler, @unchecked Sendable {  // used by its loop's thread only
    struct Client { let fd: Int32; let chunks: Int; var chunksSent = 0; var chunkOffset = 0; var received = 0 }
    struct Server { let fd: Int32; var pending = 0; var sent = 0 }
    let progress: StreamProgress
    let size: Int
    let payload: UnsafeRawBufferPointer
    let inbox: UnsafeMutableRawBufferPointer
    var clients: [Client] = []
    var servers: [Server] = []
    var buffers: [UnsafeMutableRawBufferPointer] = []

    init(_ progress: StreamProgress, size: Int, payload: UnsafeRawBufferPointer) {
        self.progress = progress
        self.size = size
        self.payload = payload
        inbox = zeroedBuffer(size)
    }

    deinit {
        inbox.deallocate()
        for b in buffers { b.deallocate() }
    }

    // Tokens: clients 0..<C, servers C..<2C.
    func readable(_ loop: ReadinessLoop, token: Int, hint: ReadHint) {
        if token < clients.count { clientRead(token) } else { serverPump(token - clients.count) }
    }

    func writable(_ loop: ReadinessLoop, token: Int) {
        if token < clients.count { clientWrite(token) } else { serverPump(token - clients.count) }
    }

    func clientWrite(_ i: Int) {
        var c = clients[i]
        defer { clients[i] = c }
        while c.chunksSent < c.chunks {
            let n = sendSome(c.fd, payload, from: c.chunkOffset, to: size, "tcp-stream: client send")
            if n == 0 { return }
            c.chunkOffset += n
            if c.chunkOffset == size {
                c.chunkOffset = 0
                c.chunksSent += 1
            }
        }
    }

    func clientRead(_ i: Int) {
        while case let n = recvSome(clients[i].fd, inbox, from: 0, "tcp-stream: client receive"), n > 0 {
            clients[i].received += n
            progress.bytesBack.add(n, ordering: .relaxed)
            if clients[i].received == clients[i].chunks * size { progress.clientFinished() }
        }
    }

    /// Echo: send back what is pending, then read more, until either would block.
    func serverPump(_ i: Int) {
        var s = servers[i]
        defer { servers[i] = s }
        let buffer = buffers[i]
        while true {
            while s.sent < s.pending {
                let n = sendSome(s.fd, UnsafeRawBufferPointer(buffer), from: s.sent, to: s.pending, "tcp-stream: server send")
                if n == 0 { return }  // a writable edge comes once there is room
                s.sent += n
            }
            let n = recvSome(s.fd, buffer, from: 0, "tcp-stream: server receive")
            if n == 0 { return }
            s.pending = n
            s.sent = 0
        }
    }
}

private func readinessStream(_ args: BenchArgs) -> Report {
    let progress = StreamProgress(args.concurrency)
    let payload = makePayload(args.size)
    let clientSide = StreamSides(progress, size: args.size, payload: UnsafeRawBufferPointer(payload))
    let serverSide = StreamSides(progress, size: args.size, payload: UnsafeRawBufferPointer(payload))
    let clientLoop: ReadinessLoop
    let serverLoop: ReadinessLoop
    var fds: [Int32] = []
    do {
        clientLoop = try ReadinessLoop()
        serverLoop = try ReadinessLoop()
        let count = args.concurrency
        for i in 0..<count {
            let (c, s) = rawTCPPair()
            fds += [c, s]
            clientSide.clients.append(.init(fd: c, chunks: evenShare(args.n, parts: count, index: i)))
            // The server loop's handler sees tokens C..<2C as its servers.
            serverSide.clients.append(.init(fd: -1, chunks: 0))
            serverSide.servers.append(.init(fd: s))
            serverSide.buffers.append(zeroedBuffer(args.size))
        }
        for i in 0..<count {
            try serverLoop.register(serverSide.servers[i].fd, token: count + i, interest: [.readable, .writable])
        }
    } catch {
        die("ReadinessLoop: \(error)")
    }
    for c in clientSide.clients where c.chunks == 0 { progress.clientFinished() }
    let stop = startThread { [serverLoop, serverSide] in
        do { try serverLoop.run(serverSide) } catch { die("run: \(error)") }
    }
    let span = Span.begin()
    do {
        for (i, c) in clientSide.clients.enumerated() {
            try clientLoop.register(c.fd, token: i, interest: [.readable, .writable])  // writable at once
        }
    } catch {
        die("ReadinessLoop: \(error)")
    }
    Watchdog.shared.arm("tcp-stream", progress: { [progress] in progress.bytesBack.load(ordering: .relaxed) })
    while progress.clientsLeft.load(ordering: .acquiring) > 0 {
        do { try clientLoop.runOnce(clientSide, timeout: nil) } catch { die("runOnce: \(error)") }
    }
    let (wall, _) = span.end()
    Watchdog.shared.disarm()
    serverLoop.shutdown()
    Watchdog.shared.bounded("tcp-stream teardown") { stop() }
    clientLoop.shutdown()
    for fd in fds { close(fd) }
    payload.deallocate()
    var report = Report(args, wall: wall)
    report.add("mb_per_s", Double(args.n) * Double(args.size) / wall / 1e6, decimals: 2)
    return report
}

// MARK: - Watcher

/// The contexts of the watcher runs: which side of which connection.
private enum Role: Sendable {
    case clientWrite, clientRead, serverRead, serverWrite
}

private func adopt(_ fd: Int32) -> SocketStream {
    do { return try SocketStream(adopting: fd) } catch { die("SocketStream(adopting:): \(error)") }
}

private func watcherPingPong(_ args: BenchArgs) -> Report {
    let (c, s) = rawTCPPair()
    let client = adopt(c)
    let server = adopt(s)
    let rt = RoundTrips(size: args.size, rounds: args.n)
    let watcher: Watcher
    do { watcher = try Watcher() } catch { die("Watcher: \(error)") }
    let payload = UnsafeRawBufferPointer(rt.payload)
    do {
        try watcher.readFull(Role.serverRead, server, rt.serverBuffer, deadline: nil)
        Watchdog.shared.arm("tcp-pingpong", progress: { [rt] in rt.roundsDone.load(ordering: .relaxed) })
        let span = Span.begin()
        rt.roundStart = span.startNanos
        try watcher.write(Role.clientWrite, client, payload)
        try watcher.readFull(Role.clientRead, client, rt.inbox, deadline: nil)
        var running = true
        while running {
            for r in try watcher.waitIO() {
                if let e = r.error { die("tcp-pingpong: \(r.operation): \(e)") }
                switch r.context as! Role {
                case .serverRead: try watcher.write(Role.serverWrite, server, UnsafeRawBufferPointer(rt.serverBuffer))
                case .serverWrite: try watcher.readFull(Role.serverRead, server, rt.serverBuffer, deadline: nil)
                case .clientWrite: break
                case .clientRead:
                    if rt.echoed() {
                        try watcher.write(Role.clientWrite, client, payload)
                        try watcher.readFull(Role.clientRead, client, rt.inbox, deadline: nil)
                    } else {
                        running = false
                    }
                }
            }
        }
        let (wall, _) = span.end()
        Watchdog.shared.disarm()
        try watcher.close()
        client.close()
        server.close()
        return rt.report(args, wall: wall)
    } catch {
        die("Watcher: \(error)")
    }
}

private func watcherStream(_ args: BenchArgs) -> Report {
    let count = args.concurrency
    let size = args.size
    let progress = StreamProgress(count)
    let payload = makePayload(size)
    let chunk = UnsafeRawBufferPointer(payload)
    var clients: [SocketStream] = []
    var servers: [SocketStream] = []
    var inboxes: [UnsafeMutableRawBufferPointer] = []
    var buffers: [AioIOV] = []
    var chunksLeft: [Int] = []
    var received: [Int] = []
    for i in 0..<count {
        let (c, s) = rawTCPPair()
        clients.append(adopt(c))
        servers.append(adopt(s))
        inboxes.append(zeroedBuffer(size))
        buffers.append(AioIOV(zeroedBuffer(size)))
        chunksLeft.append(evenShare(args.n, parts: count, index: i))
        received.append(0)
    }
    // Two watchers, two loops (as with one watcher per core): the clients on
    // the main thread, the echo servers on a thread of their own.
    let clientWatcher: Watcher
    let serverWatcher: Watcher
    do {
        clientWatcher = try Watcher()
        serverWatcher = try Watcher()
        for i in 0..<count { try serverWatcher.read(i, servers[i], buffers[i].buffer) }
    } catch {
        die("Watcher: \(error)")
    }
    let serverLoop = startThread { [serverWatcher, servers, buffers] in
        do {
            while true {
                for r in try serverWatcher.waitIO() {
                    if let e = r.error { die("tcp-stream: server \(r.operation): \(e)") }
                    let i = r.context as! Int
                    if r.operation == .read {
                        try serverWatcher.write(i, servers[i], UnsafeRawBufferPointer(rebasing: buffers[i].buffer[0..<r.size]))
                    } else {
                        try serverWatcher.read(i, servers[i], buffers[i].buffer)
                    }
                }
            }
        } catch {
            // Closed: the run is over.
        }
    }
    do {
        Watchdog.shared.arm("tcp-stream", progress: { [progress] in progress.bytesBack.load(ordering: .relaxed) })
        let span = Span.begin()
        for i in 0..<count {
            if chunksLeft[i] == 0 {
                progress.clientFinished()
                continue
            }
            try clientWatcher.read(i, clients[i], inboxes[i])
            try clientWatcher.write(i, clients[i], chunk)
        }
        while progress.clientsLeft.load(ordering: .acquiring) > 0 {
            for r in try clientWatcher.waitIO() {
                if let e = r.error { die("tcp-stream: client \(r.operation): \(e)") }
                let i = r.context as! Int
                if r.operation == .write {
                    chunksLeft[i] -= 1
                    if chunksLeft[i] > 0 { try clientWatcher.write(i, clients[i], chunk) }
                    continue
                }
                received[i] += r.size
                progress.bytesBack.add(r.size, ordering: .relaxed)
                if received[i] < evenShare(args.n, parts: count, index: i) * size {
                    try clientWatcher.read(i, clients[i], inboxes[i])
                } else {
                    progress.clientFinished()
                }
            }
        }
        let (wall, _) = span.end()
        Watchdog.shared.disarm()
        try clientWatcher.close()
        try serverWatcher.close()
        Watchdog.shared.bounded("tcp-stream teardown") { serverLoop() }
        for s in clients + servers { s.close() }
        for b in inboxes { b.deallocate() }
        for b in buffers { b.buffer.deallocate() }
        payload.deallocate()
        var report = Report(args, wall: wall)
        report.add("mb_per_s", Double(args.n) * Double(size) / wall / 1e6, decimals: 2)
        return report
    } catch {
        die("Watcher: \(error)")
    }
}
