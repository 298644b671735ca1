// aio-echo-readiness: an echo server on ReadinessLoop, the mio-style facade.
//
//   swift run -c release aio-echo-readiness --url tcp://127.0.0.1:5555
//
// One loop on the main thread: token 0 is the listener, other tokens are
// connections. Events are edge-triggered: after each, read (or write) until
// EAGAIN. SIGINT/SIGTERM: a signal thread calls `shutdown()`; exit status 0.

import AioKit
import Glibc

func say(_ text: String, to fd: Int32 = STDOUT_FILENO) { var t = text + "\n"; t.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) } }
func fail(_ text: String, _ status: Int32) -> Never { say("aio-echo-readiness: \(text)", to: STDERR_FILENO); exit(status) }

var url = "tcp://127.0.0.1:5555"
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard a == "--url", let v = args.popFirst() else { fail("usage: aio-echo-readiness [--url tcp://HOST:PORT]", 2) }
    url = v
}
/// SIGINT and SIGTERM: blocked in every thread, taken by sigwait.
func stopSignals() -> sigset_t { var s = sigset_t(); sigemptyset(&s); sigaddset(&s, SIGINT); sigaddset(&s, SIGTERM); return s }
/// Starts a thread that waits for SIGINT or SIGTERM, then calls `stop`.
func onStopSignal(_ stop: @escaping @Sendable () -> Void) -> pthread_t {
    final class Call { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    var thread = pthread_t()
    pthread_create(&thread, nil, { arg in
        var signals = stopSignals(), caught: Int32 = 0
        sigwait(&signals, &caught)
        Unmanaged<Call>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, Unmanaged.passRetained(Call(stop)).toOpaque())
    return thread
}

// Block the stop signals before any thread starts: only the signal thread takes them.
var blocked = stopSignals()
pthread_sigmask(SIG_BLOCK, &blocked, nil)

/// A non-blocking listening socket for tcp://HOST:PORT (port 0: the kernel picks), and its port.
func listenSocket(_ url: String) -> (Int32, Int) {
    guard url.hasPrefix("tcp://"), let colon = url.lastIndex(of: ":") else { fail("bad URL \(url)", 2) }
    var hints = addrinfo(ai_flags: 0, ai_family: 0, ai_socktype: Int32(SOCK_STREAM.rawValue), ai_protocol: 0,
                         ai_addrlen: 0, ai_addr: nil, ai_canonname: nil, ai_next: nil)
    var res: UnsafeMutablePointer<addrinfo>?
    let host = String(url[url.index(url.startIndex, offsetBy: 6)..<colon]), port = String(url[url.index(after: colon)...])
    guard getaddrinfo(host, port, &hints, &res) == 0, let ai = res?.pointee else { fail("cannot resolve \(url)", 2) }
    defer { freeaddrinfo(res) }
    let fd = socket(ai.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
    guard bind(fd, ai.ai_addr, ai.ai_addrlen) == 0, listen(fd, 512) == 0 else { fail("cannot listen on \(url)", 1) }
    var sa = sockaddr_in6()  // large enough for either family; the port sits at the same offset
    var len = socklen_t(MemoryLayout<sockaddr_in6>.size)
    withUnsafeMutablePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &len) } }
    return (fd, Int(UInt16(bigEndian: sa.sin6_port)))
}

/// The server: the loop calls it on the main thread.
final class EchoServer: ReadinessHandler {
    struct Connection { let fd: Int32; var pending: [UInt8] = []; var wantsWrite = false }
    let listener: Int32
    var connections: [Int: Connection] = [:]
    var nextToken = 1
    var buffer = [UInt8](repeating: 0, count: 65_536)
    init(listener: Int32) { self.listener = listener }
    func readable(_ loop: ReadinessLoop, token: Int, hint: ReadHint) {
        if token == 0 { return acceptAll(loop) }
        guard var c = connections[token] else { return }
        // Whatever the hint says, read until EAGAIN (a hang-up may follow data).
        while case let n = buffer.withUnsafeMutableBytes({ recv(c.fd, $0.baseAddress, $0.count, 0) }), n != 0 {
            if n > 0 { c.pending += buffer[0..<n] } else if errno == EAGAIN { return flush(loop, token, c) } else if errno != EINTR { break }
        }
        drop(loop, token)  // the peer closed, or an error
    }

    func writable(_ loop: ReadinessLoop, token: Int) { if let c = connections[token] { flush(loop, token, c) } }

    func flush(_ loop: ReadinessLoop, _ token: Int, _ conn: Connection) {
        var c = conn
        while !c.pending.isEmpty {
            let n = c.pending.withUnsafeBytes { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { c.pending.removeFirst(n); continue }
            if errno == EAGAIN || errno == EINTR { break }
            return drop(loop, token)
        }
        let want = !c.pending.isEmpty  // writable events only while something waits
        if want != c.wantsWrite { try? loop.reregister(c.fd, token: token, interest: want ? [.readable, .writable] : .readable) }
        c.wantsWrite = want
        connections[token] = c
    }

    func acceptAll(_ loop: ReadinessLoop) {
        while case let fd = accept(listener, nil, nil), fd >= 0 {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            let token = nextToken; nextToken += 1
            connections[token] = Connection(fd: fd)
            if (try? loop.register(fd, token: token, interest: .readable)) == nil { drop(loop, token) }
        }
    }

    func drop(_ loop: ReadinessLoop, _ token: Int) {
        guard let c = connections.removeValue(forKey: token) else { return }
        try? loop.deregister(c.fd)
        close(c.fd)
    }
}

let (listener, port) = listenSocket(url), loop: ReadinessLoop
do { loop = try ReadinessLoop(); try loop.register(listener, token: 0, interest: .readable) } catch { fail("\(error)", 1) }
let signalThread = onStopSignal { [loop] in loop.shutdown() }  // wakes run() at once
say("aio-echo-readiness: listening on \(url) (port \(port)); SIGINT or SIGTERM to stop")
let server = EchoServer(listener: listener)
do { try loop.run(server) } catch { fail("\(error)", 1) }
pthread_join(signalThread, nil)
for (token, _) in server.connections { server.drop(loop, token) }  // the loop is over: just close them
close(listener)
AioRuntime.shared.shutdown()
exit(0)
