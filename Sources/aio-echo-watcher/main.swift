// aio-echo-watcher: an echo server on Watcher, the gaio-style proactor facade.
//
//   swift run -c release aio-echo-watcher --url tcp://127.0.0.1:5555
//
// Connections come from an AioKit listener; each one gets a read with no
// buffer of its own (it lands in one of the watcher's swap buffers, so an
// idle connection holds no memory). The main thread collects results with
// waitIO(): a read is copied into a write of the same bytes and the next read
// is submitted at once; a failed operation frees its connection.
// SIGINT or SIGTERM: a signal thread closes the watcher, waitIO() throws
// `.closed`, and the process exits 0.

import AioKit
import Glibc

func say(_ text: String, to fd: Int32 = STDOUT_FILENO) { var t = text + "\n"; t.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) } }
func fail(_ text: String, _ status: Int32) -> Never { say("aio-echo-watcher: \(text)", to: STDERR_FILENO); exit(status) }

var url = "tcp://127.0.0.1:5555"
var args = CommandLine.arguments.dropFirst()
while let a = args.popFirst() {
    guard a == "--url", let v = args.popFirst() else { fail("usage: aio-echo-watcher [--url URL]", 2) }
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

/// Bytes on their way back to a client: the write's context, freed with its result.
final class Outgoing: @unchecked Sendable {  // immutable; the watcher reads the bytes until the write's result
    let bytes: UnsafeMutableRawBufferPointer
    init(_ source: UnsafeRawBufferPointer) {
        bytes = .allocate(byteCount: source.count, alignment: 1)
        bytes.copyMemory(from: source)
    }
    deinit { bytes.deallocate() }
}

let watcher: Watcher
let listener: StreamListener
do {
    watcher = try Watcher()
    listener = try StreamListener(url: url)
    try listener.listen()
} catch {
    fail("cannot listen on \(url): \(error)", 1)
}

// Accepting: a chain of accepts, each new stream handed to the watcher.
let acceptor = AioHandle { h in
    guard h.error == nil, let stream = h.output(0) as? any AioStream else {
        if h.error != .closed && h.error != .stopped { listener.accept(h) }
        return
    }
    if (try? watcher.read(nil, stream, nil)) == nil { stream.close() }
    listener.accept(h)
}
listener.accept(acceptor)

// On SIGINT or SIGTERM: stop accepting and close the watcher (waitIO() then throws .closed).
let signalThread = onStopSignal { [listener, watcher] in
    listener.close()
    try? watcher.close()
}
say("aio-echo-watcher: listening on \(url) (port \(listener.boundPort)); SIGINT or SIGTERM to stop")

var streams: [ObjectIdentifier: any AioStream] = [:]  // open connections, to close at the end
loop: while true {
    let results: [WatcherResult]
    do { results = try watcher.waitIO() } catch { break loop }  // closed: the signal came
    for r in results {
        if r.error != nil {
            // The peer closed (.connectionShutdown), reset, or the stream was freed.
            if streams.removeValue(forKey: ObjectIdentifier(r.stream)) != nil { try? watcher.free(r.stream) }
            continue
        }
        switch r.operation {
        case .read:
            // The swap buffer is only ours until the next waitIO(): copy it for the write.
            let out = Outgoing(UnsafeRawBufferPointer(rebasing: r.buffer[..<r.size]))
            streams[ObjectIdentifier(r.stream)] = r.stream
            do {
                try watcher.write(out, r.stream, UnsafeRawBufferPointer(out.bytes))
                try watcher.read(nil, r.stream, nil)
            } catch {
                break loop
            }
        case .write:
            break  // `r.context` (the Outgoing) goes with the result
        }
    }
}
pthread_join(signalThread, nil)
for (_, s) in streams { s.close() }
acceptor.stop()
AioRuntime.shared.shutdown()
exit(0)
