#define _GNU_SOURCE
#include "CAioShims.h"
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

int caio_set_thread_name(pthread_t thread, const char *name)
{
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    return pthread_setname_np(thread, buf);
}

int caio_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int caio_accept(int fd)
{
    return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
