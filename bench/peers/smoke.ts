/**
 * Smoke test of the peer benchmarks: runs Restate and BullMQ (workload 1, "sequential") with a
 * tiny N at concurrency 1 and 8, and prints one JSON result per line on stdout (progress goes to
 * stderr). Exits non-zero if any result is not a measurement.
 *
 *   npx tsx bench/peers/smoke.ts
 */
import { runBullmq } from './bullmq.js';
import type { PeerOpts, PeerResult } from './common.js';
import { runRestate } from './restate.js';

const WORKFLOWS = 20;
const log = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

const runners: ReadonlyArray<(opts: PeerOpts) => Promise<PeerResult>> = [runRestate, runBullmq];
let failures = 0;
for (const run of runners) {
  for (const concurrency of [1, 8]) {
    const t0 = performance.now();
    const result = await run({ workflows: WORKFLOWS, concurrency, log });
    log(`(${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    process.stdout.write(`${JSON.stringify(result)}\n`);
    if ('notMeasured' in result) failures++;
  }
}
process.exitCode = failures === 0 ? 0 : 1;
