/*
 * overlap.pml -- a completion that arrives while its handle's callback is
 * still running ([AIO-31], [AIO-1], [DL-1], [DL-2], [AIO-7], [POOL-3]).
 *
 * [AIO-1] lets a callback start the handle's next operation; when another
 * thread finishes that operation (the timer thread, for a sleep; the poller,
 * for a stream; another thread's finishSync), completionLocked() sees
 * callbackRunning and defers it: runCallbacks() dispatches it when the
 * running callback returns, to that worker's LIFO slot. So two callbacks of
 * a handle never run at once, and callbackThread (one word per handle) is
 * always right: wait()/stop() on the own handle from either callback
 * returns at once ([DL-1], [DL-2]).
 *
 * BUG_NO_DEFER (the code before commit 15f3b06, known bug KB-2 when this
 * model was written) queues the completion at once: the second callback runs
 * on the other task thread while the first still runs, and
 *   - the first, once the second has started, no longer sees itself in
 *     callbackThread: wait()/stop() on its own handle waits for itself;
 *   - SCEN_STALE: the second runs through finishSync on the driver thread;
 *     if the first returns first, the second restores a stale
 *     callbackThread, and a later wait() on the first's worker returns
 *     early ([AIO-7]).
 *
 * Pool: taskThreads 2 (MINT 2, MAXT 2), the timer thread, one handle
 * (SCEN_STALE: two; a callback of handle 1 waits for handle 0's third
 * operation).
 */

#define NOPS 3
#define MINT 2
#define MAXT 2
#define NW   2

#ifdef SCEN_STALE
#define NH   2
#else
#define NH   1
#endif

#define PID_C  0
#define PID_W0 1
#define PID_W1 2
#define PID_T  3
#define PID_F  4
#define MAXP   5

#define WID(p) ((p) == PID_W0 -> 0 : ((p) == PID_W1 -> 1 : NONE))
#define SPARE_W NONE
#define DRAINER_W NONE
#define USES_SLEEP

#define USER_CB_0(h, op) user_cb_0(h, op)
#define USER_CB_1(h, op) user_cb_1(h, op)

#include "core.pml"
#include "threads.inc"

/* an operation the driver thread finishes itself (a provider with no
   cancel routine: start(onCancel: nil)) */
bit ext_pending;

#ifndef SCEN_STALE
/* Handle 0's callback: the first chains a sleep (finished by the timer
   thread, so its callback may run on the other worker at once); each may
   then wait on or stop its own handle. */
inline user_cb_0(h, op) {
    if
    :: op == 1 -> aio_begin(h, CK_SLEEP, 1, 1, u_ok, u_op); d_step { u_ok = 0; u_op = 0 }
    :: else
    fi;
    if
    :: u_act = C_WAIT      /* [DL-1] */
    :: u_act = C_STOP      /* [DL-2] */
    :: u_act = 0
    fi;
    act_0(h, u_act);
    u_act = 0
}
#else
/* Handle 0's first callback chains an operation the driver finishes with
   finishSync (its callback runs on the driver, overlapping), and returns.
   Handle 1's callback (on a worker) waits for handle 0's third operation. */
inline user_cb_0(h, op) {
    if
    :: h == 0 && op == 1 ->
        aio_begin(h, CK_NONE, 0, 0, u_ok, u_op); d_step { u_ok = 0; u_op = 0 };
        ext_pending = 1
    :: h == 1 ->
        act_0(0, C_WAIT)  /* [AIO-7]: must wait until op 3 of handle 0 is done */
    :: else
    fi
}
#endif
inline user_cb_1(h, op) {
    skip
}

active proctype Consumer() {
    C_LOCALS;
#ifndef SCEN_STALE
    aio_begin(0, CK_SLEEP, 1, 1, u_ok, u_op);
    d_step { u_ok = 0; u_op = 0 };
    act_c(0, C_WAIT);
#else
    /* op 1 of handle 0, finished here: its callback (on a worker) chains op 2 */
    aio_begin(0, CK_NONE, 0, 0, u_ok, u_op);
    aio_finish(0, E_OK);
    ext_pending;
    aio_finish_sync(0, E_OK);        /* op 2's callback runs here, overlapping op 1's */
    act_c(0, C_WAIT);
    /* op 3 in flight; handle 1's callback (on a worker) waits for it */
    aio_begin(0, CK_NONE, 0, 0, u_ok, u_op);
    aio_begin(1, CK_NONE, 0, 0, u_ok, u_op);
    aio_finish(1, E_OK);
    aio_finish(0, E_OK);
    act_c(1, C_WAIT);
    d_step { u_ok = 0; u_op = 0 };
#endif
    g_driverDone = 1
}

active proctype Worker0() {
    CB_LOCALS; byte wm_h, wm_op; bit wm_spun;
    w_spawned[0] = 1;
    worker_thread(0)
}

active proctype Worker1() {
    CB_LOCALS; byte wm_h, wm_op; bit wm_spun;
    w_spawned[1] = 1;
    worker_thread(1)
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
