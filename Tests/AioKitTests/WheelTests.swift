@testable import AioKit
import Testing

/// The timing wheel against a reference model: random inserts, removes and
/// advances; every entry comes out exactly once, never before its tick, and
/// no later than the first advance that reaches its tick.
@Suite("Timing wheel")
struct WheelTests {
    struct Rng {
        var x: UInt64
        mutating func next() -> UInt64 {
            x ^= x << 13
            x ^= x >> 7
            x ^= x << 17
            return x
        }
    }

    @Test("random operations match a reference model", arguments: [1 as UInt64, 7, 42, 1234, 99_999])
    func randomized(seed: UInt64) throws {
        let rt = try AioRuntime(configuration: .init(taskThreads: 1))
        defer { rt.shutdown() }
        var rng = Rng(x: seed &* 0x9E37_79B9_7F4A_7C15 | 1)
        let start: UInt64 = 1_000_000 + (rng.next() % 1_000_000)
        var wheel = TimingWheel(startTick: start)
        defer { wheel.deallocate() }
        let handles = (0..<400).map { _ in AioHandle(runtime: rt) }
        var expected: [ObjectIdentifier: UInt64] = [:]  // handle -> tick, while in the wheel
        var now = start
        var due = ContiguousArray<(Unmanaged<AioHandle>, UInt32)>()
        for _ in 0..<20_000 {
            let h = handles[Int(rng.next() % UInt64(handles.count))]
            let id = ObjectIdentifier(h)
            switch rng.next() % 10 {
            case 0..<5:
                if expected[id] != nil { wheel.remove(h) }
                // Mostly near deadlines, sometimes far ones (all levels).
                let span: UInt64 = rng.next() % 4 == 0 ? (1 << (rng.next() % 46)) : 300
                let tick = now + 1 + rng.next() % span
                wheel.insert(h, tick: tick)
                expected[id] = tick
            case 5..<7:
                if expected[id] != nil {
                    wheel.remove(h)
                    expected[id] = nil
                }
            default:
                now += rng.next() % (rng.next() % 8 == 0 ? 5000 : 40)
                wheel.advance(to: now, into: &due)
                for (u, _) in due {
                    let handle = u.takeRetainedValue()
                    let key = ObjectIdentifier(handle)
                    let tick = try #require(expected[key], "an entry came out that was not in the wheel")
                    #expect(tick <= now, "an entry came out before its tick")
                    expected[key] = nil
                }
                due.removeAll()
                // Everything due by now has come out.
                #expect(!expected.values.contains { $0 <= now })
            }
            #expect(wheel.count == expected.count)
            if let next = wheel.nextTick, let earliest = expected.values.min() {
                #expect(next <= earliest, "the next wake-up is after the earliest deadline")
                #expect(next > now)
            }
        }
        // Drain everything, far deadlines included.
        while wheel.count > 0 {
            let next = try #require(wheel.nextTick)
            now = max(now, next)
            wheel.advance(to: now, into: &due)
            for (u, _) in due {
                let key = ObjectIdentifier(u.takeRetainedValue())
                #expect(expected[key]! <= now)
                expected[key] = nil
            }
            due.removeAll()
        }
        #expect(expected.isEmpty)
    }

    @Test("ticks round deadlines up, never down")
    func rounding() {
        let shift = TimerQueue.tickShift
        #expect(TimerQueue.tick(forNanos: 0) == 0)
        #expect(TimerQueue.tick(forNanos: 1) == 1)
        #expect(TimerQueue.tick(forNanos: 1 << shift) == 1)
        #expect(TimerQueue.tick(forNanos: (1 << shift) + 1) == 2)
        #expect(TimerQueue.tick(forNanos: UInt64.max) == UInt64.max >> shift)
    }
}
