// The file workloads: file-read and file-write (WORKLOADS.md), on AioFile and
// the shared runtime (io_uring where the system allows it; AIOKIT_FILE_BACKEND
// =threads forces the thread backend).
//
// Set-up, as the peers do (peer_support.h's bench_file_open): a file of 256
// MiB in $TMPDIR (or /tmp), unlinked as soon as it is open, filled with
// 1 + i mod 255, synced, read back and checked, so that it sits in the page
// cache. Then C chains, each a handle whose callback checks the transfer that
// ended (its full length, else exit 1) and starts the next from the chain's
// own xorshift64 (13, 7, 17; seed (i + 1) * 0x9E3779B97F4A7C15): block
// x mod (256 MiB / SIZE), at offset block * SIZE. Chain i does its even share
// of the N operations. Writes gather the same SIZE bytes of the pattern; no
// fsync in the timed span.
//
// Hot path: no allocation, no lock of its own: buffers, handles and iov lists
// are made once, the iov is set once per chain (the buffer never changes).

import AioKit
import Glibc
import Synchronization

/// file_byte of the peers: the non-zero byte at position i of the file and of every write.
@inline(__always)
private func fileByte(_ i: Int) -> UInt8 {
    UInt8(1 + i % 255)
}

/// The peers' bench_file_open: the descriptor (O_RDWR, close-on-exec) of the
/// filled, synced, checked and already unlinked file.
private func benchFileOpen() -> Int32 {
    var dir = "/tmp"
    if let t = getenv("TMPDIR"), t.pointee != 0 { dir = String(cString: t) }
    var template = Array("\(dir)/aio-bench-file-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }  // (mkostemp is a GNU call)
    let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    if fd < 0 { die("mkstemp \(path): \(String(cString: strerror(errno)))") }
    if fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 { die("fcntl \(path): \(String(cString: strerror(errno)))") }
    if unlink(path) != 0 { die("unlink \(path): \(String(cString: strerror(errno)))") }

    let chunk = 1 << 20
    let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 64)
    defer { buf.deallocate() }
    for i in 0..<chunk { buf[i] = fileByte(i) }
    var off = 0
    while off < benchFileBytes {
        if pwrite(fd, buf.baseAddress, chunk, off_t(off)) != chunk {
            die("filling \(path): \(String(cString: strerror(errno)))")
        }
        off += chunk
    }
    if fsync(fd) != 0 { die("fsync \(path): \(String(cString: strerror(errno)))") }
    off = 0
    while off < benchFileBytes {
        if pread(fd, buf.baseAddress, chunk, off_t(off)) != chunk {
            die("reading \(path) back: \(String(cString: strerror(errno)))")
        }
        if memchr(buf.baseAddress!, 0, chunk) != nil { die("reading \(path) back: a zero byte") }
        off += chunk
    }
    return fd
}

/// What the chains of a run share.
private final class FileRun: Sendable {
    let file: AioFile
    let size: Int
    let blocks: UInt64
    let writing: Bool
    let name: StaticString
    /// Operations completed over all chains: the watchdog's progress.
    let completed = Atomic<Int>(0)
    let chainsLeft: Atomic<Int>
    let done = Latch()
    /// Set once the timed work is over (teardown errors then only end a chain).
    let stopping = Atomic<Bool>(false)

    init(file: AioFile, size: Int, chains: Int, writing: Bool) {
        self.file = file
        self.size = size
        blocks = UInt64(benchFileBytes / size)
        self.writing = writing
        name = writing ? "file-write" : "file-read"
        chainsLeft = Atomic(chains)
    }
}

/// One chain: its handle's callback checks a transfer and starts the next.
private final class FileChain: @unchecked Sendable {  // `rng` and `left`: the chain's callbacks only, one at a time (each starts the next)
    let run: FileRun
    var rng: UInt64
    var left: Int

    init(run: FileRun, index: Int, ops: Int) {
        self.run = run
        rng = UInt64(index + 1) &* 0x9E37_79B9_7F4A_7C15
        left = ops
    }

    /// The next offset of the chain's xorshift64 (13, 7, 17).
    @inline(__always) func nextOffset() -> Int64 {
        rng ^= rng << 13
        rng ^= rng >> 7
        rng ^= rng << 17
        return Int64(rng % run.blocks) &* Int64(run.size)
    }

    /// Starts the chain's next operation, or ends the chain.
    @inline(__always) func next(_ aio: AioHandle) {
        if left == 0 {
            if run.chainsLeft.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { run.done.open() }
            return
        }
        left -= 1
        if run.writing {
            run.file.write(aio, at: nextOffset())
        } else {
            run.file.read(aio, at: nextOffset())
        }
    }

    /// The callback.
    func completed(_ aio: AioHandle) {
        if let error = aio.error {
            if run.stopping.load(ordering: .relaxed) { return }
            die("\(run.name): \(error)")
        }
        let n = aio.count
        if n != run.size {
            die("\(run.name): short \(run.writing ? "write" : "read"): \(n) of \(run.size) bytes")
        }
        run.completed.add(1, ordering: .relaxed)
        next(aio)
    }
}

private func runFile(_ args: BenchArgs, writing: Bool) -> Report {
    startRuntime()
    let fd = benchFileOpen()
    let file: AioFile
    do {
        file = try AioFile(adopting: fd, runtime: .shared)
    } catch {
        die("AioFile(adopting:): \(error)")
    }
    let size = args.size
    let chains = args.concurrency
    let run = FileRun(file: file, size: size, chains: chains, writing: writing)
    // Writes all gather the pattern's first SIZE bytes; each read chain has a buffer of its own.
    let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
    for i in 0..<size { payload[i] = fileByte(i) }
    var buffers: [UnsafeMutableRawBufferPointer] = []
    var handles: [AioHandle] = []
    var chainList: [FileChain] = []
    for i in 0..<chains {
        let chain = FileChain(run: run, index: i, ops: evenShare(args.n, parts: chains, index: i))
        let aio = AioHandle(runtime: .shared) { [chain] h in chain.completed(h) }
        let iov: AioIOV
        if writing {
            iov = AioIOV(UnsafeRawBufferPointer(payload))
        } else {
            let b = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 4096)
            b.initializeMemory(as: UInt8.self, repeating: 0)
            buffers.append(b)
            iov = AioIOV(b)
        }
        do {
            try aio.setIOV([iov])
        } catch {
            die("setIOV: \(error)")
        }
        handles.append(aio)
        chainList.append(chain)
    }

    let span = Span.begin()
    for (chain, aio) in zip(chainList, handles) { chain.next(aio) }
    run.done.waitBounded(writing ? "file-write" : "file-read", progress: { [run] in run.completed.load(ordering: .relaxed) })
    let (wall, cpu) = span.end()

    run.stopping.store(true, ordering: .relaxed)
    Watchdog.shared.bounded("file teardown") {
        for aio in handles { aio.stop() }
        file.close()
    }
    for b in buffers { b.deallocate() }
    payload.deallocate()

    var report = Report(args, wall: wall)
    report.add("mb_per_s", Double(args.n) * Double(size) / wall / 1e6, decimals: 2)
    report.add("cpu_s", cpu, decimals: 3)
    return report
}

/// file-read: N random reads of SIZE bytes, C in flight.
func runFileRead(_ args: BenchArgs) -> Report {
    runFile(args, writing: false)
}

/// file-write: N random writes of SIZE bytes, C in flight.
func runFileWrite(_ args: BenchArgs) -> Report {
    runFile(args, writing: true)
}
