// tcp-pingpong through the async/await API (`--via async`): the same work as
// runTCPPingPong, written as a Swift user would with `await`: the client sends
// SIZE bytes, the server receives all of them and sends them back, the client
// receives all of them and checks them, then sends the next.

import AioKit
import Glibc
import Synchronization

/// The vias of the async bridge.
let asyncVias: Set<String> = ["async"]

/// Round-trip times and progress, shared by the client task and the main thread.
private final class AsyncRun: @unchecked Sendable {  // `rtt[i]` written by the client task only, read after `done`
    let rtt: UnsafeMutablePointer<Int64>
    let rounds = Atomic<Int>(0)
    let done = Latch()
    let stopping = Atomic<Bool>(false)
    init(n: Int) { rtt = .allocate(capacity: n) }
    deinit { rtt.deallocate() }
}

/// Receives exactly `count` bytes.
private func receiveAll(_ stream: any AioStream, _ count: Int) async throws -> [UInt8] {
    var got = try await stream.receive(upTo: count)
    while got.count < count { got += try await stream.receive(upTo: count - got.count) }
    return got
}

func runAsyncPingPong(_ args: BenchArgs) -> Report {
    let tcp = TCPPair()
    let (client, server) = tcp.connectForSetup()
    let size = args.size, n = args.n
    let payload: [UInt8] = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
    let run = AsyncRun(n: n)

    let serverTask = Task.detached {
        do {
            while true { try await server.send(try await receiveAll(server, size)) }
        } catch {
            if !run.stopping.load(ordering: .relaxed) { die("tcp-pingpong server: \(error)") }
        }
    }

    let span = Span.begin()
    let clientTask = Task.detached {
        do {
            for i in 0..<n {
                let t0 = nowNanos()
                try await client.send(payload)
                let back = try await receiveAll(client, size)
                if back != payload { die("tcp-pingpong: round \(i) came back different") }
                run.rtt[i] = Int64(nowNanos() &- t0)
                run.rounds.add(1, ordering: .relaxed)
            }
        } catch {
            die("tcp-pingpong client: \(error)")
        }
        run.done.open()
    }
    run.done.waitBounded("tcp-pingpong --via async", progress: { run.rounds.load(ordering: .relaxed) })
    let (wall, _) = span.end()

    run.stopping.store(true, ordering: .relaxed)
    client.close()
    server.close()
    tcp.close()
    withExtendedLifetime((serverTask, clientTask)) {}

    var report = Report(args, wall: wall)
    report.addRoundTrips(Array(UnsafeBufferPointer(start: run.rtt, count: n)))
    return report
}
