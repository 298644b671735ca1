/*
 * handle.pml -- the lifecycle of one handle against everything that can end
 * its operation: the consumer (cancel, close, stop, wait, reap, dropping its
 * reference), the callback (chaining the next operation, wait/stop/reap on
 * its own handle), the timer thread (sleep end, timeout, stale entries), a
 * provider whose completion races with its cancel routine, the reaper
 * thread, and the task pool (one worker).
 *
 * Operations (NOPS = 2): by default sleep() (Providers/
 * Sleep.swift: cancelFn = finishWithError, succeeds when its timer fires);
 * -DPROV: a provider operation (SocketStream-style: cancelSeqFn, and the
 * providerWord claim set under the provider's lock), with or without a
 * timeout, completed by the provider's event thread.
 *
 * Scenario switches:
 *   PROVIDER_SILENT  the provider never completes on its own (a peer that
 *                    never sends): only cancel/stop/timeout end its ops
 *   REAP             the callback may also reap() its own handle ([AIO-19])
 *   RESTART          the consumer cancels the operation and starts the next
 *                    one as soon as the first callback has begun ([AIO-1]
 *                    allows it; a completion while that callback runs is
 *                    deferred, [AIO-31]); the callback does not chain.
 *   EAGER_RESTART    (with RESTART) as soon as the first is finished, its
 *                    callback maybe still queued: a misuse that must trap
 * Properties: [AIO-1] [AIO-2] [AIO-7] [AIO-13] [AIO-14] [AIO-17] [AIO-19]
 * [AIO-27] [AIO-28] [AIO-31] [DL-1] [DL-2] [DL-4] [DL-5] [DL-7] [TMR-4], no
 * invalid end state; with -DLIVENESS, ltl `progress`.
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
#define PID_R  4
#define PID_F  5
#define PID_W1 6
#define MAXP   7

#define WID(p) ((p) == PID_W0 -> 0 : ((p) == PID_W1 -> 1 : NONE))
#if MAXT > 1
#define SPARE_W 1
#else
#define SPARE_W NONE
#endif
#define DRAINER_W NONE
#ifdef PROV
#define USES_PROV
#else
#define USES_SLEEP
#endif

/* the user callbacks at each depth (defined below) */
#define USER_CB_0(h, op) user_cb_0(h, op)
#define USER_CB_1(h, op) user_cb_1(h, op)

#include "core.pml"
#include "threads.inc"

/* Starts the next operation on handle 0: a sleep, or a provider operation
   with or without a timeout. */
inline start_op(h) {
#ifdef PROV
    if :: u_arm = 1 :: u_arm = 0 fi;
    provider_start(h, u_arm);
    u_arm = 0
#else
    aio_begin(h, CK_SLEEP, 1, 1, u_ok, u_op);
    d_step { u_ok = 0; u_op = 0 }
#endif
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
    :: u_act = C_WAIT      /* [DL-1] */
    :: u_act = C_STOP      /* [DL-2] */
#if defined(REAP) && !defined(PROV)
    :: u_act = C_REAPS     /* [AIO-19] [DL-5] */
#endif
    :: u_act = 0
    fi;
    act_0(h, u_act);
    u_act = 0
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

#define A_START 8
#define A_END   16

/* The consumer: starts an operation, then one of cancel / close / stop /
   wait / nothing, then stop() (and a start after it, refused: [AIO-17])
   or close() and lets go of the handle at once ([AIO-27], [DL-5]).
   RESTART: start, cancel, start the next at once (the first callback may
   still be queued: [AIO-1] allows it), maybe cancel, then stop or close. */
active proctype Consumer() {
    C_LOCALS;
    do
    :: true ->
        if
        :: c_i == 0 -> c_act = A_START
#ifndef RESTART
        :: c_i == 1 ->
            if
            :: c_act = C_CANCEL
            :: c_act = C_CLOSE
            :: c_act = C_STOP
#if !defined(PROV) || !defined(PROVIDER_SILENT)
            :: c_act = C_WAIT
#endif
            :: c_act = 0
            fi
        :: c_i == 2 -> if :: c_act = C_STOP :: c_act = C_CLOSE fi
        :: c_i == 3 -> if :: g_stopDone[0] && h_seq[0] < NOPS -> c_act = A_START :: else -> c_act = A_END fi
#else
        :: c_i == 1 -> c_act = C_CANCEL
#ifdef EAGER_RESTART
        :: c_i == 2 -> !h_inFlight[0]; c_act = A_START   /* finished, its callback maybe still queued: misuse */
#else
        :: c_i == 2 -> g_op[0] >= OP_CB; c_act = A_START /* it knows the first callback has begun */
#endif
        :: c_i == 3 -> if :: c_act = C_CANCEL :: c_act = 0 fi
        :: c_i == 4 -> if :: c_act = C_STOP :: c_act = C_CLOSE fi
        :: c_i == 5 -> c_act = A_END
#endif
        :: else -> c_act = A_END
        fi;
        c_i++;
        if
        :: c_act == A_START -> start_op(0)
        :: c_act == A_END -> break
        :: else -> act_c(0, c_act)
        fi
    od;
    atomic { c_i = 0; c_act = 0 };
    user_drop(0);
    g_driverDone = 1
}

active proctype Worker0() {
    CB_LOCALS; byte wm_h, wm_op; bit wm_spun;
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

/* The reaper thread (Reaper.run): stop() each reaped handle, then drop the
   reaper's reference ([AIO-19]). */
active proctype Reaper() {
    C_LOCALS;
    do
    :: true ->
end_r:  atomic { r_q?c_i; REACH(12, 1) };
        act_c(c_i, C_STOP);
        release(c_i);
        c_i = 0
    od
}

/* The final check ([AIO-2], [AIO-27]), in safety runs (in liveness runs
   the ltl formula is the property and this process does nothing). */
active proctype Final() {
    byte fc_i;
#ifndef LIVENESS
    timeout;
    if :: g_driverDone -> final_check() :: else fi
#endif
}

#if MAXT > 1
active proctype Worker1() {
    CB_LOCALS; byte wm_h, wm_op; bit wm_spun;
    worker_thread(1)
}
#endif

#ifdef LIVENESS
ltl progress { <> [] ALL_DONE }
#endif
