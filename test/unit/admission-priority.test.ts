/**
 * Priority, aging and fairness among the waiters of a concurrency key (src/engine/admission.ts):
 * `waiterOrder` (what positions mean) is exactly the order in which releases admit waiters, one
 * at a time, each release ordering what is left with the fairness turns the last one stored; it
 * is FIFO without priorities and fairness keys; strict between levels until a waiter has waited
 * `maxWaitMs`; round robin (weighted) across fairness keys within a level, FIFO within one.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  acquire,
  positionOf,
  promote,
  release,
  waiterOrder,
  type AcquireRequest,
} from '../../src/engine/admission.js';
import type { KeyRecord } from '../../src/contracts/wire.js';

interface Start {
  priority?: number;
  fairness?: string;
  weight?: number;
  /** Arrival time offset (ms) from the first start. */
  at: number;
  promote?: boolean;
}

const MAX_WAIT = 1_000;

/** One holder `h`, then every start deferred behind it (limit 1), in order. */
function queued(starts: Start[], maxWaitMs = MAX_WAIT): KeyRecord {
  const base = { type: 't', key: 'k', limit: 1, onLimit: 'queue' as const, maxWaitMs };
  let rec = acquire(undefined, { ...base, id: 'h', startSeq: 0, now: 0 }).next!;
  starts.forEach((s, i) => {
    const req: AcquireRequest = {
      ...base,
      id: `w${i}`,
      startSeq: i + 1,
      now: s.at,
      ...(s.priority !== undefined ? { priority: s.priority } : {}),
      ...(s.fairness !== undefined ? { fairness: { key: s.fairness, weight: s.weight ?? 1 } } : {}),
    };
    const c = acquire(rec, req);
    expect(c.result.kind).toBe('deferred');
    rec = c.next!;
  });
  starts.forEach((s, i) => {
    if (s.promote) rec = promote(rec, `w${i}`, 0).next ?? rec;
  });
  return rec;
}

/** Release the holder again and again at `now`: the order in which waiters are admitted. */
function admissions(rec: KeyRecord, now: number): string[] {
  const out: string[] = [];
  let holder = rec.holders[0]!.id;
  let cur: KeyRecord | undefined = rec;
  while (cur) {
    const c = release(cur, holder, now);
    cur = c.empty ? undefined : c.next;
    if (c.result.admits.length === 0) break;
    expect(c.result.admits).toHaveLength(1);
    holder = c.result.admits[0]!.id;
    out.push(holder);
  }
  return out;
}

const start: fc.Arbitrary<Start> = fc.record(
  {
    priority: fc.integer({ min: 1, max: 5 }),
    fairness: fc.constantFrom('a', 'b', 'c', 'tenant-d'),
    weight: fc.integer({ min: 1, max: 3 }),
    at: fc.integer({ min: 0, max: 2_000 }),
    promote: fc.boolean(),
  },
  { requiredKeys: ['at'] },
);

describe('priority and fairness among key waiters', () => {
  it('positions are the admission order: waiterOrder = what releases admit, at any time', () => {
    fc.assert(
      fc.property(
        fc.array(start, { maxLength: 40 }),
        fc.integer({ min: 0, max: 4_000 }),
        (starts, now) => {
          const rec = queued(starts);
          const order = waiterOrder(rec, now).map((w) => w.id);
          expect(order).toEqual(admissions(rec, now));
          expect([...order].sort()).toEqual(rec.waiters.map((w) => w.id).sort());
          order.forEach((id, i) => expect(positionOf(rec, id, now)).toBe(i + 1));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('without priorities or fairness keys, waiters are admitted FIFO (promoted first)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.integer({ min: 0, max: 5_000 }), promote: fc.boolean() }), {
          maxLength: 30,
        }),
        (starts) => {
          const rec = queued(starts);
          const promoted = starts.flatMap((s, i) => (s.promote ? [`w${i}`] : [])).reverse();
          const rest = starts.flatMap((s, i) => (s.promote ? [] : [`w${i}`]));
          expect(admissions(rec, 10_000)).toEqual([...promoted, ...rest]);
        },
      ),
    );
  });

  it('levels are strict until a waiter has waited maxWaitMs behind a higher level', () => {
    // Ten level-5 starts, then three level-1 starts, all within maxWaitMs of now.
    const starts: Start[] = [
      ...Array.from({ length: 10 }, (_, i) => ({ priority: 5, at: 500 + i })),
      ...Array.from({ length: 3 }, (_, i) => ({ priority: 1, at: 600 + i })),
    ];
    const rec = queued(starts);
    expect(admissions(rec, 700)).toEqual([
      'w10',
      'w11',
      'w12',
      ...Array.from({ length: 10 }, (_, i) => `w${i}`),
    ]);
    // At 1,502 the first three level-5 waiters have waited 1 s: they go before level 1.
    expect(admissions(rec, 1_502)).toEqual([
      'w0',
      'w1',
      'w2',
      'w10',
      'w11',
      'w12',
      ...Array.from({ length: 7 }, (_, i) => `w${i + 3}`),
    ]);
    // Unprioritized starts are level 3: after level 1, before level 5.
    const mixed = queued([{ priority: 5, at: 0 }, { at: 1 }, { priority: 1, at: 2 }]);
    expect(admissions(mixed, 10)).toEqual(['w2', 'w1', 'w0']);
  });

  it('a level never starves: a waiter is admitted by the first release after maxWaitMs once older aged ones are', () => {
    fc.assert(
      fc.property(fc.array(start, { minLength: 1, maxLength: 40 }), (starts) => {
        const plain = starts.map((s) => ({ ...s, promote: false }));
        const rec = queued(plain);
        const now = 2_000 + MAX_WAIT; // every waiter has waited maxWaitMs
        const order = admissions(rec, now);
        // All aged: each level's waiters keep arrival order, and a waiter below the top level
        // is never overtaken by a later arrival.
        const idx = (id: string) => Number(id.slice(1));
        const top = Math.min(...plain.map((s) => s.priority ?? 3));
        const below = order.filter((id) => (plain[idx(id)]!.priority ?? 3) > top);
        expect(below).toEqual([...below].sort((a, b) => idx(a) - idx(b)));
      }),
    );
  });

  it('fairness: a tenant with 3 waiters behind another with 100 is admitted within 6 slots', () => {
    const starts: Start[] = [
      ...Array.from({ length: 100 }, (_, i) => ({ fairness: 'A', at: i })),
      ...Array.from({ length: 3 }, (_, i) => ({ fairness: 'B', at: 100 + i })),
    ];
    const order = admissions(queued(starts, 60_000), 200);
    expect(order.slice(0, 6).sort()).toEqual(['w0', 'w1', 'w100', 'w101', 'w102', 'w2']);
    // FIFO within one fairness key.
    const a = order.filter((id) => Number(id.slice(1)) < 100);
    expect(a).toEqual(Array.from({ length: 100 }, (_, i) => `w${i}`));
  });

  it('fairness weights: a key of weight 3 is admitted three times per turn', () => {
    const starts: Start[] = [
      ...Array.from({ length: 9 }, (_, i) => ({ fairness: 'big', weight: 3, at: i })),
      ...Array.from({ length: 3 }, (_, i) => ({ fairness: 'small', at: 10 + i })),
    ];
    const order = admissions(queued(starts, 60_000), 20).map((id) =>
      Number(id.slice(1)) < 9 ? 'big' : 'small',
    );
    expect(order).toEqual([
      ...['big', 'big', 'big', 'small'],
      ...['big', 'big', 'big', 'small'],
      ...['big', 'big', 'big', 'small'],
    ]);
  });

  it('a deferred start reports its position in the admission order', () => {
    const rec = queued([
      { priority: 5, at: 0 },
      { priority: 5, at: 1 },
    ]);
    const c = acquire(rec, {
      type: 't',
      key: 'k',
      id: 'urgent',
      startSeq: 9,
      limit: 1,
      onLimit: 'queue',
      now: 2,
      priority: 1,
      maxWaitMs: MAX_WAIT,
    });
    expect(c.result).toMatchObject({ kind: 'deferred', position: 1 });
    // A repeat (redelivery after a crash) reports the same position and changes nothing.
    const again = acquire(c.next, {
      type: 't',
      key: 'k',
      id: 'urgent',
      startSeq: 9,
      limit: 1,
      onLimit: 'queue',
      now: 3,
      priority: 1,
      maxWaitMs: MAX_WAIT,
    });
    expect(again).toMatchObject({ next: undefined, result: { kind: 'deferred', position: 1 } });
  });
});
