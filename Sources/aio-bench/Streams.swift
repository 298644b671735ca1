// The TCP workloads: tcp-pingpong, tcp-stream and tcp-connect (WORKLOADS.md).
//
// AioKit has no streams yet: until it does, this build cannot do them (exit 3).
// When they come: a listener on 127.0.0.1 (ephemeral port) and dialer set up
// outside the timed span, chains driven from the completion callbacks, the
// main thread on a `Latch` bounded by the `Watchdog`, `Report.addRoundTrips`
// for tcp-pingpong and `evenShare` to split tcp-stream's chunks.

/// tcp-pingpong: round trips of SIZE bytes on one connection.
func runTCPPingPong(_ args: BenchArgs) -> Report {
    unsupported()
}

/// tcp-stream: C connections streaming N * SIZE bytes to echo servers.
func runTCPStream(_ args: BenchArgs) -> Report {
    unsupported()
}

/// tcp-connect: N sequential dial + accept + close.
func runTCPConnect(_ args: BenchArgs) -> Report {
    unsupported()
}
