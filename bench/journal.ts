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
    /**
     * The two engine modes each round compares (`--journal` values), default `off,on`.
     * `--modes off,off` is the A/A run: the spread of its ratios is the machine's noise floor.
     */
    modes: { type: 'string', default: 'off,on' },
    /**
     * `simultaneous` (default): two identical stacks (nats-server, engine, worker), one per mode,
     * loaded at the same time, so the shared machine's noise falls on both alike; they swap modes
     * every round. `sequential`: one stack, the modes' engines one after the other.
     */
    design: { type: 'string', default: 'simultaneous' },
    /** Simultaneous design: seconds each round's window counts completions (after a ramp). */
    seconds: { type: 'string', default: '20' },
  },
});
const [MODE_A, MODE_B] = values.modes.split(',') as [string, string];
if (!['on', 'off'].includes(MODE_A) || !['on', 'off'].includes(MODE_B)) {
  throw new Error(`--modes takes two of on|off, e.g. off,on (got ${values.modes})`);
}
const COUNT = Number(values.workflows);
const ROUNDS = Number(values.rounds);
const SHARDS = 16;
const prefix = 'benchj';
const log = (s: string) => process.stderr.write(`[bench:journal] ${s}\n`);

/**
 * Both modes at once on two identical stacks. Each round: an engine per stack in its mode, both
 * closed loops (concurrency 64) running together, completions counted in the same window of
 * `--seconds` after a 3 s ramp; then the stacks swap modes. Sequential rounds of the same
 * configuration differ by up to ±12 % on this shared machine (an A/A run, `--design sequential
 * --modes off,off`), more than the 5 % to resolve; here the noise hits both sides of a ratio.
 */
async function simultaneous(): Promise<void> {
  const SECONDS = Number(values.seconds);
  const stacks: {
    server: NatsServer;
    nc: Awaited<ReturnType<typeof connect>>;
    client: Client;
    done: ReturnType<typeof completions>;
    worker?: Awaited<ReturnType<typeof spawnTs>>;
    seqs?: Record<string, number>;
  }[] = [];
  const rows: {
    round: number;
    mode: string;
    stack: number;
    throughput: number;
    cpuMsPerWf: number;
    engineCpuMsPerWf: number;
    serverCpuMsPerWf: number;
  }[] = [];
  try {
    for (let k = 0; k < 2; k++) {
      const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
      const nc = await connect({ servers: server.url });
      stacks.push({
        server,
        nc,
        client: new Client(nc, { prefix, timeoutMs: 60_000 }),
        done: completions(nc, prefix),
      });
    }
    for (let r = 1; r <= ROUNDS; r++) {
      // Round 1: stack 0 runs A, stack 1 runs B; round 2 the other way, and so on.
      const modeOf = (k: number) => ((r + k) % 2 === 1 ? MODE_A : MODE_B);
      const engines = await Promise.all(
        stacks.map((st, k) =>
          spawnEngine({
            url: st.server.url,
            prefix,
            shards: SHARDS,
            workflows: 'bench/workflows.ts',
            name: `bench-engine-${k}`,
            extra: [
              ...['--journal', modeOf(k), '--journal-compression', values.compression],
              ...['--log-level', 'info'],
            ],
            node: values.profile
              ? [
                  '--cpu-prof',
                  `--cpu-prof-dir=${resolve(values.profile, `engine-r${r}-s${k}-${modeOf(k)}`)}`,
                ]
              : [],
          }),
        ),
      );
      try {
        for (const st of stacks) {
          st.worker ??= await spawnTs('bench/worker.ts', [st.server.url, prefix], 'worker ready');
        }
        let stop = false;
        const completed = [0, 0];
        const loops = stacks.map(async (st, k) => {
          let next = 0;
          const slot = async () => {
            while (!stop) {
              const id = `r${r}-${k}-${next++}`;
              const w = st.done('sequential', id);
              await st.client.start('sequential', id, { x: next });
              const out = await w;
              if (out.type !== 'completed') throw new Error(`${id} ${out.type}`);
              completed[k]!++;
            }
          };
          await Promise.all(Array.from({ length: 64 }, slot));
        });
        await new Promise((ok) => setTimeout(ok, 3_000));
        const at0 = [...completed];
        const cpu = stacks.map((st, k) => ({
          all: cpuSampler([engines[k]!.pid!, st.worker!.pid!, st.server.child!.pid!]),
          eng: cpuSampler([engines[k]!.pid!]),
          srv: cpuSampler([st.server.child!.pid!]),
        }));
        const t0 = performance.now();
        await new Promise((ok) => setTimeout(ok, SECONDS * 1000));
        const wall = (performance.now() - t0) / 1000;
        const n = completed.map((c, k) => c - at0[k]!);
        const cpuNow = cpu.map((c) => ({
          all: c.all.delta(),
          eng: c.eng.delta(),
          srv: c.srv.delta(),
        }));
        stop = true;
        await Promise.all(loops);
        // With --profile: each engine's profile covers its whole life, so per-workflow shares
        // divide by every workflow it ran (warm-up, ramp and drain included).
        // Compare the pair with `node bench/profile-diff.mjs <dir of stack 0> <its count> <dir
        // of stack 1> <its count>`.
        if (values.profile) log(`round ${r} completed in all: ${JSON.stringify(completed)}`);
        // Messages each stream stored per workflow this round (both modes, every stream).
        for (const [k, st] of stacks.entries()) {
          const now = await streamSeqs(st.nc);
          const per: Record<string, number> = {};
          for (const [name, seq] of Object.entries(now)) {
            per[name] = round((seq - (st.seqs?.[name] ?? 0)) / completed[k]!, 2);
          }
          st.seqs = now;
          log(`round ${r} stack ${k} (${modeOf(k)}) messages per workflow: ${JSON.stringify(per)}`);
        }
        for (let k = 0; k < 2; k++) {
          const perWf = (x: number | undefined) => round(((x ?? NaN) * 1000) / n[k]!, 3);
          const row = {
            round: r,
            mode: modeOf(k),
            stack: k,
            throughput: round(n[k]! / wall, 1),
            cpuMsPerWf: perWf(cpuNow[k]!.all),
            engineCpuMsPerWf: perWf(cpuNow[k]!.eng),
            serverCpuMsPerWf: perWf(cpuNow[k]!.srv),
          };
          rows.push(row);
          log(JSON.stringify(row));
        }
      } finally {
        await Promise.all(engines.map(stopChild));
      }
    }
    const median = (xs: number[]) => {
      const v = [...xs].sort((a, b) => a - b);
      const h = Math.floor(v.length / 2);
      return v.length % 2 === 1 ? v[h]! : (v[h - 1]! + v[h]!) / 2;
    };
    const pairs = Array.from({ length: ROUNDS }, (_, i) => {
      const a = rows.find((x) => x.round === i + 1 && x.stack === (i % 2 === 0 ? 0 : 1))!;
      const b = rows.find((x) => x.round === i + 1 && x.stack === (i % 2 === 0 ? 1 : 0))!;
      return { throughput: b.throughput / a.throughput, cpu: b.cpuMsPerWf / a.cpuMsPerWf };
    });
    const ratios = pairs.map((p) => round(p.throughput, 3));
    const med = median(pairs.map((p) => p.throughput));
    const ofMode = (
      m: string,
      k: 'throughput' | 'cpuMsPerWf' | 'engineCpuMsPerWf' | 'serverCpuMsPerWf',
      slot: 'A' | 'B',
    ) =>
      median(
        rows
          .filter((x) => x.mode === m && (slot === 'A') === ((x.round + x.stack) % 2 === 1))
          .map((x) => x[k]),
      );
    console.log(
      JSON.stringify({
        design: 'simultaneous',
        pairedThroughputRatios: ratios,
        medianPairedThroughputRatio: round(med, 3),
        medianPairedCpuRatio: round(median(pairs.map((p) => p.cpu)), 3),
        workload: 'sequential (3 activities), concurrency 64 per stack, two stacks at once',
        modes: { baseline: MODE_A, compared: MODE_B },
        rounds: ROUNDS,
        secondsPerRound: SECONDS,
        medianThroughput: {
          baseline: ofMode(MODE_A, 'throughput', 'A'),
          compared: ofMode(MODE_B, 'throughput', 'B'),
        },
        medianCpuMsPerWf: {
          baseline: ofMode(MODE_A, 'cpuMsPerWf', 'A'),
          compared: ofMode(MODE_B, 'cpuMsPerWf', 'B'),
        },
        engineCpuMsPerWf: {
          baseline: ofMode(MODE_A, 'engineCpuMsPerWf', 'A'),
          compared: ofMode(MODE_B, 'engineCpuMsPerWf', 'B'),
        },
        serverCpuMsPerWf: {
          baseline: ofMode(MODE_A, 'serverCpuMsPerWf', 'A'),
          compared: ofMode(MODE_B, 'serverCpuMsPerWf', 'B'),
        },
        target: 'loss <= 5% (median paired throughput ratio >= 0.95)',
        met: med >= 0.95,
      }),
    );
  } finally {
    for (const st of stacks) {
      if (st.worker) await stopChild(st.worker);
      await st.nc.close();
      await st.server.stop();
    }
  }
}

async function main(): Promise<void> {
  if (values.design === 'simultaneous') return simultaneous();
  if (values.design !== 'sequential') {
    throw new Error(`--design is simultaneous or sequential (got ${values.design})`);
  }
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const nc = await connect({ servers: server.url });
  const client = new Client(nc, { prefix, timeoutMs: 60_000 });
  const done = completions(nc, prefix);
  // Started once the first engine has created the topology (the tasks stream).
  let worker: Awaited<ReturnType<typeof spawnTs>> | undefined;
  const rows: {
    round: number;
    /** A (first of --modes, the baseline) or B (the one compared). */
    slot: string;
    journal: string;
    throughput: number;
    p99Ms: number;
    /** CPU seconds per workflow of engine + worker + nats-server: less noisy than throughput. */
    cpuMsPerWf: number;
    engineCpuMsPerWf: number;
    serverCpuMsPerWf: number;
    /** Time of a fixed CPU loop just before the round: the machine's speed at that moment. */
    calibrationMs: number;
  }[] = [];
  try {
    for (let r = 1; r <= ROUNDS; r++) {
      for (const [slot, journal] of (r % 2 === 1
        ? [
            ['A', MODE_A],
            ['B', MODE_B],
          ]
        : [
            ['B', MODE_B],
            ['A', MODE_A],
          ]) as [string, string][]) {
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
          await run(`warm-${r}-${slot}-${journal}`, 200);
          const calibrationMs = calibrate();
          const all = cpuSampler([engine.pid!, worker.pid!, server.child!.pid!]);
          const eng = cpuSampler([engine.pid!]);
          const srv = cpuSampler([server.child!.pid!]);
          const res = await run(`r${r}-${slot}-${journal}`, COUNT);
          const perWf = (x: number | undefined) => round(((x ?? NaN) * 1000) / COUNT, 3);
          const lat = [...res.latenciesMs].sort((a, b) => a - b);
          const row = {
            round: r,
            slot,
            journal,
            throughput: round(COUNT / (res.wallMs / 1000), 1),
            p99Ms: round(percentile(lat, 99), 1),
            cpuMsPerWf: perWf(all.delta()),
            engineCpuMsPerWf: perWf(eng.delta()),
            serverCpuMsPerWf: perWf(srv.delta()),
            calibrationMs,
          };
          rows.push(row);
          log(JSON.stringify(row));
          if (r === ROUNDS && slot === 'B' && journal === 'on') {
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
      [`sequential`, `r${ROUNDS}-B-${MODE_B}-0`],
      ['sleeper', 'breakdown'],
      ['fanout', 'breakdown'],
    ] as const) {
      log(`entry breakdown of ${type} ${id} (msgpack bytes per top-level field, stored form):`);
      for (const line of await entryBreakdown(jsm, names, type, id)) log(line);
    }
    const median = (xs: number[]) => {
      const v = [...xs].sort((a, b) => a - b);
      const h = Math.floor(v.length / 2);
      return v.length % 2 === 1 ? v[h]! : (v[h - 1]! + v[h]!) / 2;
    };
    const on = median(rows.filter((x) => x.slot === 'B').map((x) => x.throughput));
    const off = median(rows.filter((x) => x.slot === 'A').map((x) => x.throughput));
    // 'on' and 'off' below name the slots: B (compared) and A (baseline).
    const cpu = (j: string, k: 'cpuMsPerWf' | 'engineCpuMsPerWf' | 'serverCpuMsPerWf') =>
      median(rows.filter((x) => x.slot === (j === 'on' ? 'B' : 'A')).map((x) => x[k]));
    // Each round ran both modes back to back: their ratio sees the same machine load.
    const paired = Array.from({ length: ROUNDS }, (_, i) => {
      const of = (j: string) =>
        rows.find((x) => x.round === i + 1 && x.slot === (j === 'on' ? 'B' : 'A'))!;
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
      modes: { baseline: MODE_A, compared: MODE_B },
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

/** Every stream's last sequence (messages ever stored), by stream name. */
async function streamSeqs(
  nc: Awaited<ReturnType<typeof connect>>,
): Promise<Record<string, number>> {
  const jsm = await jetstreamManager(nc);
  const out: Record<string, number> = {};
  for await (const info of jsm.streams.list()) out[info.config.name] = info.state.last_seq;
  return out;
}

/**
 * A fixed CPU loop's time in ms, on an otherwise idle bench process: if it grows over the run,
 * the machine (shared cores) slowed down, not jetflow.
 */
function calibrate(): number {
  const t = process.hrtime.bigint();
  let x = 0;
  for (let i = 0; i < 5e7; i++) x = (x + i * 7) % 1000003;
  if (x < 0) throw new Error('unreachable');
  return round(Number(process.hrtime.bigint() - t) / 1e6, 1);
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
