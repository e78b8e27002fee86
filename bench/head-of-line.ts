/**
 * Head-of-line blocking (issue 18): while one workflow takes `hot` signals as fast as they come
 * (`inFlight` requests outstanding at once; `npm run bench` sends all of them at once), other workflows on its shard take signals at a
 * fixed rate (one every 10 ms, open loop) and their signal latency (request → the engine's reply after the step) is
 * measured, beside the same measure with the hot workflow idle. Run by `npm run bench` (`--only
 * hol`); the target is a p99 under 100 ms during the flood.
 */
import type { Client } from '../src/client/index.js';
import { shardOf } from '../src/contracts/subjects.js';
import { percentile, round, runClosedLoop } from './peers/common.js';

export interface HeadOfLineOptions {
  client: Client;
  /**
   * The client the other workflows' signals are sent with, on a connection of its own: they come
   * from other services than the flood. On the flood's own connection they would queue behind
   * its 5,000 requests in that connection's socket before any engine saw them.
   */
  probeClient?: Client;
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
/** One probe signal into the other workflows every this many ms. */
const PROBE_EVERY_MS = 10;

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
  const tick = (id: string, c: Client = o.client) =>
    c.signal(TYPE, id, { type: 'TICK' }).then(() => undefined);
  const probeClient = o.probeClient ?? o.client;
  const sorted = (xs: number[]) => [...xs].sort((a, b) => a - b);

  // The others' signals are sent on a fixed schedule, one every PROBE_EVERY_MS whatever is
  // outstanding (open loop): a probe blocked behind the hot workflow does not hold the next ones
  // back, so a stall shows in every probe it delays, not in one sample.
  const probes = async (until: () => boolean, max = Infinity): Promise<number[]> => {
    const out: Promise<number>[] = [];
    for (let i = 0; until() && i < max; i++) {
      const s = performance.now();
      out.push(tick(others[i % others.length]!, probeClient).then(() => performance.now() - s));
      await new Promise((r) => setTimeout(r, PROBE_EVERY_MS));
    }
    return Promise.all(out);
  };
  // Baseline: the shard's other workflows, the hot one idle.
  const q = sorted(await probes(() => true, o.quiet));

  // The flood, and the same probes of the others until it ends.
  let flooding = true;
  let floodMs = 0;
  const t0 = performance.now();
  const flood = runClosedLoop(o.hot, o.inFlight, () => tick(hotId), 600_000).finally(() => {
    flooding = false;
    floodMs = performance.now() - t0;
  });
  const [, during] = await Promise.all([flood, probes(() => flooding)]);
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
