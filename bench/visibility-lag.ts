/**
 * Index lag (`npx tsx bench/visibility-lag.ts [--workflows N]`): workload 1 of `npm run bench`
 * (the `sequential` workflow, three activities, closed loop at concurrency 64) against an engine
 * and a worker process, with a visibility replica following the journal. For every step the
 * replica applies, lag = its commit time (after which searches see it) minus the step's time in
 * the journal entry (the engine's clock when the step was computed). Same machine, same clock.
 * The replica runs in this process, next to the load generator (so the lag is pessimistic).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { Visibility } from '../src/host/visibility.js';
import { completions } from './completions.js';
import { spawnEngine, spawnTs, stopChild } from './processes.js';
import { percentile, round, runClosedLoop } from './peers/common.js';

const { values } = parseArgs({ options: { workflows: { type: 'string', default: '3000' } } });
const COUNT = Number(values.workflows);
const SHARDS = 16;
const prefix = 'benchv';
const log = (s: string) => process.stderr.write(`[bench:visibility-lag] ${s}\n`);

async function main(): Promise<void> {
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const nc = await connect({ servers: server.url });
  const client = new Client(nc, { prefix, timeoutMs: 60_000 });
  const done = completions(nc, prefix);
  const dir = mkdtempSync(join(tmpdir(), 'jetflow-vis-lag-'));
  const engine = await spawnEngine({
    url: server.url,
    prefix,
    shards: SHARDS,
    workflows: 'bench/workflows.ts',
    name: 'bench-engine',
  });
  // After the engine: it creates the tasks stream the worker's queues live in.
  const worker = await spawnTs('bench/worker.ts', [server.url, prefix], 'worker ready');
  const vis = await Visibility.create({
    servers: server.url,
    prefix,
    dataDir: dir,
    logLevel: 'warn',
    progress: () => undefined,
  });
  try {
    const run = (tag: string, n: number) =>
      runClosedLoop(
        n,
        64,
        async (i) => {
          const id = `${tag}-${i}`;
          const w = done('sequential', id);
          await client.start('sequential', id, { x: i });
          const out = await w;
          if (out.type !== 'completed') throw new Error(`${id} ${out.type}`);
        },
        600_000,
      );
    await run('warm', 200);
    // Let the replica apply the warm-up, then measure only the run.
    await new Promise((r) => setTimeout(r, 500));
    vis.takeLags();
    const res = await run('run', COUNT);
    await new Promise((r) => setTimeout(r, 500));
    const lags = vis.takeLags();
    const hits = await client.search({ type: 'sequential', status: 'completed', limit: 1 });
    const result = {
      workload: 'sequential (3 activities), concurrency 64',
      workflows: COUNT,
      throughputWfPerSec: round(COUNT / (res.wallMs / 1000), 1),
      stepsMeasured: lags.index.length,
      indexLagP50Ms: percentile(lags.index, 50),
      indexLagP99Ms: percentile(lags.index, 99),
      indexLagMaxMs: lags.index[lags.index.length - 1],
      // of which: step time → entry stored in the journal stream (the engine's side)
      journalStoredP50Ms: percentile(lags.journal, 50),
      journalStoredP99Ms: percentile(lags.journal, 99),
      searchSeesCompleted: hits.workflows.length === 1,
    };
    console.log(JSON.stringify(result));
  } finally {
    await vis.close();
    await stopChild(engine);
    await stopChild(worker);
    await nc.close();
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(String((err as Error)?.stack ?? err));
    process.exit(1);
  },
);
