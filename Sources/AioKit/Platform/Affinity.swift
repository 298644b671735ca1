import CAioShims
import Glibc

/// CPU affinity (pthread_setaffinity_np): the watcher facade's
/// `setLoopAffinity` / `setPollerAffinity` ([WAT-9]).
enum CPUAffinity {
    /// Checks that `cpu` names a CPU of this machine (0 ..< configured CPUs).
    static func validate(_ cpu: Int) throws(AioError) {
        let configured = Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))
        guard cpu >= 0, cpu < max(1, configured), cpu < Int(caio_cpu_set_size()) else {
            throw AioError.invalidArgument
        }
    }

    /// Pins thread `t` to `cpu` alone; the error, or nil.
    static func pin(_ t: pthread_t, _ cpu: Int) -> AioError? {
        guard cpu >= 0, cpu < Int(caio_cpu_set_size()) else { return .invalidArgument }
        let rc = caio_pin_thread(t, Int32(cpu))
        return rc == 0 ? nil : AioError(errno: rc)
    }

    /// Pins the calling thread to `cpu` alone.
    static func pinCurrent(_ cpu: Int) throws(AioError) {
        if let e = pin(pthread_self(), cpu) { throw e }
    }
}
