/// The sleep operation (NNG's `nng_sleep_aio`): a provider with no I/O.
extension AioHandle {
    /// Starts a sleep of `duration` on this handle ([AIO-25], [AIO-26]).
    ///
    /// It succeeds once `duration` has passed, unless the handle's own timeout
    /// or expiration comes first: then it ends at that time with `.timedOut`.
    /// A sleep of zero (or less) completes through the task pool without
    /// touching the timers. `cancel()` ends it with `.canceled`.
    public func sleep(_ duration: Duration) {
        var end = Self.sleepDueNow  // due at once: no clock read, no conversion
        if duration > .zero {
            let ns = Clock.nanoseconds(duration)  // rounds up: a positive duration is at least 1 ns
            let (sum, overflow) = Clock.nanos().addingReportingOverflow(UInt64(ns))
            end = overflow ? UInt64.max : sum
        }
        _ = begin(onCancel: Self.finishWithError, defaultTimeout: -1, sleepDeadline: end, reset: true)
    }

    /// A cancel routine for operations that have nothing to undo: finish with the error.
    static let finishWithError: @Sendable (AioHandle, AioError) -> Void = { handle, error in
        handle.finish(error)
    }
}
