/**
 * Priority levels of activity tasks, small sizes (the issue's sizes: test/chaos/priority.test.ts,
 * `npm run soak:priority`): level-1 tasks enqueued behind a level-5 backlog start before almost
 * all of it; with a short `maxWaitMs`, level-5 tasks under a level-1 flood start long before the
 * flood drains (aging). Real nats-server, engine and worker on their own connections.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runAging, runFair, runStrict, runWeights } from '../chaos/priority-scenario.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import { createMetricsRegistry, createWorkerMetrics } from '../../src/metrics/index.js';
import { fair, prioritized, type PrioInput } from '../fixtures/prio-workflows.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

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

  it(
    'jetflow why names the priority stage of a task behind higher levels; an aged task is served first and counted',
    { timeout: 30_000 },
    async () => {
      const prefix = uniquePrefix();
      open.push(await startEngine(env.server.url, prefix, { workflows: [prioritized] }));
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const order: string[] = [];
      const registry = createMetricsRegistry();
      open.push(
        await createWorker({
          connection: env.nc,
          prefix,
          metrics: createWorkerMetrics(registry),
          queues: ['prio'],
          queueSettings: { prio: { maxWaitMs: 1_000 } },
          concurrency: 1,
          activities: {
            job: async (input: PrioInput) => {
              order.push(`${input.level}-${input.i}`);
              await gate;
              return null;
            },
          },
        }),
      );
      const client = new Client(env.nc, { prefix });
      const start = (level: number, i: number) =>
        client.start('prioritized', `${level}-${i}`, { level, i, enq: Date.now() });
      await start(1, 0);
      while (order.length === 0) await new Promise((r) => setTimeout(r, 20));
      await start(1, 1);
      await start(1, 2);
      await start(5, 0);
      let why = await client.why('prioritized', '5-0');
      for (let i = 0; i < 50 && why.stage !== 'priority'; i++) {
        await new Promise((r) => setTimeout(r, 50));
        why = await client.why('prioritized', '5-0');
      }
      expect(why.stage).toBe('priority');
      expect(why.summary).toMatch(
        /waits at priority 5 behind 2 undelivered task\(s\) of levels 1-4/,
      );
      expect(why.summary).toContain('maxWaitMs (1000 ms)');
      expect((await client.why('prioritized', '1-1')).stage).toBe('dispatch');
      // Past maxWaitMs the level-5 task goes first when the slot frees, before the level-1 ones.
      await new Promise((r) => setTimeout(r, 1_200));
      release();
      for (const id of ['1-0', '1-1', '1-2', '5-0'])
        await client.result('prioritized', id, { timeoutMs: 10_000 });
      expect(order).toEqual(['1-0', '5-0', '1-1', '1-2']);
      expect(await registry.metrics()).toMatch(
        /jetflow_admission_total\{stage="priority",outcome="admitted"\} 1\b/,
      );
    },
  );

  it(
    "fairness: tenant A enqueues 1,000 tasks, then tenant B 10: B's tasks are served round robin with A's, not after A's backlog",
    { timeout: 120_000 },
    async () => {
      const out = await runFair(env.server.url, {
        big: 1_000,
        small: 10,
        workMs: 20,
        concurrency: 10,
      });
      console.log('fairness:', JSON.stringify(out));
      expect(out.bigWaiting).toBeGreaterThan(500);
      // Round robin: one task of A between two of B's (two when one fill's tasks start out of
      // order). The task slots each of B's waited from its staging are printed (README: measured).
      expect(out.between.length).toBeGreaterThan(0);
      for (const n of out.between) expect(n).toBeLessThanOrEqual(2);
    },
  );

  it('jetflow why names the fairness turn of a staged task', { timeout: 30_000 }, async () => {
    const prefix = uniquePrefix();
    open.push(await startEngine(env.server.url, prefix, { workflows: [fair] }));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let started = 0;
    open.push(
      await createWorker({
        connection: env.nc,
        prefix,
        queues: ['prio'],
        concurrency: 1,
        activities: {
          job: async () => {
            started++;
            await gate;
            return null;
          },
        },
      }),
    );
    const client = new Client(env.nc, { prefix });
    for (let i = 0; i < 6; i++)
      await client.start('fair', `A-${i}`, { level: 3, i, enq: Date.now(), tenant: 'A' });
    // Until the first task runs and A-5's is staged (the engine has issued it) while others
    // were moved: a move publishes the task on its level, then deletes it from its staging
    // subject, so for a moment a started task is still counted as staged. On a loaded machine
    // the six starts' steps can take a while; the last answer is shown if it never comes.
    const turnOf =
      /waits for its fairness key's turn at priority 3: key "A" has [1-5] staged task\(s\), 1 key\(s\) take turns/;
    let why = await client.why('fair', 'A-5');
    try {
      const end = Date.now() + 15_000;
      while ((started === 0 || !turnOf.test(why.summary)) && Date.now() < end) {
        await new Promise((r) => setTimeout(r, 50));
        why = await client.why('fair', 'A-5');
      }
      expect(why.stage, JSON.stringify(why)).toBe('priority');
      expect(why.summary).toMatch(turnOf);
    } finally {
      release();
    }
    for (let i = 0; i < 6; i++) await client.result('fair', `A-${i}`, { timeoutMs: 10_000 });
  });

  it(
    'fairness weights: a key of weight 3 gets three tasks per turn',
    { timeout: 60_000 },
    async () => {
      const order = await runWeights(env.server.url, 30);
      console.log('weights:', order);
      // From the second turn of X on (the first turns may include the 2 tasks the mover keeps
      // on the consumer) until W runs out: three of W, then one of X.
      const second = order.indexOf('X', order.indexOf('X') + 1);
      const seg = order.slice(second + 1, order.lastIndexOf('W') + 1);
      expect(seg.length).toBeGreaterThan(20);
      expect(seg).toMatch(/^(WWWX)*W{1,3}$/);
    },
  );
});
