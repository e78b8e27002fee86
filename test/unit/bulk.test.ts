/** The pure parts of bulk jobs: the cursor moves only over finished items; the rate limit holds. */
import { describe, expect, it } from 'vitest';
import { BulkCursor, bulkRequestId, RateLimiter } from '../../src/engine/bulk.js';

describe('BulkCursor', () => {
  it('counts only the contiguous finished prefix, whatever order items finish in', () => {
    const c = new BulkCursor({ matched: 5, processed: 0, done: 0, failed: 0, skipped: 0 }, []);
    c.finish(2, 't', 'c', { kind: 'done' });
    c.finish(1, 't', 'b', { kind: 'failed', code: 'not_parked', message: 'm' });
    expect(c.cursor).toBe(0);
    expect(c.takeFailures()).toEqual([]);
    c.finish(0, 't', 'a', { kind: 'skipped' });
    expect(c.counters).toMatchObject({ processed: 3, done: 1, failed: 1, skipped: 1 });
    expect(c.takeFailures()).toEqual([{ type: 't', id: 'b', code: 'not_parked', message: 'm' }]);
    c.finish(1, 't', 'b', { kind: 'done' }); // below the cursor: already counted
    expect(c.counters.done).toBe(1);
  });
});

describe('RateLimiter', () => {
  it('grants at most ratePerSec a second after the burst', () => {
    let now = 0;
    const r = new RateLimiter(10, () => now);
    let granted = 0;
    for (; now <= 10_000; now += 1) if (r.take() === 0) granted++;
    expect(granted).toBeGreaterThanOrEqual(100);
    expect(granted).toBeLessThanOrEqual(111);
  });
});

it('request ids are deterministic per job, workflow and actor', () => {
  expect(bulkRequestId('J', 't', 'i')).toBe('bulk-J-t-i');
  expect(bulkRequestId('J', 't', 'i', 'bank')).toBe('bulk-J-t-i-bank');
});
