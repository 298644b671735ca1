import Glibc
import Synchronization

/// A file for asynchronous reads, writes and syncs through handles
/// ([FILE-1]..[FILE-14], Specs/Files.md).
///
/// Each operation takes its offset explicitly (no file position): `read`
/// scatters into `aio.iov`, `write` gathers from it, `count` is the bytes
/// moved; a read at or past the end of the file completes with count 0. Any
/// number of handles may have operations on one file at once.
///
/// The runtime runs them on io_uring where the system allows it, else on a
/// few blocking threads; `AioRuntime.Configuration.fileBackend` and the
/// environment variable AIOKIT_FILE_BACKEND choose ([FILE-10]). Every
/// descriptor is close-on-exec. `close()` ends pending operations with
/// `.closed` and closes the descriptor once no operation references it.
public final class AioFile: @unchecked Sendable {  // lets, `state` (atomic), `counts` (slot i: its backend slot's lock)
    /// How a file is opened ([FILE-1]).
    public struct Mode: OptionSet, Sendable, Hashable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Reads allowed.
        public static let read = Mode(rawValue: 1 << 0)
        /// Writes allowed.
        public static let write = Mode(rawValue: 1 << 1)
        /// Create the file if it does not exist (with `permissions`).
        public static let create = Mode(rawValue: 1 << 2)
        /// Cut the file to length 0 on opening (needs `.write`).
        public static let truncate = Mode(rawValue: 1 << 3)
        /// Every write goes to the end of the file, whatever its offset
        /// (needs `.write`) ([FILE-4]).
        public static let append = Mode(rawValue: 1 << 4)
    }

    let runtime: AioRuntime
    let fd: Int32
    let readable: Bool
    let writable: Bool
    let engine: any FileEngine
    /// Bit 0: closed; the rest: backend slots (io_uring shards, the thread
    /// backend) holding the file (with operations on it), times 2.
    private let state = Atomic<Int>(0)
    /// Operations on this file per backend slot, each on a cache line of its
    /// own and guarded by its slot's lock: counting costs no atomic operation,
    /// except when a slot takes or drops its hold on the file.
    private let counts: UnsafeMutablePointer<Int>
    static let maxSlots = 4
    private static let stride = 8
    /// Writes left to send to the ring before writing on a task thread
    /// again, after a slow one ([FILE-15]). Relaxed: a lost update only
    /// moves the next attempt a little.
    private let inlineWriteSkip = Atomic<Int>(0)
    /// Writes sent to the ring after a slow one.
    static let inlineWriteBackoff = 64

    /// Opens `path` ([FILE-1]). A mode with neither `.read` nor `.write`, or
    /// with `.truncate` or `.append` but no `.write`, and a path that names a
    /// directory, throw `.invalidArgument`; a path that leads to no file
    /// throws `.addressInvalid`; other failures their errno as an `AioError`
    /// ([FILE-12]). With io_uring forced where the system refuses it:
    /// `.notSupported` ([FILE-10]); after the runtime's shutdown: `.stopped`.
    public init(path: String, mode: Mode, permissions: UInt16 = 0o644, runtime: AioRuntime = .shared) throws {
        guard mode.contains(.read) || mode.contains(.write),
            mode.contains(.write) || mode.isDisjoint(with: [.truncate, .append]),
            !path.utf8.contains(0)
        else { throw AioError.invalidArgument }
        let engine = try runtime.files.engine(for: runtime)
        var flags: Int32 = mode.contains(.read) ? (mode.contains(.write) ? O_RDWR : O_RDONLY) : O_WRONLY
        if mode.contains(.create) { flags |= O_CREAT }
        if mode.contains(.truncate) { flags |= O_TRUNC }
        if mode.contains(.append) { flags |= O_APPEND }
        let descriptor: Int32
        switch FileSys.open(path, flags: flags, permissions: permissions) {
        case .success(let d): descriptor = d
        case .failure(let e): throw AioError.fileOpen(e.code)
        }
        if case .success(let info) = FileSys.inspect(descriptor), info.type == S_IFDIR {
            Sys.close(descriptor)
            throw AioError.invalidArgument
        }
        self.runtime = runtime
        self.engine = engine
        fd = descriptor
        readable = mode.contains(.read)
        writable = mode.contains(.write)
        counts = Self.makeCounts()
    }

    private static func makeCounts() -> UnsafeMutablePointer<Int> {
        let p = UnsafeMutableRawPointer.allocate(byteCount: maxSlots * stride * 8, alignment: 64)
        return p.initializeMemory(as: Int.self, repeating: 0, count: maxSlots * stride)
    }

    /// Takes ownership of an open file descriptor (its access mode decides
    /// what it allows): it is made close-on-exec, and `close()` closes it. Not
    /// an open descriptor, or a directory: `.invalidArgument` ([FILE-1]).
    public init(adopting descriptor: Int32, runtime: AioRuntime = .shared) throws {
        guard descriptor >= 0, case .success(let info) = FileSys.inspect(descriptor), info.type != S_IFDIR else {
            throw AioError.invalidArgument
        }
        if let e = FileSys.setCloseOnExec(descriptor) { throw AioError(errno: e.code) }
        engine = try runtime.files.engine(for: runtime)
        self.runtime = runtime
        fd = descriptor
        readable = info.readable
        writable = info.writable
        counts = Self.makeCounts()
    }

    deinit {
        // No operation is pending (each keeps its file alive).
        if state.load(ordering: .acquiring) & 1 == 0 { Sys.close(fd) }
        counts.deallocate()
    }

    /// Reads into `aio.iov` from `offset`: `count` is the bytes read, 0 at or
    /// past the end of the file, fewer than the iov holds when the file ends
    /// inside it ([FILE-2], [FILE-3]). A negative offset or an empty iov ends
    /// with `.invalidArgument`, a file not opened for reading with
    /// `.notSupported`, a closed file with `.closed`; the callback runs once
    /// whatever happens ([AIO-2]).
    public func read(_ aio: AioHandle, at offset: Int64) {
        engine.start(aio, self, .read, offset)
    }

    /// Writes `aio.iov` at `offset` (at the end of the file in `.append`
    /// mode): `count` is the bytes written ([FILE-2], [FILE-4]); the same
    /// errors as `read`, `.notSupported` for a file not opened for writing ([FILE-6]).
    public func write(_ aio: AioHandle, at offset: Int64) {
        engine.start(aio, self, .write, offset)
    }

    /// fsync(2): the file's data and metadata reach the device; `count` 0 ([FILE-5]).
    public func sync(_ aio: AioHandle) {
        engine.start(aio, self, .sync, 0)
    }

    /// Ends every pending operation with `.closed` (each callback once) and
    /// refuses later ones with `.closed`; the descriptor is closed once no
    /// operation references it. Calling it again does nothing ([FILE-9]).
    public func close() {
        let previous = state.bitwiseOr(1, ordering: .acquiringAndReleasing).oldValue
        if previous & 1 != 0 { return }
        if previous == 0 {
            Sys.close(fd)  // nothing pending, and no slot can take a hold any more
            return
        }
        engine.closeFile(self)
    }

    // MARK: - Backends' side

    /// Whether the io_uring backend should do this write (started on a task
    /// thread) at once (counts down the skips after a slow one).
    @inline(__always) var tryInlineWrite: Bool {
        let skip = inlineWriteSkip.load(ordering: .relaxed)
        if skip == 0 { return true }
        inlineWriteSkip.store(skip - 1, ordering: .relaxed)
        return false
    }

    /// A write done at once took long.
    func inlineWriteWasSlow() {
        inlineWriteSkip.store(Self.inlineWriteBackoff, ordering: .relaxed)
    }

    /// True once `close()` was called.
    @inline(__always) var isClosed: Bool { state.load(ordering: .relaxed) & 1 != 0 }

    /// Checks the operation `aio` just began ([FILE-2], [FILE-6], [FILE-9]): nil when it may go on.
    @inline(__always) func check(_ aio: AioHandle, _ kind: FileOpKind, _ offset: Int64) -> AioError? {
        if isClosed { return .closed }
        if kind != .sync {
            if kind == .read ? !readable : !writable { return .notSupported }
            if offset < 0 { return .invalidArgument }
            var total = 0
            for v in aio.iovList { total &+= v.buffer.count }
            if total <= 0 || Int64(total) > Int64.max - offset { return .invalidArgument }
        }
        return nil
    }

    /// Counts an operation of backend slot `slot` (its lock held): the first
    /// one takes the slot's hold on the file (a strong reference, and the
    /// descriptor stays open). False when the file is closed ([FILE-9]).
    @inline(__always) func enter(slot: Int) -> Bool {
        let p = counts + slot * Self.stride
        if p.pointee == 0 {
            var s = state.load(ordering: .relaxed)
            while true {
                if s & 1 != 0 { return false }
                let (done, now) = state.compareExchange(expected: s, desired: s + 2, ordering: .acquiring)
                if done { break }
                s = now
            }
            _ = Unmanaged.passUnretained(self).retain()
        } else if isClosed {
            return false
        }
        p.pointee += 1
        return true
    }

    /// Counts one more reference of slot `slot` that has some already (its
    /// lock held): a cancel request for a closing file.
    @inline(__always) func enterAgain(slot: Int) {
        counts[slot * Self.stride] += 1
    }

    /// Operations of slot `slot` on this file (its lock held).
    @inline(__always) func count(slot: Int) -> Int { counts[slot * Self.stride] }

    /// An operation of slot `slot` is over (its lock held). True when it was
    /// the slot's last: the caller then calls `dropHold()` once it has
    /// released the lock.
    @inline(__always) func leave(slot: Int) -> Bool {
        let p = counts + slot * Self.stride
        p.pointee -= 1
        return p.pointee == 0
    }

    /// A slot's hold on the file ends: after `close()` the last one closes the
    /// descriptor ([FILE-9]). The caller holds a reference of its own across
    /// the call (the file may be freed once it lets go).
    func dropHold() {
        if state.subtract(2, ordering: .acquiringAndReleasing).newValue == 1 {
            Sys.close(fd)
        }
        Unmanaged.passUnretained(self).release()
    }
}

extension AioFile {
    /// Reads at most `maxCount` bytes at `offset` ([FILE-13]): fewer when the
    /// file ends first, none at or past its end. `maxCount` < 1 or a negative
    /// offset throw `.invalidArgument`; cancelling the Task cancels the read.
    public func read(upTo maxCount: Int, at offset: Int64) async throws -> [UInt8] {
        guard maxCount >= 1 else { throw AioError.invalidArgument }
        let buffer = AsyncBuffer(count: maxCount)
        let aio = AioHandle(runtime: runtime)
        try aio.setIOV([AioIOV(UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[0..<maxCount]))])
        try await aio.perform { self.read($0, at: offset) }
        return Array(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<aio.count]))
    }

    /// Writes all of `bytes` at `offset`, looping over short writes
    /// ([FILE-13]); throws the file's error (`.closed`, `.notSupported`...)
    /// or `.canceled` when the Task is cancelled. A negative offset throws
    /// `.invalidArgument`; no bytes: nothing happens.
    public func write(_ bytes: some Collection<UInt8> & Sendable, at offset: Int64) async throws {
        guard offset >= 0 else { throw AioError.invalidArgument }
        let count = bytes.count
        if count == 0 { return }
        let buffer = AsyncBuffer(count: count)
        buffer.bytes.copyBytes(from: bytes)
        let aio = AioHandle(runtime: runtime)
        var written = 0
        while written < count {
            try aio.setIOV([AioIOV(UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[written..<count]))])
            try await aio.perform { self.write($0, at: offset + Int64(written)) }
            if aio.count <= 0 { throw AioError.system(errno: EIO) }  // a write that moves nothing would loop forever
            written += aio.count
        }
        withExtendedLifetime(buffer) {}
    }
}
