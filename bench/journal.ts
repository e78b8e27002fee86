/**
 * The journal's cost: `npm run bench:journal`. Workload 1 of `npm run bench` (the `sequential`
 * workflow: three activities in a row, closed loop at concurrency 64) run alternately against an
 * engine with the journal off and on, on one nats-server with one worker, several rounds, so both
 * see the same machine noise. Prints per-round throughput and the median ratio on / off.
 *
 * Options: --workflows N (per round and mode, default 2000), --rounds R (default 3), --profile DIR
 * (V8 CPU profiles of the engine, one per round and mode), --compression none|s2 (of the history
 * stream). After the rounds it prints each field's share of an entry (stored form) for workload
 * 1, a timer workflow and a fan-out.
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { topologyNames } from '../src/nats/topology.js';
import { pack, unpack } from '../src/contracts/codec.js';
import { completions } from './completions.js';
import { spawnEngine, spawnTs, stopChild } from './processes.js';
import { cpuSampler, percentile, round, runClosedLoop } from './peers/common.js';

const { values } = parseArgs({
  options: {
    workflows: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '3' },
    /** Write V8 CPU profiles of the engine (one per round and mode) into this directory. */
    profile: { type: 'string' },
    /** Stream compression of the history stream: none (default) or s2. */
    compression: { type: 'string', default: 'none' },
  },
});
const COUNT = Number(values.workflows);
const ROUNDS = Number(values.rounds);
const SHARDS = 16;
const prefix = 'benchj';
const log = (s: string) => process.stderr.write(`[bench:journal] ${s}\n`);

async function main(): Promise<void> {
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const nc = await connect({ servers: server.url });
  const client = new Client(nc, { prefix, timeoutMs: 60_000 });
  const done = completions(nc, prefix);
  // Started once the first engine has created the topology (the tasks stream).
  let worker: Awaited<ReturnType<typeof spawnTs>> | undefined;
  const rows: {
    round: number;
    journal: string;
    throughput: number;
    p99Ms: number;
    /** CPU seconds per workflow of engine + worker + nats-server: less noisy than throughput. */
    cpuMsPerWf: number;
    engineCpuMsPerWf: number;
    serverCpuMsPerWf: number;
  }[] = [];
  try {
    for (let r = 1; r <= ROUNDS; r++) {
      for (const journal of r % 2 === 1 ? ['off', 'on'] : ['on', 'off']) {
        const engine = await spawnEngine({
          url: server.url,
          prefix,
          shards: SHARDS,
          workflows: 'bench/workflows.ts',
          name: 'bench-engine',
          extra: [
            ...['--journal', journal, '--journal-compression', values.compression],
            ...['--log-level', 'info'],
          ],
          node: values.profile
            ? ['--cpu-prof', `--cpu-prof-dir=${resolve(values.profile, `engine-r${r}-${journal}`)}`]
            : [],
        });
        worker ??= await spawnTs('bench/worker.ts', [server.url, prefix], 'worker ready');
        try {
          const run = async (tag: string, n: number) =>
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
          await run(`warm-${r}-${journal}`, 200);
          const all = cpuSampler([engine.pid!, worker.pid!, server.child!.pid!]);
          const eng = cpuSampler([engine.pid!]);
          const srv = cpuSampler([server.child!.pid!]);
          const res = await run(`r${r}-${journal}`, COUNT);
          const perWf = (x: number | undefined) => round(((x ?? NaN) * 1000) / COUNT, 3);
          const lat = [...res.latenciesMs].sort((a, b) => a - b);
          const row = {
            round: r,
            journal,
            throughput: round(COUNT / (res.wallMs / 1000), 1),
            p99Ms: round(percentile(lat, 99), 1),
            cpuMsPerWf: perWf(all.delta()),
            engineCpuMsPerWf: perWf(eng.delta()),
            serverCpuMsPerWf: perWf(srv.delta()),
          };
          rows.push(row);
          log(JSON.stringify(row));
          if (r === ROUNDS && journal === 'on') {
            // For the breakdown: a workflow with a timer and one with parallel activities.
            for (const [type, input] of [
              ['sleeper', { ms: 50 }],
              ['fanout', { n: 3 }],
            ] as const) {
              const w = done(type, 'breakdown');
              await client.start(type, 'breakdown', input);
              await w;
            }
          }
        } finally {
          await stopChild(engine);
        }
      }
    }
    const jsm = await jetstreamManager(nc);
    const names = topologyNames(prefix);
    const hist = await jsm.streams.info(names.historyStream);
    for (const [type, id] of [
      ['sequential', `r${ROUNDS}-on-0`],
      ['sleeper', 'breakdown'],
      ['fanout', 'breakdown'],
    ] as const) {
      log(`entry breakdown of ${type} ${id} (msgpack bytes per top-level field, stored form):`);
      for (const line of await entryBreakdown(jsm, names, type, id)) log(line);
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const on = median(rows.filter((x) => x.journal === 'on').map((x) => x.throughput));
    const off = median(rows.filter((x) => x.journal === 'off').map((x) => x.throughput));
    const cpu = (j: string, k: 'cpuMsPerWf' | 'engineCpuMsPerWf' | 'serverCpuMsPerWf') =>
      median(rows.filter((x) => x.journal === j).map((x) => x[k]));
    // Each round ran both modes back to back: their ratio sees the same machine load.
    const paired = Array.from({ length: ROUNDS }, (_, i) => {
      const of = (j: string) => rows.find((x) => x.round === i + 1 && x.journal === j)!;
      return {
        throughput: of('on').throughput / of('off').throughput,
        cpu: of('on').cpuMsPerWf / of('off').cpuMsPerWf,
      };
    });
    const result = {
      pairedThroughputRatios: paired.map((p) => round(p.throughput, 3)),
      medianPairedThroughputRatio: round(median(paired.map((p) => p.throughput)), 3),
      medianPairedCpuRatio: round(median(paired.map((p) => p.cpu)), 3),
      workload: 'sequential (3 activities), concurrency 64',
      workflowsPerRound: COUNT,
      rounds: ROUNDS,
      medianThroughputOff: off,
      medianThroughputOn: on,
      ratioOnOff: round(on / off, 3),
      lossPercent: round(100 * (1 - on / off), 1),
      medianCpuMsPerWfOff: cpu('off', 'cpuMsPerWf'),
      medianCpuMsPerWfOn: cpu('on', 'cpuMsPerWf'),
      cpuRatioOnOff: round(cpu('on', 'cpuMsPerWf') / cpu('off', 'cpuMsPerWf'), 3),
      engineCpuMsPerWf: { off: cpu('off', 'engineCpuMsPerWf'), on: cpu('on', 'engineCpuMsPerWf') },
      serverCpuMsPerWf: { off: cpu('off', 'serverCpuMsPerWf'), on: cpu('on', 'serverCpuMsPerWf') },
      journalEntries: hist.state.messages,
      journalBytesPerEntry: round(hist.state.bytes / Math.max(1, hist.state.messages), 0),
      journalCompression: hist.config.compression ?? 'none',
      target: 'loss <= 5% (median paired throughput ratio >= 0.95)',
      met: median(paired.map((p) => p.throughput)) >= 0.95,
    };
    console.log(JSON.stringify(result));
  } finally {
    if (worker) await stopChild(worker);
    await nc.close();
    await server.stop();
  }
}

/**
 * One workflow's journal entries, each broken down by top-level field: the msgpack bytes of the
 * field's key and value, sorted largest first, and the entry's total.
 */
async function entryBreakdown(
  jsm: Awaited<ReturnType<typeof jetstreamManager>>,
  names: ReturnType<typeof topologyNames>,
  type: string,
  id: string,
): Promise<string[]> {
  const out: string[] = [];
  const it = await jsm.direct.getBatch(names.historyStream, {
    seq: 1,
    next_by_subj: names.subjects.journal(type, id),
    batch: 20,
  });
  for await (const m of it as AsyncIterable<{ data: Uint8Array; subject: string }>) {
    const entry = unpack(m.data) as Record<string, unknown>;
    const fields = Object.entries(entry)
      .map(([k, v]) => [k, pack({ [k]: v }).length - 1] as const)
      .sort((a, b) => b[1] - a[1]);
    out.push(
      `step ${String(entry.step)} ${String(entry.kind)} (${String(entry.cause)}): ${m.data.length} bytes; ` +
        fields.map(([k, n]) => `${k} ${n}`).join(', '),
    );
  }
  return out;
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
