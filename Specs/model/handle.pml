/*
 * handle.pml -- the lifecycle of a handle against everything that can end
 * its operation: the consumer (abort, cancel, close, stop, wait), the
 * callback (chaining, wait/stop on its own handle), the timer thread (sleep
 * end, timeout, stale entries), a provider whose completion races with its
 * cancel routine, and the task pool (one worker; -DMAXT=2: growth 1 -> 2).
 *
 *   handle 0: sleep() (Providers/Sleep.swift): cancelFn = finishWithError,
 *             succeeds when its timer fires.
 *   handle 1: a provider operation (SocketStream-style cancelSeqFn and
 *             providerWord claim), with or without a timeout.
 *
 * Scenario switches:
 *   PROVIDER_SILENT  the provider never completes on its own (a peer that
 *                    never sends): only cancel/stop/timeout end handle 1's ops
 *   RESTART          the consumer cancels handle 0's sleep and starts the next
 *                    one at once, while the first callback may still be queued
 *                    ([AIO-1] allows it); handle 0's callback does not chain
 * Properties: [AIO-2] [AIO-7] [AIO-13] [AIO-17] [AIO-27] [AIO-28] [DL-1]
 * [DL-2] [DL-4] [DL-7] [TMR-4], no invalid end state; ltl `progress`.
 */

#define NH   1
#ifndef NOPS
#define NOPS 2
#endif
#define MINT 1
#ifndef MAXT
#define MAXT 1
#endif
#define NW   2

#define PID_C  0
#define PID_W0 1
#define PID_T  2
#define PID_P  3
#define PID_F  4
#define PID_W1 5
#define MAXP   6

#define WID(p) ((p) == PID_W0 -> 0 : ((p) == PID_W1 -> 1 : NONE))
#if MAXT > 1
#define SPARE_W 1
#else
#define SPARE_W NONE
#endif
#define DRAINER_W NONE
#define HASCB(h) 1

/* the user callbacks at each depth (defined below) */
#define USER_CB_0(h, op) user_cb_0(h, op)
#define USER_CB_1(h, op) user_cb_1(h, op)

#include "core.pml"
#include "threads.inc"

/* Starts the next operation on handle 0: a sleep, or a provider operation
   (with a timeout, or -- chosen here -- without). */
inline start_op(h) {
#ifdef PROV
    if
    :: provider_start(h, 1)
    :: provider_start(h, 0)
    fi
#else
    aio_begin(h, CK_SLEEP, 1, 1, u_ok, u_op)
#endif
    ;
    d_step { u_ok = 0; u_op = 0 }
}

/* The callback may chain the next operation, then wait on or stop its own
   handle ([DL-1], [DL-2]). At depth 1 (run by a worker helping inside a
   wait(), which the correct model never reaches here) it only chains. */
inline user_chain(h, op) {
#ifndef RESTART
    if
    :: op < NOPS -> start_op(h)
    :: true
    fi
#else
    skip
#endif
}
inline user_cb_0(h, op) {
    user_chain(h, op);
    if
    :: wait_0(h)      /* [DL-1] */
    :: stop_0(h)      /* [DL-2] */
    :: true
    fi
}
inline user_cb_1(h, op) {
    user_chain(h, op)
}

#define DONE_OR_NEW(i) (g_op[i] == OP_NEW || g_op[i] == OP_DONE)
#if NOPS == 2
#define ALL_DONE (DONE_OR_NEW(0) && DONE_OR_NEW(1))
#else
#define ALL_DONE (DONE_OR_NEW(0) && DONE_OR_NEW(1) && DONE_OR_NEW(2))
#endif

active proctype Consumer() {
    CB_LOCALS;
    start_op(0);
#ifdef RESTART
    /* cancel, and start the next operation at once: the first callback may
       still be queued ([AIO-1] allows it) */
    aio_abort(0, E_CANCELED);
    !h_inFlight[0];                         /* the consumer knows it is finished */
    start_op(0);
    if
    :: aio_abort(0, E_CANCELED)
    :: true
    fi;
#else
    if
    :: aio_abort(0, E_CANCELED)             /* cancel() */
    :: aio_close(0)
    :: consumer_stop(0)
#if !defined(PROV) || !defined(PROVIDER_SILENT)
    :: wait_0(0)
#endif
    :: true
    fi;
#endif
    if
    :: consumer_stop(0);
       /* [AIO-17]: a start after stop() returned is refused (and still calls back) */
       if
       :: h_seq[0] < NOPS -> start_op(0)
       :: else
       fi
    :: aio_close(0)           /* and let go at once: the handle outlives its operations ([AIO-27], [DL-5]) */
    fi;
    user_drop(0)
}

active proctype Worker0() {
    CB_LOCALS; byte wm_h, wm_op;
    w_spawned[0] = 1;
    worker_thread(0)
}

active proctype Timer() {
    LEAF_LOCALS; byte tm_h, tm_s;
end_t:
    timer_thread()
}

/* The provider's event source (the poller thread): completes the operation
   it holds, whenever the socket is ready. */
active proctype Provider() {
    LEAF_LOCALS;
#if defined(PROV) && !defined(PROVIDER_SILENT)
end_p:
    do
    :: v_claim[0] != 0 -> provider_complete(0)
    od
#endif
}

active proctype Final() {
    byte fc_i;
    timeout -> final_check()
}

#if MAXT > 1
active proctype Worker1() {
    CB_LOCALS; byte wm_h, wm_op;
    worker_thread(1)
}
#endif

#ifdef LIVENESS
ltl progress { <> [] ALL_DONE }
#endif
