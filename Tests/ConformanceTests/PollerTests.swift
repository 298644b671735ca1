@testable import AioKit
import Glibc
import Synchronization
import Testing

// Specs/Poller.md: the runtime's epoll poller ([POLL-1]..[POLL-7]), through
// the module's internal surface (`runtime.poller`, `PollRegistration`,
// `PollHandler`, `PollEvents`).
//
// Each test has a private runtime (some with several poller threads) and
// Unix-domain socketpairs or pipes; descriptors are closed only after their
// registration is gone. A registration holds its handler weakly: each test
// keeps its handlers alive until it deregisters them. Handlers only record what
// they see; expectations run on the test's thread.

// MARK: - Helpers (private to this file)

/// True when the process runs under ThreadSanitizer: the repeated races are
/// shortened there.
private let underThreadSanitizer: Bool = {
    guard let me = dlopen(nil, RTLD_NOW) else { return false }
    defer { dlclose(me) }
    return dlsym(me, "__tsan_init") != nil
}()

/// A flag for handlers.
private final class Flag: Sendable {
    let value = Atomic<Bool>(false)
}

private let pathCounter = Counter()

/// A handler that runs a closure.
private final class TestHandler: PollHandler, Sendable {
    let body: @Sendable (PollEvents, PollRegistration) -> Void
    init(_ body: @escaping @Sendable (PollEvents, PollRegistration) -> Void) { self.body = body }
    func pollEvents(_ events: PollEvents, _ registration: PollRegistration) { body(events, registration) }
}

/// The events a handler saw, and the names of the threads it ran on.
private final class EventLog: Sendable {
    let events = Box<[PollEvents]>([])
    let threadNames = Box<[String]>([])
    let calls = Counter()

    func record(_ e: PollEvents) {
        let name = currentThreadName()
        events.mutate { $0.append(e) }
        threadNames.mutate { $0.append(name) }
        calls.increment()
    }

    /// Waits (bounded) for an event that contains `wanted`.
    func waitFor(_ wanted: PollEvents, within seconds: Double = 10) -> Bool {
        eventually(within: seconds) { events.value.contains { $0.isSuperset(of: wanted) } }
    }
}

private func currentThreadName() -> String {
    guard let f = fopen("/proc/thread-self/comm", "r") else { return "?" }
    defer { fclose(f) }
    var buf = [UInt8](repeating: 0, count: 64)
    let got = fread(&buf, 1, 63, f)
    return String(decoding: buf.prefix(got), as: UTF8.self).trimmingNewline()
}

extension String {
    fileprivate func trimmingNewline() -> String { hasSuffix("\n") ? String(dropLast()) : self }
}

/// A non-blocking, close-on-exec Unix-domain stream socketpair.
private func makeSocketpair() -> (Int32, Int32)? {
    var fds: [Int32] = [-1, -1]
    let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { return nil }
    return (fds[0], fds[1])
}

/// Reads everything `fd` has now (non-blocking).
private func drain(_ fd: Int32) {
    withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 8) { buf in
        while read(fd, buf.baseAddress, buf.count) > 0 {}
    }
}

@discardableResult
private func writeByte(_ fd: Int32) -> Bool {
    var b: UInt8 = 0x2A
    return write(fd, &b, 1) == 1
}

/// Threads of this process whose name starts with `prefix` (a private copy of
/// RuntimeTests' helper).
private func pollerThreadCount(named prefix: String) -> Int {
    guard let dir = opendir("/proc/self/task") else { return -1 }
    defer { closedir(dir) }
    var n = 0
    while let e = readdir(dir) {
        let tid = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if tid == "." || tid == ".." { continue }
        guard let f = fopen("/proc/self/task/\(tid)/comm", "r") else { continue }
        var buf = [UInt8](repeating: 0, count: 64)
        let got = fread(&buf, 1, 63, f)
        fclose(f)
        if String(decoding: buf.prefix(got), as: UTF8.self).hasPrefix(prefix) { n += 1 }
    }
    return n
}

/// The descriptors open in this process and what they are (readlink of /proc/self/fd/N).
private func openDescriptors() -> [Int32: String] {
    guard let dir = opendir("/proc/self/fd") else { return [:] }
    defer { closedir(dir) }
    var out: [Int32: String] = [:]
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard let fd = Int32(name) else { continue }
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd)", &buf, buf.count - 1)
        if n > 0 { out[fd] = String(decoding: buf.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self) }
    }
    return out
}

private func isNonBlocking(_ fd: Int32) -> Bool {
    let fl = fcntl(fd, F_GETFL)
    return fl >= 0 && fl & O_NONBLOCK != 0
}

private func isCloseOnExec(_ fd: Int32) -> Bool {
    let fl = fcntl(fd, F_GETFD)
    return fl >= 0 && fl & FD_CLOEXEC != 0
}

/// A private runtime for a poller test: shut down (bounded) by `finish()`.
///
/// With several poller threads, AioKit's shutdown can hang: `Poller.stop()`
/// signals its eventfd once per thread before joining them, and the first
/// thread to wake drains the whole counter, so a thread being joined may never
/// wake (shown by `shutdownJoinsManyPollerThreads`, [POLL-7]). So that the
/// other tests stay about their own clauses, such a fixture keeps a "waker"
/// registration and writes to it while the shutdown runs: each write wakes one
/// poller thread, which then sees the stop request.
private final class PollFixture {
    let rt: AioRuntime
    var poller: Poller { rt.poller }
    private var finished = false
    private var waker: (reg: PollRegistration, handler: TestHandler, fd: Int32, peer: Int32)?

    init(name: String = "aiopoll", pollerThreads: Int = 1) throws {
        rt = try AioRuntime(configuration: .init(taskThreads: 2, pollerThreads: pollerThreads, name: name))
        if pollerThreads > 1, let pair = makeSocketpair() {
            let (a, b) = pair
            let handler = TestHandler { _, _ in drain(a) }
            let reg = try rt.poller.register(a, interest: [.readable], handler: handler)
            waker = (reg, handler, a, b)
        }
    }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        if finished { return }
        finished = true
        let rt = self.rt
        if let waker {
            let done = Counter()
            let ok = Box<Bool>(false)
            concurrently(2) { i in
                if i == 0 {
                    ok.value = finishes(within: 30) { rt.shutdown() }
                    done.increment()
                } else {
                    while done.count == 0 {
                        writeByte(waker.peer)
                        sleepMillis(5)
                    }
                }
            }
            #expect(ok.value, "the runtime's shutdown did not finish within 30 s", sourceLocation: sourceLocation)
            rt.poller.deregister(waker.reg)
            withExtendedLifetime(waker.handler) {}
            close(waker.fd)
            close(waker.peer)
        } else {
            expectFinishes({ rt.shutdown() }, sourceLocation: sourceLocation)
        }
    }
}

/// Where `deregister` is called from in the [POLL-4] races.
enum DeregisterFrom: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case anotherThread, itsOwnHandler, anotherHandler, taskPoolCallback
    var testDescription: String { rawValue }
}

// MARK: - The suite

@Suite("Poller (Specs/Poller.md)")
struct PollerTests {

    // MARK: [POLL-1] Registration

    @Test("[POLL-1] registering an invalid descriptor throws (.invalidArgument or .system) and its handler never runs")
    func invalidDescriptor() throws {
        let fx = try PollFixture()
        defer { fx.finish() }
        let log = EventLog()
        let handler = TestHandler { e, _ in log.record(e) }
        // -1, a number far past any open descriptor, and a regular file (epoll refuses it).
        let path = "/tmp/aiokit-pt-\(getpid())-\(pathCounter.increment())-regular"
        let file = open(path, O_CREAT | O_RDWR | O_TRUNC | O_CLOEXEC, 0o600)
        try #require(file >= 0)
        defer {
            close(file)
            unlink(path)
        }
        for fd in [Int32(-1), 1_000_000, file] {
            do {
                _ = try fx.poller.register(fd, interest: [.readable, .writable], handler: handler)
                Issue.record("registering descriptor \(fd) did not throw")
            } catch {
                let ok: Bool
                switch error {
                case .invalidArgument, .system: ok = true
                default: ok = false
                }
                #expect(ok, "descriptor \(fd): \(error)")
            }
        }
        sleepMillis(50)
        #expect(log.calls.count == 0)
        withExtendedLifetime(handler) {}
    }

    @Test("[POLL-1] a second registration of a registered descriptor throws; only the first handler ever runs")
    func secondRegistration() throws {
        let fx = try PollFixture()
        defer { fx.finish() }
        let (a, b) = try #require(makeSocketpair())
        defer {
            close(a)
            close(b)
        }
        let first = EventLog()
        let second = EventLog()
        let h1 = TestHandler { e, _ in first.record(e) }
        let h2 = TestHandler { e, _ in second.record(e) }
        let reg = try fx.poller.register(a, interest: [.readable], handler: h1)
        #expect(throws: AioError.self) { _ = try fx.poller.register(a, interest: [.readable], handler: h2) }
        writeByte(b)
        #expect(first.waitFor(.readable))
        sleepMillis(20)
        #expect(second.calls.count == 0)
        fx.poller.deregister(reg)
        withExtendedLifetime((h1, h2)) {}
    }

    // MARK: [POLL-2] Interest and arming, [POLL-3] Delivery and hints

    @Test("[POLL-2] [POLL-3] socketpair: writable at registration, readable when the peer writes, on a poller thread")
    func edgesAndHints() throws {
        let fx = try PollFixture(name: "plhint")
        defer { fx.finish() }
        let (a, b) = try #require(makeSocketpair())
        defer {
            close(a)
            close(b)
        }
        let log = EventLog()
        let handler = TestHandler { e, _ in log.record(e) }
        let reg = try fx.poller.register(a, interest: [.readable, .writable], handler: handler)
        #expect(log.waitFor(.writable), "a writable socket reports it once at registration")
        let first = try #require(log.events.value.first)
        #expect(first.contains(.writable))
        #expect(!first.contains(.readable), "nothing to read yet")
        #expect(!first.contains(.hangUp))
        #expect(write(b, "hello", 5) == 5)
        #expect(log.waitFor(.readable), "readable when the peer writes")
        #expect(!log.events.value.contains { $0.contains(.hangUp) || $0.contains(.error) })
        #expect(log.threadNames.value.allSatisfy { $0.hasPrefix("plhint-poll") }, "\(log.threadNames.value)")
        fx.poller.deregister(reg)
        withExtendedLifetime(handler) {}
    }

    @Test("[POLL-3] hang-up when the peer shuts down its write side, and when it closes")
    func hangUp() throws {
        let fx = try PollFixture()
        defer { fx.finish() }
        for closeIt in [false, true] {
            let (a, b) = try #require(makeSocketpair())
            let log = EventLog()
            let handler = TestHandler { e, _ in log.record(e) }
            let reg = try fx.poller.register(a, interest: [.readable], handler: handler)
            sleepMillis(10)
            #expect(!log.events.value.contains { $0.contains(.hangUp) })
            if closeIt { close(b) } else { shutdown(b, Int32(SHUT_WR)) }
            #expect(log.waitFor(.hangUp), closeIt ? "peer closed" : "peer shut down its write side")
            fx.poller.deregister(reg)
            withExtendedLifetime(handler) {}
            close(a)
            if !closeIt { close(b) }
        }
    }

    @Test("[POLL-3] error: a pipe's write end reports .error once its read end is closed")
    func errorHint() throws {
        let fx = try PollFixture()
        defer { fx.finish() }
        var p: [Int32] = [-1, -1]
        try #require(pipe(&p) == 0)
        for fd in p {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        let log = EventLog()
        let handler = TestHandler { e, _ in log.record(e) }
        let reg = try fx.poller.register(p[1], interest: [.writable], handler: handler)
        #expect(log.waitFor(.writable))
        #expect(!log.events.value.contains { $0.contains(.error) })
        close(p[0])
        #expect(log.waitFor(.error))
        fx.poller.deregister(reg)
        withExtendedLifetime(handler) {}
        close(p[1])
    }

    @Test("[POLL-2] a descriptor already readable before registration gets its first event")
    func readableBeforeRegistration() throws {
        let fx = try PollFixture()
        defer { fx.finish() }
        let (a, b) = try #require(makeSocketpair())
        defer {
            close(a)
            close(b)
        }
        #expect(write(b, "early", 5) == 5)
        let log = EventLog()
        let handler = TestHandler { e, _ in log.record(e) }
        let reg = try fx.poller.register(a, interest: [.readable], handler: handler)
        #expect(log.waitFor(.readable))
        #expect(log.events.value.first?.contains(.readable) == true)
        fx.poller.deregister(reg)
        withExtendedLifetime(handler) {}
    }

    @Test("[POLL-2] interest: a readable-only registration never reports writable; re-arming with writable reports it at once")
    func interestAndRearm() throws {
        let fx = try PollFixture()
        defer { fx.finish() }
        let (a, b) = try #require(makeSocketpair())
        defer {
            close(a)
            close(b)
        }
        let log = EventLog()
        let handler = TestHandler { e, _ in log.record(e) }
        let reg = try fx.poller.register(a, interest: [.readable], handler: handler)
        sleepMillis(50)
        #expect(log.calls.count == 0, "writable, but not of interest: no event")
        writeByte(b)
        #expect(log.waitFor(.readable))
        #expect(!log.events.value.contains { $0.contains(.writable) })
        try fx.poller.rearm(reg, interest: [.readable, .writable])
        #expect(log.waitFor(.writable), "re-arming reports readiness that is already there")
        fx.poller.deregister(reg)
        #expect(throws: AioError.self) { try fx.poller.rearm(reg, interest: [.readable]) }
        withExtendedLifetime(handler) {}
    }

    @Test("[POLL-3] a registration's handler never runs twice at once, with two poller threads and a flood of edges")
    func neverTwiceAtOnce() throws {
        let fx = try PollFixture(name: "plonce", pollerThreads: 2)
        defer { fx.finish() }
        let (a, b) = try #require(makeSocketpair())
        defer {
            close(a)
            close(b)
        }
        let inside = Flag()  // set while a call runs
        let overlaps = Counter()
        let calls = Counter()
        let handler = TestHandler { _, _ in
            if inside.value.exchange(true, ordering: .sequentiallyConsistent) { overlaps.increment() }
            calls.increment()
            drain(a)
            usleep(100)  // widen the window
            drain(a)
            inside.value.store(false, ordering: .sequentiallyConsistent)
        }
        let reg = try fx.poller.register(a, interest: [.readable], handler: handler)
        let duration = underThreadSanitizer ? 0.3 : 0.5
        concurrently(2) { _ in
            let end = now() + duration
            var byte: UInt8 = 1
            while now() < end {
                if write(b, &byte, 1) != 1 { sched_yield() }
            }
        }
        fx.poller.deregister(reg)
        #expect(calls.count > 10, "the flood produced \(calls.count) calls")
        #expect(overlaps.count == 0, "\(overlaps.count) calls overlapped another")
        withExtendedLifetime(handler) {}
    }

    // MARK: [POLL-4] Synchronous deregistration

    @Test(
        "[POLL-4] [POLL-5] once deregister returns, no handler call starts, while events flood (repeated)",
        arguments: DeregisterFrom.allCases)
    func deregisterWhileFlooding(_ from: DeregisterFrom) throws {
        let fx = try PollFixture(name: "plderg", pollerThreads: 2)
        defer { fx.finish() }
        let poller = fx.poller
        let rt = fx.rt
        let rounds: Int
        switch from {
        case .anotherThread: rounds = underThreadSanitizer ? 100 : 300
        default: rounds = underThreadSanitizer ? 50 : 150
        }
        var violations = 0
        var notReturned = 0
        var stalls = 0
        for _ in 0..<rounds {
            let (a, b) = try #require(makeSocketpair())
            let deregistered = Counter()  // > 0 once deregister has returned
            let bad = Counter()
            let calls = Counter()
            let handler = TestHandler { _, reg in
                if deregistered.count > 0 { bad.increment() }
                let n = calls.increment()
                drain(a)
                if from == .itsOwnHandler && n == 3 {
                    poller.deregister(reg)  // from inside: returns at once
                    deregistered.increment()
                }
            }
            let reg = try poller.register(a, interest: [.readable], handler: handler)
            // For .anotherHandler: a second registration whose handler deregisters the first.
            let (c, d) = try #require(makeSocketpair())
            let trigger = TestHandler { _, _ in
                drain(c)
                if from == .anotherHandler && deregistered.count == 0 {
                    poller.deregister(reg)
                    deregistered.increment()
                }
            }
            let triggerReg = try poller.register(c, interest: [.readable], handler: trigger)
            let callback = AioHandle(runtime: rt) { _ in
                poller.deregister(reg)
                deregistered.increment()
            }
            let stop = Counter()
            concurrently(2) { i in
                if i == 0 {
                    // The flood: keep the registration's descriptor readable.
                    var byte: UInt8 = 7
                    let end = now() + 10
                    while stop.count == 0 && now() < end {
                        if write(b, &byte, 1) != 1 { sched_yield() }
                    }
                } else {
                    _ = eventually(within: 10) { calls.count >= 3 }
                    switch from {
                    case .anotherThread:
                        poller.deregister(reg)
                        deregistered.increment()
                    case .itsOwnHandler:
                        break
                    case .anotherHandler:
                        writeByte(d)
                    case .taskPoolCallback:
                        callback.sleep(.zero)
                    }
                    _ = eventually(within: 10) { deregistered.count > 0 }
                    // Let the flood go on a little after deregistration.
                    let until = now() + 0.002
                    while now() < until { sched_yield() }
                    stop.increment()
                }
            }
            if deregistered.count == 0 { notReturned += 1 }
            if calls.count < 3 { stalls += 1 }
            violations += bad.count
            callback.wait()
            poller.deregister(reg)  // again: does nothing
            poller.deregister(triggerReg)
            withExtendedLifetime((handler, trigger)) {}
            close(a)
            close(b)
            close(c)
            close(d)
        }
        #expect(stalls == 0, "\(stalls) rounds saw fewer than 3 handler calls")
        #expect(notReturned == 0, "\(notReturned) rounds: deregister did not return")
        #expect(violations == 0, "\(violations) handler calls started after deregister returned")
    }

    @Test("[POLL-4] a handler freed by the poller's own reference after a delivery deregisters in its deinit without deadlock")
    func lastReferenceDroppedDuringDelivery() throws {
        // What a SocketStream released by its owner while an event for it is
        // being delivered does: the poller's strong reference (the handler is
        // held weakly) is the last one, and the stream's deinit deregisters
        // on the poller thread. That deinit once ran with the registration's
        // lock still held and deadlocked the poller on it (a later shutdown
        // then waited for the poller thread forever).
        let fx = try PollFixture(name: "pl4last")
        defer { fx.finish() }
        final class SelfDeregistering: PollHandler, @unchecked Sendable {  // `registration` set once before any event; the rest atomic
            let poller: Poller
            var registration: PollRegistration?
            let inside = Counter()
            let released = Counter()
            let deinited: Counter
            init(poller: Poller, deinited: Counter) {
                self.poller = poller
                self.deinited = deinited
            }
            func pollEvents(_ events: PollEvents, _ registration: PollRegistration) {
                inside.increment()
                // Hold the delivery until the owner has let go.
                _ = eventually(within: 10) { released.count > 0 }
            }
            deinit {
                if let registration { poller.deregister(registration) }
                deinited.increment()
            }
        }
        for _ in 0..<20 {
            let (a, b) = try #require(makeSocketpair())
            let deinited = Counter()
            var handler: SelfDeregistering? = SelfDeregistering(poller: fx.poller, deinited: deinited)
            let inside = handler!.inside, released = handler!.released
            handler!.registration = try fx.poller.register(a, interest: [.readable], handler: handler!)
            writeByte(b)
            #expect(eventually(within: 10) { inside.count > 0 })
            handler = nil  // the poller's reference is now the last
            released.increment()
            let freed = eventually(within: 10) { deinited.count == 1 }
            #expect(freed, "the handler was not freed (the poller deadlocked?)")
            if !freed { break }
            // The poller still serves others.
            let (c, d) = try #require(makeSocketpair())
            let log = EventLog()
            let other = TestHandler { e, _ in log.record(e) }
            let reg = try fx.poller.register(c, interest: [.readable], handler: other)
            writeByte(d)
            #expect(log.waitFor(.readable))
            fx.poller.deregister(reg)
            withExtendedLifetime(other) {}
            close(a)
            close(b)
            close(c)
            close(d)
        }
    }

    @Test("[POLL-4] a reused descriptor number never reaches the old handler")
    func reusedDescriptorNumber() throws {
        let fx = try PollFixture(pollerThreads: 2)
        defer { fx.finish() }
        var reused = 0
        for _ in 0..<50 {
            let (a, b) = try #require(makeSocketpair())
            let old = EventLog()
            let oldHandler = TestHandler { e, _ in old.record(e) }
            let reg = try fx.poller.register(a, interest: [.readable], handler: oldHandler)
            writeByte(b)
            #expect(old.waitFor(.readable))
            fx.poller.deregister(reg)
            let callsAtDeregister = old.calls.count
            close(a)
            close(b)
            let (a2, b2) = try #require(makeSocketpair())
            if a2 == a || b2 == a { reused += 1 }
            let fresh = EventLog()
            let freshHandler = TestHandler { e, _ in fresh.record(e) }
            let reg2 = try fx.poller.register(a2, interest: [.readable], handler: freshHandler)
            let reg3 = try fx.poller.register(b2, interest: [.readable], handler: freshHandler)
            writeByte(b2)
            writeByte(a2)
            #expect(eventually(within: 10) { fresh.calls.count >= 2 })
            #expect(old.calls.count == callsAtDeregister, "the old handler ran after deregister")
            fx.poller.deregister(reg2)
            fx.poller.deregister(reg3)
            withExtendedLifetime((oldHandler, freshHandler)) {}
            close(a2)
            close(b2)
        }
        #expect(reused > 0, "the descriptor numbers were reused at least once")
    }

    // MARK: [POLL-5] Memory safety

    @Test("[POLL-5] a deregistered registration is freed only after the poller thread passed two quiescent points")
    func registrationReclaimedLate() throws {
        let fx = try PollFixture(pollerThreads: 1)
        defer { fx.finish() }
        let (a, b) = try #require(makeSocketpair())
        let (c, d) = try #require(makeSocketpair())
        defer {
            close(a)
            close(b)
            close(c)
            close(d)
        }
        let log = EventLog()
        let pokes = EventLog()
        let handler = TestHandler { e, _ in log.record(e) }
        let poker = TestHandler { e, _ in
            drain(c)
            pokes.record(e)
        }
        var reg: PollRegistration? = try fx.poller.register(a, interest: [.readable, .writable], handler: handler)
        let pokeReg = try fx.poller.register(c, interest: [.readable], handler: poker)
        #expect(log.waitFor(.writable))
        sleepMillis(50)  // the poller thread is back in epoll_wait
        weak let watched = reg
        fx.poller.deregister(reg!)
        reg = nil
        #expect(watched != nil, "no quiescent point passed since: the registration must still exist")
        var sent = 0
        let freed = eventually(within: 10) {
            writeByte(d)
            sent += 1
            sleepMillis(5)
            return watched == nil
        }
        #expect(freed, "freed once the poller thread went round (after \(sent) pokes)")
        #expect(pokes.calls.count >= 2, "it took at least two rounds of the poller thread")
        fx.poller.deregister(pokeReg)
        withExtendedLifetime((handler, poker)) {}
    }

    // MARK: [POLL-6] Non-blocking, close-on-exec

    @Test("[POLL-6] listener, accepted and dialed sockets are non-blocking and close-on-exec")
    func socketsNonBlockingCloseOnExec() throws {
        let fx = try PollFixture()
        defer { fx.finish() }
        let rt = fx.rt
        for kind in ["tcp", "ipc"] {
            let path = "/tmp/aiokit-pt-\(getpid())-\(pathCounter.increment())-\(kind).sock"
            let url = kind == "tcp" ? "tcp://127.0.0.1:0" : "ipc://" + path
            let l = try StreamListener(url: url, runtime: rt)
            try l.listen()
            let dialURL = kind == "tcp" ? "tcp://127.0.0.1:\(l.boundPort)" : url
            let dialer = try StreamDialer(url: dialURL, runtime: rt)
            let a = AioHandle(runtime: rt)
            let d = AioHandle(runtime: rt)
            l.accept(a)
            dialer.dial(d)
            #expect(eventually { !a.isBusy && !d.isBusy })
            let server = try #require(a.output(0) as? SocketStream)
            let client = try #require(d.output(0) as? SocketStream)
            for (what, fd) in [("accepted", server.descriptor), ("dialed", client.descriptor)] {
                #expect(isNonBlocking(fd), "\(kind) \(what) socket is non-blocking")
                #expect(isCloseOnExec(fd), "\(kind) \(what) socket is close-on-exec")
            }
            // The listening socket: the descriptor that listens on the bound address.
            let want = l.localAddress
            var found = 0
            for (fd, target) in openDescriptors() where target.hasPrefix("socket:") {
                var v: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) == 0, v != 0 else { continue }
                var ss = sockaddr_storage()
                var sl = socklen_t(MemoryLayout<sockaddr_storage>.size)
                let ok = withUnsafeMutablePointer(to: &ss) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &sl) == 0 }
                }
                guard ok else { continue }
                let here = withUnsafePointer(to: ss) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress($0, length: sl) }
                }
                guard let here, here == want else { continue }
                found += 1
                #expect(isNonBlocking(fd), "\(kind) listening socket is non-blocking")
                #expect(isCloseOnExec(fd), "\(kind) listening socket is close-on-exec")
            }
            #expect(found == 1, "\(kind): the listening socket was found")
            client.close()
            server.close()
            l.close()
        }
    }

    @Test("[POLL-6] the poller's epoll and eventfd descriptors are close-on-exec, the eventfd non-blocking")
    func pollerDescriptors() throws {
        let before = openDescriptors()
        let rt = try AioRuntime(configuration: .init(taskThreads: 1, name: "plfds"))
        let after = openDescriptors()
        var epolls = 0
        var eventfds = 0
        for (fd, target) in after where before[fd] != target {
            if target == "anon_inode:[eventpoll]" {
                epolls += 1
                #expect(isCloseOnExec(fd), "epoll descriptor \(fd) is close-on-exec")
            } else if target == "anon_inode:[eventfd]" {
                eventfds += 1
                #expect(isCloseOnExec(fd), "eventfd \(fd) is close-on-exec")
                #expect(isNonBlocking(fd), "eventfd \(fd) is non-blocking")
            }
        }
        #expect(epolls >= 1 && eventfds >= 1, "the new runtime's poller descriptors were found")
        expectFinishes { rt.shutdown() }
    }

    // MARK: [POLL-7] Shutdown

    @Test("[POLL-7] shutdown joins every poller thread, with two, three or four of them (repeated)", arguments: [2, 3, 4])
    func shutdownJoinsManyPollerThreads(_ threads: Int) throws {
        let name = "plmany\(threads)"
        for round in 0..<40 {
            let rt = try AioRuntime(configuration: .init(taskThreads: 2, pollerThreads: threads, name: name))
            let (a, b) = try #require(makeSocketpair())
            let log = EventLog()
            let handler = TestHandler { e, _ in log.record(e) }
            let reg = try rt.poller.register(a, interest: [.readable, .writable], handler: handler)
            #expect(eventually { pollerThreadCount(named: name + "-poll") == threads })
            #expect(log.waitFor(.writable))
            sleepMillis(20)  // every poller thread back in epoll_wait
            let done = finishes(within: 10) { rt.shutdown() }
            #expect(done, "round \(round): shutdown with \(threads) poller threads did not return within 10 s")
            guard done else {
                // The remaining poller threads: still waiting in epoll_wait.
                let left = pollerThreadCount(named: name + "-poll")
                Issue.record("round \(round): \(left) of \(threads) poller threads still running")
                return  // leak the rest: the runtime is stuck in its shutdown
            }
            #expect(pollerThreadCount(named: name + "-poll") == 0)
            rt.poller.deregister(reg)
            withExtendedLifetime(handler) {}
            close(a)
            close(b)
        }
    }

    @Test("[POLL-7] shutdown completes operations in flight, then joins the poller threads; deregister still works, no handler runs")
    func shutdownStopsPoller() throws {
        let rt = try AioRuntime(configuration: .init(taskThreads: 2, pollerThreads: 1, name: "plshut"))
        let (a, b) = try #require(makeSocketpair())
        defer {
            close(a)
            close(b)
        }
        let log = EventLog()
        let handler = TestHandler { e, _ in
            drain(a)
            log.record(e)
        }
        #expect(pollerThreadCount(named: "plshut-poll") == 0, "started on the first registration")
        let reg = try rt.poller.register(a, interest: [.readable, .writable], handler: handler)
        #expect(eventually { pollerThreadCount(named: "plshut-poll") == 1 })
        #expect(log.waitFor(.writable))

        // A stream receive in flight on this runtime.
        let (s1, s2) = try #require(makeSocketpair())
        let stream = try SocketStream(adopting: s1, runtime: rt)
        defer { close(s2) }
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 16, alignment: 8)
        let seen = Counter()
        let seenError = Box<AioError?>(nil)
        let r = AioHandle(runtime: rt) { h in
            seenError.value = h.error
            seen.increment()
        }
        try r.setIOV([AioIOV(buf)])
        stream.receive(r)
        sleepMillis(10)
        #expect(r.isBusy)

        let done = finishes(within: 30) { rt.shutdown() }
        #expect(done, "shutdown finished")
        guard done else { return }  // leak the buffer: the receive may still be pending
        defer { buf.deallocate() }
        #expect(seen.count == 1, "the receive in flight completed before shutdown returned")
        #expect(seenError.value == .stopped)
        #expect(pollerThreadCount(named: "plshut-poll") == 0, "the poller threads were joined")
        let callsAtShutdown = log.calls.count
        expectFinishes { rt.poller.deregister(reg) }
        #expect(write(b, "late", 4) == 4)
        sleepMillis(100)
        #expect(log.calls.count == callsAtShutdown, "no handler runs after shutdown")
        stream.close()
        withExtendedLifetime(handler) {}
    }
}
