import Glibc

/// Asynchronous files on a small fixed set of blocking threads: the backend
/// where io_uring is refused, or when it is asked for ([FILE-10]).
///
/// One FIFO of queued operations under a condition lock; the threads are
/// started on the first operation and joined at the runtime's shutdown. A
/// thread takes the oldest operation, runs preadv, pwritev or fsync, and
/// finishes the handle (the callback runs on a task thread, [AIO-3]). A
/// queued operation can be canceled at once; one a thread is running ends
/// with its result ([FILE-8]).
final class ThreadFileEngine: FileEngine, @unchecked Sendable {  // vars guarded by `lock`
    var backend: AioRuntime.FileBackend { .threads }
    private let lock = ConditionLock()
    private let queue = FileOpQueue()
    private var threads: [pthread_t] = []
    private var started = false
    private var stopping = false
    private var idle = 0
    private let threadCount: Int
    private let name: String
    private(set) var cancelRoutine: AioHandle.CancelRoutine!

    init(name: String) {
        let cores = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        threadCount = max(4, min(16, cores))
        self.name = name + "-file"
        cancelRoutine = { [unowned self] aio, error, seq in self.cancel(aio, error, seq) }
    }

    func start(_ aio: AioHandle, _ file: AioFile, _ kind: FileOpKind, _ offset: Int64) {
        guard aio.begin(onCancel: nil, cancelRoutine: cancelRoutine, defaultTimeout: -1, sleepDeadline: 0, reset: true)
        else { return }
        if let error = file.check(aio, kind, offset) {
            aio.finish(error)
            return
        }
        let fileRef = Unmanaged.passUnretained(file)  // the slot's hold keeps it
        let seq = aio.operationNumber
        lock.lock()
        if stopping || !startThreadsLocked() {
            lock.unlock()
            aio.finish(stopping ? .stopped : .noMemory)
            return
        }
        guard file.enter(slot: 0) else {
            lock.unlock()
            aio.finish(.closed)
            return
        }
        aio.providerWord = FileWord.make(seq: seq, state: FileWord.queued, kind: kind)
        aio.fileOpFile = fileRef
        aio.providerCount = Int(offset)
        queue.append(PendingFileOp(handle: Unmanaged.passUnretained(aio), file: fileRef, offset: offset, kind: kind))
        if idle > 0 { lock.signal() }
        lock.unlock()
    }

    /// Starts the threads on first use (lock held); false if none could start.
    private func startThreadsLocked() -> Bool {
        if started { return !threads.isEmpty }
        started = true
        for _ in 0..<threadCount {
            guard let t = Thread.spawn(name: name, { [self] in run() }) else { break }
            threads.append(t)
        }
        return !threads.isEmpty
    }

    private func run() {
        lock.lock()
        while true {
            if let op = queue.popFirst() {
                let h = op.handle!.takeUnretainedValue()
                h.providerWord = FileWord.with(h.providerWord, state: FileWord.submitted)
                lock.unlock()
                let r = perform(op, h)
                lock.lock()
                h.providerWord = 0
                h.fileOpFile = nil
                h.providerCount = 0
                let file = op.file.takeUnretainedValue()
                let error: AioError? = file.isClosed ? .closed : (r < 0 ? AioError.fileTransfer(Int32(-r)) : nil)
                let drop = file.leave(slot: 0)
                lock.unlock()
                if drop { file.dropHold() }
                h.finish(error, count: error == nil && op.kind != .sync ? r : 0)
                lock.lock()
                continue
            }
            if stopping { break }
            idle += 1
            lock.wait()
            idle -= 1
        }
        lock.unlock()
    }

    /// The blocking call: bytes moved, or -errno.
    private func perform(_ op: PendingFileOp, _ h: AioHandle) -> Int {
        let fd = op.file._withUnsafeGuaranteedRef { $0.fd }
        if op.kind == .sync { return FileSys.fsync(fd) }
        let list = h.iovList
        return withUnsafeTemporaryAllocation(of: iovec.self, capacity: AioHandle.maxIOV) { iovs in
            for (i, v) in list.enumerated() { iovs[i] = iovec(iov_base: v.buffer.baseAddress, iov_len: v.buffer.count) }
            return op.kind == .read
                ? FileSys.preadv(fd, iovs.baseAddress!, list.count, op.offset)
                : FileSys.pwritev(fd, iovs.baseAddress!, list.count, op.offset)
        }
    }

    /// A queued operation ends at once with `error`; a running one with its result ([FILE-8]).
    private func cancel(_ aio: AioHandle, _ error: AioError, _ seq: UInt32) {
        lock.lock()
        let word = aio.providerWord
        guard FileWord.seq(word) == seq, FileWord.state(word) == FileWord.queued, let op = queue.remove(aio) else {
            lock.unlock()
            return
        }
        aio.providerWord = 0
        aio.fileOpFile = nil
        aio.providerCount = 0
        let file = op.file.takeUnretainedValue()
        let drop = file.leave(slot: 0)
        lock.unlock()
        if drop { file.dropHold() }
        aio.finish(error)
    }

    func closeFile(_ file: AioFile) {
        lock.lock()
        let (removed, drop) = queue.detachAll(of: file, slot: 0) { _ in 0 }
        lock.unlock()
        if drop { file.dropHold() }
        for h in removed { h.finish(.closed) }
    }

    func stop() {
        lock.lock()
        stopping = true
        let ts = threads
        threads = []
        lock.broadcast()
        lock.unlock()
        for t in ts { Thread.join(t) }
    }
}
