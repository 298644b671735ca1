import Glibc

// What the two file backends share: the kinds of operation, the provider
// word each keeps in a handle, the queue of operations not yet handed to the
// kernel (or to a thread), how errors are named, and the runtime's service
// that picks a backend ([FILE-10]).

/// What a file operation does.
enum FileOpKind: Int {
    case read = 1, write = 2, sync = 3
}

/// The provider word of a file operation in flight (`AioHandle.providerWord`,
/// written under the backend's lock):
///
///     bits 0-1   state: 0 none (not queued yet, or completed), 1 queued, 2 submitted (io_uring) or running (thread)
///     bits 2-3   the kind
///     bits 4-7   io_uring: the handle's shard + 1, kept from one operation to the next (0: none yet)
///     bits 8-27  the abort (cancel, timeout, stop) asked for while submitted, 0: none
///     bits 28-29 io_uring: times the operation was submitted again after the
///                kernel canceled it on its own (the thread that submitted it exited)
///     bits 32-63 the operation number (`AioHandle.operationNumber`)
///
/// From queueing to completion `fileOpFile` (the handle's provider link,
/// which file operations use for nothing else) holds the file, unretained:
/// the backend slot's hold keeps it alive (`AioFile.enter(slot:)`); and
/// `providerCount` holds the offset.
enum FileWord {
    static let queued = 1
    static let submitted = 2

    @inline(__always) static func make(seq: UInt32, state: Int, kind: FileOpKind, shard: Int = -1) -> Int {
        Int(Int64(seq) << 32) | (shard + 1) << 4 | kind.rawValue << 2 | state
    }
    /// The word of an idle handle: only its shard.
    @inline(__always) static func idle(_ w: Int) -> Int { w & 0xF0 }
    /// The shard recorded in the word, if it is one of `count`.
    @inline(__always) static func shard(_ w: Int, of count: Int) -> Int? {
        let s = (w >> 4) & 0xF
        return s >= 1 && s <= count ? s - 1 : nil
    }
    @inline(__always) static func seq(_ w: Int) -> UInt32 { UInt32(truncatingIfNeeded: w >> 32) }
    @inline(__always) static func state(_ w: Int) -> Int { w & 3 }
    @inline(__always) static func kind(_ w: Int) -> FileOpKind { FileOpKind(rawValue: (w >> 2) & 3) ?? .sync }
    @inline(__always) static func abortCode(_ w: Int) -> Int { (w >> 8) & 0xF_FFFF }
    @inline(__always) static func retries(_ w: Int) -> Int { (w >> 28) & 3 }
    @inline(__always) static func with(_ w: Int, state: Int) -> Int { (w & ~3) | state }
    @inline(__always) static func with(_ w: Int, abort: AioError) -> Int {
        (w & ~(0xF_FFFF << 8)) | abort.fileAbortCode << 8
    }
    @inline(__always) static func with(_ w: Int, retries: Int) -> Int { (w & ~(3 << 28)) | retries << 28 }
}

extension AioError {
    /// The errors an abort may carry, numbered from 1 (the provider word has
    /// room for a code, not for an enum with a payload).
    private static let fileCodeTable: [AioError] = [
        .timedOut, .canceled, .stopped, .closed, .invalidArgument, .busy, .connectionRefused, .connectionReset,
        .connectionShutdown, .connectionAborted, .addressInUse, .addressInvalid, .unreachable, .tooManyOpenFiles,
        .noMemory, .notSupported,
    ]

    /// A 20-bit code for this error (never 0).
    var fileAbortCode: Int {
        if case .system(let e) = self { return 0x10000 | Int(UInt16(truncatingIfNeeded: e)) }
        if let i = Self.fileCodeTable.firstIndex(of: self) { return i + 1 }
        return 2  // an error this table does not know yet: reported as .canceled
    }

    /// The error of a code made by `fileAbortCode`.
    init(fileAbortCode code: Int) {
        if code & 0x10000 != 0 {
            self = .system(errno: Int32(code & 0xFFFF))
        } else if code >= 1 && code <= Self.fileCodeTable.count {
            self = Self.fileCodeTable[code - 1]
        } else {
            self = .canceled
        }
    }

    /// The error of a failed read, write or sync ([FILE-12]): EBADF (the
    /// descriptor is not open for that access) is `.notSupported`; the rest as
    /// everywhere (`init(errno:)`).
    static func fileTransfer(_ e: Int32) -> AioError {
        e == EBADF ? .notSupported : AioError(errno: e)
    }

    /// The error of a failed open ([FILE-12]): a path that leads to no file
    /// (ENOENT, ENOTDIR, ENAMETOOLONG, ELOOP) is `.addressInvalid`; the rest as
    /// everywhere (EISDIR `.invalidArgument`, EMFILE `.tooManyOpenFiles`,
    /// EACCES, EPERM, EROFS... `.system(errno:)`).
    static func fileOpen(_ e: Int32) -> AioError {
        switch e {
        case ENOENT, ENOTDIR, ENAMETOOLONG, ELOOP: return .addressInvalid
        default: return AioError(errno: e)
        }
    }
}

extension AioHandle {
    /// The file of the file operation in flight, unretained (in the provider
    /// link, which file operations use for nothing else).
    var fileOpFile: Unmanaged<AioFile>? {
        get { providerNext.map { unsafeBitCast($0, to: Unmanaged<AioFile>.self) } }
        set { providerNext = newValue.map { unsafeBitCast($0, to: Unmanaged<AioHandle>.self) } }
    }
}

/// An operation queued in a backend, not yet handed to the kernel or a thread.
struct PendingFileOp {
    /// nil: removed from the queue (canceled, or its file closed).
    var handle: Unmanaged<AioHandle>?
    var file: Unmanaged<AioFile>
    var offset: Int64
    var kind: FileOpKind
}

/// A FIFO of pending operations in a growable ring buffer; removal from the
/// middle (cancel, close) leaves a hole that `popFirst` skips. Used under its
/// owner's lock; allocates only when it grows.
final class FileOpQueue {
    private var slots: UnsafeMutablePointer<PendingFileOp>
    private var capacity: Int
    private var head = 0
    /// Slots in use from `head`, holes included.
    private var used = 0
    /// Operations queued (holes excluded).
    private(set) var count = 0

    init(capacity: Int = 64) {
        self.capacity = capacity
        slots = .allocate(capacity: capacity)
    }

    deinit {
        slots.deallocate()  // PendingFileOp is trivial: nothing to deinitialize
    }

    var isEmpty: Bool { count == 0 }

    func append(_ op: PendingFileOp) {
        if used == capacity { grow() }
        (slots + (head + used) % capacity).initialize(to: op)
        used += 1
        count += 1
    }

    /// The oldest operation, or nil.
    func popFirst() -> PendingFileOp? {
        while used > 0 {
            let op = slots[head]
            head = (head + 1) % capacity
            used -= 1
            if op.handle != nil {
                count -= 1
                if used == 0 { head = 0 }
                return op
            }
        }
        head = 0
        return nil
    }

    /// Removes `handle`'s operation, if queued.
    func remove(_ handle: AioHandle) -> PendingFileOp? {
        let target = Unmanaged.passUnretained(handle).toOpaque()
        for i in 0..<used {
            let p = slots + (head + i) % capacity
            if let h = p.pointee.handle, h.toOpaque() == target {
                let op = p.pointee
                p.pointee.handle = nil
                count -= 1
                return op
            }
        }
        return nil
    }

    /// `file` was closed ([FILE-9]): removes its queued operations, clears
    /// their handles' provider state (the provider word becomes
    /// `idle(word)`) and gives back their counts in `slot`. Returns the
    /// handles, to finish with `.closed` once the lock is released, and
    /// whether the caller must drop its hold on the file.
    func detachAll(of file: AioFile, slot: Int, idle: (Int) -> Int) -> (handles: [AioHandle], drop: Bool) {
        var drop = false
        let handles = removeAll(of: file).map { op -> AioHandle in
            let h = op.handle!.takeUnretainedValue()
            h.providerWord = idle(h.providerWord)
            h.fileOpFile = nil
            h.providerCount = 0
            if file.leave(slot: slot) { drop = true }
            return h
        }
        return (handles, drop)
    }

    /// Removes every operation on `file`.
    func removeAll(of file: AioFile) -> [PendingFileOp] {
        var out: [PendingFileOp] = []
        let target = Unmanaged.passUnretained(file).toOpaque()
        for i in 0..<used {
            let p = slots + (head + i) % capacity
            if p.pointee.handle != nil && p.pointee.file.toOpaque() == target {
                out.append(p.pointee)
                p.pointee.handle = nil
                count -= 1
            }
        }
        return out
    }

    private func grow() {
        let bigger = UnsafeMutablePointer<PendingFileOp>.allocate(capacity: capacity * 2)
        for i in 0..<used { (bigger + i).initialize(to: slots[(head + i) % capacity]) }
        slots.deallocate()
        slots = bigger
        capacity *= 2
        head = 0
    }
}

/// A backend of asynchronous files: io_uring or blocking threads ([FILE-10]).
protocol FileEngine: AnyObject, Sendable {
    var backend: AioRuntime.FileBackend { get }
    /// Begins `aio`'s operation, checks it ([FILE-2], [FILE-12]) and queues it.
    func start(_ aio: AioHandle, _ file: AioFile, _ kind: FileOpKind, _ offset: Int64)
    /// `file` was just marked closed: its queued operations end with `.closed`
    /// at once, those in the kernel are asked to stop ([FILE-9]).
    func closeFile(_ file: AioFile)
    /// Runtime shutdown, once nothing is in flight: threads joined, the ring's
    /// eventfd deregistered from the poller.
    func stop()
}

extension AioRuntime {
    /// Which backend runs a runtime's asynchronous files ([FILE-10]).
    public enum FileBackend: Sendable, Hashable {
        /// io_uring where the system allows it, else a few blocking threads;
        /// the environment variable AIOKIT_FILE_BACKEND (`uring` or
        /// `threads`) decides instead when it is set.
        case automatic
        /// io_uring only: opening a file throws `.notSupported` where the
        /// system refuses io_uring.
        case uring
        /// A small fixed set of blocking threads (preadv, pwritev, fsync).
        case threads
    }

    /// The backend this runtime's files use, `.uring` or `.threads` (chosen
    /// now if no file has been opened yet); nil when the configured backend
    /// cannot run here (io_uring forced where the system refuses it) or the
    /// runtime is shut down ([FILE-10]).
    public var fileBackendInUse: FileBackend? {
        (try? files.engine(for: self))?.backend
    }
}

/// The runtime's part of asynchronous files: the backend, chosen and started
/// when the first file is opened, stopped at shutdown ([FILE-10]).
final class FileService: @unchecked Sendable {  // `engine`, `failure`, `stopped` guarded by `lock`
    let requested: AioRuntime.FileBackend
    let name: String
    private let lock = Lock()
    private var engine: (any FileEngine)?
    private var failure: AioError?
    private var stopped = false

    init(backend: AioRuntime.FileBackend, name: String) {
        requested = backend
        self.name = name
    }

    /// The configuration's choice, then the environment's, then automatic.
    var resolvedChoice: AioRuntime.FileBackend {
        if requested != .automatic { return requested }
        switch FileSys.environment("AIOKIT_FILE_BACKEND") {
        case "uring", "io_uring": return .uring
        case "threads", "thread": return .threads
        default: return .automatic
        }
    }

    /// The backend, started on first use.
    func engine(for runtime: AioRuntime) throws(AioError) -> any FileEngine {
        lock.lock()
        defer { lock.unlock() }
        if stopped || runtime.isShutDown { throw AioError.stopped }
        if let engine { return engine }
        if let failure { throw failure }
        let shards = max(1, min(AioFile.maxSlots, runtime.configuration.taskThreads))
        switch resolvedChoice {
        case .threads:
            engine = ThreadFileEngine(name: name)
        case .uring:
            do {
                engine = try URingFileEngine(runtime: runtime, shards: shards)
            } catch {
                failure = .notSupported
                throw AioError.notSupported
            }
        case .automatic:
            if let e = try? URingFileEngine(runtime: runtime, shards: shards) {
                engine = e
            } else {
                engine = ThreadFileEngine(name: name)
            }
        }
        return engine!
    }

    /// Runtime shutdown (RuntimeCore.finish, after every operation completed).
    func stop() {
        lock.lock()
        stopped = true
        let e = engine
        lock.unlock()
        e?.stop()
    }
}
