/*
 * pool.pml -- waits and stops on other handles from inside callbacks, on the
 * smallest pools ([DL-3], [POOL-3], [POOL-4], [POOL-5], [DL-1], [AIO-7]).
 *
 * Handle 0 (A): an operation without cancel routine that the driver
 * finishes, so that A's callback runs on the worker. A's callback waits on,
 * or stops, handle 1 (B), whose sleep is in flight: either A's callback
 * first cancels B (the cancel routine finishes B on the worker, so B's
 * completion lands in the worker's LIFO slot: workerWillBlock must move it
 * to the queue), or B's sleep is ended by the timer thread (its completion
 * goes to the queue). B's callback may wait on / stop its own handle, or
 * wait on A (on the worker helping inside A's callback, A's callback is on
 * the stack: [DL-1] returns at once).
 *
 * Pool: taskThreads 1; -DMAXT=1 (default): no growth, the waiting worker
 * helps ([POOL-5]); -DMAXT=2: a spare worker is spawned ([POOL-4]).
 * -DSHARED_STRIPE: both handles on one lock stripe (one condition).
 */

#define NH   2
#define NOPS 1
#define MINT 1
#ifndef MAXT
#define MAXT 1
#endif
#define NW   2

#define PID_C  0
#define PID_W0 1
#define PID_T  2
#define PID_F  3
#define PID_W1 4
#define MAXP   5

#define WID(p) ((p) == PID_W0 -> 0 : ((p) == PID_W1 -> 1 : NONE))
#if MAXT > 1
#define SPARE_W 1
#else
#define SPARE_W NONE
#endif
#define DRAINER_W NONE
#define USES_SLEEP

#define USER_CB_0(h, op) user_cb_0(h, op)
#define USER_CB_1(h, op) user_cb_1(h, op)

#include "core.pml"
#include "threads.inc"

inline user_cb_0(h, op) {
    if
    :: h == 0 ->
        /* A's callback, on the worker: wait on B, stop B, or cancel B (its
           cancel routine finishes it here: its completion goes to this
           worker's LIFO slot) and then wait on it ([DL-3]) */
        if
        :: u_act = C_WAIT
        :: u_act = C_STOP
        :: u_act = C_CANCEL | C_WAIT
        fi;
        act_0(1, u_act)
    :: else ->
        /* B's callback, run by a worker on its own (after A's, or the spare) */
        if
        :: u_act = C_WAIT      /* [DL-1] */
        :: u_act = C_STOP      /* [DL-2] */
        :: u_act = 0
        fi;
        act_0(1, u_act)
    fi;
    u_act = 0
}
inline user_cb_1(h, op) {
    /* B's callback, run by the worker helping inside A's wait: on its own
       handle, or a wait on A, whose callback is below it on this stack
       ([DL-1]: returns at once) */
    if
    :: u_act = C_WAIT; u_h = 1
    :: u_act = C_STOP; u_h = 1
    :: u_act = C_WAIT; u_h = 0
    :: u_act = 0; u_h = 1
    fi;
    act_1(u_h, u_act);
    d_step { u_act = 0; u_h = 0 }
}

/* The driver: starts B's sleep and A's operation, finishes A (its callback
   runs on the worker), then waits for both and stops both. */
active proctype Consumer() {
    C_LOCALS;
    aio_begin(1, CK_SLEEP, 1, 1, u_ok, u_op);     /* B: a sleep */
    aio_begin(0, CK_NONE, 0, 0, u_ok, u_op);      /* A: the driver is its provider */
    d_step { u_ok = 0; u_op = 0 };
    aio_finish(0, E_OK);
    do
    :: c_i == 0 -> c_i++; act_c(0, C_WAIT)
    :: c_i == 1 -> c_i++; act_c(1, C_WAIT)
    :: c_i == 2 -> c_i++; act_c(0, C_STOP)
    :: c_i == 3 -> c_i++; act_c(1, C_STOP)
    :: c_i == 4 -> break
    od;
    atomic { c_i = 0 };
    user_drop(0);
    user_drop(1);
    g_driverDone = 1
}

active proctype Worker0() {
    CB_LOCALS; byte wm_h, wm_op; bit wm_spun;
    w_spawned[0] = 1;
    worker_thread(0)
}

active proctype Timer() {
    LEAF_LOCALS; byte tm_h, tm_s;
    timer_thread()
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

#define DONE_OR_NEW(i) (g_op[i] == OP_NEW || g_op[i] == OP_DONE)
#ifdef LIVENESS
ltl progress { <> [] (DONE_OR_NEW(0) && DONE_OR_NEW(1)) }
#endif
