/**
 * The concurrency-key workload, shared by `npm run bench` (bench/run.ts) and `npm run bench:keys`
 * (bench/keys.ts), on an engine and worker that run `bench/workflows.ts`:
 *
 * 1. Throughput: workload 1 (`sequential`, three activities in a row, closed loop at concurrency
 *    64) without a key vs `sequentialKeyed`, the same machine with a concurrency key that never
 *    waits (limit 1,000 over 16 keys), alternately in the same run, `rounds` rounds; the median
 *    paired ratio keyed / plain (target >= 0.8).
 * 2. Admission latency: a `gate` workflow holds its key's only slot, a second start of the key is
 *    deferred; the holder is closed and the time from the holder's final step to the deferred
 *    workflow's admission step (both journal `at`, the engine's clock) is measured, p50 / p99
 *    over `pairs` keys, 8 at a time.
 */
import type { Client } from '../src/client/index.js';
import { percentile, round, runClosedLoop } from './peers/common.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface KeysWorkloadOptions {
  client: Client;
  /** Resolves once workflow `type/id` completed (rejects or throws otherwise). */
  completed(type: string, id: string): Promise<void>;
  /** CPU seconds of the measured processes since the call, read by `delta()`. */
  cpu(): { delta(): number | undefined };
  workflows: number;
  rounds: number;
  pairs: number;
  /** Distinct id prefix (a run may call this twice on one engine). */
  tag?: string;
  log(s: string): void;
}

export interface KeysWorkloadResult {
  workflowsPerRound: number;
  rounds: number;
  pairedThroughputRatios: number[];
  medianPairedThroughputRatio: number;
  medianThroughputPlain: number;
  medianThroughputKeyed: number;
  cpuMsPerWf: { plain: number; keyed: number };
  admission: { samples: number; p50Ms: number; p99Ms: number; maxMs: number | undefined };
  met: boolean;
}

export async function keysWorkload(o: KeysWorkloadOptions): Promise<KeysWorkloadResult> {
  const { client } = o;
  const tag = o.tag ?? 'k';
  const run = (type: string, runTag: string, n: number) =>
    runClosedLoop(
      n,
      64,
      async (i) => {
        const id = `${runTag}-${i}`;
        const w = o.completed(type, id);
        // Keyed: 16 keys, each far below its limit of 1,000 (64 in flight in all).
        await client.start(type, id, { x: i, k: `k${i % 16}` });
        await w;
      },
      600_000,
    );
  const rows: { round: number; type: string; throughput: number; cpuMsPerWf: number }[] = [];
  for (let r = 1; r <= o.rounds; r++) {
    for (const type of r % 2 === 1
      ? ['sequential', 'sequentialKeyed']
      : ['sequentialKeyed', 'sequential']) {
      await run(type, `${tag}warm-${r}-${type}`, Math.min(200, o.workflows));
      const cpu = o.cpu();
      const res = await run(type, `${tag}r${r}-${type}`, o.workflows);
      const row = {
        round: r,
        type,
        throughput: round(o.workflows / (res.wallMs / 1000), 1),
        cpuMsPerWf: round(((cpu.delta() ?? NaN) * 1000) / o.workflows, 3),
      };
      rows.push(row);
      o.log(JSON.stringify(row));
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const paired = Array.from({ length: o.rounds }, (_, i) => {
    const of = (t: string) => rows.find((x) => x.round === i + 1 && x.type === t)!;
    return of('sequentialKeyed').throughput / of('sequential').throughput;
  });

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
  const samples: number[] = [];
  let nextPair = 0;
  const lane = async () => {
    while (nextPair < o.pairs) {
      const p = nextPair++;
      const k = `${tag}gate-${p}`;
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
  await Promise.all(Array.from({ length: 8 }, lane));
  const lat = [...samples].sort((a, b) => a - b);
  const ratio = median(paired);
  return {
    workflowsPerRound: o.workflows,
    rounds: o.rounds,
    pairedThroughputRatios: paired.map((x) => round(x, 3)),
    medianPairedThroughputRatio: round(ratio, 3),
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
    },
    met: ratio >= 0.8,
  };
}
