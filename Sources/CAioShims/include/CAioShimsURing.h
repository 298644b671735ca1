// io_uring(7) through the raw system calls, for Sources/AioKit/Platform/IOUring.swift
// (no liburing): the three system calls Swift cannot make (syscall(2) is
// variadic), filling submission entries, reading completion entries, the
// ring's acquire/release accesses, and the constants Swift needs.
#ifndef CAIOSHIMS_URING_H
#define CAIOSHIMS_URING_H

#include <stdint.h>
#include <string.h>
#include <linux/io_uring.h>

// Flags newer than some installed headers.
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_ASYNC_CANCEL_ALL
#define IORING_ASYNC_CANCEL_ALL (1U << 0)
#endif
#ifndef IORING_ASYNC_CANCEL_FD
#define IORING_ASYNC_CANCEL_FD (1U << 1)
#endif

/// io_uring_setup(2): the ring's descriptor (close-on-exec), or -errno.
int caio_uring_setup(unsigned entries, struct io_uring_params *params);
/// io_uring_enter(2) without a signal mask: the count consumed, or -errno (EINTR included).
int caio_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags);
/// io_uring_register(2): 0 (or a count), or -errno.
int caio_uring_register(int fd, unsigned opcode, void *arg, unsigned nr_args);

static const uint32_t CAIO_IORING_SETUP_CLAMP = IORING_SETUP_CLAMP;
static const uint32_t CAIO_IORING_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const uint32_t CAIO_IORING_FEAT_SINGLE_MMAP = IORING_FEAT_SINGLE_MMAP;
static const uint32_t CAIO_IORING_FEAT_NODROP = IORING_FEAT_NODROP;
static const uint32_t CAIO_IORING_FEAT_SUBMIT_STABLE = IORING_FEAT_SUBMIT_STABLE;
static const uint32_t CAIO_IORING_FEAT_FAST_POLL = IORING_FEAT_FAST_POLL;
static const uint32_t CAIO_IORING_SQ_CQ_OVERFLOW = IORING_SQ_CQ_OVERFLOW;
static const uint32_t CAIO_IORING_CQ_EVENTFD_DISABLED = IORING_CQ_EVENTFD_DISABLED;
static const uint32_t CAIO_IORING_ENTER_GETEVENTS = IORING_ENTER_GETEVENTS;
static const uint32_t CAIO_IORING_REGISTER_EVENTFD = IORING_REGISTER_EVENTFD;
static const uint32_t CAIO_IORING_ASYNC_CANCEL_ALL = IORING_ASYNC_CANCEL_ALL;
static const uint32_t CAIO_IORING_ASYNC_CANCEL_FD = IORING_ASYNC_CANCEL_FD;
static const int64_t CAIO_IORING_OFF_SQ_RING = (int64_t)IORING_OFF_SQ_RING;
static const int64_t CAIO_IORING_OFF_CQ_RING = (int64_t)IORING_OFF_CQ_RING;
static const int64_t CAIO_IORING_OFF_SQES = (int64_t)IORING_OFF_SQES;
static const uint8_t CAIO_IORING_OP_READV = IORING_OP_READV;
static const uint8_t CAIO_IORING_OP_WRITEV = IORING_OP_WRITEV;
static const uint8_t CAIO_IORING_OP_READ = IORING_OP_READ;
static const uint8_t CAIO_IORING_OP_WRITE = IORING_OP_WRITE;
static const uint8_t CAIO_IORING_OP_FSYNC = IORING_OP_FSYNC;
static const uint8_t CAIO_IORING_OP_ASYNC_CANCEL = IORING_OP_ASYNC_CANCEL;
static const uint32_t CAIO_IORING_SQE_SIZE = sizeof(struct io_uring_sqe);
static const uint32_t CAIO_IORING_CQE_SIZE = sizeof(struct io_uring_cqe);

/// A read or write (READ/WRITE: addr and len are the buffer; READV/WRITEV:
/// addr is an iovec array, len its count), or an fsync (addr 0, len 0).
static inline void caio_sqe_prep(struct io_uring_sqe *sqe, uint8_t opcode, int fd, uint64_t addr, uint32_t len,
                                 uint64_t offset, uint64_t user_data)
{
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = opcode;
    sqe->fd = fd;
    sqe->off = offset;
    sqe->addr = addr;
    sqe->len = len;
    sqe->user_data = user_data;
}

/// IORING_OP_ASYNC_CANCEL of the request whose user_data is `target`, or
/// (flags IORING_ASYNC_CANCEL_FD | _ALL) of every request on `fd`.
static inline void caio_sqe_prep_cancel(struct io_uring_sqe *sqe, uint64_t target, int fd, uint32_t flags,
                                        uint64_t user_data)
{
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = fd;
    sqe->addr = target;
    sqe->rw_flags = flags; // the union's cancel_flags
    sqe->user_data = user_data;
}

static inline uint64_t caio_cqe_user_data(const struct io_uring_cqe *cqe) { return cqe->user_data; }
static inline int32_t caio_cqe_res(const struct io_uring_cqe *cqe) { return cqe->res; }

/// The ring's shared indices: the kernel reads and writes them concurrently.
static inline uint32_t caio_load_acquire_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void caio_store_release_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline uint32_t caio_load_relaxed_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
/// A full fence (orders a store to the ring before a later load from it).
static inline void caio_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif
