/// The result of an operation that did not succeed (`AioHandle.error`; `nil`
/// is success), and the error thrown by AioKit's throwing calls.
///
/// Each case is one cause a caller may act on; `system(errno:)` carries any
/// operating-system error not named here. See `Specs/Handle.md` [AIO-30].
public enum AioError: Error, Sendable, Hashable {
    /// The operation's timeout or expiration passed before it completed.
    case timedOut
    /// `cancel()` ended the operation.
    case canceled
    /// `stop()`, `close()`, `reap()` or the runtime's `shutdown()` ended it, or
    /// the handle (or runtime) no longer accepts operations.
    case stopped
    /// The object the operation was on (stream, listener, dialer, file) was closed.
    case closed
    /// A bad argument: an index, a count, a descriptor, a size.
    case invalidArgument
    /// The object is busy with an operation that excludes this one.
    case busy
    case connectionRefused, connectionReset, connectionShutdown, connectionAborted
    case addressInUse, addressInvalid, unreachable, tooManyOpenFiles, noMemory, notSupported
    /// Any operating-system error not named above.
    case system(errno: Int32)
}

extension AioError: CustomStringConvertible {
    public var description: String {
        switch self {
        case .timedOut: return "timed out"
        case .canceled: return "canceled"
        case .stopped: return "stopped"
        case .closed: return "closed"
        case .invalidArgument: return "invalid argument"
        case .busy: return "busy"
        case .connectionRefused: return "connection refused"
        case .connectionReset: return "connection reset by peer"
        case .connectionShutdown: return "connection shut down by peer"
        case .connectionAborted: return "connection aborted"
        case .addressInUse: return "address in use"
        case .addressInvalid: return "address invalid"
        case .unreachable: return "destination unreachable"
        case .tooManyOpenFiles: return "too many open files"
        case .noMemory: return "out of memory"
        case .notSupported: return "not supported"
        case .system(let e): return "system error \(e) (\(systemErrorText(e)))"
        }
    }
}
