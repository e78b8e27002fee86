/**
 * Priority for starts (issue 22, item 3), against a real nats-server and an in-process engine:
 * a concurrency key's waiters are admitted by priority level (a start's own `priority`, or the
 * definition's), with aging after `concurrency.maxWaitMs`, round robin across fairness keys;
 * positions, `jetflow keys` and `why` tell that order; a workflow's level is its activities'
 * default. And the bound on a key's waiters: its one record under the server's `max_payload`.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { JetflowError } from '../../src/errors.js';
import { workflows } from '../fixtures/workflows.js';
import { Kvm } from '@nats-io/kv';
import { pack, unpack } from '../../src/contracts/codec.js';
import { keyTokenOf } from '../../src/engine/admission.js';
import type { KeyRecord } from '../../src/contracts/wire.js';
import { topologyNames } from '../../src/nats/topology.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];

afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

async function setup() {
  const prefix = uniquePrefix();
  const engine = await startEngine(env.server.url, prefix, { workflows });
  open.push(engine);
  const client = new Client(env.nc, { prefix });
  return { client, prefix };
}

/**
 * Finish the holder, then each workflow it hands the slot to, in turn: the order in which the
 * waiters `ids` were admitted.
 */
async function admissionOrder(client: Client, holder: string, ids: string[]): Promise<string[]> {
  const order: string[] = [];
  let current = holder;
  const left = new Set(ids);
  while (left.size > 0) {
    await client.signal('keyprio', current, { type: 'FINISH' });
    current = await until(`the next of ${[...left].join(',')} admitted`, async () => {
      const running: string[] = [];
      for (const id of left) {
        if ((await client.query('keyprio', id)).status === 'running') running.push(id);
      }
      expect(running.length).toBeLessThanOrEqual(1); // limit 1
      return running[0];
    });
    left.delete(current);
    order.push(current);
  }
  await client.signal('keyprio', current, { type: 'FINISH' });
  return order;
}

describe('priority for starts: the waiters of a concurrency key', () => {
  it('are admitted by level: a start’s own priority and the definition’s; positions, keys and why tell it', async () => {
    const { client } = await setup();
    await client.start('keyprio', 'h', { key: 'k' });
    for (const id of ['low1', 'low2', 'low3']) {
      expect(await client.start('keyprio', id, { key: 'k', priority: 5 })).toMatchObject({
        deferred: true,
      });
    }
    expect(await client.start('keyprio', 'mid', { key: 'k' })).toMatchObject({ position: 1 });
    // The start's own priority (1) over the definition's (input.priority 5).
    expect(
      await client.start('keyprio', 'urgent', { key: 'k', priority: 5 }, { priority: 1 }),
    ).toMatchObject({ deferred: true, position: 1 });
    expect((await client.query('keyprio', 'low1')).deferred).toMatchObject({ position: 3 });
    const [rec] = await client.keys('keyprio', 'k');
    expect(rec!.waiters.map((w) => `${w.id}:${w.priority ?? 3}`)).toEqual([
      'urgent:1',
      'mid:3',
      'low1:5',
      'low2:5',
      'low3:5',
    ]);
    const why = await client.why('keyprio', 'low2');
    expect(why.waits[0]!.what).toMatch(/position 4 of 5 waiting, priority 5/);
    expect(await admissionOrder(client, 'h', ['low1', 'low2', 'low3', 'mid', 'urgent'])).toEqual([
      'urgent',
      'mid',
      'low1',
      'low2',
      'low3',
    ]);
    expect(await client.keys('keyprio')).toEqual([]);
  });

  it('ages: a waiter that has waited maxWaitMs goes before a higher level', async () => {
    const { client } = await setup();
    await client.start('keyprio', 'h', { key: 'k' });
    await client.start('keyprio', 'old', { key: 'k', priority: 5 });
    await new Promise((r) => setTimeout(r, 1_600)); // keyprio's maxWaitMs is 1.5 s
    expect(await client.start('keyprio', 'new', { key: 'k', priority: 1 })).toMatchObject({
      position: 2,
    });
    expect(await admissionOrder(client, 'h', ['old', 'new'])).toEqual(['old', 'new']);
  });

  it('is fair across fairness keys within a level (round robin), FIFO within one', async () => {
    const { client } = await setup();
    await client.start('keyprio', 'h', { key: 'k' });
    const a = Array.from({ length: 5 }, (_, i) => `a${i}`);
    for (const id of a) await client.start('keyprio', id, { key: 'k', tenant: 'A' });
    expect(await client.start('keyprio', 'b0', { key: 'k', tenant: 'B' })).toMatchObject({
      position: 2,
    });
    await client.start('keyprio', 'b1', { key: 'k', tenant: 'B' });
    expect(await admissionOrder(client, 'h', [...a, 'b0', 'b1'])).toEqual([
      'a0',
      'b0',
      'a1',
      'b1',
      'a2',
      'a3',
      'a4',
    ]);
  });

  it("a workflow's level is its activities' default; an activity's own priority wins", async () => {
    const { client } = await setup();
    const levels = async (id: string) => {
      const q = await until(`${id}'s tasks`, async () => {
        const r = await client.query('keyprioWork', id);
        return (r.waiting?.tasks.length ?? 0) === 2 ? r : undefined;
      });
      return Object.fromEntries(q.waiting!.tasks.map((t) => [t.actorId, t.priority ?? 3]));
    };
    await client.start('keyprioWork', 'first', { key: 'x' }, { priority: 1 });
    await client.start('keyprioWork', 'plain', { key: 'x' });
    expect(await levels('first')).toEqual({ plain: 1, urgent: 2 });
    expect(await levels('plain')).toEqual({ plain: 3, urgent: 2 });
  });

  it('refuses a priority that is not 1-5, storing nothing', async () => {
    const { client } = await setup();
    for (const priority of [0, 6, 2.5]) {
      const err = await client
        .start('keyprio', 'bad', { key: 'k' }, { priority })
        .then(() => undefined)
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(JetflowError);
      expect((err as JetflowError).code).toBe('bad_request');
      expect((err as JetflowError).message).toMatch(/priority must be an integer from 1/);
    }
    await expect(client.query('keyprio', 'bad')).rejects.toMatchObject({ code: 'not_found' });
  });

  it('a key whose record would outgrow max_payload refuses the start clearly, storing nothing', async () => {
    const { client, prefix } = await setup();
    await client.start('keyq', 'h', { key: 'full' });
    const kv = await new Kvm(env.nc).open(topologyNames(prefix).keysBucket);
    const at = `keyq.${keyTokenOf('full')}`;
    const rec = unpack((await kv.get(at))!.value) as KeyRecord;
    // Waiters up to within 40 bytes of the server's max_payload (a waiter takes ~50).
    const max = env.nc.info!.max_payload;
    const waiter = (i: number) => ({
      id: `waiter-${i}`,
      startSeq: 1_000 + i,
      queuedAt: Date.now(),
    });
    rec.waiters = [];
    let size = pack(rec).length;
    for (let i = 0; ; i++) {
      const grown = size + pack(waiter(i)).length;
      if (grown > max - 40) break;
      rec.waiters.push(waiter(i));
      size = grown;
    }
    await kv.put(at, pack(rec));
    const n = rec.waiters.length;
    const err = await client
      .start('keyq', 'one-more', { key: 'full' })
      .then(() => undefined)
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JetflowError);
    expect((err as JetflowError).code).toBe('payload_too_large');
    expect((err as JetflowError).message).toMatch(
      new RegExp(
        `concurrency key "full" of keyq cannot take this change: its record \\(1 holders, ${n + 1} waiters\\) would be over the server's max_payload`,
      ),
    );
    await expect(client.query('keyq', 'one-more')).rejects.toMatchObject({ code: 'not_found' });
    expect((unpack((await kv.get(at))!.value) as KeyRecord).waiters).toHaveLength(n);
  });
});
