/** 10,000 durable timers with random delays of 1-10 s each fire exactly once; lateness reported. */
import { describe, expect, it } from 'vitest';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import type { Notification } from '../../src/contracts/wire.js';

const TIMERS = 10_000;

const env = useServer();

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

describe('many timers', () => {
  it(`${TIMERS} timers (1-10 s) fire exactly once`, async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { maxAckPendingPerShard: 5_000 });
    const client = new Client(env.nc, { prefix, timeoutMs: 30_000 });
    const startedAt = new Map<string, number>();
    const fired = new Map<string, number[]>();
    const sub = env.nc.subscribe(`${prefix}.events.sleeper.*`, {
      callback: (_e, m) => {
        const n = m.json<Notification>();
        if (n.type === 'started') startedAt.set(n.id, Date.parse(n.at));
        if (n.type === 'completed') fired.set(n.id, [...(fired.get(n.id) ?? []), Date.parse(n.at)]);
      },
    });
    try {
      const delays = Array.from({ length: TIMERS }, () => 1000 + Math.floor(Math.random() * 9000));
      let next = 0;
      await Promise.all(
        Array.from({ length: 200 }, async () => {
          while (next < TIMERS) {
            const i = next++;
            await client.start('sleeper', `z${i}`, { ms: delays[i] });
          }
        }),
      );
      const deadline = Date.now() + 60_000;
      while (fired.size < TIMERS && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 250));
      await new Promise((r) => setTimeout(r, 1000)); // any duplicate would show by now
      expect(fired.size).toBe(TIMERS);
      const twice = [...fired.values()].filter((v) => v.length !== 1);
      expect(twice).toHaveLength(0);
      const lateness = delays
        .map((d, i) => fired.get(`z${i}`)![0]! - (startedAt.get(`z${i}`)! + d))
        .sort((a, b) => a - b);
      expect(lateness[0]).toBeGreaterThanOrEqual(0); // never early
      const report = {
        timers: TIMERS,
        p50: percentile(lateness, 50),
        p99: percentile(lateness, 99),
        max: lateness.at(-1),
      };
      console.log('timer lateness (ms)', JSON.stringify(report));
      // Every workflow took exactly one step: the timer.
      const sample = await client.query('sleeper', 'z0');
      expect(sample).toMatchObject({ status: 'completed', value: 'woke', step: 1 });
    } finally {
      sub.unsubscribe();
      await engine.close();
    }
  }, 180_000);
});
