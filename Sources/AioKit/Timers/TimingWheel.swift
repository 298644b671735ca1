/// A hierarchical timing wheel of handles ([TMR-2]): 8 levels of 64 slots; a
/// slot of level L spans 64^L ticks, so the wheel covers every 48-bit tick
/// (with a 2^16 ns tick, every 64-bit nanosecond deadline, [TMR-5]).
///
/// Insert and remove are O(1): an entry goes to the level of the highest
/// 6-bit group in which its tick differs from the wheel's current tick, into
/// a doubly linked slot list, with a bitmap of occupied slots per level.
/// Advancing takes whole slots: entries of level 0 are due, entries of higher
/// levels move down (at most 7 times over an entry's life) or are due. The
/// next deadline is found from the bitmaps (at most 8 words), never by a scan
/// of entries. Why a wheel and not a heap: `Specs/Timers.md`.
///
/// Not thread-safe: `TimerQueue` guards it with its lock.
struct TimingWheel {
    static let levels = 8
    static let slotBits: UInt64 = 6
    static let slotsPerLevel = 64

    /// Everything at or before this tick has been taken out.
    private(set) var elapsed: UInt64 = 0
    private(set) var count = 0
    private let heads: UnsafeMutablePointer<Unmanaged<AioHandle>?>
    private let occupied: UnsafeMutablePointer<UInt64>

    init(startTick: UInt64) {
        elapsed = startTick
        let n = Self.levels * Self.slotsPerLevel
        heads = .allocate(capacity: n)
        heads.initialize(repeating: nil, count: n)
        occupied = .allocate(capacity: Self.levels)
        occupied.initialize(repeating: 0, count: Self.levels)
    }

    func deallocate() {
        heads.deallocate()
        occupied.deallocate()
    }

    @inline(__always) private func level(for tick: UInt64) -> Int {
        let masked = (elapsed ^ tick) | 63
        let significant = 63 - masked.leadingZeroBitCount
        return min(significant / Int(Self.slotBits), Self.levels - 1)
    }

    /// Adds `h` due at `tick` (a tick not after `elapsed` is due at the next one).
    mutating func insert(_ h: AioHandle, tick: UInt64) {
        let t = max(tick, elapsed &+ 1)
        let lv = level(for: t)
        let slot = Int((t >> (UInt64(lv) * Self.slotBits)) & 63)
        let index = lv * Self.slotsPerLevel + slot
        let u = Unmanaged.passUnretained(h)
        h.timerTick = t
        h.timerSlot = Int16(index)
        h.timerPrev = nil
        h.timerNext = heads[index]
        if let first = heads[index] { first._withUnsafeGuaranteedRef { $0.timerPrev = u } }
        heads[index] = u
        occupied[lv] |= 1 << UInt64(slot)
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
            if next == nil {
                occupied[index / Self.slotsPerLevel] &= ~(1 << UInt64(index % Self.slotsPerLevel))
            }
        }
        h.timerNext = nil
        h.timerPrev = nil
        h.timerSlot = -1
        count -= 1
    }

    /// The first tick of the earliest occupied slot, with its index.
    private func nextSlot() -> (start: UInt64, index: Int)? {
        for lv in 0..<Self.levels {
            let occ = occupied[lv]
            if occ == 0 { continue }
            let shift = UInt64(lv) * Self.slotBits
            let nowSlot = (elapsed >> shift) & 63
            let rotated = nowSlot == 0 ? occ : (occ >> nowSlot) | (occ << (64 - nowSlot))
            let slot = (nowSlot + UInt64(rotated.trailingZeroBitCount)) & 63
            let slotRange: UInt64 = 1 << shift
            let levelRange: UInt64 = slotRange << Self.slotBits
            let levelStart = levelRange == 0 ? 0 : elapsed & ~(levelRange &- 1)
            // By the placement rule an occupied slot lies after the current
            // one; were it not, taking it early only moves its entries down.
            let start = levelStart &+ slot &* slotRange
            return (start, lv * Self.slotsPerLevel + Int(slot))
        }
        return nil
    }

    /// The tick at which the next entry may be due (a slot's start: entries
    /// of higher levels may move down then rather than fire), or nil if empty.
    var nextTick: UInt64? { nextSlot().map { max($0.start, elapsed &+ 1) } }

    /// Moves the wheel to `now` and appends every entry due at or before it
    /// to `due`, retained, with the operation number it was armed for.
    mutating func advance(to now: UInt64, into due: inout ContiguousArray<(Unmanaged<AioHandle>, UInt32)>) {
        while let (start, index) = nextSlot(), start <= now {
            var entry = heads[index]
            heads[index] = nil
            occupied[index / Self.slotsPerLevel] &= ~(1 << UInt64(index % Self.slotsPerLevel))
            if start > elapsed { elapsed = start }
            while let e = entry {
                let h = e.takeUnretainedValue()
                entry = h.timerNext
                h.timerNext = nil
                h.timerPrev = nil
                h.timerSlot = -1
                count -= 1
                if h.timerTick <= now {
                    due.append((e.retain(), h.timerSeq))
                } else {
                    insert(h, tick: h.timerTick)
                }
            }
        }
        if now > elapsed { elapsed = now }
    }
}
