import AioKit
import Glibc
import Testing

/// Specs/Timers.md.
@Suite("Timers")
struct TimerTests {
    @Test("[TMR-1] sleeps and timeouts never end before their deadline")
    func neverEarly() throws {
        let rt = try makeRuntime()
        let early = Counter()
        let done = Counter()
        var handles: [AioHandle] = []
        for i in 0..<300 {
            let ms = 1 + (i * 37) % 60
            let started = Box<Double>(0)
            let h = AioHandle(runtime: rt) { h in
                let elapsed = now() - started.value
                if elapsed < Double(ms) / 1000 { early.increment() }
                done.increment()
            }
            if i % 2 == 1 { h.timeout = .after(.milliseconds(ms)) }
            started.value = now()
            if i % 2 == 0 {
                h.sleep(.milliseconds(ms))
            } else {
                // A timeout on an operation that never finishes by itself.
                if h.start(onCancel: { h, e in h.finish(e) }) == false { done.increment() }
            }
            handles.append(h)
        }
        #expect(eventually { done.count == 300 })
        #expect(early.count == 0)
        for (i, h) in handles.enumerated() { #expect(h.error == (i % 2 == 0 ? nil : .timedOut)) }
        rt.shutdown()
    }

    @Test("[TMR-2] 100,000 pending timers: starting, canceling and expiring stay correct")
    func manyTimers() throws {
        let rt = try makeRuntime()
        let expired = Counter()
        let canceled = Counter()
        let early = Counter()
        let n = 100_000
        var handles: [AioHandle] = []
        handles.reserveCapacity(n)
        let start = now()
        for i in 0..<n {
            let ms = (i * 7919) % 1000
            let h = AioHandle(runtime: rt) { h in
                if h.error == nil {
                    if now() - start < Double(ms) / 1000 { early.increment() }
                    expired.increment()
                } else if h.error == .canceled {
                    canceled.increment()
                }
            }
            handles.append(h)
            h.sleep(i % 10 == 0 ? .seconds(3600) : .milliseconds(ms))
        }
        for i in stride(from: 0, to: n, by: 10) { handles[i].cancel() }
        #expect(eventually(within: 60) { expired.count + canceled.count == n })
        #expect(canceled.count == n / 10)
        #expect(early.count == 0)
        rt.shutdown()
    }

    @Test("[TMR-3] a short timer started after a long one fires on time, not with the long one")
    func earlierTimerWakesThread() throws {
        let rt = try makeRuntime()
        let long = AioHandle(runtime: rt) { _ in }
        long.sleep(.seconds(30))
        sleepMillis(20)  // the timer thread is now asleep until the long deadline
        let fired = Box<Double>(0)
        let t0 = now()
        let short = AioHandle(runtime: rt) { _ in fired.value = now() }
        short.sleep(.milliseconds(20))
        #expect(eventually(within: 10) { fired.value != 0 })
        #expect(fired.value - t0 < 10)
        #expect(long.isBusy)
        long.cancel()
        long.wait()
        rt.shutdown()
    }

    @Test("[TMR-4] a stale timer never touches the next operation on the same handle")
    func staleTimer() throws {
        let rt = try makeRuntime()
        for _ in 0..<200 {
            let second = Counter()
            let h = AioHandle(runtime: rt) { h in
                if second.increment() == 1 {
                    // The second operation: no timeout, only a cancel routine.
                    h.timeout = .infinite
                    _ = h.start(onCancel: { h, e in h.finish(e) })
                }
            }
            h.timeout = .after(.microseconds(200))
            // The provider's rule: completion and cancel routine claim the operation; one wins.
            let claimed = Counter()
            let started = h.start(onCancel: { h, e in if claimed.increment() == 1 { h.finish(e) } })
            #expect(started)
            // Race the timer with a provider completion.
            if claimed.increment() == 1 { h.finish() }
            #expect(eventually { second.count == 1 })
            sleepMillis(1)
            #expect(h.isBusy)  // the second operation is still pending: the old timer did nothing
            h.cancel()
            #expect(eventually { second.count == 2 })
            #expect(h.error == .canceled)
        }
        rt.shutdown()
    }

    @Test("[TMR-4] [AIO-2] timeout racing finish: exactly one callback each, thousands of times")
    func timeoutRacingFinish() throws {
        let rt = try makeRuntime()
        let calls = Counter()
        let rounds = 3000
        for i in 0..<rounds {
            let h = AioHandle(runtime: rt) { _ in calls.increment() }
            h.timeout = .after(.microseconds(Int64(i % 100)))
            // The provider's rule: exactly one of completion and cancel finishes.
            let claimed = Counter()
            let started = h.start(onCancel: { h, e in if claimed.increment() == 1 { h.finish(e) } })
            if started, i % 3 != 0 {
                if claimed.increment() == 1 { h.finish() }
            }
            h.wait()
        }
        #expect(calls.count == rounds)
        rt.shutdown()
    }

    @Test("[TMR-5] deadlines centuries away are kept and still cancel")
    func farDeadlines() throws {
        let rt = try makeRuntime()
        let a = AioHandle(runtime: rt) { _ in }
        a.sleep(.seconds(Int64.max / 4))
        let b = AioHandle(runtime: rt) { _ in }
        b.timeout = .after(.seconds(100 * 365 * 86_400))
        let startedB = b.start(onCancel: { h, e in h.finish(e) })
        #expect(startedB)
        let c = AioHandle(runtime: rt) { _ in }
        c.setExpiration(.now + .seconds(1_000_000_000))
        let startedC = c.start(onCancel: { h, e in h.finish(e) })
        #expect(startedC)
        sleepMillis(50)
        #expect(a.isBusy && b.isBusy && c.isBusy)
        a.cancel()
        b.cancel()
        c.abort(.closed)
        a.wait()
        b.wait()
        c.wait()
        #expect(a.error == .canceled)
        #expect(b.error == .canceled)
        #expect(c.error == .closed)
        rt.shutdown()
    }
}
