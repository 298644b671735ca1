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

extension AioError {
    /// The error as one word, for the handle's lock-free result (0: success).
    @inline(__always) var code: UInt64 {
        switch self {
        case .timedOut: return 1
        case .canceled: return 2
        case .stopped: return 3
        case .closed: return 4
        case .invalidArgument: return 5
        case .busy: return 6
        case .connectionRefused: return 7
        case .connectionReset: return 8
        case .connectionShutdown: return 9
        case .connectionAborted: return 10
        case .addressInUse: return 11
        case .addressInvalid: return 12
        case .unreachable: return 13
        case .tooManyOpenFiles: return 14
        case .noMemory: return 15
        case .notSupported: return 16
        case .system(let e): return 17 | UInt64(UInt32(bitPattern: e)) << 32
        }
    }

    /// The error a word from `code` stands for (nil for 0: success).
    @inline(__always) init?(code: UInt64) {
        switch code & 0xFFFF_FFFF {
        case 0: return nil
        case 1: self = .timedOut
        case 2: self = .canceled
        case 3: self = .stopped
        case 4: self = .closed
        case 5: self = .invalidArgument
        case 6: self = .busy
        case 7: self = .connectionRefused
        case 8: self = .connectionReset
        case 9: self = .connectionShutdown
        case 10: self = .connectionAborted
        case 11: self = .addressInUse
        case 12: self = .addressInvalid
        case 13: self = .unreachable
        case 14: self = .tooManyOpenFiles
        case 15: self = .noMemory
        case 16: self = .notSupported
        default: self = .system(errno: Int32(bitPattern: UInt32(truncatingIfNeeded: code >> 32)))
        }
    }
}

extension Optional where Wrapped == AioError {
    /// `code` of the error, 0 for success.
    @inline(__always) var code: UInt64 { self?.code ?? 0 }
}
