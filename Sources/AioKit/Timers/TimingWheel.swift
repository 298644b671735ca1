/// A hashed timing wheel of handles ([TMR-2]): `slotCount` slots, one tick
/// each; an entry with tick t sits in slot t mod `slotCount`, in a doubly
/// linked list through the handle's timer links, so a revolution of the
/// wheel spans `slotCount` ticks and a deadline any number of revolutions
/// away is kept as it is ([TMR-5]).
///
/// Insert and remove are O(1). Advancing visits the occupied slots the
/// clock passed over (found from a bitmap) and walks each: entries whose
/// tick has come are due, the others (later revolutions) stay where they
/// are. Nothing ever moves in bulk, so no deadline waits behind the
/// re-sorting of thousands of far entries, as it does in a hierarchical
/// wheel when a coarse slot is cascaded ([TMR-3]); the price is one look per
/// revolution at an entry that is more than a revolution away. Each slot
/// keeps a lower bound of its ticks, so the next deadline is exact without
/// a walk: the first occupied slot (in clock order) whose bound lies in the
/// current revolution, or else the least bound. Why a wheel: `Specs/Timers.md`.
///
/// Not thread-safe: `TimerQueue` guards it with its lock.
struct TimingWheel {
    /// Slots (a power of two): with a 2^16 ns tick, a revolution is 268 ms.
    static let slotCount = 4096
    static let mask = UInt64(slotCount - 1)
    static let words = slotCount / 64

    /// Everything at or before this tick has been taken out.
    private(set) var elapsed: UInt64 = 0
    private(set) var count = 0
    private let heads: UnsafeMutablePointer<Unmanaged<AioHandle>?>
    /// Per slot, a lower bound of its entries' ticks (exact after a visit;
    /// a removal may leave it low, which costs at most one early look).
    private let lowest: UnsafeMutablePointer<UInt64>
    private let occupied: UnsafeMutablePointer<UInt64>

    init(startTick: UInt64) {
        elapsed = startTick
        heads = .allocate(capacity: Self.slotCount)
        heads.initialize(repeating: nil, count: Self.slotCount)
        lowest = .allocate(capacity: Self.slotCount)
        lowest.initialize(repeating: .max, count: Self.slotCount)
        occupied = .allocate(capacity: Self.words)
        occupied.initialize(repeating: 0, count: Self.words)
    }

    func deallocate() {
        heads.deallocate()
        lowest.deallocate()
        occupied.deallocate()
    }

    /// Adds `h` to fire at `tick` (a tick already passed fires at the next advance).
    mutating func insert(_ h: AioHandle, tick: UInt64) {
        let t = max(tick, elapsed &+ 1)
        let index = Int(t & Self.mask)
        let u = Unmanaged.passUnretained(h)
        h.timerTick = t
        h.timerSlot = Int16(index)
        h.timerPrev = nil
        h.timerNext = heads[index]
        if let first = heads[index] { first._withUnsafeGuaranteedRef { $0.timerPrev = u } }
        heads[index] = u
        if t < lowest[index] { lowest[index] = t }
        occupied[index >> 6] |= 1 << UInt64(index & 63)
        count += 1
    }

    /// Takes `h` out (it must be in the wheel).
    mutating func remove(_ h: AioHandle) {
        let index = Int(h.timerSlot)
        let next = h.timerNext, prev = h.timerPrev
        if let next { next._withUnsafeGuaranteedRef { $0.timerPrev = prev } }
        if let prev {
            prev._withUnsafeGuaranteedRef { $0.timerNext = next }
        } else {
            heads[index] = next
            if next == nil { markEmpty(index) }
        }
        h.timerNext = nil
        h.timerPrev = nil
        h.timerSlot = -1
        count -= 1
    }

    @inline(__always) private func markEmpty(_ index: Int) {
        occupied[index >> 6] &= ~(1 << UInt64(index & 63))
        lowest[index] = .max
    }

    /// The first occupied slot at or after slot `from`, in clock order
    /// (wrapping), as a distance from `from` (nil: none at all).
    private func nextOccupied(from: Int) -> Int? {
        var w = from >> 6
        var bits = occupied[w] & (~0 << UInt64(from & 63))
        for step in 0...Self.words {
            if bits != 0 {
                let index = (w << 6) | bits.trailingZeroBitCount
                return (index - from) & Int(Self.mask)
            }
            if step == Self.words { break }
            w = (w + 1) % Self.words
            bits = occupied[w]
        }
        return nil
    }

    /// The tick of the next deadline (a lower bound: exact unless an entry
    /// was removed since its slot was last visited), nil when empty.
    var nextTick: UInt64? {
        if count == 0 { return nil }
        let first = elapsed &+ 1
        let from = Int(first & Self.mask)
        var distance = 0
        var least = UInt64.max
        // In clock order, the first slot whose lowest tick is in this
        // revolution holds the earliest deadline; failing that, the least bound.
        while distance < Self.slotCount, let d = nextOccupied(from: (from + distance) & Int(Self.mask)) {
            distance += d
            if distance >= Self.slotCount { break }
            let index = (from + distance) & Int(Self.mask)
            let base = first &+ UInt64(distance)  // the slot's tick in this revolution
            let low = lowest[index]
            if low <= base { return base }
            least = min(least, low)
            distance += 1
        }
        return least == .max ? nil : least
    }

    /// Takes out every entry whose tick is at or before `now` (into `due`,
    /// each retained once, with its operation number).
    mutating func advance(to now: UInt64, into due: inout ContiguousArray<(Unmanaged<AioHandle>, UInt32)>) {
        if now <= elapsed { return }
        let span = now - elapsed  // ticks passed: elapsed + 1 ... now
        let from = Int((elapsed &+ 1) & Self.mask)
        let slots = span >= UInt64(Self.slotCount) ? Self.slotCount : Int(span)
        var distance = 0
        while distance < slots, let d = nextOccupied(from: (from + distance) & Int(Self.mask)) {
            distance += d
            if distance >= slots { break }
            visit((from + distance) & Int(Self.mask), now: now, into: &due)
            distance += 1
        }
        elapsed = now
    }

    /// Walks slot `index`: entries due by `now` come out, the rest stay and
    /// set the slot's lower bound anew.
    private mutating func visit(
        _ index: Int, now: UInt64, into due: inout ContiguousArray<(Unmanaged<AioHandle>, UInt32)>
    ) {
        if lowest[index] > now { return }  // only later revolutions here
        var entry = heads[index]
        var low = UInt64.max
        while let e = entry {
            let h = e.takeUnretainedValue()
            entry = h.timerNext
            if h.timerTick <= now {
                remove(h)
                due.append((e.retain(), h.timerSeq))
            } else if h.timerTick < low {
                low = h.timerTick
            }
        }
        if heads[index] != nil { lowest[index] = low }
    }
}
