import AioKit
import Glibc
import Synchronization
import Testing

/// Specs/Concurrency.md: the async bridge.

/// Polls `condition` from async code (never blocking a cooperative thread).
private func asyncEventually(within seconds: Double = 30, _ condition: () -> Bool) async -> Bool {
    let end = now() + seconds
    while !condition() {
        if now() > end { return condition() }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return true
}

/// A connected pair of streams over loopback.
private func streamPair() async throws -> (listener: StreamListener, client: any AioStream, server: any AioStream) {
    let listener = try StreamListener(url: "tcp://127.0.0.1:0")
    try listener.listen()
    let dialer = try StreamDialer(url: "tcp://127.0.0.1:\(listener.boundPort)")
    async let server = listener.accept()
    let client = try await dialer.dial()
    return (listener, client, try await server)
}

@Suite("Concurrency bridge")
struct ConcurrencyTests {
    @Test("[ASYNC-1] [ASYNC-2] completion racing Task cancellation: exactly one resumption, thousands of times")
    func completionRacesCancellation() async throws {
        let rounds = 4000
        let resumed = Counter()
        let succeeded = Counter()
        let canceled = Counter()
        let finished = Counter()
        let worker = Task.detached {
            for i in 0..<rounds {
                let h = AioHandle()
                let t = Task {
                    try await h.perform { $0.sleep(.microseconds(Int64(i % 50))) }
                }
                if i % 3 != 0 {
                    // Cancel somewhere around the completion.
                    for _ in 0..<(i % 7) { await Task.yield() }
                    t.cancel()
                }
                do {
                    try await t.value
                    succeeded.increment()
                } catch let e as AioError {
                    #expect(e == .canceled)
                    canceled.increment()
                } catch is CancellationError {
                    canceled.increment()  // cancelled before perform started anything
                } catch {
                    Issue.record("unexpected error \(error)")
                }
                resumed.increment()
                #expect(!h.isBusy)
            }
            finished.increment()
        }
        let ok = await asyncEventually(within: 120) { finished.count == 1 }
        #expect(ok, "a perform never resumed (\(resumed.count) of \(rounds) did)")
        if ok { await worker.value }
        #expect(resumed.count == rounds)
        #expect(succeeded.count + canceled.count == rounds)
        #expect(succeeded.count > 0 && canceled.count > 0, "the race went one way only")
    }

    @Test("[ASYNC-2] cancelling the awaiting Task cancels the operation and throws .canceled")
    func cancellationCancels() async throws {
        let h = AioHandle()
        let t = Task { try await h.perform { $0.sleep(.seconds(60)) } }
        try await Task.sleep(for: .milliseconds(20))
        t.cancel()
        await #expect(throws: AioError.canceled) { try await t.value }
        #expect(!h.isBusy)
        #expect(h.error == .canceled)
    }

    @Test("[ASYNC-1] a timeout and a stop end an awaited operation once, with their error")
    func timeoutAndStop() async throws {
        let h = AioHandle()
        h.timeout = .after(.milliseconds(10))
        await #expect(throws: AioError.timedOut) { try await h.perform { $0.sleep(.seconds(60)) } }
        h.timeout = .infinite
        let t = Task { try await h.perform { $0.sleep(.seconds(60)) } }
        try await Task.sleep(for: .milliseconds(10))
        h.stop()
        await #expect(throws: AioError.stopped) { try await t.value }
        await #expect(throws: AioError.stopped) { try await h.perform { $0.sleep(.zero) } }
    }

    @Test("[ASYNC-1] a runtime shutdown resumes awaiting tasks with .stopped")
    func shutdownResumes() async throws {
        let rt = try makeRuntime()
        let handles = (0..<50).map { _ in AioHandle(runtime: rt) }
        let tasks = handles.map { h in Task { try await h.perform { $0.sleep(.seconds(60)) } } }
        try await Task.sleep(for: .milliseconds(20))
        rt.shutdown()
        for t in tasks { await #expect(throws: AioError.stopped) { try await t.value } }
    }

    @Test("[ASYNC-3] a Task cancelled before perform starts nothing and throws CancellationError")
    func cancelledBefore() async throws {
        let started = Counter()
        let h = AioHandle()
        let t = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await h.perform {
                started.increment()
                $0.sleep(.zero)
            }
        }
        await #expect(throws: CancellationError.self) { try await t.value }
        #expect(started.count == 0)
        #expect(!h.isBusy)
    }

    @Test("[ASYNC-4] async dial, accept, send all and receive over loopback")
    func asyncStreams() async throws {
        let (listener, client, server) = try await streamPair()
        defer {
            client.close()
            server.close()
            listener.close()
        }
        let payload = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        async let sending: Void = client.send(payload)
        var got: [UInt8] = []
        while got.count < payload.count {
            let chunk = try await server.receive(upTo: 65_536)
            #expect(!chunk.isEmpty && chunk.count <= 65_536)
            got += chunk
        }
        try await sending
        #expect(got == payload)
    }

    @Test("[ASYNC-4] receive after the peer closed throws .connectionShutdown; bad sizes throw .invalidArgument")
    func asyncEnds() async throws {
        let (listener, client, server) = try await streamPair()
        defer { listener.close() }
        await #expect(throws: AioError.invalidArgument) { _ = try await server.receive(upTo: 0) }
        try await client.send(Array("bye".utf8))
        client.close()
        #expect(try await server.receive(upTo: 10) == Array("bye".utf8))
        await #expect(throws: AioError.connectionShutdown) { _ = try await server.receive(upTo: 10) }
        server.close()
        await #expect(throws: AioError.closed) { try await server.send([1, 2, 3]) }
        let closedListener = try StreamListener(url: "tcp://127.0.0.1:0")
        try closedListener.listen()
        closedListener.close()
        await #expect(throws: AioError.closed) { _ = try await closedListener.accept() }
    }

    @Test("[ASYNC-2] cancelling a Task blocked in an async receive cancels it and leaves the stream usable")
    func cancelAsyncReceive() async throws {
        let (listener, client, server) = try await streamPair()
        defer {
            client.close()
            server.close()
            listener.close()
        }
        let t = Task { try await server.receive(upTo: 100) }
        try await Task.sleep(for: .milliseconds(20))
        t.cancel()
        await #expect(throws: AioError.canceled) { _ = try await t.value }
        try await client.send([9, 8, 7])
        #expect(try await server.receive(upTo: 100) == [9, 8, 7])
    }

    @Test("[ASYNC-5] perform from the main actor runs its start closure there")
    @MainActor
    func fromMainActor() async throws {
        // Main-actor state, mutated by the start closure: that this compiles is
        // the proof that the closure runs in the caller's (main-actor) isolation.
        var startedOnMain = 0
        let h = AioHandle()
        try await h.perform {
            startedOnMain += 1
            $0.sleep(.milliseconds(1))
        }
        #expect(startedOnMain == 1)
    }

    @Test("[ASYNC-6] [ASYNC-1] one callback-less handle serves many performs in turn")
    func reuse() async throws {
        let h = AioHandle()
        for _ in 0..<1000 { try await h.perform { $0.sleep(.zero) } }
        #expect(!h.isBusy)
    }
}
