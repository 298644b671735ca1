// Small C helpers for what Swift cannot call directly (variadic functions,
// GNU extensions). Used only from Sources/AioKit/Platform.
#ifndef CAIOSHIMS_H
#define CAIOSHIMS_H

#include <stdint.h>

#include <pthread.h>

/// Names a thread (at most 15 bytes are kept). Returns 0 or an errno.
int caio_set_thread_name(pthread_t thread, const char *name);

#endif
