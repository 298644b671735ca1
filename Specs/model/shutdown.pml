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
 * has completed and run its callback ([RT-2]). Without -DFIX_TRANSIT this
 * fails: known bug KB-4 (README.md).
 */

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
#define MAXP   6

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

/* Handle 0's first callback chains the next sleep (accepted before the
   shutdown reaches its stripe, refused after). */
inline user_cb_0(h, op) {
    if
    :: h == 0 && op == 1 -> aio_begin(h, CK_SLEEP, 1, 1, u_ok, u_op); d_step { u_ok = 0; u_op = 0 }
    :: else
    fi
}

active proctype Consumer() {
    C_LOCALS;
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
}

active proctype Worker0() {
    CB_LOCALS; byte wm_h, wm_op;
    w_spawned[0] = 1;
    worker_thread(0)
}

active proctype Timer() {
    LEAF_LOCALS; byte tm_h, tm_s;
    timer_thread();
    g_timerExited = 1
}

/* RuntimeCore.shutdown() from a thread that is not the runtime's. */
active proctype Shutdown() {
    LEAF_LOCALS;
    byte sd_s, sd_h, sd_n, sd_live, sd_rounds;
    byte sd_k[NH], sd_q[NH];
    bit sd_quiet;
    /* Refuse new operations, and take the cancel routine of every one in
       flight, stripe by stripe ([RT-2], [RT-3]). */
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
    sd_h = 0;
    /* finish(): two quiet rounds in a row */
    do
    :: sd_rounds < 2 ->
        sd_live = 0;
        do
        :: sd_s < NS ->
            atomic { mutex_lock(s_owner[sd_s]); sd_live = sd_live + s_liveCount[sd_s]; mutex_unlock(s_owner[sd_s]) };
            sd_s++
        :: else -> break
        od;
        sd_s = 0;
        atomic { mutex_lock(p_owner); sd_quiet = POOL_EMPTY && p_active == 0 && p_transit == 0; mutex_unlock(p_owner) };
        if
        :: sd_live == 0 && sd_quiet -> sd_rounds++
        :: else ->
            sd_rounds = 0;
            /* nanosleep(200 us): abstractly, until the next poll could see quiet */
            (s_liveCount[0] + s_liveCount[NS - 1] == 0 && POOL_EMPTY && p_active == 0 && p_transit == 0)
        fi;
        d_step { sd_live = 0; sd_quiet = 0 }
    :: else -> break
    od;
    /* reaper.stop(), poller.stop(): no such threads modelled */
    timers_stop();
    g_timerExited;                 /* Thread.join(timer thread) */
    pool_terminate();
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
    g_shutdownDone = 1
}

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
    CB_LOCALS; byte wm_h, wm_op;
    worker_thread(2)
}
