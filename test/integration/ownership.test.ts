/**
 * Shard ownership checks that need only one server: an engine refuses to start with a shard
 * count other than the server's partition count or the inbox stream's (L3), and a shard
 * consumer whose message iterator ends is restarted, so a shard advertised as held is consumed
 * (L5).
 */
import { describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { startEngine, TEST_SHARDS, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { shardOf } from '../../src/contracts/subjects.js';
import { ensureTopology, topologyNames } from '../../src/nats/topology.js';
import { compileEngineConfig } from '../../src/config.js';
import { JetflowError } from '../../src/errors.js';

const env = useServer();

async function startError(p: Promise<unknown>): Promise<JetflowError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(JetflowError);
  return err as JetflowError;
}

describe('shard count (L3)', () => {
  it('an engine configured with a shard count other than the server partition() refuses to start and creates nothing', async () => {
    const prefix = uniquePrefix();
    const err = await startError(startEngine(env.server.url, prefix, { shards: 8 }));
    expect(err.code).toBe('topology');
    expect(err.message).toContain(`partitions the inbox into ${TEST_SHARDS} shards`);
    expect(err.message).toContain('configured with 8');
    const jsm = await jetstreamManager(env.nc);
    const streams = await jsm.streams.names().next();
    expect(streams).not.toContain(topologyNames(prefix).inboxStream);
  });

  it('an engine whose shard count differs from the inbox stream it finds refuses to start and leaves the stream as it was', async () => {
    const prefix = uniquePrefix();
    const first = await startEngine(env.server.url, prefix);
    await first.close();
    const jsm = await jetstreamManager(env.nc);
    const err = await startError(
      ensureTopology(env.nc, jsm, compileEngineConfig({ prefix, shards: 8 })),
    );
    expect(err.code).toBe('topology');
    expect(err.message).toContain(`the inbox stream has ${TEST_SHARDS} shards`);
    const si = await jsm.streams.info(topologyNames(prefix).inboxStream);
    expect(si.config.subjects.filter((s) => /\.in\.\d+\.>$/.test(s))).toHaveLength(TEST_SHARDS);
  });
});

describe('supervised shard consumers (L5)', () => {
  it('a shard whose consumer was deleted under a running engine is consumed again', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    try {
      const client = new Client(env.nc, { prefix, timeoutMs: 5_000 });
      await client.start('counter', 'c1');
      const shard = shardOf('counter', 'c1', TEST_SHARDS);
      const names = topologyNames(prefix);
      const jsm = await jetstreamManager(env.nc);
      await jsm.consumers.delete(names.inboxStream, names.shardConsumer(shard));
      // A signal sent while the consumer is gone waits in the stream; it must be applied once
      // the engine has re-created the consumer and consumes it again.
      const slow = new Client(env.nc, { prefix, timeoutMs: 30_000 });
      const reply = await slow.signal('counter', 'c1', { type: 'SIG', n: 7 });
      expect(reply.step).toBe(1);
      const q = await client.query('counter', 'c1');
      expect((q.context as { seq: number[] }).seq).toEqual([7]);
    } finally {
      await engine.close();
    }
  }, 60_000);
});
