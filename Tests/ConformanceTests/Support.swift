import Testing
import AioKit
