import AioKit
import Glibc
import Synchronization
import Testing

// Specs/Reactor.md: the reactor facade `AioService` ([SVC-1]..[SVC-12]),
// through the public surface only.
//
// Sockets are Unix-domain socketpairs and loopback TCP connections made with
// plain system calls (the service watches sockets the user owns). Each test
// has a private runtime, shut down at its end; readers and writers only
// record what they see, and expectations run on the test's thread. Waits are
// bounded; "nothing happens" is checked over a short window, which can fail
// (it never passes by timing alone).

// MARK: - Socket helpers shared by the facade tests (FacadeNet)

/// Plain-syscall sockets for the facade tests (internal: ReadinessTests and
/// WatcherTests use them too).
enum FacadeNet {
    /// A non-blocking, close-on-exec Unix-domain stream socketpair.
    static func socketPair() -> (Int32, Int32) {
        var fds: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        precondition(socketpair(AF_UNIX, type, 0, &fds) == 0, "socketpair: errno \(errno)")
        return (fds[0], fds[1])
    }

    /// A connected loopback TCP pair (client, server), both non-blocking;
    /// the port comes from the kernel.
    static func tcpPair() -> (Int32, Int32) {
        let ls = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        precondition(ls >= 0)
        defer { close(ls) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                precondition(bind(ls, sa, len) == 0 && listen(ls, 16) == 0 && getsockname(ls, sa, &len) == 0)
            }
        }
        let c = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        precondition(c >= 0)
        withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                precondition(connect(c, sa, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0, "connect: errno \(errno)")
            }
        }
        let s = accept(ls, nil, nil)
        precondition(s >= 0)
        setNonBlocking(c)
        setNonBlocking(s)
        var one: Int32 = 1
        setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
        setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(4))
        return (c, s)
    }

    static func setNonBlocking(_ fd: Int32) {
        let fl = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, fl | O_NONBLOCK)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }

    /// Writes all of `bytes`, waiting (poll) while the socket is full; false on error.
    @discardableResult
    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                done += n
            } else if n < 0 && (errno == EAGAIN || errno == EINTR) {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&p, 1, 10_000) <= 0 { return false }
            } else {
                return false
            }
        }
        return true
    }

    /// Reads what is there now (non-blocking): the bytes, and whether the peer closed.
    static func readAvailable(_ fd: Int32, max: Int = 1 << 20) -> (bytes: [UInt8], eof: Bool) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65_536)
        while out.count < max {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, Swift.min($0.count, max - out.count), 0) }
            if n > 0 {
                out += buf[0..<n]
            } else if n == 0 {
                return (out, true)
            } else {
                break
            }
        }
        return (out, false)
    }

    /// Reads exactly `count` bytes, waiting up to `seconds` (poll); nil on EOF, error or time-out.
    static func readExactly(_ fd: Int32, _ count: Int, within seconds: Double = 20) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var buf = [UInt8](repeating: 0, count: 65_536)
        let end = now() + seconds
        while out.count < count {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, Swift.min($0.count, count - out.count), 0) }
            if n > 0 {
                out += buf[0..<n]
            } else if n == 0 {
                return nil
            } else if errno == EAGAIN || errno == EINTR {
                if now() > end { return nil }
                var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                _ = poll(&p, 1, 100)
            } else {
                return nil
            }
        }
        return out
    }

    /// Closes with a reset (SO_LINGER {1, 0}): the peer gets ECONNRESET.
    static func reset(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close(fd)
    }

    /// The name of the calling thread (/proc/thread-self/comm).
    static func threadName() -> String {
        guard let f = fopen("/proc/thread-self/comm", "r") else { return "?" }
        defer { fclose(f) }
        var buf = [UInt8](repeating: 0, count: 64)
        let got = fread(&buf, 1, 63, f)
        var s = String(decoding: buf.prefix(got), as: UTF8.self)
        if s.hasSuffix("\n") { s.removeLast() }
        return s
    }

    /// Runs `body` on a new thread; the returned closure joins it.
    static func spawn(_ body: @escaping @Sendable () -> Void) -> () -> Void {
        final class Start: @unchecked Sendable {  // immutable after init
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let arg = Unmanaged.passRetained(Start(body)).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { p in
            Unmanaged<Start>.fromOpaque(p!).takeRetainedValue().body()
            return nil
        }, arg)
        precondition(rc == 0, "pthread_create failed")
        return { pthread_join(tid, nil) }
    }

    /// Random bytes.
    static func randomBytes(_ count: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        var out = [UInt8](repeating: 0, count: count)
        var i = 0
        while i < count {
            var v = g.next()
            for _ in 0..<8 where i < count {
                out[i] = UInt8(truncatingIfNeeded: v)
                v >>= 8
                i += 1
            }
        }
        return out
    }
}

// MARK: - Test readers and writers (private)

/// A reader that runs a closure.
private final class FnReader: AioReader {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    func notifyForRead() { body() }
}

private final class FnWriter: AioWriter {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    func notifyForWrite() { body() }
}

/// A reader that drains its socket and records what it got.
private final class DrainReader: AioReader {
    let fd: Int32
    let received = Box<[UInt8]>([])
    let calls = Counter()
    let eof = Counter()
    init(_ fd: Int32) { self.fd = fd }
    func notifyForRead() {
        calls.increment()
        let (bytes, closed) = FacadeNet.readAvailable(fd)
        if !bytes.isEmpty { received.mutate { $0 += bytes } }
        if closed { eof.increment() }
    }
}

private func privateRuntime(_ name: String, tasks: Int = 2) throws -> AioRuntime {
    try AioRuntime(configuration: .init(taskThreads: tasks, name: name))
}

// MARK: - Tests

@Suite("Reactor service (AioService)", .serialized)
struct ReactorTests {
    @Test("[SVC-1] notifications run on the runtime's task threads")
    func notificationsOnTaskThreads() throws {
        let rt = try privateRuntime("svc1")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        let names = Box<[String]>([])
        let reader = FnReader {
            names.mutate { $0.append(FacadeNet.threadName()) }
            _ = FacadeNet.readAvailable(a)
        }
        let wid = Box(0)
        let writer = FnWriter {
            names.mutate { $0.append(FacadeNet.threadName()) }
            service.unregisterWriter(wid.value)
        }
        _ = try service.registerReader(a, reader)
        wid.value = try service.registerWriter(b, writer)
        try service.start()
        FacadeNet.writeAll(b, [1, 2, 3])
        #expect(eventually(within: 20) { names.value.count >= 2 })
        service.stopAndWait()
        #expect(!names.value.isEmpty)
        for n in names.value { #expect(n.hasPrefix("svc1-task"), "ran on \(n)") }
    }

    @Test("[SVC-2] registration: ids unique, invalid descriptors throw, reader and writer on one socket")
    func registration() throws {
        let rt = try privateRuntime("svc2")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let reader = FnReader {}
        #expect(throws: AioError.self) { _ = try service.registerReader(-1, reader) }
        let (a, b) = FacadeNet.socketPair()
        close(b)
        let closedFd = b
        #expect(throws: AioError.self) { _ = try service.registerReader(closedFd, reader) }
        // A regular file: epoll refuses it.
        let path = "/tmp/aiokit-svc2-\(getpid())"
        let file = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        #expect(file >= 0)
        unlink(path)
        #expect(throws: AioError.self) { _ = try service.registerReader(file, reader) }
        close(file)

        var ids = Set<Int>()
        for _ in 0..<50 {
            let id = try service.registerReader(a, reader)
            #expect(!ids.contains(id))
            ids.insert(id)
            service.unregisterReader(id)
        }
        service.unregisterReader(999_999)  // unknown: no effect
        service.unregisterWriter(999_999)
        close(a)

        // A reader and a writer on the same socket.
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        let reads = Counter()
        let writes = Counter()
        let r = try service.registerReader(c, FnReader { _ = FacadeNet.readAvailable(c); reads.increment() })
        let wid = Box(0)
        wid.value = try service.registerWriter(c, FnWriter { writes.increment(); service.unregisterWriter(wid.value) })
        #expect(!ids.contains(r) && !ids.contains(wid.value) && r != wid.value)
        try service.start()
        #expect(eventually(within: 20) { writes.count >= 1 })
        FacadeNet.writeAll(d, [7])
        #expect(eventually(within: 20) { reads.count >= 1 })
        service.stopAndWait()
        #expect(writes.count == 1, "the writer unregistered itself in its first notification")
    }

    @Test("[SVC-3] the service holds the reader while registered and drops it on unregister")
    func strongReference() throws {
        let rt = try privateRuntime("svc3")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        weak var weakReader: FnReader?
        weak var weakWriter: FnWriter?
        var rid = 0
        var wid = 0
        do {
            let r = FnReader { _ = FacadeNet.readAvailable(a) }
            let w = FnWriter {}
            weakReader = r
            weakWriter = w
            rid = try service.registerReader(a, r)
            wid = try service.registerWriter(b, w)
        }
        #expect(weakReader != nil, "dropped while registered")
        #expect(weakWriter != nil, "dropped while registered")
        try service.start()
        FacadeNet.writeAll(b, [1])
        service.unregisterReader(rid)
        service.unregisterWriter(wid)
        #expect(weakReader == nil, "still held after unregisterReader returned")
        #expect(weakWriter == nil, "still held after unregisterWriter returned")
        service.stop()
    }

    @Test("[SVC-4] level-triggered: notified again while the socket stays readable")
    func levelTriggered() throws {
        let rt = try privateRuntime("svc4")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        // A reader that takes one byte per notification: 200 bytes, 200 notifications.
        let got = Box<[UInt8]>([])
        let reader = FnReader {
            var byte: UInt8 = 0
            if recv(a, &byte, 1, 0) == 1 { got.mutate { $0.append(byte) } }
        }
        _ = try service.registerReader(a, reader)
        try service.start()
        let payload = (0..<200).map { UInt8($0) }
        FacadeNet.writeAll(b, payload)
        #expect(eventually(within: 30) { got.value.count == 200 })
        #expect(got.value == payload)

        // Peer closed: EOF counts as readable, so the reader sees it.
        let eof = Counter()
        let (c, d) = FacadeNet.socketPair()
        defer { close(c) }
        let id = try service.registerReader(c, FnReader {
            if FacadeNet.readAvailable(c).eof { eof.increment() }
        })
        close(d)
        #expect(eventually(within: 20) { eof.count >= 1 })
        service.unregisterReader(id)
        service.stopAndWait()
    }

    @Test("[SVC-5] never two notifications at once for one registration")
    func neverTwoAtOnce() throws {
        let rt = try privateRuntime("svc5", tasks: 4)
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        let inside = Counter()
        let maxInside = Counter()
        let total = Box(0)
        let reader = FnReader {
            let n = inside.increment()
            if n > 1 { maxInside.increment() }
            sleepMillis(1)
            var byte: UInt8 = 0
            if recv(a, &byte, 1, 0) == 1 { total.mutate { $0 += 1 } }
            inside.decrement()
        }
        _ = try service.registerReader(a, reader)
        try service.start()
        concurrently(4) { _ in
            for _ in 0..<50 {
                FacadeNet.writeAll(b, [1])
                sleepMillis(0)
            }
        }
        #expect(eventually(within: 30) { total.value == 200 })
        service.stopAndWait()
        #expect(maxInside.count == 0, "two notifications of one registration overlapped")
    }

    @Test("[SVC-6] unregister racing with notifications: none after it returns, none lost before")
    func unregisterRace() throws {
        let rt = try privateRuntime("svc6", tasks: 3)
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        try service.start()
        for round in 0..<40 {
            let (a, b) = FacadeNet.socketPair()
            let unregistered = Atomic<Bool>(false)
            let late = Counter()
            let received = Counter()
            let reader = FnReader {
                if unregistered.load(ordering: .sequentiallyConsistent) { late.increment() }
                received.increment()
                _ = FacadeNet.readAvailable(a)
                sleepMillis(0)
            }
            let id = try service.registerReader(a, reader)
            // Keep the socket readable while unregistering from another thread.
            let feeding = Atomic<Bool>(true)
            let feeder = FacadeNet.spawn {
                var sent = 0
                while feeding.load(ordering: .relaxed) && sent < 20_000 {
                    FacadeNet.writeAll(b, [UInt8(truncatingIfNeeded: round)])
                    sent += 1
                    sleepMillis(0)
                }
            }
            #expect(eventually(within: 20) { received.count >= 1 }, "a registered reader was not notified (round \(round))")
            if round % 2 == 1 { sleepMillis(1) }
            service.unregisterReader(id)
            unregistered.store(true, ordering: .sequentiallyConsistent)
            FacadeNet.writeAll(b, [0xFF])
            sleepMillis(5)
            feeding.store(false, ordering: .relaxed)
            feeder()
            #expect(late.count == 0, "a notification ran after unregisterReader returned (round \(round))")
            close(a)
            close(b)
        }

        // From inside its own notification: returns at once, and none follows.
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        let calls = Counter()
        let returned = Counter()
        let id = Box(0)
        id.value = try service.registerReader(a, FnReader {
            calls.increment()
            service.unregisterReader(id.value)  // no read: the socket stays readable
            returned.increment()
        })
        FacadeNet.writeAll(b, [1, 2, 3])
        #expect(eventually(within: 20) { returned.count == 1 })
        FacadeNet.writeAll(b, [4])
        sleepMillis(100)
        #expect(calls.count == 1, "notified after unregistering itself")

        // None lost while registered: every byte sent while registered is read.
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        let drain = DrainReader(c)
        let rid = try service.registerReader(c, drain)
        var sent: [UInt8] = []
        for i in 0..<300 {
            let chunk = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 1 + i % 7)
            FacadeNet.writeAll(d, chunk)
            sent += chunk
            if i % 50 == 0 { sleepMillis(1) }
        }
        #expect(eventually(within: 30) { drain.received.value.count == sent.count })
        service.unregisterReader(rid)
        #expect(drain.received.value == sent)
        service.stopAndWait()
    }

    @Test("[SVC-7] start notifies registrations made before it; nothing before start; start twice throws .busy")
    func startBehaviour() throws {
        let rt = try privateRuntime("svc7")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        FacadeNet.writeAll(b, [9, 9])  // readable before registration and before start
        let drain = DrainReader(a)
        _ = try service.registerReader(a, drain)
        let writes = Counter()
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        let wid = Box(0)
        wid.value = try service.registerWriter(c, FnWriter { writes.increment(); service.unregisterWriter(wid.value) })
        sleepMillis(100)
        #expect(drain.calls.count == 0, "notified before start()")
        #expect(writes.count == 0, "notified before start()")
        try service.start()
        #expect(eventually(within: 20) { drain.received.value == [9, 9] })
        #expect(eventually(within: 20) { writes.count == 1 })
        #expect(throws: AioError.busy) { try service.start() }
        service.stopAndWait()
    }

    @Test("[SVC-8] nothing new is notified once stop() returns; stop twice is harmless")
    func stopBehaviour() throws {
        let rt = try privateRuntime("svc8", tasks: 3)
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        FacadeNet.writeAll(b, [1])
        // Never reads: level-triggered, notified over and over while started.
        let stopped = Atomic<Bool>(false)
        let begunAfterStop = Counter()
        let calls = Counter()
        let reader = FnReader {
            if stopped.load(ordering: .sequentiallyConsistent) { begunAfterStop.increment() }
            calls.increment()
        }
        _ = try service.registerReader(a, reader)
        for _ in 0..<10 {
            try service.start()
            let before = calls.count
            #expect(eventually(within: 20) { calls.count > before + 3 })
            service.stop()
            // A notification that had already begun may still be running; wait for it.
            service.stopAndWait()
            stopped.store(true, ordering: .sequentiallyConsistent)
            let frozen = calls.count
            sleepMillis(30)
            #expect(calls.count == frozen, "notified after stop()")
            #expect(begunAfterStop.count == 0)
            service.stop()  // already stopped: no effect
            stopped.store(false, ordering: .sequentiallyConsistent)
        }
    }

    @Test("[SVC-9] stopAndWait waits for a running notification and does not deadlock inside one")
    func stopAndWaitBehaviour() throws {
        let rt = try privateRuntime("svc9", tasks: 3)
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        let entered = Counter()
        let finished = Counter()
        _ = try service.registerReader(a, FnReader {
            entered.increment()
            _ = FacadeNet.readAvailable(a)
            sleepMillis(200)
            finished.increment()
        })
        try service.start()
        FacadeNet.writeAll(b, [1])
        #expect(eventually(within: 20) { entered.count == 1 })
        service.stopAndWait()
        #expect(finished.count == 1, "stopAndWait returned while a notification ran")

        // From inside notifications (two at once on different sockets): no deadlock.
        let service2 = AioService(runtime: rt)
        let (c, d) = FacadeNet.socketPair()
        let (e, f) = FacadeNet.socketPair()
        defer { close(c); close(d); close(e); close(f) }
        let returned = Counter()
        for fd in [c, e] {
            _ = try service2.registerReader(fd, FnReader {
                _ = FacadeNet.readAvailable(fd)
                sleepMillis(20)
                service2.stopAndWait()
                returned.increment()
            })
        }
        try service2.start()
        FacadeNet.writeAll(d, [1])
        FacadeNet.writeAll(f, [1])
        #expect(eventually(within: 20) { returned.count >= 1 }, "stopAndWait inside a notification deadlocked")
        expectFinishes(within: 20) { service2.stopAndWait() }
    }

    @Test("[SVC-10] start after stop starts again with the registrations kept")
    func restart() throws {
        let rt = try privateRuntime("svc10")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        let drain = DrainReader(a)
        _ = try service.registerReader(a, drain)
        var expected: [UInt8] = []
        for round in 0..<5 {
            try service.start()
            FacadeNet.writeAll(b, [UInt8(round)])
            expected.append(UInt8(round))
            #expect(eventually(within: 20) { drain.received.value == expected })
            service.stopAndWait()
            // Data that arrives while stopped is seen after the next start.
            FacadeNet.writeAll(b, [100 + UInt8(round)])
            expected.append(100 + UInt8(round))
            sleepMillis(20)
            #expect(drain.received.value.count == expected.count - 1, "notified while stopped")
            try service.start()
            #expect(eventually(within: 20) { drain.received.value == expected })
            service.stopAndWait()
        }
    }

    @Test("[SVC-11] 1,000 idle registrations cost no thread; the busy ones among them are served")
    func idleRegistrations() throws {
        let rt = try privateRuntime("svc11")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        // Start the poller first (one registration), then count threads.
        let (p, q) = FacadeNet.socketPair()
        defer { close(p); close(q) }
        let warm = try service.registerReader(p, FnReader {})
        try service.start()
        let threadsBefore = threadCount(named: "svc11")
        var pairs: [(Int32, Int32)] = []
        let idleCalls = Counter()
        var ids: [Int] = []
        for _ in 0..<1000 {
            let pair = FacadeNet.socketPair()
            pairs.append(pair)
            ids.append(try service.registerReader(pair.0, FnReader { idleCalls.increment() }))
        }
        #expect(threadCount(named: "svc11") == threadsBefore, "registrations started threads")
        // Five busy connections among them: echo servers driven by notifications.
        var busy: [(Int32, Int32, DrainReader)] = []
        for _ in 0..<5 {
            let (x, y) = FacadeNet.tcpPair()
            let r = DrainReader(x)
            ids.append(try service.registerReader(x, r))
            busy.append((x, y, r))
        }
        for round in 0..<20 {
            for (_, y, _) in busy { FacadeNet.writeAll(y, [UInt8(round), 1, 2, 3]) }
        }
        #expect(eventually(within: 30) { busy.allSatisfy { $0.2.received.value.count == 80 } })
        sleepMillis(50)
        #expect(idleCalls.count == 0, "idle registrations were notified")
        #expect(threadCount(named: "svc11") == threadsBefore, "threads grew with registrations")
        service.stopAndWait()
        for id in ids { service.unregisterReader(id) }
        service.unregisterReader(warm)
        for (a, b) in pairs {
            close(a)
            close(b)
        }
        for (x, y, _) in busy {
            close(x)
            close(y)
        }
    }

    @Test("[SVC-12] a descriptor closed and reused while registered does not reach the old registration")
    func reusedDescriptor() throws {
        let rt = try privateRuntime("svc12")
        defer { rt.shutdown() }
        let service = AioService(runtime: rt)
        try service.start()
        let (a, b) = FacadeNet.socketPair()
        let oldCalls = Counter()
        let oldID = try service.registerReader(a, FnReader { oldCalls.increment() })
        close(a)  // without unregistering
        close(b)
        let (c, d) = FacadeNet.socketPair()  // likely reuses the numbers
        defer { close(c); close(d) }
        let drain = DrainReader(c)
        let newID = try service.registerReader(c, drain)
        #expect(newID != oldID)
        FacadeNet.writeAll(d, [5, 6])
        #expect(eventually(within: 20) { drain.received.value == [5, 6] })
        service.unregisterReader(oldID)  // the stale one: must not disturb the new one
        FacadeNet.writeAll(d, [7])
        #expect(eventually(within: 20) { drain.received.value == [5, 6, 7] })
        service.stopAndWait()
        service.unregisterReader(newID)
    }
}
