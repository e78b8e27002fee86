/**
 * Property tests of the pure admission decisions (src/engine/admission.ts): random sequences of
 * starts, ends (releases) and promotions over one key, each applied once or twice (a repeat after
 * a crash). Invariants: at most `limit` holders; an id is a holder or a waiter, at most once; with
 * `queue` and no promotion, admission order = start order; every decision is idempotent; a
 * repeated release returns the admits of its first run.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { acquire, promote, release, type Admit, type OnLimit } from '../../src/engine/admission.js';
import type { KeyRecord } from '../../src/contracts/wire.js';

type Op = { kind: 'start' } | { kind: 'end'; pick: number } | { kind: 'promote'; pick: number };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.constant({ kind: 'start' as const }),
  fc.record({ kind: fc.constant('end' as const), pick: fc.nat() }),
  fc.record({ kind: fc.constant('promote' as const), pick: fc.nat() }),
);

function check(rec: KeyRecord | undefined, limit: number): void {
  if (!rec) return;
  expect(rec.holders.length).toBeLessThanOrEqual(limit);
  const ids = [...rec.holders, ...rec.waiters].map((x) => x.id);
  expect(new Set(ids).size).toBe(ids.length);
  // A free slot is never left while someone waits.
  if (rec.waiters.length > 0) expect(rec.holders.length).toBe(limit);
}

function run(ops: Op[], limit: number, onLimit: OnLimit, twice: boolean, promotions: boolean) {
  let rec: KeyRecord | undefined;
  let n = 0;
  const admitted: string[] = [];
  const started: string[] = [];
  const apply = <T>(
    f: (r: KeyRecord | undefined) => { next: KeyRecord | undefined; empty?: boolean; result: T },
  ) => {
    const c = f(rec);
    if (c.next) rec = c.empty ? undefined : c.next;
    if (twice) {
      // The same decision repeated (a crash after the write): changes nothing.
      const again = f(rec);
      expect(again.next).toBeUndefined();
    }
    return c.result;
  };
  for (const o of ops) {
    if (o.kind === 'start') {
      const id = `w${n++}`;
      started.push(id);
      const r = apply((x) =>
        acquire(x, { type: 't', key: 'k', id, startSeq: n, limit, onLimit, now: n }),
      );
      if (r.kind === 'admitted') admitted.push(id);
    } else if (rec && (o.kind === 'end' || promotions)) {
      const all = o.kind === 'end' ? [...rec.holders, ...rec.waiters] : rec.waiters;
      if (all.length === 0) continue;
      const id = all[o.pick % all.length]!.id;
      if (o.kind === 'end') {
        const first = release(rec, id, n);
        const r: { admits: Admit[] } = apply((x) => release(x, id, n));
        expect(r.admits).toEqual(first.result.admits);
        if (twice) expect(release(rec, id, n).result.admits).toEqual(r.admits);
        admitted.push(...r.admits.map((a) => a.id));
      } else {
        apply((x) => promote(x, id, n));
      }
    }
    check(rec, limit);
  }
  return { admitted, started };
}

describe('admission (pure)', () => {
  it('property: at most limit holders, ids unique, no idle slot while waiting, idempotent', () => {
    fc.assert(
      fc.property(
        fc.array(op, { maxLength: 60 }),
        fc.integer({ min: 1, max: 4 }),
        fc.constantFrom<OnLimit>('queue', 'cancel-newest', 'cancel-in-progress', 'replace-queued'),
        fc.boolean(),
        (ops, limit, onLimit, twice) => {
          run(ops, limit, onLimit, twice, true);
        },
      ),
      { numRuns: 300 },
    );
  });

  it('property: queue without promotion admits in start order (FIFO)', () => {
    fc.assert(
      fc.property(
        fc.array(op, { maxLength: 60 }),
        fc.integer({ min: 1, max: 4 }),
        fc.boolean(),
        (ops, limit, twice) => {
          const { admitted, started } = run(ops, limit, 'queue', twice, false);
          // In start order (a waiter that left the queue is skipped, never overtaken).
          const idx = admitted.map((id) => started.indexOf(id));
          expect(idx).toEqual([...idx].sort((x, y) => x - y));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('cancel-newest refuses; cancel-in-progress marks the oldest holder; replace-queued keeps one waiter', () => {
    const req = (id: string, onLimit: OnLimit) => ({
      type: 't',
      key: 'k',
      id,
      startSeq: 1,
      limit: 1,
      onLimit,
      now: 1,
    });
    const a = acquire(undefined, req('a', 'cancel-newest')).next;
    expect(acquire(a, req('b', 'cancel-newest')).result).toEqual({
      kind: 'rejected',
      holders: ['a'],
    });
    const p = acquire(a, req('b', 'cancel-in-progress'));
    expect(p.result).toMatchObject({ kind: 'deferred', position: 1, cancel: [{ id: 'a' }] });
    expect(p.next!.holders[0]!.canceling).toBe('b');
    const r1 = acquire(a, req('b', 'replace-queued')).next;
    const r2 = acquire(r1, req('c', 'replace-queued'));
    expect(r2.result).toMatchObject({ kind: 'deferred', position: 1, cancel: [{ id: 'b' }] });
    expect(r2.next!.waiters.map((w) => w.id)).toEqual(['c']);
  });
});
