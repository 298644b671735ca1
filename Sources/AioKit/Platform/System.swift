import CAioShims
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

// MARK: - System calls (EINTR retried; EAGAIN reported as .wouldBlock)

/// The outcome of a non-blocking call.
enum IOResult<T> {
    case done(T)
    case wouldBlock
    case failed(Int32)  // errno
}

enum Sys {
    /// Retries `body` while it fails with EINTR; returns its result or -errno.
    @inline(__always) static func retrying(_ body: () -> Int) -> Int {
        while true {
            let r = body()
            if r >= 0 { return r }
            let e = errno
            if e == EINTR { continue }
            return -Int(e)
        }
    }

    @inline(__always) static func io(_ body: () -> Int) -> IOResult<Int> {
        let r = retrying(body)
        if r >= 0 { return .done(r) }
        let e = Int32(-r)
        if e == EAGAIN || e == EWOULDBLOCK { return .wouldBlock }
        return .failed(e)
    }

    /// close(2): EINTR is not retried (Linux closes the descriptor anyway).
    static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    static func socket(domain: Int32, type: Int32) throws(AioError) -> Int32 {
        let flags = type | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        let fd = Int32(retrying { Int(Glibc.socket(domain, flags, 0)) })
        if fd < 0 { throw AioError(errno: -fd) }
        return fd
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) -> Bool {
        var v = value
        return setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) == 0
    }

    static func getOption(_ fd: Int32, _ level: Int32, _ name: Int32) -> Int32? {
        var v: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, level, name, &v, &len) == 0 ? v : nil
    }

    /// Makes an inherited descriptor non-blocking and close-on-exec.
    static func makeNonBlockingCloseOnExec(_ fd: Int32) throws(AioError) {
        let fl = fcntl(fd, F_GETFL)
        if fl < 0 { throw AioError(errno: errno) }
        if fl & O_NONBLOCK == 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 { throw AioError(errno: errno) }
        let fd2 = fcntl(fd, F_GETFD)
        if fd2 < 0 { throw AioError(errno: errno) }
        if fd2 & FD_CLOEXEC == 0 && fcntl(fd, F_SETFD, fd2 | FD_CLOEXEC) < 0 { throw AioError(errno: errno) }
    }

    /// readv(2) into an iov list.
    @inline(__always) static func readv(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ count: Int) -> IOResult<Int> {
        io { Glibc.readv(fd, iov, Int32(count)) }
    }

    /// sendmsg(2) with MSG_NOSIGNAL: never SIGPIPE.
    @inline(__always) static func writev(_ fd: Int32, _ iov: UnsafeMutablePointer<iovec>, _ count: Int) -> IOResult<Int> {
        var msg = msghdr()
        msg.msg_iov = iov
        msg.msg_iovlen = count
        return io { Glibc.sendmsg(fd, &msg, Int32(MSG_NOSIGNAL)) }
    }

    static func accept(_ fd: Int32) -> IOResult<Int32> {
        let r = io { Int(caio_accept(fd)) }
        switch r {
        case .done(let s): return .done(Int32(s))
        case .wouldBlock: return .wouldBlock
        case .failed(let e): return .failed(e)
        }
    }
}
