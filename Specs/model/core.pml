/*
 * core.pml -- the AioKit core (Sources/AioKit/Core, Timers, Providers/Sleep)
 * as Promela, shared by the scenario models (handle.pml, pool.pml,
 * shutdown.pml, overlap.pml). Each inline below is named after, and follows
 * statement by statement, the Swift function it models; what is abstracted
 * is listed in README.md.
 *
 * A scenario defines, before including this file:
 *   NH        handles (1..2)          NOPS   operations per handle (seq 1..NOPS)
 *   NW        worker slots            MINT   taskThreads    MAXT  maxTaskThreads
 *   MAXP      processes (pids 0..MAXP-1)
 *   WID(p)    worker index of pid p, or NONE (TaskPool.currentWorker())
 *   USES_SLEEP / USES_PROV  which cancel routines the scenario's operations
 *             register (code for the others is left out)
 * Every handle has a callback (wait() works on those too); a handle made
 * without one (completed on the finishing thread) is not modelled.
 * and after it the user callbacks USER_CB_0/1/2(h, op) (depth of nesting:
 * 0 run by a worker or finishSync, 1 run by a worker helping in a wait()
 * inside a depth-0 callback, 2 helping inside a depth-1 wait).
 *
 * Seeded bugs (each must make some run fail; see README.md):
 *   BUG_NO_SEQ_CHECK     timerExpired() does not compare seq        [TMR-4]
 *   BUG_NO_CLAIM         provider cancel finishes without its claim [AIO-2] [AIO-28]
 *   PROVIDER_CLAIM_AFTER_BEGIN  the provider claims its operation after
 *                        begin() returned, outside its lock (SocketStream
 *                        and StreamListener before 89c45f2)      [AIO-13] [AIO-17]
 *   BUG_NO_CB_GUARD      wait() without the callbackThread check    [DL-1] [DL-2]
 *   BUG_NO_DEFER         a completion is queued even while the handle's
 *                        callback runs (the code before 15f3b06)    [AIO-31] [DL-1]
 *   BUG_NO_PENDING_CHECK begin() does not trap while a completion is
 *                        queued (the code before 15f3b06)           [AIO-1] [AIO-2]
 *   BUG_NO_LIFO_FLUSH    workerWillBlock() keeps the LIFO slot      [DL-3] [POOL-4]
 *   BUG_NO_HELP          at the ceiling the waiter does not help    [DL-3] [POOL-5]
 *   BUG_NO_WAITERS       wait() does not set the waiters flag       [AIO-7]
 *   BUG_WAIT_IF          wait() tests busy once instead of looping  [AIO-7]
 *   BUG_EARLY_RELEASE    run() drops the in-flight ref before the callback [AIO-27]
 *   BUG_TIMER_NO_RETAIN  the timer does not retain a due handle     [AIO-27]
 *   BUG_TIMER_HOLDS_LOCK timer thread expires under the timer lock  [DL lock order]
 *   BUG_STOP_NO_WAIT     stop() is close() without the wait         [AIO-17]
 *   BUG_NO_STOP_FLAG     close() does not set `stopped`             [AIO-17]
 *   BUG_NO_SIGNAL        enqueue() does not signal a parked worker  [AIO-2]
 *   BUG_SHUTDOWN_NO_CANCEL shutdown does not take the cancel routines [RT-2]
 *   BUG_QUIET_LIVE       shutdown's quiet test counts live ops, not
 *                        pending ones (shutdown.pml; KB-4, fixed)  [RT-2]
 */

#define NIL  255   /* no handle */
#define NONE 255   /* not a worker */

/* AioError values the model tells apart */
#define E_OK       0
#define E_CANCELED 1
#define E_STOPPED  2
#define E_TIMEDOUT 3
#define E_ABORTED  4

/* the cancel routine registered by begin() */
#define CK_NONE  0   /* start(onCancel: nil) */
#define CK_SLEEP 1   /* cancelFn = AioHandle.finishWithError (Providers/Sleep.swift) */
#define CK_PROV  2   /* cancelSeqFn = the provider's cancel(aio, error, seq) */

/* ghost: the life of one operation */
#define OP_NEW      0
#define OP_FLIGHT   1   /* begin() accepted it; provider owns it */
#define OP_FINISHED 2   /* markFinished or refused: its completion is pending */
#define OP_CB       3   /* its callback is running */
#define OP_DONE     4   /* completeCallback() done: busy decremented */

#define OPI(h, s) ((h) * NOPS + (s) - 1)

#ifdef SHARED_STRIPE
#define NS 1
#define STRIPE(h) 0
#else
#define NS NH
#define STRIPE(h) (h)
#endif

#ifndef QCAP
#define QCAP 4
#endif


/* Clause tags: hidden constants so that a violated assertion names its clause. */
hidden byte AIO_1 = 1;  hidden byte AIO_2 = 1;  hidden byte AIO_7 = 1;  hidden byte AIO_17 = 1;
hidden byte AIO_27 = 1; hidden byte AIO_28 = 1; hidden byte DL_1 = 1;  hidden byte TMR_4 = 1;
hidden byte RT_2 = 1;   hidden byte RT_4 = 1;   hidden byte AIO_31 = 1; hidden byte MODEL_BOUND = 1; hidden byte REACHED = 1;

/* Coverage probes: with -DCOVER=n, reaching probe n (with its condition)
   is reported as an assertion "REACHED"; the check script runs each probe
   and expects it to be reached, so that no property holds vacuously
   because its scenario never happens. Without COVER a probe is a no-op. */
#ifdef COVER
#define REACH(n, c) assert(REACHED && !(COVER == n && (c)))
#else
#define REACH(n, c) skip
#endif

/* ---------------------------------------------------------------- Stripe */
byte s_owner[NS];               /* pthread mutex: 0 free, else owner pid+1 */
bit  s_closed[NS];              /* Stripe.closed, set by shutdown */
byte s_liveHead[NS] = NIL;      /* Stripe.liveHead (intrusive, through liveNext/livePrev) */
byte s_liveCount[NS];           /* the live list's length (Stripe.liveCount before KB-4's fix; BUG_QUIET_LIVE) */
byte s_waitOn[MAXP];            /* Stripe.cond: pid p parked on stripe s+1 (0: not parked) */

/* ------------------------------------------ AioHandle, under its stripe */
bit  h_inFlight[NH];
bit  h_stopped[NH];
bit  h_timerArmed[NH];
bit  h_waiters[NH];
bit  h_succeedAtExpiry[NH];
bit  h_cbRunning[NH];           /* callbackRunning: a callback of h is running */
bit  h_pending[NH];             /* completionPending: finished, its callback not begun */
bit  h_deferred[NH];            /* deferred: that completion waits for the running callback */
byte h_busy[NH];
byte h_seq[NH];
byte h_cancel[NH];              /* cancelFn / cancelSeqFn: CK_* */
byte h_result[NH];
byte h_pendingAbort[NH];        /* 0: none, else the error */
byte h_liveNext[NH] = NIL;      /* live list while in flight; the pool queue link once finished */
byte h_livePrev[NH] = NIL;
byte h_cbThread[NH];            /* callbackThread (Atomic<UInt>): pid+1, 0: none */
/* AioHandle, under the timer lock */
bit  h_inWheel[NH];             /* timerSlot >= 0 */
byte h_timerSeq[NH];
/* ARC, as an explicit count: references other than the consumer's */
byte h_rc[NH];
bit  h_userDropped[NH];         /* the consumer dropped its reference */
bit  h_freed[NH];               /* deinit ran */

/* ----------------------------------------------------------- TaskPool */
byte p_owner;                   /* TaskPool.lock */
bit  p_waiting[NW];             /* worker w parked on the pool condition */
bit  p_termWaiting;             /* terminate() parked on the pool condition */
byte p_head = NIL;              /* intrusive FIFO through h_liveNext */
byte p_tail = NIL;
chan g_q[NH] = [QCAP] of { byte };     /* ghost: per handle, the ops whose completion is queued */
byte p_threads = MINT;
byte p_idle;
byte p_spinning;                /* workers in spinBeforeParking: enqueue wakes nobody for them */
byte p_blocked;
byte p_active;
bit  p_terminated;
bit  p_drainer;
byte w_lifoH[NW] = NIL;         /* WorkerContext.lifo (handle) */
byte w_lifoOp[NW];              /* ghost: which of its operations */
byte w_blocking[NW];            /* WorkerContext.blocking */
bit  w_spawned[NW];             /* Thread.spawn done for worker w (w 0: at start) */
byte g_defOp[NH];               /* ghost: the op whose completion is deferred */

/* ------------------------------------------------------------- Reaper */
chan r_q = [2] of { byte };     /* Reaper.items: handles to stop and release */

/* --------------------------------------------------------- TimerQueue */
byte t_owner;                   /* TimerQueue.lock */
bit  t_running = 1;

/* -------------------------------------------------- the model provider */
byte v_owner;                   /* the provider's lock */
byte v_claim[NH];               /* providerWord: seq of the op it holds queued, 0: none */

/* ---------------------------------------------------------------- ghost */
byte g_op[NH * NOPS];           /* OP_* */
bit  g_accepted[NH * NOPS];     /* begin() returned true */
bit  g_timerFired[NH * NOPS];   /* the timer thread took this op's wheel entry */
byte g_res[NH * NOPS];          /* the result it finished with */
bit  g_stopDone[NH];            /* a stop() from outside the handle's callbacks returned */
byte g_onStack[MAXP * NH];      /* h's callbacks running on pid p's stack */
byte g_cbOwner[NH];             /* pid+1 of the thread running h's callbacks ([AIO-31]) */
bit  g_shutdownDone;            /* RuntimeCore.shutdown() returned */
bit  g_driverDone;              /* the scenario's driver (consumer) ran to its end */

/* ============================================================== locks */

/* pthread_mutex_lock: blocks while another thread holds it; relocking one's
   own (non-recursive) mutex is reported instead of blocking forever. */
#define mutex_lock(o) atomic { (o == 0 || o == _pid + 1) -> assert(o == 0); o = _pid + 1 }
#define mutex_unlock(o) atomic { assert(o == _pid + 1); o = 0 }

/* The stripe lock of h, taken through h: h must not have been freed ([AIO-27]). */
#define stripe_lock(h) atomic { (s_owner[STRIPE(h)] == 0 || s_owner[STRIPE(h)] == _pid + 1 || h_freed[h]) -> assert(AIO_27 && !h_freed[h]); assert(s_owner[STRIPE(h)] == 0); s_owner[STRIPE(h)] = _pid + 1 }
#define stripe_unlock(h) atomic { assert(s_owner[STRIPE(h)] == _pid + 1); s_owner[STRIPE(h)] = 0 }

/* Stripe.wait(): pthread_cond_wait (no spurious wake-ups modelled). */
inline stripe_wait(h) {
    d_step { assert(s_owner[STRIPE(h)] == _pid + 1); s_waitOn[_pid] = STRIPE(h) + 1; s_owner[STRIPE(h)] = 0 };
    atomic { s_waitOn[_pid] == 0 && s_owner[STRIPE(h)] == 0 -> s_owner[STRIPE(h)] = _pid + 1 }
}

/* Stripe.wait(untilNanos:) with a 1 ms limit: woken by a broadcast, or by the
   time limit. In safety runs the time limit is modelled as firing only when
   the caller's re-poll would see a change (`poll`): a poll that finds
   nothing is a stutter step, so this keeps every behaviour of the polling
   loop while a hang shows as an invalid end state. In liveness runs it also
   fires when no other thread can move (Promela's `timeout`): a hang is then
   a cycle of empty polls that never completes the operation (an acceptance
   cycle of ltl `progress`), while a poller can never starve a thread that
   waits for the lock it keeps retaking (pthread mutexes are not fair, but
   a 1 ms sleep lets the other thread in). */
#ifdef LIVENESS
#define TIMED_OUT(poll) ((poll) || timeout)
#else
#define TIMED_OUT(poll) (poll)
#endif
inline stripe_timed_wait(h, poll) {
    d_step { assert(s_owner[STRIPE(h)] == _pid + 1); s_waitOn[_pid] = STRIPE(h) + 1; s_owner[STRIPE(h)] = 0 };
    atomic { (s_waitOn[_pid] == 0 || TIMED_OUT(poll)) && s_owner[STRIPE(h)] == 0 ->
             s_waitOn[_pid] = 0; s_owner[STRIPE(h)] = _pid + 1 }
}

/* Stripe.broadcast(): wakes every thread parked on the stripe's condition. */
inline stripe_broadcast(h) {
    d_step {
        s_bi = 0;
        do
        :: s_bi < MAXP -> if :: s_waitOn[s_bi] == STRIPE(h) + 1 -> s_waitOn[s_bi] = 0 :: else fi; s_bi++
        :: else -> break
        od;
        s_bi = 0
    }
}
byte s_bi;   /* loop index of stripe_broadcast (always 0 between steps) */

/* ======================================================== ARC ([AIO-27]) */

#define retain(h) atomic { assert(AIO_27 && !h_freed[h]); h_rc[h]++ }
/* Unmanaged.release(): deinit when the last reference goes. */
#define release(h) atomic { assert(AIO_27 && !h_freed[h] && h_rc[h] > 0); h_rc[h]--; if :: h_rc[h] == 0 && h_userDropped[h] -> h_freed[h] = 1 :: else fi }
/* The consumer drops its own reference (it touches h no more). */
inline user_drop(h) {
    d_step {
        assert(!h_userDropped[h]);
        h_userDropped[h] = 1;
        if :: h_rc[h] == 0 -> h_freed[h] = 1 :: else fi
    }
}

/* ============================================ Stripe live list (Stripe.swift) */

inline stripe_link(h) {         /* Stripe.link (stripe lock held) */
    h_livePrev[h] = NIL;
    h_liveNext[h] = s_liveHead[STRIPE(h)];
    if :: s_liveHead[STRIPE(h)] != NIL -> h_livePrev[s_liveHead[STRIPE(h)]] = h :: else fi;
    s_liveHead[STRIPE(h)] = h;
    s_liveCount[STRIPE(h)]++
}
inline stripe_unlink(h) {       /* Stripe.unlink (stripe lock held) */
    if :: h_liveNext[h] != NIL -> h_livePrev[h_liveNext[h]] = h_livePrev[h] :: else fi;
    if :: h_livePrev[h] != NIL -> h_liveNext[h_livePrev[h]] = h_liveNext[h]
       :: else -> s_liveHead[STRIPE(h)] = h_liveNext[h]
    fi;
    h_liveNext[h] = NIL;
    h_livePrev[h] = NIL;
    assert(s_liveCount[STRIPE(h)] > 0);
    s_liveCount[STRIPE(h)]--
}

/* ==================================================== TimerQueue (stripe held) */

inline timers_insert(h, sq) {   /* TimerQueue.insert: lock order stripe -> timer */
    mutex_lock(t_owner);
    d_step { h_inWheel[h] = 1; h_timerSeq[h] = sq };
    mutex_unlock(t_owner)
}
inline timers_remove(h) {       /* TimerQueue.remove */
    mutex_lock(t_owner);
    h_inWheel[h] = 0;
    mutex_unlock(t_owner)
}

/* ============================================================ TaskPool */

inline pool_signal() {          /* lock.signal(): wakes one parked worker, if any */
    if
    :: p_waiting[0] -> p_waiting[0] = 0
#if NW > 1
    :: p_waiting[1] -> p_waiting[1] = 0
#endif
#if NW > 2
    :: p_waiting[2] -> p_waiting[2] = 0
#endif
    :: else -> skip
    fi
}
inline pool_broadcast() {       /* lock.broadcast() */
    d_step {
        p_waiting[0] = 0;
#if NW > 1
        p_waiting[1] = 0;
#endif
#if NW > 2
        p_waiting[2] = 0;
#endif
        p_termWaiting = 0
    }
}

/* spawnWorker() (pool lock not held): the spare slot becomes a thread. */
inline spawn_worker() {
#if SPARE_W == NONE
    assert(MODEL_BOUND && 0)
#else
    assert(MODEL_BOUND && !w_spawned[SPARE_W]);
    w_spawned[SPARE_W] = 1
#endif
}
/* startDrainer() (pool lock held): after terminate(), a transient worker. */
inline start_drainer() {
#if DRAINER_W == NONE
    assert(MODEL_BOUND && 0)
#else
    REACH(4, 1);
    p_drainer = 1;
    p_threads++;
    w_spawned[DRAINER_W] = 1
#endif
}

/* TaskPool.enqueue: takes over the completion's in-flight reference.
   The write of h.liveNext happens before, and outside, the pool lock. */
inline pool_enqueue(h, op) {
    d_step { assert(AIO_27 && !h_freed[h]); h_liveNext[h] = NIL };   /* $0.liveNext = nil */
    atomic {
        mutex_lock(p_owner);
        if :: p_tail != NIL -> h_liveNext[p_tail] = h :: else -> p_head = h fi;
        p_tail = h;
        assert(MODEL_BOUND && nfull(g_q[h]));
        g_q[h]!op;                                /* ghost */
        if
#ifndef BUG_NO_SIGNAL
        :: p_idle > 0 && p_spinning == 0 -> pool_signal()
#endif
        :: else ->
            if
            :: p_terminated && !p_drainer && p_threads == 0 -> start_drainer()
            :: else
            fi
        fi;
        mutex_unlock(p_owner)
    }
}

#define POOL_EMPTY (p_head == NIL)

/* TaskPool.dequeue (lock held): the handle (NIL if none) and, as ghost, the op. */
inline pool_dequeue(h, op) {
    if
    :: p_head == NIL -> h = NIL; op = 0
    :: else ->
        h = p_head;
        p_head = h_liveNext[h];
        if :: p_head == NIL -> p_tail = NIL :: else fi;
        /* every dequeue must match a completion dispatched for h */
        assert(AIO_2 && nempty(g_q[h]));
        g_q[h]?op
    fi
}

/* TaskPool.dispatch: on a worker not blocked in wait(), to its LIFO slot
   (whatever was there goes to the queue); elsewhere to the queue. */
inline pool_dispatch(h, op) {
    d_step {
        d_w = WID(_pid);
        if
        :: d_w != NONE && w_blocking[d_w] == 0 ->
            d_ph = w_lifoH[d_w]; d_pop = w_lifoOp[d_w]; w_lifoH[d_w] = h; w_lifoOp[d_w] = op
        :: else ->
            d_ph = h; d_pop = op
        fi;
        d_w = 0
    };
    if :: d_ph != NIL -> pool_enqueue(d_ph, d_pop) :: else fi;
    d_step { d_ph = 0; d_pop = 0 }
}

/* ============================================================ AioHandle */

#define ACT_ENQUEUE  1
#define ACT_DEFERRED 2

/* completionLocked() (stripe lock held): how the finished (or refused)
   operation's callback runs: through the pool, or, while a callback of this
   handle runs, after it on its thread ([AIO-31]). Every modelled handle has
   a callback (the `callback == nil` branch, and perform's continuation, are
   not modelled). */
inline completion_locked(h, op, act) {
    h_pending[h] = 1;
    if
#ifndef BUG_NO_DEFER
    :: h_cbRunning[h] -> h_deferred[h] = 1; g_defOp[h] = op; act = ACT_DEFERRED; REACH(6, 1)
#endif
    :: else -> act = ACT_ENQUEUE
    fi
}

/* carryOut(action) (no lock held): .enqueue goes to the pool with the
   in-flight reference; .deferred stays with the running callback. */
inline carry_out(h, op, act) {
    if
    :: act == ACT_ENQUEUE -> pool_dispatch(h, op)
    :: else
    fi
}

/* wakeWaitersIfIdle() (stripe lock held) */
inline wake_waiters_if_idle(h) {
    if
    :: h_busy[h] == 0 && h_waiters[h] ->
        h_waiters[h] = 0;
        stripe_broadcast(h)
    :: else
    fi
}

/* markFinished (stripe lock held): ends the operation in flight. */
inline mark_finished(h, err, op) {
    assert(AIO_28 && h_inFlight[h]);          /* precondition: finish twice / never started */
    h_inFlight[h] = 0;
    h_cancel[h] = CK_NONE;
    h_result[h] = err;
    stripe_unlink(h);
    if
    :: h_timerArmed[h] -> h_timerArmed[h] = 0; timers_remove(h)
    :: else
    fi;
    op = h_seq[h];
    assert(g_op[OPI(h, op)] == OP_FLIGHT);
    g_op[OPI(h, op)] = OP_FINISHED;
    g_res[OPI(h, op)] = err;
    /* [TMR-4]: a timeout ends an op only if that op's own timer fired. */
    assert(TMR_4 && (err != E_TIMEDOUT || g_timerFired[OPI(h, op)]))
}

/* finish(_:count:): the callback runs on the pool ([AIO-3]), or after the
   running one ([AIO-31]). */
inline aio_finish(h, err) {
    atomic {
        stripe_lock(h);
        mark_finished(h, err, f_op);
        completion_locked(h, f_op, f_act);
        stripe_unlock(h)
    };
    carry_out(h, f_op, f_act);
    d_step { f_op = 0; f_act = 0 }
}

/* begin(onCancel:cancelRoutine:...) (and so start() and sleep()).
   kind: CK_*; armed: the op has a deadline (a sleep, or a finite timeout);
   sleep: it succeeds at that deadline. ok: begin's result; op: its seq. */
inline aio_begin(h, kind, armed, sleep, ok, op) {
    atomic {
        retain(h);                             /* Unmanaged.passRetained(self): the in-flight reference */
        stripe_lock(h);
        /* preconditions: one operation at a time ([AIO-1]) */
        assert(AIO_1 && !h_inFlight[h]);
#ifndef BUG_NO_PENDING_CHECK
        assert(AIO_1 && !h_pending[h]);
#endif
        h_busy[h]++;
        h_seq[h]++;
        op = h_seq[h];
        assert(MODEL_BOUND && op <= NOPS);
        g_op[OPI(h, op)] = OP_FLIGHT;
        if
        :: h_stopped[h] || s_closed[STRIPE(h)] -> b_fail = E_STOPPED
        :: else ->
            if
            :: h_pendingAbort[h] != E_OK -> b_fail = h_pendingAbort[h]; h_pendingAbort[h] = E_OK; REACH(9, 1)
            :: else -> b_fail = E_OK
            fi
        fi;
        if
        :: b_fail != E_OK ->
            h_result[h] = b_fail;
            g_op[OPI(h, op)] = OP_FINISHED;
            g_res[OPI(h, op)] = b_fail;
            completion_locked(h, op, b_act)
        :: else ->
            /* [AIO-17]: every start after stop() returned is refused */
            assert(AIO_17 && !g_stopDone[h]);
            h_succeedAtExpiry[h] = sleep;
            h_inFlight[h] = 1;
            h_cancel[h] = kind;
            g_accepted[OPI(h, op)] = 1;
            stripe_link(h);
            if
            :: armed && kind != CK_NONE ->   /* no cancel routine: nothing a timer could do ([AIO-23]) */
                h_timerArmed[h] = 1;
                timers_insert(h, op)         /* lock order: stripe, then timer */
            :: else
            fi
        fi;
        stripe_unlock(h)
    };
    if
    :: b_fail != E_OK -> carry_out(h, op, b_act); ok = 0
    :: else -> ok = 1
    fi;
    d_step { b_fail = 0; b_act = 0 }
}

/* The model provider (a stream's receive, say): its lock, and providerWord
   `v_claim[h]` = the seq of the operation it holds; exactly one of its own
   completion and its cancel routine finds the claim and finishes. */

/* provider cancel(aio, error, seq) -- SocketStream.cancel / StreamListener.cancel */
inline provider_cancel(h, err, sq) {
    atomic {
        mutex_lock(v_owner);
#ifdef BUG_NO_CLAIM
        v_claim[h] = 0;
        pv_hit = 1
#else
        if
        :: v_claim[h] != 0 && v_claim[h] == sq -> v_claim[h] = 0; pv_hit = 1
        :: else -> pv_hit = 0; REACH(3, 1)  /* finished already (or a later operation): nothing to do */
        fi
#endif
    };
    if :: pv_hit -> aio_finish(h, err) :: else fi;   /* complete(aio, error), provider lock held */
    d_step { mutex_unlock(v_owner); pv_hit = 0 }
}

/* The provider starts an operation on h (SocketStream.start,
   StreamListener.accept): begin() under its own lock, so that its cancel
   routine (which takes that lock) finds the claim set. With
   PROVIDER_CLAIM_AFTER_BEGIN (a seeded bug: what both did before commit
   89c45f2) it calls begin(), then locks and sets providerWord. */
inline provider_start(h, armed) {
#ifdef PROVIDER_CLAIM_AFTER_BEGIN
    aio_begin(h, CK_PROV, armed, 0, ps_ok, ps_op);
    if
    :: ps_ok ->
        atomic { mutex_lock(v_owner); v_claim[h] = ps_op; mutex_unlock(v_owner) }
    :: else
    fi;
#else
    mutex_lock(v_owner);
    aio_begin(h, CK_PROV, armed, 0, ps_ok, ps_op);
    d_step { if :: ps_ok -> v_claim[h] = ps_op :: else fi; mutex_unlock(v_owner) };
#endif
    d_step { ps_ok = 0; ps_op = 0 }
}

/* The provider's own completion (SocketStream.pollEvents -> drain ->
   transfer -> complete): finishes the op it holds, if it still holds one. */
inline provider_complete(h) {
    atomic {
        mutex_lock(v_owner);
        if
        :: v_claim[h] != 0 -> v_claim[h] = 0; pv_hit = 1
        :: else -> pv_hit = 0
        fi
    };
    if :: pv_hit -> aio_finish(h, E_OK) :: else fi;
    d_step { mutex_unlock(v_owner); pv_hit = 0 }
}

/* Calls the cancel routine `k` taken for op `sq` (outside every lock, [DL-7]). */
#if defined(USES_SLEEP) && defined(USES_PROV)
#define call_cancel(h, k, err, sq) if :: k == CK_SLEEP -> aio_finish(h, err) :: k == CK_PROV -> provider_cancel(h, err, sq) :: else fi
#elif defined(USES_SLEEP)
#define call_cancel(h, k, err, sq) if :: k == CK_SLEEP -> aio_finish(h, err) :: else fi
#elif defined(USES_PROV)
#define call_cancel(h, k, err, sq) if :: k == CK_PROV -> provider_cancel(h, err, sq) :: else fi
#else
#define call_cancel(h, k, err, sq) skip
#endif

/* abort(_:) ([AIO-13], [AIO-14], [AIO-15]) */
inline aio_abort(h, err) {
    atomic {
        stripe_lock(h);
        if
        :: h_cancel[h] != CK_NONE ->
            a_k = h_cancel[h]; h_cancel[h] = CK_NONE; a_s = h_seq[h]
        :: else ->
            if
            :: !h_inFlight[h] && h_busy[h] == 0 -> h_pendingAbort[h] = err
            :: else
            fi
        fi;
        stripe_unlock(h)
    };
    call_cancel(h, a_k, err, a_s);
    d_step { a_k = 0; a_s = 0 }
}

/* close() ([AIO-18]) */
inline aio_close(h) {
    atomic {
        stripe_lock(h);
#ifndef BUG_NO_STOP_FLAG
        h_stopped[h] = 1;
#endif
        stripe_unlock(h)
    };
    aio_abort(h, E_STOPPED)
}

/* timerExpired(seq:) on the timer thread ([AIO-21], [TMR-4]). */
inline timer_expired(h, armedSeq) {
    atomic {
        stripe_lock(h);
        if
#ifdef BUG_NO_SEQ_CHECK
        :: h_inFlight[h] && h_cancel[h] != CK_NONE ->
#else
        :: h_inFlight[h] && h_seq[h] == armedSeq && h_cancel[h] != CK_NONE ->
#endif
            h_timerArmed[h] = 0;
            if
            :: h_succeedAtExpiry[h] ->
                /* a sleep reached its end ([AIO-25]): its own timer, [TMR-4] */
                assert(TMR_4 && g_timerFired[OPI(h, h_seq[h])]);
                mark_finished(h, E_OK, te_op);
                completion_locked(h, te_op, te_act);
                te_k = CK_NONE
            :: else ->
                REACH(7, h_cancel[h] == CK_PROV);
                te_k = h_cancel[h]; h_cancel[h] = CK_NONE; te_op = 0
            fi
        :: else ->   /* finished, or already being canceled: the finisher wins */
            REACH(5, h_inFlight[h] && h_seq[h] != armedSeq);
            te_k = CK_NONE; te_op = 0
        fi;
        stripe_unlock(h)
    };
    if
    :: te_op != 0 -> carry_out(h, te_op, te_act)
    :: else -> call_cancel(h, te_k, E_TIMEDOUT, armedSeq)
    fi;
    d_step { te_k = 0; te_op = 0; te_act = 0 }
}

/* TaskPool.workerWillBlock ([POOL-4]): the LIFO slot goes to the queue, a
   spare worker starts if the ceiling allows; atCeiling otherwise. */
inline worker_will_block(w, atCeiling) {
    d_step { wb_h = w_lifoH[w]; wb_op = w_lifoOp[w]; REACH(8, wb_h != NIL) };
#ifndef BUG_NO_LIFO_FLUSH
    if
    :: wb_h != NIL -> w_lifoH[w] = NIL; w_lifoOp[w] = 0; pool_enqueue(wb_h, wb_op)
    :: else
    fi;
#endif
    atomic {
        w_blocking[w]++;
        mutex_lock(p_owner);
        p_blocked++;
        wb_spawn = 0;
        atCeiling = 0;
        if
        :: p_threads - p_blocked < MINT ->
            if
            :: p_threads < MAXT -> p_threads++; wb_spawn = 1
            :: else -> atCeiling = 1
            fi
        :: else
        fi;
        mutex_unlock(p_owner)
    };
    if
    :: wb_spawn -> spawn_worker()
    :: else
    fi;
#ifdef BUG_NO_HELP
    atCeiling = 0;
#endif
    d_step { wb_h = 0; wb_op = 0; wb_spawn = 0 }
}

/* TaskPool.workerDidUnblock */
inline worker_did_unblock(w) {
    atomic {
        mutex_lock(p_owner);
        p_blocked--;
        mutex_unlock(p_owner);
        w_blocking[w]--
    }
}
