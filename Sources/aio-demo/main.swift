// aio-demo: a short tour of AioKit's handles.
//
//   swift run aio-demo
//
// Each part allocates its handles, starts operations, and prints what
// happened: a chain of operations driven from callbacks, a timeout, a cancel,
// a stop, a custom provider, a runtime shutdown with work in flight, and an
// echo server with a few clients over loopback TCP.

import AioKit
import Glibc
import Synchronization

/// Milliseconds since the demo started (monotonic).
let origin = ContinuousClock.now
func ms() -> String {
    let d = ContinuousClock.now - origin
    let (s, a) = d.components
    let total = Double(s) * 1000 + Double(a) / 1e15
    return String(Int(total.rounded())).leftPadded(5) + " ms"
}

extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

func say(_ text: String) {
    print("[\(ms())] \(text)")
}

func describe(_ error: AioError?) -> String {
    error.map { "\($0)" } ?? "success"
}

// 1. A chain: the callback starts the next operation on the same handle.
say("1. chaining: five 20 ms sleeps, each started from the previous one's callback")
let steps = Atomic<Int>(0)
let chain = AioHandle { h in
    let n = steps.add(1, ordering: .relaxed).newValue
    say("   step \(n) done: \(describe(h.error))")
    if n < 5 { h.sleep(.milliseconds(20)) }
}
chain.sleep(.milliseconds(20))
chain.wait()  // waits for the whole chain: every step's callback has returned
say("   chain finished after \(steps.load(ordering: .relaxed)) steps")

// 2. A timeout shorter than the operation ends it with .timedOut.
say("2. timeout: a 5 s sleep on a handle with a 50 ms timeout")
let limited = AioHandle()
limited.timeout = .after(.milliseconds(50))
limited.sleep(.seconds(5))
limited.wait()
say("   result: \(describe(limited.error))")

// 3. cancel() ends a pending operation at once; the callback still runs once.
say("3. cancel: a 60 s sleep canceled after 30 ms")
let callbacks = Atomic<Int>(0)
let sleeper = AioHandle { h in
    callbacks.add(1, ordering: .relaxed)
    say("   callback: \(describe(h.error))")
}
sleeper.sleep(.seconds(60))
usleep(30_000)
sleeper.cancel()
sleeper.wait()
say("   callbacks run: \(callbacks.load(ordering: .relaxed))")

// 4. stop() ends the operation and refuses later ones, even from callbacks.
say("4. stop: stopping a handle, then trying to start on it again")
let stoppable = AioHandle { h in say("   callback: \(describe(h.error))") }
stoppable.sleep(.seconds(60))
stoppable.stop()
stoppable.sleep(.milliseconds(1))
stoppable.wait()

// 5. A provider of our own: start, then finish from another thread.
say("5. a custom provider: an operation finished by a worker with outputs and a count")
let work = AioHandle { h in
    say("   callback: \(describe(h.error)), count \(h.count), output 0 = \(h.output(0) ?? "nil")")
}
try work.setInput(0, "hello")
work.reset()
if work.start(onCancel: { h, error in h.finish(error) }) {
    let input = work.input(0) as? String ?? ""
    let helper = AioHandle { _ in
        work.setOutput(0, input.uppercased())
        work.finish(nil, count: input.utf8.count)
    }
    helper.sleep(.milliseconds(10))  // "the I/O": done 10 ms later on the task pool
}
work.wait()

// 6. Waiting inside callbacks never deadlocks, even on a one-thread pool.
say("6. waits inside callbacks: 8 callbacks on a 1-thread runtime each wait for a sleep")
let small = try AioRuntime(configuration: .init(taskThreads: 1, maxTaskThreads: 4, name: "demo"))
let waited = Atomic<Int>(0)
let targets = (0..<8).map { _ in AioHandle(runtime: small) { _ in } }
let waiters = (0..<8).map { i in
    AioHandle(runtime: small) { _ in
        targets[i].wait()
        waited.add(1, ordering: .relaxed)
    }
}
for t in targets { t.sleep(.milliseconds(30)) }
for w in waiters { w.sleep(.zero) }
for w in waiters { w.wait() }
say("   all \(waited.load(ordering: .relaxed)) waits returned")

// 7. Shutdown with work in flight: every callback runs once with .stopped.
say("7. shutdown: 1,000 pending 60 s sleeps whose callbacks reap their own handle")
let stoppedCount = Atomic<Int>(0)
for _ in 0..<1000 {
    let h = AioHandle(runtime: small) { h in
        if h.error == .stopped { stoppedCount.add(1, ordering: .relaxed) }
        h.reap()  // teardown from the own callback is safe
    }
    h.sleep(.seconds(60))
}
small.shutdown()
say("   callbacks with .stopped: \(stoppedCount.load(ordering: .relaxed))")
// 8. Streams: an echo server and three clients over loopback, all chained in callbacks.
say("8. streams: an in-process echo server on 127.0.0.1 and three clients")
let listener = try StreamListener(url: "tcp://127.0.0.1:0")
try listener.listen()
say("   listening on port \(listener.boundPort)")

/// Server side of one connection: receive → send back all of it → receive ...
final class Echo: Sendable {
    let stream: any AioStream
    let memory = Memory(64 * 1024)
    init(_ stream: any AioStream) { self.stream = stream }
    func run() {
        let send = AioHandle { h in if h.error != nil { self.stream.close() } }
        let receive = AioHandle { h in
            guard h.error == nil else { return self.stream.close() }
            try! send.setIOV([AioIOV(UnsafeMutableRawBufferPointer(rebasing: self.memory.bytes[..<h.count]))])
            (self.stream as! SocketStream).sendAll(send)
            send.wait()  // waiting inside a callback is safe
            if send.error == nil { self.stream.receive(h) }
        }
        try! receive.setIOV([AioIOV(memory.bytes)])
        stream.receive(receive)
    }
}

/// Caller-owned memory for an iov, freed with its owner.
final class Memory: @unchecked Sendable {  // its bytes are touched by one operation at a time
    let bytes: UnsafeMutableRawBufferPointer
    init(_ count: Int) { bytes = .allocate(byteCount: count, alignment: 16) }
    deinit { bytes.deallocate() }
}

let accepted = AioHandle { h in
    guard h.error == nil, let stream = h.output(0) as? any AioStream else { return }
    Echo(stream).run()
    listener.accept(h)  // chain: the next connection
}
listener.accept(accepted)

let dialer = try StreamDialer(url: "tcp://127.0.0.1:\(listener.boundPort)")
let moved = Atomic<Int>(0)
for client in 1...3 {
    let dial = AioHandle()
    dial.timeout = .after(.seconds(5))
    dialer.dial(dial)
    dial.wait()
    guard dial.error == nil, let stream = dial.output(0) as? SocketStream else {
        say("   client \(client): dial failed: \(describe(dial.error))")
        continue
    }
    let message = Array("hello \(client) from a chained client".utf8) + Array(repeating: UInt8(client), count: 10_000 * client)
    let out = Memory(message.count), back = Memory(message.count)
    out.bytes.copyBytes(from: message)
    let send = AioHandle(), receive = AioHandle()
    try send.setIOV([AioIOV(out.bytes)])
    try receive.setIOV([AioIOV(back.bytes)])
    receive.timeout = .after(.seconds(5))
    stream.receiveExactly(receive)  // all of it, or an error
    stream.sendAll(send)
    send.wait()
    receive.wait()
    let same = receive.error == nil && memcmp(out.bytes.baseAddress!, back.bytes.baseAddress!, message.count) == 0
    moved.add(send.count + receive.count, ordering: .relaxed)
    say("   client \(client): sent \(send.count) bytes, got \(receive.count) back, \(same ? "identical" : "DIFFERENT")")
    stream.close()
}
listener.close()
say("   \(moved.load(ordering: .relaxed)) bytes moved in all")
say("done")
