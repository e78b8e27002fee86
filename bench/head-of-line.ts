/**
 * Head-of-line blocking (issue 18): while one workflow takes `hot` signals as fast as they come
 * (`inFlight` requests outstanding at once), other workflows on its shard take signals at a
 * modest rate and their signal latency (request → the engine's reply after the step) is
 * measured, beside the same measure with the hot workflow idle. Run by `npm run bench` (`--only
 * hol`); the target is a p99 under 100 ms during the flood.
 */
import type { Client } from '../src/client/index.js';
import { shardOf } from '../src/contracts/subjects.js';
import { percentile, round, runClosedLoop } from './peers/common.js';

export interface HeadOfLineOptions {
  client: Client;
  shards: number;
  /** Signals into the hot workflow (issue 18: 5,000). */
  hot: number;
  /** Signals into the other workflows of the shard, with the hot one idle (the baseline). */
  quiet: number;
  /** Other workflows on the hot workflow's shard. */
  others: number;
  /** Outstanding signal requests into the hot workflow. */
  inFlight: number;
  log: (s: string) => void;
}

export interface HeadOfLineResult {
  shard: number;
  hotSignals: number;
  hotSignalsPerSec: number;
  otherWorkflows: number;
  quiet: { signals: number; p50Ms: number; p99Ms: number };
  duringFlood: { signals: number; p50Ms: number; p99Ms: number; maxMs: number };
  target: string;
  met: boolean;
}

const TYPE = 'live';

export async function headOfLine(o: HeadOfLineOptions): Promise<HeadOfLineResult> {
  const tag = `hol${Date.now().toString(36)}`;
  const hotId = `${tag}-hot`;
  const shard = shardOf(TYPE, hotId, o.shards);
  const others: string[] = [];
  for (let i = 0; others.length < o.others; i++) {
    const id = `${tag}-o${i}`;
    if (shardOf(TYPE, id, o.shards) === shard) others.push(id);
  }
  for (const id of [hotId, ...others]) await o.client.start(TYPE, id);
  const tick = (id: string) => o.client.signal(TYPE, id, { type: 'TICK' }).then(() => undefined);
  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);

  // Baseline: the shard's other workflows, the hot one idle; two requests at a time.
  const quiet = await runClosedLoop(o.quiet, 2, (i) => tick(others[i % others.length]!), 120_000);
  const q = sorted(quiet.latenciesMs);

  // The flood, and the same modest load on the others until it ends.
  let flooding = true;
  const during: number[] = [];
  const t0 = performance.now();
  const flood = runClosedLoop(o.hot, o.inFlight, () => tick(hotId), 600_000).finally(() => {
    flooding = false;
  });
  const probe = async (slot: number) => {
    for (let i = slot; flooding; i += 2) {
      const s = performance.now();
      await tick(others[i % others.length]!);
      during.push(performance.now() - s);
    }
  };
  await Promise.all([flood, probe(0), probe(1)]);
  const floodMs = performance.now() - t0;
  const d = sorted(during);
  const p99 = percentile(d, 99);
  o.log(`head-of-line: ${o.hot} signals into one workflow in ${round(floodMs, 0)} ms`);
  return {
    shard,
    hotSignals: o.hot,
    hotSignalsPerSec: round(o.hot / (floodMs / 1000), 1),
    otherWorkflows: others.length,
    quiet: {
      signals: q.length,
      p50Ms: round(percentile(q, 50), 2),
      p99Ms: round(percentile(q, 99), 2),
    },
    duringFlood: {
      signals: d.length,
      p50Ms: round(percentile(d, 50), 2),
      p99Ms: round(p99, 2),
      maxMs: round(d.at(-1) ?? NaN, 2),
    },
    target: "other workflows' signal p99 < 100 ms on the hot workflow's shard",
    met: d.length > 0 && p99 < 100,
  };
}
