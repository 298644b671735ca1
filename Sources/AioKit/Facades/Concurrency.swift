/// The Swift concurrency bridge ([ASYNC-1]..[ASYNC-6]): await any operation,
/// with Task cancellation canceling it.
///
/// Trade-off: callbacks give the lowest latency (a completion runs on the
/// task thread that finished it); `await` gives the simplest code at the cost
/// of a hop to the awaiting task's executor per operation.
extension AioHandle {
    /// Starts an operation through `start` (for example `{ stream.receive($0) }`)
    /// and returns when its callback would have run, throwing the handle's
    /// error ([ASYNC-1]). The handle must have no callback of its own (that is
    /// a programming error and traps, [ASYNC-6]). Cancelling the awaiting Task cancels
    /// the operation, which then throws `.canceled` ([ASYNC-2]); a Task already
    /// cancelled starts nothing and throws `CancellationError` ([ASYNC-3]).
    /// Runs in the caller's isolation, so it can be called from any actor ([ASYNC-5]).
    /// `start` must start exactly one operation on the handle.
    nonisolated(nonsending)
    public func perform(_ start: (AioHandle) -> Void) async throws {
        precondition(callback == nil, "AioKit: perform() needs a handle without a callback of its own")
        try Task.checkCancellation()
        try await withTaskCancellationHandler {
            try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<Void, any Error>) in
                stripe.lock()
                precondition(resumeHook == nil, "AioKit: perform() on a handle that is already being awaited")
                resumeHook = continuation
                stripe.unlock()
                start(self)
            }
        } onCancel: {
            self.cancel()
        }
    }
}

/// Memory owned by one async call, freed when it returns.
final class AsyncBuffer: @unchecked Sendable {  // used by one operation at a time, then freed
    let bytes: UnsafeMutableRawBufferPointer
    init(count: Int) { bytes = .allocate(byteCount: max(count, 1), alignment: 16) }
    deinit { bytes.deallocate() }
}

extension AioStream {
    /// Sends all of `bytes` ([ASYNC-4]); throws the stream's error (`.closed`,
    /// `.connectionReset`...) or `.canceled` if the Task is cancelled.
    public func send(_ bytes: some Collection<UInt8> & Sendable) async throws {
        let count = bytes.count
        if count == 0 { return }
        let buffer = AsyncBuffer(count: count)
        buffer.bytes.copyBytes(from: bytes)
        let aio = AioHandle(runtime: (self as? SocketStream)?.runtime ?? .shared)
        var sent = 0
        while sent < count {
            try aio.setIOV([AioIOV(UnsafeMutableRawBufferPointer(rebasing: buffer.bytes[sent..<count]))])
            if let socket = self as? SocketStream {
                try await aio.perform { socket.sendAll($0) }
            } else {
                try await aio.perform { self.send($0) }
            }
            sent += aio.count
        }
    }

    /// Receives at least one and at most `maxCount` bytes ([ASYNC-4]); a peer
    /// that closed throws `.connectionShutdown`; `maxCount` < 1 throws `.invalidArgument`.
    public func receive(upTo maxCount: Int) async throws -> [UInt8] {
        guard maxCount >= 1 else { throw AioError.invalidArgument }
        let buffer = AsyncBuffer(count: maxCount)
        let aio = AioHandle(runtime: (self as? SocketStream)?.runtime ?? .shared)
        try aio.setIOV([AioIOV(buffer.bytes)])
        try await aio.perform { self.receive($0) }
        return Array(UnsafeRawBufferPointer(rebasing: buffer.bytes[..<aio.count]))
    }
}

extension StreamListener {
    /// Accepts one connection ([ASYNC-4]).
    public func accept() async throws -> any AioStream {
        let aio = AioHandle(runtime: runtime)
        try await aio.perform { self.accept($0) }
        guard let stream = aio.output(0) as? any AioStream else { throw AioError.closed }
        return stream
    }
}

extension StreamDialer {
    /// Connects ([ASYNC-4]).
    public func dial() async throws -> any AioStream {
        let aio = AioHandle(runtime: runtime)
        try await aio.perform { self.dial($0) }
        guard let stream = aio.output(0) as? any AioStream else { throw AioError.closed }
        return stream
    }
}
