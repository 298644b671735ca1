// aio-async-echo: an echo server written with async/await, as a Swift user
// would write it today.
//
//   swift run -c release aio-async-echo --url tcp://127.0.0.1:5555
//
// A discarding task group runs the accept loop and one child task per
// connection. SIGINT or SIGTERM closes the listener: the accept loop ends,
// the group is cancelled, every connection's pending receive throws
// `.canceled` and the connection closes; then the process exits 0.

import AioKit
import Dispatch
import Glibc
import Synchronization

var url = "tcp://127.0.0.1:5555"
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    if a == "--url", let v = args.popFirst() {
        url = v
    } else {
        FileHandleLite.standardError.write("usage: aio-async-echo [--url URL]\n")
        exit(2)
    }
}

/// Writes text to a descriptor without Foundation.
struct FileHandleLite {
    let fd: Int32
    static let standardOutput = FileHandleLite(fd: STDOUT_FILENO)
    static let standardError = FileHandleLite(fd: STDERR_FILENO)
    func write(_ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            bytes = bytes.dropFirst(n)
        }
    }
}

let echoed = Atomic<Int>(0)

/// One connection: receive some bytes, send them all back, until the peer
/// closes or the task is cancelled.
func echo(_ stream: any AioStream) async {
    defer { stream.close() }
    do {
        while true {
            let bytes = try await stream.receive(upTo: 65_536)
            try await stream.send(bytes)
            echoed.add(bytes.count, ordering: .relaxed)
        }
    } catch {
        // .connectionShutdown (the peer is done), .canceled (we are stopping), or a reset.
    }
}

let listener: StreamListener
do {
    listener = try StreamListener(url: url)
    try listener.listen()
} catch {
    FileHandleLite.standardError.write("aio-async-echo: cannot listen on \(url): \(error)\n")
    exit(1)
}

/// Stops on SIGINT/SIGTERM: closing the listener ends the accept loop. A
/// nonisolated function, so that the handler is not tied to the main actor
/// (it runs on a Dispatch queue).
/// Set once a stop signal arrived.
final class StopFlag: Sendable {
    let raised = Atomic<Bool>(false)
}

nonisolated func stopOnSignals(_ listener: StreamListener, _ stopping: StopFlag) -> [any DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { sig in
        signal(sig, SIG_IGN)  // delivered to the source instead
        let source = DispatchSource.makeSignalSource(signal: sig)
        source.setEventHandler {
            stopping.raised.store(true, ordering: .relaxed)
            listener.close()
        }
        source.resume()
        return source
    }
}

let stopping = StopFlag()
let signalSources = stopOnSignals(listener, stopping)

FileHandleLite.standardOutput.write("aio-async-echo: listening on \(url) (port \(listener.boundPort)); SIGINT or SIGTERM to stop\n")

await withDiscardingTaskGroup { group in
    while true {
        let stream: any AioStream
        do {
            stream = try await listener.accept()
        } catch {
            if !stopping.raised.load(ordering: .relaxed) {
                FileHandleLite.standardError.write("aio-async-echo: accept: \(error)\n")
            }
            break
        }
        group.addTask { await echo(stream) }
    }
    group.cancelAll()  // every connection's pending receive throws .canceled
}

AioRuntime.shared.shutdown()
withExtendedLifetime(signalSources) {}
FileHandleLite.standardOutput.write("aio-async-echo: stopped; \(echoed.load(ordering: .relaxed)) bytes echoed\n")
exit(0)
