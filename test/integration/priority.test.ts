/**
 * Priority levels of activity tasks, small sizes (the sizes: test/chaos/priority.test.ts,
 * `npm run soak:priority`): level-1 tasks enqueued behind a level-5 backlog start before almost
 * all of it; with a short `maxWaitMs`, level-5 tasks under a level-1 flood start long before the
 * flood drains (aging). Real nats-server, engine and worker on their own connections.
 */
import { describe, expect, it } from 'vitest';
import { useServer } from '../harness/jetflow.js';
import { runAging, runStrict } from '../chaos/priority-scenario.js';

const env = useServer();

describe('activity priority', () => {
  it(
    '1,000 tasks at level 5, then 100 at level 1: every level-1 task starts before 90% of the remaining level-5 ones',
    { timeout: 120_000 },
    async () => {
      const out = await runStrict(env.server.url, {
        low: 1_000,
        high: 100,
        workMs: 20,
        concurrency: 10,
      });
      console.log('priority strict:', JSON.stringify(out));
      expect(out.remaining).toBeGreaterThan(500);
      expect(out.overtaking).toBeLessThan(out.remaining * 0.1);
      expect(out.highAfterAllLow).toBe(0);
    },
  );

  it(
    'aging: level-5 tasks under a level-1 flood are served once they waited maxWaitMs, not after the flood',
    { timeout: 120_000 },
    async () => {
      const out = await runAging(env.server.url, {
        flood: 600,
        late: 5,
        everyMs: 100,
        workMs: 20,
        concurrency: 4,
        maxWaitMs: 500,
      });
      console.log('priority aging:', JSON.stringify(out));
      // Each late level-5 task started while level-1 tasks still waited (hundreds after it).
      for (const n of out.highAfter) expect(n).toBeGreaterThan(100);
    },
  );
});
