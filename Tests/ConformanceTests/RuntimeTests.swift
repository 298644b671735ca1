import AioKit
import Glibc
import Testing

/// Specs/Runtime.md.
@Suite("Runtime")
struct RuntimeTests {
    @Test("[RT-1] the shared runtime serves handles made without one; a private shutdown leaves it running")
    func sharedAndPrivate() throws {
        let shared = AioHandle()
        shared.sleep(.milliseconds(1))
        shared.wait()
        #expect(shared.error == nil)
        let rt = try makeRuntime()
        let h = AioHandle(runtime: rt)
        h.sleep(.zero)
        h.wait()
        rt.shutdown()
        shared.sleep(.zero)
        shared.wait()
        #expect(shared.error == nil)
        #expect(!AioRuntime.shared.isShutDown)
    }

    @Test("[RT-2] [AIO-2] shutdown completes pending operations with .stopped, each callback once")
    func shutdownCompletes() throws {
        let rt = try makeRuntime()
        let calls = Counter()
        let errors = Box<[AioError?]>([])
        let handles = (0..<500).map { _ in
            AioHandle(runtime: rt) { h in
                calls.increment()
                errors.mutate { $0.append(h.error) }
            }
        }
        for h in handles { h.sleep(.seconds(60)) }
        expectFinishes { rt.shutdown() }
        #expect(calls.count == 500)
        #expect(errors.value.allSatisfy { $0 == .stopped })
    }

    @Test("[RT-2] shutdown waits for an operation without a cancel routine until its provider finishes it")
    func shutdownWaitsForProvider() throws {
        let rt = try makeRuntime()
        let calls = Counter()
        let h = AioHandle(runtime: rt) { _ in calls.increment() }
        #expect(h.start(onCancel: nil))
        let finisher = AioHandle()  // on the shared runtime
        let shutdownDone = Counter()
        finisher.sleep(.milliseconds(100))
        expectFinishes {
            concurrently(2) { i in
                if i == 0 {
                    rt.shutdown()
                    shutdownDone.increment()
                } else {
                    finisher.wait()
                    #expect(shutdownDone.count == 0)  // still waiting for the provider
                    h.finish()
                }
            }
        }
        #expect(calls.count == 1)
        #expect(h.error == nil)
    }

    @Test("[RT-3] [AIO-12] after shutdown every start fails with .stopped and the callback runs once")
    func refusedAfterShutdown() throws {
        let rt = try makeRuntime()
        rt.shutdown()
        let calls = Counter()
        let h = AioHandle(runtime: rt) { _ in calls.increment() }
        h.sleep(.milliseconds(1))
        #expect(eventually { calls.count == 1 })
        #expect(h.error == .stopped)
        #expect(h.start(onCancel: nil) == false)
        #expect(eventually { calls.count == 2 })
        expectFinishes { h.wait() }
    }

    @Test("[RT-4] shutdown is idempotent; concurrent callers all return once it is done")
    func idempotent() throws {
        let rt = try makeRuntime()
        let hs = (0..<100).map { _ in AioHandle(runtime: rt) { _ in } }
        for h in hs { h.sleep(.seconds(60)) }
        expectFinishes { concurrently(4) { _ in rt.shutdown() } }
        #expect(hs.allSatisfy { !$0.isBusy })
        expectFinishes { rt.shutdown() }
        #expect(rt.isShutDown)
    }

    @Test("[RT-4] [RT-6] a private runtime's threads exit on shutdown and when its last reference goes")
    func threadsExit() throws {
        do {
            let rt = try AioRuntime(configuration: .init(taskThreads: 3, name: "rt4exit"))
            #expect(threadCount(named: "rt4exit-") == 5)  // 3 workers, timer, reaper
            rt.shutdown()
            #expect(threadCount(named: "rt4exit-") == 0)  // joined before shutdown returned
        }
        do {
            var rt: AioRuntime? = try AioRuntime(configuration: .init(taskThreads: 3, name: "rt6last"))
            var h: AioHandle? = AioHandle(runtime: rt!)
            h!.sleep(.zero)
            h!.wait()
            rt = nil
            #expect(threadCount(named: "rt6last-") == 5)  // the handle still holds it
            h = nil
        }
        #expect(eventually { threadCount(named: "rt6last-") == 0 })
    }

    @Test("[RT-2] [AIO-2] an operation finished while shutdown runs: its callback has returned when shutdown returns")
    func shutdownWaitsForCompletionInTransit() throws {
        // The interleaving the model in Specs/model/shutdown.pml found: a
        // provider thread finishes (the handle leaves the in-flight list)
        // just as shutdown looks for pending work, before the completion
        // reaches the task pool's queue. Shutdown must still wait for it.
        for round in 0..<300 {
            let rt = try makeRuntime(taskThreads: 1)
            let returned = Counter()
            let h = AioHandle(runtime: rt) { _ in
                sleepMillis(1)
                returned.increment()
            }
            #expect(h.start(onCancel: nil))
            let go = Counter()
            let sync = round % 2 == 1  // finishSync from the provider's own thread, too
            let provider = FacadeNet.spawn {
                while go.count == 0 {}
                if sync { h.finishSync() } else { h.finish() }
            }
            go.increment()
            rt.shutdown()
            #expect(returned.count == 1, "round \(round): shutdown returned before the callback did")
            provider()
            if returned.count != 1 { break }
        }
    }

    @Test("[RT-5] shutdown from a callback that finishSync runs on a thread of the caller's: starts it and returns")
    func shutdownFromInlineCallback() throws {
        let rt = try makeRuntime()
        let h = AioHandle(runtime: rt) { _ in rt.shutdown() }
        let sleeper = AioHandle(runtime: rt)
        sleeper.sleep(.seconds(60))
        #expect(h.start(onCancel: nil))
        expectFinishes { h.finishSync() }  // would wait for its own callback
        sleeper.wait()
        #expect(sleeper.error == .stopped)
        expectFinishes { rt.shutdown() }
        #expect(rt.isShutDown)
    }

    @Test("[RT-5] shutdown from a callback with many operations in flight")
    func shutdownFromCallbackWithPending() throws {
        let rt = try makeRuntime()
        let calls = Counter()
        let hs = (0..<200).map { _ in AioHandle(runtime: rt) { _ in calls.increment() } }
        for h in hs { h.sleep(.seconds(60)) }
        let trigger = AioHandle(runtime: rt) { _ in rt.shutdown() }
        trigger.sleep(.milliseconds(1))
        #expect(eventually { calls.count == 200 })
        expectFinishes { rt.shutdown() }
    }

    @Test("[RT-7] a runtime made with a valid configuration starts and stops")
    func validConfiguration() throws {
        let rt = try AioRuntime(configuration: .init(taskThreads: 1, maxTaskThreads: 1))
        let h = AioHandle(runtime: rt)
        h.sleep(.zero)
        h.wait()
        #expect(h.error == nil)
        rt.shutdown()
    }
}
