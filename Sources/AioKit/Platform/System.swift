import Glibc

// Every operating-system call of AioKit that may fail goes through here:
// errno is read once and turned into an AioError.

/// The text of an errno value (strerror_r, thread-safe).
func systemErrorText(_ code: Int32) -> String {
    var buf = [CChar](repeating: 0, count: 256)
    return buf.withUnsafeMutableBufferPointer { p -> String in
        // The XSI strerror_r: fills the buffer, returns 0 on success.
        guard strerror_r(code, p.baseAddress!, p.count) == 0 else { return "errno \(code)" }
        return String(cString: p.baseAddress!)
    }
}

extension AioError {
    /// The AioError for an errno value.
    init(errno code: Int32) {
        switch code {
        case ETIMEDOUT: self = .timedOut
        case ECANCELED: self = .canceled
        case EINVAL, EBADF, ENOTSOCK, EFAULT, EISDIR, ENOTDIR, ENAMETOOLONG: self = .invalidArgument
        case EBUSY, EALREADY, EINPROGRESS: self = .busy
        case ECONNREFUSED: self = .connectionRefused
        case ECONNRESET: self = .connectionReset
        case EPIPE, ESHUTDOWN: self = .connectionShutdown
        case ECONNABORTED: self = .connectionAborted
        case EADDRINUSE: self = .addressInUse
        case EADDRNOTAVAIL, EAFNOSUPPORT: self = .addressInvalid
        case ENETUNREACH, EHOSTUNREACH, ENETDOWN, EHOSTDOWN: self = .unreachable
        case EMFILE, ENFILE: self = .tooManyOpenFiles
        case ENOMEM, ENOBUFS: self = .noMemory
        case ENOTSUP, EPROTONOSUPPORT, ESOCKTNOSUPPORT, ENOSYS: self = .notSupported
        default: self = .system(errno: code)
        }
    }

    /// The AioError for the calling thread's current errno.
    static var fromErrno: AioError { AioError(errno: errno) }
}
