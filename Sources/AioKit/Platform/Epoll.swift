import CAioShims
import Glibc

/// epoll(7) and eventfd(2): the poller's system calls.
enum Epoll {
    static let input = CAIO_EPOLLIN
    static let output = CAIO_EPOLLOUT
    static let readHangUp = CAIO_EPOLLRDHUP
    static let hangUp = CAIO_EPOLLHUP
    static let error = CAIO_EPOLLERR
    static let edge = CAIO_EPOLLET

    static func create() throws(AioError) -> Int32 {
        let fd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if fd < 0 { throw AioError(errno: errno) }
        return fd
    }

    static func add(_ epfd: Int32, _ fd: Int32, events: UInt32, data: UInt64) throws(AioError) {
        if caio_epoll_ctl(epfd, EPOLL_CTL_ADD, fd, events, data) != 0 { throw AioError(errno: errno) }
    }

    static func modify(_ epfd: Int32, _ fd: Int32, events: UInt32, data: UInt64) throws(AioError) {
        if caio_epoll_ctl(epfd, EPOLL_CTL_MOD, fd, events, data) != 0 { throw AioError(errno: errno) }
    }

    /// Removes `fd`; errors (already closed) are ignored.
    static func remove(_ epfd: Int32, _ fd: Int32) {
        _ = caio_epoll_ctl(epfd, EPOLL_CTL_DEL, fd, 0, 0)
    }

    /// Waits for events; EINTR returns 0 events.
    static func wait(_ epfd: Int32, _ events: UnsafeMutablePointer<epoll_event>, _ capacity: Int32, timeoutMillis: Int32)
        -> Int
    {
        let n = epoll_wait(epfd, events, capacity, timeoutMillis)
        if n < 0 {
            precondition(errno == EINTR, "AioKit: epoll_wait failed (errno \(errno))")
            return 0
        }
        return Int(n)
    }

    @inline(__always) static func events(_ e: UnsafePointer<epoll_event>) -> UInt32 { caio_epoll_event_events(e) }
    @inline(__always) static func data(_ e: UnsafePointer<epoll_event>) -> UInt64 { caio_epoll_event_data(e) }
}

/// A non-blocking, close-on-exec eventfd used to wake a poller thread.
enum EventFD {
    static func create() throws(AioError) -> Int32 {
        let fd = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        if fd < 0 { throw AioError(errno: errno) }
        return fd
    }

    static func signal(_ fd: Int32) {
        var one: UInt64 = 1
        _ = Sys.retrying { Glibc.write(fd, &one, 8) }  // EAGAIN: the counter is already set
    }

    static func drain(_ fd: Int32) {
        var value: UInt64 = 0
        _ = Sys.retrying { Glibc.read(fd, &value, 8) }
    }
}
