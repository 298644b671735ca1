// aio-echo: an echo server on AioKit streams.
//
//   swift run -c release aio-echo --url tcp://127.0.0.1:5555
//
// One accept chain; per connection one receive → send-all → receive chain,
// each step started from the previous one's callback. SIGINT or SIGTERM stops
// it cleanly: the listener closes, the runtime's shutdown ends every pending
// operation with .stopped (each callback runs once and closes its stream),
// and the process exits 0.

import AioKit
import Glibc
import Synchronization

func usage(_ why: String) -> Never {
    warn("aio-echo: \(why)\nusage: aio-echo [--url URL]   (default tcp://127.0.0.1:5555)")
    exit(2)
}

var url = "tcp://127.0.0.1:5555"
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    switch a {
    case "--url":
        guard let v = args.popFirst() else { usage("--url needs a value") }
        url = v
    case "-h", "--help": usage("an echo server")
    default: usage("unknown argument '\(a)'")
    }
}

// Block the stop signals before any thread starts, so that every thread
// inherits the mask and only sigwait below sees them.
var stopSignals = sigset_t()
sigemptyset(&stopSignals)
sigaddset(&stopSignals, SIGINT)
sigaddset(&stopSignals, SIGTERM)
pthread_sigmask(SIG_BLOCK, &stopSignals, nil)

let connections = Atomic<Int>(0)
let bytesEchoed = Atomic<Int>(0)

/// One connection: a buffer and two handles whose callbacks chain
/// receive → send-all → receive. The handles' callbacks hold the connection;
/// `finish` drops the handles, which breaks that cycle.
final class Connection: Sendable {
    let stream: any AioStream
    let buffer: Buffer
    let handles = HandlePair()

    init(_ stream: any AioStream) {
        self.stream = stream
        buffer = Buffer(bytes: 64 * 1024)
    }

    func start() {
        let r = AioHandle { [self] h in received(h) }
        let s = AioHandle { [self] h in sent(h) }
        try! r.setIOV([AioIOV(buffer.memory)])
        handles.store(r, s)
        stream.receive(r)
    }

    func received(_ h: AioHandle) {
        guard h.error == nil, let s = handles.sending else { return finish() }
        try! s.setIOV([AioIOV(UnsafeMutableRawBufferPointer(rebasing: buffer.memory[..<h.count]))])
        if let socket = stream as? SocketStream { socket.sendAll(s) } else { stream.send(s) }
    }

    func sent(_ h: AioHandle) {
        guard h.error == nil, let r = handles.receiving else { return finish() }
        bytesEchoed.add(h.count, ordering: .relaxed)
        stream.receive(r)
    }

    func finish() {
        stream.close()
        if handles.clear() { connections.subtract(1, ordering: .relaxed) }
    }
}

/// Memory owned by one connection, freed with it.
final class Buffer: @unchecked Sendable {  // touched by one chain step at a time (each step starts the next)
    let memory: UnsafeMutableRawBufferPointer
    init(bytes: Int) { memory = .allocate(byteCount: bytes, alignment: 16) }
    deinit { memory.deallocate() }
}

/// The two chained handles of a connection, set once and cleared at the end.
final class HandlePair: @unchecked Sendable {  // `r` and `s` guarded by `lock`
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var r: AioHandle?
    private var s: AioHandle?
    init() { pthread_mutex_init(lock, nil) }
    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }
    private func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        return body()
    }
    func store(_ r: AioHandle, _ s: AioHandle) { locked { self.r = r; self.s = s } }
    var receiving: AioHandle? { locked { r } }
    var sending: AioHandle? { locked { s } }
    /// True for the call that cleared them.
    func clear() -> Bool { locked { defer { r = nil; s = nil }; return r != nil } }
}

/// Writes a line to a descriptor (stderr for warnings, stdout for news).
func say(_ text: String, to fd: Int32 = STDOUT_FILENO) {
    let line = Array((text + "\n").utf8)
    line.withUnsafeBytes { p in
        var done = 0
        while done < p.count {
            let n = write(fd, p.baseAddress! + done, p.count - done)
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
            done += n
        }
    }
}

func warn(_ text: String) { say(text, to: STDERR_FILENO) }

let listener: StreamListener
do {
    listener = try StreamListener(url: url)
    try listener.listen()
} catch {
    warn("aio-echo: cannot listen on \(url): \(error)")
    exit(1)
}

let acceptor = AioHandle { h in
    if let error = h.error {
        if error == .closed || error == .stopped { return }
        warn("aio-echo: accept: \(error)")
    } else if let stream = h.output(0) as? any AioStream {
        connections.add(1, ordering: .relaxed)
        Connection(stream).start()
    }
    listener.accept(h)  // the next connection
}
listener.accept(acceptor)
let shown = listener.boundPort > 0 ? "\(url) (port \(listener.boundPort))" : url
say("aio-echo: listening on \(shown); SIGINT or SIGTERM to stop")

var caught: Int32 = 0
sigwait(&stopSignals, &caught)
say("aio-echo: signal \(caught): stopping")
listener.close()
AioRuntime.shared.shutdown()  // every pending operation ends with .stopped; callbacks close their streams
say("aio-echo: stopped; \(bytesEchoed.load(ordering: .relaxed)) bytes echoed, \(connections.load(ordering: .relaxed)) connections left open")
exit(0)
