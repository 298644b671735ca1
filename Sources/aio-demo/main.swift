import AioKit
import Synchronization

let counter = Atomic<Int>(0)
let h = AioHandle { h in
    let n = counter.add(1, ordering: .relaxed).newValue
    if n < 100_000 { h.sleep(.zero) }
}
h.sleep(.zero)
while counter.load(ordering: .relaxed) < 100_000 {}
h.wait()
print("chain ok", counter.load(ordering: .relaxed))

let s = AioHandle()
s.sleep(.milliseconds(50)); s.wait(); print("sleep", s.error as Any)
s.timeout = .after(.milliseconds(10)); s.sleep(.seconds(5)); s.wait(); print("sleep timeout", s.error as Any)
s.timeout = .infinite; s.sleep(.seconds(5)); s.cancel(); s.wait(); print("cancel", s.error as Any)
s.stop(); s.sleep(.zero); s.wait(); print("after stop", s.error as Any)
let rt = try AioRuntime()
let many = (0..<2000).map { _ in AioHandle(runtime: rt) { $0.reap() } }
for m in many { m.sleep(.seconds(100)) }
rt.shutdown(); print("shutdown ok")
