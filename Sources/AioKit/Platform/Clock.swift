import Glibc

/// The one clock of AioKit's timers: CLOCK_MONOTONIC in nanoseconds.
enum Clock {
    @inline(__always) static func nanos() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// `now + duration` on this clock, saturating; negative durations give `now`.
    static func deadline(after duration: Duration, now: UInt64 = nanos()) -> UInt64 {
        let ns = nanoseconds(duration)
        if ns <= 0 { return now }
        let (sum, overflow) = now.addingReportingOverflow(UInt64(ns))
        return overflow ? UInt64.max : sum
    }

    /// A `ContinuousClock` instant on this clock (by the distance from now).
    static func deadline(of instant: ContinuousClock.Instant) -> UInt64 {
        let now = nanos()
        let delta = nanoseconds(instant - ContinuousClock.now)
        if delta <= 0 { return delta == Int64.min ? 0 : now &- min(now, UInt64(-delta)) }
        let (sum, overflow) = now.addingReportingOverflow(UInt64(delta))
        return overflow ? UInt64.max : sum
    }

    /// A duration in whole nanoseconds (rounded up), saturating at Int64's range.
    static func nanoseconds(_ duration: Duration) -> Int64 {
        let (seconds, attos) = duration.components
        let (s, o1) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if o1 { return seconds < 0 ? Int64.min : Int64.max }
        var sub = attos / 1_000_000_000
        if attos % 1_000_000_000 > 0 { sub += 1 }
        let (t, o2) = s.addingReportingOverflow(sub)
        if o2 { return seconds < 0 ? Int64.min : Int64.max }
        return t
    }
}
