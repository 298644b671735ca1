import AioKit
import Glibc
import Synchronization
import Testing

// Specs/Watcher.md: the proactor facade `Watcher` ([WAT-1]..[WAT-11]),
// through the public surface only.
//
// Streams are loopback TCP connections (FacadeNet, ReactorTests.swift) whose
// one end is adopted as a `SocketStream` and whose other end the test drives
// with plain system calls. Each test has a private runtime; buffers are freed
// only after the runtime has shut down.

/// Caller-owned buffers, freed together at the end of a test.
private final class Memory: @unchecked Sendable {  // `lock` guards the list
    private let lock = Box<[AioIOV]>([])

    func make(_ count: Int, fill: UInt8 = 0) -> UnsafeMutableRawBufferPointer {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        b.initializeMemory(as: UInt8.self, repeating: fill)
        lock.mutate { $0.append(AioIOV(b)) }
        return UnsafeMutableRawBufferPointer(rebasing: b[0..<count])
    }

    func make(_ bytes: [UInt8]) -> UnsafeMutableRawBufferPointer {
        let b = make(bytes.count)
        b.copyBytes(from: bytes)
        return b
    }

    func freeAll() {
        lock.mutate { list in
            for b in list { b.buffer.deallocate() }
            list.removeAll()
        }
    }
}

/// A stream (adopted server end) and the raw peer descriptor.
private func streamPair(_ rt: AioRuntime) throws -> (SocketStream, Int32) {
    let (c, s) = FacadeNet.tcpPair()
    return (try SocketStream(adopting: s, runtime: rt), c)
}

/// Collects results until `count` have arrived (bounded).
private func collect(_ w: Watcher, _ count: Int, within seconds: Double = 30) throws -> [WatcherResult] {
    var out: [WatcherResult] = []
    let end = now() + seconds
    while out.count < count && now() < end {
        out += try w.waitIO()
    }
    return out
}

/// /proc/self/statm's first field: the virtual size, in bytes.
private func virtualBytes() -> Int {
    guard let f = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(f) }
    var buf = [UInt8](repeating: 0, count: 128)
    let got = fread(&buf, 1, 127, f)
    let pages = Int(String(decoding: buf.prefix(got).prefix { $0 != UInt8(ascii: " ") }, as: UTF8.self)) ?? 0
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// "Cpus_allowed_list" of a thread of this process (/proc/self/task/TID/status).
private func allowedCPUs(tid: pid_t) -> String {
    allowedCPUs(path: "/proc/self/task/\(tid)/status")
}

/// "Cpus_allowed_list" of the calling thread.
private func allowedCPUsOfThisThread() -> String {
    allowedCPUs(path: "/proc/thread-self/status")
}

private func allowedCPUs(path: String) -> String {
    guard let f = fopen(path, "r") else { return "?" }
    defer { fclose(f) }
    var line = [CChar](repeating: 0, count: 512)
    while fgets(&line, 512, f) != nil {
        let s = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if s.hasPrefix("Cpus_allowed_list:") {
            return s.dropFirst("Cpus_allowed_list:".count).trimmingCharacters()
        }
    }
    return "?"
}

/// Thread ids of this process whose name starts with `prefix`.
private func threadIDs(named prefix: String) -> [pid_t] {
    guard let dir = opendir("/proc/self/task") else { return [] }
    defer { closedir(dir) }
    var out: [pid_t] = []
    while let e = readdir(dir) {
        let tid = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        guard let n = pid_t(tid), let f = fopen("/proc/self/task/\(tid)/comm", "r") else { continue }
        var buf = [UInt8](repeating: 0, count: 64)
        let got = fread(&buf, 1, 63, f)
        fclose(f)
        if String(decoding: buf.prefix(got), as: UTF8.self).hasPrefix(prefix) { out.append(n) }
    }
    return out
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(self.drop { $0 == " " || $0 == "\t" }.prefix { $0 != "\n" && $0 != " " })
    }
}

@Suite("Proactor watcher (Watcher)", .serialized)
struct WatcherTests {
    @Test("[WAT-1] the watcher has no thread of its own and no event loop: it runs on the runtime")
    func noThreads() throws {
        let rt = try AioRuntime(configuration: .init(taskThreads: 2, name: "wat1"))
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let (s0, p0) = try streamPair(rt)  // the poller starts here
        defer { close(p0) }
        let before = threadIDs(named: "wat1").count
        let watchers = try (0..<5).map { _ in try Watcher(runtime: rt) }
        for w in watchers { try w.read("ctx", s0, nil) }
        #expect(threadIDs(named: "wat1").count == before, "watchers started threads")
        FacadeNet.writeAll(p0, [1, 2, 3])
        let got = try collect(watchers[0], 1)
        #expect(got.count == 1 && got.first?.size == 3)
        for w in watchers { try w.close() }
        #expect(throws: AioError.invalidArgument) { _ = try Watcher(runtime: rt, swapBufferSize: 0) }
        s0.close()
    }

    @Test("[WAT-2] exactly one result per operation, contexts unchanged, in completion order")
    func resultsAndOrder() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        var streams: [(SocketStream, Int32)] = []
        for _ in 0..<3 { streams.append(try streamPair(rt)) }
        defer { for (s, p) in streams { s.close(); close(p) } }
        for (i, (s, _)) in streams.enumerated() { try w.read("read-\(i)", s, mem.make(16)) }
        for i in [2, 0, 1] {
            FacadeNet.writeAll(streams[i].1, [UInt8(i)])
            sleepMillis(20)  // complete one after the other
        }
        sleepMillis(50)
        let batch = try collect(w, 3)
        #expect(batch.map { $0.context as? String } == ["read-2", "read-0", "read-1"])
        #expect(batch.allSatisfy { $0.operation == .read && $0.error == nil && $0.size == 1 && !$0.isSwapBuffer })

        // Many operations of both kinds: one result each.
        var expected = Set<Int>()
        let payload = mem.make([UInt8](repeating: 0x5A, count: 100))
        for k in 0..<300 {
            let (s, _) = streams[k % 3]
            try w.write(k, s, UnsafeRawBufferPointer(payload))
            expected.insert(k)
        }
        let results = try collect(w, 300)
        #expect(results.count == 300)
        let contexts = results.compactMap { $0.context as? Int }
        #expect(Set(contexts) == expected && contexts.count == 300)
        #expect(results.allSatisfy { $0.operation == .write && $0.error == nil && $0.size == 100 })
        // The peers got every byte.
        for (_, p) in streams { #expect(FacadeNet.readExactly(p, 100 * 100)?.count == 100 * 100) }
        #expect(try w.closeAfterCheckingNothingIsQueued() == 0, "more results than operations")
    }

    @Test("[WAT-3] read completes with some bytes; a peer's close is .connectionShutdown")
    func readSome() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        let (s, p) = try streamPair(rt)
        defer { s.close() }
        let buf = mem.make(1000)
        try w.read(nil, s, buf)
        FacadeNet.writeAll(p, [1, 2, 3, 4, 5])
        let r = try collect(w, 1)
        #expect(r.count == 1)
        #expect(r[0].size == 5 && r[0].error == nil && r[0].context == nil)
        #expect(r[0].buffer.baseAddress == UnsafeRawPointer(buf.baseAddress) && r[0].buffer.count == 1000)
        #expect(Array(r[0].buffer[0..<5]) == [1, 2, 3, 4, 5])
        #expect(r[0].stream === s)
        #expect(throws: AioError.invalidArgument) { try w.read(nil, s, mem.make(0)) }
        try w.read("eof", s, nil)
        close(p)
        let e = try collect(w, 1)
        #expect(e.count == 1 && e[0].error == .connectionShutdown && e[0].size == 0)
        try w.close()
    }

    @Test("[WAT-4] swap buffers: filled only when data is there, unchanged until the next waitIO")
    func swapBuffers() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        let w = try Watcher(runtime: rt, swapBufferSize: 4096)
        let (s, p) = try streamPair(rt)
        defer { s.close(); close(p) }
        try w.read("a", s, nil)
        FacadeNet.writeAll(p, Array("hello".utf8))
        let first = try collect(w, 1)
        #expect(first.count == 1)
        let r = first[0]
        #expect(r.isSwapBuffer && r.size == 5 && r.buffer.count == 4096 && r.error == nil)
        #expect(Array(r.buffer[0..<5]) == Array("hello".utf8))
        // More reads complete (into other swap buffers) before the next waitIO: r's stays unchanged.
        let saved = Array(r.buffer[0..<r.size])
        for _ in 0..<4 {
            try w.read("b", s, nil)
            FacadeNet.writeAll(p, [UInt8](repeating: 0xEE, count: 3000))
            sleepMillis(20)
        }
        #expect(Array(r.buffer[0..<r.size]) == saved, "a swap buffer changed before the next waitIO()")
        let more = try collect(w, 4)
        #expect(more.reduce(0) { $0 + $1.size } == 12_000)
        #expect(more.allSatisfy { $0.isSwapBuffer && $0.buffer.baseAddress != r.buffer.baseAddress })
        try w.close()
    }

    @Test("[WAT-4] idle swap reads hold no buffer")
    func idleSwapReadsHoldNoBuffer() throws {
        let rt = try makeRuntime()
        defer { rt.shutdown() }
        // 64 MiB swap buffers: 200 idle reads would reserve 12.5 GiB if each took one.
        let w = try Watcher(runtime: rt, swapBufferSize: 64 << 20)
        var pairs: [(SocketStream, Int32)] = []
        for _ in 0..<200 { pairs.append(try streamPair(rt)) }
        defer { for (s, p) in pairs { s.close(); close(p) } }
        let before = virtualBytes()
        for (i, (s, _)) in pairs.enumerated() { try w.read(i, s, nil) }
        sleepMillis(50)
        let after = virtualBytes()
        #expect(after - before < 2 << 30, "idle swap reads took buffers (\(after - before) bytes)")
        FacadeNet.writeAll(pairs[17].1, [42])
        let r = try collect(w, 1)
        #expect(r.count == 1 && r[0].context as? Int == 17 && r[0].buffer.count == 64 << 20 && r[0].buffer[0] == 42)
        try w.close()
    }

    @Test("[WAT-4][WAT-2] an echo server on 500 connections with swap buffers, byte for byte")
    func echoServer500() throws {
        let rt = try makeRuntime(taskThreads: 2)
        defer { rt.shutdown() }
        let connections = 500
        let w = try Watcher(runtime: rt, swapBufferSize: 16 << 10)
        var streamList: [SocketStream] = []
        var peerList: [Int32] = []
        for _ in 0..<connections {
            let (s, p) = try streamPair(rt)
            streamList.append(s)
            peerList.append(p)
        }
        let streams = streamList
        let peers = peerList
        let sizes = (0..<connections).map { _ in Int.random(in: 1...(48 << 10)) }
        let total = sizes.reduce(0, +)
        // The server, gaio style: every read goes to a swap buffer, is copied
        // for the write, and the next read is submitted at once.
        final class Pending: @unchecked Sendable {  // owned by the server loop
            let bytes: UnsafeMutableRawBufferPointer
            init(_ src: UnsafeRawBufferPointer) {
                bytes = .allocate(byteCount: src.count, alignment: 1)
                bytes.copyMemory(from: src)
            }
            deinit { bytes.deallocate() }
        }
        let echoed = Atomic<Int>(0)
        let failures = Counter()
        let notSwap = Counter()
        let server = FacadeNet.spawn {
            var inFlight: [ObjectIdentifier: Pending] = [:]
            do {
                for (i, s) in streams.enumerated() { try w.read(i, s, nil) }
                while true {
                    for r in try w.waitIO() {
                        if let e = r.error {
                            if e != .closed && e != .connectionShutdown { failures.increment() }
                            continue
                        }
                        switch r.operation {
                        case .read:
                            if !r.isSwapBuffer || r.buffer.count != 16 << 10 { notSwap.increment() }
                            let pending = Pending(UnsafeRawBufferPointer(rebasing: r.buffer[0..<r.size]))
                            inFlight[ObjectIdentifier(pending)] = pending
                            try w.write(pending, r.stream, UnsafeRawBufferPointer(pending.bytes))
                            try w.read(r.context, r.stream, nil)
                        case .write:
                            let pending = r.context as! Pending
                            inFlight[ObjectIdentifier(pending)] = nil
                            echoed.add(r.size, ordering: .relaxed)
                        }
                    }
                }
            } catch let e as AioError where e == .closed {
                // The watcher was closed: the end.
            } catch {
                failures.increment()
            }
        }
        // Clients: 8 threads, each connection sends its payload and reads it back.
        let mismatches = Counter()
        concurrently(8) { t in
            for i in stride(from: t, to: connections, by: 8) {
                let payload = FacadeNet.randomBytes(sizes[i])
                guard FacadeNet.writeAll(peers[i], payload),
                    let back = FacadeNet.readExactly(peers[i], payload.count, within: 30), back == payload
                else {
                    mismatches.increment()
                    continue
                }
            }
        }
        #expect(mismatches.count == 0, "echoes differed or were short")
        #expect(eventually(within: 30) { echoed.load(ordering: .relaxed) == total }, "the server wrote less than it read")
        for s in streams { try w.free(s) }
        try w.close()  // wakes the server's waitIO
        server()
        #expect(failures.count == 0)
        #expect(notSwap.count == 0, "a read with no buffer did not land in a swap buffer")
        for p in peers { close(p) }
    }

    @Test("[WAT-5] readFull and write loop over partial transfers; empty buffers are refused")
    func fullTransfers() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        let (s, p) = try streamPair(rt)
        defer { s.close(); close(p) }
        let buf = mem.make(10_000)
        try w.readFull("full", s, buf, deadline: nil)
        let payload = FacadeNet.randomBytes(10_000)
        for k in 0..<10 {
            FacadeNet.writeAll(p, Array(payload[(k * 1000)..<((k + 1) * 1000)]))
            sleepMillis(5)
        }
        let r = try collect(w, 1)
        #expect(r.count == 1 && r[0].size == 10_000 && r[0].error == nil)
        #expect(Array(buf) == payload)
        // A write larger than the socket buffers completes whole once the peer reads.
        let big = FacadeNet.randomBytes(8 << 20)
        let out = mem.make(big)
        try w.write("big", s, UnsafeRawBufferPointer(out))
        let back = FacadeNet.readExactly(p, big.count, within: 30)
        #expect(back == big)
        let wr = try collect(w, 1)
        #expect(wr.count == 1 && wr[0].size == big.count && wr[0].error == nil && wr[0].context as? String == "big")
        #expect(throws: AioError.invalidArgument) { try w.readFull(nil, s, mem.make(0), deadline: nil) }
        #expect(throws: AioError.invalidArgument) { try w.write(nil, s, UnsafeRawBufferPointer(mem.make(0))) }
        try w.close()
    }

    @Test("[WAT-6] deadlines end operations with .timedOut and the bytes moved")
    func deadlines() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        let (s, p) = try streamPair(rt)
        defer { s.close(); close(p) }
        // readFull: 300 of 1,000 bytes, then the deadline.
        let buf = mem.make(1000)
        try w.readFull("rf", s, buf, deadline: .now + .milliseconds(200))
        FacadeNet.writeAll(p, [UInt8](repeating: 7, count: 300))
        let r = try collect(w, 1)
        #expect(r.count == 1 && r[0].error == .timedOut && r[0].size == 300)
        #expect(buf[0..<300].allSatisfy { $0 == 7 })
        // The stream is still usable, with no byte lost.
        try w.readFull("rest", s, UnsafeMutableRawBufferPointer(rebasing: buf[300..<1000]), deadline: nil)
        FacadeNet.writeAll(p, [UInt8](repeating: 8, count: 700))
        let rest = try collect(w, 1)
        #expect(rest.count == 1 && rest[0].error == nil && rest[0].size == 700)
        // readTimeout into a swap buffer with nothing to read.
        try w.readTimeout("rt", s, nil, deadline: .now + .milliseconds(100))
        let t = try collect(w, 1)
        #expect(t.count == 1 && t[0].error == .timedOut && t[0].size == 0 && t[0].isSwapBuffer)
        // A deadline already past.
        try w.readTimeout("past", s, mem.make(10), deadline: .now - .seconds(1))
        let past = try collect(w, 1)
        #expect(past.count == 1 && past[0].error == .timedOut)
        // writeTimeout to a peer that does not read: some bytes moved, then .timedOut.
        let big = mem.make(64 << 20, fill: 1)
        try w.writeTimeout("wt", s, UnsafeRawBufferPointer(big), deadline: .now + .milliseconds(300))
        let wt = try collect(w, 1)
        #expect(wt.count == 1 && wt[0].error == .timedOut)
        #expect(wt[0].size > 0 && wt[0].size < big.count)
        try w.close()
    }

    @Test("[WAT-7] free ends the stream's pending operations with .closed and closes it")
    func free() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        let (s, p) = try streamPair(rt)
        defer { close(p) }
        try w.read(1, s, nil)
        try w.readFull(2, s, mem.make(100), deadline: nil)
        try w.write(3, s, UnsafeRawBufferPointer(mem.make(64 << 20, fill: 3)))  // cannot complete: the peer does not read
        sleepMillis(50)
        try w.free(s)
        #expect(s.descriptor == -1)
        let r = try collect(w, 3)
        #expect(r.count == 3)
        #expect(Set(r.compactMap { $0.context as? Int }) == [1, 2, 3])
        #expect(r.allSatisfy { $0.error == .closed })
        // The peer sees the close (after what the write had moved).
        #expect(eventually(within: 10) { FacadeNet.readAvailable(p).eof }, "the stream was not closed")
        try w.close()
    }

    @Test("[WAT-8] close ends pending operations and wakes waitIO; later calls throw .closed")
    func closeWatcher() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        let (s, p) = try streamPair(rt)
        defer { s.close(); close(p) }
        let woke = Box<AioError?>(nil)
        let waiter = FacadeNet.spawn {
            do {
                _ = try w.waitIO()
            } catch let e as AioError {
                woke.value = e
            } catch {}
        }
        try w.read(nil, s, mem.make(10))
        sleepMillis(50)
        try w.close()
        waiter()
        #expect(woke.value == .closed)
        #expect(throws: AioError.closed) { _ = try w.waitIO() }
        #expect(throws: AioError.closed) { try w.read(nil, s, nil) }
        #expect(throws: AioError.closed) { try w.write(nil, s, UnsafeRawBufferPointer(mem.make(1))) }
        #expect(throws: AioError.closed) { try w.free(s) }
        #expect(throws: AioError.closed) { try w.close() }
        // The stream was not closed and its pending read is over: it still works.
        #expect(s.descriptor >= 0)
        let h = AioHandle(runtime: rt)
        let b = mem.make(4)
        try h.setIOV([AioIOV(b)])
        s.receive(h)
        FacadeNet.writeAll(p, [1, 2])
        h.wait()
        #expect(h.error == nil && h.count == 2)
    }

    @Test("[WAT-9] affinity: the waitIO thread and the poller threads are pinned; no such CPU is .invalidArgument")
    func affinity() throws {
        let rt = try AioRuntime(configuration: .init(taskThreads: 2, name: "wat9"))
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        #expect(throws: AioError.invalidArgument) { try w.setLoopAffinity(-1) }
        #expect(throws: AioError.invalidArgument) { try w.setLoopAffinity(1 << 20) }
        #expect(throws: AioError.invalidArgument) { try w.setPollerAffinity(-1) }
        #expect(throws: AioError.invalidArgument) { try w.setPollerAffinity(1 << 20) }
        let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))
        #expect(throws: AioError.invalidArgument) { try w.setLoopAffinity(cpus) }
        let (s, p) = try streamPair(rt)
        defer { s.close(); close(p) }
        // A CPU this process may use (the first of the allowed list).
        let allowed = allowedCPUsOfThisThread()
        let cpu = Int(allowed.prefix { $0.isNumber }) ?? 0
        try w.setPollerAffinity(cpu)
        let pollers = threadIDs(named: "wat9-poll")
        #expect(!pollers.isEmpty)
        for t in pollers { #expect(allowedCPUs(tid: t) == "\(cpu)") }
        // The loop: a thread of its own calls waitIO (pinning changes that thread).
        try w.setLoopAffinity(cpu)
        let seen = Box("?")
        let loop = FacadeNet.spawn {
            _ = try? w.waitIO()
            seen.value = allowedCPUsOfThisThread()
        }
        try w.read(nil, s, mem.make(1))
        FacadeNet.writeAll(p, [1])
        loop()
        #expect(seen.value == "\(cpu)")
        try w.close()
    }

    @Test("[WAT-10] operations on one stream in one direction complete in the order submitted")
    func perStreamOrder() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt)
        let (s, p) = try streamPair(rt)
        defer { s.close(); close(p) }
        let b2 = mem.make(5)
        try w.read("swap", s, nil)
        try w.readFull("full", s, b2, deadline: nil)
        try w.read("third", s, mem.make(100))
        FacadeNet.writeAll(p, Array("first".utf8))
        sleepMillis(30)
        FacadeNet.writeAll(p, Array("secondthird".utf8))
        let r = try collect(w, 3)
        #expect(r.map { $0.context as? String } == ["swap", "full", "third"])
        #expect(String(decoding: r[0].buffer[0..<r[0].size], as: UTF8.self) == "first")
        #expect(String(decoding: r[1].buffer[0..<r[1].size], as: UTF8.self) == "secon")
        #expect(String(decoding: r[2].buffer[0..<r[2].size], as: UTF8.self) == "dthird")
        // Writes: three in a row arrive in order.
        for (i, text) in ["one,", "two,", "three"].enumerated() {
            try w.write(i, s, UnsafeRawBufferPointer(mem.make(Array(text.utf8))))
        }
        #expect(FacadeNet.readExactly(p, 13).map { String(decoding: $0, as: UTF8.self) } == "one,two,three")
        let wr = try collect(w, 3)
        #expect(wr.map { $0.context as? Int } == [0, 1, 2])
        try w.close()
    }

    @Test("[WAT-11] streams other than SocketStream work through their own receive and send")
    func otherStreams() throws {
        let rt = try makeRuntime()
        let mem = Memory()
        defer { rt.shutdown(); mem.freeAll() }
        let w = try Watcher(runtime: rt, swapBufferSize: 1024)
        let (inner, p) = try streamPair(rt)
        defer { close(p) }
        let wrapped = Wrapped(inner)
        try w.readFull("full", wrapped, mem.make(3000), deadline: nil)
        let payload = FacadeNet.randomBytes(3000)
        for k in 0..<3 {
            FacadeNet.writeAll(p, Array(payload[(k * 1000)..<((k + 1) * 1000)]))
            sleepMillis(10)
        }
        let r = try collect(w, 1)
        #expect(r.count == 1 && r[0].size == 3000 && Array(r[0].buffer) == payload)
        #expect(r[0].stream === wrapped)
        try w.read("swap", wrapped, nil)
        FacadeNet.writeAll(p, [9, 8])
        let sw = try collect(w, 1)
        #expect(sw.count == 1 && sw[0].isSwapBuffer && Array(sw[0].buffer[0..<sw[0].size]) == [9, 8])
        let out = mem.make(payload)
        try w.write("w", wrapped, UnsafeRawBufferPointer(out))
        #expect(FacadeNet.readExactly(p, 3000) == payload)
        let wr = try collect(w, 1)
        #expect(wr.count == 1 && wr[0].size == 3000 && wr[0].error == nil)
        try w.read("pending", wrapped, nil)
        try w.free(wrapped)
        let fr = try collect(w, 1)
        #expect(fr.count == 1 && fr[0].error == .closed)
        try w.close()
    }
}

/// An `AioStream` that is not a `SocketStream`: forwards to one (one transfer per call).
private final class Wrapped: AioStream {
    let inner: SocketStream
    init(_ inner: SocketStream) { self.inner = inner }
    func send(_ aio: AioHandle) { inner.send(aio) }
    func receive(_ aio: AioHandle) { inner.receive(aio) }
    func close() { inner.close() }
}

extension Watcher {
    /// Waits 50 ms in `waitIO()` on another thread, then closes the watcher
    /// (which wakes it): the number of results that wait returned.
    fileprivate func closeAfterCheckingNothingIsQueued() throws -> Int {
        let got = Counter()
        let t = FacadeNet.spawn { [self] in
            if let r = try? self.waitIO() { got.increment(); _ = r }
        }
        sleepMillis(50)
        let n = got.count
        try close()
        t()
        return n
    }
}
