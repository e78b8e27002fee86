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
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { completions } from './completions.js';
import { spawnTs, stopChild } from './processes.js';
import { cpuSampler, percentile, round, runClosedLoop } from './peers/common.js';

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
const root = resolve(import.meta.dirname, '..');
const log = (s: string) => process.stderr.write(`[bench:keys] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const nc = await connect({ servers: server.url });
  const client = new Client(nc, { prefix, timeoutMs: 60_000 });
  const done = completions(nc, prefix);
  const engine = await spawnTs(
    'src/cli/main.ts',
    [
      'engine',
      '--nats-url',
      server.url,
      '--prefix',
      prefix,
      '--shards',
      String(SHARDS),
      '--workflows',
      resolve(root, 'bench/workflows.ts'),
      '--journal',
      'on',
      '--log-level',
      'info',
      '--name',
      'bench-engine',
    ],
    '"engine started"',
  );
  const worker = await spawnTs('bench/worker.ts', [server.url, prefix], 'worker ready');
  try {
    const run = (type: string, tag: string, n: number) =>
      runClosedLoop(
        n,
        64,
        async (i) => {
          const id = `${tag}-${i}`;
          const w = done(type, id);
          // Keyed: 16 keys, each far below its limit of 1,000 (64 in flight in all).
          await client.start(type, id, { x: i, k: `k${i % 16}` });
          const out = await w;
          if (out.type !== 'completed') throw new Error(`${id} ${out.type}`);
        },
        600_000,
      );
    const rows: {
      round: number;
      type: string;
      throughput: number;
      p99Ms: number;
      cpuMsPerWf: number;
    }[] = [];
    for (let r = 1; r <= ROUNDS; r++) {
      for (const type of r % 2 === 1
        ? ['sequential', 'sequentialKeyed']
        : ['sequentialKeyed', 'sequential']) {
        await run(type, `warm-${r}-${type}`, Math.min(200, COUNT));
        const cpu = cpuSampler([engine.pid!, worker.pid!, server.child!.pid!]);
        const res = await run(type, `r${r}-${type}`, COUNT);
        const lat = [...res.latenciesMs].sort((a, b) => a - b);
        const row = {
          round: r,
          type,
          throughput: round(COUNT / (res.wallMs / 1000), 1),
          p99Ms: round(percentile(lat, 99), 1),
          cpuMsPerWf: round(((cpu.delta() ?? NaN) * 1000) / COUNT, 3),
        };
        rows.push(row);
        log(JSON.stringify(row));
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const paired = Array.from({ length: ROUNDS }, (_, i) => {
      const of = (t: string) => rows.find((x) => x.round === i + 1 && x.type === t)!;
      return of('sequentialKeyed').throughput / of('sequential').throughput;
    });

    // Admission latency: PAIRS keys, 8 at a time, each: holder admitted, next deferred, close.
    const samples: number[] = [];
    let nextPair = 0;
    const lane = async () => {
      while (nextPair < PAIRS) {
        const p = nextPair++;
        const k = `gate-${p}`;
        await client.start('gate', `${k}-a`, { k });
        const b = await client.start('gate', `${k}-b`, { k });
        if (!b.deferred) throw new Error(`${k}-b was not deferred`);
        await sleep(5);
        await client.signal('gate', `${k}-a`, { type: 'CLOSE' });
        const closedAt = await stepAt(`${k}-a`, (e) => e.status === 'completed');
        const admittedAt = await stepAt(`${k}-b`, (e) => e.cause === 'admit');
        samples.push(admittedAt - closedAt);
        await client.signal('gate', `${k}-b`, { type: 'CLOSE' });
      }
    };
    const stepAt = async (
      id: string,
      f: (e: { status: string; cause: string }) => boolean,
    ): Promise<number> => {
      for (;;) {
        const h = await client.history('gate', id, { limit: 20 });
        const e = h.entries.find((x) => x.kind === 'step' && f(x));
        if (e) return e.at;
        await sleep(2);
      }
    };
    await Promise.all(Array.from({ length: 8 }, lane));
    const lat = [...samples].sort((a, b) => a - b);
    const result = {
      workload:
        'sequential (3 activities), concurrency 64; keyed: limit 1,000 over 16 keys (never waits)',
      workflowsPerRound: COUNT,
      rounds: ROUNDS,
      pairedThroughputRatios: paired.map((x) => round(x, 3)),
      medianPairedThroughputRatio: round(median(paired), 3),
      medianThroughputPlain: median(
        rows.filter((x) => x.type === 'sequential').map((x) => x.throughput),
      ),
      medianThroughputKeyed: median(
        rows.filter((x) => x.type === 'sequentialKeyed').map((x) => x.throughput),
      ),
      cpuMsPerWf: {
        plain: median(rows.filter((x) => x.type === 'sequential').map((x) => x.cpuMsPerWf)),
        keyed: median(rows.filter((x) => x.type === 'sequentialKeyed').map((x) => x.cpuMsPerWf)),
      },
      admission: {
        samples: lat.length,
        p50Ms: round(percentile(lat, 50), 1),
        p99Ms: round(percentile(lat, 99), 1),
        maxMs: lat.at(-1),
        measured:
          "holder's final step to the deferred workflow's admission step (journal at, engine clock)",
      },
      target: 'keyed / plain throughput >= 0.8',
      met: median(paired) >= 0.8,
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
