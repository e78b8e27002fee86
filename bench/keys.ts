/**
 * The cost of concurrency keys: `npm run bench:keys` (`-- --smoke` for a tiny run).
 *
 * 1. Throughput: workload 1 of `npm run bench` (the `sequential` workflow, three activities in a
 *    row, closed loop at concurrency 64) without a key vs `sequentialKeyed`, the same machine
 *    with a concurrency key that never waits (limit 1,000), alternately on the same engine,
 *    several rounds; the median paired ratio keyed / plain (target >= 0.8).
 * 2. Admission latency: a `gate` workflow holds its key's only slot, a second start of the key
 *    is deferred; the holder is closed and the time from the holder's final step to the
 *    deferred workflow's admission step (both journal `at`, the engine's clock) is measured,
 *    p50 / p99 over many keys.
 *
 * Options: --workflows N (per round and mode, default 2000), --rounds R (default 3), --pairs P
 * (admission latency samples, default 500), --smoke (200 workflows, 1 round, 30 pairs).
 */
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { completions } from './completions.js';
import { spawnEngine, spawnTs, stopChild } from './processes.js';
import { cpuSampler } from './peers/common.js';
import { keysWorkload } from './keys-workload.js';

const { values } = parseArgs({
  options: {
    workflows: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '3' },
    pairs: { type: 'string', default: '500' },
    smoke: { type: 'boolean', default: false },
  },
});
const smoke = values.smoke;
const COUNT = smoke ? 200 : Number(values.workflows);
const ROUNDS = smoke ? 1 : Number(values.rounds);
const PAIRS = smoke ? 30 : Number(values.pairs);
const SHARDS = 16;
const prefix = 'benchk';
const log = (s: string) => process.stderr.write(`[bench:keys] ${s}\n`);

async function main(): Promise<void> {
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const nc = await connect({ servers: server.url });
  const client = new Client(nc, { prefix, timeoutMs: 60_000 });
  const done = completions(nc, prefix);
  const engine = await spawnEngine({
    url: server.url,
    prefix,
    shards: SHARDS,
    workflows: 'bench/workflows.ts',
    name: 'bench-engine',
    extra: ['--journal', 'on', '--log-level', 'info'],
  });
  const worker = await spawnTs('bench/worker.ts', [server.url, prefix], 'worker ready');
  try {
    const r = await keysWorkload({
      client,
      completed: async (type, id) => {
        const out = await done(type, id);
        if (out.type !== 'completed') throw new Error(`${id} ${out.type}`);
      },
      cpu: () => cpuSampler([engine.pid!, worker.pid!, server.child!.pid!]),
      workflows: COUNT,
      rounds: ROUNDS,
      pairs: PAIRS,
      log,
    });
    const result = {
      workload:
        'sequential (3 activities), concurrency 64; keyed: limit 1,000 over 16 keys (never waits)',
      ...r,
      admission: {
        ...r.admission,
        measured:
          "holder's final step to the deferred workflow's admission step (journal at, engine clock)",
      },
      target: 'keyed / plain throughput >= 0.8',
      smoke,
    };
    console.log(JSON.stringify(result));
  } finally {
    await stopChild(worker);
    await stopChild(engine);
    await nc.close();
    await server.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
