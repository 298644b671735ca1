#define _GNU_SOURCE
#include "CAioShimsAffinity.h"
#include <errno.h>
#include <sched.h>

int caio_cpu_set_size(void) { return CPU_SETSIZE; }

int caio_pin_thread(pthread_t thread, int cpu)
{
    if (cpu < 0 || cpu >= CPU_SETSIZE) return EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(thread, sizeof set, &set);
}

int caio_thread_allows_cpu(int cpu)
{
    if (cpu < 0 || cpu >= CPU_SETSIZE) return 0;
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -errno;
    return CPU_ISSET(cpu, &set) ? 1 : 0;
}

int caio_thread_cpu_count(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -errno;
    return CPU_COUNT(&set);
}
