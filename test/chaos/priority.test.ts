/**
 * Priority at the sizes (`npm run soak:priority`; excluded from test:fast and
 * test:chaos): 10,000 tasks at level 5, then 100 at level 1, every level-1 task starts before 90%
 * of the remaining level-5 ones; with maxWaitMs 500, level-5 tasks under a 10,000-task level-1
 * flood start after about maxWaitMs, not after the flood (their waits are printed; the issue's
 * bound, maxWaitMs plus one task time, is a timing figure checked by reading them, not asserted
 * on a shared machine); tenant A enqueues 10,000 tasks, then tenant B 10: B's are served round robin
 * with A's (the task slots each of B's waited from its enqueue are printed). PRIO_N overrides 10,000.
 */
import { describe, expect, it } from 'vitest';
import { useServer } from '../harness/jetflow.js';
import { runAging, runFair, runStrict } from './priority-scenario.js';

const env = useServer();
const N = Number(process.env.PRIO_N ?? 10_000);

describe('activity priority, full size', () => {
  it(`${N} tasks at level 5, then 100 at level 1`, { timeout: 900_000 }, async () => {
    const out = await runStrict(env.server.url, {
      low: N,
      high: 100,
      workMs: 20,
      concurrency: 10,
    });
    console.log('priority strict:', JSON.stringify(out));
    expect(out.remaining).toBeGreaterThan(N / 2);
    expect(out.overtaking).toBeLessThan(out.remaining * 0.1);
    expect(out.highAfterAllLow).toBe(0);
  });

  it(`aging: maxWaitMs 500 under a ${N}-task level-1 flood`, { timeout: 900_000 }, async () => {
    const out = await runAging(env.server.url, {
      flood: N,
      late: 20,
      everyMs: 250,
      workMs: 20,
      concurrency: 10,
      maxWaitMs: 500,
    });
    const over = out.waits.filter((w) => w > out.maxWaitMs + out.workMs);
    console.log(
      'priority aging:',
      JSON.stringify({ ...out, max: Math.max(...out.waits), overBound: over.length }),
    );
    for (const n of out.highAfter) expect(n).toBeGreaterThan(100);
  });

  it(`fairness: tenant A enqueues ${N}, then tenant B 10`, { timeout: 900_000 }, async () => {
    const out = await runFair(env.server.url, {
      big: N,
      small: 10,
      workMs: 20,
      concurrency: 10,
    });
    console.log('fairness:', JSON.stringify(out));
    expect(out.bigWaiting).toBeGreaterThan(N / 2);
    for (const n of out.between) expect(n).toBeLessThanOrEqual(2);
  });
});
