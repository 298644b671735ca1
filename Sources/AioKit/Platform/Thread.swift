import CAioShims
import Glibc

/// Threads the runtime owns: plain pthreads running a Swift closure.
enum Thread {
    private final class Start {
        let body: () -> Void
        let name: String
        init(_ body: @escaping () -> Void, _ name: String) { self.body = body; self.name = name }
    }

    /// Starts a thread (joinable unless `detached`); `nil` when the system
    /// refuses (EAGAIN: too many threads).
    static func spawn(name: String, detached: Bool = false, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
        let box = Unmanaged.passRetained(Start(body, name)).toOpaque()
        var tid = pthread_t()
        var attr = pthread_attr_t()
        pthread_attr_init(&attr)
        defer { pthread_attr_destroy(&attr) }
        if detached { pthread_attr_setdetachstate(&attr, Int32(PTHREAD_CREATE_DETACHED)) }
        let rc = pthread_create(&tid, &attr, { arg in
            let start = Unmanaged<Start>.fromOpaque(arg!).takeRetainedValue()
            start.body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Start>.fromOpaque(box).release()
            return nil
        }
        _ = caio_set_thread_name(tid, name)  // named before it can be seen running
        return tid
    }

    static func join(_ tid: pthread_t) {
        pthread_join(tid, nil)
    }

    @inline(__always) static var current: UInt { UInt(pthread_self()) }
}

/// A per-thread pointer slot (pthread_key_t), for the task pool's worker context.
struct ThreadLocalKey: @unchecked Sendable {  // the key is immutable after creation
    let key: pthread_key_t

    init() {
        var k = pthread_key_t()
        let rc = pthread_key_create(&k, nil)
        precondition(rc == 0, "AioKit: pthread_key_create failed (\(rc))")
        key = k
    }

    @inline(__always) func get() -> UnsafeMutableRawPointer? { pthread_getspecific(key) }
    @inline(__always) func set(_ value: UnsafeMutableRawPointer?) { pthread_setspecific(key, value) }
}
