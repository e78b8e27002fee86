/**
 * The benchmark: `npm run bench` (full, ~10 min on 2 cores) or `npm run bench -- --smoke` (tiny,
 * run by the tests so that it never rots). It starts everything itself: a nats-server, a jetflow
 * engine and worker as separate processes, and the peers (Restate, BullMQ on redis-server).
 *
 * Prints one JSON line per system and workload, then a markdown table and the targets (met /
 * not met). Writes the same to `.bench/latest.json` and `.bench/latest.md`.
 *
 * Workloads: 1 sequential (c=64, c=1), 1 with a concurrency key vs without and the admission
 * latency of a deferred workflow (`bench/keys-workload.ts`), 2 fan-out, 3 signals, 4 timers, 5 idle.
 * After workload 1 and the others, on the same nats-server with engines of their own: trigger
 * throughput (stream messages → started workflows per second, `bench/triggers.ts`) as a ratio to
 * the start rate through the client, and HTTP start p50/p99 beside the NATS start
 * (`bench/http.ts`).
 *
 * Options: --smoke, --skip-peers, --profile (engine CPU profile of workload 1, summarised),
 * --observability [--rounds n] (only workload 1, with metrics off, on, and on with tracing at
 * 100% sampling, interleaved in the same run: see `bench/observability.ts`).
 */
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { execFileSync } from 'node:child_process';
import { NatsServer, natsServerBin } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { topologyNames } from '../src/nats/topology.js';
import type { Notification } from '../src/contracts/wire.js';
import { spawnedChildren, spawnTs, stopChild } from './processes.js';
import { cpuSampler, percentile, readRssMb, round, runClosedLoop } from './peers/common.js';
import { runRestate } from './peers/restate.js';
import { runBullmq } from './peers/bullmq.js';
import type { PeerResult } from './peers/common.js';
import { keysWorkload, type KeysWorkloadResult } from './keys-workload.js';
import { runTriggerBench } from './triggers.js';
import { runHttpBench } from './http.js';
import { headOfLine } from './head-of-line.js';

const { values } = parseArgs({
  options: {
    smoke: { type: 'boolean', default: false },
    'skip-peers': { type: 'boolean', default: false },
    profile: { type: 'boolean', default: false },
    /** Comma-separated subset: keys,fanout,signals,hol,timers,idle,triggers,http (sequential always runs). */
    only: { type: 'string' },
    /** Only workload 1, metrics off / on / on with tracing (bench/observability.ts). */
    observability: { type: 'boolean', default: false },
    /** Rounds of --observability (default 3, smoke 1). */
    rounds: { type: 'string' },
  },
});
const smoke = values.smoke;
const only = values.only ? new Set(values.only.split(',')) : undefined;
const want = (w: string) => !only || only.has(w);
const root = resolve(import.meta.dirname, '..');
const outDir = resolve(root, '.bench');
mkdirSync(outDir, { recursive: true });
const SHARDS = 16;
const prefix = 'bench';
const names = topologyNames(prefix);
const N = smoke
  ? {
      seq64: 40,
      seq1: 10,
      fanout: 50,
      liveWfs: 20,
      signals: 200,
      timers: 200,
      timerMaxMs: 1500,
      idle: 500,
      keys: 40,
      keyRounds: 1,
      keyPairs: 10,
      triggerMsgs: 100,
      httpStarts: 30,
      rounds: 1,
      holHot: 300,
      holQuiet: 40,
    }
  : {
      seq64: 3000,
      seq1: 300,
      fanout: 1000,
      liveWfs: 1000,
      signals: 20000,
      timers: 10000,
      timerMaxMs: 10000,
      idle: 100000,
      keys: 2000,
      keyRounds: 3,
      keyPairs: 500,
      triggerMsgs: 2000,
      httpStarts: 1000,
      rounds: 3,
      holHot: 5000,
      holQuiet: 400,
    };

const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
type Row = Record<string, unknown> & { system: string; workload: string };
const rows: Row[] = [];
const emit = (r: Row) => {
  rows.push(r);
  process.stdout.write(JSON.stringify(r) + '\n');
};

/** Completion waiters fed by one subscription on every notification. */
function completions(nc: NatsConnection) {
  const waiters = new Map<string, (n: Notification) => void>();
  const seen = new Map<string, Notification>();
  nc.subscribe(`${prefix}.events.*.*`, {
    callback: (_e, m) => {
      const n = m.json<Notification>();
      if (n.type !== 'completed' && n.type !== 'failed' && n.type !== 'started') return;
      const key = `${n.type}:${n.workflowType}.${n.id}`;
      seen.set(key, n);
      waiters.get(key)?.(n);
    },
  });
  return {
    wait(type: 'completed' | 'started', wf: string, id: string): Promise<Notification> {
      const key = `${type}:${wf}.${id}`;
      const got = seen.get(key);
      if (got) return Promise.resolve(got);
      return new Promise((ok) => waiters.set(key, (n) => (waiters.delete(key), ok(n))));
    },
    get: (type: string, wf: string, id: string) => seen.get(`${type}:${wf}.${id}`),
    clear: () => seen.clear(),
  };
}

async function streamWrites(nc: NatsConnection): Promise<number> {
  const jsm = await jetstreamManager(nc);
  let total = 0;
  for (const s of [
    names.inboxStream,
    names.eventsStream,
    // The journal: one entry per step (the default; it was left out of this count before
    // 2026-12-03, which understated the writes by four per workflow of workload 1).
    names.historyStream,
    names.tasksStream,
    `KV_${names.bucket}`,
    // The attempt ledger: one write per activity attempt (absent before it existed).
    `KV_${names.attemptsBucket}`,
  ]) {
    const info = await jsm.streams.info(s).catch(() => undefined);
    total += info?.state.last_seq ?? 0;
  }
  return total;
}

async function rawBound(nc: NatsConnection): Promise<number> {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: 'RAWBOUND', subjects: ['rawbound.>'] });
  const js = jetstream(nc);
  const total = smoke ? 2000 : 50_000;
  const window = 1000;
  const payload = new Uint8Array(200);
  const t0 = performance.now();
  let inflight: Promise<unknown>[] = [];
  for (let i = 0; i < total; i++) {
    inflight.push(js.publish(`rawbound.${i % SHARDS}`, payload));
    if (inflight.length >= window) {
      await Promise.all(inflight);
      inflight = [];
    }
  }
  await Promise.all(inflight);
  const rate = total / ((performance.now() - t0) / 1000);
  await jsm.streams.delete('RAWBOUND');
  return rate;
}

function summarizeProfile(dir: string): string[] {
  const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
  if (!file) return ['(no profile written)'];
  const prof = JSON.parse(readFileSync(resolve(dir, file), 'utf8')) as {
    nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number } }[];
    samples: number[];
  };
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const counts = new Map<string, number>();
  for (const id of prof.samples) {
    const n = byId.get(id)!;
    const url = n.callFrame.url
      .replace(/^.*node_modules\//, '')
      .replace(/^file:\/\/.*\/work\/main\//, '');
    const key = `${n.callFrame.functionName || '(anonymous)'} ${url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  const total = prof.samples.length;
  return [...counts.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, 15)
    .map(([k, v]) => `${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
}

async function main(): Promise<void> {
  const t0 = Date.now();
  const natsVersion = execFileSync(natsServerBin(), ['--version'], { encoding: 'utf8' }).trim();
  log(`${smoke ? 'smoke' : 'full'} run; starting nats-server, engine and worker`);
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const profileDir = resolve(outDir, 'profile');
  rmSync(profileDir, { recursive: true, force: true });
  if (values.observability) {
    try {
      const { runObservabilityBench } = await import('./observability.js');
      const md = await runObservabilityBench({
        server,
        shards: SHARDS,
        root,
        rounds: Number(values.rounds ?? (smoke ? 1 : 3)),
        seq64: N.seq64,
        seq1: N.seq1,
        emit,
      });
      const text = md.join('\n');
      process.stdout.write('\n' + text + '\n');
      const name = smoke ? 'observability-smoke' : 'observability';
      writeFileSync(resolve(outDir, `${name}.md`), text + '\n');
      writeFileSync(resolve(outDir, `${name}.json`), JSON.stringify({ rows }, null, 2));
    } finally {
      for (const c of spawnedChildren()) if (c.exitCode === null) c.kill('SIGKILL');
      await server.stop();
    }
    return;
  }
  try {
    const engineArgs = [
      'engine',
      '--nats-url',
      server.url,
      '--prefix',
      prefix,
      '--shards',
      String(SHARDS),
      '--workflows',
      resolve(root, 'bench/workflows.ts'),
      '--max-input-bytes',
      '262144',
      '--log-level',
      'info',
    ];
    const engine = await spawnTs(
      'src/cli/main.ts',
      engineArgs,
      '"engine started"',
      values.profile ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`] : [],
    );
    const worker = await spawnTs('bench/worker.ts', [server.url, prefix], 'worker ready');
    const nc = await connect({ servers: server.url });
    const client = new Client(nc, { prefix, timeoutMs: 60_000 });
    const done = completions(nc);
    /** CPU of the engine, the worker and the server from now, in ms per unit of work. */
    const splitCpu = () => {
      const of = (pid: number | undefined) => (pid ? cpuSampler([pid]) : undefined);
      const parts = {
        engine: of(engine.pid),
        worker: of(worker.pid),
        server: of(server.child?.pid),
      };
      return {
        msPer: (n: number) =>
          Object.fromEntries(
            Object.entries(parts).map(([k, c]) => {
              const sec = c?.delta();
              return [k, sec === undefined ? null : round((sec * 1000) / n, 3)];
            }),
          ),
      };
    };
    const machine = {
      cpus: (await import('node:os')).cpus().length,
      cpu: (await import('node:os')).cpus()[0]?.model ?? '?',
      node: process.version,
    };

    // Workload 1: sequential, concurrency 64 and 1.
    let seqWritesPerWf = 0;
    const seq: Record<number, Row> = {};
    for (const [c, count] of [
      [64, N.seq64],
      [1, N.seq1],
    ] as const) {
      await runClosedLoop(
        Math.min(100, count),
        c,
        async (i) => {
          const w = done.wait('completed', 'sequential', `warm-${c}-${i}`);
          await client.start('sequential', `warm-${c}-${i}`, { x: i });
          await w;
        },
        120_000,
      );
      const cpu = cpuSampler([engine.pid!, worker.pid!]);
      const cpuE = cpuSampler([engine.pid!]);
      const w0 = await streamWrites(nc);
      const r = await runClosedLoop(
        count,
        c,
        async (i) => {
          const id = `s${c}-${i}`;
          const w = done.wait('completed', 'sequential', id);
          await client.start('sequential', id, { x: i });
          const n = await w;
          if (n.type !== 'completed' || (n.output as { x: number }).x !== i + 3)
            throw new Error(`wrong output for ${id}`);
        },
        600_000,
      );
      const writes = ((await streamWrites(nc)) - w0) / count;
      if (c === 64) seqWritesPerWf = writes;
      const lat = [...r.latenciesMs].sort((a, b) => a - b);
      const total = cpu.delta() ?? NaN;
      const eng = cpuE.delta() ?? NaN;
      seq[c] = {
        system: 'jetflow',
        workload: 'sequential',
        concurrency: c,
        workflows: count,
        throughput: round(count / (r.wallMs / 1000), 1),
        p50Ms: round(percentile(lat, 50), 2),
        p99Ms: round(percentile(lat, 99), 2),
        engineCpuSecPerWf: round(eng / count, 5),
        workerCpuSecPerWf: round((total - eng) / count, 5),
        engineRssMb: round(readRssMb(engine.pid!), 1),
        writesPerWf: round(writes, 2),
      };
      emit(seq[c]);
    }

    // Raw bound: pipelined JetStream publishes on the same server.
    const raw = await rawBound(nc);
    const bound = raw / seqWritesPerWf;
    const efficiency = (seq[64]!.throughput as number) / bound;
    emit({
      system: 'jetstream-raw',
      workload: 'pipelined-publish',
      msgsPerSec: round(raw, 0),
      writesPerWf: round(seqWritesPerWf, 2),
      boundWfPerSec: round(bound, 1),
      jetflowEfficiencyPct: round(100 * efficiency, 1),
    });

    // Workload 1 with a concurrency key that never waits (limit 1,000) vs without, alternately in
    // this run, and the admission latency of a deferred workflow once its key frees.
    let keys: KeysWorkloadResult | undefined;
    if (want('keys')) {
      keys = await keysWorkload({
        client,
        completed: async (type, id) => {
          await done.wait('completed', type, id);
        },
        cpu: () => cpuSampler([engine.pid!, worker.pid!]),
        workflows: N.keys,
        rounds: N.keyRounds,
        pairs: N.keyPairs,
        log,
      });
      emit({ system: 'jetflow', workload: 'concurrency-key', ...keys });
    }

    // Workload 2: fan-out.
    if (want('fanout')) {
      const id = 'fan-1';
      const w = done.wait('completed', 'fanout', id);
      const cpu = splitCpu();
      const ts = performance.now();
      await client.start('fanout', id, { n: N.fanout });
      const n = await w;
      const ms = performance.now() - ts;
      const perActivity = cpu.msPer(N.fanout);
      if (n.type !== 'completed' || (n.output as { done: number }).done !== N.fanout)
        throw new Error('fan-out incomplete');
      emit({
        system: 'jetflow',
        workload: 'fanout',
        activities: N.fanout,
        totalMs: round(ms, 0),
        activitiesPerSec: round(N.fanout / (ms / 1000), 1),
        // CPU ms per activity of each process (engine, worker, nats-server).
        cpuMsPerActivity: perActivity,
      });
    }

    // Workload 3: signals into live workflows.
    if (want('signals')) {
      await runClosedLoop(
        N.liveWfs,
        64,
        (i) => client.start('live', `l${i}`).then(() => undefined),
        300_000,
      );
      const cpu = splitCpu();
      const r = await runClosedLoop(
        N.signals,
        64,
        (i) => client.signal('live', `l${i % N.liveWfs}`, { type: 'TICK' }).then(() => undefined),
        600_000,
      );
      const lat = [...r.latenciesMs].sort((a, b) => a - b);
      emit({
        system: 'jetflow',
        workload: 'signals',
        workflows: N.liveWfs,
        signals: N.signals,
        eventsPerSec: round(N.signals / (r.wallMs / 1000), 1),
        p50Ms: round(percentile(lat, 50), 2),
        p99Ms: round(percentile(lat, 99), 2),
        // CPU ms per signal of each process (engine, worker, nats-server).
        cpuMsPerEvent: cpu.msPer(N.signals),
      });
    }

    // Workload 3b: head-of-line blocking, one hot workflow and the others on its shard.
    if (want('hol')) {
      // The other workflows' signals come from another service: a connection of their own.
      const probeNc = await connect({ servers: server.url });
      const h = await headOfLine({
        client,
        probeClient: new Client(probeNc, { prefix, timeoutMs: 60_000 }),
        shards: SHARDS,
        hot: N.holHot,
        quiet: N.holQuiet,
        others: 8,
        // As fast as they come: every signal sent at once (issue 18's measurement), so the hot
        // workflow's messages are ahead of the others' in the shard's stream order.
        inFlight: N.holHot,
        log,
      });
      await probeNc.close();
      emit({ system: 'jetflow', workload: 'head-of-line', ...h });
    }

    // Workload 4: timer lateness.
    if (want('timers')) {
      const delays = Array.from(
        { length: N.timers },
        () => 1000 + Math.floor(Math.random() * (N.timerMaxMs - 1000)),
      );
      await runClosedLoop(
        N.timers,
        128,
        (i) => client.start('sleeper', `t${i}`, { ms: delays[i] }).then(() => undefined),
        300_000,
      );
      await Promise.all(delays.map((_, i) => done.wait('completed', 'sleeper', `t${i}`)));
      const late = delays
        .map(
          (d, i) =>
            Date.parse(done.get('completed', 'sleeper', `t${i}`)!.at) -
            (Date.parse(done.get('started', 'sleeper', `t${i}`)!.at) + d),
        )
        .sort((a, b) => a - b);
      emit({
        system: 'jetflow',
        workload: 'timers',
        timers: N.timers,
        lateP50Ms: percentile(late, 50),
        lateP99Ms: percentile(late, 99),
        lateMaxMs: late.at(-1),
        earliestMs: late[0],
      });
    }

    // Workload 5: idle state (also: pending timers in JetStream, not in the engine).
    if (want('idle')) {
      done.clear();
      global.gc?.();
      const before = readRssMb(engine.pid!);
      const r = await runClosedLoop(
        N.idle,
        256,
        (i) => client.start('sleeper', `idle${i}`, { ms: 3_600_000 }).then(() => undefined),
        900_000,
      );
      await new Promise((res) => setTimeout(res, 2000));
      const after = readRssMb(engine.pid!);
      emit({
        system: 'jetflow',
        workload: 'idle',
        workflows: N.idle,
        pendingTimers: N.idle,
        startsPerSec: round(N.idle / (r.wallMs / 1000), 1),
        engineRssMbBefore: round(before, 1),
        engineRssMbAfter: round(after, 1),
      });
    }

    await client.close();
    await nc.close();
    await stopChild(worker);
    await stopChild(engine);
    if (values.profile) {
      log('engine CPU profile (self time, top 15):');
      for (const line of summarizeProfile(profileDir)) log(`  ${line}`);
    }

    // Triggers and HTTP ingress (issue 21): engines of their own on the same server, now that
    // workload 1's engine and worker have stopped.
    if (want('triggers')) {
      const t = await runTriggerBench({
        serverUrl: server.url,
        shards: SHARDS,
        messages: N.triggerMsgs,
        rounds: N.rounds,
        log: (l) => log(`triggers ${l}`),
      });
      emit({
        system: 'jetflow',
        workload: 'triggers',
        ...t,
        workload1PerSec: seq[64]!.throughput,
        triggerOverWorkload1: round(t.triggerStartsPerSec / (seq[64]!.throughput as number), 2),
      });
    }
    if (want('http')) {
      const h = await runHttpBench({
        serverUrl: server.url,
        shards: SHARDS,
        starts: N.httpStarts,
        rounds: N.rounds,
        log: (l) => log(`http ${l}`),
      });
      emit({ system: 'jetflow', workload: 'http-start', ...h });
    }

    // Peers, same workload 1.
    const peers: PeerResult[] = [];
    if (!values['skip-peers']) {
      for (const [c, count] of [
        [64, N.seq64],
        [1, N.seq1],
      ] as const) {
        for (const run of [runRestate, runBullmq]) {
          const p = await run({ workflows: count, concurrency: c, log });
          peers.push(p);
          emit({ ...p, workload: 'sequential', concurrency: c });
        }
      }
    }

    // Table and targets.
    const md: string[] = [];
    md.push(
      `Machine: ${machine.cpus} cores (${machine.cpu}), Node ${machine.node}, nats-server ${natsVersion}; ${smoke ? 'SMOKE run (tiny N)' : 'full run'}; ${new Date().toISOString()}`,
    );
    md.push('');
    md.push(
      '| system | workload | concurrency | N | throughput | p50 ms | p99 ms | engine/server CPU ms/wf | worker CPU ms/wf | RSS MB | writes/wf |',
    );
    md.push('|---|---|---|---|---|---|---|---|---|---|---|');
    for (const r of rows) {
      if (r.workload !== 'sequential' || 'notMeasured' in r) continue;
      const cpuS = (r.engineCpuSecPerWf ?? r.serverCpuSecPerWf) as number | undefined;
      const cpuW = r.workerCpuSecPerWf as number | undefined;
      md.push(
        `| ${r.system} | sequential | ${r.concurrency} | ${r.workflows} | ${r.throughput} wf/s | ${r.p50Ms} | ${r.p99Ms} | ${cpuS === undefined ? '-' : round(cpuS * 1000, 2)} | ${cpuW === undefined ? '-' : round(cpuW * 1000, 2)} | ${r.engineRssMb ?? r.serverRssMb ?? '-'} | ${r.writesPerWf ?? '-'} |`,
      );
    }
    for (const r of rows)
      if ('notMeasured' in r)
        md.push(
          `| ${r.system} | sequential | ${r.concurrency} | - | not measured: ${String(r.notMeasured)} | | | | | | |`,
        );
    md.push('');
    for (const r of rows)
      if (r.workload !== 'sequential')
        md.push(
          `- ${r.system} ${r.workload}: ${JSON.stringify(Object.fromEntries(Object.entries(r).filter(([k]) => k !== 'system' && k !== 'workload')))}`,
        );
    const trig = rows.find((r) => r.workload === 'triggers');
    const hs = rows.find((r) => r.workload === 'http-start') as
      | (Row & Record<string, { nats: Record<string, number>; http: Record<string, number> }>)
      | undefined;
    if (trig || hs) {
      md.push('');
      md.push('Triggers and HTTP ingress (same run):');
      if (trig)
        md.push(
          `- trigger: ${String(trig.triggerStartsPerSec)} stream messages → started workflows/s; ` +
            `${String(trig.triggerOverClient)}× the client.start rate of the same engine ` +
            `(${String(trig.clientStartsPerSec)}/s, c=64), ${String(trig.triggerOverWorkload1)}× workload 1's ` +
            `${String(trig.workload1PerSec)} wf/s`,
        );
      if (hs) {
        md.push('');
        md.push('| start via | concurrency | p50 ms | p99 ms | starts/s |');
        md.push('|---|---|---|---|---|');
        for (const c of [1, 16])
          for (const path of ['nats', 'http'] as const) {
            const x = hs[`c${c}`]?.[path];
            if (x) md.push(`| ${path} | ${c} | ${x.p50Ms} | ${x.p99Ms} | ${x.perSec} |`);
          }
      }
    }
    const measured = (s: string, c: number) =>
      peers.find((p) => p.system === s && 'throughput' in p && p.concurrency === c) as
        (PeerResult & { throughput: number; p50Ms: number }) | undefined;
    const targets: [string, boolean | undefined, string][] = [];
    const j64 = seq[64]!.throughput as number;
    const j1 = seq[1]!.p50Ms as number;
    for (const s of ['restate', 'bullmq']) {
      const p = measured(s, 64);
      targets.push([
        `workload 1 c=64: jetflow throughput >= ${s}`,
        p ? j64 >= p.throughput : undefined,
        p
          ? `${j64} vs ${p.throughput} wf/s (${round((100 * j64) / p.throughput, 0)}%)`
          : 'peer not measured',
      ]);
    }
    if (keys)
      targets.push([
        'workload 1 with a concurrency key that never waits: throughput >= 0.8 of without',
        keys.met,
        `median paired ratio ${keys.medianPairedThroughputRatio} (${keys.medianThroughputKeyed} vs ${keys.medianThroughputPlain} wf/s); admission after the key frees p50 ${keys.admission.p50Ms} ms, p99 ${keys.admission.p99Ms} ms`,
      ]);
    // Issue 18: ahead of BullMQ and twice Restate at c=64, BullMQ's p50 at c=1.
    const r64 = measured('restate', 64);
    targets.push([
      'workload 1 c=64: jetflow throughput >= 2x restate',
      r64 ? j64 >= 2 * r64.throughput : undefined,
      r64 ? `${j64} vs 2 x ${r64.throughput} wf/s` : 'peer not measured',
    ]);
    for (const s of ['restate', 'bullmq']) {
      const p1 = measured(s, 1);
      targets.push([
        `workload 1 c=1: jetflow p50 <= ${s} p50`,
        p1 ? j1 <= p1.p50Ms : undefined,
        p1 ? `${j1} vs ${p1.p50Ms} ms` : 'peer not measured',
      ]);
    }
    const fan = rows.find((r) => r.workload === 'fanout');
    if (fan)
      targets.push([
        `fan-out of ${N.fanout} activities and join <= 1.5 s`,
        (fan.totalMs as number) <= 1500,
        `${fan.totalMs as number} ms`,
      ]);
    const sig = rows.find((r) => r.workload === 'signals');
    if (sig)
      targets.push([
        `signals into ${N.liveWfs} live workflows >= 10,000 events/s`,
        (sig.eventsPerSec as number) >= 10_000,
        `${sig.eventsPerSec as number} events/s`,
      ]);
    // Issue 18's baseline: 1.46 ms of engine CPU per workflow of workload 1 (c=64).
    const engineMs = round((seq[64]!.engineCpuSecPerWf as number) * 1000, 2);
    targets.push([
      'engine CPU per workflow of workload 1 (c=64) halved from 1.46 ms (<= 0.73 ms)',
      engineMs <= 0.73,
      `${engineMs} ms`,
    ]);
    targets.push([
      'efficiency >= 50% of the raw JetStream bound',
      efficiency >= 0.5,
      `${round(100 * efficiency, 1)}% (bound ${round(bound, 0)} wf/s = ${round(raw, 0)} msgs/s / ${round(seqWritesPerWf, 2)} writes/wf)`,
    ]);
    const hol = rows.find((r) => r.workload === 'head-of-line') as
      | (Row & { met: boolean; duringFlood: { p99Ms: number }; quiet: { p99Ms: number } })
      | undefined;
    if (hol)
      targets.push([
        `no head-of-line blocking: other workflows on the shard of one taking ${N.holHot} signals keep signal p99 < 100 ms`,
        hol.met,
        `p99 ${hol.duringFlood.p99Ms} ms during the flood (${hol.quiet.p99Ms} ms without it)`,
      ]);
    const idle = rows.find((r) => r.workload === 'idle');
    if (idle) {
      targets.push([
        `engine RSS for ${N.idle} idle workflows <= 300 MB`,
        (idle.engineRssMbAfter as number) <= 300,
        `${idle.engineRssMbAfter as number} MB`,
      ]);
    }
    md.push('');
    md.push('Targets:');
    for (const [what, ok, detail] of targets)
      md.push(
        `- ${ok === undefined ? 'NOT MEASURED' : ok ? 'met' : 'NOT met'}: ${what} — ${detail}`,
      );
    md.push('');
    md.push(`Total bench time: ${round((Date.now() - t0) / 1000, 0)} s`);
    const text = md.join('\n');
    process.stdout.write('\n' + text + '\n');
    writeFileSync(resolve(outDir, smoke ? 'smoke.md' : 'latest.md'), text + '\n');
    writeFileSync(
      resolve(outDir, smoke ? 'smoke.json' : 'latest.json'),
      JSON.stringify({ machine, rows, targets }, null, 2),
    );
  } finally {
    for (const c of spawnedChildren()) if (c.exitCode === null) c.kill('SIGKILL');
    await server.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${String((err as Error)?.stack ?? err)}\n`);
    process.exit(1);
  },
);
