import CAioShims
import Glibc
import Synchronization

/// Asynchronous files on io_uring ([FILE-10], [FILE-11]).
///
/// The engine has a few shards (one per task thread, at most 4), each an
/// io_uring instance of its own. A handle gets a shard at its first
/// operation (in turn, by blocks of 8) and keeps it (recorded in its provider
/// word), so that chains spread evenly over the shards and the shards' rounds
/// run on different task threads; a large transfer takes the next shard.
///
/// How an operation travels, in a shard:
///
/// 1. `start` begins the handle, checks the operation and appends it to the
///    shard's queue (a lock, no system call). The first operation queued
///    while no round is armed arms one.
/// 2. A *round* is the callback of one of the shard's driver handles, made to
///    complete at once: started from a task thread, it lands in that thread's
///    LIFO slot and runs right after the current callback ([POOL-3]). So every
///    operation started in one callback (and in the callbacks a round runs)
///    is submitted together: the round writes one SQE per queued operation
///    (READ/WRITE for one buffer, READV/WRITEV for more, FSYNC, ASYNC_CANCEL)
///    and calls io_uring_enter once for the batch (more only when the
///    submission ring is full). That is the batching of [FILE-11].
/// 3. Buffered reads and writes from the page cache complete inside that
///    io_uring_enter, so the round then reaps the completion ring itself and
///    runs each handle's callback at once on its task thread (`finishSync`):
///    the operations those callbacks start are queued for the next round.
///    Before it runs the first callback it arms the next round: if a callback
///    blocks in `wait()`, the pool moves that round to another thread
///    ([POOL-4]), which submits and reaps in its place, so waits inside
///    callbacks never deadlock ([DL-3]). Completions are reaped one at a time
///    under the shard's lock for the same reason: none is ever held back by a
///    callback that blocks.
/// 4. Completions the kernel posts later (a page-cache miss, a write the
///    kernel hands to its workers) signal the ring's eventfd
///    (IORING_REGISTER_EVENTFD), which is registered with the runtime's
///    poller: its handler arms a round, which reaps them the same way.
///
/// 5. io-wq, the kernel's workers for what cannot complete at once, belongs
///    to the thread that submitted: when that thread exits (a surplus task
///    thread), the kernel cancels the requests its io-wq had not started. A
///    completion with ECANCELED that nobody asked for is therefore queued
///    again (up to 3 times) and submitted by a live thread.
///
/// user_data: a handle's operation is `handle address << 16 | (operation
/// number mod 2^14) << 2`; a cancel request by user_data is 1 (its
/// completion is ignored); a cancel of every request on a closing file's
/// descriptor is `file address << 16 | 2` (counted as one more operation of
/// the shard on the file, it keeps the descriptor open until that
/// completion). The handle needs no retain of its own: its in-flight
/// reference lasts until `finish` ([AIO-27]), and the file is held by the
/// shard while it has operations on it (`AioFile.enter(slot:)`).
final class URingFileEngine: FileEngine, @unchecked Sendable {  // immutable after init; the shards guard themselves
    var backend: AioRuntime.FileBackend { .uring }
    let shards: [URingShard]
    /// The same, unretained: picking one costs no reference count (they live as long as `shards`).
    private let shardRefs: [Unmanaged<URingShard>]
    /// Hands out shards to handles that have none yet, in turn, in blocks of
    /// `shardBlock`: handles made one after the other have neighbouring lock
    /// stripes, whose objects share cache lines; keeping them on one shard
    /// (one thread) keeps those lines from bouncing between cores.
    private let nextShard = Atomic<Int>(0)
    static let shardBlock = 8
    private let nextLarge = Atomic<Int>(0)
    static let largeTransfer = 64 << 10

    init(runtime: AioRuntime, shards count: Int) throws(AioError) {
        var made: [URingShard] = []
        do {
            for i in 0..<min(count, AioFile.maxSlots) { made.append(try URingShard(runtime: runtime, index: i)) }
        } catch {
            for s in made { s.stop() }
            throw error
        }
        shards = made
        shardRefs = made.map { Unmanaged.passUnretained($0) }
    }

    func start(_ aio: AioHandle, _ file: AioFile, _ kind: FileOpKind, _ offset: Int64) {
        // A handle keeps its shard (in its provider word) from one operation to
        // the next; a large transfer, whose copy dwarfs the rest, takes the
        // next shard in turn, so that a few large ones still spread over them.
        let index: Int
        if shards.count == 1 {
            index = 0
        } else if kind != .sync, let first = aio.iovList.first, first.buffer.count >= Self.largeTransfer {
            index = nextLarge.add(1, ordering: .relaxed).oldValue % shards.count
        } else if let s = FileWord.shard(aio.providerWord, of: shards.count) {
            index = s
        } else {
            index = nextShard.add(1, ordering: .relaxed).oldValue / Self.shardBlock % shards.count
        }
        shardRefs[index]._withUnsafeGuaranteedRef { $0.start(aio, file, kind, offset, index) }
    }

    func closeFile(_ file: AioFile) {
        for s in shards { s.closeFile(file) }
    }

    func stop() {
        for s in shards { s.stop() }
    }
}

/// One io_uring instance with its queue, its rounds and its eventfd.
///
/// Notifications: the eventfd signal is silenced (IORING_CQ_EVENTFD_DISABLED)
/// while a round is armed or is submitting or reaping (`busy`): that round
/// looks at the completion ring anyway, and the page-cache completions posted
/// inside its own io_uring_enter would only wake the poller for nothing. When
/// the last one stops looking while operations are still in the kernel
/// (`settleLocked`), the signal is turned back on and the ring looked at once
/// more (after a full fence), so a completion posted in between is not missed;
/// a slow timer (`watchdog`) looks again while operations stay in the kernel,
/// in case a kernel read the old flag in that instant.
final class URingShard: @unchecked Sendable {  // vars guarded by `lock`; the ring's submission side by `submitting`, its completion side by `lock`
    /// The runtime owns this shard (through its FileService) and outlives it.
    unowned(unsafe) let runtime: AioRuntime
    /// This shard's number: its slot in every file's counts (`AioFile.enter(slot:)`).
    let index: Int
    /// The runtime's poller (kept here: a shutdown may finish after the runtime object is gone).
    let poller: Poller
    let ring: IOURing
    let eventFD: Int32
    /// Operations and cancel requests in the kernel: at most `capacity`, so
    /// that the completion ring never overflows.
    private let capacity: Int
    private let lock = Lock()
    private var registration: PollRegistration?
    /// The poller's handler (a registration holds its handler weakly).
    private var events: URingEvents?
    private let queue = FileOpQueue()
    /// Cancel requests not yet submitted: user_data of the target (tag 0), or a closing file's (tag 2).
    private var cancels: [UInt64] = []
    /// A round is armed: dispatched, and not yet begun.
    private var armed = false
    /// Rounds submitting or reaping now (not those running a callback).
    private var busy = 0
    private var inKernel = 0
    /// The eventfd signal is off (IORING_CQ_EVENTFD_DISABLED set).
    private var silenced = false
    private var watchdogArmed = false
    /// Operations were queued again by `takeCompletionLocked`: a round must be armed.
    private var requeued = false
    /// Driver handles not in use; dropped when the shard goes idle (they hold the runtime).
    private var drivers: [AioHandle] = []
    private var stopped = false
    /// Held by the one thread that writes submission entries and enters the kernel.
    private let submitting = Atomic<Bool>(false)
    private(set) var cancelRoutine: AioHandle.CancelRoutine!

    /// Completions one round runs at most before it leaves the rest to the next.
    static let roundLimit = 256
    static let ringEntries: UInt32 = 1024
    static let watchdogInterval = Duration.milliseconds(50)

    init(runtime: AioRuntime, index: Int) throws(AioError) {
        self.runtime = runtime
        self.index = index
        poller = runtime.poller
        let ring = try IOURing(entries: Self.ringEntries)  // its deinit undoes it if what follows fails
        let efd = try EventFD.create()
        do {
            try ring.registerEventFD(efd)
        } catch {
            Sys.close(efd)
            throw error
        }
        self.ring = ring
        eventFD = efd
        capacity = Int(min(ring.cqEntries, ring.sqEntries * 2))
        // Initialized: from here on a throw runs deinit, which closes the eventfd.
        cancelRoutine = { [unowned self] aio, error, seq in self.cancel(aio, error, seq) }
        let handler = URingEvents(self)
        events = handler
        registration = try poller.register(efd, interest: .readable, handler: handler)
    }

    deinit {
        if let registration { poller.deregister(registration) }
        Sys.close(eventFD)
    }

    // MARK: - Starting

    func start(_ aio: AioHandle, _ file: AioFile, _ kind: FileOpKind, _ offset: Int64, _ index: Int) {
        guard aio.begin(onCancel: nil, cancelRoutine: cancelRoutine, defaultTimeout: -1, sleepDeadline: 0, reset: true)
        else { return }
        if let error = file.check(aio, kind, offset) {
            aio.finish(error)
            return
        }
        let fileRef = Unmanaged.passUnretained(file)  // this shard's hold on the file keeps it
        let seq = aio.operationNumber
        lock.lock()
        if stopped {
            lock.unlock()
            aio.finish(.stopped)
            return
        }
        guard file.enter(slot: index) else {
            lock.unlock()
            aio.finish(.closed)
            return
        }
        if kind == .write && Self.isSmall(aio) && runtime.pool.currentWorker() != nil && file.tryInlineWrite {
            // A small write started in a callback is done here, on this task
            // thread, without the ring ([FILE-15]): buffered writes that the
            // file system cannot do without blocking (ext4's) would only be
            // handed to the kernel's workers, a thread switch each way; the
            // page cache takes it now. The shard's hold keeps the descriptor
            // open across the call. A cancel or timeout meanwhile finds no
            // operation of this number queued and leaves it to end by itself.
            // Reads stay on the ring: its batches beat a system call per read.
            aio.providerWord = FileWord.idle(FileWord.make(seq: 0, state: 0, kind: kind, shard: index))  // keeps its shard
            lock.unlock()
            let n = inlineWrite(aio, file, offset)
            lock.lock()
            let drop = file.leave(slot: index)
            lock.unlock()
            if drop { file.dropHold() }
            aio.finish(n < 0 ? AioError.fileTransfer(Int32(-n)) : nil, count: max(n, 0))
            return
        }
        aio.providerWord = FileWord.make(seq: seq, state: FileWord.queued, kind: kind, shard: index)
        aio.fileOpFile = fileRef
        aio.providerCount = Int(offset)
        queue.append(PendingFileOp(handle: Unmanaged.passUnretained(aio), file: fileRef, offset: offset, kind: kind))
        let driver = armLocked()
        lock.unlock()
        if let driver { fire(driver) }
    }

    /// Writes below this many bytes started in a callback are done at once ([FILE-15]).
    static let inlineWriteLimit = 64 << 10

    @inline(__always) private static func isSmall(_ aio: AioHandle) -> Bool {
        var total = 0
        for v in aio.iovList { total &+= v.buffer.count }
        return total < inlineWriteLimit
    }

    /// `aio`'s iov written at `offset` on this thread: the bytes written, or
    /// -errno. A write that takes long (the kernel throttling dirty pages)
    /// sends the file's next writes to the ring for a while ([FILE-15]).
    private func inlineWrite(_ aio: AioHandle, _ file: AioFile, _ offset: Int64) -> Int {
        withUnsafeTemporaryAllocation(of: iovec.self, capacity: AioHandle.maxIOV) { vecs in
            var n = 0
            for v in aio.iovList {
                vecs[n] = iovec(iov_base: v.buffer.baseAddress, iov_len: v.buffer.count)
                n += 1
            }
            let start = Clock.nanos()
            let r = FileSys.pwritev(file.fd, vecs.baseAddress!, n, offset)
            if Clock.nanos() &- start > Self.slowInlineWriteNanos { file.inlineWriteWasSlow() }
            return r
        }
    }

    /// An inline write that takes longer than this sends the next ones to the ring.
    static let slowInlineWriteNanos: UInt64 = 500_000

    /// Arms a round unless one is armed (lock held): the driver to fire, or nil.
    @inline(__always) private func armLocked() -> AioHandle? {
        if armed { return nil }
        armed = true
        if !silenced {
            silenced = true
            ring.setEventFDSilenced(true)
        }
        if let d = drivers.popLast() { return d }
        return AioHandle(runtime: runtime) { [self] d in round(d) }
    }

    /// Completes the driver at once: its callback (the round) runs through the
    /// pool, next on this thread when this is a task thread ([POOL-3]).
    @inline(__always) private func fire(_ driver: AioHandle?) {
        guard let driver else { return }
        if driver.start(onCancel: nil) { driver.finish() }  // refused (shutdown): its callback runs all the same
    }

    /// Called (lock held) whenever a round stops looking at the ring: if no
    /// round is armed or looking while operations are in the kernel, the
    /// eventfd signal goes back on, and a completion that came meanwhile arms
    /// a round. Returns that round's driver, and whether to start the watchdog.
    @inline(__always) private func settleLocked() -> (AioHandle?, Bool) {
        if armed || busy > 0 || inKernel == 0 || stopped { return (nil, false) }
        if silenced {
            silenced = false
            ring.setEventFDSilenced(false)
            caio_fence_seq_cst()  // the flag's store before the tail's load (the kernel: tail, then flag)
        }
        if ring.hasCompletion || ring.overflowed { return (armLocked(), false) }
        if watchdogArmed { return (nil, false) }
        watchdogArmed = true
        return (nil, true)
    }

    private func startWatchdog() {
        let h = AioHandle(runtime: runtime) { [self] h in watchdogFired(h) }
        h.sleep(Self.watchdogInterval)
    }

    /// The slow timer: arms a round if a completion waits unseen; goes on while
    /// operations are in the kernel.
    private func watchdogFired(_ h: AioHandle) {
        lock.lock()
        watchdogArmed = false
        var driver: AioHandle?
        var again = false
        if !stopped && h.error == nil {
            if !armed && busy == 0 && (ring.hasCompletion || ring.overflowed) { driver = armLocked() }
            if inKernel > 0 && driver == nil {
                watchdogArmed = true
                again = true
            }
        }
        lock.unlock()
        fire(driver)
        if again { startWatchdog() }
    }

    // MARK: - Rounds

    private struct Completion {
        let handle: Unmanaged<AioHandle>
        let error: AioError?
        let count: Int
        /// The file whose hold this shard drops (its last operation on it ended).
        let drop: Unmanaged<AioFile>?
    }

    /// One round: submit what is queued, then reap and run callbacks ([FILE-11]).
    private func round(_ driver: AioHandle) {
        lock.lock()
        armed = false
        busy += 1
        lock.unlock()
        flush()
        var successorArmed = false
        var done = 0
        lock.lock()
        while done < Self.roundLimit, let c = takeCompletionLocked() {
            var successor: AioHandle?
            if !successorArmed {
                // Someone must submit what the callbacks queue, and reap, even if one of them blocks.
                successorArmed = true
                successor = armLocked()
            }
            busy -= 1  // not looking while the callback runs
            let (wake, watchdog) = settleLocked()
            lock.unlock()
            fire(successor)
            fire(wake)
            if watchdog { startWatchdog() }
            if let d = c.drop { d.takeUnretainedValue().dropHold() }  // a reference of our own across the call
            c.handle.takeUnretainedValue().finishSync(c.error, count: c.count)  // finishSync wants the caller to hold a reference
            done += 1
            lock.lock()
            busy += 1
        }
        var requeueDriver: AioHandle?
        if requeued {
            requeued = false
            requeueDriver = armLocked()
        }
        busy -= 1
        drivers.append(driver)
        let (wake, watchdog) = settleLocked()
        var idle: [AioHandle] = []
        if !armed && busy == 0 && queue.isEmpty && cancels.isEmpty && inKernel == 0 {
            swap(&idle, &drivers)  // quiet: no driver (nor the runtime it holds) is kept
        }
        lock.unlock()
        fire(requeueDriver)
        fire(wake)
        if watchdog { startWatchdog() }
        _ = idle
    }

    /// Writes an SQE for every queued operation and cancel request and enters
    /// the kernel once per batch; the thread that finds another submitting
    /// leaves its work to it (that one looks again after it is done).
    private func flush() {
        while true {
            guard submitting.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
                return
            }
            lock.lock()
            var room = min(capacity - inKernel, Int(ring.sqSpace))
            while room > 0, let op = queue.popFirst() {
                op.handle!._withUnsafeGuaranteedRef { h in
                    h.providerWord = FileWord.with(h.providerWord, state: FileWord.submitted)
                    let ud = Self.userData(h, seq: FileWord.seq(h.providerWord))
                    prepare(op, h, ud)
                }
                inKernel += 1
                room -= 1
            }
            while room > 0, let c = cancels.first {
                cancels.removeFirst()
                ring.prepareNext { sqe, _ in
                    if c & 3 == 2 {
                        let file = Unmanaged<AioFile>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(c >> 16))!)
                        let fd = file._withUnsafeGuaranteedRef { $0.fd }
                        caio_sqe_prep_cancel(sqe, 0, fd, CAIO_IORING_ASYNC_CANCEL_FD | CAIO_IORING_ASYNC_CANCEL_ALL, c)
                    } else {
                        caio_sqe_prep_cancel(sqe, c, -1, 0, 1)
                    }
                }
                inKernel += 1
                room -= 1
            }
            lock.unlock()
            let submitted = ring.submitPending()
            submitting.store(false, ordering: .releasing)
            lock.lock()
            let more = (!queue.isEmpty || !cancels.isEmpty) && inKernel < capacity
            let stuck = !submitted && inKernel == 0
            lock.unlock()
            if !submitted && !stuck { return }  // the kernel is busy: reaping makes room; a later round submits
            if stuck {
                var ts = timespec(tv_sec: 0, tv_nsec: 1_000_000)  // out of kernel memory with nothing in flight: retry shortly
                nanosleep(&ts, nil)
                continue
            }
            if !more { return }
        }
    }

    @inline(__always) private static func userData(_ h: AioHandle, seq: UInt32) -> UInt64 {
        let address = UInt64(UInt(bitPattern: Unmanaged.passUnretained(h).toOpaque()))
        precondition(address >> 48 == 0, "AioKit: a handle address above 2^48 cannot be io_uring user data")
        return address << 16 | UInt64(seq & 0x3FFF) << 2
    }

    /// The SQE of one operation (submitting held).
    @inline(__always) private func prepare(_ op: PendingFileOp, _ h: AioHandle, _ ud: UInt64) {
        let fd = op.file._withUnsafeGuaranteedRef { $0.fd }
        ring.prepareNext { sqe, iovs in
            switch op.kind {
            case .sync:
                caio_sqe_prep(sqe, CAIO_IORING_OP_FSYNC, fd, 0, 0, 0, ud)
            case .read, .write:
                let list = h.iovList
                if list.count == 1 {
                    let b = list[0].buffer
                    let address = UInt64(UInt(bitPattern: b.baseAddress))
                    let length = UInt32(min(b.count, 0x7FFF_F000))  // the kernel's own limit per transfer
                    let opcode = op.kind == .read ? CAIO_IORING_OP_READ : CAIO_IORING_OP_WRITE
                    caio_sqe_prep(sqe, opcode, fd, address, length, UInt64(op.offset), ud)
                } else {
                    for (i, v) in list.enumerated() { iovs[i] = iovec(iov_base: v.buffer.baseAddress, iov_len: v.buffer.count) }
                    let address = UInt64(UInt(bitPattern: iovs))
                    let opcode = op.kind == .read ? CAIO_IORING_OP_READV : CAIO_IORING_OP_WRITEV
                    caio_sqe_prep(sqe, opcode, fd, address, UInt32(list.count), UInt64(op.offset), ud)
                }
            }
        }
    }

    /// Takes the next operation's completion from the ring and works out its
    /// result (lock held), skipping those of cancel requests; nil when none is
    /// there. An operation the kernel canceled on its own (ECANCELED with no
    /// abort asked: the thread that submitted it exited, and the kernel drops
    /// what that thread's io-wq had not started) is queued again, up to 3 times.
    @inline(__always) private func takeCompletionLocked() -> Completion? {
        while true {
            guard let (ud, res) = ring.reap() else {
                if ring.overflowed {
                    ring.flushOverflow()
                    if ring.hasCompletion { continue }
                }
                return nil
            }
            inKernel -= 1
            switch ud & 3 {
            case 0:
                let hRef = Unmanaged<AioHandle>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(ud >> 16))!)
                let c: Completion? = hRef._withUnsafeGuaranteedRef { h in
                    let word = h.providerWord
                    let fileRef = h.fileOpFile!
                    return fileRef._withUnsafeGuaranteedRef { file in
                        if res == -ECANCELED && FileWord.abortCode(word) == 0 && FileWord.retries(word) < 3
                            && !stopped && !file.isClosed
                        {
                            let retried = FileWord.with(word, retries: FileWord.retries(word) + 1)
                            h.providerWord = FileWord.with(retried, state: FileWord.queued)
                            queue.append(
                                PendingFileOp(
                                    handle: hRef, file: fileRef, offset: Int64(h.providerCount), kind: FileWord.kind(word)))
                            requeued = true
                            return nil
                        }
                        h.providerWord = FileWord.idle(word)
                        h.fileOpFile = nil
                        h.providerCount = 0
                        var error: AioError?
                        var count = 0
                        if file.isClosed {
                            error = .closed  // [FILE-9]
                        } else if res < 0 {
                            let code = FileWord.abortCode(word)
                            if code != 0 && (res == -ECANCELED || res == -EINTR) {
                                error = AioError(fileAbortCode: code)  // [FILE-8]
                            } else {
                                error = AioError.fileTransfer(-res)
                            }
                        } else if FileWord.kind(word) != .sync {
                            count = Int(res)
                        }
                        let drop = file.leave(slot: index)
                        return Completion(handle: hRef, error: error, count: count, drop: drop ? fileRef : nil)
                    }
                }
                if let c { return c }
            case 2:
                // A closing file's cancel request: its descriptor may close now.
                let file = Unmanaged<AioFile>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(ud >> 16))!)
                    .takeUnretainedValue()
                if file.leave(slot: index) { file.dropHold() }
            default:
                break  // a cancel request's own result
            }
        }
    }

    // MARK: - Cancel, close, events, stop

    /// The cancel routine of operation `seq` of `aio` ([FILE-8]): still queued,
    /// it ends at once with `error`; in the kernel, an ASYNC_CANCEL is sent
    /// and the operation ends with `error` if that stops it, else with its result.
    private func cancel(_ aio: AioHandle, _ error: AioError, _ seq: UInt32) {
        lock.lock()
        let word = aio.providerWord
        guard FileWord.seq(word) == seq else {
            lock.unlock()  // completed already, or not queued yet: it ends by itself
            return
        }
        switch FileWord.state(word) {
        case FileWord.queued:
            _ = queue.remove(aio)
            let file = aio.fileOpFile!.takeUnretainedValue()
            aio.providerWord = FileWord.idle(word)
            aio.fileOpFile = nil
            aio.providerCount = 0
            let drop = file.leave(slot: index)
            lock.unlock()
            if drop { file.dropHold() }
            aio.finish(error)
        case FileWord.submitted:
            aio.providerWord = FileWord.with(word, abort: error)
            cancels.append(Self.userData(aio, seq: seq))
            let driver = armLocked()
            lock.unlock()
            fire(driver)
        default:
            lock.unlock()
        }
    }

    /// `file` was closed ([FILE-9]): its queued operations end with `.closed`
    /// now; those in the kernel are asked to stop (ASYNC_CANCEL of every
    /// request on the descriptor) and end with `.closed` when they complete.
    func closeFile(_ file: AioFile) {
        lock.lock()
        let (removed, drop) = queue.detachAll(of: file, slot: index) { FileWord.idle($0) }
        var driver: AioHandle?
        if !stopped && file.count(slot: index) > 0 {
            // Operations of this shard are in the kernel: ask it to stop them.
            // The request counts as one more, so the descriptor stays open until its completion.
            file.enterAgain(slot: index)
            cancels.append(UInt64(UInt(bitPattern: Unmanaged.passUnretained(file).toOpaque())) << 16 | 2)
            driver = armLocked()
        }
        lock.unlock()
        fire(driver)
        if drop { file.dropHold() }
        for h in removed { h.finish(.closed) }
    }

    /// The eventfd: completions the kernel posted while no round looked ([FILE-11]).
    fileprivate func eventFDSignaled() {
        EventFD.drain(eventFD)
        lock.lock()
        var driver: AioHandle?
        if !stopped && !armed && busy == 0 && (ring.hasCompletion || ring.overflowed) { driver = armLocked() }
        lock.unlock()
        fire(driver)
    }

    func stop() {
        lock.lock()
        stopped = true
        let reg = registration
        registration = nil
        let idle = drivers
        drivers = []
        lock.unlock()
        if let reg { poller.deregister(reg) }
        _ = idle
    }
}

/// The poller's handler of a shard's eventfd (the shard itself is never
/// referenced weakly, which would make every retain of it slower).
private final class URingEvents: PollHandler, Sendable {
    unowned(unsafe) let shard: URingShard  // the shard owns this handler

    init(_ shard: URingShard) { self.shard = shard }

    func pollEvents(_ events: PollEvents, _ registration: PollRegistration) {
        shard.eventFDSignaled()
    }
}
