// aio-bench: the workloads of /work/shared/bench/WORKLOADS.md on AioKit
// (impl "aiokit"), printing one JSON line per run, as the peer programs do.
//
//   aio-bench WORKLOAD [--n N] [--concurrency C] [--size BYTES] [--via NAME]
//
// Exit status: 0 with the line on stdout; 1 a failed run; 2 a bad command
// line; 3 a workload (or via) this build cannot do, printing nothing.

import AioKit
import Glibc

/// The `--via` names each workload can run through: the facades (Facades.swift)
/// for the TCP data workloads, and async/await (Async.swift) for tcp-pingpong.
/// Any other via exits 3.
let supportedVias: [Workload: Set<String>] = [
    .tcpPingpong: facadeVias.union(asyncVias), .tcpStream: facadeVias,
]

let args = BenchArgs.parse(CommandLine.arguments, vias: supportedVias)
signal(SIGPIPE, SIG_IGN)
Watchdog.shared.start()

let report: Report
switch args.workload {
case .alloc: report = runAlloc(args)
case .dispatch: report = runChains(args, sleepZero: false)
case .sleep0: report = runChains(args, sleepZero: true)
case .timers: report = runTimers(args)
case .cancel: report = runCancel(args)
case .handleMemory: report = runHandleMemory(args)
case .tcpPingpong:
    if args.via == "async" {
        report = runAsyncPingPong(args)
    } else {
        report = args.via.map { facadeVias.contains($0) } == true ? runFacadePingPong(args) : runTCPPingPong(args)
    }
case .tcpStream: report = args.via.map { facadeVias.contains($0) } == true ? runFacadeStream(args) : runTCPStream(args)
case .tcpConnect: report = runTCPConnect(args)
case .fileRead: report = runFileRead(args)
case .fileWrite: report = runFileWrite(args)
}

// Everything is stopped and released: shut the shared runtime down (its
// threads joined) so that the process ends cleanly, then print the line.
Watchdog.shared.bounded("runtime shutdown") { AioRuntime.shared.shutdown() }
report.emit()
