/**
 * Migration in flight, full size (the acceptance scenario): 10,000 ledger workflows across three
 * states, v1 → v2 with a state rename while signals keep arriving; the dry run changes no KV
 * revision; apply moves each workflow exactly once (one migrate step of the job in its journal),
 * loses and doubles no signal, across a SIGKILL of the migrate process (resumed with `--resume`)
 * and of an engine; `--revert` puts v1 back. `npm run soak:migrate`; MIGRATE_N, MIGRATE_RATE and
 * MIGRATE_SIGNALS override the size, the jobs' rate and the signals per second.
 */
import { describe, expect, it } from 'vitest';
import { useServer } from '../harness/jetflow.js';
import { runMigrateScenario } from './migrate-scenario.js';

const env = useServer();
const N = Number(process.env.MIGRATE_N ?? 10_000);
const RATE = Number(process.env.MIGRATE_RATE ?? 1_000);
const SIGNALS = Number(process.env.MIGRATE_SIGNALS ?? 200);

describe('migrate in flight: engine and runner SIGKILLed', () => {
  it(`${N} workflows v1 → v2 → v1 with signals arriving`, { timeout: 1_200_000 }, async () => {
    const out = await runMigrateScenario({
      url: env.server.url,
      nc: env.nc,
      workflows: N,
      signalsPerSec: SIGNALS,
      rate: RATE,
      log: (l) => console.log(l),
    });
    const short = (c: typeof out.afterApply) => ({
      ...c,
      wrongVersion: c.wrongVersion.length,
      wrongState: c.wrongState.length,
      lostOrDoubled: c.lostOrDoubled.length,
      notOnce: c.notOnce.length,
    });
    console.log(
      'migrate soak:',
      JSON.stringify({
        ...out,
        afterApply: short(out.afterApply),
        afterRevert: short(out.afterRevert),
      }),
    );
    expect(out.dryRunChanged).toBe(0);
    expect(out.apply).toMatchObject({ done: N, failed: 0, skipped: 0 });
    expect(out.revert).toMatchObject({ done: N, failed: 0, skipped: 0 });
    for (const c of [out.afterApply, out.afterRevert]) {
      expect(c.wrongVersion).toEqual([]);
      expect(c.wrongState).toEqual([]);
      expect(c.lostOrDoubled).toEqual([]);
      expect(c.notOnce).toEqual([]);
    }
    expect(out.notExactlyRestored).toBe(0);
    expect(out.signals.duringApply).toBeGreaterThan(0);
  });
});
