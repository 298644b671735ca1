import AioKit
import Glibc
import Testing

/// Specs/TaskPool.md.
@Suite("Task pool")
struct TaskPoolTests {
    @Test("[POOL-1] [AIO-3] callbacks run on the runtime's task threads, never the finishing thread")
    func callbacksOnWorkers() throws {
        let rt = try makeRuntime(taskThreads: 2)
        let threads = Box<Set<UInt>>([])
        let callers = Box<Set<UInt>>([])
        let done = Counter()
        let handles = (0..<200).map { _ in
            AioHandle(runtime: rt) { _ in
                threads.mutate { $0.insert(UInt(pthread_self())) }
                done.increment()
            }
        }
        let me = UInt(pthread_self())
        for h in handles {
            #expect(h.start(onCancel: nil))
            h.finish()
        }
        callers.mutate { $0.insert(me) }
        #expect(eventually { done.count == 200 })
        #expect(!threads.value.contains(me))
        #expect(threads.value.count <= 2)
        rt.shutdown()
    }

    @Test("[POOL-2] with one task thread, completions dispatched from outside run in dispatch order")
    func fifoOrder() throws {
        let rt = try makeRuntime(taskThreads: 1, maxTaskThreads: 1)
        let order = Box<[Int]>([])
        let handles = (0..<500).map { i in AioHandle(runtime: rt) { _ in order.mutate { $0.append(i) } } }
        for h in handles { #expect(h.start(onCancel: nil)) }
        for h in handles { h.finish() }
        #expect(eventually { order.value.count == 500 })
        #expect(order.value == Array(0..<500))
        rt.shutdown()
    }

    @Test("[POOL-3] a completion finished inside a callback runs next on the same thread")
    func lifoSlot() throws {
        let rt = try makeRuntime(taskThreads: 2)
        for _ in 0..<50 {
            let innerThread = Box<UInt>(0)
            let outerThread = Box<UInt>(0)
            let inlineRun = Counter()
            let inner = AioHandle(runtime: rt) { _ in innerThread.value = UInt(pthread_self()) }
            let outer = AioHandle(runtime: rt) { _ in
                outerThread.value = UInt(pthread_self())
                #expect(inner.start(onCancel: nil))
                inner.finish()
                // Not run inline ([AIO-3]): finish() returned before the callback ran.
                if innerThread.value != 0 { inlineRun.increment() }
            }
            outer.sleep(.zero)
            #expect(eventually { innerThread.value != 0 })
            #expect(inlineRun.count == 0)
            #expect(outerThread.value == innerThread.value)
        }
        rt.shutdown()
    }

    @Test("[POOL-3] an endless chain on the LIFO slot does not starve queued callbacks")
    func lifoFairness() throws {
        let rt = try makeRuntime(taskThreads: 1, maxTaskThreads: 1)
        let stop = Counter()
        let chained = Counter()
        let chain = AioHandle(runtime: rt) { h in
            chained.increment()
            if stop.count == 0 && h.start(onCancel: nil) { h.finish() }
        }
        #expect(chain.start(onCancel: nil))
        chain.finish()
        #expect(eventually { chained.count > 100 })
        let other = AioHandle(runtime: rt) { _ in stop.increment() }
        #expect(other.start(onCancel: nil))
        other.finish()
        #expect(eventually { stop.count == 1 })
        expectFinishes { chain.wait() }
        rt.shutdown()
    }

    @Test("[POOL-4] blocked workers are replaced: more threads run callbacks while some wait")
    func growth() throws {
        let rt = try makeRuntime(taskThreads: 2, maxTaskThreads: 16)
        let threads = Box<Set<UInt>>([])
        let gate = AioHandle(runtime: rt) { _ in }
        gate.sleep(.milliseconds(300))
        let blockedDone = Counter()
        let blockers = (0..<4).map { _ in
            AioHandle(runtime: rt) { _ in
                threads.mutate { $0.insert(UInt(pthread_self())) }
                gate.wait()
                blockedDone.increment()
            }
        }
        for b in blockers { b.sleep(.zero) }
        #expect(eventually { blockedDone.count == 4 })
        // Four callbacks were blocked at once on a pool of two: at least four threads ran them.
        #expect(threads.value.count >= 3)
        rt.shutdown()
    }

    @Test("[POOL-5] at the ceiling a waiting worker runs queued callbacks itself")
    func helping() throws {
        let rt = try makeRuntime(taskThreads: 1, maxTaskThreads: 1)
        let done = Counter()
        let target = AioHandle(runtime: rt) { _ in done.increment() }
        let waiter = AioHandle(runtime: rt) { _ in
            // target's callback is queued behind this one on the only thread.
            #expect(target.start(onCancel: nil))
            target.finish()
            target.wait()
            done.increment()
        }
        waiter.sleep(.zero)
        #expect(eventually { done.count == 2 })
        rt.shutdown()
    }

    @Test("[POOL-6] [RT-7] bad configurations throw .invalidArgument")
    func badConfiguration() {
        #expect(throws: AioError.invalidArgument) { try AioRuntime(configuration: .init(taskThreads: 0)) }
        #expect(throws: AioError.invalidArgument) {
            try AioRuntime(configuration: .init(taskThreads: 4, maxTaskThreads: 2))
        }
        #expect(throws: AioError.invalidArgument) { try AioRuntime(configuration: .init(taskThreads: 5000)) }
        var c = AioRuntime.Configuration()
        #expect(c.taskThreads >= 2)
        #expect(c.maxTaskThreads >= c.taskThreads)
        c.taskThreads = -1
        #expect(throws: AioError.invalidArgument) { try AioRuntime(configuration: c) }
    }
}

