/**
 * Concurrency keys under faults, full size (the acceptance scenario): 200 keys x 20 workflows,
 * each waiting on a 50 ms timer and a 20 ms activity; two engine processes, one SIGKILLed twice
 * (shards move to the other engine and back); one worker process recording each run. With
 * `limit: 1` at most one run per key at any instant and runs in start order; with `limit: 3`
 * exactly three at most, admitted in start order; every workflow completes; nothing is left in
 * the keys bucket. `npm run soak:keys`; KEYS_N / KEYS_PER override the size.
 */
import { describe, expect, it } from 'vitest';
import { useServer } from '../harness/jetflow.js';
import { runKeysScenario } from './keys-scenario.js';

const env = useServer();
const KEYS = Number(process.env.KEYS_N ?? 200);
const PER = Number(process.env.KEYS_PER ?? 20);

describe('concurrency keys: engines SIGKILLed, shards moved', () => {
  for (const [type, limit] of [
    ['keyed', 1],
    ['keyed3', 3],
  ] as const) {
    it(`${KEYS} keys x ${PER} workflows, limit ${limit}`, { timeout: 600_000 }, async () => {
      const out = await runKeysScenario({
        url: env.server.url,
        nc: env.nc,
        type,
        keys: KEYS,
        perKey: PER,
        kills: 2,
        log: (l) => console.log(l),
      });
      console.log(`limit ${limit}:`, JSON.stringify({ ...out, outOfOrder: out.outOfOrder.length }));
      expect(out.notCompleted).toEqual([]);
      expect(out.completed).toBe(KEYS * PER);
      expect(out.outOfOrder).toEqual([]);
      // The activities never overlap beyond the limit; the slots held reach it exactly.
      expect(out.maxConcurrent).toBeLessThanOrEqual(limit);
      if (limit === 1) expect(out.maxConcurrent).toBe(1);
      expect(out.maxHeld).toBe(limit);
      expect({ holders: out.holders, waiters: out.waiters }).toEqual({ holders: 0, waiters: 0 });
    });
  }
});
