// swift-tools-version:6.0
// AioKit: NNG-style asynchronous I/O handles for Swift on Linux.
// No package dependencies: the Swift toolchain (Glibc, Synchronization, Dispatch) only.
import PackageDescription

let package = Package(
    name: "AioKit",
    products: [
        .library(name: "AioKit", targets: ["AioKit"]),
        .executable(name: "aio-demo", targets: ["aio-demo"]),
        .executable(name: "aio-bench", targets: ["aio-bench"]),
        .executable(name: "aio-echo", targets: ["aio-echo"]),
        .executable(name: "aio-echo-reactor", targets: ["aio-echo-reactor"]),
        .executable(name: "aio-echo-readiness", targets: ["aio-echo-readiness"]),
        .executable(name: "aio-echo-watcher", targets: ["aio-echo-watcher"]),
        .executable(name: "aio-async-echo", targets: ["aio-async-echo"]),
    ],
    targets: [
        // Platform helpers in C (variadic and GNU calls Swift cannot make directly).
        .target(name: "CAioShims"),
        .target(name: "AioKit", dependencies: ["CAioShims"]),
        .executableTarget(name: "aio-demo", dependencies: ["AioKit"]),
        .executableTarget(name: "aio-bench", dependencies: ["AioKit"]),
        .executableTarget(name: "aio-echo", dependencies: ["AioKit"]),
        .executableTarget(name: "aio-echo-reactor", dependencies: ["AioKit"]),
        .executableTarget(name: "aio-echo-readiness", dependencies: ["AioKit"]),
        .executableTarget(name: "aio-echo-watcher", dependencies: ["AioKit"]),
        .executableTarget(name: "aio-async-echo", dependencies: ["AioKit"]),
        .testTarget(name: "AioKitTests", dependencies: ["AioKit"]),
        .testTarget(name: "ConformanceTests", dependencies: ["AioKit"]),
    ],
    swiftLanguageModes: [.v6]
)
