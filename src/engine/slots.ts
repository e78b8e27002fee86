/**
 * The pure part of an activity's concurrency limit per key: a record per (activity, key) lists
 * the attempts holding one of its `limit` slots, each with a lease (`exp`, epoch ms) that its
 * worker renews while the attempt runs. A holder whose lease has passed is gone: the next reader
 * drops it, so the slot of a worker that died frees after one lease. The NATS side
 * (`src/nats/slots.ts`) reads the record, applies one of these functions and writes it back by
 * compare-and-set.
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

export interface SlotRecord {
  limit: number;
  holders: SlotHolder[];
}

export const EMPTY_SLOTS: SlotRecord = { limit: 0, holders: [] };

/** The holders whose lease has not passed at `now`. */
export function liveHolders(rec: SlotRecord, now: number): SlotHolder[] {
  return rec.holders.filter((h) => h.exp > now);
}

export interface SlotTake {
  /** Whether `id` holds a slot in `record`. */
  granted: boolean;
  /** The record to write (expired holders dropped; `id` added when granted). */
  record: SlotRecord;
}

/**
 * Take a slot for attempt `id`: granted when it holds one already (its lease is renewed) or
 * fewer than `limit` live holders remain. Not granted: the record with expired holders dropped.
 */
export function takeSlot(
  rec: SlotRecord,
  id: string,
  worker: string,
  limit: number,
  now: number,
  leaseMs: number,
): SlotTake {
  const live = liveHolders(rec, now);
  const mine = live.find((h) => h.id === id);
  if (mine) {
    return {
      granted: true,
      record: {
        limit,
        holders: live.map((h) => (h.id === id ? { ...h, worker, exp: now + leaseMs } : h)),
      },
    };
  }
  if (live.length >= limit) return { granted: false, record: { limit, holders: live } };
  return {
    granted: true,
    record: { limit, holders: [...live, { id, worker, at: now, exp: now + leaseMs }] },
  };
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
  return { record: { limit: rec.limit, holders }, lost };
}

/** Give the slot of attempt `id` back (expired holders dropped too). */
export function releaseSlot(rec: SlotRecord, id: string, now: number): SlotRecord {
  return { limit: rec.limit, holders: liveHolders(rec, now).filter((h) => h.id !== id) };
}
