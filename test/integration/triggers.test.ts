/**
 * Triggers on a real nats-server: user-created streams (jetflow never creates them), engines as
 * real processes SIGKILLed while a trigger runs, a server restart, rewinds, and the parking lot.
 * Small sizes for the fast suite; the full acceptance (10,000 messages, 1,000 keys x 10) is
 * `npm run soak:triggers` (test/chaos/triggers.test.ts).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import {
  EngineProcess,
  quietLogger,
  startEngine,
  uniquePrefix,
  useServer,
} from '../harness/jetflow.js';
import { Visibility } from '../../src/host/visibility.js';
import { Client } from '../../src/client/index.js';
import { triggerWorkflows } from '../fixtures/trigger-workflows.js';
import type { Engine } from '../../src/host/engine.js';
import type { RewindReply, TriggerLedgerEntry, TriggerRow } from '../../src/engine/triggers.js';
import { topologyNames } from '../../src/nats/topology.js';
import { runJetflow } from '../harness/cli.js';
import { createWorker } from '../../src/worker/index.js';

const env = useServer();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
});

async function userStream(nc: NatsConnection, name: string, subjects: string[]) {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name, subjects });
}

/** Publish as a producer does: retried with the same Nats-Msg-Id until the stream has it. */
async function publish(nc: NatsConnection, subject: string, body: unknown, msgId: string) {
  const js = jetstream(nc);
  const h = headers();
  h.set('Nats-Msg-Id', msgId);
  for (let i = 0; ; i++) {
    try {
      return await js.publish(subject, JSON.stringify(body), { headers: h });
    } catch (err) {
      if (i > 50) throw err;
      await sleep(200);
    }
  }
}

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end)
      throw new Error(`timed out waiting for ${what} ${last instanceof Error ? last.message : ''}`);
    await sleep(200);
  }
}

/** The trigger's consumer has nothing left to deliver or to be acknowledged. */
async function drained(
  nc: NatsConnection,
  stream: string,
  name: string,
): Promise<true | undefined> {
  const jsm = await jetstreamManager(nc);
  const ci = await jsm.consumers.info(stream, `jetflow-trigger-${name}`);
  return ci.num_pending === 0 && ci.num_ack_pending === 0 ? true : undefined;
}

async function seen(c: Client, id: string): Promise<number[]> {
  const q = await c.query('tpay', id);
  return (q.context as { seen: number[] }).seen;
}

describe('triggers', () => {
  it('poison: parked with its error; park-key keeps the key behind its head; skip is in the ledger; replay in order', async () => {
    const prefix = uniquePrefix();
    const stream = `PAY_${prefix}`;
    const subj = `${prefix}-pay`;
    await userStream(env.nc, stream, [`${subj}.>`]);
    const wf = triggerWorkflows({ JF_T_PAY_STREAM: stream, JF_T_PAY_SUBJECT: `${subj}.>` });
    const engine: Engine = await startEngine(env.server.url, prefix, { workflows: wf });
    closers.push(() => engine.close());
    const c = await Client.connect(env.server.url, { prefix });
    closers.push(() => c.close());
    for (const k of ['k0', 'k1']) await c.start('tpay', k, {});
    // k0: 1, 2 (bad: the mapping throws), 3, 4. k1: 1..4. k9 (no workflow yet): 1, 2. One
    // message with no order id.
    const seqs: Record<string, number> = {};
    for (let n = 1; n <= 4; n++) {
      for (const k of ['k0', 'k1']) {
        const a = await publish(
          env.nc,
          `${subj}.${k}`,
          { orderId: k, n, bad: k === 'k0' && n === 2 },
          `${k}-${n}`,
        );
        seqs[`${k}-${n}`] = a.seq;
      }
    }
    for (let n = 1; n <= 2; n++)
      seqs[`k9-${n}`] = (await publish(env.nc, `${subj}.k9`, { orderId: 'k9', n }, `k9-${n}`)).seq;
    seqs.noid = (await publish(env.nc, `${subj}.x`, { n: 7 }, 'noid')).seq;
    await until('drained', () => drained(env.nc, stream, 'payments'));

    expect(await seen(c, 'k1')).toEqual([1, 2, 3, 4]);
    expect(await seen(c, 'k0')).toEqual([1]);
    const parked = await c.triggers<{
      parked: { seq: number; key?: string; error: { code: string } }[];
    }>('parked', { name: 'payments' });
    const bySeq = new Map(parked.parked.map((p) => [p.seq, p]));
    expect(bySeq.get(seqs['k0-2']!)?.error.code).toBe('mapping_failed');
    expect(bySeq.get(seqs['k0-3']!)?.error.code).toBe('parked_key');
    expect(bySeq.get(seqs['k0-4']!)?.error.code).toBe('parked_key');
    expect(bySeq.get(seqs['k9-1']!)?.error.code).toBe('not_found');
    expect(bySeq.get(seqs['k9-2']!)?.error.code).toBe('parked_key');
    expect(bySeq.get(seqs.noid)?.error.code).toBe('no_id');
    expect(parked.parked.length).toBe(6);

    // Replaying k0 leaves it as it is: its head is still bad, the rest waits behind it.
    const r0 = await c.triggers<{
      replayed: { seq: number; outcome: string }[];
      remaining: number;
    }>('replay', { name: 'payments', key: 'k0' });
    expect(r0.replayed.map((x) => [x.seq, x.outcome])).toEqual([[seqs['k0-2'], 'parked']]);
    expect(r0.remaining).toBe(6);
    expect(await seen(c, 'k0')).toEqual([1]);
    // Skip the head (journaled in the ledger), then the rest of k0 goes through in order.
    await c.triggers('skip', {
      name: 'payments',
      seq: seqs['k0-2'],
      reason: 'bad amount',
      by: 'test',
    });
    const r1 = await c.triggers<{ replayed: { seq: number; outcome: string }[] }>('replay', {
      name: 'payments',
      key: 'k0',
    });
    expect(r1.replayed.map((x) => x.outcome)).toEqual(['signaled', 'signaled']);
    expect(await seen(c, 'k0')).toEqual([1, 3, 4]);
    // k9 now exists: its parked messages are applied in order.
    await c.start('tpay', 'k9', {});
    await c.triggers('replay', { name: 'payments', all: true });
    expect(await seen(c, 'k9')).toEqual([1, 2]);
    const left = await c.triggers<{ parked: { seq: number }[] }>('parked', { name: 'payments' });
    expect(left.parked.map((p) => p.seq)).toEqual([seqs.noid]);

    const trace = (seq: number) =>
      c
        .triggers<{ entries: TriggerLedgerEntry[] }>('trace', { name: 'payments', seq })
        .then((r) => r.entries.map((e) => e.outcome));
    expect(await trace(seqs['k0-2']!)).toEqual(['parked', 'skipped']);
    expect(await trace(seqs['k0-3']!)).toEqual(['parked', 'signaled']);
    const skip = (
      await c.triggers<{ entries: TriggerLedgerEntry[] }>('trace', {
        name: 'payments',
        seq: seqs['k0-2']!,
      })
    ).entries[1]!;
    expect({ by: skip.by, reason: skip.reason }).toEqual({ by: 'test', reason: 'bad amount' });
    // A rewind reads everything again: nothing new, the skipped message stays skipped, the
    // parked one stays parked (once).
    const rw = await c.triggers<RewindReply>('rewind', { name: 'payments', toSeq: 1 });
    expect(rw).toMatchObject({
      reread: 11,
      new: 0,
      duplicates: 10,
      skipped: 1,
      parked: 0,
      done: true,
    });
    const still = await c.triggers<{ parked: { seq: number }[] }>('parked', { name: 'payments' });
    expect(still.parked.map((p) => p.seq)).toEqual([seqs.noid]);
    for (const k of ['k0', 'k1', 'k9'])
      expect(await seen(c, k)).toEqual(k === 'k0' ? [1, 3, 4] : k === 'k1' ? [1, 2, 3, 4] : [1, 2]);
    // The visibility index finds the workflows the trigger signaled (`jetflow.trigger`).
    const dir = mkdtempSync(join(tmpdir(), 'jf-trig-vis-'));
    const vis = await Visibility.create({
      servers: env.server.url,
      prefix,
      dataDir: dir,
      logger: quietLogger,
      progress: () => undefined,
    });
    closers.push(async () => {
      await vis.close();
      rmSync(dir, { recursive: true, force: true });
    });
    const found = await until('the index', async () => {
      const r = await c.search({ attributes: { 'jetflow.trigger': 'payments' } });
      return r.workflows.length === 3 ? r : undefined;
    });
    expect(found.workflows.map((w) => w.id).sort()).toEqual(['k0', 'k1', 'k9']);
    // The step a message caused names the trigger and the sequence in the journal.
    const h = await c.history('tpay', 'k1', { fromStep: 0, limit: 100 });
    const steps = h.entries.filter((e) => e.kind === 'step' && e.trigger);
    expect(steps.map((e) => (e.kind === 'step' ? e.trigger!.seq : 0))).toEqual(
      [1, 2, 3, 4].map((n) => seqs[`k1-${n}`]),
    );
  });
});

describe('triggers: pause and resume', () => {
  it('a paused trigger delivers nothing and loses nothing; a rewind waits for resume', async () => {
    const prefix = uniquePrefix();
    const stream = `PAY_${prefix}`;
    const subj = `${prefix}-pay`;
    await userStream(env.nc, stream, [`${subj}.>`]);
    const wf = triggerWorkflows({ JF_T_PAY_STREAM: stream, JF_T_PAY_SUBJECT: `${subj}.>` });
    const engine: Engine = await startEngine(env.server.url, prefix, { workflows: wf });
    closers.push(() => engine.close());
    const c = await Client.connect(env.server.url, { prefix });
    closers.push(() => c.close());
    await c.start('tpay', 'q1', {});
    await publish(env.nc, `${subj}.q1`, { orderId: 'q1', n: 1 }, 'q1-1');
    await until('first applied', async () =>
      (await seen(c, 'q1')).length === 1 ? true : undefined,
    );
    expect(await c.triggers('pause', { name: 'payments' })).toMatchObject({ paused: true });
    await publish(env.nc, `${subj}.q1`, { orderId: 'q1', n: 2 }, 'q1-2');
    await sleep(1_500);
    expect(await seen(c, 'q1')).toEqual([1]);
    const list = await c.triggers<{ triggers: TriggerRow[] }>('list');
    expect(list.triggers[0]).toMatchObject({ name: 'payments', paused: true, pending: 1 });
    await expect(c.triggers('rewind', { name: 'payments', toSeq: 1 })).rejects.toMatchObject({
      code: 'paused',
    });
    expect(await c.triggers('resume', { name: 'payments' })).toMatchObject({ paused: false });
    await until('second applied', async () =>
      (await seen(c, 'q1')).length === 2 ? true : undefined,
    );
    expect(await seen(c, 'q1')).toEqual([1, 2]);
  });
});

describe('triggers: core-NATS subject (no stream)', () => {
  it('signals while held, in order; a message published while no engine holds it is gone (at most once)', async () => {
    const prefix = uniquePrefix();
    const subj = `${prefix}-core.pay`;
    const c = await Client.connect(env.server.url, { prefix });
    closers.push(() => c.close());
    // Before any engine subscribes: nobody receives it, and nothing keeps it.
    env.nc.publish(subj, JSON.stringify({ orderId: 'k1', n: 0 }));
    const wf = triggerWorkflows({ JF_T_CORE_SUBJECT: subj });
    const engine: Engine = await startEngine(env.server.url, prefix, { workflows: wf });
    closers.push(() => engine.close());
    await c.start('tpay', 'k1', {});
    const row = await until('core-pay held', async () => {
      const r = await c.triggers<{ triggers: TriggerRow[] }>('list');
      return r.triggers.find((t) => t.name === 'core-pay' && t.holder);
    });
    expect(row).toMatchObject({ stream: null, consumer: null, filter: subj, kind: 'signal' });
    // The holder subscribes right after it is listed: wait until a message gets through.
    let n = 0;
    await until('the subscription delivers', async () => {
      env.nc.publish(subj, JSON.stringify({ orderId: 'k1', n: ++n }));
      await env.nc.flush();
      await sleep(100);
      return (await seen(c, 'k1')).length > 0 ? true : undefined;
    });
    const first = (await seen(c, 'k1'))[0]!;
    for (let i = 1; i <= 5; i++) env.nc.publish(subj, JSON.stringify({ orderId: 'k1', n: n + i }));
    const want = [...Array.from({ length: n - first + 1 }, (_, i) => first + i)];
    for (let i = 1; i <= 5; i++) want.push(n + i);
    const got = await until('all applied', async () => {
      const s = await seen(c, 'k1');
      return s.length >= want.length ? s : undefined;
    });
    // In publish order, each once; the message sent before the engine is not there.
    expect(first).toBeGreaterThan(0);
    expect(got).toEqual(want);
  });
});

/** Engine processes running the trigger fixture with `vars`. */
async function engines(
  prefix: string,
  vars: Record<string, string>,
  n = 2,
): Promise<EngineProcess[]> {
  const out: EngineProcess[] = [];
  for (let i = 0; i < n; i++) {
    const e = new EngineProcess(env.server.url, prefix, {
      workflows: 'test/fixtures/trigger-workflows.ts',
      env: vars,
      ackWaitMs: 3_000,
      failoverMs: 2_000,
    });
    closers.push(() => e.stop());
    out.push(await e.start());
  }
  return out;
}

async function holderOf(c: Client, name: string, procs: EngineProcess[]): Promise<EngineProcess> {
  return until(`a holder of ${name}`, async () => {
    const r = await c.triggers<{ triggers: TriggerRow[] }>('list');
    const pid = r.triggers.find((t) => t.name === name)?.holderPid;
    return procs.find((p) => p.running && p.child?.pid === pid);
  });
}

/** Count `started` notifications per workflow id of a type (the events stream). */
async function startedCounts(
  nc: NatsConnection,
  prefix: string,
  type: string,
): Promise<Map<string, number>> {
  const names = topologyNames(prefix);
  const js = jetstream(nc);
  const consumer = await js.consumers.get(names.eventsStream, {
    filter_subjects: [`${prefix}.events.${type}.>`],
  });
  const out = new Map<string, number>();
  const jsm = await jetstreamManager(nc);
  const total = (
    await jsm.streams.info(names.eventsStream, { subjects_filter: `${prefix}.events.${type}.>` })
  ).state.subjects;
  const want = Object.values(total ?? {}).reduce((a, b) => a + b, 0);
  let got = 0;
  while (got < want) {
    const batch = await consumer.fetch({ max_messages: 1000, expires: 2_000 });
    for await (const m of batch) {
      got++;
      const n = m.json<{ type: string; id: string }>();
      if (n.type === 'started') out.set(n.id, (out.get(n.id) ?? 0) + 1);
    }
  }
  return out;
}

describe('triggers under faults', () => {
  it(
    'start trigger: 200 messages (20 repeat an order id under a new Nats-Msg-Id), holder SIGKILLed; rewind --to-seq 1 reports 0 new',
    { timeout: 180_000 },
    async () => {
      const prefix = uniquePrefix();
      const stream = `ORDERS_${prefix}`;
      const subj = `${prefix}-orders`;
      await userStream(env.nc, stream, [`${subj}.>`]);
      const vars = { JF_T_ORDERS_STREAM: stream, JF_T_ORDERS_SUBJECT: `${subj}.created.>` };
      const procs = await engines(prefix, vars);
      const c = await Client.connect(env.server.url, { prefix });
      closers.push(() => c.close());
      // The activity's side effect, recorded by a real worker: one run per order.
      const effects = new Map<string, number>();
      const worker = await createWorker({
        connection: env.nc,
        prefix,
        activities: {
          recordOrder: ({ orderId }: { orderId: string }) => {
            effects.set(orderId, (effects.get(orderId) ?? 0) + 1);
            return Promise.resolve({ ok: true });
          },
        },
        queues: ['torders'],
      });
      closers.push(() => worker.close());
      const ids: string[] = [];
      let killed = false;
      for (let i = 0; i < 200; i++) {
        // Every tenth message from 100 on repeats an earlier order (a producer retry).
        const orderId = i >= 100 && i % 5 === 0 ? `o${i - 100}` : `o${i}`;
        ids.push(orderId);
        await publish(env.nc, `${subj}.created.${orderId}`, { orderId }, `m${i}`);
        if (i === 120) {
          await (await holderOf(c, 'orders', procs)).kill();
          killed = true;
        }
        if (i % 20 === 0) await sleep(20);
      }
      expect(killed).toBe(true);
      const distinct = new Set(ids);
      expect(distinct.size).toBe(180);
      await until('drained', () => drained(env.nc, stream, 'orders'), 90_000);
      const started = await until('180 started', async () => {
        const m = await startedCounts(env.nc, prefix, 'torder');
        return m.size >= 180 ? m : undefined;
      });
      expect([...started.keys()].sort()).toEqual([...distinct].sort());
      expect([...started.values()].every((n) => n === 1)).toBe(true);
      await until('180 side effects', () =>
        Promise.resolve(effects.size >= 180 ? true : undefined),
      );
      // Rewind through the CLI (a real process), which reports what was re-read and what was new.
      const run = await runJetflow(
        [
          'triggers',
          'rewind',
          'orders',
          '--to-seq',
          '1',
          '--json',
          '--nats-url',
          env.server.url,
          '--prefix',
          prefix,
        ],
        { timeoutMs: 120_000 },
      );
      expect(run.code, run.stderr).toBe(0);
      const r = JSON.parse(run.stdout) as RewindReply;
      expect(r).toMatchObject({ fromSeq: 1, toSeq: 200, reread: 200, new: 0, done: true });
      const again = await startedCounts(env.nc, prefix, 'torder');
      expect(again.size).toBe(180);
      expect([...again.values()].every((n) => n === 1)).toBe(true);
      expect([...effects.keys()].sort()).toEqual([...distinct].sort());
      expect([...effects.values()].every((n) => n === 1)).toBe(true);
    },
  );

  it(
    'signal trigger: 50 keys x 10 ordered messages, holder SIGKILLed, nats-server restarted, rewind after the dedup window: each workflow saw 1..10 once, in order',
    { timeout: 240_000 },
    async () => {
      const prefix = uniquePrefix();
      const stream = `PAY_${prefix}`;
      const subj = `${prefix}-pay`;
      await userStream(env.nc, stream, [`${subj}.>`]);
      const dir = mkdtempSync(join(tmpdir(), 'jf-trig-'));
      const config = join(dir, 'engine.json');
      // A short inbox dedup window: the rewind comes after it, so only the records' watermarks
      // can tell the repeats.
      writeFileSync(config, JSON.stringify({ duplicateWindowMs: 1_000 }));
      const vars = {
        JF_T_PAY_STREAM: stream,
        JF_T_PAY_SUBJECT: `${subj}.>`,
        JETFLOW_CONFIG: config,
      };
      const procs = await engines(prefix, vars);
      const c = await Client.connect(env.server.url, { prefix });
      closers.push(() => c.close());
      const keys = Array.from({ length: 50 }, (_, i) => `p${i}`);
      for (const k of keys) await c.start('tpay', k, {});
      let sent = 0;
      for (let n = 1; n <= 10; n++) {
        for (const k of keys) {
          await publish(env.nc, `${subj}.${k}`, { orderId: k, n }, `${k}-${n}`);
          sent++;
          if (sent === 150) await (await holderOf(c, 'payments', procs)).kill();
          if (sent === 300) await env.server.restart();
        }
        await sleep(30);
      }
      await until('drained', () => drained(env.nc, stream, 'payments'), 120_000);
      for (const k of keys)
        expect(
          await until(`${k} seen`, async () => {
            const s = await seen(c, k);
            return s.length >= 10 ? s : undefined;
          }),
        ).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const jsm = await jetstreamManager(env.nc);
      const inbox = await jsm.streams.info(topologyNames(prefix).inboxStream);
      expect(inbox.config.duplicate_window).toBe(1_000 * 1_000_000);
      await sleep(1_500);
      const r = await c.triggers<RewindReply>(
        'rewind',
        { name: 'payments', toSeq: 1 },
        { timeoutMs: 120_000 },
      );
      expect(r).toMatchObject({ fromSeq: 1, toSeq: 500, reread: 500, new: 0, done: true });
      for (const k of keys) expect(await seen(c, k)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    },
  );
});
