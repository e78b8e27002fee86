/**
 * The pure part of batches (issue 23): the fold is idempotent under repeats and reordering of
 * already-folded changes; only terminal statuses of the current generation count; the outcome
 * per policy; a batch never sealed never completes; an empty sealed one completes at once.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  counterFor,
  decideOutcome,
  fold,
  itemWorkflowId,
  parseCallback,
  parsePolicy,
} from '../../src/engine/batch.js';
import type { BatchItem, BatchMeta } from '../../src/contracts/batch.js';

const meta = (o: Partial<BatchMeta> = {}): BatchMeta => ({
  v: 1,
  id: 'b',
  type: 't',
  policy: 'complete-with-errors',
  sealed: true,
  next: 0,
  total: 0,
  pending: 0,
  duplicates: 0,
  rejected: 0,
  gen: 1,
  createdAt: 0,
  updatedAt: 0,
  ...o,
});
const item = (status: BatchItem['status'], gen = 1): BatchItem => ({
  key: 'k',
  wf: 'b=k',
  index: 0,
  gen,
  status,
  attempts: 1,
  at: 0,
});

describe('batch fold', () => {
  it('counts each change once whatever is delivered again (seq watermark)', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.constantFrom('succeeded', 'failed', 'canceled', 'running') as fc.Arbitrary<
            BatchItem['status']
          >,
          {
            maxLength: 50,
          },
        ),
        fc.array(fc.nat(), { maxLength: 30 }),
        (statuses, repeats) => {
          const changes = statuses.map((s, i) => [i + 1, item(s)] as const);
          const once = counterFor(1, undefined, 0);
          for (const [seq, it] of changes) fold(once, seq, it, 0);
          // Each pass delivers a prefix again, then the rest (a tracker restarted from an
          // older watermark, or a second tracker).
          const again = counterFor(1, undefined, 0);
          let upTo = 0;
          for (const r of repeats) {
            const end = changes.length ? (r % changes.length) + 1 : 0;
            for (const [seq, it] of changes.slice(0, end)) fold(again, seq, it, 0);
            upTo = Math.max(upTo, end);
          }
          for (const [seq, it] of changes) fold(again, seq, it, 0);
          expect([again.succeeded, again.failed, again.canceled]).toEqual([
            once.succeeded,
            once.failed,
            once.canceled,
          ]);
          expect(once.succeeded + once.failed + once.canceled).toBe(
            statuses.filter((s) => s !== 'running').length,
          );
        },
      ),
    );
  });

  it('ignores other generations; a rollover keeps succeeded and canceled, resets failed', () => {
    const c = counterFor(1, undefined, 0);
    fold(c, 1, item('succeeded'), 0);
    fold(c, 2, item('failed'), 0);
    fold(c, 3, item('failed', 2), 0); // a later generation's change, not this one's
    expect([c.succeeded, c.failed]).toEqual([1, 1]);
    const r = counterFor(2, c, 0);
    expect([r.gen, r.succeeded, r.failed, r.lastSeq]).toEqual([2, 1, 0, 3]);
    fold(r, 4, item('succeeded', 2), 0);
    expect(r.succeeded).toBe(2);
  });
});

describe('batch outcome', () => {
  const counted = (s: number, f: number, x = 0) => ({
    ...counterFor(1, undefined, 0),
    succeeded: s,
    failed: f,
    canceled: x,
  });
  it('never completes unsealed; an empty sealed batch completes at once', () => {
    expect(decideOutcome(meta({ sealed: false, total: 2 }), counted(2, 0))).toBeUndefined();
    expect(decideOutcome(meta({ total: 0 }), undefined)).toBe('succeeded');
  });
  it('complete-with-errors waits for every item', () => {
    expect(decideOutcome(meta({ total: 3 }), counted(1, 1))).toBeUndefined();
    expect(decideOutcome(meta({ total: 3 }), counted(2, 1))).toBe('completedWithErrors');
    expect(decideOutcome(meta({ total: 3 }), counted(3, 0))).toBe('succeeded');
  });
  it('all-must-succeed fails at the first failure, even before the seal', () => {
    const m = meta({ total: 3, sealed: false, policy: 'all-must-succeed' });
    expect(decideOutcome(m, counted(1, 1))).toBe('failed');
    expect(decideOutcome(m, counted(1, 0, 1))).toBe('failed');
  });
  it('failIfMoreThan compares with the sealed total', () => {
    const m = meta({ total: 100, policy: { failIfMoreThan: 0.01 } });
    expect(decideOutcome(m, counted(10, 1))).toBeUndefined();
    expect(decideOutcome(m, counted(10, 2))).toBe('failed');
    expect(decideOutcome(m, counted(99, 1))).toBe('completedWithErrors');
  });
  it('waits while a chunk is in flight or a retry restarts items', () => {
    expect(
      decideOutcome(meta({ total: 1, inflight: { keys: ['k'] } }), counted(1, 0)),
    ).toBeUndefined();
    expect(decideOutcome(meta({ total: 1, retrying: true }), counted(1, 0))).toBeUndefined();
  });
});

describe('batch requests', () => {
  it('validates policies, callbacks and ids', () => {
    expect(parsePolicy(undefined)).toBe('complete-with-errors');
    expect(parsePolicy({ failIfMoreThan: 0.5 })).toEqual({ failIfMoreThan: 0.5 });
    expect(() => parsePolicy({ failIfMoreThan: 2 })).toThrow(/policy/);
    expect(() => parsePolicy('sometimes')).toThrow(/policy/);
    expect(parseCallback({ signal: { type: 'a', id: 'b' } })).toEqual({
      signal: { type: 'a', id: 'b' },
    });
    expect(() => parseCallback({ signal: { type: 'a' } })).toThrow(/onComplete/);
    expect(itemWorkflowId('b', 'k', 1)).toBe('b=k');
    expect(itemWorkflowId('b', 'k', 3)).toBe('b=k=3');
  });
});
