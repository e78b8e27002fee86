/**
 * `jetflow migrate --apply` / `--revert`, small: 150 workflows in flight across three states,
 * v1 → v2 with a state rename while signals arrive; the dry run changes no KV revision; apply
 * moves each workflow once (its journal has one migrate step of the job) and loses or doubles no
 * signal, across an engine SIGKILL and a SIGKILL of the migrate process (resumed with
 * `--resume`); `--revert` puts v1 back. The 10,000-workflow run is `npm run soak:migrate`.
 */
import { describe, expect, it } from 'vitest';
import { useServer } from '../harness/jetflow.js';
import { runMigrateScenario } from '../chaos/migrate-scenario.js';

const env = useServer();

describe('migrate in flight', () => {
  it(
    '150 workflows: dry run, apply (engine and runner killed), revert',
    { timeout: 180_000 },
    async () => {
      const n = 150;
      // The scenario's log, shown with a failed check (which phase, what the record held).
      const lines: string[] = [];
      const out = await runMigrateScenario({
        url: env.server.url,
        nc: env.nc,
        workflows: n,
        signalsPerSec: 100,
        rate: 30,
        log: (m: string) => lines.push(m),
      });
      const why = lines.join('\n');
      expect(out.dryRunChanged).toBe(0);
      expect(out.dryRunLine).toBe(
        `dry run (nothing written): ${n} workflows in flight, ${n} migratable (${n / 3} with renamed states, 0 with a new context), 0 blocked`,
      );
      expect(out.apply).toMatchObject({ done: n, failed: 0, skipped: 0 });
      expect(out.engineKilledAt).toBeLessThan(n);
      expect(out.runnerKilledAt).toBeLessThan(n);
      expect(out.signals.duringApply).toBeGreaterThan(0);
      for (const c of [out.afterApply, out.afterRevert]) {
        expect(c.wrongVersion, why).toEqual([]);
        expect(c.wrongState, why).toEqual([]);
        expect(c.lostOrDoubled, why).toEqual([]);
        expect(c.notOnce, why).toEqual([]);
      }
      expect(out.afterApply.states).toEqual({ open: n / 3, checking: n / 3, settled: n / 3 });
      expect(out.afterRevert.states).toEqual({ open: n / 3, review: n / 3, settled: n / 3 });
      expect(out.revert).toMatchObject({ done: n, failed: 0, skipped: 0 });
      expect(out.notExactlyRestored).toBe(0);
    },
  );
});
