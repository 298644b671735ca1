// Small C helpers for what Swift cannot reach directly through Glibc
// (headers the Glibc module leaves out, variadic functions, GNU extensions).
// Used only from Sources/AioKit/Platform.
#ifndef CAIOSHIMS_H
#define CAIOSHIMS_H

#include <stdint.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

/// Names a thread (at most 15 bytes are kept). Returns 0 or an errno.
int caio_set_thread_name(pthread_t thread, const char *name);

// epoll flags as plain integers (the enum in sys/epoll.h imports awkwardly).
static const uint32_t CAIO_EPOLLIN = EPOLLIN;
static const uint32_t CAIO_EPOLLOUT = EPOLLOUT;
static const uint32_t CAIO_EPOLLRDHUP = EPOLLRDHUP;
static const uint32_t CAIO_EPOLLHUP = EPOLLHUP;
static const uint32_t CAIO_EPOLLERR = EPOLLERR;
static const uint32_t CAIO_EPOLLET = EPOLLET;

/// epoll_event is packed on x86_64: read and write its fields here.
static inline uint32_t caio_epoll_event_events(const struct epoll_event *e) { return e->events; }
static inline uint64_t caio_epoll_event_data(const struct epoll_event *e) { return e->data.u64; }
int caio_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);

/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC (a GNU call).
int caio_accept(int fd);

#include "CAioShimsURing.h" // io_uring (a header of its own; the umbrella must include it)
#include "CAioShimsAffinity.h" // CPU affinity (the watcher facade)

#endif
