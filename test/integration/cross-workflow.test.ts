/**
 * Cross-workflow effects (E8) for any machine, in wire terms, on a real nats-server with an
 * engine in this process: `sendToWorkflow` exactly once (incl. `startIfAbsent`), the
 * watermark beyond the dedup window, `jetflow.send.failed`, child workflows (`workflow()`:
 * onDone / onError, attach, parentClose cancel vs abandon).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headers } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { pack } from '../../src/contracts/codec.js';
import { topologyNames } from '../../src/nats/topology.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import type { JournalEntry, WorkflowRecord } from '../../src/contracts/wire.js';

const env = useServer();
const prefix = uniquePrefix();
const names = topologyNames(prefix);
let engine: Engine;
let client: Client;
let worker: Worker;
/** Gates of the `slowStep` activity, by label: the test decides when a child's work ends. */
const gates = new Map<string, () => void>();
const workCalls: string[] = [];

beforeAll(async () => {
  engine = await startEngine(env.server.url, prefix);
  client = new Client(env.nc, { prefix });
  worker = await createWorker({
    connection: env.nc,
    prefix,
    activities: {
      slowStep: async ({ label }: { label: string }) => {
        workCalls.push(label);
        await new Promise<void>((ok) => gates.set(label, ok));
        return `worked ${label}`;
      },
    },
  });
});
afterAll(async () => {
  for (const open of gates.values()) open();
  await worker?.close();
  await engine?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(what: string, f: () => Promise<T | undefined | false>, ms = 10_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(50);
  }
}

async function record(type: string, id: string): Promise<WorkflowRecord | undefined> {
  const store = createKvRecordStore(await new Kvm(env.nc).open(names.bucket));
  return (await store.get(type, id))?.record;
}

type Ctx = Record<string, unknown>;
const context = async <T = Ctx>(type: string, id: string) =>
  (await client.query(type, id)).context as T;

async function journal(type: string, id: string): Promise<JournalEntry[]> {
  const out: JournalEntry[] = [];
  for await (const e of client.historyAll(type, id)) out.push(e);
  return out;
}

describe('sendToWorkflow', () => {
  it('delivers an event exactly once, in order, with its sender as $from', async () => {
    await client.start('xsender', 's1');
    await client.start('xreceiver', 'r1');
    const to = { type: 'xreceiver', id: 'r1' };
    await client.signal('xsender', 's1', { type: 'SEND', to, event: { type: 'PING', n: 1 } });
    await client.signal('xsender', 's1', {
      type: 'SEND_TWO',
      to,
      a: { type: 'PING', n: 2 },
      b: { type: 'PING', n: 3 },
    });
    const got = await until('three pings', async () => {
      const c = await context<{ got: { n: number; from: unknown }[] }>('xreceiver', 'r1');
      return c.got.length >= 3 ? c.got : undefined;
    });
    expect(got).toEqual([1, 2, 3].map((n) => ({ n, from: { type: 'xsender', id: 's1' } })));
    // The receiver's watermark for the sender: the last applied send (step 2, second effect).
    const r = await record('xreceiver', 'r1');
    const s = await record('xsender', 's1');
    expect(s!.step).toBe(2);
    const sends = s!.outbox.flatMap((e, i) => (e.kind === 'message' ? [i] : []));
    expect(r!.inbound).toEqual({ 'xsender.s1': [2, sends[1]] });
    await sleep(200);
    expect((await context<{ got: unknown[] }>('xreceiver', 'r1')).got).toHaveLength(3);
  });

  it('a repeat of a send after the dedup window (same body, fresh msg id) is ignored by the watermark', async () => {
    await client.start('xsender', 's2');
    await client.start('xreceiver', 'r2');
    const to = { type: 'xreceiver', id: 'r2' };
    await client.signal('xsender', 's2', { type: 'SEND', to, event: { type: 'PING', n: 1 } });
    await until('ping applied', async () => {
      const c = await context<{ got: unknown[] }>('xreceiver', 'r2');
      return c.got.length === 1;
    });
    // Re-perform the sender's outbox send as an engine would after a crash past the dedup
    // window: the very same body, but a msg id the server has never seen.
    const s = (await record('xsender', 's2'))!;
    const index = s.outbox.findIndex((e) => e.kind === 'message');
    const e = s.outbox[index]!;
    if (e.kind !== 'message') throw new Error('no send in the outbox');
    const h = headers();
    h.set('Content-Type', 'application/msgpack');
    await jetstream(env.nc).publish(
      `${prefix}.inbox.signal.xreceiver.r2`,
      pack({ ...e.body, from: { type: 'xsender', id: 's2', step: s.step, index } }),
      { msgID: `replay-${Date.now()}`, headers: h },
    );
    const ignored = await until('the replay is journaled as ignored', async () => {
      const j = await journal('xreceiver', 'r2');
      return j.find((x) => x.kind === 'ignored');
    });
    expect(ignored.kind === 'ignored' && ignored.reason).toMatch(/repeat of send xsender\.s2/);
    expect((await context<{ got: unknown[] }>('xreceiver', 'r2')).got).toHaveLength(1);
    // A new send still goes through.
    await client.signal('xsender', 's2', { type: 'SEND', to, event: { type: 'PING', n: 2 } });
    await until('second ping', async () => {
      const c = await context<{ got: { n: number }[] }>('xreceiver', 'r2');
      return c.got.length === 2 && c.got[1]!.n === 2;
    });
  });

  it('startIfAbsent starts the target with its input, then delivers the event once', async () => {
    await client.start('xsender', 's3');
    const to = { type: 'xreceiver', id: 'r3' };
    await client.signal('xsender', 's3', {
      type: 'SEND_START',
      to,
      event: { type: 'PING', n: 7 },
      input: { label: 'made-by-send' },
    });
    const c = await until('target started and pinged', async () => {
      const q = await client.query('xreceiver', 'r3').catch(() => undefined);
      const ctx = q?.context as { got: unknown[]; label: string } | undefined;
      return ctx && ctx.got.length === 1 ? ctx : undefined;
    });
    expect(c).toEqual({
      label: 'made-by-send',
      got: [{ n: 7, from: { type: 'xsender', id: 's3' } }],
    });
    const j = await journal('xreceiver', 'r3');
    expect(j.filter((x) => x.kind === 'step').map((x) => x.kind === 'step' && x.cause)).toEqual([
      'start',
      'signal',
    ]);
    // A second send with startIfAbsent to the now existing target only delivers.
    await client.signal('xsender', 's3', {
      type: 'SEND_START',
      to,
      event: { type: 'PING', n: 8 },
      input: { label: 'ignored' },
    });
    await until('second ping', async () => {
      const ctx = await context<{ got: unknown[]; label: string }>('xreceiver', 'r3');
      return ctx.got.length === 2 && ctx.label === 'made-by-send';
    });
  });

  it('an undeliverable send comes back as jetflow.send.failed: missing, finished, not accepted', async () => {
    await client.start('xsender', 's4');
    await client.start('xreceiver', 'closed4');
    await client.signal('xreceiver', 'closed4', { type: 'CLOSE' });
    await client.start('xreceiver', 'done4');
    await client.signal('xreceiver', 'done4', { type: 'FINISH' });
    for (const id of ['missing4', 'done4', 'closed4'])
      await client.signal('xsender', 's4', {
        type: 'SEND',
        to: { type: 'xreceiver', id },
        event: { type: 'PING', n: 1 },
      });
    const failed = await until('three failures', async () => {
      const c = await context<{ failed: { to: { id: string }; error: { code: string } }[] }>(
        'xsender',
        's4',
      );
      return c.failed.length >= 3 ? c.failed : undefined;
    });
    expect(failed.map((f) => [f.to.id, f.error.code])).toEqual([
      ['missing4', 'not_found'],
      ['done4', 'already_finished'],
      ['closed4', 'event_not_accepted'],
    ]);
    expect(failed[0]).toMatchObject({
      event: { type: 'PING', n: 1 },
      error: { type: 'SendFailed' },
    });
    await sleep(300);
    expect((await context<{ failed: unknown[] }>('xsender', 's4')).failed).toHaveLength(3);
    await expect(client.query('xreceiver', 'missing4')).rejects.toMatchObject({
      code: 'not_found',
    });
  });
});

describe('child workflows (workflow())', () => {
  it('starts a child, and onDone gets its output; the child knows its parent', async () => {
    await client.start('xparent', 'p1');
    await client.signal('xparent', 'p1', { type: 'START', childId: 'c1', label: 'one' });
    const q = await until('child running', () =>
      client.query('xchild', 'c1').catch(() => undefined),
    );
    expect(q.parent).toEqual({ type: 'xparent', id: 'p1' });
    await client.signal('xchild', 'c1', { type: 'DONE', value: 42 });
    expect(await client.result('xparent', 'p1')).toEqual({
      output: { label: 'one', worked: 42 },
      error: null,
    });
  });

  it('a child that fails or is canceled gives onError ChildFailed / ChildCanceled', async () => {
    await client.start('xparent', 'p2');
    await client.signal('xparent', 'p2', { type: 'START', childId: 'c2', label: 'two' });
    await until('child c2', () => client.query('xchild', 'c2').catch(() => undefined));
    await client.signal('xchild', 'c2', { type: 'FAIL' });
    const out2 = await client.result<{ error: Record<string, unknown> }>('xparent', 'p2');
    expect(out2.error).toMatchObject({
      type: 'ChildFailed',
      details: { type: 'xchild', id: 'c2', error: { type: 'Boom' } },
    });

    await client.start('xparent', 'p3');
    await client.signal('xparent', 'p3', { type: 'START', childId: 'c3', label: 'three' });
    await until('child c3', () => client.query('xchild', 'c3').catch(() => undefined));
    await client.cancel('xchild', 'c3', 'operator said so');
    const out3 = await client.result<{ error: Record<string, unknown> }>('xparent', 'p3');
    expect(out3.error).toMatchObject({ type: 'ChildCanceled', code: 'canceled' });
  });

  it('a child id that exists with another parent gives ChildAlreadyExists; the same start again is a no-op', async () => {
    await client.start('xchild', 'taken');
    await client.start('xparent', 'p4');
    await client.signal('xparent', 'p4', { type: 'START', childId: 'taken' });
    const out = await client.result<{ error: Record<string, unknown> }>('xparent', 'p4');
    expect(out.error).toMatchObject({ type: 'ChildAlreadyExists', code: 'conflict' });
    // The existing workflow was not touched.
    expect((await client.query('xchild', 'taken')).status).toBe('running');
    expect((await record('xchild', 'taken'))!.parent).toBeUndefined();
  });

  it('attach awaits an existing workflow, and an already finished one answers at once', async () => {
    await client.start('xchild', 'a1', { label: 'a1' });
    await client.start('xparent', 'p5');
    await client.signal('xparent', 'p5', { type: 'ATTACH', childId: 'a1' });
    await until('watcher registered', async () => {
      const r = await record('xchild', 'a1');
      return Object.keys(r?.watchers ?? {}).length === 1;
    });
    await client.signal('xchild', 'a1', { type: 'DONE', value: 'x' });
    expect(await client.result('xparent', 'p5')).toEqual({
      output: { label: 'a1', worked: 'x' },
      error: null,
    });
    // Finished already: answered at once.
    await client.start('xparent', 'p6');
    await client.signal('xparent', 'p6', { type: 'ATTACH', childId: 'a1' });
    expect(await client.result('xparent', 'p6')).toEqual({
      output: { label: 'a1', worked: 'x' },
      error: null,
    });
    // Missing: ChildNotFound.
    await client.start('xparent', 'p7');
    await client.signal('xparent', 'p7', { type: 'ATTACH', childId: 'nobody' });
    const out = await client.result<{ error: Record<string, unknown> }>('xparent', 'p7');
    expect(out.error).toMatchObject({ type: 'ChildNotFound', code: 'not_found' });
    // An attached workflow is never canceled by its watcher leaving.
    await client.start('xchild', 'a2');
    await client.start('xparent', 'p8');
    await client.signal('xparent', 'p8', { type: 'ATTACH', childId: 'a2' });
    await until('watcher registered', async () => {
      const r = await record('xchild', 'a2');
      return Object.keys(r?.watchers ?? {}).length === 1;
    });
    await client.signal('xparent', 'p8', { type: 'LEAVE' });
    await sleep(300);
    expect((await client.query('xchild', 'a2')).status).toBe('running');
  });

  it('parentClose: leaving the invoking state cancels the child (cancel) or leaves it running (abandon)', async () => {
    await client.start('xparent', 'p9');
    await client.signal('xparent', 'p9', { type: 'START', childId: 'c9', label: 'nine' });
    await until('child c9', () => client.query('xchild', 'c9').catch(() => undefined));
    await client.signal('xchild', 'c9', { type: 'WORK' });
    await until('c9 works', () => Promise.resolve(workCalls.includes('nine')));
    await client.signal('xparent', 'p9', { type: 'LEAVE' });
    const c9 = await until('c9 canceled', async () => {
      const q = await client.query('xchild', 'c9');
      return q.status === 'canceled' ? q : undefined;
    });
    expect(c9.status).toBe('canceled');

    await client.start('xparent', 'p10');
    await client.signal('xparent', 'p10', { type: 'START_ABANDON', childId: 'c10', label: 'ten' });
    await until('child c10', () => client.query('xchild', 'c10').catch(() => undefined));
    await client.signal('xparent', 'p10', { type: 'LEAVE' });
    await client.signal('xparent', 'p10', { type: 'FINISH' });
    await client.result('xparent', 'p10');
    await sleep(300);
    expect((await client.query('xchild', 'c10')).status).toBe('running');
    // The abandoned child's end is told to a parent that no longer waits: ignored there.
    await client.signal('xchild', 'c10', { type: 'DONE', value: 1 });
    await until(
      'c10 done',
      async () => (await client.query('xchild', 'c10')).status === 'completed',
    );
    const ignored = await until('parent ignores the late result', async () => {
      const j = await journal('xparent', 'p10');
      return j.find((x) => x.kind === 'ignored');
    });
    expect(ignored.kind === 'ignored' && ignored.reason).toMatch(/after the workflow completed/);
  });
});
