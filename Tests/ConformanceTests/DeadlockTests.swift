import AioKit
import Glibc
import Synchronization
import Testing

/// Specs/Deadlocks.md: waits and teardown from inside callbacks.
@Suite("Deadlock rules")
struct DeadlockTests {
    @Test("[DL-1] wait() from the handle's own callback returns without waiting for it")
    func waitFromOwnCallback() throws {
        let rt = try makeRuntime()
        let returned = Counter()
        let h = AioHandle(runtime: rt) { h in
            h.wait()
            returned.increment()
        }
        h.sleep(.zero)
        #expect(eventually { returned.count == 1 })
        expectFinishes { h.wait() }
        rt.shutdown()
    }

    @Test("[DL-1] [AIO-4] wait() on an outer handle from a nested finishSync callback returns")
    func waitFromNestedCallback() throws {
        let rt = try makeRuntime()
        let inner = Counter()
        let outerDone = Counter()
        let b = AioHandle(runtime: rt)
        let a = AioHandle(runtime: rt) { a in
            // b's callback runs nested, on this thread, and waits for a.
            b.finishSync()
            outerDone.increment()
        }
        let b2 = AioHandle(runtime: rt) { _ in
            a.wait()
            inner.increment()
        }
        _ = b  // keep
        #expect(b2.start(onCancel: nil))
        let a2 = AioHandle(runtime: rt) { _ in
            b2.finishSync()
            outerDone.increment()
        }
        _ = a
        #expect(a2.start(onCancel: nil))
        a2.finish()
        #expect(eventually { outerDone.count == 1 && inner.count == 1 })
        rt.shutdown()
    }

    @Test("[DL-2] [AIO-17] stop() from the own callback stops the handle and returns")
    func stopFromOwnCallback() throws {
        let rt = try makeRuntime()
        let calls = Counter()
        let errors = Box<[AioError?]>([])
        let h = AioHandle(runtime: rt) { h in
            errors.mutate { $0.append(h.error) }
            if calls.increment() == 1 {
                h.stop()
                h.sleep(.zero)  // refused: the callback runs again with .stopped
            }
        }
        h.sleep(.zero)
        #expect(eventually { calls.count == 2 })
        expectFinishes { h.wait() }
        #expect(errors.value == [nil, .stopped])
        rt.shutdown()
    }

    /// 16 callbacks on a pool of 2 threads, each blocked in wait() on a handle
    /// whose own callback still has to run on the same pool.
    func waitersOnSmallPool(maxTaskThreads: Int?) throws {
        let rt = try makeRuntime(taskThreads: 2, maxTaskThreads: maxTaskThreads)
        let done = Counter()
        let targetCallbacks = Counter()
        let targets = (0..<16).map { _ in AioHandle(runtime: rt) { _ in targetCallbacks.increment() } }
        let waiters = (0..<16).map { i in
            AioHandle(runtime: rt) { [t = targets[i]] _ in
                t.wait()
                done.increment()
            }
        }
        for t in targets { t.sleep(.milliseconds(50)) }
        for w in waiters { w.sleep(.zero) }
        #expect(eventually(within: 60) { done.count == 16 })
        #expect(targetCallbacks.count == 16)
        rt.shutdown()
    }

    @Test("[DL-3] [POOL-4] 16 callbacks on a 2-thread pool each wait on another handle (growth)")
    func waitsInsideCallbacksGrow() throws {
        try waitersOnSmallPool(maxTaskThreads: nil)
    }

    @Test("[DL-3] [POOL-5] the same with no room to grow: waiting workers help")
    func waitsInsideCallbacksHelp() throws {
        try waitersOnSmallPool(maxTaskThreads: 2)
    }

    @Test("[DL-3] a chain of callbacks each waiting on the next, on a 1-thread pool with no growth")
    func chainOfWaits() throws {
        let rt = try makeRuntime(taskThreads: 1, maxTaskThreads: 1)
        let done = Counter()
        let last = AioHandle(runtime: rt) { _ in done.increment() }
        var next = last
        var all: [AioHandle] = [last]
        for _ in 0..<8 {
            let target = next
            let h = AioHandle(runtime: rt) { _ in
                target.wait()
                done.increment()
            }
            all.append(h)
            next = h
        }
        last.sleep(.milliseconds(20))
        for h in all.dropFirst() { h.sleep(.zero) }
        #expect(eventually(within: 60) { done.count == 9 })
        rt.shutdown()
    }

    @Test("[DL-3] [AIO-17] stop() on other handles from every callback at once")
    func stopOthersInsideCallbacks() throws {
        let rt = try makeRuntime(taskThreads: 2)
        let done = Counter()
        let sleepers = (0..<32).map { _ in AioHandle(runtime: rt) { _ in } }
        for s in sleepers { s.sleep(.seconds(60)) }
        let stoppers = (0..<32).map { i in
            AioHandle(runtime: rt) { [s = sleepers[i]] _ in
                s.stop()
                #expect(s.error == .stopped)
                done.increment()
            }
        }
        for s in stoppers { s.sleep(.zero) }
        #expect(eventually(within: 60) { done.count == 32 })
        rt.shutdown()
    }

    @Test("[DL-4] cancel, abort, close and reap from inside callbacks and many threads never block")
    func abortNeverWaits() throws {
        let rt = try makeRuntime()
        let victims = (0..<64).map { _ in AioHandle(runtime: rt) { _ in } }
        for v in victims { v.sleep(.seconds(60)) }
        let done = Counter()
        let h = AioHandle(runtime: rt) { _ in
            for (i, v) in victims.enumerated() {
                switch i % 4 {
                case 0: v.cancel()
                case 1: v.abort(.connectionAborted)
                case 2: v.close()
                default: v.cancel()
                }
            }
            done.increment()
        }
        h.sleep(.zero)
        #expect(eventually { done.count == 1 })
        expectFinishes {
            concurrently(4) { _ in
                for v in victims {
                    v.cancel()
                    v.close()
                }
            }
        }
        for v in victims { v.wait() }
        #expect(victims.allSatisfy { $0.error != nil })
        rt.shutdown()
    }

    @Test("[DL-5] [AIO-27] dropping the last reference inside the own callback is safe")
    func releaseInOwnCallback() throws {
        let rt = try makeRuntime()
        let ran = Counter()
        weak var weakHandle: AioHandle?
        do {
            let holder = Box<AioHandle?>(nil)
            let h = AioHandle(runtime: rt) { _ in
                holder.value = nil  // the last strong reference besides the runtime's
                ran.increment()
            }
            holder.value = h
            weakHandle = h
            h.sleep(.milliseconds(5))
        }
        #expect(eventually { ran.count == 1 })
        #expect(eventually { weakHandle == nil })
        rt.shutdown()
    }

    @Test("[DL-5] [AIO-19] reap() from the own callback while others wait on it")
    func reapInOwnCallback() throws {
        let rt = try makeRuntime()
        let ran = Counter()
        weak var weakHandle: AioHandle?
        do {
            let h = AioHandle(runtime: rt) { h in
                h.reap()
                ran.increment()
            }
            weakHandle = h
            h.sleep(.milliseconds(1))
        }
        #expect(eventually { ran.count == 1 })
        #expect(eventually { weakHandle == nil })
        rt.shutdown()
    }

    @Test("[DL-6] [RT-5] shutdown() from a callback starts the shutdown and returns")
    func shutdownFromCallback() throws {
        let rt = try makeRuntime()
        let returned = Counter()
        let pending = AioHandle(runtime: rt) { _ in }
        pending.sleep(.seconds(60))
        let h = AioHandle(runtime: rt) { _ in
            rt.shutdown()
            returned.increment()
        }
        h.sleep(.zero)
        #expect(eventually { returned.count == 1 })
        expectFinishes { pending.wait() }
        #expect(pending.error == .stopped)
        expectFinishes { rt.shutdown() }  // waits for the rest, then returns
        #expect(rt.isShutDown)
    }

    @Test("[DL-7] [AIO-13] a cancel routine may finish the handle synchronously")
    func cancelRoutineFinishesSync() throws {
        let rt = try makeRuntime()
        let errors = Box<[AioError?]>([])
        let h = AioHandle(runtime: rt) { h in errors.mutate { $0.append(h.error) } }
        let started = h.start(onCancel: { h, e in h.finishSync(e) })
        #expect(started)
        expectFinishes { h.cancel() }
        #expect(errors.value == [.canceled])  // finishSync ran the callback before cancel() returned
        rt.shutdown()
    }
}
