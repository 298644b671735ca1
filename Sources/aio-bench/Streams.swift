// The TCP workloads: tcp-pingpong, tcp-stream and tcp-connect (WORKLOADS.md),
// on AioKit's StreamListener, StreamDialer and SocketStream.
//
// Each run listens on 127.0.0.1 (ephemeral port) in this process and dials
// it; connections for the data workloads are made before the timed span.
// The data moves in chains driven from the completion callbacks, while the
// main thread waits on a `Latch` bounded by the `Watchdog`.
//
// Hot paths allocate nothing and take no lock of their own: buffers, handles
// and iov lists are made once; a handle's iov is set only when it changes
// (tcp-stream's server, whose echo length varies, rewrites its one-element
// list in place). Where a side must move a whole message, `sendAll` and
// `receiveExactly` loop over partial transfers inside the stream, where the
// NNG peer loops in its callbacks.

import AioKit
import Glibc
import Synchronization

// MARK: - Shared pieces

/// The empty iov list (static storage: assigning it allocates nothing).
private let noIOV: [AioIOV] = []

/// Sets the iov of an idle handle; the lists here have one buffer, so a
/// failure is a bug.
@inline(__always)
private func setIOV(_ aio: AioHandle, _ iov: [AioIOV]) {
    do {
        try aio.setIOV(iov)
    } catch {
        die("setIOV: \(error)")
    }
}

/// A zeroed buffer of `size` bytes (freed by the owner).
func zeroedBuffer(_ size: Int) -> UnsafeMutableRawBufferPointer {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 64)
    buffer.initializeMemory(as: UInt8.self, repeating: 0)
    return UnsafeMutableRawBufferPointer(rebasing: buffer[0..<size])
}

/// The payload of the TCP workloads: byte i is (i * 31 + 7) mod 256.
func makePayload(_ size: Int) -> UnsafeMutableRawBufferPointer {
    let buffer = zeroedBuffer(size)
    for i in 0..<size { buffer[i] = UInt8(truncatingIfNeeded: i &* 31 &+ 7) }
    return buffer
}

/// Set once the timed work is over: from then on, an error in a callback comes
/// from the teardown (stopped handles, closed streams) and only ends its chain.
private final class StopFlag: Sendable {
    let value = Atomic<Bool>(false)

    /// True when the operation of `aio` succeeded. An error ends the run
    /// (exit 1), unless the timed work is over: then the chain just ends.
    @inline(__always)
    func ok(_ aio: AioHandle, _ what: StaticString) -> Bool {
        guard let error = aio.error else { return true }
        if value.load(ordering: .relaxed) { return false }
        die("\(what): \(error)")
    }
}

/// A listener on 127.0.0.1 (ephemeral port) and a dialer to it, with two
/// handles without callbacks (waited on) to dial and accept. AioKit turns
/// TCP_NODELAY on for every TCP stream (the NNG peer sets it on both).
final class TCPPair {
    let listener: StreamListener
    let dialer: StreamDialer
    let dialAio = AioHandle(runtime: .shared, callback: nil)
    let acceptAio = AioHandle(runtime: .shared, callback: nil)

    init() {
        do {
            listener = try StreamListener(url: "tcp://127.0.0.1:0")
            try listener.listen()
            dialer = try StreamDialer(url: "tcp://127.0.0.1:\(listener.boundPort)")
        } catch {
            die("TCP listener on 127.0.0.1: \(error)")
        }
    }

    /// One connection: accept and dial started together, both waited for.
    func connect() -> (client: SocketStream, server: SocketStream) {
        listener.accept(acceptAio)
        dialer.dial(dialAio)
        dialAio.wait()
        if let error = dialAio.error { die("dial: \(error)") }
        guard let client = dialAio.output(0) as? SocketStream else { die("dial: no stream in output 0") }
        acceptAio.wait()
        if let error = acceptAio.error { die("accept: \(error)") }
        guard let server = acceptAio.output(0) as? SocketStream else { die("accept: no stream in output 0") }
        return (client, server)
    }

    /// A connection for a data workload (set-up, outside the timed span).
    func connectForSetup() -> (client: SocketStream, server: SocketStream) {
        let pair = Watchdog.shared.bounded("connect (set-up)") { connect() }
        if !pair.client.noDelay || !pair.server.noDelay { die("TCP_NODELAY is off on a stream") }
        return pair
    }

    func close() {
        Watchdog.shared.bounded("close listener") {
            dialAio.stop()
            acceptAio.stop()
            dialer.close()
            listener.close()
        }
    }
}

// MARK: - tcp-pingpong

/// One connection: the client sends SIZE bytes, the server receives all of
/// them and sends them back, the client receives all SIZE bytes, checks them,
/// records the round trip and sends the next.
private final class PingPong: @unchecked Sendable {  // client vars: client callbacks, one at a time (each starts the next); read by main after `done`
    let client: SocketStream
    let server: SocketStream
    let size: Int
    let rounds: Int
    let payload: UnsafeMutableRawBufferPointer
    let inbox: UnsafeMutableRawBufferPointer
    let serverBuffer: UnsafeMutableRawBufferPointer
    let rtt: UnsafeMutablePointer<Int64>
    let stop = StopFlag()
    let roundsDone = Atomic<Int>(0)
    let done = Latch()

    var round = 0
    var roundStart: UInt64 = 0

    // Set once before the first operation; owned by the run (no cycle through the callbacks).
    unowned(unsafe) var clientSend: AioHandle!
    unowned(unsafe) var clientReceive: AioHandle!
    unowned(unsafe) var serverSend: AioHandle!
    unowned(unsafe) var serverReceive: AioHandle!

    init(client: SocketStream, server: SocketStream, size: Int, rounds: Int) {
        self.client = client
        self.server = server
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

    @inline(__always)
    func startRound(at now: UInt64) {
        roundStart = now
        client.sendAll(clientSend)
    }

    func clientSent(_ aio: AioHandle) {
        guard stop.ok(aio, "tcp-pingpong: client send") else { return }
        client.receiveExactly(clientReceive)
    }

    func clientReceived(_ aio: AioHandle) {
        guard stop.ok(aio, "tcp-pingpong: client receive") else { return }
        if aio.count != size { die("tcp-pingpong: short receive") }
        if memcmp(inbox.baseAddress!, payload.baseAddress!, size) != 0 {  // size >= 1
            die("tcp-pingpong: echo differs from what was sent")
        }
        let now = nowNanos()
        rtt[round] = Int64(bitPattern: now &- roundStart)
        round += 1
        roundsDone.store(round, ordering: .relaxed)
        if round == rounds {
            done.open()
            return
        }
        startRound(at: now)
    }

    func serverReceived(_ aio: AioHandle) {
        guard stop.ok(aio, "tcp-pingpong: server receive") else { return }
        server.sendAll(serverSend)
    }

    func serverSent(_ aio: AioHandle) {
        guard stop.ok(aio, "tcp-pingpong: server send") else { return }
        server.receiveExactly(serverReceive)
    }
}

/// tcp-pingpong: round trips of SIZE bytes on one connection.
func runTCPPingPong(_ args: BenchArgs) -> Report {
    let tcp = TCPPair()
    let (client, server) = tcp.connectForSetup()
    let pp = PingPong(client: client, server: server, size: args.size, rounds: args.n)
    let clientSend = AioHandle(runtime: .shared) { [pp] h in pp.clientSent(h) }
    let clientReceive = AioHandle(runtime: .shared) { [pp] h in pp.clientReceived(h) }
    let serverSend = AioHandle(runtime: .shared) { [pp] h in pp.serverSent(h) }
    let serverReceive = AioHandle(runtime: .shared) { [pp] h in pp.serverReceived(h) }
    pp.clientSend = clientSend
    pp.clientReceive = clientReceive
    pp.serverSend = serverSend
    pp.serverReceive = serverReceive
    // Every transfer is a whole message in the same buffer: each iov is set once.
    setIOV(clientSend, [AioIOV(UnsafeRawBufferPointer(pp.payload))])
    setIOV(clientReceive, [AioIOV(pp.inbox)])
    setIOV(serverReceive, [AioIOV(pp.serverBuffer)])
    setIOV(serverSend, [AioIOV(UnsafeRawBufferPointer(pp.serverBuffer))])
    server.receiveExactly(serverReceive)  // the server is ready

    let span = Span.begin()
    pp.startRound(at: span.startNanos)
    pp.done.waitBounded("tcp-pingpong", progress: { [pp] in pp.roundsDone.load(ordering: .relaxed) })
    let (wall, _) = span.end()

    pp.stop.value.store(true, ordering: .relaxed)
    Watchdog.shared.bounded("tcp-pingpong teardown") {
        for aio in [clientSend, clientReceive, serverSend, serverReceive] { aio.stop() }  // cancels the server's receive
        client.close()
        server.close()
    }
    tcp.close()

    var report = Report(args, wall: wall)
    report.addRoundTrips(Array(UnsafeBufferPointer(start: pp.rtt, count: args.n)))
    withExtendedLifetime((clientSend, clientReceive, serverSend, serverReceive)) {}
    return report
}

// MARK: - tcp-stream

/// What every connection of a tcp-stream run shares.
private final class StreamRun: Sendable {
    let stop = StopFlag()
    /// Bytes the clients have received: the progress.
    let bytesBack = Atomic<Int>(0)
    let clientsLeft: Atomic<Int>
    let done = Latch()

    init(connections: Int) {
        clientsLeft = Atomic(connections)
    }

    func clientFinished() {
        if clientsLeft.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done.open() }
    }
}

/// Client side of one connection: sends its chunks one send at a time while
/// it receives; finished once it has received every byte it sent.
private final class StreamClient: @unchecked Sendable {  // `chunksSent`: send callbacks only; `received`: receive callbacks only (each chain one at a time)
    let run: StreamRun
    let stream: SocketStream
    let chunks: Int
    let expected: Int
    let inbox: UnsafeMutableRawBufferPointer
    var chunksSent = 0
    var received = 0

    unowned(unsafe) var sendAio: AioHandle!
    unowned(unsafe) var receiveAio: AioHandle!

    init(run: StreamRun, stream: SocketStream, chunks: Int, size: Int) {
        self.run = run
        self.stream = stream
        self.chunks = chunks
        expected = chunks * size
        inbox = zeroedBuffer(size)
    }

    deinit { inbox.deallocate() }

    func start() {
        if chunks == 0 {
            run.clientFinished()
            return
        }
        stream.receive(receiveAio)
        stream.sendAll(sendAio)
    }

    func sent(_ aio: AioHandle) {
        guard run.stop.ok(aio, "tcp-stream: client send") else { return }
        chunksSent += 1
        if chunksSent < chunks { stream.sendAll(aio) }
    }

    func receivedSome(_ aio: AioHandle) {
        guard run.stop.ok(aio, "tcp-stream: client receive") else { return }
        let got = aio.count
        received += got
        run.bytesBack.add(got, ordering: .relaxed)
        if received < expected {
            stream.receive(aio)
            return
        }
        if received > expected { die("tcp-stream: received more bytes than were sent") }
        run.clientFinished()
    }
}

/// Server side: receives up to SIZE bytes, sends back exactly those, then
/// receives again.
private final class StreamServer: @unchecked Sendable {  // `echoIOV`: the server's chain only (one callback at a time)
    let run: StreamRun
    let stream: SocketStream
    let buffer: UnsafeMutableRawBufferPointer
    /// The whole buffer, for receives and for echoes of a full buffer.
    let fullIOV: [AioIOV]
    /// Echoes of fewer bytes: one element, rewritten in place while the send
    /// handle holds no reference to it (so nothing is copied or allocated).
    var echoIOV: [AioIOV]

    unowned(unsafe) var sendAio: AioHandle!
    unowned(unsafe) var receiveAio: AioHandle!

    init(run: StreamRun, stream: SocketStream, size: Int) {
        self.run = run
        self.stream = stream
        buffer = zeroedBuffer(size)
        fullIOV = [AioIOV(buffer)]
        echoIOV = [AioIOV(buffer)]
    }

    deinit { buffer.deallocate() }

    func receivedSome(_ aio: AioHandle) {
        guard run.stop.ok(aio, "tcp-stream: server receive") else { return }
        let have = aio.count
        if have == buffer.count {
            setIOV(sendAio, fullIOV)
        } else {
            setIOV(sendAio, noIOV)  // drops the handle's reference to `echoIOV`
            echoIOV[0] = AioIOV(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<have]))
            setIOV(sendAio, echoIOV)
        }
        stream.sendAll(sendAio)
    }

    func sent(_ aio: AioHandle) {
        guard run.stop.ok(aio, "tcp-stream: server send") else { return }
        stream.receive(receiveAio)
    }
}

/// tcp-stream: C connections streaming N * SIZE bytes to echo servers.
func runTCPStream(_ args: BenchArgs) -> Report {
    let connections = args.concurrency
    let size = args.size
    let run = StreamRun(connections: connections)
    let chunk = makePayload(size)
    let chunkIOV = [AioIOV(UnsafeRawBufferPointer(chunk))]
    let tcp = TCPPair()

    var clients: [StreamClient] = []
    var servers: [StreamServer] = []
    var handles: [AioHandle] = []  // keeps every handle (the states point to them unowned)
    for i in 0..<connections {
        let (clientStream, serverStream) = tcp.connectForSetup()
        // N chunks split evenly over the connections.
        let c = StreamClient(
            run: run, stream: clientStream, chunks: evenShare(args.n, parts: connections, index: i), size: size)
        let s = StreamServer(run: run, stream: serverStream, size: size)
        let clientSend = AioHandle(runtime: .shared) { [c] h in c.sent(h) }
        let clientReceive = AioHandle(runtime: .shared) { [c] h in c.receivedSome(h) }
        let serverSend = AioHandle(runtime: .shared) { [s] h in s.sent(h) }
        let serverReceive = AioHandle(runtime: .shared) { [s] h in s.receivedSome(h) }
        c.sendAio = clientSend
        c.receiveAio = clientReceive
        s.sendAio = serverSend
        s.receiveAio = serverReceive
        setIOV(clientSend, chunkIOV)
        setIOV(clientReceive, [AioIOV(c.inbox)])
        setIOV(serverReceive, s.fullIOV)
        handles += [clientSend, clientReceive, serverSend, serverReceive]
        clients.append(c)
        servers.append(s)
        serverStream.receive(serverReceive)  // the server is ready
    }

    let span = Span.begin()
    for c in clients { c.start() }
    run.done.waitBounded("tcp-stream", progress: { [run] in run.bytesBack.load(ordering: .relaxed) })
    let (wall, _) = span.end()

    run.stop.value.store(true, ordering: .relaxed)
    Watchdog.shared.bounded("tcp-stream teardown") {
        for aio in handles { aio.stop() }
        for i in 0..<connections {
            clients[i].stream.close()
            servers[i].stream.close()
        }
    }
    tcp.close()
    chunk.deallocate()

    var report = Report(args, wall: wall)
    report.add("mb_per_s", Double(args.n) * Double(size) / wall / 1e6, decimals: 2)
    return report
}

// MARK: - tcp-connect

/// tcp-connect: N sequential dial + accept + close.
func runTCPConnect(_ args: BenchArgs) -> Report {
    let tcp = TCPPair()
    final class Progress: Sendable { let done = Atomic<Int>(0) }
    let progress = Progress()

    Watchdog.shared.arm("tcp-connect", progress: { [progress] in progress.done.load(ordering: .relaxed) })
    let span = Span.begin()
    for i in 0..<args.n {
        let (client, server) = tcp.connect()
        client.close()
        server.close()
        progress.done.store(i + 1, ordering: .relaxed)
    }
    let (wall, _) = span.end()
    Watchdog.shared.disarm()

    tcp.close()
    return Report(args, wall: wall)
}
