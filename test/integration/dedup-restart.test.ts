/**
 * A client's `Nats-Msg-Id` keeps a retried signal from being applied twice, also across a
 * nats-server restart, when the work-queue stream no longer holds the message and the server has
 * forgotten its id (core review H2, experiment E4).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startEngine, startServer, uniquePrefix } from '../harness/jetflow.js';
import type { NatsServer } from '../harness/nats-server.js';
import { Client } from '../../src/client/index.js';

let server: NatsServer;
let nc: NatsConnection;
beforeAll(async () => {
  server = await startServer();
  nc = await connect({ servers: server.url });
});
afterAll(async () => {
  await nc?.close();
  await server?.stop();
});

describe('client msg id dedup', () => {
  it('H2: a signal retried with the same Nats-Msg-Id after a nats-server restart is a duplicate', async () => {
    const prefix = uniquePrefix();
    let engine = await startEngine(server.url, prefix);
    let client = new Client(nc, { prefix });
    await client.start('counter', 'x');
    const first = await client.signal('counter', 'x', { type: 'SIG', n: 1 }, { msgId: 'm1' });
    expect(first.step).toBe(1);
    const again = await client.signal('counter', 'x', { type: 'SIG', n: 1 }, { msgId: 'm1' });
    expect(again.duplicate).toBe(true);
    await engine.close();
    await nc.close();
    await server.restart();
    nc = await connect({ servers: server.url });
    client = new Client(nc, { prefix });
    engine = await startEngine(server.url, prefix);
    try {
      const retry = await client.signal('counter', 'x', { type: 'SIG', n: 1 }, { msgId: 'm1' });
      expect(retry).toMatchObject({ id: 'x', type: 'counter', duplicate: true, step: 1 });
      // A new id is a new signal; a cancel retried with its id is a duplicate too.
      const next = await client.signal('counter', 'x', { type: 'SIG', n: 2 }, { msgId: 'm2' });
      expect(next.step).toBe(2);
      const q = await client.query('counter', 'x');
      expect((q.context as { seq: number[] }).seq).toEqual([1, 2]);
    } finally {
      await engine.close();
    }
  });

  it('H2: the record remembers a bounded number of ids (msgIdMemory), oldest first out', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(server.url, prefix, { msgIdMemory: 3 });
    const client = new Client(nc, { prefix });
    try {
      await client.start('counter', 'b');
      for (let i = 1; i <= 5; i++) {
        await client.signal('counter', 'b', { type: 'SIG', n: i }, { msgId: `k${i}` });
      }
      const { Kvm } = await import('@nats-io/kv');
      const { topologyNames } = await import('../../src/nats/topology.js');
      const { createKvRecordStore } = await import('../../src/nats/store.js');
      const { msgIdKey } = await import('../../src/engine/step.js');
      const store = createKvRecordStore(await new Kvm(nc).open(topologyNames(prefix).bucket));
      const rec = (await store.get('counter', 'b'))!.record;
      expect(rec.msgIds).toEqual(['k3', 'k4', 'k5'].map((k) => msgIdKey('signal', k)));
    } finally {
      await engine.close();
    }
  });
});
