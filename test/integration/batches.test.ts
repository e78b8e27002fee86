/**
 * Batches (issue 23) against a real nats-server and an in-process engine: each policy, the
 * callback (signal and start, exactly once), resumable submission, never-sealed and empty
 * batches, retry-failed, cancel, pause/resume, and bad input.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runJetflow } from '../harness/cli.js';
import { createWorker } from '../../src/worker/index.js';
import { Client } from '../../src/client/index.js';
import { JetflowError } from '../../src/errors.js';
import { workflows } from '../fixtures/workflows.js';
import type { BatchStatus } from '../../src/contracts/batch.js';
import { Visibility } from '../../src/host/visibility.js';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { BatchService, openBatchesBucket } from '../../src/nats/batches.js';
import { openBulkStore } from '../../src/nats/bulk.js';
import { topologyNames } from '../../src/nats/topology.js';
import { createRegistry } from '../../src/engine/registry.js';
import { quietLogger } from '../harness/jetflow.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];

afterAll(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
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

let shared: Awaited<ReturnType<typeof setupOnce>> | undefined;
/** One engine for the file (every test uses its own batch ids). */
async function setup() {
  shared ??= await setupOnce();
  return shared;
}

async function setupOnce() {
  const prefix = uniquePrefix();
  const engine = await startEngine(env.server.url, prefix, { workflows });
  open.push(engine);
  const client = new Client(env.nc, { prefix });
  const watcher = async (id: string) => {
    await client.start('batchWatcher', id);
    return {
      events: async () =>
        ((await client.query('batchWatcher', id)).context as { events: Record<string, unknown>[] })
          .events,
    };
  };
  const done = (id: string) =>
    until(`batch ${id} done`, async () => {
      const s = await client.batches.status(id);
      return s.state === 'done' && s.notified ? s : undefined;
    });
  return { prefix, engine, client, watcher, done };
}

const items = (n: number, f: (i: number) => Record<string, unknown> = () => ({})) =>
  Array.from({ length: n }, (_, i) => ({ n: i, ...f(i) }));

describe('batches', () => {
  it('complete-with-errors: counts every item once, one callback to a signaled workflow', async () => {
    const { client, watcher, done } = await setup();
    const w = await watcher('w1');
    await client.batches.create(
      {
        id: 'b1',
        type: 'batchItem',
        items: items(20, (i) => ({ fail: i % 5 === 0 })),
        itemKey: (x) => `u${x.n}`,
        onComplete: { signal: { type: 'batchWatcher', id: 'w1' } },
      },
      { seal: true, chunkSize: 7 },
    );
    const s = await done('b1');
    expect(s.outcome).toBe('completedWithErrors');
    expect(s.counts).toMatchObject({ total: 20, succeeded: 16, failed: 4, running: 0 });
    const events = await until('callback', async () => {
      const e = await w.events();
      return e.length > 0 ? e : undefined;
    });
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({
      type: 'batch.completed',
      id: 'b1',
      outcome: 'completedWithErrors',
      policy: 'complete-with-errors',
      counts: { total: 20, succeeded: 16, failed: 4, canceled: 0 },
    });
    const item = await client.query('batchItem', 'b1=u3');
    expect(item.status).toBe('completed');
    const failed = await client.batches.items('b1', { status: 'failed' });
    expect(failed.items.map((x) => x.key).sort()).toEqual(['u0', 'u10', 'u15', 'u5']);
    // A later pass of the tracker sends nothing more.
    await new Promise((r) => setTimeout(r, 500));
    expect(await w.events()).toHaveLength(1);
  });

  it('all-must-succeed fails at the first failure and cancels the rest (cancelRest)', async () => {
    const { client, done } = await setup();
    await client.batches.create(
      {
        id: 'b2',
        type: 'batchItem',
        items: [...items(5, () => ({ wait: true })), { n: 5, fail: true }],
        policy: 'all-must-succeed',
        cancelRest: true,
        onComplete: { start: { type: 'batchReport' } },
      },
      { seal: true },
    );
    const s = await done('b2');
    expect(s.outcome).toBe('failed');
    const report = await until('report', async () => {
      const q = await client.query('batchReport', 'b2-completed-1').catch(() => undefined);
      return q?.status === 'completed' ? q : undefined;
    });
    expect((report.output as { event: Record<string, unknown> }).event).toMatchObject({
      type: 'batch.completed',
      outcome: 'failed',
      policy: 'all-must-succeed',
    });
    const after = await until('the rest canceled', async () => {
      const x = await client.batches.status('b2');
      return x.counts.canceled === 5 ? x : undefined;
    });
    expect(after.counts).toMatchObject({ total: 6, failed: 1, canceled: 5, running: 0 });
    expect((await client.query('batchItem', 'b2=0')).status).toBe('canceled');
  });

  it('all-must-succeed with every item succeeding: succeeded', async () => {
    const { client, done } = await setup();
    await client.batches.create(
      { id: 'b3', type: 'batchItem', items: items(4), policy: 'all-must-succeed' },
      { seal: true },
    );
    expect((await done('b3')).outcome).toBe('succeeded');
  });

  it('failIfMoreThan: fails above the fraction, completes with errors at or below it', async () => {
    const { client, done } = await setup();
    await client.batches.create(
      {
        id: 'fa',
        type: 'batchItem',
        items: items(10, (i) => ({ fail: i < 2 })),
        policy: { failIfMoreThan: 0.1 },
      },
      { seal: true },
    );
    await client.batches.create(
      {
        id: 'fb',
        type: 'batchItem',
        items: items(10, (i) => ({ fail: i < 1 })),
        policy: { failIfMoreThan: 0.1 },
      },
      { seal: true },
    );
    expect((await done('fa')).outcome).toBe('failed');
    const fb = await done('fb');
    expect(fb.outcome).toBe('completedWithErrors');
    expect(fb.counts).toMatchObject({ succeeded: 9, failed: 1 });
  });

  it('a batch never sealed never completes; sealing it completes it; an empty sealed batch completes at once', async () => {
    const { client, done } = await setup();
    await client.batches.create({ id: 'open', type: 'batchItem', items: items(3) });
    await until('items ended', async () => {
      const s = await client.batches.status('open');
      return s.counts.succeeded === 3 ? s : undefined;
    });
    await new Promise((r) => setTimeout(r, 600)); // several tracker passes
    const s = await client.batches.status('open');
    expect(s.state).toBe('open');
    expect(s.sealed).toBe(false);
    await client.batches.seal('open');
    expect((await done('open')).outcome).toBe('succeeded');

    await client.batches.create({ id: 'empty', type: 'batchItem', items: [] }, { seal: true });
    const e = await done('empty');
    expect(e.outcome).toBe('succeeded');
    expect(e.counts.total).toBe(0);
  });

  it('resumes a submission: create with the same id skips what was accepted and starts nothing twice', async () => {
    const { client, done } = await setup();
    const all = items(30);
    // A submitter that stops after 12 items (as if it crashed there).
    await client.batches.create({ id: 'r', type: 'batchItem', items: all.slice(0, 12) });
    const first = await client.batches.status('r');
    expect(first.next).toBe(12);
    const res = await client.batches.create(
      { id: 'r', type: 'batchItem', items: all },
      { seal: true, chunkSize: 5 },
    );
    expect(res.resumedFrom).toBe(12);
    expect(res.accepted).toBe(18);
    const s = await done('r');
    expect(s.counts).toMatchObject({ total: 30, succeeded: 30 });
    const page = await client.batches.items('r', { limit: 1000 });
    expect(page.items).toHaveLength(30);
    expect(page.items.every((x) => x.attempts === 1 && x.status === 'succeeded')).toBe(true);
    // The same items again are recognised as accepted; one more is refused (sealed).
    const again = await client.batches.create({ id: 'r', type: 'batchItem', items: all });
    expect(again.accepted).toBe(0);
    const more = await errorOf(
      client.batches.create({ id: 'r', type: 'batchItem', items: items(31) }),
    );
    expect(more.code).toBe('invalid_state');
  });

  it('retry-failed runs only the failed items with fresh workflows, and the callback fires again', async () => {
    const { client, watcher, done } = await setup();
    const w = await watcher('w2');
    await client.batches.create(
      {
        id: 'rf',
        type: 'batchItem',
        items: items(6, () => ({ wait: true })),
        onComplete: { signal: { type: 'batchWatcher', id: 'w2' } },
      },
      { seal: true },
    );
    for (let i = 0; i < 6; i++) {
      await until(`rf=${i} started`, () =>
        client.query('batchItem', `rf=${i}`).then(
          () => true,
          () => undefined,
        ),
      );
      await client.signal('batchItem', `rf=${i}`, { type: i < 2 ? 'FAIL' : 'GO' });
    }
    const s1 = await done('rf');
    expect(s1.counts).toMatchObject({ succeeded: 4, failed: 2 });
    await until('first callback', async () => ((await w.events()).length === 1 ? true : undefined));

    const r = await client.batches.retryFailed('rf', { by: 'test' });
    expect(r.changed).toMatchObject({ verb: 'retry-failed' });
    expect(r.generation).toBe(2);
    expect(r.state).toBe('open');
    const job = await client.batches.waitJob(r.changed!.jobId as string);
    expect(job).toMatchObject({
      state: 'completed',
      done: 2,
      batch: { id: 'rf', verb: 'retry-failed' },
    });
    for (const i of [0, 1]) {
      await until(`rf=${i}=2 started`, () =>
        client.query('batchItem', `rf=${i}=2`).then(
          () => true,
          () => undefined,
        ),
      );
      await client.signal('batchItem', `rf=${i}=2`, { type: 'GO' });
    }
    const s2 = await until('gen 2 done', async () => {
      const s = await client.batches.status('rf');
      return s.generation === 2 && s.state === 'done' && s.notified ? s : undefined;
    });
    expect(s2.outcome).toBe('succeeded');
    expect(s2.counts).toMatchObject({ total: 6, succeeded: 6, failed: 0 });
    const events = await until('second callback', async () => {
      const e = await w.events();
      return e.length === 2 ? e : undefined;
    });
    expect(events[1]).toMatchObject({ outcome: 'succeeded', generation: 2 });
    const page = await client.batches.items('rf');
    const it0 = page.items.find((x) => x.key === '0')!;
    expect(it0).toMatchObject({ status: 'succeeded', attempts: 2, gen: 2, wf: 'rf=0=2' });
    // Nothing failed any more: a second retry restarts nothing.
    expect((await client.batches.retryFailed('rf')).changed).toEqual({ restarted: 0 });
  });

  it('cancel cancels the items not ended and takes no more items', async () => {
    const { client, done } = await setup();
    await client.batches.create({
      id: 'c',
      type: 'batchItem',
      items: [...items(3, () => ({ wait: true })), { n: 3 }],
    });
    await until('one succeeded', async () =>
      (await client.batches.status('c')).counts.succeeded === 1 ? true : undefined,
    );
    const r = await client.batches.cancel('c', { by: 'test', reason: 'enough' });
    expect(r.canceled).toBe(true);
    // The reply names the background job that cancels the items; status shows its progress.
    const jobId = r.changed!.jobId as string;
    expect(jobId).toMatch(/^[A-Za-z0-9]+$/);
    const job = await client.batches.waitJob(jobId);
    expect(job).toMatchObject({ state: 'completed', done: 3, batch: { id: 'c', verb: 'cancel' } });
    expect((await client.batches.status('c')).jobs).toEqual([
      expect.objectContaining({ verb: 'cancel', jobId, state: 'completed', done: 3 }),
    ]);
    // Canceling again names the same job and starts no other.
    expect((await client.batches.cancel('c')).changed).toEqual({ verb: 'cancel', jobId });
    const s = await done('c');
    expect(s.outcome).toBe('completedWithErrors');
    expect(s.counts).toMatchObject({ total: 4, succeeded: 1, canceled: 3 });
    const more = await errorOf(
      client.batches.create({ id: 'c', type: 'batchItem', items: items(5) }),
    );
    expect(more.code).toBe('invalid_state');
  });

  it('items are searchable by batch: the batchId attribute in the visibility index', async () => {
    const { client, prefix } = await setup();
    const dir = mkdtempSync(join(tmpdir(), 'jetflow-batch-vis-'));
    const vis = await Visibility.create({
      servers: env.server.url,
      prefix,
      dataDir: dir,
      logger: quietLogger,
      progress: () => undefined,
    });
    open.push(vis);
    await client.batches.create({
      id: 'vb',
      type: 'batchItem',
      items: items(3, () => ({ wait: true })),
    });
    await client.batches.create({ id: 'vc', type: 'batchItem', items: items(2) }, { seal: true });
    const found = await until('vb items indexed', async () => {
      const r = await client.search({ attributes: { batchId: 'vb' } });
      return r.workflows.length === 3 ? r : undefined;
    });
    expect(found.workflows.map((w) => w.id).sort()).toEqual(['vb=0', 'vb=1', 'vb=2']);
    expect(found.workflows[0]).toMatchObject({ status: 'running', attributes: { batchId: 'vb' } });
    const vc = await until('vc items completed', async () => {
      const r = await client.search({ attributes: { batchId: 'vc' }, status: 'completed' });
      return r.workflows.length === 2 ? r : undefined;
    });
    expect(vc.workflows.every((w) => w.attributes.batchId === 'vc')).toBe(true);
    await client.batches.cancel('vb');
  });

  it('a workflow starts a batch as an effect of its step and waits for its batch.completed', async () => {
    const { client, prefix } = await setup();
    await client.start('batchParent', 'bp1', { batchId: 'pb', n: 6, failEvery: 3 });
    const end = await until('parent done', async () => {
      const q = await client.query('batchParent', 'bp1');
      return q.status === 'completed' ? q : undefined;
    });
    expect(end.context).toMatchObject({
      outcome: 'completedWithErrors',
      counts: { total: 6, succeeded: 4, failed: 2 },
    });
    const s = await client.batches.status('pb');
    expect(s).toMatchObject({ sealed: true, state: 'done', notified: true });
    const page = await client.batches.items('pb');
    expect(page.items.map((x) => x.wf).sort()).toEqual([
      'pb=k0',
      'pb=k1',
      'pb=k2',
      'pb=k3',
      'pb=k4',
      'pb=k5',
    ]);

    // The outbox performed again (as after an engine crash between the effect and its ack):
    // nothing is added, started or sent twice.
    const nc = env.nc;
    const names = topologyNames(prefix);
    const { js, jsm } = { js: jetstream(nc), jsm: await jetstreamManager(nc) };
    const again = new BatchService(await openBatchesBucket(nc, names), {
      nc,
      js,
      jsm,
      names,
      registry: createRegistry(workflows),
      store: { get: () => Promise.resolve({}) } as never,
      logger: quietLogger,
      maxInputBytes: 1 << 20,
      owner: 'test',
      bulk: await openBulkStore(nc, jsm, names),
    });
    const record = { type: 'batchParent', id: 'bp1' } as never;
    const items = Array.from({ length: 6 }, (_, n) => ({ key: `k${n}`, input: { n } }));
    await again.startFromWorkflow({ id: 'pb', type: 'batchItem', items }, record);
    const after = await client.batches.status('pb');
    expect(after.counts).toEqual(s.counts);
    expect(after.next).toBe(6);
  });

  it('startBatch of an unknown item type tells the workflow jetflow.batch.failed', async () => {
    const { client } = await setup();
    await client.start('batchParent', 'bp2', { batchId: 'pb2', n: 2, itemType: 'noSuchType' });
    const end = await until('parent refused', async () => {
      const q = await client.query('batchParent', 'bp2');
      return q.status === 'failed' || q.status === 'completed' ? q : undefined;
    });
    expect(end.context).toMatchObject({ error: { code: 'unknown_type' } });
  });

  it('pause keeps new items pending (not started); resume starts them', async () => {
    const { client, done } = await setup();
    await client.batches.create({ id: 'p', type: 'batchItem', items: items(2) });
    await client.batches.pause('p', { by: 'test', reason: 'provider down' });
    await client.batches.create({ id: 'p', type: 'batchItem', items: items(5) }, { seal: true });
    await new Promise((r) => setTimeout(r, 400));
    const paused = await client.batches.status('p');
    expect(paused.paused).toBe(true);
    expect(paused.counts).toMatchObject({ total: 5, pending: 3 });
    expect(await client.query('batchItem', 'p=3').catch((e: JetflowError) => e.code)).toBe(
      'not_found',
    );
    const r = await client.batches.resume('p');
    expect(r.changed).toMatchObject({ verb: 'resume' });
    expect(await client.batches.waitJob(r.changed!.jobId as string)).toMatchObject({ done: 3 });
    const s = await done('p');
    expect(s.counts).toMatchObject({ total: 5, pending: 0, succeeded: 5 });
  });

  it('bad input: duplicate keys reported not doubled, bad and oversize items rejected, unknown type and missing callback target refused', async () => {
    const { client, done } = await setup();
    const res = await client.batches.create(
      {
        id: 'bad',
        type: 'batchItem',
        items: [
          { k: 'a' },
          { k: 'b' },
          { k: 'a' },
          { k: 'no.dots' },
          { k: 'big', pad: 'x'.repeat(300 * 1024) },
          { k: 'c' },
        ],
        itemKey: (x) => x.k,
        inputOf: () => ({}),
      },
      { seal: true },
    );
    expect(res.accepted).toBe(4); // a, b, big (its input is {}), c
    expect(res.duplicateItems).toEqual([{ key: 'a', index: 2, firstIndex: 0 }]);
    expect(res.rejectedItems.map((r) => [r.key, r.error.code])).toEqual([
      ['no.dots', 'bad_request'],
    ]);
    const s: BatchStatus = await done('bad');
    expect(s.counts).toMatchObject({ total: 4, succeeded: 4 });
    expect(s).toMatchObject({ duplicates: 1, rejected: 1 });

    const big = await client.batches.create(
      {
        id: 'big',
        type: 'batchItem',
        items: [{ pad: 'x'.repeat(300 * 1024) }, {}],
      },
      { seal: true },
    );
    expect(big.rejectedItems.map((r) => r.error.code)).toEqual(['payload_too_large']);
    expect(big.accepted).toBe(1);

    expect((await errorOf(client.batches.create({ id: 'x', type: 'nope', items: [] }))).code).toBe(
      'unknown_type',
    );
    const cb = await errorOf(
      client.batches.create({
        id: 'y',
        type: 'batchItem',
        onComplete: { signal: { type: 'batchWatcher', id: 'absent' } },
      }),
    );
    expect(cb.code).toBe('not_found');
    expect((await errorOf(client.batches.status('y'))).code).toBe('not_found');
  });

  it('malformed requests: bad_request naming the field (wrong types, unknown fields, oversize), nothing stored', async () => {
    const { prefix, client } = await setup();
    const ask = async (verb: string, body: unknown) => {
      const m = await env.nc.request(
        `${prefix}.admin.batch.${verb}`,
        new TextEncoder().encode(JSON.stringify(body)),
        { timeout: 5_000 },
      );
      return {
        header: m.headers?.get('Jf-Error'),
        ...(m.json<{ error?: { code: string; message: string; details?: unknown } }>().error ?? {}),
      };
    };
    const t = 'batchItem';
    const cases: [string, unknown, string, RegExp][] = [
      ['create', { id: 'm1', type: 5 }, 'type', /type/],
      ['create', { id: 'a.b', type: t }, 'id', /batch id must be/],
      ['create', { id: 'x'.repeat(101), type: t }, 'id', /batch id must be 1-100/],
      ['create', { id: 'm1', type: t, policy: { failIfMoreThan: 1 } }, 'policy', /policy/],
      ['create', { id: 'm1', type: t, policy: 'sometimes' }, 'policy', /policy/],
      ['create', { id: 'm1', type: t, cancelRest: 'yes' }, 'cancelRest', /cancelRest/],
      ['create', { id: 'm1', type: t, colour: 'red' }, 'colour', /unknown field "colour"/],
      [
        'create',
        { id: 'm1', type: t, onComplete: { signal: { type: 'a' } } },
        'onComplete',
        /onComplete/,
      ],
      ['add', { id: 'm1', from: -1, items: [] }, 'from', /from/],
      ['add', { id: 'm1', from: 0, items: 'x' }, 'items', /items/],
      ['add', { id: 'm1', from: 0, items: Array(10_001).fill({}) }, 'items', /items/],
      ['add', { id: 'm1', from: 0 }, 'items', /items/],
      ['seal', { id: 'm1', now: true }, 'now', /unknown field/],
      ['status', {}, 'id', /batch id must be/],
      ['items', { id: 'm1', limit: 0 }, 'limit', /limit/],
      ['items', { id: 'm1', status: 'sleeping' }, 'status', /status/],
      ['items', { id: 'm1', cursor: 'x' }, 'cursor', /cursor/],
      ['cancel', { id: 'm1', reason: 'x'.repeat(1025) }, 'reason', /reason/],
      ['pause', { id: 'm1', by: 5 }, 'by', /by/],
      ['retry-failed', { id: 'm1', force: true }, 'force', /unknown field/],
      ['resume', [], '', /must be an object/],
    ];
    for (const [verb, body, field, message] of cases) {
      const e = await ask(verb, body);
      const what = `${verb} ${JSON.stringify(body).slice(0, 80)}`;
      expect(e.header, what).toBe('bad_request');
      expect(e.code, what).toBe('bad_request');
      expect(e.message, what).toMatch(message);
      const d = e.details as { field?: unknown; why?: unknown } | undefined;
      expect(d?.field, what).toBe(field);
      expect(typeof d?.why, what).toBe('string');
    }
    expect((await errorOf(client.batches.status('m1'))).code).toBe('not_found');
  });

  it('CLI: batch create streams an NDJSON file, status --json, items --status failed', async () => {
    const { prefix, client, done } = await setup();
    const dir = mkdtempSync(join(tmpdir(), 'jf-batch-'));
    const file = join(dir, 'users.ndjson');
    writeFileSync(
      file,
      Array.from({ length: 12 }, (_, i) => JSON.stringify({ userId: `u${i}`, fail: i === 4 })).join(
        '\n',
      ) + '\n',
    );
    const flags = ['--nats-url', env.server.url, '--prefix', prefix];
    const created = await runJetflow([
      'batch',
      'create',
      '--id',
      'cli',
      '--type',
      'batchItem',
      '--items',
      file,
      '--key-field',
      'userId',
      '--chunk-size',
      '5',
      '--json',
      ...flags,
    ]);
    expect(created.code, created.stderr).toBe(0);
    const body = JSON.parse(created.stdout) as { submitted: { accepted: number }; sealed: boolean };
    expect(body.submitted.accepted).toBe(12);
    expect(body.sealed).toBe(true);
    await done('cli');
    const st = await runJetflow(['batch', 'status', 'cli', '--json', ...flags]);
    expect(JSON.parse(st.stdout)).toMatchObject({
      outcome: 'completedWithErrors',
      counts: { total: 12, succeeded: 11, failed: 1 },
    });
    const failed = await runJetflow(['batch', 'items', 'cli', '--status', 'failed', ...flags]);
    expect(failed.stdout.trim().split('\n')).toHaveLength(1);
    expect(failed.stdout).toMatch(/^u4\tfailed\tcli=u4\tattempts 1/);
    expect((await client.batches.items('cli', { limit: 5 })).cursor).toBeDefined();
    const missing = await runJetflow(['batch', 'status', 'nope', ...flags]);
    expect(missing.code).toBe(3);
  });

  it('nesting: three levels of batches, each parent item ends after its child batch completed', async () => {
    const { prefix, client, watcher, done } = await setup();
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      queues: ['nested'],
      activities: {
        createChildBatch: async (
          { depth, width }: { depth: number; width: number },
          ctx: { workflowId: string; workflowType: string },
        ) => {
          const id = `${ctx.workflowId}-c`;
          await client.batches.create(
            {
              id,
              type: 'nestedBatch',
              items: Array.from({ length: width }, () => ({ depth: depth - 1, width })),
              onComplete: { signal: { type: ctx.workflowType, id: ctx.workflowId } },
            },
            { seal: true },
          );
          return { batch: id };
        },
      },
    });
    open.push(worker);
    const w = await watcher('wn');
    await client.batches.create(
      {
        id: 'n',
        type: 'nestedBatch',
        items: [
          { depth: 2, width: 2 },
          { depth: 2, width: 2 },
        ],
        onComplete: { signal: { type: 'batchWatcher', id: 'wn' } },
      },
      { seal: true },
    );
    const top = await done('n');
    expect(top.outcome).toBe('succeeded');
    // Every level below was done (and had sent its callback) before the top could complete.
    const levels = ['n=0-c', 'n=1-c', 'n=0-c=0-c', 'n=0-c=1-c', 'n=1-c=0-c', 'n=1-c=1-c'];
    for (const id of levels) {
      const s = await client.batches.status(id);
      expect(s, id).toMatchObject({ state: 'done', outcome: 'succeeded', notified: true });
      expect(s.counts).toMatchObject({ total: 2, succeeded: 2 });
      expect(Date.parse(s.updatedAt)).toBeLessThanOrEqual(Date.parse(top.updatedAt));
    }
    const item = await client.query('nestedBatch', 'n=0');
    expect(item.output).toMatchObject({ outcome: 'succeeded', counts: { succeeded: 2 } });
    const events = await until('top callback', async () => {
      const e = await w.events();
      return e.length ? e : undefined;
    });
    expect(events).toHaveLength(1);
  });
});
