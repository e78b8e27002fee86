/**
 * The cost of priority levels: `npm run bench:priority` (`-- --smoke` for a tiny run). Workload 1
 * of `npm run bench` (the `sequential` workflow, three activities in a row, closed loop at
 * concurrency 64), alternately in the same run on one engine, with a fresh worker process per mode:
 *
 * - `off`: the worker pulls level 3 only, as before priority levels (`priorityLevels: false`);
 * - `on`: the default worker (each fill scans levels 1 and 2 before level 3, aging probes);
 * - `prio`: the default worker, and the workflow's activities at priority 1 (`sequentialPrio`).
 *
 * Reported: throughput per mode and round, and the median paired ratios on / off and prio / off.
 * Options: --workflows N (per round and mode, default 2000), --rounds R (default 3), --smoke.
 */
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { completions } from './completions.js';
import { spawnEngine, spawnTs, stopChild } from './processes.js';
import { round, runClosedLoop } from './peers/common.js';

const { values } = parseArgs({
  options: {
    workflows: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '3' },
    smoke: { type: 'boolean', default: false },
  },
});
const smoke = values.smoke;
const COUNT = smoke ? 200 : Number(values.workflows);
const ROUNDS = smoke ? 1 : Number(values.rounds);
const SHARDS = 16;
const prefix = 'benchp';
const log = (s: string) => process.stderr.write(`[bench:priority] ${s}\n`);

const MODES = [
  { mode: 'off', type: 'sequential', levels: 'off' },
  { mode: 'on', type: 'sequential', levels: 'on' },
  { mode: 'prio', type: 'sequentialPrio', levels: 'on' },
] as const;

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
    extra: ['--log-level', 'info'],
  });
  const run = (type: string, tag: string, n: number) =>
    runClosedLoop(
      n,
      64,
      async (i) => {
        const id = `${tag}-${i}`;
        const w = done(type, id);
        await client.start(type, id, { x: i });
        const out = await w;
        if (out.type !== 'completed') throw new Error(`${id} ${out.type}`);
      },
      600_000,
    );
  const rows: { round: number; mode: string; throughput: number }[] = [];
  try {
    for (let r = 1; r <= ROUNDS; r++) {
      const order = r % 2 === 1 ? MODES : [...MODES].reverse();
      for (const m of order) {
        const worker = await spawnTs('bench/worker.ts', [server.url, prefix], 'worker ready', [], {
          BENCH_PRIORITY_LEVELS: m.levels,
        });
        try {
          await run(m.type, `w${r}-${m.mode}`, Math.min(200, COUNT));
          const res = await run(m.type, `r${r}-${m.mode}`, COUNT);
          const row = { round: r, mode: m.mode, throughput: round(COUNT / (res.wallMs / 1000), 1) };
          rows.push(row);
          log(JSON.stringify(row));
        } finally {
          await stopChild(worker);
        }
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const of = (mode: string, r: number) =>
      rows.find((x) => x.mode === mode && x.round === r)!.throughput;
    const ratios = (mode: string) =>
      Array.from({ length: ROUNDS }, (_, i) => round(of(mode, i + 1) / of('off', i + 1), 3));
    console.log(
      JSON.stringify({
        workload: 'sequential (3 activities), concurrency 64, one worker process (256 slots)',
        workflowsPerRound: COUNT,
        rounds: ROUNDS,
        medianThroughput: Object.fromEntries(
          MODES.map((m) => [
            m.mode,
            median(rows.filter((x) => x.mode === m.mode).map((x) => x.throughput)),
          ]),
        ),
        pairedRatiosOnOff: ratios('on'),
        medianRatioOnOff: median(ratios('on')),
        pairedRatiosPrioOff: ratios('prio'),
        medianRatioPrioOff: median(ratios('prio')),
        smoke,
      }),
    );
  } finally {
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
