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

long caio_preadv_nowait(int fd, const struct iovec *iov, int count, int64_t offset)
{
    // preadv2(2) with RWF_NOWAIT (a GNU call): only what the page cache holds,
    // never a wait for the device. The raw system call: offset as two words.
    long r;
    do {
        r = syscall(__NR_preadv2, fd, iov, count, (unsigned long)(uint64_t)offset,
                    (unsigned long)((uint64_t)offset >> 32), (int)0x00000008 /* RWF_NOWAIT */);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}
