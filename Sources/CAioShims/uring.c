#include "CAioShimsURing.h"
#include <errno.h>
#include <sys/syscall.h>
#include <unistd.h>

int caio_uring_setup(unsigned entries, struct io_uring_params *params)
{
    long r = syscall(__NR_io_uring_setup, entries, params);
    return r < 0 ? -errno : (int)r;
}

int caio_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags)
{
    long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, (size_t)0);
    return r < 0 ? -errno : (int)r;
}

int caio_uring_register(int fd, unsigned opcode, void *arg, unsigned nr_args)
{
    long r = syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
    return r < 0 ? -errno : (int)r;
}
