import AioKit
import Glibc
import Testing

/// A cancel (or timeout) that races the start of a stream operation must never
/// be lost: the provider's cancel routine and its queueing are serialised by
/// the provider's lock, which `begin` is called under ([STR-8], [AIO-13]).
@Suite("Streams: cancel racing the start of an operation")
struct StreamRaceTests {
    /// Spins for a few hundred nanoseconds to a few microseconds.
    private static func jitter(_ i: Int) {
        var x = 0
        for k in 0..<(i % 64) * 20 { x &+= k }
        if x == -1 { print("") }
    }

    @Test("[STR-8] [AIO-13] a cancel from another thread right after receive() starts is never lost (thousands of rounds)")
    func cancelRacesReceiveStart() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let listener = try StreamListener(url: "tcp://127.0.0.1:0", runtime: rt)
        try listener.listen()
        defer { listener.close() }
        let a = AioHandle(runtime: rt)
        listener.accept(a)
        let d = AioHandle(runtime: rt)
        let dialer = try StreamDialer(url: "tcp://127.0.0.1:\(listener.boundPort)", runtime: rt)
        dialer.dial(d)  // the dialer stays referenced until the dial completes
        #expect(eventually { !a.isBusy && !d.isBusy })
        withExtendedLifetime(dialer) {}
        let server = try #require(a.output(0) as? SocketStream)
        let client = try #require(d.output(0) as? SocketStream)
        defer {
            client.close()
            server.close()
        }
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { memory.deallocate() }
        let h = AioHandle(runtime: rt)
        try h.setIOV([AioIOV(memory)])
        let lost = Counter()
        for i in 0..<3000 {
            let canceller = Box<Bool>(false)
            concurrently(2) { who in
                if who == 0 {
                    server.receive(h)
                } else {
                    Self.jitter(i)
                    h.cancel()
                    canceller.value = true
                }
            }
            if !eventually(within: 10, { !h.isBusy }) {
                lost.increment()
                h.cancel()  // a lost cancel: end it so the next round can run
                _ = eventually(within: 10) { !h.isBusy }
                break
            }
            // Canceled, or (cancel before the start) refused with .canceled; never data.
            #expect(h.error == .canceled)
        }
        #expect(lost.count == 0, "a cancel that raced the start of a receive was lost")
        // The stream still works.
        let out = UnsafeMutableRawBufferPointer.allocate(byteCount: 3, alignment: 1)
        defer { out.deallocate() }
        out.copyBytes(from: [1, 2, 3])
        let s = AioHandle(runtime: rt)
        try s.setIOV([AioIOV(out)])
        client.sendAll(s)
        server.receive(h)
        #expect(eventually { !h.isBusy && !s.isBusy })
        #expect(h.error == nil && h.count == 3)
    }

    @Test("[STR-8] [STR-4] a timeout or cancel right after accept() starts is never lost")
    func cancelRacesAcceptStart() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let listener = try StreamListener(url: "tcp://127.0.0.1:0", runtime: rt)
        try listener.listen()
        defer { listener.close() }
        let h = AioHandle(runtime: rt)
        var lost = 0
        for i in 0..<2000 {
            concurrently(2) { who in
                if who == 0 { listener.accept(h) } else {
                    Self.jitter(i)
                    h.cancel()
                }
            }
            if !eventually(within: 10, { !h.isBusy }) {
                lost += 1
                h.cancel()
                _ = eventually(within: 10) { !h.isBusy }
                break
            }
            #expect(h.error == .canceled)
        }
        #expect(lost == 0, "a cancel that raced the start of an accept was lost")
    }
}
