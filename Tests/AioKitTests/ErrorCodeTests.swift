@testable import AioKit
import Testing

/// The handle keeps its result as one word (`AioError.code`), read without a
/// lock ([AIO-5]): every error must come back from its word unchanged.
@Suite("Error words")
struct ErrorCodeTests {
    @Test("[AIO-5] every error survives its one-word form; success is 0")
    func roundTrip() {
        var errors: [AioError] = [
            .timedOut, .canceled, .stopped, .closed, .invalidArgument, .busy,
            .connectionRefused, .connectionReset, .connectionShutdown, .connectionAborted,
            .addressInUse, .addressInvalid, .unreachable, .tooManyOpenFiles, .noMemory, .notSupported,
        ]
        for e: Int32 in [0, 1, 4, 11, 104, 4095, -1, Int32.max, Int32.min] { errors.append(.system(errno: e)) }
        var codes = Set<UInt64>()
        for error in errors {
            #expect(error.code != 0)
            #expect(AioError(code: error.code) == error)
            codes.insert(error.code)
        }
        #expect(codes.count == errors.count)
        #expect(AioError(code: 0) == nil)
        #expect((nil as AioError?).code == 0)
    }

    @Test("[AIO-5] a handle reports each error and count it finished with")
    func handleResult() {
        let handle = AioHandle(runtime: .shared)
        for (i, error) in [nil, AioError.connectionReset, .system(errno: -7), nil].enumerated() {
            #expect(handle.start(onCancel: nil))
            handle.finish(error, count: i * 1000)
            handle.wait()
            #expect(handle.error == error)
            #expect(handle.count == i * 1000)
        }
    }
}
