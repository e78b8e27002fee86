/**
 * Command-line driver for the peer benchmarks (workload 1, "sequential"):
 *
 *   npx tsx bench/peers/run.ts [--system restate|bullmq|all] [--workflows N] [--concurrency C]...
 *
 * `--concurrency` may be repeated (default: 1 and 64); `--workflows` defaults to 2000. Prints one
 * JSON result per line on stdout, each with the wall time of the whole run (start-up and teardown
 * included) as `elapsedSec`; progress goes to stderr.
 */
import { parseArgs } from 'node:util';
import { runBullmq } from './bullmq.js';
import type { PeerOpts, PeerResult } from './common.js';
import { runRestate } from './restate.js';

const { values } = parseArgs({
  options: {
    system: { type: 'string', default: 'all' },
    workflows: { type: 'string', default: '2000' },
    concurrency: { type: 'string', multiple: true, default: ['1', '64'] },
  },
});

const all: Record<'restate' | 'bullmq', (opts: PeerOpts) => Promise<PeerResult>> = {
  restate: runRestate,
  bullmq: runBullmq,
};
const systems = values.system === 'all' ? (['restate', 'bullmq'] as const) : [values.system];
const workflows = Number(values.workflows);
const concurrencies = values.concurrency.map(Number);
if (!Number.isInteger(workflows) || workflows <= 0 || concurrencies.some((c) => !(c >= 1))) {
  throw new Error('--workflows and --concurrency must be positive integers');
}
const log = (s: string): void => {
  process.stderr.write(`${s}\n`);
};

for (const system of systems) {
  if (system !== 'restate' && system !== 'bullmq') throw new Error(`unknown system ${system}`);
  for (const concurrency of concurrencies) {
    const t0 = performance.now();
    const result = await all[system]({ workflows, concurrency, log });
    const elapsedSec = Math.round((performance.now() - t0) / 100) / 10;
    process.stdout.write(`${JSON.stringify({ ...result, elapsedSec })}\n`);
  }
}
