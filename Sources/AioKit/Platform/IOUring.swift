import CAioShims
import Glibc

// The operating-system side of asynchronous files ([FILE-1]..[FILE-12]):
// an io_uring instance driven through the raw system calls (no liburing),
// and the blocking calls of the thread backend and of `AioFile`'s set-up.

/// One io_uring instance: its descriptor, the submission ring, the array of
/// submission entries (SQEs) and the completion ring, all mapped from the
/// kernel, plus an iovec area with 8 slots per SQE for READV/WRITEV.
///
/// Threading: the submission side (`nextSQE`, `publish`, `submitPending`) is
/// used by one submitter at a time, the completion side (`reap`) by one reaper
/// at a time; the owner (URingFileEngine's shard) enforces both. Indices the
/// kernel shares are read with acquire and written with release ordering.
final class IOURing: @unchecked Sendable {  // submission side: one submitter at a time; completion side: one reaper at a time (the owner's flag and lock)
    let fd: Int32
    let sqEntries: UInt32
    let cqEntries: UInt32
    let features: UInt32

    private let sqMap: UnsafeMutableRawPointer
    private let sqMapSize: Int
    private let cqMap: UnsafeMutableRawPointer
    private let cqMapSize: Int
    private let sqeMap: UnsafeMutableRawPointer
    private let sqeMapSize: Int

    private let sqHead: UnsafeMutablePointer<UInt32>
    private let sqTail: UnsafeMutablePointer<UInt32>
    private let sqFlags: UnsafeMutablePointer<UInt32>
    private let sqMask: UInt32
    private let cqHead: UnsafeMutablePointer<UInt32>
    private let cqTail: UnsafeMutablePointer<UInt32>
    private let cqMask: UInt32
    /// The completion ring's flags (IORING_CQ_EVENTFD_DISABLED); nil before 5.8.
    private let cqFlags: UnsafeMutablePointer<UInt32>?
    private let cqes: UnsafeMutableRawPointer
    private let sqes: UnsafeMutablePointer<io_uring_sqe>
    /// 8 iovecs per submission slot: valid until the kernel consumed the slot.
    private let iovecs: UnsafeMutablePointer<iovec>

    /// The submitter's tail (entries prepared, published or not).
    private var localTail: UInt32 = 0
    /// The reaper's head.
    private var localHead: UInt32 = 0

    static let iovPerSlot = 8

    /// Sets up a ring of `entries` submission slots (the kernel rounds up to a
    /// power of two; the completion ring is twice as large). Throws the
    /// system's error (ENOSYS without io_uring, EPERM where seccomp or
    /// `kernel.io_uring_disabled` refuses it), or `.notSupported` on kernels
    /// older than 5.7 (no single mmap, NODROP, stable submission or fast poll).
    init(entries: UInt32) throws(AioError) {
        var p = io_uring_params()
        p.flags = CAIO_IORING_SETUP_CLAMP | CAIO_IORING_SETUP_SUBMIT_ALL
        var ringFd = caio_uring_setup(entries, &p)
        if ringFd == -EINVAL {
            // SUBMIT_ALL is 5.18: without it, a failed entry stops the batch; submitPending goes on.
            p = io_uring_params()
            p.flags = CAIO_IORING_SETUP_CLAMP
            ringFd = caio_uring_setup(entries, &p)
        }
        if ringFd < 0 { throw AioError(errno: -ringFd) }
        let needed =
            CAIO_IORING_FEAT_SINGLE_MMAP | CAIO_IORING_FEAT_NODROP | CAIO_IORING_FEAT_SUBMIT_STABLE
            | CAIO_IORING_FEAT_FAST_POLL
        guard p.features & needed == needed else {
            Sys.close(ringFd)
            throw AioError.notSupported
        }
        fd = ringFd
        sqEntries = p.sq_entries
        cqEntries = p.cq_entries
        features = p.features

        // One mapping for both rings (IORING_FEAT_SINGLE_MMAP), one for the SQEs.
        let sqSize = Int(p.sq_off.array) + Int(p.sq_entries) * MemoryLayout<UInt32>.size
        let cqSize = Int(p.cq_off.cqes) + Int(p.cq_entries) * Int(CAIO_IORING_CQE_SIZE)
        let ringSize = max(sqSize, cqSize)
        let rings = mmap(nil, ringSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ringFd, off_t(CAIO_IORING_OFF_SQ_RING))
        guard let rings, rings != MAP_FAILED else {
            let e = errno
            Sys.close(ringFd)
            throw AioError(errno: e)
        }
        let sqeSize = Int(p.sq_entries) * Int(CAIO_IORING_SQE_SIZE)
        let sqeArea = mmap(nil, sqeSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ringFd, off_t(CAIO_IORING_OFF_SQES))
        guard let sqeArea, sqeArea != MAP_FAILED else {
            let e = errno
            munmap(rings, ringSize)
            Sys.close(ringFd)
            throw AioError(errno: e)
        }
        sqMap = rings
        sqMapSize = ringSize
        cqMap = rings
        cqMapSize = 0  // shared with sqMap
        sqeMap = sqeArea
        sqeMapSize = sqeSize

        sqHead = (rings + Int(p.sq_off.head)).assumingMemoryBound(to: UInt32.self)
        sqTail = (rings + Int(p.sq_off.tail)).assumingMemoryBound(to: UInt32.self)
        sqFlags = (rings + Int(p.sq_off.flags)).assumingMemoryBound(to: UInt32.self)
        sqMask = (rings + Int(p.sq_off.ring_mask)).load(as: UInt32.self)
        cqHead = (rings + Int(p.cq_off.head)).assumingMemoryBound(to: UInt32.self)
        cqTail = (rings + Int(p.cq_off.tail)).assumingMemoryBound(to: UInt32.self)
        cqMask = (rings + Int(p.cq_off.ring_mask)).load(as: UInt32.self)
        cqFlags = p.cq_off.flags == 0 ? nil : (rings + Int(p.cq_off.flags)).assumingMemoryBound(to: UInt32.self)
        cqes = rings + Int(p.cq_off.cqes)
        sqes = sqeArea.bindMemory(to: io_uring_sqe.self, capacity: Int(p.sq_entries))
        // The indirection array maps slot i to SQE i, once and for all.
        let array = (rings + Int(p.sq_off.array)).assumingMemoryBound(to: UInt32.self)
        for i in 0..<Int(p.sq_entries) { array[i] = UInt32(i) }
        localTail = caio_load_relaxed_u32(sqTail)
        localHead = caio_load_relaxed_u32(cqHead)
        iovecs = .allocate(capacity: Int(p.sq_entries) * Self.iovPerSlot)
    }

    deinit {
        iovecs.deallocate()
        munmap(sqeMap, sqeMapSize)
        munmap(sqMap, sqMapSize)
        if cqMapSize != 0 { munmap(cqMap, cqMapSize) }
        Sys.close(fd)
    }

    /// Has the kernel signal completions on `eventFD` (IORING_REGISTER_EVENTFD).
    func registerEventFD(_ eventFD: Int32) throws(AioError) {
        var efd = eventFD
        while true {
            let rc = caio_uring_register(fd, CAIO_IORING_REGISTER_EVENTFD, &efd, 1)
            if rc >= 0 { return }
            if rc != -EINTR { throw AioError(errno: -rc) }
        }
    }

    // MARK: - Submission side (one submitter at a time)

    /// Free submission slots.
    @inline(__always) var sqSpace: UInt32 {
        sqEntries &- (localTail &- caio_load_acquire_u32(sqHead))
    }

    /// Prepares the next submission slot: `prepare` fills the entry, with the
    /// slot's 8 iovecs to use for READV/WRITEV. The caller checked `sqSpace`.
    @inline(__always) func prepareNext(
        _ prepare: (UnsafeMutablePointer<io_uring_sqe>, UnsafeMutablePointer<iovec>) -> Void
    ) {
        let slot = Int(localTail & sqMask)
        prepare(sqes + slot, iovecs + slot * Self.iovPerSlot)
        localTail &+= 1
    }

    /// Submits every prepared entry: publishes the tail and calls
    /// io_uring_enter until the kernel consumed them all (EINTR retried). On
    /// EAGAIN or EBUSY (the kernel is short of memory, or too many completions
    /// wait to be reaped) it returns false: the caller reaps and calls again.
    func submitPending() -> Bool {
        caio_store_release_u32(sqTail, localTail)
        while true {
            let unsubmitted = localTail &- caio_load_acquire_u32(sqHead)
            if unsubmitted == 0 { return true }
            let r = caio_uring_enter(fd, unsubmitted, 0, 0)
            if r >= 0 { continue }
            switch -r {
            case EINTR: continue
            case EAGAIN, EBUSY, ENOMEM: return false
            default: preconditionFailure("AioKit: io_uring_enter failed (errno \(-r))")
            }
        }
    }

    /// Has the kernel move the completions it kept aside when the completion
    /// ring was full (IORING_FEAT_NODROP) into the ring.
    func flushOverflow() {
        while true {
            let r = caio_uring_enter(fd, 0, 0, CAIO_IORING_ENTER_GETEVENTS)
            if r >= 0 || (-r != EINTR && -r != EAGAIN) { return }
        }
    }

    /// True when the kernel kept completions aside (the completion ring was
    /// full): `flushOverflow` moves them into the ring.
    var overflowed: Bool { caio_load_relaxed_u32(sqFlags) & CAIO_IORING_SQ_CQ_OVERFLOW != 0 }

    // MARK: - Completion side (one reaper at a time)

    /// True when the kernel lets the application turn the eventfd signal off.
    var canSilenceEventFD: Bool { cqFlags != nil }

    /// Turns the eventfd signal of new completions off or on
    /// (IORING_CQ_EVENTFD_DISABLED). After turning it on, the caller fences
    /// (`caio_fence_seq_cst`) and looks at the ring once more: a completion
    /// posted while it was off signals nothing.
    @inline(__always) func setEventFDSilenced(_ silenced: Bool) {
        guard let cqFlags else { return }
        let f = caio_load_relaxed_u32(cqFlags)
        let g = silenced ? f | CAIO_IORING_CQ_EVENTFD_DISABLED : f & ~CAIO_IORING_CQ_EVENTFD_DISABLED
        if f != g { caio_store_release_u32(cqFlags, g) }
    }

    /// True when a completion waits in the ring.
    @inline(__always) var hasCompletion: Bool {
        localHead != caio_load_acquire_u32(cqTail)
    }

    /// Takes the oldest completion: its user_data and result (nil: none).
    @inline(__always) func reap() -> (userData: UInt64, result: Int32)? {
        let tail = caio_load_acquire_u32(cqTail)
        if localHead == tail { return nil }
        let cqe = (cqes + Int(localHead & cqMask) * Int(CAIO_IORING_CQE_SIZE)).assumingMemoryBound(to: io_uring_cqe.self)
        let entry = (caio_cqe_user_data(cqe), caio_cqe_res(cqe))
        localHead &+= 1
        caio_store_release_u32(cqHead, localHead)  // the slot is free for the kernel again
        return entry
    }
}

// MARK: - Blocking file calls (the thread backend, AioFile's set-up)

enum FileSys {
    /// open(2) with O_CLOEXEC: the descriptor, or the errno.
    static func open(_ path: String, flags: Int32, permissions: UInt16) -> Result<Int32, Errno> {
        let fd = Sys.retrying { Int(Glibc.open(path, flags | O_CLOEXEC, mode_t(permissions))) }
        return fd >= 0 ? .success(Int32(fd)) : .failure(Errno(code: Int32(-fd)))
    }

    /// The access mode (readable, writable) and file type of an open
    /// descriptor, or the errno.
    static func inspect(_ fd: Int32) -> Result<(readable: Bool, writable: Bool, type: mode_t), Errno> {
        var st = stat()
        let r = Sys.retrying { Int(fstat(fd, &st)) }
        if r < 0 { return .failure(Errno(code: Int32(-r))) }
        let fl = Int32(Sys.retrying { Int(fcntl(fd, F_GETFL)) })
        if fl < 0 { return .failure(Errno(code: -fl)) }
        let acc = fl & O_ACCMODE
        return .success((acc == O_RDONLY || acc == O_RDWR, acc == O_WRONLY || acc == O_RDWR, st.st_mode & S_IFMT))
    }

    /// Sets FD_CLOEXEC.
    static func setCloseOnExec(_ fd: Int32) -> Errno? {
        let fl = fcntl(fd, F_GETFD)
        if fl < 0 { return Errno(code: errno) }
        if fl & FD_CLOEXEC == 0 && fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0 { return Errno(code: errno) }
        return nil
    }

    /// preadv(2): bytes read, or -errno (EINTR retried).
    static func preadv(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ count: Int, _ offset: Int64) -> Int {
        Sys.retrying { Glibc.preadv(fd, iov, Int32(count), off_t(offset)) }
    }

    /// pwritev(2): bytes written, or -errno (EINTR retried).
    static func pwritev(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ count: Int, _ offset: Int64) -> Int {
        Sys.retrying { Glibc.pwritev(fd, iov, Int32(count), off_t(offset)) }
    }

    /// fsync(2): 0 or -errno (EINTR retried).
    static func fsync(_ fd: Int32) -> Int {
        Sys.retrying { Int(Glibc.fsync(fd)) }
    }

    /// getenv(3).
    static func environment(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        return String(cString: v)
    }
}

/// An errno value.
struct Errno: Error, Sendable {
    let code: Int32
}
