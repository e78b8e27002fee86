import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  EMPTY_SLOTS,
  leaveSlotQueue,
  liveHolders,
  liveWaiters,
  releaseSlot,
  renewSlot,
  takeSlot,
  waiterPosition,
  type SlotRecord,
} from '../../src/engine/slots.js';

/** A waiter lease for the tests that do not look at waiters. */
const W = { leaseMs: 10_000 };

describe('activity concurrency slots (pure)', () => {
  it('grants up to the limit, then refuses; a holder asking again keeps its slot', () => {
    let r = EMPTY_SLOTS;
    for (const id of ['a', 'b']) {
      const t = takeSlot(r, id, 'w1', 2, 1_000, 500, W);
      expect(t.granted).toBe(true);
      r = t.record;
    }
    expect(takeSlot(r, 'c', 'w2', 2, 1_100, 500, W).granted).toBe(false);
    const again = takeSlot(r, 'a', 'w1', 2, 1_200, 500, W);
    expect(again.granted).toBe(true);
    expect(again.record.holders.find((h) => h.id === 'a')!.exp).toBe(1_700);
  });

  it("a dead worker's holder is dropped once its lease has passed", () => {
    let r = takeSlot(EMPTY_SLOTS, 'a', 'dead', 1, 0, 500, W).record;
    expect(takeSlot(r, 'b', 'w', 1, 499, 500, W).granted).toBe(false);
    const t = takeSlot(r, 'b', 'w', 1, 500, 500, W);
    expect(t.granted).toBe(true);
    expect(t.record.holders.map((h) => h.id)).toEqual(['b']);
    r = releaseSlot(t.record, 'b', 600);
    expect(r.holders).toEqual([]);
  });

  it('a renewal extends the lease, and puts back a holder that lost it (over the limit)', () => {
    let r = takeSlot(EMPTY_SLOTS, 'a', 'w1', 1, 0, 500, W).record;
    expect(renewSlot(r, 'a', 'w1', 300, 500, 0)).toMatchObject({ lost: false });
    r = renewSlot(r, 'a', 'w1', 300, 500, 0).record;
    expect(r.holders[0]!.exp).toBe(800);
    // Its lease passed and another took the slot: it is put back, and nothing new is admitted.
    r = takeSlot(r, 'b', 'w2', 1, 900, 500, W).record;
    const back = renewSlot(r, 'a', 'w1', 950, 500, 0);
    expect(back.lost).toBe(true);
    expect(back.record.holders.map((h) => h.id)).toEqual(['b', 'a']);
    expect(takeSlot(back.record, 'c', 'w3', 1, 960, 500, W).granted).toBe(false);
  });

  it('a task not granted queues as a waiter; a freed slot goes to the head, not to a newcomer', () => {
    let r = takeSlot(EMPTY_SLOTS, 'h#1', 'w', 1, 0, 1_000, W).record;
    for (const id of ['a#1', 'b#1']) {
      const t = takeSlot(r, id, 'w', 1, 10, 1_000, W);
      expect(t).toMatchObject({ granted: false, changed: true });
      r = t.record;
    }
    expect(r.waiters!.map((w) => [w.id, w.queuedAt])).toEqual([
      ['a#1', 10],
      ['b#1', 10],
    ]);
    // Asking again keeps the place and writes nothing (the waiter lease is fresh).
    const again = takeSlot(r, 'b#1', 'w', 1, 20, 1_000, W);
    expect(again).toMatchObject({ granted: false, position: 1, changed: false });
    expect(again.record).toEqual(r);
    r = releaseSlot(r, 'h#1', 30);
    // The slot is free, but a waiter is ahead: neither b nor a newcomer takes it.
    expect(takeSlot(r, 'b#1', 'w', 1, 40, 1_000, W)).toMatchObject({ granted: false, position: 1 });
    const c = takeSlot(r, 'c#1', 'w', 1, 40, 1_000, W);
    expect(c).toMatchObject({ granted: false, position: 2 });
    r = c.record;
    const a = takeSlot(r, 'a#1', 'w2', 1, 50, 1_000, W);
    expect(a.granted).toBe(true);
    expect(a.record.waiters!.map((w) => w.id)).toEqual(['b#1', 'c#1']);
    expect(a.record.holders.map((h) => h.id)).toEqual(['a#1']);
  });

  it('a later attempt of a waiting task keeps its place; a task that leaves frees it', () => {
    let r = takeSlot(EMPTY_SLOTS, 'h#1', 'w', 1, 0, 10_000, W).record;
    for (const id of ['a#1', 'b#1', 'c#1']) r = takeSlot(r, id, 'w', 1, 1, 10_000, W).record;
    // a's worker died while it waited in place: its redelivery is attempt 2, same place.
    const a2 = takeSlot(r, 'a#2', 'w2', 1, 2, 10_000, W);
    expect(a2).toMatchObject({ granted: false, position: 0, changed: true });
    expect(a2.record.waiters!.map((w) => w.id)).toEqual(['a#2', 'b#1', 'c#1']);
    r = leaveSlotQueue(a2.record, 'a#2', 3);
    expect(waiterPosition(r, 'c#1', 3)).toBe(1);
    r = releaseSlot(r, 'h#1', 4);
    expect(takeSlot(r, 'b#1', 'w', 1, 5, 10_000, W).granted).toBe(true);
  });

  it('a waiter whose lease passed stops blocking; it comes back at the place it first queued', () => {
    const w = { leaseMs: 1_000 };
    let r = takeSlot(EMPTY_SLOTS, 'h#1', 'w', 1, 0, 60_000, w).record;
    r = takeSlot(r, 'gone#1', 'w', 1, 100, 60_000, w).record; // its task vanishes
    r = takeSlot(r, 'b#1', 'w', 1, 200, 60_000, w).record;
    r = takeSlot(r, 'b#1', 'w', 1, 900, 60_000, w).record; // renewed (less than half left)
    expect(r.waiters!.find((x) => x.id === 'b#1')!.exp).toBe(1_900);
    r = releaseSlot(r, 'h#1', 1_000);
    // Until gone's lease passes, the free slot waits for it.
    expect(takeSlot(r, 'b#1', 'w', 1, 1_099, 60_000, w).granted).toBe(false);
    const b = takeSlot(r, 'b#1', 'w', 1, 1_100, 60_000, w);
    expect(b.granted).toBe(true);
    r = b.record;
    expect(r.waiters).toEqual([]);
    // x queues; y queued earlier (postponed, its lease passed on the way back): y goes first.
    r = takeSlot(r, 'x#1', 'w', 1, 2_000, 60_000, w).record;
    const y = takeSlot(r, 'y#1', 'w', 1, 2_010, 60_000, { ...w, queuedAt: 1_500 });
    expect(y).toMatchObject({ granted: false, position: 0 });
    expect(y.record.waiters!.map((v) => [v.id, v.queuedAt])).toEqual([
      ['y#1', 1_500],
      ['x#1', 2_000],
    ]);
  });

  type Op =
    | { kind: 'ask'; task: number }
    | { kind: 'done'; task: number }
    | { kind: 'leave'; task: number }
    | { kind: 'tick'; ms: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('ask' as const), task: fc.nat(7) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('done' as const), task: fc.nat(7) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('leave' as const), task: fc.nat(7) }) },
    { weight: 2, arbitrary: fc.record({ kind: fc.constant('tick' as const), ms: fc.nat(400) }) },
  );

  it('property: never more than limit live holders, FIFO among live waiters, idempotent asks, expiry', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 3 }),
        fc.array(op, { maxLength: 120 }),
        (limit, ops) => {
          const HOLD = 2_000;
          const WAIT = { leaseMs: 500 };
          let r: SlotRecord = EMPTY_SLOTS;
          let now = 0;
          let seq = 0;
          // The order in which tasks joined the queue (a task's latest join while it waits).
          const joined = new Map<string, number>();
          const attempt = new Map<number, number>();
          const idOf = (t: number) => `t${t}#${attempt.get(t) ?? 1}`;
          for (const o of ops) {
            if (o.kind === 'tick') now += o.ms;
            else if (o.kind === 'ask') {
              const id = idOf(o.task);
              const live = liveHolders(r, now);
              const waiters = liveWaiters(r, now);
              const holds = live.some((h) => h.id === id);
              const at = waiterPosition(r, id, now);
              const ahead = at >= 0 ? at : waiters.length;
              const t = takeSlot(r, id, 'w', limit, now, HOLD, WAIT);
              // Granted exactly when it holds, or fewer live waiters are ahead than free slots.
              expect(t.granted).toBe(holds || ahead < limit - live.length);
              if (!t.granted) expect(t.position).toBe(ahead);
              // Asking again at once: same answer, nothing more to write.
              const again = takeSlot(t.record, id, 'w', limit, now, HOLD, WAIT);
              expect(again.granted).toBe(t.granted);
              expect(again.record).toEqual(t.record);
              if (!t.granted) expect(again.changed).toBe(false);
              if (!t.granted && at < 0) joined.set(`t${o.task}`, seq++);
              r = t.record;
            } else if (o.kind === 'done') {
              const id = idOf(o.task);
              if (liveHolders(r, now).some((h) => h.id === id)) {
                r = releaseSlot(r, id, now);
                attempt.set(o.task, (attempt.get(o.task) ?? 1) + 1); // it may run again later
              }
            } else r = leaveSlotQueue(r, idOf(o.task), now);
            const live = liveHolders(r, now);
            const waiters = liveWaiters(r, now);
            expect(live.length).toBeLessThanOrEqual(limit);
            // Expired entries never count; the live waiters are in the order they joined.
            expect(waiters.every((w) => w.exp > now)).toBe(true);
            const order = waiters.map((w) => joined.get(w.id.split('#')[0]!)!);
            expect(order).toEqual([...order].sort((a, b) => a - b));
            // No one holds and waits.
            for (const w of waiters) expect(live.some((h) => h.id === w.id)).toBe(false);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});
