// The file workloads: file-read and file-write (WORKLOADS.md).
//
// AioKit has no asynchronous files yet: until it does, this build cannot do
// them (exit 3). When they come: the 256 MiB file set-up (filled with
// 1 + i mod 255, synced, read back, unlinked once open), C chains each with
// its own xorshift64 offsets, every transfer checked for its full length, and
// ops_per_s, mb_per_s and cpu_s in the report.

/// file-read: N random reads of SIZE bytes, C in flight.
func runFileRead(_ args: BenchArgs) -> Report {
    unsupported()
}

/// file-write: N random writes of SIZE bytes, C in flight.
func runFileWrite(_ args: BenchArgs) -> Report {
    unsupported()
}
