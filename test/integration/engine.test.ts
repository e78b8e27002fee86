/** The engine against a real nats-server: idempotency, dedup, order, concurrency, cancel, versions. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headers } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';
import { Client } from '../../src/client/index.js';
import { topologyNames } from '../../src/nats/topology.js';
import { counter, versionedV1, versionedV2 } from '../fixtures/workflows.js';
import type { Notification } from '../../src/contracts/wire.js';

const env = useServer();

async function inboxMessages(prefix: string): Promise<number> {
  const jsm = await jetstreamManager(env.nc);
  return (await jsm.streams.info(topologyNames(prefix).inboxStream)).state.messages;
}

describe('engine semantics', () => {
  const prefix = uniquePrefix();
  let engine: Engine;
  let client: Client;
  beforeAll(async () => {
    engine = await startEngine(env.server.url, prefix);
    client = new Client(env.nc, { prefix });
  });
  afterAll(async () => {
    await engine?.close();
  });

  it('starting the same type/id twice creates one workflow', async () => {
    const [a, b] = await Promise.all([
      client.start('counter', 'dup', { label: 'a' }),
      client.start('counter', 'dup', { label: 'b' }),
    ]);
    expect([a.created, b.created].sort()).toEqual([false, true]);
    const again = await client.start('counter', 'dup', { label: 'c' });
    expect(again).toEqual({ id: 'dup', type: 'counter', version: 1, created: false });
    const q = await client.query('counter', 'dup');
    expect(q.step).toBe(0);
    // One `started` notification only.
    const seen: Notification[] = [];
    await client.signal('counter', 'dup', { type: 'FINISH' });
    for await (const n of client.watch('counter', 'dup')) seen.push(n);
    expect(seen.filter((n) => n.type === 'started')).toHaveLength(1);
    expect(seen.map((n) => n.type)).toEqual(['started', 'completed']);
  });

  it('applies a signal sent twice with one Nats-Msg-Id once', async () => {
    await client.start('counter', 'dedup');
    const first = await client.signal('counter', 'dedup', { type: 'SIG', n: 1 }, { msgId: 'once' });
    const second = await client.signal(
      'counter',
      'dedup',
      { type: 'SIG', n: 1 },
      { msgId: 'once' },
    );
    expect(first.step).toBe(1);
    expect(second.duplicate).toBe(true);
    await client.signal('counter', 'dedup', { type: 'SIG', n: 2 }, { msgId: 'other' });
    const q = await client.query('counter', 'dedup');
    expect(q.context).toMatchObject({ seq: [1, 2] });
    expect(q.step).toBe(2);
  });

  it('applies 1,000 signals to one workflow in order', async () => {
    await client.start('counter', 'ordered');
    // Fire-and-forget publishes from one connection, then one request to fence them.
    const h = headers();
    h.set('Content-Type', 'application/json');
    for (let i = 0; i < 1000; i++) {
      env.nc.publish(`${prefix}.signal.counter.ordered`, JSON.stringify({ type: 'SIG', n: i }), {
        headers: h,
      });
    }
    await client.signal('counter', 'ordered', { type: 'FINISH' });
    const out = await client.result<{ seq: number[] }>('counter', 'ordered');
    expect(out.seq).toEqual(Array.from({ length: 1000 }, (_, i) => i));
  });

  it('200 workflows signalled concurrently all end with the right state', async () => {
    const ids = Array.from({ length: 200 }, (_, i) => `conc-${i}`);
    await Promise.all(ids.map((id) => client.start('counter', id, { label: id })));
    await Promise.all(
      ids.map(async (id, i) => {
        for (let n = 0; n < 5; n++)
          await client.signal('counter', id, { type: 'SIG', n: n * 1000 + i });
        await client.signal('counter', id, { type: 'FINISH' });
      }),
    );
    const outs = await Promise.all(
      ids.map((id) => client.result<{ seq: number[]; label: string }>('counter', id)),
    );
    outs.forEach((o, i) => {
      expect(o.label).toBe(ids[i]);
      expect(o.seq).toEqual([0, 1000, 2000, 3000, 4000].map((x) => x + i));
    });
    expect(await inboxMessages(prefix)).toBe(0);
  });

  it('cancel ends a running workflow as canceled and result() reports it', async () => {
    await client.start('counter', 'cancel-me');
    const r = await client.cancel('counter', 'cancel-me', 'no longer needed');
    expect(r.status).toBe('canceled');
    await expect(client.result('counter', 'cancel-me')).rejects.toThrow(/canceled/);
    const seen: string[] = [];
    for await (const n of client.watch('counter', 'cancel-me')) seen.push(n.type);
    expect(seen).toEqual(['started', 'canceled']);
  });
});

describe('version pinning', () => {
  const prefix = uniquePrefix();
  it('workflows started on v1 finish on v1 after v2 is registered; new starts get v2', async () => {
    const client = new Client(env.nc, { prefix });
    const e1 = await startEngine(env.server.url, prefix, { workflows: [counter, versionedV1] });
    const old = await client.start('versioned', 'old');
    expect(old.version).toBe(1);
    await e1.close();

    const e2 = await startEngine(env.server.url, prefix, {
      workflows: [counter, versionedV1, versionedV2],
    });
    try {
      const fresh = await client.start('versioned', 'new');
      expect(fresh.version).toBe(2);
      expect((await client.query('versioned', 'old')).version).toBe(1);
      await client.signal('versioned', 'old', { type: 'GO' });
      await client.signal('versioned', 'new', { type: 'GO' });
      expect(await client.result('versioned', 'old')).toEqual({ finishedOn: 1 });
      expect(await client.result('versioned', 'new')).toEqual({ finishedOn: 2 });
    } finally {
      await e2.close();
    }
  });
});
