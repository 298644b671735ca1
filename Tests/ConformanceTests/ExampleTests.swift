import Glibc
import Synchronization
import Testing

// The example echo servers, run as the built programs: aio-echo (streams),
// aio-echo-reactor ([SVC-13]), aio-echo-readiness ([RDY-12]) and
// aio-echo-watcher ([WAT-12]).
//
// Each program is started from the build's bin directory (next to the test
// bundle: `swift build --build-tests` builds them; a missing program FAILS
// the test), with `--url tcp://127.0.0.1:0`: the kernel picks the port and the
// program prints it. Clients send random payloads of 1 B to 1 MiB, sending and
// receiving at once, and check every byte that comes back; then SIGTERM, and
// the exit status must be 0. Every wait is bounded.

/// Where the example programs are: the directory of the test bundle (and its parent).
private func programPath(_ name: String) -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    guard n > 0 else { return nil }
    var dir = String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    for _ in 0..<3 {
        guard let slash = dir.lastIndex(of: "/") else { return nil }
        dir = String(dir[..<slash])
        let candidate = dir + "/" + name
        if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
}

/// A running example program with its stdout on a pipe.
private final class Program {
    let pid: pid_t
    let stdoutFd: Int32
    private var output: [UInt8] = []
    private var reaped: Int32?

    init?(path: String, arguments: [String]) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return nil }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        posix_spawn_file_actions_adddup2(&actions, fds[1], 1)
        posix_spawn_file_actions_addclose(&actions, fds[0])
        posix_spawn_file_actions_addclose(&actions, fds[1])
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        // Default dispositions and an empty mask for the signals, whatever this process has.
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        sigaddset(&defaults, SIGPIPE)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setsigmask(&attr, &empty)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))
        let argv: [UnsafeMutablePointer<CChar>?] = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var child: pid_t = 0
        let envp: [UnsafeMutablePointer<CChar>?] = [nil]  // an empty environment
        let rc = posix_spawn(&child, path, &actions, &attr, argv, envp)
        posix_spawn_file_actions_destroy(&actions)
        posix_spawnattr_destroy(&attr)
        close(fds[1])
        guard rc == 0 else {
            close(fds[0])
            return nil
        }
        pid = child
        stdoutFd = fds[0]
        _ = fcntl(stdoutFd, F_SETFL, fcntl(stdoutFd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        if reaped == nil {
            kill(pid, SIGKILL)
            _ = waitExit(within: 10)
        }
        close(stdoutFd)
    }

    /// What the program printed so far.
    var text: String {
        var buf = [UInt8](repeating: 0, count: 4096)
        while case let n = read(stdoutFd, &buf, buf.count), n > 0 { output += buf[0..<n] }
        return String(decoding: output, as: UTF8.self)
    }

    /// The port in "(port N)" of the program's first line, waiting up to `seconds`.
    func port(within seconds: Double = 30) -> Int? {
        let end = now() + seconds
        while now() < end {
            let t = text
            if let r = t.range(of: "(port ") {
                let digits = t[r.upperBound...].prefix { $0.isNumber }
                if let p = Int(digits), t[r.upperBound...].dropFirst(digits.count).first == ")" { return p }
            }
            if waitExit(within: 0) != nil { return nil }  // died
            sleepMillis(10)
        }
        return nil
    }

    /// The raw wait status once the program has exited (bounded), else nil.
    func waitExit(within seconds: Double) -> Int32? {
        if let reaped { return reaped }
        let end = now() + seconds
        while true {
            var status: Int32 = 0
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid {
                reaped = status
                return status
            }
            if now() >= end { return nil }
            sleepMillis(5)
        }
    }
}

extension String {
    fileprivate func range(of needle: String) -> Range<Index>? {
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(needle) { return i..<index(i, offsetBy: needle.count) }
            i = index(after: i)
        }
        return nil
    }
}

/// One client: connects, sends `payload` while receiving, and returns what came back (bounded).
private func echo(port: Int, _ payload: [UInt8], within seconds: Double = 60) -> [UInt8]? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    let ok = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard ok else { return nil }
    FacadeNet.setNonBlocking(fd)
    var sent = 0
    var back: [UInt8] = []
    back.reserveCapacity(payload.count)
    var buf = [UInt8](repeating: 0, count: 65_536)
    let end = now() + seconds
    while back.count < payload.count {
        if now() > end { return nil }
        var p = pollfd(fd: fd, events: Int16(POLLIN) | (sent < payload.count ? Int16(POLLOUT) : 0), revents: 0)
        if poll(&p, 1, 100) < 0 && errno != EINTR { return nil }
        if sent < payload.count {
            let n = payload.withUnsafeBytes { send(fd, $0.baseAddress! + sent, payload.count - sent, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n } else if n < 0 && errno != EAGAIN && errno != EINTR { return nil }
        }
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { back += buf[0..<n] } else if n == 0 { return back } else if errno != EAGAIN && errno != EINTR { return nil }
    }
    return back
}

/// Random payload sizes: 1 B, 1 MiB, and random ones between.
private func payloadSizes(_ count: Int) -> [Int] {
    [1, 1 << 20] + (0..<count).map { _ in Int.random(in: 1...(1 << 20)) }
}

@Suite("Example echo servers", .serialized)
struct ExampleTests {
    @Test(
        "[SVC-13][RDY-12][WAT-12] each example echoes every byte and exits 0 on SIGTERM",
        arguments: ["aio-echo", "aio-echo-reactor", "aio-echo-readiness", "aio-echo-watcher"])
    func echoServer(_ name: String) throws {
        guard let path = programPath(name) else {
            Issue.record(
                "\(name) is not next to the test bundle: build the examples first (swift build --build-tests)")
            return
        }
        guard let program = Program(path: path, arguments: ["--url", "tcp://127.0.0.1:0"]) else {
            Issue.record("cannot start \(path)")
            return
        }
        guard let port = program.port() else {
            Issue.record("\(name) printed no port: \(program.text)")
            return
        }
        // Six clients at once, each with several payloads on connections of their own.
        let failures = Box<[String]>([])
        concurrently(6) { c in
            for size in payloadSizes(2) {
                let payload = FacadeNet.randomBytes(size)
                guard let back = echo(port: port, payload) else {
                    failures.mutate { $0.append("client \(c): no echo of \(size) bytes") }
                    continue
                }
                if back != payload {
                    let at = (0..<min(back.count, payload.count)).first { back[$0] != payload[$0] } ?? min(back.count, payload.count)
                    failures.mutate { $0.append("client \(c): \(size) bytes sent, \(back.count) back, first difference at \(at)") }
                }
            }
        }
        #expect(failures.value.isEmpty, "\(name): \(failures.value)")
        kill(program.pid, SIGTERM)
        guard let status = program.waitExit(within: 30) else {
            Issue.record("\(name) did not exit within 30 s of SIGTERM")
            return
        }
        let signaled = status & 0x7F
        let code = (status >> 8) & 0xFF
        #expect(signaled == 0 && code == 0, "\(name) ended with signal \(signaled), exit status \(code): \(program.text)")
    }
}
