/**
 * The concurrency-key fault scenario at a size for the fast suite (the full 200 x 20 is
 * `npm run soak:keys`, test/chaos/keys.test.ts): 10 keys x 30 workflows, two engine processes,
 * one SIGKILLed twice, one worker process. See test/chaos/keys-scenario.ts.
 */
import { describe, expect, it } from 'vitest';
import { useServer } from '../harness/jetflow.js';
import { runKeysScenario } from '../chaos/keys-scenario.js';

const env = useServer();

describe('concurrency keys under SIGKILL (small)', () => {
  for (const [type, limit] of [
    ['keyed', 1],
    ['keyed3', 3],
  ] as const) {
    it(`10 keys x 30 workflows, limit ${limit}`, { timeout: 180_000 }, async () => {
      const out = await runKeysScenario({
        url: env.server.url,
        nc: env.nc,
        type,
        keys: 10,
        perKey: 30,
        kills: 2,
        killAfterMs: [200, 400],
        waitMs: 120_000,
        log: (l) => console.log(l),
      });
      // Both kills hit while workflows were still running.
      expect(out.killedAt.length).toBe(2);
      expect(out.killedAt[1]!).toBeLessThan(out.lastRunEndMs);
      expect(out.notCompleted).toEqual([]);
      expect(out.completed).toBe(300);
      expect(out.outOfOrder).toEqual([]);
      // The activities never overlap beyond the limit; the slots held reach it exactly.
      expect(out.maxConcurrent).toBeLessThanOrEqual(limit);
      if (limit === 1) expect(out.maxConcurrent).toBe(1);
      expect(out.maxHeld).toBe(limit);
      expect({ holders: out.holders, waiters: out.waiters }).toEqual({ holders: 0, waiters: 0 });
    });
  }
});
