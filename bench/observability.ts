/**
 * The cost of metrics and tracing (issue 16): `npm run bench -- --observability` runs workload 1
 * (sequential: start → 3 activities → completed; concurrency 64, then 1) with a fresh engine and
 * worker process per mode, in the same run, modes interleaved round by round:
 *
 * - `off`: no metrics endpoint, no tracing (the default of `jetflow engine`);
 * - `metrics`: `--metrics-port` on the engine and the worker, both scraped every 5 s;
 * - `tracing`: metrics as above, plus tracing at 100% sampling (`OTEL_TRACES_SAMPLER=always_on`)
 *   exported as OTLP http/json to a sink process that discards the spans.
 *
 * Prints one JSON line per mode and round, then the median per mode and the ratios to `off`.
 * Options: `--rounds <n>` (default 3; 1 with `--smoke`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { NatsServer } from '../test/harness/nats-server.js';
import { freePort } from '../test/harness/nats-server.js';
import { Client } from '../src/client/index.js';
import type { Notification } from '../src/contracts/wire.js';
import { spawnTs, stopChild } from './processes.js';
import { cpuSampler, percentile, round, runClosedLoop } from './peers/common.js';

export type Mode = 'off' | 'metrics' | 'tracing';
const MODES: Mode[] = ['off', 'metrics', 'tracing'];

const log = (s: string) => process.stderr.write(`bench: ${s}\n`);

/** Completion notifications of one prefix. */
function completions(nc: NatsConnection, prefix: string) {
  const waiters = new Map<string, (n: Notification) => void>();
  const seen = new Map<string, Notification>();
  const sub = nc.subscribe(`${prefix}.events.*.*`, {
    callback: (_e, m) => {
      const n = m.json<Notification>();
      if (n.type !== 'completed' && n.type !== 'failed') return;
      seen.set(n.id, n);
      waiters.get(n.id)?.(n);
    },
  });
  return {
    wait(id: string): Promise<Notification> {
      const got = seen.get(id);
      if (got) return Promise.resolve(got);
      return new Promise((ok) => waiters.set(id, (n) => (waiters.delete(id), ok(n))));
    },
    stop: () => sub.unsubscribe(),
  };
}

/** A process that accepts OTLP/HTTP posts and discards them (a collector's cost is not ours). */
async function startSink(): Promise<{ child: ChildProcess; url: string }> {
  const port = await freePort();
  const script = `require('node:http').createServer((q, s) => { q.resume(); q.on('end', () => s.writeHead(200, {'content-type': 'application/json'}).end('{}')); }).listen(${port}, '127.0.0.1', () => console.log('sink ready'));`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((ok, fail) => {
    child.stdout.on('data', (b: Buffer) => b.toString().includes('sink ready') && ok());
    child.once('exit', (code) => fail(new Error(`sink exited with ${code}`)));
  });
  return { child, url: `http://127.0.0.1:${port}` };
}

export interface ObservabilityBenchOptions {
  server: NatsServer;
  shards: number;
  root: string;
  rounds: number;
  seq64: number;
  seq1: number;
  emit: (row: Record<string, unknown> & { system: string; workload: string }) => void;
}

/** Workload 1 per mode and round; returns the markdown summary lines. */
export async function runObservabilityBench(o: ObservabilityBenchOptions): Promise<string[]> {
  const sink = await startSink();
  const nc = await connect({ servers: o.server.url });
  const rows: { mode: Mode; c: number; throughput: number; p50Ms: number; p99Ms: number }[] = [];
  try {
    for (let round_ = 1; round_ <= o.rounds; round_++) {
      // Rotate the order each round, so that no mode always runs first (or last).
      const order = MODES.map((_, i) => MODES[(i + round_ - 1) % MODES.length]!);
      for (const mode of order) {
        const prefix = `obs${round_}${mode}`;
        const enginePort = await freePort();
        const workerPort = await freePort();
        const env: Record<string, string> =
          mode === 'off'
            ? { JETFLOW_METRICS_PORT: 'off', OTEL_TRACES_EXPORTER: 'none' }
            : {
                OTEL_TRACES_EXPORTER: 'none',
                ...(mode === 'tracing'
                  ? {
                      OTEL_TRACES_EXPORTER: 'otlp',
                      OTEL_EXPORTER_OTLP_ENDPOINT: sink.url,
                      OTEL_TRACES_SAMPLER: 'always_on',
                    }
                  : {}),
              };
        log(`observability round ${round_}: ${mode}`);
        const engine = await spawnTs(
          'src/cli/main.ts',
          [
            'engine',
            '--nats-url',
            o.server.url,
            '--prefix',
            prefix,
            '--shards',
            String(o.shards),
            '--workflows',
            resolve(o.root, 'bench/workflows.ts'),
            '--log-level',
            'info',
            ...(mode === 'off' ? [] : ['--metrics-port', String(enginePort)]),
          ],
          '"engine started"',
          [],
          { ...env, OTEL_SERVICE_NAME: 'bench-engine' },
        );
        const worker = await spawnTs(
          'bench/worker.ts',
          [o.server.url, prefix],
          'worker ready',
          [],
          {
            ...env,
            OTEL_SERVICE_NAME: 'bench-worker',
            ...(mode === 'off' ? {} : { JETFLOW_METRICS_PORT: String(workerPort) }),
          },
        );
        // Prometheus' part: a scrape of both endpoints every 5 s.
        const scrapes =
          mode === 'off'
            ? undefined
            : setInterval(() => {
                for (const p of [enginePort, workerPort])
                  void fetch(`http://127.0.0.1:${p}/metrics`)
                    .then((r) => r.text())
                    .catch(() => undefined);
              }, 5_000);
        const client = new Client(nc, { prefix, timeoutMs: 60_000 });
        const done = completions(nc, prefix);
        try {
          for (const [c, count] of [
            [64, o.seq64],
            [1, o.seq1],
          ] as const) {
            await runClosedLoop(
              Math.min(100, count),
              c,
              async (i) => {
                const w = done.wait(`warm-${c}-${i}`);
                await client.start('sequential', `warm-${c}-${i}`, { x: i });
                await w;
              },
              120_000,
            );
            const cpu = cpuSampler([engine.pid!, worker.pid!]);
            const r = await runClosedLoop(
              count,
              c,
              async (i) => {
                const id = `s${c}-${i}`;
                const w = done.wait(id);
                await client.start('sequential', id, { x: i });
                const n = await w;
                if (n.type !== 'completed') throw new Error(`${id} ${n.type}`);
              },
              600_000,
            );
            const lat = [...r.latenciesMs].sort((a, b) => a - b);
            const row = {
              mode,
              c,
              throughput: round(count / (r.wallMs / 1000), 1),
              p50Ms: round(percentile(lat, 50), 2),
              p99Ms: round(percentile(lat, 99), 2),
            };
            rows.push(row);
            o.emit({
              system: 'jetflow',
              workload: 'sequential-observability',
              round: round_,
              concurrency: c,
              workflows: count,
              ...row,
              cpuSecPerWf: round((cpu.delta() ?? NaN) / count, 5),
            });
          }
        } finally {
          clearInterval(scrapes);
          done.stop();
          await stopChild(worker);
          await stopChild(engine);
        }
      }
    }
  } finally {
    await nc.close();
    sink.child.kill('SIGKILL');
  }
  const median = (xs: number[]) =>
    percentile(
      [...xs].sort((a, b) => a - b),
      50,
    );
  const md = [
    '| mode | concurrency | throughput wf/s (median) | vs off | p50 ms (median) | vs off |',
    '|---|---|---|---|---|---|',
  ];
  for (const c of [64, 1]) {
    const of = (m: Mode) => rows.filter((r) => r.mode === m && r.c === c);
    const base = {
      t: median(of('off').map((r) => r.throughput)),
      p: median(of('off').map((r) => r.p50Ms)),
    };
    for (const m of MODES) {
      const t = median(of(m).map((r) => r.throughput));
      const p = median(of(m).map((r) => r.p50Ms));
      md.push(
        `| ${m} | ${c} | ${round(t, 1)} | ${round((100 * t) / base.t, 1)}% | ${round(p, 2)} | ${round((100 * p) / base.p, 1)}% |`,
      );
    }
  }
  md.push('');
  md.push(
    `Rounds: ${o.rounds} (modes interleaved); workload 1 at c=64 (${o.seq64}) and c=1 (${o.seq1}).`,
  );
  return md;
}
