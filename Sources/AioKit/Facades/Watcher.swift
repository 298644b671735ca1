import Glibc

// The proactor facade ([WAT-1]..[WAT-11]), in gaio's shape: submit reads and
// writes with a context, collect their results in batches with `waitIO()`.
//
// Design. Every operation is one of the streams' own operations on an
// internal `AioHandle` (kept in a free list and reused): `receive`,
// `receiveExactly` (readFull), `sendAll` (write), with the deadline as the
// handle's expiration. On a `SocketStream` the operation completes "inline"
// (`finishSync` on the thread that finished it: a poller thread, the timer
// thread, or the submitter when it completes at once): its callback only
// appends a `WatcherResult` to the watcher's queue and signals the thread in
// `waitIO()`. So a completion costs one wake-up of the waiting thread, as in
// gaio, and no task thread is involved. Reads with no buffer go into a swap
// buffer that the stream borrows from the watcher's pool for the one system
// call, and keeps only when bytes arrived: an idle connection holds no buffer
// ([WAT-4]). Swap buffers handed out by a `waitIO()` go back to the pool at
// the next `waitIO()`.
//
// Other `AioStream`s work too, through their `receive`/`send` (loops for
// readFull and write are chained in the handle's callback, on the task pool);
// a swap read on them takes its buffer when it is submitted.

/// Which kind of operation a result is for.
public enum WatcherOperation: Sendable, Hashable { case read, write }

/// The outcome of one submitted operation ([WAT-2]).
public struct WatcherResult: @unchecked Sendable {  // buffers: caller-owned or the watcher's (a plain pointer and length)
    public let operation: WatcherOperation
    /// The context given when the operation was submitted, unchanged.
    public let context: (any Sendable)?
    public let stream: any AioStream
    /// The caller's buffer, or one of the watcher's swap buffers (valid and
    /// unchanged until the next `waitIO()`); `buffer[..<size]` holds what moved.
    /// A swap read that moved nothing has an empty buffer.
    public let buffer: UnsafeRawBufferPointer
    public let isSwapBuffer: Bool
    /// Bytes moved, also when the operation ended early (deadline, error).
    public let size: Int
    /// nil: success. `.timedOut` past the deadline, `.closed` after `free`,
    /// `.connectionShutdown` when the peer closed (a read of 0 bytes), ...
    public let error: AioError?
}

/// A proactor over AioKit streams ([WAT-1]..[WAT-11]).
///
/// Submit `read`, `readFull`, `readTimeout`, `write` and `writeTimeout` with
/// a context of your own; `waitIO()` blocks until one or more have completed
/// and returns their results, in the order they completed. Every submitted
/// operation yields exactly one result. `readFull` and `write` loop over
/// partial transfers; a deadline ends an operation with `.timedOut` and the
/// bytes already moved in `size`. Operations on one stream in one direction
/// run in the order submitted.
///
/// A read with a nil buffer lands in one of the watcher's swap buffers
/// (`swapBufferSize` bytes), taken only once data is there: thousands of idle
/// connections hold no buffer. A swap buffer stays valid and unchanged until
/// the next `waitIO()` (or until the watcher is released): copy what you keep.
/// Caller buffers must stay valid until their operation's result is returned.
///
/// One thread should call `waitIO()` (results are handed out in batches, and
/// a batch's swap buffers are recycled by the next call). The other calls may
/// come from any thread.
public final class Watcher: Sendable {
    private let core: WatcherCore

    /// A watcher whose swap buffers hold `swapBufferSize` bytes (at least 1:
    /// `.invalidArgument`); the runtime shut down: `.stopped`.
    public init(runtime: AioRuntime = .shared, swapBufferSize: Int = 65_536) throws {
        guard swapBufferSize > 0 else { throw AioError.invalidArgument }
        if runtime.isShutDown { throw AioError.stopped }
        core = WatcherCore(runtime: runtime, swapBufferSize: swapBufferSize)
    }

    deinit { core.release() }

    /// Reads some bytes ([WAT-3]); `buffer == nil`: into a swap buffer ([WAT-4]).
    /// An empty buffer: `.invalidArgument`; after `close()`: `.closed`.
    public func read(
        _ context: (any Sendable)?, _ stream: any AioStream,
        _ buffer: UnsafeMutableRawBufferPointer?
    ) throws {
        try core.submit(.read, context, stream, buffer, full: false, deadline: nil)
    }

    /// Reads until `buffer` is full, or an error or the deadline ends it
    /// ([WAT-5], [WAT-6]). Empty buffer: `.invalidArgument`.
    public func readFull(
        _ context: (any Sendable)?, _ stream: any AioStream,
        _ buffer: UnsafeMutableRawBufferPointer,
        deadline: ContinuousClock.Instant?
    ) throws {
        guard buffer.count > 0 else { throw AioError.invalidArgument }
        try core.submit(.read, context, stream, buffer, full: true, deadline: deadline)
    }

    /// `read` with a deadline ([WAT-6]).
    public func readTimeout(
        _ context: (any Sendable)?, _ stream: any AioStream,
        _ buffer: UnsafeMutableRawBufferPointer?,
        deadline: ContinuousClock.Instant
    ) throws {
        try core.submit(.read, context, stream, buffer, full: false, deadline: deadline)
    }

    /// Writes all of `buffer`, or until an error or the deadline ([WAT-5]).
    /// Empty buffer: `.invalidArgument`.
    public func write(_ context: (any Sendable)?, _ stream: any AioStream, _ buffer: UnsafeRawBufferPointer) throws {
        guard buffer.count > 0 else { throw AioError.invalidArgument }
        try core.submit(
            .write, context, stream, UnsafeMutableRawBufferPointer(mutating: buffer), full: true, deadline: nil)
    }

    /// `write` with a deadline ([WAT-6]).
    public func writeTimeout(
        _ context: (any Sendable)?, _ stream: any AioStream,
        _ buffer: UnsafeRawBufferPointer,
        deadline: ContinuousClock.Instant
    ) throws {
        guard buffer.count > 0 else { throw AioError.invalidArgument }
        try core.submit(
            .write, context, stream, UnsafeMutableRawBufferPointer(mutating: buffer), full: true, deadline: deadline)
    }

    /// Blocks until one or more operations have completed and returns them
    /// all, in the order they completed ([WAT-2]); first, the swap buffers of
    /// the previous call's results go back to the pool ([WAT-4]). After
    /// `close()` (also while waiting): throws `.closed`.
    public func waitIO() throws -> [WatcherResult] {
        try core.waitIO()
    }

    /// Closes `stream`: its pending operations end with `.closed`, each with
    /// its result ([WAT-7]). After `close()`: `.closed`.
    public func free(_ stream: any AioStream) throws {
        try core.checkOpen()
        stream.close()
    }

    /// Ends the watcher ([WAT-8]): pending operations end (their results are
    /// not returned), a thread in `waitIO()` and later calls throw `.closed`
    /// (so does a second `close()`). Streams stay open (`free` closes them).
    public func close() throws {
        try core.close()
    }

    /// Pins the thread that runs the watcher's loop, the one that calls
    /// `waitIO()` (where results are handled and the next operations
    /// submitted), to `cpu` ([WAT-9]): at once when called from that thread,
    /// otherwise at its next `waitIO()`. No such CPU: `.invalidArgument`.
    public func setLoopAffinity(_ cpu: Int) throws {
        try core.setLoopAffinity(cpu)
    }

    /// Pins the runtime's poller threads (which perform and complete the
    /// watcher's socket I/O) to `cpu` ([WAT-9]), now and when they start. It
    /// applies to the whole runtime. No such CPU: `.invalidArgument`.
    public func setPollerAffinity(_ cpu: Int) throws {
        try CPUAffinity.validate(cpu)
        try core.checkOpen()
        try core.runtime.poller.setAffinity(cpu)
    }
}

/// The watcher's swap buffers ([WAT-4]): lent to streams for one system call,
/// kept by results until the next `waitIO()`.
final class SwapPool: SwapBufferSource, @unchecked Sendable {  // vars guarded by `lock`
    let size: Int
    private let lock = Lock()
    private var free: [UnsafeMutableRawBufferPointer] = []
    private var all: [UnsafeMutableRawBufferPointer] = []
    /// Spare buffers kept past this are freed when they come back.
    static let keep = 64

    init(size: Int) { self.size = size }

    deinit {
        for b in all { b.deallocate() }
    }

    func takeSwapBuffer() -> UnsafeMutableRawBufferPointer {
        lock.lock()
        if let b = free.popLast() {
            lock.unlock()
            return b
        }
        lock.unlock()
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
        lock.withLock { all.append(b) }
        return b
    }

    func returnSwapBuffer(_ buffer: UnsafeMutableRawBufferPointer) {
        lock.withLock { free.append(buffer) }
    }

    /// Buffers a `waitIO()` batch held: back to the pool, extras freed.
    func recycle(_ buffers: [UnsafeMutableRawBufferPointer]) {
        if buffers.isEmpty { return }
        var extra: [UnsafeMutableRawBufferPointer] = []
        lock.lock()
        for b in buffers {
            if free.count < Self.keep {
                free.append(b)
            } else {
                extra.append(b)
            }
        }
        if !extra.isEmpty {
            let gone = Set(extra.map { UInt(bitPattern: $0.baseAddress) })
            all.removeAll { gone.contains(UInt(bitPattern: $0.baseAddress)) }
        }
        lock.unlock()
        for b in extra { b.deallocate() }
    }
}

/// One submitted operation, reused: its handle and what its result reports.
/// Fields are set by the submitter before the handle starts and read by the
/// callback after it completes (ordered by the handle's lock); `next`/`prev`
/// are guarded by the core's lock.
final class WatcherOp: @unchecked Sendable {
    /// Strong: a callback may still be finishing when the watcher goes (`close()` breaks the cycle).
    let core: WatcherCore
    var handle: AioHandle!
    var operation = WatcherOperation.read
    var context: (any Sendable)?
    var stream: (any AioStream)?
    var buffer: UnsafeMutableRawBufferPointer?
    var isSwap = false
    var full = false
    /// On a SocketStream: completes inline, loops in the stream.
    var viaSocket = false
    /// Bytes moved by earlier steps (streams other than SocketStream).
    var done = 0
    var iov: [AioIOV] = [AioIOV(UnsafeMutableRawBufferPointer(start: nil, count: 0))]
    /// In the core's in-flight list.
    var next: WatcherOp?
    weak var prev: WatcherOp?
    var linked = false

    init(core: WatcherCore) {
        self.core = core
        handle = AioHandle(runtime: core.runtime) { [self] h in core.completed(self, h) }
        try? handle.setInput(0, core.swap)
    }
}

final class WatcherCore: @unchecked Sendable {  // vars guarded by `lock`
    let runtime: AioRuntime
    let swap: SwapPool
    let lock = ConditionLock()
    private var closed = false
    private var results: [WatcherResult] = []
    private var waiting = 0
    private var freeOps: [WatcherOp] = []
    private var inFlight: WatcherOp?
    /// Swap buffers of the last batch handed out.
    private var handedOut: [UnsafeMutableRawBufferPointer] = []
    private var loopCPU: Int?
    private var loopGeneration = 0
    private var pinnedGeneration = 0
    private var loopThread: pthread_t?

    static let noIOV: [AioIOV] = []

    init(runtime: AioRuntime, swapBufferSize: Int) {
        self.runtime = runtime
        swap = SwapPool(size: swapBufferSize)
    }

    func checkOpen() throws {
        if lock.withLock({ closed }) { throw AioError.closed }
    }

    func submit(
        _ operation: WatcherOperation, _ context: (any Sendable)?, _ stream: any AioStream,
        _ buffer: UnsafeMutableRawBufferPointer?, full: Bool, deadline: ContinuousClock.Instant?
    ) throws {
        if let buffer, buffer.count == 0 { throw AioError.invalidArgument }
        lock.lock()
        if closed {
            lock.unlock()
            throw AioError.closed
        }
        let op = freeOps.popLast() ?? WatcherOp(core: self)
        link(op)
        lock.unlock()

        op.operation = operation
        op.context = context
        op.stream = stream
        op.full = full
        op.done = 0
        let h = op.handle!
        if let deadline { h.setExpiration(deadline) } else { h.timeout = .infinite }
        let socket = stream as? SocketStream
        op.viaSocket = socket != nil
        if let buffer {
            op.buffer = buffer
            op.isSwap = false
        } else if socket != nil {
            op.buffer = nil  // borrowed when bytes are there
            op.isSwap = true
        } else {
            op.buffer = swap.takeSwapBuffer()
            op.isSwap = true
        }
        if let b = op.buffer {
            try? h.setIOV(Self.noIOV)  // the handle drops its reference to `op.iov`: no copy below
            op.iov[0] = AioIOV(b)
            try? h.setIOV(op.iov)
        }
        let receive = operation == .read
        if let socket {
            socket.startForWatcher(h, receive: receive, all: full, swap: op.buffer == nil)
        } else if receive {
            stream.receive(h)
        } else {
            stream.send(h)
        }
    }

    /// An operation's handle completed ([WAT-2]): on the finishing thread for
    /// a SocketStream (inline), on a task thread otherwise.
    func completed(_ op: WatcherOp, _ h: AioHandle) {
        let error = h.error
        let count = h.count
        if op.viaSocket {
            report(op, h, error, count)
            return
        }
        op.done += count
        if !continueStep(op, h, error, count) { report(op, h, error, op.done) }
    }

    /// Streams other than SocketStream: readFull and write loop here. True
    /// when the next step was started.
    private func continueStep(_ op: WatcherOp, _ h: AioHandle, _ error: AioError?, _ count: Int) -> Bool {
        guard op.full, error == nil, count > 0, let b = op.buffer, let stream = op.stream else { return false }
        if op.done >= b.count { return false }
        try? h.setIOV(Self.noIOV)
        op.iov[0] = AioIOV(UnsafeMutableRawBufferPointer(rebasing: b[op.done...]))
        try? h.setIOV(op.iov)
        if op.operation == .read { stream.receive(h) } else { stream.send(h) }
        return true
    }

    /// Queues the result of `op`: `size` bytes moved in all.
    private func report(_ op: WatcherOp, _ h: AioHandle, _ error: AioError?, _ size: Int) {
        var buffer = UnsafeRawBufferPointer(start: nil, count: 0)
        var lent: UnsafeMutableRawBufferPointer?
        if op.isSwap {
            if op.viaSocket {
                if size > 0, let iov = h.output(0) as? AioIOV { lent = iov.buffer }
            } else {
                lent = op.buffer
            }
            if let l = lent {
                if size > 0 {
                    buffer = UnsafeRawBufferPointer(l)
                } else {
                    swap.returnSwapBuffer(l)
                    lent = nil
                }
            }
        } else if let b = op.buffer {
            buffer = UnsafeRawBufferPointer(b)
        }
        let result = WatcherResult(
            operation: op.operation, context: op.context, stream: op.stream!, buffer: buffer,
            isSwapBuffer: op.isSwap, size: size, error: error)
        op.context = nil
        op.stream = nil
        op.buffer = nil
        lock.lock()
        if op.linked { unlink(op) }
        if closed {
            lock.unlock()
            if let lent { swap.returnSwapBuffer(lent) }
            withExtendedLifetime(result) {}
            return
        }
        results.append(result)
        resultsQueued.set()
        freeOps.append(op)
        if waiting > 0 { lock.signal() }
        lock.unlock()
    }

    /// Set (under `lock`) when a result is queued, cleared when `waitIO`
    /// takes the batch: `waitIO` spins on it before parking.
    private let resultsQueued = Spinning.Flag()

    func waitIO() throws -> [WatcherResult] {
        lock.lock()
        defer { lock.unlock() }
        if closed { throw AioError.closed }
        if !handedOut.isEmpty {
            swap.recycle(handedOut)  // the previous batch's swap buffers ([WAT-4])
            handedOut.removeAll(keepingCapacity: true)
        }
        let me = pthread_self()
        if loopThread == nil || pthread_equal(loopThread!, me) == 0 {
            loopThread = me
            pinnedGeneration = 0
        }
        if let cpu = loopCPU, pinnedGeneration != loopGeneration {
            pinnedGeneration = loopGeneration
            _ = CPUAffinity.pin(me, cpu)
        }
        if results.isEmpty && !closed {
            // Look for a result for a moment before parking: one that comes
            // meanwhile (the answer to a request just written) is taken
            // without a wake-up, a thread switch each way saved.
            lock.unlock()
            resultsQueued.spin(for: Spinning.nanos)
            lock.lock()
        }
        while results.isEmpty && !closed {
            waiting += 1
            lock.wait()
            waiting -= 1
        }
        if closed { throw AioError.closed }
        let batch = results
        results = []
        resultsQueued.clear()
        results.reserveCapacity(batch.count)
        for r in batch where r.isSwapBuffer && r.buffer.count > 0 {
            handedOut.append(UnsafeMutableRawBufferPointer(mutating: r.buffer))
        }
        return batch
    }

    func setLoopAffinity(_ cpu: Int) throws {
        try CPUAffinity.validate(cpu)
        lock.lock()
        defer { lock.unlock() }
        if closed { throw AioError.closed }
        if let t = loopThread, pthread_equal(t, pthread_self()) != 0 {
            try CPUAffinity.pinCurrent(cpu)
            loopCPU = cpu
            loopGeneration += 1
            pinnedGeneration = loopGeneration
            return
        }
        loopCPU = cpu
        loopGeneration += 1
    }

    // MARK: - In-flight list (lock held)

    private func link(_ op: WatcherOp) {
        op.prev = nil
        op.next = inFlight
        inFlight?.prev = op
        inFlight = op
        op.linked = true
    }

    private func unlink(_ op: WatcherOp) {
        if let p = op.prev { p.next = op.next } else { inFlight = op.next }
        op.next?.prev = op.prev
        op.next = nil
        op.prev = nil
        op.linked = false
    }

    // MARK: - Closing

    /// `close()` ([WAT-8]).
    func close() throws {
        lock.lock()
        if closed {
            lock.unlock()
            throw AioError.closed
        }
        closed = true
        var pending: [WatcherOp] = []
        while let op = inFlight {
            unlink(op)
            pending.append(op)
        }
        results.removeAll()
        lock.broadcast()
        lock.unlock()
        for op in pending { op.handle.abort(.closed) }
        for op in pending { op.handle.wait() }
        let ops = lock.withLock { () -> [WatcherOp] in
            defer { freeOps = [] }
            return freeOps + pending
        }
        for op in ops { op.handle = nil }  // breaks the op ↔ handle cycle
    }

    /// The watcher is released: close it if that was not done.
    func release() {
        _ = try? close()
    }
}
