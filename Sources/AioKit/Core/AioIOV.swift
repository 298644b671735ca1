/// One buffer of an operation's scatter/gather list (`AioHandle.setIOV`).
///
/// The memory belongs to the caller and is not copied: it must stay valid and
/// untouched by others until the operation's callback has run.
public struct AioIOV: @unchecked Sendable {  // a plain pointer and length; the caller owns the memory
    public var buffer: UnsafeMutableRawBufferPointer

    public init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
    }

    /// A buffer that is only read (sends, file writes).
    public init(_ buffer: UnsafeRawBufferPointer) {
        self.buffer = UnsafeMutableRawBufferPointer(mutating: buffer)
    }
}

/// A completion target: an object whose `aioDidComplete` is the handle's
/// callback (`AioHandle(runtime:target:)`). The handle keeps a strong reference.
public protocol AioCallback: AnyObject, Sendable {
    func aioDidComplete(_ handle: AioHandle)
}
