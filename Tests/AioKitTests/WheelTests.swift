import Testing
@testable import AioKit
