// The workloads on bare handles: alloc, dispatch, sleep0, timers, cancel and
// handle-memory (WORKLOADS.md), on AioKit's shared runtime.
//
// Hot paths (the loops inside a timed span and the callbacks) allocate
// nothing, take no lock of their own and box nothing: each closure is made
// once, before the span, and shared state lives in a class they capture, with
// `Atomic` counters.

import AioKit
import Glibc
import Synchronization

/// Starts the shared runtime's threads (the first handle does): done before a
/// timed span, it keeps that one-time set-up out of it.
func startRuntime() {
    let handle = AioHandle(runtime: .shared, callback: nil)
    withExtendedLifetime(handle) {}
}

/// Counts the calls of a callback that handles never started are given
/// (alloc, handle-memory), so that it is a real closure with a context.
final class CallCounter: Sendable {
    let calls = Atomic<Int>(0)

    /// The one callback shared by every handle of a run.
    func makeCallback() -> @Sendable (AioHandle) -> Void {
        { [self] _ in calls.add(1, ordering: .relaxed) }
    }
}

// MARK: - alloc

/// Allocate a handle with a callback and release it, N times.
func runAlloc(_ args: BenchArgs) -> Report {
    startRuntime()
    let runtime = AioRuntime.shared
    let callback = CallCounter().makeCallback()
    let n = args.n
    let span = Span.begin()
    for _ in 0..<n {
        let handle = AioHandle(runtime: runtime, callback: callback)
        withExtendedLifetime(handle) {}
    }
    let (wall, _) = span.end()
    return Report(args, wall: wall)
}

// MARK: - handle-memory

/// Allocate N handles with callbacks and keep them: resident bytes per handle.
func runHandleMemory(_ args: BenchArgs) -> Report {
    let n = args.n
    startRuntime()
    let runtime = AioRuntime.shared
    let callback = CallCounter().makeCallback()
    // The storage that keeps the handles is written (so resident) before the first reading.
    let handles = UnsafeMutablePointer<AioHandle?>.allocate(capacity: n)
    handles.initialize(repeating: nil, count: n)
    let before = residentBytes()
    let span = Span.begin()
    for i in 0..<n {
        handles[i] = AioHandle(runtime: runtime, callback: callback)
    }
    let (wall, _) = span.end()
    let after = residentBytes()

    handles.deinitialize(count: n)
    handles.deallocate()
    var report = Report(args, wall: wall)
    report.add("bytes_per_handle", Double(after - before) / Double(n), decimals: 1)
    return report
}

// MARK: - dispatch / sleep0

/// The state shared by every chain of a run.
final class ChainRun: Sendable {
    let n: Int
    let name: String
    /// Callbacks over all chains: the stop condition and the progress.
    let callbacks = Atomic<Int>(0)
    /// Set once the timed work is over: from then on an error (a stopped
    /// handle) only ends its chain.
    let stopping = Atomic<Bool>(false)
    let done = Latch()

    init(n: Int, name: String) {
        self.n = n
        self.name = name
    }

    /// Counts one successful callback; true while its chain should go on.
    @inline(__always)
    func tick() -> Bool {
        let k = callbacks.add(1, ordering: .relaxed).newValue
        if k == n { done.open() }
        return k < n
    }

    /// A callback that found `error`: the end of its chain after the timed
    /// work, a failed run before.
    func failed(_ error: AioError) {
        if stopping.load(ordering: .relaxed) { return }
        die("\(name): operation failed: \(error)")
    }
}

/// `dispatch`: a provider's begin and immediate finish; the completion goes
/// through the task pool. `start` is false only once the handle is stopped
/// (and then it has completed the handle itself).
@inline(__always)
func beginAndFinish(_ handle: AioHandle) {
    if handle.start(onCancel: nil) { handle.finish() }
}

/// C handles, each a chain whose callback starts the next operation on its own
/// handle, until N callbacks in all.
func runChains(_ args: BenchArgs, sleepZero: Bool) -> Report {
    let run = ChainRun(n: args.n, name: args.name)
    let callback: @Sendable (AioHandle) -> Void
    if sleepZero {
        callback = { [run] handle in
            if let error = handle.error { return run.failed(error) }
            if run.tick() { handle.sleep(.zero) }
        }
    } else {
        callback = { [run] handle in
            if let error = handle.error { return run.failed(error) }
            if run.tick() { beginAndFinish(handle) }
        }
    }
    let runtime = AioRuntime.shared
    let handles = (0..<args.concurrency).map { _ in AioHandle(runtime: runtime, callback: callback) }

    let span = Span.begin()
    if sleepZero {
        for handle in handles { handle.sleep(.zero) }
    } else {
        for handle in handles { beginAndFinish(handle) }
    }
    run.done.waitBounded("callback chains", progress: { [run] in run.callbacks.load(ordering: .relaxed) })
    let (wall, cpu) = span.end()

    // Chains mid-operation at the N-th callback end after one more callback
    // (or are stopped here); stop() waits for that.
    run.stopping.store(true, ordering: .relaxed)
    Watchdog.shared.bounded("stop chains") {
        for handle in handles { handle.stop() }
    }

    var report = Report(args, wall: wall)
    report.add("cpu_s", cpu, decimals: 3)
    return report
}

// MARK: - timers

/// Start times (written by the main thread before each sleep) and lateness
/// (written by each handle's own callback), one slot per handle.
final class TimerBook: @unchecked Sendable {  // slot i: main thread before start, then callback i; read after `done`
    let started: UnsafeMutablePointer<UInt64>
    let late: UnsafeMutablePointer<Int64>
    let left: Atomic<Int>
    let done = Latch()
    let count: Int

    init(n: Int) {
        count = n
        started = .allocate(capacity: n)
        started.initialize(repeating: 0, count: n)
        late = .allocate(capacity: n)
        late.initialize(repeating: 0, count: n)
        left = Atomic(n)
    }

    deinit {
        started.deallocate()
        late.deallocate()
    }

    /// Callback of timer `i`, run at `now`.
    @inline(__always)
    func fired(_ i: Int, at now: UInt64) {
        late[i] = Int64(bitPattern: now &- started[i]) &- Int64(timerDelayMillis(i)) &* 1_000_000
        if left.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { done.open() }
    }
}

/// N handles, each started once with a sleep of d_i ms, back to back.
func runTimers(_ args: BenchArgs) -> Report {
    let n = args.n
    let book = TimerBook(n: n)
    let runtime = AioRuntime.shared
    // Set-up: one handle per timer, its callback knowing its index.
    let handles = (0..<n).map { i in
        AioHandle(runtime: runtime) { [book] handle in
            let now = nowNanos()
            if let error = handle.error { die("timers: sleep: \(error)") }
            book.fired(i, at: now)
        }
    }

    let span = Span.begin()
    handles.withUnsafeBufferPointer { hs in
        for i in 0..<n {
            book.started[i] = nowNanos()
            hs[i].sleep(.milliseconds(timerDelayMillis(i)))
        }
    }
    book.done.waitBounded("timers", progress: { [book] in book.left.load(ordering: .relaxed) })
    let (wall, cpu) = span.end()

    Watchdog.shared.bounded("free timers") {
        for handle in handles { handle.stop() }  // waits for a callback still returning
    }
    var report = Report(args, wall: wall)
    report.add("cpu_s", cpu, decimals: 3)
    report.addLateness(Array(UnsafeBufferPointer(start: book.late, count: n)))
    return report
}

// MARK: - cancel

/// N times on one handle: start a 60 s sleep, cancel it, wait for its
/// callback; the result must be `.canceled`.
func runCancel(_ args: BenchArgs) -> Report {
    let n = args.n
    let counter = CallCounter()
    let handle = AioHandle(runtime: .shared, callback: counter.makeCallback())
    final class Progress: Sendable { let done = Atomic<Int>(0) }
    let progress = Progress()

    Watchdog.shared.arm("cancel", progress: { [progress] in progress.done.load(ordering: .relaxed) })
    let span = Span.begin()
    for i in 0..<n {
        handle.sleep(.seconds(60))
        handle.cancel()
        handle.wait()  // returns once the callback has run
        let error = handle.error
        if error != .canceled {
            die("cancel: result is '\(error.map { "\($0)" } ?? "success")', not 'canceled'")
        }
        progress.done.store(i + 1, ordering: .relaxed)
    }
    let (wall, _) = span.end()
    Watchdog.shared.disarm()

    let calls = counter.calls.load(ordering: .relaxed)
    if calls != n { die("cancel: \(calls) callbacks for \(n) operations") }
    Watchdog.shared.bounded("stop cancel handle") { handle.stop() }
    return Report(args, wall: wall)
}
