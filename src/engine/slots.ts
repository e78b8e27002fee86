/**
 * The pure part of an activity's concurrency limit per key: a record per (activity, key) lists
 * the attempts holding one of its `limit` slots, each with a lease (`exp`, epoch ms) that its
 * worker renews while the attempt runs, and the attempts **waiting** for a slot, in the order
 * they queued (FIFO), each with a waiter lease that the waiting task renews each time it asks
 * again (in place, or when it comes back from a postponement). A holder or waiter whose lease has
 * passed is gone: the next change drops it, so the slot of a worker that died frees after one
 * lease and a waiter whose task vanished stops blocking the queue after one waiter lease. The
 * NATS side (`src/nats/slots.ts`) reads the record, applies one of these functions and writes it
 * back by compare-and-set.
 */

export interface SlotHolder {
  /** The attempt holding the slot: `<taskId>#<attempt>`. */
  id: string;
  /** The worker running it (for operators). */
  worker: string;
  /** Epoch ms it took the slot. */
  at: number;
  /** Epoch ms its lease ends unless renewed. */
  exp: number;
}

export interface SlotWaiter {
  /** The attempt waiting: `<taskId>#<attempt>` (a later attempt of the task takes its place). */
  id: string;
  /** Epoch ms the task first found the key full (its place in the queue). */
  queuedAt: number;
  /** Epoch ms its waiter lease ends unless the task asks again. */
  exp: number;
}

export interface SlotRecord {
  limit: number;
  holders: SlotHolder[];
  /** Tasks waiting for a slot, first come first (absent in records of older workers). */
  waiters?: SlotWaiter[];
}

export const EMPTY_SLOTS: SlotRecord = { limit: 0, holders: [], waiters: [] };

/** The holders whose lease has not passed at `now`. */
export function liveHolders(rec: SlotRecord, now: number): SlotHolder[] {
  return rec.holders.filter((h) => h.exp > now);
}

/** The waiters whose lease has not passed at `now`, in queue order. */
export function liveWaiters(rec: SlotRecord, now: number): SlotWaiter[] {
  return (rec.waiters ?? []).filter((w) => w.exp > now);
}

/** The task of an attempt id `<taskId>#<attempt>`. */
export function taskOfSlotId(id: string): string {
  const i = id.lastIndexOf('#');
  return i < 0 ? id : id.slice(0, i);
}

const sameTask = (a: string, b: string) => taskOfSlotId(a) === taskOfSlotId(b);

export interface SlotWait {
  /** The waiter lease given (or renewed) when the take is not granted. */
  leaseMs: number;
  /**
   * When the task first found the key full, if it did before (it comes back from a postponement):
   * a task that lost its entry (its lease passed on the way back) is put back at that place,
   * ahead of tasks that queued later. Absent: a new waiter queues last, at `now`.
   */
  queuedAt?: number;
}

export interface SlotTake {
  /** Whether `id` holds a slot in `record`. */
  granted: boolean;
  /** Not granted: `id`'s place among the live waiters (0: next). */
  position: number;
  /** The record to write (expired entries dropped; `id` added as holder or waiter). */
  record: SlotRecord;
  /** Whether `record` differs from the one read (else there is nothing to write). */
  changed: boolean;
}

/**
 * Take a slot for attempt `id`. Granted when it holds one already (its lease is renewed), or when
 * a slot is free for it: fewer live waiters are ahead of it than free slots (`limit` minus the
 * live holders). A waiter granted leaves the waiters. Not granted: it is added as a waiter (last,
 * or at its `queuedAt` when it lost its entry), or keeps its place (an earlier attempt of the same
 * task takes the new id); its waiter lease is renewed once less than half of it is left.
 */
export function takeSlot(
  rec: SlotRecord,
  id: string,
  worker: string,
  limit: number,
  now: number,
  leaseMs: number,
  wait: SlotWait,
): SlotTake {
  const live = liveHolders(rec, now);
  const waiters = liveWaiters(rec, now);
  const dropped =
    live.length !== rec.holders.length || waiters.length !== (rec.waiters ?? []).length;
  const mine = live.find((h) => h.id === id);
  if (mine) {
    return {
      granted: true,
      position: 0,
      record: {
        limit,
        holders: live.map((h) => (h.id === id ? { ...h, worker, exp: now + leaseMs } : h)),
        waiters: waiters.filter((w) => !sameTask(w.id, id)),
      },
      changed: true,
    };
  }
  const at = waiters.findIndex((w) => sameTask(w.id, id));
  let position = at;
  if (at < 0) {
    const q = wait.queuedAt;
    const ahead = q === undefined ? -1 : waiters.findIndex((w) => w.queuedAt > q);
    position = ahead < 0 ? waiters.length : ahead;
  }
  const free = limit - live.length;
  if (position < free) {
    return {
      granted: true,
      position: 0,
      record: {
        limit,
        holders: [...live, { id, worker, at: now, exp: now + leaseMs }],
        waiters: at < 0 ? waiters : waiters.filter((_, i) => i !== at),
      },
      changed: true,
    };
  }
  const exp = now + wait.leaseMs;
  if (at < 0) {
    const me: SlotWaiter = { id, queuedAt: Math.min(wait.queuedAt ?? now, now), exp };
    return {
      granted: false,
      position,
      record: { limit, holders: live, waiters: waiters.toSpliced(position, 0, me) },
      changed: true,
    };
  }
  const old = waiters[at]!;
  const renew = old.id !== id || old.exp - now < wait.leaseMs / 2;
  return {
    granted: false,
    position,
    record: {
      limit,
      holders: live,
      waiters: renew ? waiters.map((w, i) => (i === at ? { ...w, id, exp } : w)) : waiters,
    },
    changed: renew || dropped,
  };
}

/** `id`'s place among the live waiters of `rec` at `now` (its task's), or -1. */
export function waiterPosition(rec: SlotRecord, id: string, now: number): number {
  return liveWaiters(rec, now).findIndex((w) => sameTask(w.id, id));
}

/**
 * Renew the lease of attempt `id`. A holder that lost its entry (its lease passed while its
 * worker could not reach the server) is put back even over the limit: the record then shows what
 * really runs, and no new attempt is admitted until it is under the limit again.
 */
export function renewSlot(
  rec: SlotRecord,
  id: string,
  worker: string,
  now: number,
  leaseMs: number,
  at: number,
): { record: SlotRecord; lost: boolean } {
  const live = liveHolders(rec, now);
  const lost = !live.some((h) => h.id === id);
  const holders = lost
    ? [...live, { id, worker, at, exp: now + leaseMs }]
    : live.map((h) => (h.id === id ? { ...h, exp: now + leaseMs } : h));
  const waiters = liveWaiters(rec, now).filter((w) => !sameTask(w.id, id));
  return { record: { limit: rec.limit, holders, waiters }, lost };
}

/** Give the slot of attempt `id` back (expired holders and waiters dropped too). */
export function releaseSlot(rec: SlotRecord, id: string, now: number): SlotRecord {
  return {
    limit: rec.limit,
    holders: liveHolders(rec, now).filter((h) => h.id !== id),
    waiters: liveWaiters(rec, now),
  };
}

/**
 * Take attempt `id`'s task out of the waiters (it ends without a slot: canceled, terminated).
 * Expired holders and waiters are dropped too.
 */
export function leaveSlotQueue(rec: SlotRecord, id: string, now: number): SlotRecord {
  return {
    limit: rec.limit,
    holders: liveHolders(rec, now),
    waiters: liveWaiters(rec, now).filter((w) => !sameTask(w.id, id)),
  };
}
