/**
 * `npm run bench:memory`: does the record cache keep an engine's memory under `cacheMaxBytes`?
 *
 * Starts a nats-server and an engine process (`bench/memory-engine.ts`, with `--expose-gc`), then
 * starts `--n` `holder` workflows whose input (order lines) makes a ~10 KB context, 256 at a
 * time. The engine's cache count bound is lifted (`cacheSize` 10,000,000), so only the byte bound
 * limits it. Reports the engine's heap (after a full GC) and RSS before, during (max of samples
 * every 2 s) and after, the cache's entries and estimated bytes, and the measured heap cost of a
 * cached entry per byte of its packed record (the factor behind `CACHE_ENTRY_FACTOR`).
 *
 * Options: --n (100000), --cache-max-bytes (67108864), --compare N (also run N workflows with
 * no byte bound; 0 = skip; default 20000: 100,000 unbounded 10 KB records do not fit a default
 * Node heap).
 */
import { parseArgs } from 'node:util';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { topologyNames } from '../src/nats/topology.js';
import { CACHE_ENTRY_FACTOR, type CacheStats } from '../src/engine/processor.js';
import { spawnTs, stopChild } from './processes.js';
import { readRssMb, round, runClosedLoop } from './peers/common.js';
import type { OrderLine } from './workflows.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '100000' },
    'cache-max-bytes': { type: 'string', default: String(64 * 1024 * 1024) },
    compare: { type: 'string', default: '20000' },
  },
});
const N = Number(values.n);
const BOUND = Number(values['cache-max-bytes']);
const COMPARE = Number(values.compare);
const SHARDS = 16;
const log = (s: string) => process.stderr.write(`bench:memory: ${s}\n`);
const MB = 1024 * 1024;

/** A ~10 KB context: 100 order lines (the record holds it twice: context and `started` input). */
function orderLines(i: number): OrderLine[] {
  return Array.from({ length: 100 }, (_, k) => ({
    sku: `sku-${String((i * 100 + k) % 1_000_000).padStart(7, '0')}`,
    qty: 1 + ((i + k) % 9),
    price: Math.round(((i * 7 + k * 13) % 10_000) + 0.99) / 100,
    note: `line ${k} of order ${i}: deliver to dock ${k % 7}, fragile ${k % 2 === 0}`,
  }));
}

interface Sample {
  heapUsed: number;
  rss: number;
  cache: CacheStats;
}

async function sample(nc: NatsConnection, prefix: string): Promise<Sample> {
  const m = await nc.request(`bench.memory.${prefix}`, '', { timeout: 30_000 });
  return JSON.parse(m.string()) as Sample;
}

async function phase(label: string, n: number, cacheMaxBytes: number) {
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const prefix = `mem${label}`;
  try {
    const engine = await spawnTs(
      'bench/memory-engine.ts',
      [server.url, prefix, String(cacheMaxBytes), '10000000'],
      'memory engine ready',
      ['--expose-gc'],
    );
    const nc = await connect({ servers: server.url, noAsyncTraces: true });
    const client = new Client(nc, { prefix, timeoutMs: 60_000 });
    try {
      const before = await sample(nc, prefix);
      let maxHeap = before.heapUsed;
      let maxRss = before.rss;
      const sampler = setInterval(() => {
        sample(nc, prefix).then(
          (s) => {
            maxHeap = Math.max(maxHeap, s.heapUsed);
            maxRss = Math.max(maxRss, s.rss);
          },
          () => undefined,
        );
      }, 2_000);
      log(`${label}: starting ${n} workflows (cacheMaxBytes ${cacheMaxBytes})`);
      const r = await runClosedLoop(
        n,
        256,
        (i) => client.start('holder', `h${i}`, { lines: orderLines(i) }).then(() => undefined),
        3_600_000,
      );
      const after = await sample(nc, prefix);
      // Then records read back from KV (decoded, no live snapshot): a signal the workflow cannot
      // take, to the oldest workflows (long evicted), loads each record and caches it.
      const loads = Math.min(n, 2 * after.cache.entries + 100);
      log(`${label}: loading ${loads} evicted records (rejected signals)`);
      await runClosedLoop(
        loads,
        256,
        (i) =>
          client.signal('holder', `h${i}`, { type: 'PING' }).then(
            () => undefined,
            () => undefined,
          ),
        3_600_000,
      );
      clearInterval(sampler);
      const loaded = await sample(nc, prefix);
      const kv = await new Kvm(nc).open(topologyNames(prefix).bucket);
      const e = await kv.get(`holder.h${n - 1}`);
      const packed = e?.value.length ?? NaN;
      const entries = after.cache.entries;
      const perEntry = entries > 0 ? (after.heapUsed - before.heapUsed) / entries : NaN;
      const row = {
        run: label,
        workflows: n,
        startsPerSec: round(n / (r.wallMs / 1000), 1),
        cacheMaxBytesMb: round(cacheMaxBytes / MB, 1),
        packedRecordBytes: packed,
        cacheEntries: entries,
        cacheEstimatedMb: round(after.cache.bytes / MB, 1),
        heapMbBefore: round(before.heapUsed / MB, 1),
        heapMbAfter: round(after.heapUsed / MB, 1),
        heapMbMaxSampled: round(Math.max(maxHeap, after.heapUsed, loaded.heapUsed) / MB, 1),
        rssMbBefore: round(before.rss / MB, 1),
        rssMbAfter: round(after.rss / MB, 1),
        rssMbMaxSampled: round(Math.max(maxRss, after.rss, loaded.rss) / MB, 1),
        rssMbProc: round(readRssMb(engine.pid!), 1),
        heapGrowthMb: round((after.heapUsed - before.heapUsed) / MB, 1),
        heapBytesPerEntry: Math.round(perEntry),
        measuredFactor: round((perEntry - 256) / packed, 2),
        loadedCacheEntries: loaded.cache.entries,
        heapMbAfterLoads: round(loaded.heapUsed / MB, 1),
        rssMbAfterLoads: round(loaded.rss / MB, 1),
        loadedHeapBytesPerEntry: Math.round(
          (loaded.heapUsed - before.heapUsed) / loaded.cache.entries,
        ),
        loadedMeasuredFactor: round(
          ((loaded.heapUsed - before.heapUsed) / loaded.cache.entries - 256) / packed,
          2,
        ),
        configuredFactor: CACHE_ENTRY_FACTOR,
      };
      process.stdout.write(JSON.stringify(row) + '\n');
      return row;
    } finally {
      await client.close();
      await nc.close();
      await stopChild(engine);
    }
  } finally {
    await server.stop();
  }
}

const bounded = await phase('bounded', N, BOUND);
const growth = bounded.heapGrowthMb;
log(
  `bounded: heap grew ${growth} MB for a ${bounded.cacheMaxBytesMb} MB bound ` +
    `(${growth <= bounded.cacheMaxBytesMb ? 'within' : 'OVER'} the bound); ` +
    `RSS ${bounded.rssMbAfter} MB after, ${bounded.rssMbMaxSampled} MB max`,
);
if (COMPARE > 0) {
  const free = await phase('unbounded', COMPARE, 2 ** 45);
  log(
    `unbounded (${COMPARE} workflows): heap grew ${free.heapGrowthMb} MB, RSS ${free.rssMbAfter} MB`,
  );
}
process.exit(0);
