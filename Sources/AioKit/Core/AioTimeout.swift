/// How long an operation may take (`AioHandle.timeout`). See `Specs/Handle.md` [AIO-20]..[AIO-24].
public enum AioTimeout: Sendable, Hashable {
    /// No time limit: the default of a new handle.
    case infinite
    /// The provider decides (most providers: no limit).
    case providerDefault
    /// The operation fails with `.timedOut` once this much time has passed
    /// since it started; `.after(.zero)` (or less) fails it at once.
    case after(Duration)
}
