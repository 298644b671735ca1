import AioKit
import Glibc
import Synchronization
import Testing

// Specs/Files.md: asynchronous file I/O ([FILE-1]..[FILE-14]), through the
// public surface only, every test on both backends (io_uring and the blocking
// threads), each on a private runtime with the backend forced. Where the
// system refuses io_uring, the io_uring case of a test records that and
// passes: the fallback is what runs there.
//
// Files are made under $TMPDIR (or /tmp), named with the process id and a
// counter, and removed at the end of each test. Callbacks only record what
// they see; expectations run on the test's thread; every wait is bounded.
//
// Two tests need operations to stay queued (not yet handed to the kernel):
// on io_uring, submission happens in a round on a task thread, so they block
// both task threads of their runtime (callbacks waiting on a `Gate`) while
// they start, cancel or close. The thread backend has its own threads, which
// nothing here can hold: there the same tests accept either outcome
// (canceled while queued, or completed by the thread that had taken it).

// MARK: - Helpers (private to this file)

private enum Backend: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case uring, threads
    var testDescription: String { rawValue }
    var setting: AioRuntime.FileBackend { self == .uring ? .uring : .threads }
}

private let fileCounter = Counter()

/// A fresh path under $TMPDIR (or /tmp).
private func tempPath(_ tag: String) -> String {
    var dir = "/tmp"
    if let t = getenv("TMPDIR"), t.pointee != 0 { dir = String(cString: t) }
    return "\(dir)/aiokit-file-\(getpid())-\(fileCounter.increment())-\(tag)"
}

/// A thread-safe list of results.
private final class Results: Sendable {
    private let box = Box<[(AioError?, Int)]>([])
    func add(_ h: AioHandle) { let r = (h.error, h.count); box.mutate { $0.append(r) } }
    var all: [(AioError?, Int)] { box.value }
    var count: Int { box.value.count }
}

/// A one-shot gate that callbacks wait on (bounded: 30 s).
private final class Gate: @unchecked Sendable {  // `open` guarded by `mutex`
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var isOpen = false
    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }
    func open() {
        pthread_mutex_lock(&mutex)
        isOpen = true
        pthread_cond_broadcast(&cond)
        pthread_mutex_unlock(&mutex)
    }
    func pass() {
        let end = now() + 30
        pthread_mutex_lock(&mutex)
        while !isOpen && now() < end {
            pthread_mutex_unlock(&mutex)
            sleepMillis(1)
            pthread_mutex_lock(&mutex)
        }
        pthread_mutex_unlock(&mutex)
    }
}

/// A private runtime with the file backend forced, and the files and buffers
/// of one test; `finish()` closes the files, shuts the runtime down (bounded),
/// then frees the buffers and removes the files.
private final class FileFixture {
    let rt: AioRuntime
    let backend: Backend
    private var paths: [String] = []
    private var buffers: [UnsafeMutableRawBufferPointer] = []
    private var files: [AioFile] = []
    private var finished = false

    /// nil (after a note) when io_uring is forced and the system refuses it.
    static func make(_ backend: Backend, taskThreads: Int = 2, name: String = "aft") throws -> FileFixture? {
        var c = AioRuntime.Configuration(taskThreads: taskThreads, name: name)
        c.fileBackend = backend.setting
        let rt = try AioRuntime(configuration: c)
        guard let used = rt.fileBackendInUse else {
            rt.shutdown()
            #expect(backend == .uring, "the thread backend must always be available")
            print("FileTests: io_uring is not available here; its cases test nothing")
            return nil
        }
        #expect(used == backend.setting)
        return FileFixture(rt: rt, backend: backend)
    }

    private init(rt: AioRuntime, backend: Backend) {
        self.rt = rt
        self.backend = backend
    }

    deinit { finish() }

    func finish(sourceLocation: SourceLocation = #_sourceLocation) {
        if finished { return }
        finished = true
        for f in files { f.close() }
        let rt = self.rt
        let done = finishes(within: 30) { rt.shutdown() }
        #expect(done, "the runtime's shutdown did not finish within 30 s", sourceLocation: sourceLocation)
        if done { for b in buffers { b.deallocate() } }
        for p in paths { unlink(p) }
    }

    /// A path that `finish()` removes.
    func path(_ tag: String) -> String {
        let p = tempPath(tag)
        paths.append(p)
        return p
    }

    func open(_ path: String, _ mode: AioFile.Mode) throws -> AioFile {
        let f = try AioFile(path: path, mode: mode, runtime: rt)
        files.append(f)
        return f
    }

    /// Writes `bytes` to `path` with plain pwrite (the file made or cut to them).
    func write(_ path: String, _ bytes: [UInt8]) throws {
        let fd = Glibc.open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
        try #require(fd >= 0)
        if !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
            try #require(n == bytes.count)
        }
        Glibc.close(fd)
    }

    /// The path of the last file made by `file(_:contents:mode:)`.
    private(set) var lastPath = ""

    /// A new file of `bytes` (written with plain pwrite) opened with `mode`.
    func file(_ tag: String, contents bytes: [UInt8], mode: AioFile.Mode = [.read, .write]) throws -> AioFile {
        let p = path(tag)
        try write(p, bytes)
        lastPath = p
        return try open(p, mode)
    }

    /// `count` zeroed bytes, freed by `finish()`.
    func buffer(_ count: Int) -> UnsafeMutableRawBufferPointer {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        buffers.append(b)
        return UnsafeMutableRawBufferPointer(rebasing: b[0..<count])
    }

    func buffer(_ bytes: [UInt8]) -> UnsafeMutableRawBufferPointer {
        let b = buffer(bytes.count)
        b.copyBytes(from: bytes)
        return b
    }

    func handle(_ callback: (@Sendable (AioHandle) -> Void)? = nil) -> AioHandle {
        AioHandle(runtime: rt, callback: callback)
    }

    /// `n` handles whose callback counts its calls in `calls` and records
    /// the handle's result in `results`.
    func recordingHandles(_ n: Int, _ calls: Counter, _ results: Results) -> [AioHandle] {
        (0..<n).map { _ in handle(recording(calls, results)) }
    }

    /// A callback that counts its calls in `calls` and records the handle's result in `results`.
    func recording(_ calls: Counter, _ results: Results) -> @Sendable (AioHandle) -> Void {
        { h in
            calls.increment()
            results.add(h)
        }
    }

    /// Starts `start` on a callback-less handle with `iov` and waits (bounded).
    @discardableResult
    func run(
        _ iov: [UnsafeMutableRawBufferPointer] = [], sourceLocation: SourceLocation = #_sourceLocation,
        _ start: (AioHandle) -> Void
    ) -> AioHandle {
        let h = handle()
        try? h.setIOV(iov.map { AioIOV($0) })
        start(h)
        let ok = eventually(within: 30) { !h.isBusy }
        #expect(ok, "the operation did not complete within 30 s", sourceLocation: sourceLocation)
        return h
    }

    /// Blocks both task threads of the runtime (two callbacks waiting on
    /// `gate`): rounds cannot run, io_uring operations stay queued.
    func blockTaskThreads(_ gate: Gate) -> [AioHandle] {
        let entered = Counter()
        let blockers = (0..<2).map { _ in
            handle { _ in
                entered.increment()
                gate.pass()
            }
        }
        for b in blockers { b.sleep(.zero) }
        #expect(eventually(within: 30) { entered.count == 2 }, "the task threads were not blocked")
        return blockers
    }
}

/// The bytes of a file, read with plain read(2) to its end (/proc files too).
private func contents(_ path: String) -> [UInt8] {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    if fd < 0 { return [] }
    defer { Glibc.close(fd) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}

/// Buffers shared with callbacks (the test frees them after the runtime's shutdown).
private final class Buffers: @unchecked Sendable {  // immutable; the memory is written only by the operations
    let list: [UnsafeMutableRawBufferPointer]
    init(_ list: [UnsafeMutableRawBufferPointer]) { self.list = list }
}

/// splitmix64: reproducible randomness.
private struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// The flags (octal, /proc/self/fdinfo) of the descriptor open on `path`, or nil.
private func descriptorFlags(openOn path: String) -> Int? {
    guard let dir = opendir("/proc/self/fd") else { return nil }
    defer { closedir(dir) }
    while let e = readdir(dir) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        guard let fd = Int32(name) else { continue }
        var target = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/fd/\(fd)", &target, target.count - 1)
        guard n > 0 else { continue }
        let linked = String(decoding: target[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard linked == path else { continue }
        let info = contents("/proc/self/fdinfo/\(fd)")
        for line in String(decoding: info, as: UTF8.self).split(separator: "\n") where line.hasPrefix("flags:") {
            return Int(line.dropFirst(6).trimmingCharacters(), radix: 8)
        }
    }
    return nil
}

extension Substring {
    fileprivate func trimmingCharacters() -> String {
        String(self.drop(while: { $0 == " " || $0 == "\t" }).reversed().drop(while: { $0 == " " || $0 == "\t" }).reversed())
    }
}

// MARK: - Tests

@Suite("Files: asynchronous file I/O on io_uring and blocking threads (Specs/Files.md)")
struct FileTests {
    @Test("[FILE-1] [FILE-14] open modes, directories and bad modes refused, descriptors close-on-exec", arguments: Backend.allCases)
    fileprivate func openModes(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let p = fx.path("modes")
        // Neither read nor write, truncate or append without write: refused before any system call.
        #expect(throws: AioError.invalidArgument) { try AioFile(path: p, mode: [.create], runtime: fx.rt) }
        #expect(throws: AioError.invalidArgument) { try AioFile(path: p, mode: [.read, .truncate], runtime: fx.rt) }
        #expect(throws: AioError.invalidArgument) { try AioFile(path: p, mode: [.read, .append], runtime: fx.rt) }
        #expect(throws: AioError.invalidArgument) { try AioFile(path: "/tmp\0x", mode: [.read], runtime: fx.rt) }
        // Without .create a missing file is not made.
        #expect(throws: AioError.addressInvalid) { try AioFile(path: p, mode: [.read, .write], runtime: fx.rt) }
        let f = try fx.open(p, [.write, .create])
        #expect(access(p, F_OK) == 0)
        let flags = try #require(descriptorFlags(openOn: p))
        #expect(flags & Int(O_CLOEXEC) != 0, "the descriptor is not close-on-exec")
        #expect(flags & Int(O_ACCMODE) == Int(O_WRONLY))
        f.close()
        #expect(descriptorFlags(openOn: p) == nil, "close() with nothing pending closes the descriptor")
        // A directory is refused, read-only too.
        #expect(throws: AioError.invalidArgument) { try AioFile(path: "/tmp", mode: [.read], runtime: fx.rt) }
        // Truncate cuts the file; without it the bytes stay.
        let tp = fx.path("trunc")
        try fx.write(tp, bytes("some bytes"))
        try fx.open(tp, [.read, .write]).close()
        #expect(contents(tp) == bytes("some bytes"))
        try fx.open(tp, [.write, .truncate]).close()
        #expect(contents(tp).isEmpty)
    }

    @Test("[FILE-1] adopting a descriptor: its access mode rules, it is made close-on-exec, close() closes it", arguments: Backend.allCases)
    fileprivate func adopting(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        #expect(throws: AioError.invalidArgument) { try AioFile(adopting: -1, runtime: fx.rt) }
        let dirfd = Glibc.open("/tmp", O_RDONLY | O_DIRECTORY)
        #expect(throws: AioError.invalidArgument) { try AioFile(adopting: dirfd, runtime: fx.rt) }
        Glibc.close(dirfd)

        let p = fx.path("adopt")
        let fd = Glibc.open(p, O_CREAT | O_RDWR, 0o644)  // no O_CLOEXEC on purpose
        try #require(fd >= 0)
        var st = stat()
        fstat(fd, &st)
        let file = try AioFile(adopting: fd, runtime: fx.rt)
        #expect(fcntl(fd, F_GETFD) & FD_CLOEXEC != 0)
        let buf = fx.buffer(bytes("adopted"))
        let w = fx.run([buf]) { file.write($0, at: 0) }
        #expect(w.error == nil)
        #expect(w.count == 7)
        file.close()
        // The descriptor is closed: fstat fails, or the number names another file now.
        var after = stat()
        let closed = fstat(fd, &after) != 0 || after.st_ino != st.st_ino || after.st_dev != st.st_dev
        #expect(closed)
        #expect(contents(p) == bytes("adopted"))

        // A read-only descriptor refuses writes ([FILE-6]).
        let ro = Glibc.open(p, O_RDONLY)
        let rof = try AioFile(adopting: ro, runtime: fx.rt)
        let w2 = fx.run([fx.buffer(bytes("x"))]) { rof.write($0, at: 0) }
        #expect(w2.error == .notSupported)
        let r2 = fx.run([fx.buffer(16)]) { rof.read($0, at: 0) }
        #expect(r2.error == nil)
        #expect(r2.count == 7)
        rof.close()
    }

    @Test("[FILE-2] reads and writes at offsets, scattering and gathering over several buffers", arguments: Backend.allCases)
    fileprivate func offsetsAndIOV(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let f = try fx.file("offsets", contents: [])
        // Gather three buffers into one write at offset 10: the hole before reads as zeros.
        let parts = [fx.buffer(bytes("Hello, ")), fx.buffer(bytes("asynchronous ")), fx.buffer(bytes("files"))]
        let w = fx.run(parts) { f.write($0, at: 10) }
        #expect(w.error == nil)
        #expect(w.count == 25)
        // One buffer at another offset (overwrites "files" with "FILES").
        let w2 = fx.run([fx.buffer(bytes("FILES"))]) { f.write($0, at: 30) }
        #expect(w2.error == nil && w2.count == 5)
        // Scatter into buffers of 4, 1 and 20 bytes from offset 8.
        let a = fx.buffer(4), b = fx.buffer(1), c = fx.buffer(20)
        let r = fx.run([a, b, c]) { f.read($0, at: 8) }
        #expect(r.error == nil)
        #expect(r.count == 25)  // 27 bytes from offset 8 to the end, 25 fit
        #expect(Array(a) == [0, 0, UInt8(ascii: "H"), UInt8(ascii: "e")])
        #expect(Array(b) == [UInt8(ascii: "l")])
        #expect(Array(c) == bytes("lo, asynchronous FIL"))
        // The file as a whole.
        let expected = [UInt8](repeating: 0, count: 10) + bytes("Hello, asynchronous FILES")
        let all = fx.buffer(64)
        let r2 = fx.run([all]) { f.read($0, at: 0) }
        #expect(r2.count == 35)
        #expect(Array(all[0..<35]) == expected)
        // Many single-buffer transfers at scattered offsets.
        for i in 0..<20 {
            let off = Int64((i * 7919) % 4096)
            let data = fx.buffer(bytes("#\(i)#"))
            let wi = fx.run([data]) { f.write($0, at: off) }
            #expect(wi.error == nil && wi.count == data.count)
            let back = fx.buffer(data.count)
            let ri = fx.run([back]) { f.read($0, at: off) }
            #expect(ri.error == nil && ri.count == data.count)
            #expect(Array(back) == Array(data))
        }
    }

    @Test("[FILE-2] [FILE-12] bad input: negative offsets, empty iovs, zero-length buffers end with .invalidArgument", arguments: Backend.allCases)
    fileprivate func badInput(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let f = try fx.file("bad", contents: bytes("0123456789"))
        let calls = Counter()
        let results = Results()
        let cb = fx.recording(calls, results)
        // Negative offsets, reads and writes.
        let h1 = fx.handle(cb)
        try h1.setIOV([AioIOV(fx.buffer(4))])
        f.read(h1, at: -1)
        #expect(eventually { calls.count == 1 })
        f.write(h1, at: Int64.min)
        #expect(eventually { calls.count == 2 })
        // No buffers at all, and only empty ones.
        let h2 = fx.handle(cb)
        f.read(h2, at: 0)
        #expect(eventually { calls.count == 3 })
        try h2.setIOV([AioIOV(fx.buffer(0)), AioIOV(fx.buffer(0))])
        f.write(h2, at: 0)
        #expect(eventually { calls.count == 4 })
        // An offset so large that offset + length overflows.
        try h2.setIOV([AioIOV(fx.buffer(8))])
        f.write(h2, at: Int64.max - 3)
        #expect(eventually { calls.count == 5 })
        sleepMillis(20)
        #expect(calls.count == 5, "each callback runs once")
        for (e, n) in results.all {
            #expect(e == .invalidArgument)
            #expect(n == 0)
        }
        // The file is untouched and still usable.
        #expect(contents(fx.lastPath) == bytes("0123456789"))
        let r = fx.run([fx.buffer(10)]) { f.read($0, at: 0) }
        #expect(r.error == nil && r.count == 10)
    }

    @Test("[FILE-3] reads at or past the end of the file give count 0; a read across it gives the bytes there", arguments: Backend.allCases)
    fileprivate func endOfFile(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let f = try fx.file("eof", contents: bytes("0123456789"))
        let buf = fx.buffer(8)
        let across = fx.run([buf]) { f.read($0, at: 6) }
        #expect(across.error == nil)
        #expect(across.count == 4)
        #expect(Array(buf[0..<4]) == bytes("6789"))
        let at = fx.run([fx.buffer(8)]) { f.read($0, at: 10) }
        #expect(at.error == nil)
        #expect(at.count == 0)
        let past = fx.run([fx.buffer(8)]) { f.read($0, at: 1 << 40) }
        #expect(past.error == nil)
        #expect(past.count == 0)
        // Scatter across the end: the first buffer fills, the second gets the rest.
        let a = fx.buffer(3), b = fx.buffer(8)
        let sc = fx.run([a, b]) { f.read($0, at: 5) }
        #expect(sc.error == nil && sc.count == 5)
        #expect(Array(a) == bytes("567") && Array(b[0..<2]) == bytes("89"))
        // An empty file.
        let e = try fx.file("empty", contents: [])
        let r = fx.run([fx.buffer(1)]) { e.read($0, at: 0) }
        #expect(r.error == nil && r.count == 0)
    }

    @Test("[FILE-4] in append mode every write goes to the end of the file, whatever its offset", arguments: Backend.allCases)
    fileprivate func appendMode(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let p = fx.path("append")
        let f = try fx.open(p, [.write, .append, .create])
        for (i, word) in ["one ", "two ", "three"].enumerated() {
            let w = fx.run([fx.buffer(bytes(word))]) { f.write($0, at: Int64(i == 1 ? 0 : 100)) }
            #expect(w.error == nil && w.count == word.utf8.count)
        }
        #expect(contents(p) == bytes("one two three"))
        // Reading is refused: the file was opened for writing only ([FILE-6]).
        let r = fx.run([fx.buffer(4)]) { f.read($0, at: 0) }
        #expect(r.error == .notSupported)
    }

    @Test("[FILE-5] sync: fsync completes with count 0, on writable and read-only files", arguments: Backend.allCases)
    fileprivate func sync(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let f = try fx.file("sync", contents: [])
        let w = fx.run([fx.buffer(bytes("durable"))]) { f.write($0, at: 0) }
        #expect(w.error == nil)
        let s = fx.run { f.sync($0) }
        #expect(s.error == nil)
        #expect(s.count == 0)
        // A sync ignores the iov.
        let s2 = fx.run([fx.buffer(8)]) { f.sync($0) }
        #expect(s2.error == nil && s2.count == 0)
        let ro = try fx.file("sync-ro", contents: bytes("x"), mode: [.read])
        let s3 = fx.run { ro.sync($0) }
        #expect(s3.error == nil)
        f.close()
        let s4 = fx.run { f.sync($0) }
        #expect(s4.error == .closed)
    }

    @Test("[FILE-6] [FILE-12] a file opened read-only refuses writes with .notSupported, write-only refuses reads", arguments: Backend.allCases)
    fileprivate func accessModes(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let ro = try fx.file("ro", contents: bytes("read only"), mode: [.read])
        let w = fx.run([fx.buffer(bytes("no"))]) { ro.write($0, at: 0) }
        #expect(w.error == .notSupported)
        #expect(w.count == 0)
        let r = fx.run([fx.buffer(9)]) { ro.read($0, at: 0) }
        #expect(r.error == nil && r.count == 9)
        let wo = try fx.file("wo", contents: [], mode: [.write])
        let r2 = fx.run([fx.buffer(4)]) { wo.read($0, at: 0) }
        #expect(r2.error == .notSupported)
        let w2 = fx.run([fx.buffer(bytes("ok"))]) { wo.write($0, at: 0) }
        #expect(w2.error == nil && w2.count == 2)
    }

    @Test("[FILE-12] open errors: a missing path .addressInvalid, a directory .invalidArgument, no permission .system(EACCES)", arguments: Backend.allCases)
    fileprivate func openErrors(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        #expect(throws: AioError.addressInvalid) { try AioFile(path: "/nonexistent-aiokit/x", mode: [.read], runtime: fx.rt) }
        #expect(throws: AioError.addressInvalid) { try AioFile(path: "", mode: [.read], runtime: fx.rt) }
        let p = fx.path("notadir")
        _ = try fx.file("notadir-src", contents: [])
        let fd = Glibc.open(p, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
        Glibc.close(fd)
        #expect(throws: AioError.addressInvalid) { try AioFile(path: p + "/below", mode: [.read], runtime: fx.rt) }
        #expect(throws: AioError.invalidArgument) { try AioFile(path: "/tmp", mode: [.read, .write], runtime: fx.rt) }
        if getuid() != 0 {
            let locked = fx.path("locked")
            let lfd = Glibc.open(locked, O_CREAT | O_WRONLY | O_CLOEXEC, 0o000)
            Glibc.close(lfd)
            #expect(throws: AioError.system(errno: EACCES)) { try AioFile(path: locked, mode: [.read], runtime: fx.rt) }
        }
    }

    @Test("[FILE-7] [AIO-2] 64 MiB written and read back in random chunks (4 KiB..1 MiB, 1-3 buffers) at random offsets from 32 handles at once", arguments: Backend.allCases)
    fileprivate func bigConcurrentTransfer(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let total = 64 << 20
        let f = try fx.file("big", contents: [])
        let source = fx.buffer(total)
        let back = fx.buffer(total)
        // The pattern: one splitmix64 value per 8 bytes.
        var rng = SplitMix(state: 0xA10_F11E)
        let words = source.bindMemory(to: UInt64.self)
        for i in 0..<words.count { words[i] = rng.next() }
        // Chunks: a random partition of the file, log-uniform sizes, shuffled.
        var chunks: [(offset: Int, pieces: [Int])] = []
        var at = 0
        while at < total {
            let exp = Int.random(in: 12...19, using: &rng)
            let size = min(total - at, Int.random(in: (1 << exp)...(2 << exp), using: &rng))
            // 1 to 3 buffers: cut at random points.
            let cuts = (0..<Int.random(in: 0...2, using: &rng)).map { _ in Int.random(in: 1..<size, using: &rng) }
            let bounds = [0] + Set(cuts).sorted() + [size]
            let pieces = zip(bounds, bounds.dropFirst()).map { $1 - $0 }
            chunks.append((at, pieces))
            at += size
        }
        chunks.shuffle(using: &rng)

        final class Run: @unchecked Sendable {  // immutable after init, but for the atomics and `failures` (its Box)
            let chunks: [(offset: Int, pieces: [Int])]
            let file: AioFile
            let memory: UnsafeMutableRawBufferPointer
            let writing: Bool
            let next = Atomic<Int>(0)
            let done = Counter()
            let callbacks = Counter()
            let failures = Box<[String]>([])
            init(_ chunks: [(offset: Int, pieces: [Int])], _ file: AioFile, _ memory: UnsafeMutableRawBufferPointer, writing: Bool) {
                self.chunks = chunks
                self.file = file
                self.memory = memory
                self.writing = writing
            }
            /// The callback: checks the operation that ended, starts the next one.
            func step(_ h: AioHandle) {
                callbacks.increment()
                let previous = h.iov.reduce(0) { $0 + $1.buffer.count }
                if !h.iov.isEmpty && (h.error != nil || h.count != previous) {
                    let e = "\(String(describing: h.error)) count \(h.count) of \(previous)"
                    failures.mutate { $0.append(e) }
                }
                let i = next.add(1, ordering: .relaxed).oldValue
                guard i < chunks.count else {
                    done.increment()
                    return
                }
                var iov: [AioIOV] = []
                var p = chunks[i].offset
                for piece in chunks[i].pieces {
                    iov.append(AioIOV(UnsafeMutableRawBufferPointer(rebasing: memory[p..<p + piece])))
                    p += piece
                }
                try? h.setIOV(iov)
                if writing {
                    file.write(h, at: Int64(chunks[i].offset))
                } else {
                    file.read(h, at: Int64(chunks[i].offset))
                }
            }
        }
        for writing in [true, false] {
            let run = Run(chunks, f, writing ? source : back, writing: writing)
            let handles = (0..<32).map { _ in fx.handle { h in run.step(h) } }
            for h in handles { run.step(h) }  // the first operation of each, from this thread
            let finished = eventually(within: 45) { run.done.count == handles.count }
            #expect(finished, "\(writing ? "writes" : "reads") did not finish: \(run.next.load(ordering: .relaxed)) of \(chunks.count) started")
            #expect(run.failures.value.isEmpty, "\(run.failures.value.prefix(5))")
            // One call per operation (its callback) and one per handle from here.
            #expect(run.callbacks.count == chunks.count + handles.count, "each callback once per operation")
            for h in handles { h.stop() }
        }
        #expect(memcmp(source.baseAddress!, back.baseAddress!, total) == 0, "the data read back differs from the data written")
    }

    @Test("[FILE-7] [FILE-11] operations started together from one callback all complete, callbacks on the runtime's task threads", arguments: Backend.allCases)
    fileprivate func batchFromCallback(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend, name: "fbt") else { return }
        defer { fx.finish() }
        let n = 64
        let f = try fx.file("batch", contents: (0..<(n * 512)).map { UInt8(truncatingIfNeeded: $0 / 512) })
        let results = Box<[Int: (AioError?, Int, UInt8)]>([:])
        let onTaskThread = Counter()
        let bufs = Buffers((0..<n).map { _ in fx.buffer(512) })
        let readers: [AioHandle] = (0..<n).map { i in
            fx.handle { h in
                let name = String(decoding: contents("/proc/thread-self/comm"), as: UTF8.self)
                if name.hasPrefix("fbt-task") { onTaskThread.increment() }
                let r = (h.error, h.count, bufs.list[i][0])
                results.mutate { $0[i] = r }
            }
        }
        for (i, h) in readers.enumerated() { try h.setIOV([AioIOV(bufs.list[i])]) }
        let starter = fx.handle { _ in
            for (i, h) in readers.enumerated() { f.read(h, at: Int64(i * 512)) }
        }
        starter.sleep(.zero)
        #expect(eventually { results.value.count == n })
        #expect(onTaskThread.count == n)
        for i in 0..<n {
            let r = results.value[i]
            #expect(r?.0 == nil && r?.1 == 512 && r?.2 == UInt8(i))
        }
    }

    @Test("[FILE-15] io_uring: a small write started in a callback is done before the start returns; others wait for a round")
    fileprivate func writeFromCallbackAtOnce() throws {
        guard let fx = try FileFixture.make(.uring) else { return }
        defer { fx.finish() }
        let size = 256 << 10
        let f = try fx.file("inline-write", contents: [UInt8](repeating: 0, count: size))
        let small = fx.handle()
        let a = fx.buffer((0..<1000).map { UInt8(truncatingIfNeeded: $0 &+ 1) })
        let b = fx.buffer((0..<3096).map { UInt8(truncatingIfNeeded: $0 &* 3) })
        try small.setIOV([AioIOV(a), AioIOV(b)])
        let large = fx.handle()
        try large.setIOV([AioIOV(fx.buffer([UInt8](repeating: 9, count: 64 << 10)))])
        let seen = Box<[Bool]>([])
        let calls = Counter()
        let starter = fx.handle { _ in
            // In a callback, on a task thread.
            f.write(small, at: 8192)
            f.write(large, at: 65536)
            seen.value = [small.isBusy, large.isBusy]
            calls.increment()
        }
        starter.sleep(.zero)
        #expect(eventually { calls.count == 1 })
        #expect(seen.value == [false, true], "the small write was done at once, the large one waited for the ring")
        #expect(eventually { !small.isBusy && !large.isBusy })
        #expect(small.error == nil && small.count == 4096)
        #expect(large.error == nil && large.count == 64 << 10)
        let bytes = contents(fx.lastPath)
        #expect(Array(bytes[8192..<(8192 + 1000)]) == Array(a))
        #expect(Array(bytes[(8192 + 1000)..<(8192 + 4096)]) == Array(b))
        #expect(bytes[65536..<(65536 + (64 << 10))].allSatisfy { $0 == 9 })

        // From a thread that is not a task thread: through the ring (it waits
        // while both task threads are held, so no round can run).
        let gate = Gate()
        let blockers = fx.blockTaskThreads(gate)
        let outside = fx.handle()
        try outside.setIOV([AioIOV(fx.buffer([1, 2, 3]))])
        f.write(outside, at: 0)
        sleepMillis(20)
        #expect(outside.isBusy, "a write from another thread waits for a ring round")
        gate.open()
        #expect(eventually { !outside.isBusy })
        #expect(outside.error == nil && outside.count == 3)
        for blocker in blockers { blocker.stop() }

        // Its callback runs on a task thread after the starting callback returned.
        let order = Box<[String]>([])
        let withCallback = fx.handle { _ in order.mutate { $0.append("write callback") } }
        try withCallback.setIOV([AioIOV(fx.buffer([7]))])
        let chain = fx.handle { _ in
            f.write(withCallback, at: 5)
            order.mutate { $0.append("starter returns") }
        }
        chain.sleep(.zero)
        #expect(eventually { order.value.count == 2 })
        #expect(order.value == ["starter returns", "write callback"])
        #expect(withCallback.error == nil && withCallback.count == 1)
    }

    @Test("[FILE-8] cancel and timeout of queued operations end them at once; each callback runs once", arguments: Backend.allCases)
    fileprivate func cancelQueued(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let size = 64 << 10
        let f = try fx.file("cancel", contents: [UInt8](repeating: 7, count: size))
        let gate = Gate()
        // io_uring: with both task threads blocked no round runs, so nothing reaches the kernel.
        let blockers = backend == .uring ? fx.blockTaskThreads(gate) : []
        let calls = Counter()
        let results = Results()
        let count = 64
        let handles = fx.recordingHandles(count, calls, results)
        for (i, h) in handles.enumerated() {
            try h.setIOV([AioIOV(fx.buffer(size))])
            if i % 4 == 3 { h.timeout = .after(.milliseconds(1)) }
            f.read(h, at: 0)
        }
        for (i, h) in handles.enumerated() where i % 4 != 3 { h.cancel() }
        if backend == .uring { sleepMillis(50) }  // the timeouts may fire while still queued (not asserted)
        gate.open()
        #expect(eventually { calls.count == count })
        sleepMillis(20)
        #expect(calls.count == count, "each callback runs once")
        for r in results.all {
            let ok = r.0 == .canceled || r.0 == .timedOut || (r.0 == nil && r.1 == size)
            #expect(ok, "unexpected result \(String(describing: r.0)) count \(r.1)")
        }
        if backend == .uring {
            // Every canceled one was still queued (no round could run): canceled at once, none reached the kernel.
            #expect(results.all.filter { $0.0 == .canceled }.count == count - count / 4)
        }
        for b in blockers { b.stop() }
        // The file and the handles work afterwards.
        for h in handles { h.timeout = .infinite }
        let r = fx.run([fx.buffer(16)]) { f.read($0, at: 0) }
        #expect(r.error == nil && r.count == 16)
    }

    @Test("[FILE-8] cancel of operations in flight: canceled, or completed with their result; each callback once", arguments: Backend.allCases)
    fileprivate func cancelInFlight(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let size = 1 << 20
        let f = try fx.file("cancel2", contents: [UInt8](repeating: 9, count: size))
        let calls = Counter()
        let results = Results()
        for round in 0..<4 {
            let handles = fx.recordingHandles(32, calls, results)
            for h in handles {
                try h.setIOV([AioIOV(fx.buffer(size))])
                f.read(h, at: 0)
            }
            if round % 2 == 0 { sleepMillis(1) }
            for h in handles { h.cancel() }
            #expect(eventually { calls.count == 32 * (round + 1) })
        }
        sleepMillis(20)
        #expect(calls.count == 128, "each callback runs once")
        for r in results.all {
            #expect(r.0 == .canceled || (r.0 == nil && r.1 == size), "unexpected \(String(describing: r.0)) \(r.1)")
        }
    }

    @Test("[FILE-9] close with pending operations: each ends with .closed exactly once, later ones too, and the descriptor closes after them", arguments: Backend.allCases)
    fileprivate func closePending(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let size = 256 << 10
        let p = fx.path("close")
        let fd = Glibc.open(p, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        try #require(fd >= 0)
        try #require(ftruncate(fd, off_t(size)) == 0)
        var st = stat()
        fstat(fd, &st)
        let f = try AioFile(adopting: fd, runtime: fx.rt)
        let gate = Gate()
        let blockers = backend == .uring ? fx.blockTaskThreads(gate) : []
        let calls = Counter()
        let results = Results()
        let count = 96
        let handles = fx.recordingHandles(count, calls, results)
        for (i, h) in handles.enumerated() {
            try h.setIOV([AioIOV(fx.buffer(size))])
            switch i % 3 {
            case 0: f.read(h, at: 0)
            case 1: f.write(h, at: Int64(i))
            default: f.sync(h)
            }
        }
        f.close()
        f.close()  // again: nothing more
        gate.open()
        #expect(eventually { calls.count == count })
        sleepMillis(20)
        #expect(calls.count == count, "each callback runs once")
        let closed = results.all.filter { $0.0 == .closed }.count
        if backend == .uring {
            #expect(closed == count, "every pending operation ends with .closed")
        }
        for r in results.all {
            #expect(r.0 == .closed || r.0 == nil, "unexpected \(String(describing: r.0))")
        }
        for b in blockers { b.stop() }
        // Later operations: .closed.
        let late = fx.run([fx.buffer(8)]) { f.read($0, at: 0) }
        #expect(late.error == .closed)
        let lateSync = fx.run { f.sync($0) }
        #expect(lateSync.error == .closed)
        // The descriptor is closed once nothing references it.
        var after = stat()
        let gone = eventually { fstat(fd, &after) != 0 || after.st_ino != st.st_ino || after.st_dev != st.st_dev }
        #expect(gone, "the descriptor was not closed")
    }

    @Test("[FILE-9] close while operations are in the kernel or on a thread: .closed or done, each callback once", arguments: Backend.allCases)
    fileprivate func closeInFlight(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let size = 1 << 20
        for _ in 0..<4 {
            let f = try fx.file("close2", contents: [UInt8](repeating: 1, count: size))
            let calls = Counter()
            let results = Results()
            let handles = fx.recordingHandles(32, calls, results)
            for h in handles {
                try h.setIOV([AioIOV(fx.buffer(size))])
                f.read(h, at: 0)
            }
            f.close()
            #expect(eventually { calls.count == 32 })
            sleepMillis(5)
            #expect(calls.count == 32)
            for r in results.all { #expect(r.0 == .closed || (r.0 == nil && r.1 == size)) }
        }
    }

    @Test("[FILE-10] [FILE-14] backend choice, files outliving their last reference, shutdown", arguments: Backend.allCases)
    fileprivate func backendAndLifetime(_ backend: Backend) throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        #expect(fx.rt.fileBackendInUse == backend.setting)
        // Automatic: io_uring or threads, whichever runs here (or what AIOKIT_FILE_BACKEND says).
        let auto = try AioRuntime(configuration: .init(taskThreads: 1))
        let chosen = auto.fileBackendInUse
        #expect(chosen == .uring || chosen == .threads)
        auto.shutdown()
        #expect(auto.fileBackendInUse == nil)
        #expect(throws: AioError.stopped) { try AioFile(path: "/tmp/x", mode: [.read], runtime: auto) }

        // A pending operation keeps its file alive: no reference kept here.
        let p = fx.path("lifetime")
        let calls = Counter()
        let results = Results()
        let handles = fx.recordingHandles(8, calls, results)
        do {
            let f = try AioFile(path: p, mode: [.write, .create], runtime: fx.rt)
            for (i, h) in handles.enumerated() {
                try h.setIOV([AioIOV(fx.buffer(bytes("\(i)")))])
                f.write(h, at: Int64(i))
            }
        }
        #expect(eventually { calls.count == 8 })
        for r in results.all { #expect(r.0 == nil && r.1 == 1) }
        #expect(contents(p) == bytes("01234567"))
        #expect(eventually { descriptorFlags(openOn: p) == nil }, "a file released without close() closes its descriptor")

        // After shutdown: operations end with .stopped.
        let g = try fx.file("shutdown", contents: bytes("x"))
        fx.finish()
        let h = fx.handle()
        try h.setIOV([AioIOV(UnsafeMutableRawBufferPointer.allocate(byteCount: 1, alignment: 1))])
        g.read(h, at: 0)
        #expect(eventually { !h.isBusy })
        #expect(h.error == .stopped)
        h.iov[0].buffer.deallocate()
    }

    @Test("[FILE-10] shutdown with operations pending: each ends once (.stopped, or done); file threads start on first use and are joined", arguments: Backend.allCases)
    fileprivate func shutdownPending(_ backend: Backend) throws {
        // A name per backend: the two cases run at once, and each counts its own file threads.
        let runtimeName = backend == .uring ? "fsdu" : "fsdt"
        guard let fx = try FileFixture.make(backend, name: runtimeName) else { return }
        defer { fx.finish() }
        func fileThreads() -> Int { threadCount(named: runtimeName + "-file") }
        let f = try fx.file("shutdown-pending", contents: [UInt8](repeating: 3, count: 1 << 16))
        #expect(fileThreads() == 0, "no file thread before the first operation")
        let gate = Gate()
        let blockers = backend == .uring ? fx.blockTaskThreads(gate) : []
        let calls = Counter()
        let results = Results()
        let handles = fx.recordingHandles(32, calls, results)
        for h in handles {
            try h.setIOV([AioIOV(fx.buffer(1 << 16))])
            f.read(h, at: 0)
        }
        if backend == .threads { #expect(fileThreads() > 0, "the file threads start with the first operation") }
        let rt = fx.rt
        let down = Counter()
        let shutdownThread = finishes(within: 0.05) {
            rt.shutdown()
            down.increment()
        }
        _ = shutdownThread
        sleepMillis(20)
        gate.open()
        #expect(eventually { down.count == 1 }, "the shutdown did not finish")
        #expect(calls.count == 32, "each callback once")
        for r in results.all {
            #expect(r.0 == .stopped || (r.0 == nil && r.1 == 1 << 16), "unexpected \(String(describing: r.0))")
        }
        #expect(fileThreads() == 0, "the file threads are joined at shutdown")
        for b in blockers { b.stop() }
    }

    @Test("[FILE-13] async read(upTo:at:) and write(_:at:), with errors thrown", arguments: Backend.allCases)
    fileprivate func asyncFacade(_ backend: Backend) async throws {
        guard let fx = try FileFixture.make(backend) else { return }
        defer { fx.finish() }
        let p = fx.path("async")
        let f = try fx.open(p, [.read, .write, .create, .truncate])
        let big = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try await f.write(big, at: 0)
        try await f.write(bytes("tail"), at: Int64(big.count))
        try await f.write([UInt8](), at: 0)
        let head = try await f.read(upTo: 10, at: 0)
        #expect(head == Array(big[0..<10]))
        let all = try await f.read(upTo: 400_000, at: 0)
        #expect(all.count == big.count + 4)
        #expect(Array(all[0..<big.count]) == big)
        #expect(Array(all[big.count...]) == bytes("tail"))
        let past = try await f.read(upTo: 16, at: 1 << 30)
        #expect(past.isEmpty)
        await #expect(throws: AioError.invalidArgument) { try await f.read(upTo: 0, at: 0) }
        await #expect(throws: AioError.invalidArgument) { try await f.read(upTo: 4, at: -5) }
        await #expect(throws: AioError.invalidArgument) { try await f.write(bytes("x"), at: -1) }
        let ro = try fx.open(p, [.read])
        await #expect(throws: AioError.notSupported) { try await ro.write(bytes("x"), at: 0) }
        f.close()
        await #expect(throws: AioError.closed) { try await f.read(upTo: 4, at: 0) }
        await #expect(throws: AioError.closed) { try await f.write(bytes("x"), at: 0) }
        #expect(contents(p).count == big.count + 4)
    }
}
