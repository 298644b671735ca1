// Support for aio-bench, after /work/shared/bench/WORKLOADS.md: the command
// line, exits, clocks, CPU time and resident memory, the watchdog, the latch the
// main thread waits on, percentiles and the one-line JSON report. It behaves as
// the peers' shared support (peers/common/peer_support.h) does, so that the
// figures of every implementation mean the same thing.
//
// Nothing here is on a hot path except `nowNanos()`.

import Glibc
import Synchronization

/// The `impl` of every line this program prints.
let benchImpl = "aiokit"

// MARK: - Workloads and the command line

/// The workloads of WORKLOADS.md, in the order of its table.
enum Workload: String, CaseIterable, Sendable {
    case alloc
    case dispatch
    case sleep0
    case timers
    case cancel
    case tcpPingpong = "tcp-pingpong"
    case tcpStream = "tcp-stream"
    case tcpConnect = "tcp-connect"
    case handleMemory = "handle-memory"
    case fileRead = "file-read"
    case fileWrite = "file-write"

    /// Defaults (n, concurrency, size) from the table; workloads that use no
    /// concurrency or size report 1 and 0.
    var defaults: (n: Int, concurrency: Int, size: Int) {
        switch self {
        case .alloc: return (1_000_000, 1, 0)
        case .dispatch: return (2_000_000, 1, 0)
        case .sleep0: return (200_000, 1, 0)
        case .timers: return (100_000, 1, 0)
        case .cancel: return (200_000, 1, 0)
        case .tcpPingpong: return (100_000, 1, 64)
        case .tcpStream: return (16_384, 8, 65_536)
        case .tcpConnect: return (5_000, 1, 0)
        case .handleMemory: return (100_000, 1, 0)
        case .fileRead: return (200_000, 32, 4_096)
        case .fileWrite: return (200_000, 32, 4_096)
        }
    }
}

/// Size of the file of `file-read` and `file-write` (256 MiB).
let benchFileBytes = 256 << 20

/// `aio-bench WORKLOAD [--n N] [--concurrency C] [--size BYTES] [--via NAME]`.
struct BenchArgs: Sendable {
    let workload: Workload
    let n: Int
    let concurrency: Int
    let size: Int
    /// `--via NAME`, or nil.
    let via: String?

    var name: String { workload.rawValue }

    /// Parses the command line (also `--flag=VALUE`). A bad command line: a
    /// message on stderr and exit status 2. A `--via` not listed in `vias` for
    /// the workload: exit 3, printing nothing (checked after everything else,
    /// so that a bad command line is reported as such).
    static func parse(_ argv: [String], vias: [Workload: Set<String>]) -> BenchArgs {
        let prog: String
        if let first = argv.first {
            if let slash = first.lastIndex(of: "/") {
                prog = String(first[first.index(after: slash)...])
            } else {
                prog = first
            }
        } else {
            prog = "aio-bench"
        }
        func usage(_ why: String) -> Never {
            let names = Workload.allCases.map(\.rawValue).joined(separator: "|")
            writeAll(
                STDERR_FILENO,
                "\(prog): \(why)\nusage: \(prog) {\(names)} [--n N] [--concurrency C] [--size BYTES] [--via NAME]\n")
            exit(2)
        }

        guard argv.count >= 2 else { usage("missing workload") }
        guard let workload = Workload(rawValue: argv[1]) else { usage("unknown workload '\(argv[1])'") }
        var (n, concurrency, size) = workload.defaults
        var via: String?

        var i = 2
        while i < argv.count {
            let arg = argv[i]
            var flag: String
            var value: String?
            if let eq = arg.firstIndex(of: "=") {
                flag = String(arg[..<eq])
                value = String(arg[arg.index(after: eq)...])
            } else {
                flag = arg
                if i + 1 < argv.count {
                    i += 1
                    value = argv[i]
                }
            }
            i += 1
            // The C peers keep at most 31 bytes of a flag's name.
            if flag.utf8.count > 31 { flag = String(decoding: flag.utf8.prefix(31), as: UTF8.self) }

            if flag == "--via" {
                guard let name = value, !name.isEmpty else { usage("--via needs a name") }
                via = name
                continue
            }
            guard flag == "--n" || flag == "--concurrency" || flag == "--size" else {
                usage("unknown flag '\(flag)'")
            }
            guard let text = value, let v = parseLong(text) else { usage("\(flag) needs an integer value") }
            switch flag {
            case "--n": n = v
            case "--concurrency": concurrency = v
            default: size = v
            }
        }
        if n < 1 { usage("--n must be at least 1") }
        if concurrency < 1 { usage("--concurrency must be at least 1") }
        if size < 0 { usage("--size must not be negative") }
        if (workload == .tcpPingpong || workload == .tcpStream) && size < 1 {
            usage("--size must be at least 1 for \(workload.rawValue)")
        }
        if (workload == .fileRead || workload == .fileWrite) && (size < 1 || size > benchFileBytes) {
            usage("--size must be from 1 to \(benchFileBytes) for \(workload.rawValue)")
        }
        if let via, !(vias[workload]?.contains(via) ?? false) { unsupported() }
        return BenchArgs(workload: workload, n: n, concurrency: concurrency, size: size, via: via)
    }
}

/// strtol(text, &end, 10) that accepts only a whole, non-empty, in-range number
/// (as the peers do).
private func parseLong(_ text: String) -> Int? {
    if text.isEmpty { return nil }
    return text.withCString { start -> Int? in
        var end: UnsafeMutablePointer<CChar>?
        errno = 0
        let v = strtol(start, &end, 10)
        guard errno == 0, let end, end.pointee == 0 else { return nil }
        return v
    }
}

// MARK: - Exits and output

/// Writes all of `text` to a descriptor (no stdio).
func writeAll(_ fd: Int32, _ text: String) {
    var text = text
    text.withUTF8 { bytes in
        guard var p = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let k = write(fd, p, left)
            if k > 0 {
                p += k
                left -= k
            } else if k < 0 && errno == EINTR {
                continue
            } else {
                return
            }
        }
    }
}

/// A failed run (not a bad command line): "error: MESSAGE" on stderr, exit
/// status 1 at once (safe from any thread).
func die(_ message: String) -> Never {
    writeAll(STDERR_FILENO, "error: \(message)\n")
    _exit(1)
}

/// A workload (or via) this build cannot do: print nothing, exit status 3.
func unsupported() -> Never {
    exit(3)
}

// MARK: - Clocks and resources

/// CLOCK_MONOTONIC in nanoseconds (the clock of AioKit's timers).
@inline(__always)
func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// User + system CPU time of the whole process (getrusage RUSAGE_SELF), in seconds.
func cpuSeconds() -> Double {
    var ru = rusage()
    getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &ru)
    return Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6
        + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
}

/// Resident set size: the second field of /proc/self/statm, in bytes. Reads
/// into a stack buffer, so the reading itself allocates nothing.
func residentBytes() -> Int {
    let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
    if fd < 0 { die("open /proc/self/statm: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let pages = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256) { buf -> Int? in
        let got = read(fd, buf.baseAddress, buf.count)
        guard got > 0 else { return nil }
        // "size resident shared ...": skip the first number, parse the second.
        var i = 0
        var field = 0
        while i < got {
            while i < got && buf[i] == UInt8(ascii: " ") { i += 1 }
            var value = 0
            var digits = 0
            while i < got && buf[i] >= UInt8(ascii: "0") && buf[i] <= UInt8(ascii: "9") {
                value = value * 10 + Int(buf[i] - UInt8(ascii: "0"))
                digits += 1
                i += 1
            }
            if digits == 0 { return nil }
            if field == 1 { return value }
            field += 1
        }
        return nil
    }
    guard let pages else { die("cannot parse /proc/self/statm") }
    return pages * sysconf(Int32(_SC_PAGESIZE))
}

/// The timed span of a run: from just before the first operation is started
/// to just after the last completion is observed.
struct Span {
    let startNanos: UInt64
    let startCPU: Double

    /// Call just before the first operation is started.
    static func begin() -> Span {
        let cpu = cpuSeconds()
        return Span(startNanos: nowNanos(), startCPU: cpu)
    }

    /// Call just after the last completion is observed: wall and CPU seconds.
    func end() -> (wall: Double, cpu: Double) {
        let end = nowNanos()
        let cpu = cpuSeconds()
        return (Double(end &- startNanos) / 1e9, cpu - startCPU)
    }
}

// MARK: - Mutex, condition variable, latch

/// A pthread mutex and condition variable at stable addresses.
final class PthreadLock: @unchecked Sendable {  // the pthread objects synchronise themselves
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>

    init() {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        cond = .allocate(capacity: 1)
        cond.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }
    /// Lock held.
    func wait() { pthread_cond_wait(cond, mutex) }
    /// Lock held.
    func broadcast() { pthread_cond_broadcast(cond) }
}

/// A one-shot flag the main thread waits on until a callback opens it.
final class Latch: @unchecked Sendable {  // `isOpen` guarded by `lock`
    private let lock = PthreadLock()
    private var isOpen = false

    func open() {
        lock.lock()
        isOpen = true
        lock.broadcast()
        lock.unlock()
    }

    /// Waits until open (unbounded).
    func wait() {
        lock.lock()
        while !isOpen { lock.wait() }
        lock.unlock()
    }

    /// The main thread's wait, bounded by the watchdog: `progress` reads the
    /// counter the work advances.
    func waitBounded(_ what: StaticString, progress: (@Sendable () -> Int)?) {
        Watchdog.shared.arm(what, progress: progress)
        wait()
        Watchdog.shared.disarm()
    }
}

// MARK: - Watchdog

/// Bounds the main thread's waits: while armed, a background thread looks
/// once a second at the armed progress counter; if it has not moved for
/// `limitSeconds`, it ends the process with a message (exit status 1). A
/// counter rather than a deadline, so that a slow but advancing run is never
/// cut short; a wait with no counter (teardown) is simply bounded to 120 s.
final class Watchdog: @unchecked Sendable {  // every var guarded by `lock`
    static let shared = Watchdog()
    static let limitSeconds: UInt64 = 120

    private let lock = PthreadLock()
    private var what: StaticString?
    private var progress: (@Sendable () -> Int)?
    private var seen = 0
    private var since: UInt64 = 0
    private var started = false

    /// Starts the thread (early in main, so that no timed span pays for it).
    func start() {
        lock.lock()
        defer { lock.unlock() }
        if started { return }
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { _ in Watchdog.shared.run() }, nil)
        if rc != 0 { die("pthread_create (watchdog): \(rc)") }
        pthread_detach(tid)
        started = true
    }

    /// Arms the watchdog before a wait named `what`.
    func arm(_ what: StaticString, progress: (@Sendable () -> Int)? = nil) {
        start()
        lock.lock()
        self.what = what
        self.progress = progress
        seen = progress?() ?? 0
        since = nowNanos()
        lock.unlock()
    }

    func disarm() {
        lock.lock()
        what = nil
        progress = nil
        lock.unlock()
    }

    /// Runs `body` (a wait) with the watchdog armed, without a progress counter.
    func bounded<T>(_ what: StaticString, _ body: () -> T) -> T {
        arm(what)
        defer { disarm() }
        return body()
    }

    private func run() -> Never {
        while true {
            sleep(1)
            lock.lock()
            if let what {
                let now = nowNanos()
                let value = progress?() ?? 0
                if value != seen {
                    seen = value
                    since = now
                } else if now &- since > Self.limitSeconds &* 1_000_000_000 {
                    die("\(what): no progress within \(Self.limitSeconds) s")
                }
            }
            lock.unlock()
        }
    }
}

// MARK: - Statistics

/// Nearest-rank percentile (0 < percent <= 100) of an ascending, non-empty array.
func percentile(_ sorted: [Int64], _ percent: Int) -> Int64 {
    var rank = (percent * sorted.count + 99) / 100  // ceil(percent / 100 * count)
    if rank < 1 { rank = 1 }
    if rank > sorted.count { rank = sorted.count }
    return sorted[rank - 1]
}

// MARK: - The JSON line

/// The one-line JSON object of WORKLOADS.md: the required keys in order (and
/// `via` after them when given), then the figures the workload names.
struct Report {
    private var text: String

    /// `ops_per_s` is n / wall_s, rounded half up, for every workload.
    init(_ args: BenchArgs, wall: Double) {
        text = "{\"impl\":\"\(benchImpl)\",\"workload\":\"\(args.name)\",\"n\":\(args.n)"
        text += ",\"concurrency\":\(args.concurrency),\"size\":\(args.size)"
        add("wall_s", wall, decimals: 6)
        let ops: Int64 = wall > 0 ? Int64(Double(args.n) / wall + 0.5) : 0
        text += ",\"ops_per_s\":\(ops)"
        if let via = args.via { text += ",\"via\":\"\(via)\"" }
    }

    /// A figure with a fixed number of decimals (never NaN or an exponent).
    mutating func add(_ key: String, _ value: Double, decimals: Int) {
        text += ",\"\(key)\":\(fixedPoint(value, decimals: decimals))"
    }

    /// `timers`: lateness in nanoseconds in, milliseconds out (p50, p99, max).
    mutating func addLateness(_ lateNanos: [Int64]) {
        let sorted = lateNanos.sorted()
        add("late_p50_ms", Double(percentile(sorted, 50)) / 1e6, decimals: 3)
        add("late_p99_ms", Double(percentile(sorted, 99)) / 1e6, decimals: 3)
        add("late_max_ms", Double(sorted[sorted.count - 1]) / 1e6, decimals: 3)
    }

    /// `tcp-pingpong`: round-trip times in nanoseconds in, microseconds out.
    mutating func addRoundTrips(_ rttNanos: [Int64]) {
        let sorted = rttNanos.sorted()
        add("p50_us", Double(percentile(sorted, 50)) / 1e3, decimals: 2)
        add("p99_us", Double(percentile(sorted, 99)) / 1e3, decimals: 2)
    }

    /// Writes the line to stdout.
    func emit() {
        writeAll(STDOUT_FILENO, text + "}\n")
    }
}

/// printf's "%.*f" of `value`; NaN and magnitudes over 1e15 print as 0.
func fixedPoint(_ value: Double, decimals: Int) -> String {
    var v = value
    if v != v || v > 1e15 || v < -1e15 { v = 0 }
    return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buf -> String in
        let k = withVaList([Int32(decimals), v]) { vsnprintf(buf.baseAddress, buf.count, "%.*f", $0) }
        if k < 0 || k >= buf.count { die("report figure too long") }
        return String(decoding: UnsafeRawBufferPointer(start: buf.baseAddress, count: Int(k)), as: UTF8.self)
    }
}

// MARK: - Workload helpers

/// d_i = (i * 7919) mod 1000 ms of the `timers` workload.
@inline(__always)
func timerDelayMillis(_ i: Int) -> Int {
    (i &* 7919) % 1000
}

/// Items of `total` that part `i` of `parts` gets (the first ones get the remainder).
func evenShare(_ total: Int, parts: Int, index i: Int) -> Int {
    total / parts + (i < total % parts ? 1 : 0)
}
