import AioKit
import Glibc
import Synchronization
import Testing

// Specs/Readiness.md: the readiness loop `ReadinessLoop` ([RDY-1]..[RDY-11]),
// through the public surface only.
//
// Sockets come from FacadeNet (ReactorTests.swift): socketpairs and loopback
// TCP pairs made with plain system calls, non-blocking. Each test has a
// private runtime; the loop runs on the test's own thread (runOnce with a
// bounded timeout), so handlers record what they see and expectations follow.

/// A handler that records events (called on the loop's thread).
private final class Recorder: ReadinessHandler {
    struct Event: Equatable {
        let token: Int
        let readable: Bool
        let hint: ReadHint?
    }
    var events: [Event] = []
    var threads: [pthread_t] = []
    /// Optional extra work on each readable event.
    var onReadable: ((ReadinessLoop, Int, ReadHint) -> Void)?
    var onWritable: ((ReadinessLoop, Int) -> Void)?

    func readable(_ loop: ReadinessLoop, token: Int, hint: ReadHint) {
        events.append(Event(token: token, readable: true, hint: hint))
        threads.append(pthread_self())
        onReadable?(loop, token, hint)
    }

    func writable(_ loop: ReadinessLoop, token: Int) {
        events.append(Event(token: token, readable: false, hint: nil))
        threads.append(pthread_self())
        onWritable?(loop, token)
    }

    func readables(_ token: Int) -> [ReadHint] {
        events.filter { $0.token == token && $0.readable }.compactMap(\.hint)
    }

    func writables(_ token: Int) -> Int {
        events.filter { $0.token == token && !$0.readable }.count
    }
}

/// Runs the loop until `done` holds or `seconds` pass; returns `done()`.
@discardableResult
private func runUntil(
    _ loop: ReadinessLoop, _ handler: Recorder, within seconds: Double = 20, _ done: () -> Bool
) throws -> Bool {
    let end = now() + seconds
    while !done() {
        if now() > end { return false }
        try loop.runOnce(handler, timeout: .milliseconds(50))
    }
    return true
}

@Suite("Readiness loop (ReadinessLoop)", .serialized)
struct ReadinessTests {
    @Test("[RDY-1] register: invalid descriptors, empty interest and duplicates throw")
    func registerErrors() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        #expect(throws: AioError.self) { try loop.register(-1, token: 1, interest: .readable) }
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        #expect(throws: AioError.invalidArgument) { try loop.register(a, token: 1, interest: []) }
        try loop.register(a, token: 1, interest: .readable)
        #expect(throws: AioError.busy) { try loop.register(a, token: 2, interest: .readable) }
        let path = "/tmp/aiokit-rdy1-\(getpid())"
        let file = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        unlink(path)
        #expect(throws: AioError.self) { try loop.register(file, token: 3, interest: .readable) }
        close(file)
        #expect(throws: AioError.invalidArgument) { try loop.deregister(b) }  // never registered
        try loop.deregister(a)
        try loop.register(a, token: 4, interest: .readable)  // again after deregister
        try loop.deregister(a)
    }

    @Test("[RDY-2] only the events of the interest are delivered")
    func interest() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        let h = Recorder()
        try loop.register(a, token: 10, interest: .readable)  // writable at once, but not asked
        FacadeNet.writeAll(b, [1])
        #expect(try runUntil(loop, h) { !h.readables(10).isEmpty })
        try loop.runOnce(h, timeout: .milliseconds(50))
        #expect(h.writables(10) == 0, "a writable event without writable interest")
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        FacadeNet.writeAll(d, [1])  // readable at once, but not asked
        try loop.register(c, token: 11, interest: .writable)
        #expect(try runUntil(loop, h) { h.writables(11) >= 1 })
        try loop.runOnce(h, timeout: .milliseconds(50))
        #expect(h.readables(11).isEmpty, "a readable event without readable interest")
    }

    @Test("[RDY-3] edge-triggered, multi-shot; a descriptor ready at registration gets its first event")
    func edgeTriggered() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        FacadeNet.writeAll(b, [1, 2, 3])  // ready before registration
        let h = Recorder()
        try loop.register(a, token: 7, interest: .readable)
        #expect(try runUntil(loop, h) { h.readables(7).count == 1 }, "no event for a descriptor already ready")
        // Not read: edge-triggered, so no second event without a new edge.
        let n = try loop.runOnce(h, timeout: .milliseconds(100))
        #expect(n == 0)
        #expect(h.readables(7).count == 1, "an event repeated without a new edge (level-triggered?)")
        // Multi-shot: each new edge gives an event, with no re-arming.
        for i in 0..<5 {
            _ = FacadeNet.readAvailable(a)
            FacadeNet.writeAll(b, [UInt8(i)])
            #expect(try runUntil(loop, h) { h.readables(7).count == 2 + i })
        }
        #expect(h.readables(7).allSatisfy { $0 == .data })
    }

    @Test("[RDY-4] runOnce calls the handler on the caller's thread, returns the count, honours its timeout")
    func runOnceContract() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let h = Recorder()
        // Timeout with nothing registered: 0 events, after about the timeout.
        let t0 = now()
        let none = try loop.runOnce(h, timeout: .milliseconds(100))
        #expect(none == 0)
        #expect(now() - t0 >= 0.09)
        #expect(try loop.runOnce(h, timeout: .zero) == 0)
        var pairs: [(Int32, Int32)] = []
        for i in 0..<3 {
            let p = FacadeNet.socketPair()
            pairs.append(p)
            try loop.register(p.0, token: 100 + i, interest: .readable)
            FacadeNet.writeAll(p.1, [1])
        }
        defer { for (x, y) in pairs { close(x); close(y) } }
        var total = 0
        let end = now() + 20
        while total < 3 && now() < end { total += try loop.runOnce(h, timeout: .milliseconds(50)) }
        #expect(total == 3)
        #expect(h.events.count == 3)
        let me = pthread_self()
        #expect(h.threads.allSatisfy { pthread_equal($0, me) != 0 }, "the handler ran on another thread")
        // A readable-and-writable descriptor is one event with two calls.
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        FacadeNet.writeAll(d, [1])
        let h2 = Recorder()
        try loop.register(c, token: 200, interest: [.readable, .writable])
        var got = 0
        let end2 = now() + 20
        while (h2.readables(200).isEmpty || h2.writables(200) == 0) && now() < end2 {
            got += try loop.runOnce(h2, timeout: .milliseconds(50))
        }
        #expect(got == 1 && h2.events.count == 2)
    }

    @Test("[RDY-5] hints: .data, .hangUp on the peer's shutdown, .error on its reset")
    func hints() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let h = Recorder()
        // Peer closes its side (FIN).
        let (a, b) = FacadeNet.tcpPair()
        defer { close(a); close(b) }
        try loop.register(a, token: 1, interest: .readable)
        FacadeNet.writeAll(b, [1])
        #expect(try runUntil(loop, h) { !h.readables(1).isEmpty })
        #expect(h.readables(1) == [.data])
        _ = FacadeNet.readAvailable(a)
        shutdown(b, Int32(SHUT_WR))
        #expect(try runUntil(loop, h) { h.readables(1).count == 2 })
        #expect(h.readables(1).last == .hangUp)
        #expect(FacadeNet.readAvailable(a).eof)

        // Peer resets (SO_LINGER {1, 0} + close).
        let (c, d) = FacadeNet.tcpPair()
        defer { close(c) }
        try loop.register(c, token: 2, interest: .readable)
        FacadeNet.reset(d)
        #expect(try runUntil(loop, h) { !h.readables(2).isEmpty })
        #expect(h.readables(2) == [.error])
        var byte: UInt8 = 0
        #expect(recv(c, &byte, 1, 0) < 0 && errno == ECONNRESET)

        // Unix-domain peer closes: a hang-up too.
        let (e, f) = FacadeNet.socketPair()
        defer { close(e) }
        try loop.register(e, token: 3, interest: .readable)
        close(f)
        #expect(try runUntil(loop, h) { !h.readables(3).isEmpty })
        #expect(h.readables(3) == [.hangUp])
    }

    @Test("[RDY-6] a descriptor closed by the user is gone from the loop")
    func closedIsGone() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let h = Recorder()
        let (a, b) = FacadeNet.socketPair()
        try loop.register(a, token: 1, interest: .readable)
        FacadeNet.writeAll(b, [1])
        sleepMillis(20)  // the event is reported (queued) before the close
        close(a)
        #expect(try loop.runOnce(h, timeout: .milliseconds(100)) == 0, "an event for a closed descriptor")
        #expect(h.events.isEmpty)
        close(b)
        // Its number is free for a new socket, with its own token.
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        try loop.register(c, token: 2, interest: .readable)
        FacadeNet.writeAll(d, [1])
        #expect(try runUntil(loop, h) { !h.readables(2).isEmpty })
        #expect(h.readables(1).isEmpty)
        // Deregistering a closed descriptor: it is not there any more.
        let (e, f) = FacadeNet.socketPair()
        try loop.register(e, token: 3, interest: .readable)
        close(e)
        close(f)
        #expect(throws: AioError.invalidArgument) { try loop.deregister(e) }
    }

    @Test("[RDY-7] reregister changes token and interest and reports readiness already there")
    func reregister() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let h = Recorder()
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        try loop.register(a, token: 1, interest: .readable)
        #expect(try loop.runOnce(h, timeout: .milliseconds(50)) == 0)
        try loop.reregister(a, token: 2, interest: [.readable, .writable])
        #expect(try runUntil(loop, h) { h.writables(2) == 1 })
        FacadeNet.writeAll(b, [1])
        #expect(try runUntil(loop, h) { h.readables(2).count == 1 })
        #expect(h.readables(1).isEmpty && h.writables(1) == 0)
        // Data waiting, not read: reregistering reports it again.
        try loop.reregister(a, token: 3, interest: .readable)
        #expect(try runUntil(loop, h) { h.readables(3).count == 1 })
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        #expect(throws: AioError.invalidArgument) { try loop.reregister(c, token: 4, interest: .readable) }
        #expect(throws: AioError.invalidArgument) { try loop.reregister(a, token: 4, interest: []) }
    }

    @Test("[RDY-8] no event is delivered for a descriptor once deregister returns")
    func deregister() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let h = Recorder()
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        try loop.register(a, token: 1, interest: .readable)
        FacadeNet.writeAll(b, [1])
        sleepMillis(20)  // queued
        try loop.deregister(a)
        FacadeNet.writeAll(b, [2])
        #expect(try loop.runOnce(h, timeout: .milliseconds(100)) == 0)
        #expect(h.events.isEmpty)
        // Inside one batch: the first handler call deregisters the other descriptor.
        let (c, d) = FacadeNet.socketPair()
        defer { close(c); close(d) }
        try loop.register(a, token: 2, interest: .readable)
        try loop.register(c, token: 3, interest: .readable)
        FacadeNet.writeAll(d, [1])
        sleepMillis(20)
        h.onReadable = { loop, token, _ in
            let other = token == 2 ? c : a
            try? loop.deregister(other)
        }
        #expect(try runUntil(loop, h) { !h.events.isEmpty })
        try loop.runOnce(h, timeout: .milliseconds(50))
        #expect(h.events.count == 1, "an event delivered after its descriptor was deregistered")
    }

    @Test("[RDY-9] register, reregister and deregister from inside handler callbacks")
    func reentrant() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let h = Recorder()
        let (a, b) = FacadeNet.socketPair()
        let (c, d) = FacadeNet.socketPair()
        defer { close(a); close(b); close(c); close(d) }
        FacadeNet.writeAll(d, [9])
        try loop.register(a, token: 1, interest: .readable)
        var steps: [String] = []
        h.onReadable = { loop, token, _ in
            switch token {
            case 1:
                _ = FacadeNet.readAvailable(a)
                try? loop.register(c, token: 2, interest: .readable)  // c is ready already
                steps.append("registered c")
            case 2:
                try? loop.reregister(c, token: 3, interest: .writable)
                steps.append("reregistered c")
            default: break
            }
        }
        h.onWritable = { loop, token in
            if token == 3 {
                try? loop.deregister(c)
                try? loop.deregister(a)
                steps.append("deregistered")
            }
        }
        FacadeNet.writeAll(b, [1])
        #expect(try runUntil(loop, h) { steps.count == 3 })
        #expect(steps == ["registered c", "reregistered c", "deregistered"])
        FacadeNet.writeAll(b, [1])
        FacadeNet.writeAll(d, [1])
        let before = h.events.count
        try loop.runOnce(h, timeout: .milliseconds(100))
        #expect(h.events.count == before)
    }

    @Test("[RDY-10] shutdown from another thread wakes run() at once; the loop is over")
    func shutdownWakes() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let loop = try ReadinessLoop(runtime: rt)
        let (a, b) = FacadeNet.socketPair()
        defer { close(a); close(b) }
        try loop.register(a, token: 1, interest: .readable)
        let returned = Counter()
        let runner = FacadeNet.spawn {
            let h = Recorder()
            do { try loop.run(h) } catch {}
            returned.increment()
        }
        sleepMillis(50)
        #expect(returned.count == 0, "run() returned before shutdown()")
        let t0 = now()
        loop.shutdown()
        #expect(eventually(within: 10) { returned.count == 1 }, "run() did not return after shutdown()")
        #expect(now() - t0 < 5)
        runner()
        let h = Recorder()
        #expect(try loop.runOnce(h, timeout: nil) == 0)  // returns at once
        expectFinishes(within: 10) { try? loop.run(Recorder()) }
        #expect(throws: AioError.closed) { try loop.register(b, token: 2, interest: .readable) }
        loop.shutdown()  // again: no effect
    }

    @Test("[RDY-11] the loop has no thread of its own: events come from the runtime's poller")
    func noThreadOfItsOwn() throws {
        let rt = try AioRuntime(configuration: .init(taskThreads: 2, name: "rdy11"))
        defer { rt.shutdown() }
        let warm = try ReadinessLoop(runtime: rt)
        let (p, q) = FacadeNet.socketPair()
        defer { close(p); close(q) }
        try warm.register(p, token: 0, interest: .readable)  // the poller starts here
        let before = threadCount(named: "rdy11")
        var loops: [ReadinessLoop] = []
        var pairs: [(Int32, Int32)] = []
        for i in 0..<10 {
            let l = try ReadinessLoop(runtime: rt)
            for j in 0..<100 {
                let pair = FacadeNet.socketPair()
                pairs.append(pair)
                try l.register(pair.0, token: i * 1000 + j, interest: .readable)
            }
            loops.append(l)
        }
        #expect(threadCount(named: "rdy11") == before, "loops or registrations started threads")
        let h = Recorder()
        FacadeNet.writeAll(pairs[537].1, [1])
        #expect(try runUntil(loops[5], h) { !h.events.isEmpty })
        #expect(h.events.map(\.token) == [5037])
        for l in loops { l.shutdown() }
        for (x, y) in pairs {
            close(x)
            close(y)
        }
        warm.shutdown()
    }
}
