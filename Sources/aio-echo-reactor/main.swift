// aio-echo-reactor: an echo server on AioService, the reactor facade.
//
//   swift run -c release aio-echo-reactor --url tcp://127.0.0.1:5555
//
// The sockets are ours; the service tells us, on its worker threads, when they
// are readable or writable. A connection has a reader registered while it has
// nothing to send, a writer while it has. SIGINT/SIGTERM: a clean exit (0).

import AioKit
import Glibc

func say(_ text: String, to fd: Int32 = STDOUT_FILENO) { var t = text + "\n"; t.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) } }
func fail(_ text: String, _ status: Int32) -> Never { say("aio-echo-reactor: \(text)", to: STDERR_FILENO); exit(status) }

var url = "tcp://127.0.0.1:5555"
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard a == "--url", let v = args.popFirst() else { fail("usage: aio-echo-reactor [--url tcp://HOST:PORT]", 2) }
    url = v
}
// Block the stop signals before any thread starts: sigwait below takes them.
var stopSignals = sigset_t()
sigemptyset(&stopSignals)
for s in [SIGINT, SIGTERM] { sigaddset(&stopSignals, s) }
pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

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

let service = AioService()

/// One client; `pending` holds what the peer has not taken yet.
final class Connection: AioReader, AioWriter, @unchecked Sendable {  // vars guarded by `mutex`
    let fd: Int32
    let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    var pending: [UInt8] = []
    var id = 0
    init(_ fd: Int32) { self.fd = fd; pthread_mutex_init(mutex, nil) }
    deinit { mutex.deallocate() }

    func locked(_ body: () -> Void) {  // the registration we swap to may start before we return
        pthread_mutex_lock(mutex)
        body()
        pthread_mutex_unlock(mutex)
    }

    func start() { locked { if let r = try? service.registerReader(fd, self) { id = r } else { close(fd) } } }

    func notifyForRead() { locked {
        var buf = [UInt8](repeating: 0, count: 65_536)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) { return finish { service.unregisterReader(id) } }
        if n < 0 { return }  // nothing after all (level-triggered: we will be told again)
        pending = Array(buf[0..<n])
        guard !flush() else { return }
        service.unregisterReader(id)  // the peer is slow: stop reading until it took the rest
        do { id = try service.registerWriter(fd, self) } catch { finish {} }
    } }

    func notifyForWrite() { locked {
        guard flush() else { return }
        service.unregisterWriter(id)
        do { id = try service.registerReader(fd, self) } catch { finish {} }
    } }

    /// Sends what is pending; true once all of it is gone.
    func flush() -> Bool {
        while !pending.isEmpty {
            let n = pending.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { pending.removeFirst(n); continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return false }
            pending = []  // the peer is gone: the reader sees it next
        }
        return true
    }

    func finish(_ unregister: () -> Void) { unregister(); close(fd) }  // unregister before closing
}/// The listening socket: accepts every connection waiting.
final class Acceptor: AioReader {
    let fd: Int32
    init(_ fd: Int32) { self.fd = fd }
    func notifyForRead() {
        while case let c = accept(fd, nil, nil), c >= 0 {
            _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK)
            Connection(c).start()
        }
    }
}

let (listener, port) = listenSocket(url)
do { _ = try service.registerReader(listener, Acceptor(listener)); try service.start() } catch { fail("\(error)", 1) }
say("aio-echo-reactor: listening on \(url) (port \(port)); SIGINT or SIGTERM to stop")

var caught: Int32 = 0
sigwait(&stopSignals, &caught)
service.stopAndWait()  // no notification runs once this returns
close(listener)
AioRuntime.shared.shutdown()
say("aio-echo-reactor: signal \(caught): stopped")
exit(0)
