/*
 * shutdown.pml -- RuntimeCore.shutdown() racing with operations in flight,
 * chained starts and the threads that finish them ([RT-2], [RT-3], [AIO-2],
 * [AIO-27], no invalid end state).
 *
 * Handle 0: a sleep whose callback chains a second sleep (which shutdown
 * either cancels or refuses). Handle 1: a provider operation with the
 * provider's cancelSeqFn, whose peer never sends (only a cancel ends it);
 * -DNOCANCEL_OP: instead an operation started without a cancel routine,
 * which the consumer itself finishes later ("waits for the rest").
 * The consumer may cancel handle 0 (not with NOCANCEL_OP, where its own
 * finish of handle 1 is the racing completion), then waits for handle 1 and
 * starts on it again, racing with the shutdown (refused: [RT-3]; its
 * callback runs on the pool or, once the workers are gone, on the transient
 * drainer).
 *
 * The shutdown thread is not a runtime thread: it closes every stripe and
 * takes the cancel routines of the live operations under each stripe lock,
 * calls them with .stopped, waits for two quiet rounds (no live operation,
 * empty queue, no callback running), stops and joins the timer thread and
 * terminates the pool. At its return, every operation that begin() accepted
 * has completed and run its callback ([RT-2]). The quiet test reads each
 * stripe's `pending` (Stripe.pending: the sum of its handles' `busy`, which
 * counts an operation until its callback has returned). -DBUG_QUIET_LIVE
 * restores the earlier test on the live list (the former Stripe.liveCount), which
 * misses a completion between markFinished and the pool: bug KB-4
 * (README.md), caught as RT_2.
 */

/* Stripe.pending of stripe s (NH == 2). */
#define STRIPE_PENDING(s) ((STRIPE(0) == (s) -> h_busy[0] : 0) + (STRIPE(1) == (s) -> h_busy[1] : 0))
#ifdef BUG_QUIET_LIVE
#define QUIET_COUNT(s) s_liveCount[s]
#define QUIET_NOW (s_liveCount[0] + s_liveCount[NS - 1] == 0 && POOL_EMPTY && p_active == 0)
#else
#define QUIET_COUNT(s) STRIPE_PENDING(s)
#define QUIET_NOW (h_busy[0] + h_busy[1] == 0 && POOL_EMPTY && p_active == 0)
#endif

#define NH   2
#define NOPS 2
#define MINT 1
#define MAXT 1
#define NW   3

#define PID_C  0
#define PID_W0 1
#define PID_T  2
#define PID_SD 3
#define PID_F  4
#define PID_DR 5
#ifdef TWO_CALLERS
#define MAXP   7
#else
#define MAXP   6
#endif

#define WID(p) ((p) == PID_W0 -> 0 : ((p) == PID_DR -> 2 : NONE))
#define SPARE_W NONE
#define DRAINER_W 2
#define USES_SLEEP
#define USES_PROV

#define USER_CB_0(h, op) user_cb_0(h, op)
#define USER_CB_1(h, op) skip

#include "core.pml"
#include "threads.inc"

bit g_timerExited;

/* RuntimeCore.state (its own lock, modelled as atomic steps): 0 running,
   1 stopping, 2 stopped. A caller finding it stopping waits (condition
   variable, broadcast when it becomes stopped: a blocking guard here). */
byte rt_state;
/* The cancel routines shutdown took, and its loop indices: globals, since
   with -DSHUTDOWN_FROM_CB a task thread's callback runs this part. */
byte sd_s, sd_h, sd_n;
byte sd_k[NH], sd_q[NH];
/* -DSHUTDOWN_FROM_CB: the thread shutdown() spawned to finish it ([RT-5]). */
bit g_finisherGo;
/* shutdown_own()'s answer (only task threads run it, one at a time here). */
bit u_first;

/* The state check at the top of shutdown(): first is 1 for the caller that
   moves running -> stopping; a later non-runtime caller waits for stopped. */
inline shutdown_enter(own, first) {
    atomic {
        if
        :: rt_state == 0 -> rt_state = 1; first = 1
        :: else -> first = 0
        fi
    };
    if
    :: !first && !own ->
#ifndef BUG_SECOND_NO_WAIT
        rt_state == 2;
#endif
        /* [RT-4]: a concurrent caller returns once the first one is done */
        d_step {
            sd_n = 0;
            do
            :: sd_n < NH * NOPS ->
                assert(RT_4 && (!g_accepted[sd_n] || g_op[sd_n] == OP_DONE));
                sd_n++
            :: else -> break
            od;
            sd_n = 0
        }
    :: else
    fi
}

/* Refuse new operations, and take the cancel routine of every one in
   flight, stripe by stripe ([RT-2], [RT-3]); then call them with .stopped. */
inline shutdown_cancel_all() {
    do
    :: sd_s < NS ->
        atomic {
            mutex_lock(s_owner[sd_s]);
            s_closed[sd_s] = 1;
            sd_h = s_liveHead[sd_s];
            sd_n = 0;
            do
            :: sd_h != NIL ->
                /* the live list holds only operations in flight */
                assert(AIO_2 && h_inFlight[sd_h] && sd_n < NH);
                /* takeCancelForShutdown() */
                REACH(10, h_cancel[sd_h] != CK_NONE);
                h_stopped[sd_h] = 1;
                sd_k[sd_h] = h_cancel[sd_h];
                sd_q[sd_h] = h_seq[sd_h];
                h_cancel[sd_h] = CK_NONE;
                sd_h = h_liveNext[sd_h];
                sd_n++
            :: else -> break
            od;
            sd_h = 0; sd_n = 0;
            mutex_unlock(s_owner[sd_s])
        };
        sd_s++
    :: else -> break
    od;
    sd_s = 0;
    /* for fn in pending { fn(.stopped) } */
#ifndef BUG_SHUTDOWN_NO_CANCEL
    do
    :: sd_h < NH ->
        call_cancel(sd_h, sd_k[sd_h], E_STOPPED, sd_q[sd_h]);
        d_step { sd_k[sd_h] = 0; sd_q[sd_h] = 0; sd_h++ }
    :: else -> break
    od;
#endif
    sd_h = 0
}

/* RuntimeCore.finish(): wait until quiet, stop the threads, mark stopped. */
inline shutdown_finish() {
    sd_rounds = 0;
    /* finish(): two quiet rounds in a row (pending == 0 on every stripe, pool and reaper quiet) */
    do
    :: sd_rounds < 2 ->
        sd_live = 0;
        do
        :: sd_s < NS ->
            atomic { mutex_lock(s_owner[sd_s]); sd_live = sd_live + QUIET_COUNT(sd_s); mutex_unlock(s_owner[sd_s]) };
            sd_s++
        :: else -> break
        od;
        sd_s = 0;
        atomic { mutex_lock(p_owner); sd_quiet = POOL_EMPTY && p_active == 0; mutex_unlock(p_owner) };
        if
        :: sd_live == 0 && sd_quiet -> sd_rounds++
        :: else ->
            sd_rounds = 0;
            /* nanosleep(200 us): abstractly, until the next poll could see quiet */
            QUIET_NOW
        fi;
        d_step { sd_live = 0; sd_quiet = 0 }
    :: else -> break
    od;
    /* reaper.stop(), poller.stop(): no such threads modelled */
    timers_stop();
    g_timerExited;                 /* Thread.join(timer thread) */
    pool_terminate();
    atomic { rt_state = 2 };
    /* [RT-2]: every operation begin() accepted has completed and called back */
    d_step {
        sd_n = 0;
        do
        :: sd_n < NH * NOPS ->
            assert(RT_2 && (!g_accepted[sd_n] || g_op[sd_n] == OP_DONE));
            sd_n++
        :: else -> break
        od;
        sd_n = 0
    };
}

#ifdef SHUTDOWN_FROM_CB
/* shutdown() from handle 0's first callback, on a task thread ([RT-5],
   [DL-6]): it refuses and cancels, hands finish() to a thread of its own
   and returns without waiting (waiting would wait for its own callback). */
inline shutdown_own() {
    shutdown_enter(1, u_first);
    if
    :: u_first ->
        shutdown_cancel_all();
        g_finisherGo = 1;    /* Thread.spawn(detached) { finish() } */
#ifdef BUG_OWN_WAITS
        rt_state == 2        /* waits like an outside caller: for its own callback */
#else
        skip
#endif
    :: else
    fi;
    u_first = 0
}
#endif

/* Handle 0's first callback chains the next sleep (accepted before the
   shutdown reaches its stripe, refused after). */
inline user_cb_0(h, op) {
    if
    :: h == 0 && op == 1 ->
        aio_begin(h, CK_SLEEP, 1, 1, u_ok, u_op); d_step { u_ok = 0; u_op = 0 };
#ifdef SHUTDOWN_FROM_CB
        shutdown_own()
#else
        skip
#endif
    :: else
    fi
}

active proctype Consumer() {
    C_LOCALS;
#ifdef TWO_CALLERS
    /* a smaller scenario beside the two shutdown callers: a sleep (chained
       once) and an operation without cancel routine the consumer finishes */
    aio_begin(0, CK_SLEEP, 1, 1, u_ok, u_op);
    aio_begin(1, CK_NONE, 0, 0, u_ok, u_op);
    if :: u_ok -> aio_finish(1, E_OK) :: else fi;
    d_step { u_ok = 0; u_op = 0 };
    user_drop(0);
    user_drop(1);
    g_driverDone = 1
#else
    aio_begin(0, CK_SLEEP, 1, 1, u_ok, u_op);
#ifdef NOCANCEL_OP
    aio_begin(1, CK_NONE, 0, 0, u_ok, u_op);
    c_act = u_ok;                          /* begin() may have been refused already */
#else
    provider_start(1, 0);
#endif
    d_step { u_ok = 0; u_op = 0 };
#ifndef NOCANCEL_OP
    if
    :: act_c(0, C_CANCEL)
    :: true
    fi;
#endif
#ifdef NOCANCEL_OP
    /* the consumer is the provider of handle 1's operation: it finishes it */
    if :: c_act -> aio_finish(1, E_OK) :: else fi;
    c_act = 0;
#endif
    /* once handle 1's operation and callback are done (wait()), a start
       after (or racing with) the shutdown: refused, still calls back */
    act_c(1, C_WAIT);
    aio_begin(1, CK_NONE, 0, 0, u_ok, u_op);
    if :: u_ok -> aio_finish(1, E_OK) :: else fi;   /* accepted before the shutdown: finish it */
    d_step { u_ok = 0; u_op = 0 };
    user_drop(0);
    user_drop(1);
    g_driverDone = 1
#endif
}

active proctype Worker0() {
    CB_LOCALS; byte wm_h, wm_op; bit wm_spun;
    w_spawned[0] = 1;
    worker_thread(0)
}

active proctype Timer() {
    LEAF_LOCALS; byte tm_h, tm_s;
    timer_thread();
    g_timerExited = 1
}

#ifdef SHUTDOWN_FROM_CB
/* The thread the callback's shutdown() spawned. */
active proctype Shutdown() {
    LEAF_LOCALS;
    byte sd_rounds, sd_live;
    bit sd_quiet;
    g_finisherGo;
    shutdown_finish();
    g_shutdownDone = 1
}
#else
/* RuntimeCore.shutdown() from a thread that is not the runtime's. */
active proctype Shutdown() {
    LEAF_LOCALS;
    byte sd_rounds, sd_live;
    bit sd_quiet, sd_first;
    shutdown_enter(0, sd_first);
    if
    :: sd_first ->
        shutdown_cancel_all();
        shutdown_finish()
    :: else
    fi;
    g_shutdownDone = 1
}
#endif

/* The final check ([AIO-2], [AIO-27]), in safety runs (in liveness runs
   the ltl formula is the property and this process does nothing). */
active proctype Final() {
    byte fc_i;
#ifndef LIVENESS
    timeout;
    if :: g_driverDone && g_shutdownDone -> final_check() :: else fi
#endif
}

/* The transient drainer (startDrainer): runs callbacks dispatched after terminate(). */
active proctype Drainer() {
    CB_LOCALS; byte wm_h, wm_op; bit wm_spun;
    worker_thread(2)
}

#ifdef TWO_CALLERS
/* A second caller of shutdown() from outside the runtime, concurrently
   ([RT-4]): whichever comes second waits for the first to finish. */
active proctype Shutdown2() {
    LEAF_LOCALS;
    byte sd_rounds, sd_live;
    bit sd_quiet, sd_first;
    shutdown_enter(0, sd_first);
    if
    :: sd_first ->
        shutdown_cancel_all();
        shutdown_finish()
    :: else
    fi
}
#endif
