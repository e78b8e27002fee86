/**
 * Stored data and engine memory stay bounded (core review M8): finished records expire after
 * `finishedRetentionMs`, the events stream has a byte limit, the record cache is bounded by
 * bytes, and the gateway works on at most `gatewayMaxInFlight` requests at once.
 */
import { describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { startEngine, TEST_SHARDS, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { ENGINE_DEFAULTS } from '../../src/config.js';
import { ensureTopology, topologyNames } from '../../src/nats/topology.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import { ErrorCode } from '../../src/errors.js';

const env = useServer();

/** Resolves once `f()` is true, or fails after `ms` (a bound, not a measurement). */
async function within(ms: number, f: () => Promise<boolean>): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`condition not reached within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('retention of finished records', () => {
  it('finished records older than the configured age are gone; running ones stay', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { finishedRetentionMs: 2_000 });
    try {
      const client = new Client(env.nc, { prefix });
      const names = topologyNames(prefix);
      const jsm = await jetstreamManager(env.nc);
      expect((await jsm.streams.info(`KV_${names.bucket}`)).config.allow_msg_ttl).toBe(true);
      const store = createKvRecordStore(await new Kvm(env.nc).open(names.bucket));

      await client.start('counter', 'done1', { label: 'first' });
      await client.signal('counter', 'done1', { type: 'FINISH' });
      await client.start('counter', 'cancel1');
      await client.cancel('counter', 'cancel1', 'no longer needed');
      await client.start('counter', 'live1');
      await client.signal('counter', 'live1', { type: 'SIG', n: 1 });
      expect((await store.get('counter', 'done1'))?.record.status).toBe('completed');

      // The server's TTL has a 1 s resolution; 10 s bounds it generously.
      await within(10_000, async () => (await store.get('counter', 'done1')) === undefined);
      await within(10_000, async () => (await store.get('counter', 'cancel1')) === undefined);
      const live = await store.get('counter', 'live1');
      expect(live?.record).toMatchObject({ status: 'running', step: 1 });

      // The id is free again: a query and a signal find nothing, a start creates a new workflow
      // (also on this engine, which cached the finished record).
      await expect(client.query('counter', 'done1')).rejects.toMatchObject({
        code: ErrorCode.NotFound,
      });
      await expect(client.signal('counter', 'done1', { type: 'SIG', n: 2 })).rejects.toThrow(
        /does not exist/,
      );
      const again = await client.start('counter', 'done1', { label: 'second' });
      expect(again.created).toBe(true);
      expect((await client.query('counter', 'done1')).context).toMatchObject({
        label: 'second',
        seq: [],
      });
    } finally {
      await engine.close();
    }
  });

  it('0 keeps finished records', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { finishedRetentionMs: 0 });
    try {
      const client = new Client(env.nc, { prefix });
      await client.start('counter', 'kept');
      await client.signal('counter', 'kept', { type: 'FINISH' });
      const jsm = await jetstreamManager(env.nc);
      const m = await jsm.streams.getMessage(`KV_${topologyNames(prefix).bucket}`, {
        last_by_subj: `$KV.${topologyNames(prefix).bucket}.counter.kept`,
      });
      expect(m?.header.get('Nats-TTL')).toBe('');
    } finally {
      await engine.close();
    }
  });

  it('an existing bucket without allow_msg_ttl gets it', async () => {
    const prefix = uniquePrefix();
    const names = topologyNames(prefix);
    await new Kvm(env.nc).create(names.bucket, { history: 1, allow_direct: true });
    const jsm = await jetstreamManager(env.nc);
    expect((await jsm.streams.info(`KV_${names.bucket}`)).config.allow_msg_ttl).toBeFalsy();
    await ensureTopology(env.nc, jsm, { ...ENGINE_DEFAULTS, prefix, shards: TEST_SHARDS });
    const cfg = (await jsm.streams.info(`KV_${names.bucket}`)).config;
    expect(cfg.allow_msg_ttl).toBe(true);
    expect(cfg.allow_direct).toBe(false);
  });
});

describe('events stream', () => {
  it('carries the byte limit and discards the oldest', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const o = { ...ENGINE_DEFAULTS, prefix, shards: TEST_SHARDS, eventsMaxBytes: 8 * 1024 * 1024 };
    await ensureTopology(env.nc, jsm, o);
    const cfg = (await jsm.streams.info(topologyNames(prefix).eventsStream)).config;
    expect(cfg.max_bytes).toBe(8 * 1024 * 1024);
    expect(cfg.discard).toBe('old');
    // An existing stream is brought in line.
    await ensureTopology(env.nc, jsm, { ...o, eventsMaxBytes: 16 * 1024 * 1024 });
    expect((await jsm.streams.info(topologyNames(prefix).eventsStream)).config.max_bytes).toBe(
      16 * 1024 * 1024,
    );
  });
});

describe('record cache', () => {
  it('evicts by size: the estimated bytes stay under cacheMaxBytes', async () => {
    const prefix = uniquePrefix();
    const cacheMaxBytes = 200_000;
    const engine = await startEngine(env.server.url, prefix, { cacheMaxBytes, cacheSize: 10_000 });
    try {
      const client = new Client(env.nc, { prefix });
      const label = 'x'.repeat(10_000); // a ~10 KB context
      for (let i = 0; i < 40; i++) {
        await client.start('counter', `big${i}`, { label });
        const s = engine.processor.cacheStats();
        expect(s.bytes).toBeLessThanOrEqual(cacheMaxBytes);
      }
      const s = engine.processor.cacheStats();
      expect(s.maxBytes).toBe(cacheMaxBytes);
      expect(s.entries).toBeGreaterThan(0);
      expect(s.entries).toBeLessThan(40);
      // Evicted records are read from the store again.
      for (let i = 0; i < 40; i++) {
        expect((await client.signal('counter', `big${i}`, { type: 'SIG', n: i })).step).toBe(1);
      }
      expect(engine.processor.cacheStats().bytes).toBeLessThanOrEqual(cacheMaxBytes);
    } finally {
      await engine.close();
    }
  });
});

describe('gateway', () => {
  it('works on at most gatewayMaxInFlight requests; the others wait and succeed', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { gatewayMaxInFlight: 1 });
    try {
      const client = new Client(env.nc, { prefix });
      const starts = await Promise.all(
        Array.from({ length: 100 }, (_, i) => client.start('counter', `g${i}`)),
      );
      expect(starts.every((s) => s.created)).toBe(true);
      const queries = await Promise.all(
        Array.from({ length: 100 }, (_, i) => client.query('counter', `g${i}`)),
      );
      expect(queries.every((q) => q.status === 'running')).toBe(true);
      const st = engine.gatewayStats;
      expect(st.inFlightHigh).toBe(1);
      expect(st.overloaded).toBe(0);
      expect(st.inFlight).toBe(0);
      expect(st.waiting).toBe(0);
    } finally {
      await engine.close();
    }
  });

  it('waiting requests take turns by workflow: a burst to one does not hold the others back', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { gatewayMaxInFlight: 1 });
    try {
      const client = new Client(env.nc, { prefix });
      await client.start('counter', 'hot');
      await client.start('counter', 'cold');
      const done: string[] = [];
      // 200 signals to one workflow sent at once, then one to another: with a single slot the
      // cold one waits for one turn of the hot workflow, not for its 199 waiting requests.
      const hot = Array.from({ length: 200 }, (_, n) =>
        client.signal('counter', 'hot', { type: 'SIG', n }).then(() => done.push(`hot${n}`)),
      );
      const cold = client.signal('counter', 'cold', { type: 'SIG', n: 0 }).then(() => {
        done.push('cold');
      });
      await Promise.all([...hot, cold]);
      expect(done.indexOf('cold')).toBeLessThan(5);
      // One workflow's requests keep their order: applied in the order they were sent.
      const q = await client.query('counter', 'hot');
      expect((q.context as { seq: number[] }).seq).toEqual(
        Array.from({ length: 200 }, (_, n) => n),
      );
      expect(engine.gatewayStats.waiting).toBe(0);
    } finally {
      await engine.close();
    }
  });
});
