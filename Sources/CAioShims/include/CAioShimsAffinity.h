// CPU affinity (GNU calls Swift cannot reach through Glibc), for
// Sources/AioKit/Platform/Affinity.swift: the watcher facade's
// setLoopAffinity / setPollerAffinity.
#ifndef CAIOSHIMS_AFFINITY_H
#define CAIOSHIMS_AFFINITY_H

#include <pthread.h>

/// The number of CPUs a cpu_set_t can name (CPU_SETSIZE).
int caio_cpu_set_size(void);

/// Pins `thread` to `cpu` alone (pthread_setaffinity_np). Returns 0 or an errno.
int caio_pin_thread(pthread_t thread, int cpu);

/// Whether the calling thread may run on `cpu` (sched_getaffinity): 1 yes,
/// 0 no, -errno on failure.
int caio_thread_allows_cpu(int cpu);

/// How many CPUs the calling thread may run on, or -errno.
int caio_thread_cpu_count(void);

#endif
