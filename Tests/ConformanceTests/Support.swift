import AioKit
import Glibc
import Synchronization
import Testing

// Helpers for the conformance tests: counters, bounded waits and one-shot
// gates. Every wait is bounded generously (a loaded 2-core machine can be
// slow) and a test that times out fails instead of hanging.

/// A thread-safe counter.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    init() {}
    @discardableResult func increment() -> Int { value.add(1, ordering: .sequentiallyConsistent).newValue }
    @discardableResult func decrement() -> Int { value.subtract(1, ordering: .sequentiallyConsistent).newValue }
    var count: Int { value.load(ordering: .sequentiallyConsistent) }
}

/// A value set once from any thread and read from another.
final class Box<T: Sendable>: @unchecked Sendable {  // `value` guarded by `lock`
    private var lock = pthread_mutex_t()
    private var stored: T
    init(_ value: T) {
        stored = value
        pthread_mutex_init(&lock, nil)
    }
    var value: T {
        get {
            pthread_mutex_lock(&lock)
            defer { pthread_mutex_unlock(&lock) }
            return stored
        }
        set {
            pthread_mutex_lock(&lock)
            stored = newValue
            pthread_mutex_unlock(&lock)
        }
    }
    func mutate(_ body: (inout T) -> Void) {
        pthread_mutex_lock(&lock)
        body(&stored)
        pthread_mutex_unlock(&lock)
    }
}

/// Monotonic time in seconds.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func sleepMillis(_ ms: Int) {
    var ts = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
    nanosleep(&ts, nil)
}

/// Polls `condition` every millisecond for up to `seconds`; returns its last value.
@discardableResult
func eventually(within seconds: Double = 30, _ condition: () -> Bool) -> Bool {
    let end = now() + seconds
    while !condition() {
        if now() > end { return condition() }
        sleepMillis(1)
    }
    return true
}

/// Runs `body` on `count` new threads at once and joins them.
func concurrently(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    final class Start: @unchecked Sendable {  // immutable after init
        let body: @Sendable (Int) -> Void
        let index: Int
        init(_ body: @escaping @Sendable (Int) -> Void, _ index: Int) { self.body = body; self.index = index }
    }
    var threads: [pthread_t] = []
    for i in 0..<count {
        var tid = pthread_t()
        let arg = Unmanaged.passRetained(Start(body, i)).toOpaque()
        let rc = pthread_create(&tid, nil, { p in
            let s = Unmanaged<Start>.fromOpaque(p!).takeRetainedValue()
            s.body(s.index)
            return nil
        }, arg)
        precondition(rc == 0, "pthread_create failed")
        threads.append(tid)
    }
    for t in threads { pthread_join(t, nil) }
}

/// Runs `body` on a new thread and returns whether it finished within `seconds`
/// (a deadlock detector: the thread is left behind if it did not).
func finishes(within seconds: Double = 30, _ body: @escaping @Sendable () -> Void) -> Bool {
    let done = Counter()
    final class Start: @unchecked Sendable {  // immutable after init
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }
    let arg = Unmanaged.passRetained(Start({ body(); done.increment() })).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { p in
        Unmanaged<Start>.fromOpaque(p!).takeRetainedValue().body()
        return nil
    }, arg)
    precondition(rc == 0, "pthread_create failed")
    pthread_detach(tid)
    return eventually(within: seconds) { done.count == 1 }
}

/// A private runtime for a test, shut down by the caller.
func makeRuntime(taskThreads: Int = 2, maxTaskThreads: Int? = nil) throws -> AioRuntime {
    try AioRuntime(configuration: .init(taskThreads: taskThreads, maxTaskThreads: maxTaskThreads))
}

/// Expects `body` to finish on another thread within `seconds` (no deadlock).
func expectFinishes(
    within seconds: Double = 30, _ body: @escaping @Sendable () -> Void,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let ok = finishes(within: seconds, body)
    #expect(ok, "did not finish within \(seconds) s (a deadlock?)", sourceLocation: sourceLocation)
}

/// The threads of this process (/proc/self/task): name and scheduler state
/// (R running, S sleeping, D uninterruptible...).
func processThreads() -> [(name: String, state: String)] {
    guard let dir = opendir("/proc/self/task") else {
        Issue.record("cannot read /proc/self/task: thread counts would be vacuous")
        return []
    }
    defer { closedir(dir) }
    var out: [(name: String, state: String)] = []
    while let e = readdir(dir) {
        let tid = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if tid == "." || tid == ".." { continue }
        let name = readSmallFile("/proc/self/task/\(tid)/comm").split(separator: "\n").first.map(String.init) ?? "?"
        // stat: "tid (comm) S ..." (the comm may hold spaces and parentheses).
        let stat = readSmallFile("/proc/self/task/\(tid)/stat")
        var state = "?"
        if let close = stat.lastIndex(of: ")") {
            state = String(stat[stat.index(after: close)...].split(separator: " ").first ?? "?")
        }
        out.append((name, state))
    }
    return out
}

private func readSmallFile(_ path: String) -> String {
    guard let f = fopen(path, "r") else { return "" }
    defer { fclose(f) }
    var buf = [UInt8](repeating: 0, count: 512)
    let got = fread(&buf, 1, 511, f)
    return String(decoding: buf.prefix(got), as: UTF8.self)
}

/// Threads of this process whose name starts with `prefix`.
func threadCount(named prefix: String) -> Int {
    processThreads().filter { $0.name.hasPrefix(prefix) }.count
}

/// A line naming the threads whose name starts with `prefix` and their
/// states: what a shutdown that did not finish is still waiting for.
func threadReport(_ prefix: String) -> String {
    let mine = processThreads().filter { $0.name.hasPrefix(prefix) }
    if mine.isEmpty { return "no thread named \(prefix)*" }
    return mine.map { "\($0.name)[\($0.state)]" }.joined(separator: " ")
}
