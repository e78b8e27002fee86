/** Scheduled and recurring starts on the server's message schedules. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { NatsServer } from '../harness/nats-server.js';
import { startEngine, startServer, uniquePrefix } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import type { Engine } from '../../src/host/engine.js';
import type { Notification } from '../../src/contracts/wire.js';

let server: NatsServer;
let nc: NatsConnection;
let engine: Engine;
let client: Client;
const prefix = uniquePrefix();
const starts: { id: string; at: number }[] = [];

beforeAll(async () => {
  server = await startServer();
  nc = await connect({ servers: server.url });
  engine = await startEngine(server.url, prefix);
  client = new Client(nc, { prefix });
  nc.subscribe(`${prefix}.events.counter.*`, {
    callback: (_e, m) => {
      const n = m.json<Notification>();
      if (n.type === 'started') starts.push({ id: n.id, at: Date.parse(n.at) });
    },
  });
});
afterAll(async () => {
  await engine?.close();
  await nc?.close();
  await server?.stop();
});

describe('schedules', () => {
  it('a workflow scheduled to start at a time starts then, not before', async () => {
    const at = new Date(Date.now() + 2000);
    await client.schedules.create({
      name: 'once',
      spec: { at },
      action: {
        kind: 'start',
        workflowType: 'counter',
        workflowId: 'scheduled-1',
        input: { label: 'from schedule' },
      },
    });
    await new Promise((r) => setTimeout(r, 1000));
    await expect(client.query('counter', 'scheduled-1')).rejects.toThrow(/does not exist/);
    const deadline = Date.now() + 10_000;
    while (!starts.some((s) => s.id === 'scheduled-1') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    const s = starts.find((x) => x.id === 'scheduled-1');
    expect(s).toBeDefined();
    expect(s!.at).toBeGreaterThanOrEqual(at.getTime());
    expect((await client.query('counter', 'scheduled-1')).context).toMatchObject({
      label: 'from schedule',
    });
  });

  it('a recurring schedule starts a new workflow each period; pausing and deleting stop them', async () => {
    await client.schedules.create({
      name: 'every2s',
      spec: { every: '2s' },
      action: {
        kind: 'start',
        workflowType: 'counter',
        idPrefix: 'rec',
        input: { label: 'recurring' },
      },
    });
    expect((await client.schedules.list()).map((d) => d.name)).toEqual(['every2s', 'once']);
    const recurring = () => starts.filter((s) => s.id.startsWith('rec-'));
    const deadline = Date.now() + 15_000;
    while (recurring().length < 3 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    const three = recurring().slice(0, 3);
    expect(new Set(three.map((s) => s.id)).size).toBe(3);
    const gaps = three.slice(1).map((s, i) => s.at - three[i]!.at);
    for (const g of gaps) {
      expect(g).toBeGreaterThan(1500);
      expect(g).toBeLessThan(3000);
    }

    await client.schedules.pause('every2s');
    expect((await client.schedules.get('every2s'))?.paused).toBe(true);
    const afterPause = recurring().length;
    await new Promise((r) => setTimeout(r, 4500));
    expect(recurring().length).toBeLessThanOrEqual(afterPause + 1); // a tick already in flight

    await client.schedules.resume('every2s');
    const resumedFrom = recurring().length;
    const d2 = Date.now() + 10_000;
    while (recurring().length <= resumedFrom && Date.now() < d2)
      await new Promise((r) => setTimeout(r, 100));
    expect(recurring().length).toBeGreaterThan(resumedFrom);

    await client.schedules.delete('every2s');
    expect(await client.schedules.get('every2s')).toBeUndefined();
    const afterDelete = recurring().length;
    await new Promise((r) => setTimeout(r, 4500));
    expect(recurring().length).toBeLessThanOrEqual(afterDelete + 1);
    console.log('recurring start gaps (ms)', gaps);
  }, 60_000);

  it('rejects malformed schedules with a clear error', async () => {
    await expect(
      client.schedules.create({
        name: 'bad.name',
        spec: { every: '1s' },
        action: { kind: 'start', workflowType: 'counter' },
      }),
    ).rejects.toThrow(/name must be/);
    await expect(
      client.schedules.create({
        name: 'badcron',
        spec: { cron: '* *' },
        action: { kind: 'start', workflowType: 'counter' },
      }),
    ).rejects.toThrow(/6 fields/);
    await expect(client.schedules.pause('nope')).rejects.toThrow(/no schedule named/);
  });
});
