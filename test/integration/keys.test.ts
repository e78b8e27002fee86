/**
 * Concurrency keys (deferred workflows) against a real nats-server and in-process engines: each
 * `onLimit` policy, signals kept in order while deferred, the operator verbs promote, skip and
 * release (journaled), a key's workflows on different shards and engines, and nothing left in
 * the key record at the end.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runJetflow } from '../harness/cli.js';
import { Client } from '../../src/client/index.js';
import { JetflowError } from '../../src/errors.js';
import { workflows } from '../fixtures/workflows.js';
import { shardOf } from '../../src/contracts/subjects.js';
import type { Engine } from '../../src/host/engine.js';
import type { JournalEntry, QueryReply } from '../../src/contracts/wire.js';

const env = useServer();
const who = { by: 'ops@test', reason: 'keys test' };
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

async function errorOf(p: Promise<unknown>): Promise<JetflowError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof JetflowError) return err;
    throw err;
  }
  throw new Error('expected an error reply');
}

async function setup(engines = 1) {
  const prefix = uniquePrefix();
  const list: Engine[] = [];
  for (let i = 0; i < engines; i++) {
    const e = await startEngine(env.server.url, prefix, { workflows });
    list.push(e);
    open.push(e);
  }
  const client = new Client(env.nc, { prefix });
  const status = (type: string, id: string) => client.query(type, id).then((q) => q.status);
  const statusIs = (type: string, id: string, want: QueryReply['status']) =>
    until(`${type}/${id} ${want}`, async () =>
      (await status(type, id)) === want ? true : undefined,
    );
  return { prefix, engines: list, client, status, statusIs };
}

async function history(client: Client, type: string, id: string): Promise<JournalEntry[]> {
  return (await client.history(type, id, { limit: 1000 })).entries;
}

describe('concurrency keys', () => {
  it('queue: beyond the limit a start is deferred with its position, FIFO, slot held for the whole run, key empty at the end', async () => {
    const { client, statusIs } = await setup();
    const a1 = await client.start('keyq', 'a1', { key: 'm1' });
    expect(a1).toEqual({ id: 'a1', type: 'keyq', version: 1, created: true });
    expect(await client.start('keyq', 'a2', { key: 'm1' })).toMatchObject({
      created: true,
      deferred: true,
      position: 1,
    });
    expect(await client.start('keyq', 'a3', { key: 'm1' })).toMatchObject({
      deferred: true,
      position: 2,
    });
    // Another key is not affected.
    expect(await client.start('keyq', 'b1', { key: 'm2' })).not.toHaveProperty('deferred');
    // A repeated start tells the same.
    expect(await client.start('keyq', 'a3', { key: 'm1' })).toMatchObject({
      created: false,
      deferred: true,
    });
    const q2 = await client.query('keyq', 'a2');
    expect(q2).toMatchObject({ status: 'deferred', deferred: { key: 'm1', position: 1 } });
    expect((await client.query('keyq', 'a1')).concurrencyKey).toBe('m1');
    const [rec] = await client.keys('keyq', 'm1');
    expect(rec!.holders.map((h) => h.id)).toEqual(['a1']);
    expect(rec!.waiters.map((w) => w.id)).toEqual(['a2', 'a3']);

    // The holder keeps its slot while it waits for signals; a1 ends: a2 is admitted.
    await client.signal('keyq', 'a1', { type: 'SIG', n: 1 });
    await client.signal('keyq', 'a1', { type: 'FINISH' });
    await statusIs('keyq', 'a2', 'running');
    expect(await client.query('keyq', 'a3')).toMatchObject({
      status: 'deferred',
      deferred: { position: 1 },
    });
    await client.signal('keyq', 'a2', { type: 'FAIL' }); // failed also frees the slot
    await statusIs('keyq', 'a3', 'running');
    await client.cancel('keyq', 'a3', 'done with it'); // and canceled
    await client.signal('keyq', 'b1', { type: 'FINISH' });
    expect(await client.keys('keyq')).toEqual([]);

    // Events and journal tell the deferral and the admission.
    const h = await history(client, 'keyq', 'a2');
    expect(h.map((e) => (e.kind === 'step' ? `${e.cause}:${e.status}` : e.kind))).toEqual([
      'start:deferred',
      'admit:running',
      'signal:failed',
    ]);
  });

  it('signals sent to a deferred workflow are kept in order and applied after admission', async () => {
    const { client, statusIs } = await setup();
    await client.start('keyq', 's1', { key: 'k' });
    await client.start('keyq', 's2', { key: 'k' });
    for (let n = 1; n <= 5; n++) {
      expect(await client.signal('keyq', 's2', { type: 'SIG', n })).toMatchObject({
        status: 'deferred',
        held: true,
      });
    }
    expect((await client.query('keyq', 's2')).held).toBe(5);
    await client.signal('keyq', 's1', { type: 'FINISH' });
    await statusIs('keyq', 's2', 'running');
    await client.signal('keyq', 's2', { type: 'SIG', n: 6 });
    await client.signal('keyq', 's2', { type: 'FINISH' });
    expect(await client.result('keyq', 's2')).toEqual({ seq: [1, 2, 3, 4, 5, 6] });
  });

  it('limit 2 admits two; a key whose workflows live on different shards and engines', async () => {
    const { client, statusIs, engines } = await setup(2);
    // Ids spread over the shards (TEST_SHARDS = 4).
    const ids = Array.from({ length: 8 }, (_, i) => `w${i}`);
    expect(new Set(ids.map((id) => shardOf('keyq2', id, 4))).size).toBeGreaterThan(2);
    for (const id of ids) await client.start('keyq2', id, { key: 'shared' });
    expect(engines.every((e) => e.shardManager.shards.length > 0)).toBe(true);
    const running = async () => {
      const st = await Promise.all(ids.map((id) => client.query('keyq2', id)));
      return st.filter((q) => q.status === 'running').map((q) => q.id);
    };
    expect(await running()).toEqual(['w0', 'w1']);
    const order: string[] = [];
    for (let i = 0; i < ids.length; i++) {
      const r = await until('two running', async () => {
        const now = await running();
        return now.length === Math.min(2, ids.length - i) ? now : undefined;
      });
      order.push(r[0]!);
      await client.signal('keyq2', r[0]!, { type: 'FINISH' });
      await statusIs('keyq2', r[0]!, 'completed');
    }
    expect(order).toEqual(ids);
    expect(await client.keys('keyq2')).toEqual([]);
  });

  it('cancel-newest: a start beyond the limit is refused with concurrency_limit, nothing stored', async () => {
    const { client } = await setup();
    await client.start('keynewest', 'n1', { key: 'k' });
    const err = await errorOf(client.start('keynewest', 'n2', { key: 'k' }));
    expect(err.code).toBe('concurrency_limit');
    expect(err.details).toMatchObject({ key: 'k', limit: 1, holders: ['n1'] });
    expect((await errorOf(client.query('keynewest', 'n2'))).code).toBe('not_found');
    await client.signal('keynewest', 'n1', { type: 'FINISH' });
    await until('slot free', async () => ((await client.keys('keynewest')).length ? undefined : 1));
    expect(await client.start('keynewest', 'n2', { key: 'k' })).not.toHaveProperty('deferred');
  });

  it('cancel-in-progress: the running one is canceled and the new one admitted in its slot', async () => {
    const { client, statusIs } = await setup();
    await client.start('keyprog', 'p1', { key: 'k' });
    expect(await client.start('keyprog', 'p2', { key: 'k' })).toMatchObject({ deferred: true });
    await statusIs('keyprog', 'p1', 'canceled');
    await statusIs('keyprog', 'p2', 'running');
    // A third supersedes p2 (running) too.
    await client.start('keyprog', 'p3', { key: 'k' });
    await statusIs('keyprog', 'p2', 'canceled');
    await statusIs('keyprog', 'p3', 'running');
    const [rec] = await client.keys('keyprog', 'k');
    expect(rec!.holders.map((h) => h.id)).toEqual(['p3']);
    expect(rec!.waiters).toEqual([]);
    const canceled = (await history(client, 'keyprog', 'p1')).at(-1)!;
    expect(canceled).toMatchObject({ kind: 'step', status: 'canceled' });
    expect(JSON.stringify(canceled)).toContain('superseded by p2');
  });

  it('replace-queued: a new start replaces the one waiting (canceled), then runs', async () => {
    const { client, statusIs } = await setup();
    await client.start('keyrepl', 'r1', { key: 'k' });
    expect(await client.start('keyrepl', 'r2', { key: 'k' })).toMatchObject({ position: 1 });
    expect(await client.start('keyrepl', 'r3', { key: 'k' })).toMatchObject({ position: 1 });
    await statusIs('keyrepl', 'r2', 'canceled');
    expect((await client.query('keyrepl', 'r1')).status).toBe('running');
    await client.signal('keyrepl', 'r1', { type: 'FINISH' });
    await statusIs('keyrepl', 'r3', 'running');
    await client.signal('keyrepl', 'r3', { type: 'FINISH' });
    await statusIs('keyrepl', 'r3', 'completed');
    expect(await client.keys('keyrepl')).toEqual([]);
  });

  it('promote, skip and release: journaled operator verbs; bad input refused with a code', async () => {
    const { client, statusIs, prefix } = await setup();
    for (const id of ['e1', 'e2', 'e3', 'e4']) await client.start('keyq', id, { key: 'k' });
    // promote e4 to the head of the queue
    const p = await client.promote('keyq', 'e4', { ...who, requestId: 'p-1' });
    expect(p).toMatchObject({ action: 'promote', status: 'deferred' });
    expect((await client.promote('keyq', 'e4', { ...who, requestId: 'p-1' })).duplicate).toBe(true);
    const waiters = async () => (await client.keys('keyq', 'k'))[0]!.waiters.map((w) => w.id);
    await until('e4 first', async () => ((await waiters())[0] === 'e4' ? true : undefined));
    expect(await waiters()).toEqual(['e4', 'e2', 'e3']);
    expect((await client.query('keyq', 'e4')).deferred?.position).toBe(1);
    // skip e2: canceled with the reason, leaves the queue
    const s = await client.skip('keyq', 'e2', { ...who, reason: 'customer withdrew' });
    expect(s).toMatchObject({ action: 'skip', status: 'canceled' });
    await until('e2 gone', async () => ((await waiters()).includes('e2') ? undefined : true));
    expect(await waiters()).toEqual(['e4', 'e3']);
    // verbs that need a waiter, or an admitted workflow
    expect((await errorOf(client.promote('keyq', 'e1', who))).code).toBe('not_deferred');
    expect((await errorOf(client.skip('keyq', 'e1', who))).code).toBe('not_deferred');
    expect((await errorOf(client.pause('keyq', 'e3', who))).code).toBe('deferred');
    expect((await errorOf(client.release('keyq', 'e1', who))).code).toBe('holder_running');
    expect((await errorOf(client.release('keyq', 'nobody', who))).code).toBe('not_found');
    // e1 ends: promoted e4 goes first
    await client.signal('keyq', 'e1', { type: 'FINISH' });
    await statusIs('keyq', 'e4', 'running');
    // release: an operator removed e4's record by hand (its slot would leak)
    const kv = await new Kvm(env.nc).open(`${prefix}_workflows`);
    await kv.delete('keyq.e4');
    const r = await client.release('keyq', 'e4', { ...who, key: 'k' });
    expect(r.changed).toMatchObject({ key: 'k', was: 'holder', admitted: ['e3'] });
    await statusIs('keyq', 'e3', 'running');
    // a repeat changes nothing more
    expect((await client.release('keyq', 'e4', { ...who, key: 'k' })).changed).toMatchObject({
      was: 'gone',
    });
    // journaled
    const promoteEntry = (await history(client, 'keyq', 'e4')).find(
      (e) => e.kind === 'step' && e.operator?.action === 'promote',
    );
    expect(promoteEntry).toMatchObject({ operator: { by: 'ops@test' } });
    const skipEntry = (await history(client, 'keyq', 'e2')).at(-1);
    expect(skipEntry).toMatchObject({
      kind: 'step',
      status: 'canceled',
      operator: { action: 'skip', reason: 'customer withdrew' },
    });
    const releaseEntry = await until('release journaled', async () =>
      (await history(client, 'keyq', 'e4')).find((e) => e.kind === 'operator'),
    );
    expect(releaseEntry).toMatchObject({ action: 'release', by: 'ops@test' });
    await client.signal('keyq', 'e3', { type: 'FINISH' });
    await until('key empty', async () => ((await client.keys('keyq')).length ? undefined : 1));
  });

  it('a key function that throws refuses the start with concurrency_key', async () => {
    const { client } = await setup();
    const err = await errorOf(client.start('keyq', 'x', { nokey: true }));
    expect(err.code).toBe('concurrency_key');
    expect((await errorOf(client.query('keyq', 'x'))).code).toBe('not_found');
  });

  it('jetflow keys lists holders and waiters with positions; query shows deferred', async () => {
    const { client, prefix } = await setup();
    for (const id of ['c1', 'c2', 'c3']) await client.start('keyq', id, { key: 'tenant-7' });
    const url = env.server.url;
    const out = await runJetflow(['keys', 'keyq', '--nats-url', url, '--prefix', prefix]);
    expect(out.code).toBe(0);
    expect(out.stdout).toContain('tenant-7  1/1 held, 2 waiting');
    expect(out.stdout).toMatch(/holder {2}c1/);
    expect(out.stdout).toMatch(/1 {2}c2 {2}waiting/);
    expect(out.stdout).toMatch(/2 {2}c3 {2}waiting/);
    const js = await runJetflow([
      'keys',
      'keyq',
      '--key',
      'tenant-7',
      '--json',
      '--nats-url',
      url,
      '--prefix',
      prefix,
    ]);
    const parsed = JSON.parse(js.stdout) as {
      keys: { waiters: { id: string; position: number }[] }[];
    };
    expect(parsed.keys[0]!.waiters.map((w) => [w.position, w.id])).toEqual([
      [1, 'c2'],
      [2, 'c3'],
    ]);
    const q = await runJetflow(['query', 'keyq', 'c3', '--nats-url', url, '--prefix', prefix]);
    expect(q.stdout).toMatch(/deferred +position 2 for concurrency key tenant-7/);
    const sk = await runJetflow([
      'skip',
      'keyq',
      'c3',
      '--reason',
      'r',
      '--by',
      'me',
      '--nats-url',
      url,
      '--prefix',
      prefix,
    ]);
    expect(sk.code).toBe(0);
    await client.signal('keyq', 'c1', { type: 'FINISH' });
  });

  it('a child deferred on its key, then canceled or skipped, tells its parent (which does not wait forever)', async () => {
    const { client, statusIs } = await setup();
    await client.start('keyq', 'holder', { key: 'pk' });
    await statusIs('keyq', 'holder', 'running');
    for (const [parent, child, how] of [
      ['p1', 'c1', 'cancel'],
      ['p2', 'c2', 'skip'],
    ] as const) {
      await client.start('xkeyparent', parent, {});
      await client.signal('xkeyparent', parent, { type: 'START', childId: child, key: 'pk' });
      await until(`${child} deferred`, async () => {
        const q = await client.query('keyq', child).catch(() => undefined);
        return q?.status === 'deferred' ? true : undefined;
      });
      if (how === 'cancel') await client.cancel('keyq', child, 'not needed');
      else await client.admin('skip', 'keyq', child, { ...who, requestId: `skip-${child}` });
      const out = await client.result<{ error: { code?: string } | null }>('xkeyparent', parent, {
        timeoutMs: 15_000,
      });
      expect(out.error).not.toBeNull();
    }
    await client.signal('keyq', 'holder', { type: 'FINISH' });
  });
});
