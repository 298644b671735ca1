#define _GNU_SOURCE
#include "CAioShims.h"
#include <pthread.h>
#include <string.h>

int caio_set_thread_name(pthread_t thread, const char *name)
{
    char buf[16];
    strncpy(buf, name, sizeof buf - 1);
    buf[sizeof buf - 1] = '\0';
    return pthread_setname_np(thread, buf);
}
