/**
 * Activity trees end to end, in wire terms (ACTIVITY-TREES §2.9): a real nats-server, an engine
 * and a worker in this process. Node status changes are read from the `nodes` events the engine
 * publishes on `wf.events.<type>.<id>`, alerts from `wf.alerts.<queue>.>`.
 */
import { describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker, withDecisions, type ActivityFn } from '../../src/worker/index.js';
import { TerminalError } from '../../src/errors.js';
import { unpack } from '../../src/contracts/codec.js';
import { activityTree } from '../../actors/activity-tree.js';
import { merchantPayment } from '../../actors/merchant-payment.js';
import type { WorkflowDefinition } from '../../src/engine/registry.js';

const env = useServer();
const dec = new TextDecoder();
const T = 'activityTree';

interface Change {
  nodeId: string;
  name: string;
  from: string | null;
  to: string;
  at: string;
  attempt?: number;
  outcome?: string;
}

async function setup(
  activities: Record<string, ActivityFn>,
  workflows: WorkflowDefinition[] = [activityTree()],
  engineOpts: Record<string, unknown> = {},
  queues?: string[],
) {
  const prefix = uniquePrefix();
  const engine = await startEngine(env.server.url, prefix, { workflows, ...engineOpts });
  const worker = await createWorker({
    connection: env.nc,
    prefix,
    activities,
    ...(queues ? { queues } : {}),
  });
  const client = new Client(env.nc, { prefix });
  /** Every node change of workflow `id`, in step order, as the events stream tells them. */
  const watch = (id: string) => {
    const changes: Change[] = [];
    const steps: Change[][] = [];
    const sub = env.nc.subscribe(`${prefix}.events.${T}.${id}`, {
      callback: (_e, m) => {
        const n = JSON.parse(dec.decode(m.data)) as {
          emitted?: { type: string; changes?: Change[] }[];
        };
        for (const e of n.emitted ?? []) {
          if (e.type !== 'nodes') continue;
          changes.push(...e.changes!);
          steps.push(e.changes!);
        }
      },
    });
    return { changes, steps, stop: () => sub.unsubscribe() };
  };
  const alerts = (queue: string) => {
    const got: Record<string, unknown>[] = [];
    const sub = env.nc.subscribe(`${prefix}.alerts.${queue}.>`, {
      callback: (_e, m) => {
        got.push(JSON.parse(dec.decode(m.data)) as Record<string, unknown>);
      },
    });
    return { got, stop: () => sub.unsubscribe() };
  };
  return {
    prefix,
    client,
    worker,
    engine,
    watch,
    alerts,
    async close() {
      await worker.close();
      await engine.close();
    },
  };
}

async function until<T>(f: () => Promise<T | undefined> | T | undefined, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 25));
  }
}

type View = { nodes: { id: string; name: string; status: string; children: unknown[] }[] };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** `from→to` of one node, in order. */
const path = (cs: Change[], name: string) =>
  cs.filter((c) => c.name === name).map((c) => `${c.from}→${c.to}`);

describe('activity trees', () => {
  it('[nb1, b2, nb3, ff4]: nb1+b2 run together, nb3+ff4 after b2, the parent completes while ff4 runs; tree view as JSON and text', async () => {
    const released = { ff4: false };
    const t = await setup({
      sig: () =>
        withDecisions({ decided: 4 }, [
          { name: 'nb1', mode: 'non_blocking' },
          { name: 'b2', mode: 'blocking' },
          { name: 'nb3', mode: 'non_blocking' },
          { name: 'ff4', mode: 'fire_and_forget' },
        ]),
      nb1: () => sleep(400).then(() => 'nb1'),
      b2: () => sleep(100).then(() => 'b2'),
      nb3: () => sleep(100).then(() => 'nb3'),
      ff4: async () => {
        await until(() => released.ff4, 30_000);
        return 'ff4';
      },
    });
    const w = t.watch('m1');
    try {
      await t.client.start(T, 'm1', { signalQueue: 'sig' });
      const r = await t.client.signal(T, 'm1', { type: 'signal', name: 'sig' });
      expect(r.result).toEqual({ nodeId: 'n1', duplicate: false });
      // The parent completes while ff4 is still running.
      await until(() => w.changes.some((c) => c.name === 'sig' && c.to === 'complete'));
      const byStep = w.steps.map((s) => s.map((c) => `${c.name}:${c.from}→${c.to}`));
      // One step: sig's result creates its four children and starts nb1 and b2 (not nb3, ff4).
      const decided = byStep.find((s) => s.includes('sig:running→awaitingChildren'))!;
      expect(decided).toEqual([
        'nb1:null→ready',
        'b2:null→ready',
        'nb3:null→ready',
        'ff4:null→ready',
        'sig:running→awaitingChildren',
        'nb1:ready→running',
        'b2:ready→running',
      ]);
      // b2's completion starts nb3 and ff4 in the same step.
      const afterB2 = byStep.find((s) => s.includes('b2:running→complete'))!;
      expect(afterB2).toEqual(['b2:running→complete', 'nb3:ready→running', 'ff4:ready→running']);
      const order = w.changes.map((c) => `${c.name}:${c.to}`);
      expect(order.indexOf('sig:complete')).toBeGreaterThan(order.indexOf('nb1:complete'));
      expect(order.indexOf('sig:complete')).toBeGreaterThan(order.indexOf('nb3:complete'));
      expect(order).not.toContain('ff4:complete');

      const tree = await t.client.view<View & Record<string, unknown>>(T, 'm1', { view: 'tree' });
      expect(tree).toMatchObject({ id: 'm1', type: T, status: 'running', closed: false });
      expect(tree.nodes).toHaveLength(1);
      expect(tree.nodes[0]).toMatchObject({
        id: 'n1',
        name: 'sig',
        status: 'complete',
        output: { decided: 4 },
      });
      expect(
        tree.nodes[0]!.children.map((c) => (c as { name: string; status: string }).status),
      ).toEqual(['complete', 'complete', 'complete', 'running']);
      const { text } = await t.client.view<{ text: string }>(T, 'm1', {
        view: 'tree',
        format: 'text',
      });
      const lines = text.split('\n');
      expect(lines[0]).toBe(`${T}/m1 running`);
      expect(lines.slice(1).map((l) => l.replace(/^[│├└─ ]+/, ''))).toEqual([
        'sig [n1] complete (blocking)',
        'nb1 [n2] complete (non_blocking)',
        'b2 [n3] complete (blocking)',
        'nb3 [n4] complete (non_blocking)',
        'ff4 [n5] running (fire_and_forget)',
      ]);
      expect(lines[5]).toBe('   └─ ff4 [n5] running (fire_and_forget)');

      // close: the tree completes only once ff4 is done.
      const closed = await t.client.signal(T, 'm1', { type: 'close' });
      expect(closed.value).toBe('closing');
      released.ff4 = true;
      expect(await t.client.result(T, 'm1')).toEqual({
        nodes: 5,
        counts: { complete: 5, canceled: 0 },
      });
    } finally {
      w.stop();
      await t.close();
    }
  });

  it('two signals of one workflow run one after the other', async () => {
    const spans: Record<string, [number, number]> = {};
    const work = (name: string) => async () => {
      const s = Date.now();
      await sleep(300);
      spans[name] = [s, Date.now()];
      return name;
    };
    const t = await setup({ first: work('first'), second: work('second') });
    const w = t.watch('s1');
    try {
      await t.client.start(T, 's1', { signalQueue: 'first' });
      const a = await t.client.signal(T, 's1', { type: 'signal', name: 'first' });
      const b = await t.client.signal(T, 's1', { type: 'signal', name: 'second', queue: 'second' });
      expect([a.result, b.result]).toEqual([
        { nodeId: 'n1', duplicate: false },
        { nodeId: 'n2', duplicate: false },
      ]);
      const blocked = await t.client.view<{ node: Record<string, unknown> }>(T, 's1', {
        view: 'node',
        nodeId: 'n2',
      });
      expect(blocked.node).toMatchObject({ status: 'ready', blockedBy: 'n1' });
      await t.client.signal(T, 's1', { type: 'close' });
      await t.client.result(T, 's1');
      expect(spans.second![0]).toBeGreaterThanOrEqual(spans.first![1]);
      const order = w.changes.map((c) => `${c.name}:${c.to}`);
      expect(order.indexOf('second:running')).toBeGreaterThan(order.indexOf('first:complete'));
      // A signal key makes a repeat create nothing, beyond the dedup window.
    } finally {
      w.stop();
      await t.close();
    }
  });

  it('a flag completes at once with no task; signal keys are idempotent; reserved events are refused', async () => {
    const calls: string[] = [];
    const t = await setup({
      sig: (_i, ctx) => {
        calls.push(`sig ${JSON.stringify(ctx.node)}`);
        return withDecisions(null, [
          { name: 'done-flag', kind: 'flag', input: { ok: true } },
          { name: 'after' },
        ]);
      },
      after: () => {
        calls.push('after');
        return 'after';
      },
    });
    try {
      await t.client.start(T, 'f1', { signalQueue: 'sig' });
      const a = await t.client.signal(T, 'f1', { type: 'signal', name: 'sig', key: 'k1' });
      const again = await t.client.signal(T, 'f1', { type: 'signal', name: 'other', key: 'k1' });
      expect(again.result).toEqual({
        nodeId: a.result && (a.result as { nodeId: string }).nodeId,
        duplicate: true,
      });
      await until(async () => {
        const v = await t.client.view<{ node: { status: string } }>(T, 'f1', {
          view: 'node',
          nodeId: 'n1',
        });
        return v.node.status === 'complete' || undefined;
      });
      const flag = await t.client.view<{ node: Record<string, unknown> }>(T, 'f1', {
        view: 'node',
        nodeId: 'n2',
      });
      expect(flag.node).toMatchObject({ kind: 'flag', status: 'complete', output: { ok: true } });
      expect(
        (flag.node.history as { from: string | null; to: string }[]).map(
          (h) => `${h.from}→${h.to}`,
        ),
      ).toEqual(['null→ready', 'ready→complete']);
      expect(calls).toHaveLength(2);
      expect(calls[0]).toContain('"id":"n1"');
      expect(calls[1]).toBe('after');
      await expect(
        t.client.signal(T, 'f1', { type: 'jetflow.task.done', key: 'n3:1' }),
      ).rejects.toMatchObject({ code: 'bad_request' });
      await expect(
        t.client.signal(T, 'f1', { type: 'signal', name: 'x', mode: 'non_blocking' }),
      ).rejects.toMatchObject({
        code: 'bad_request',
        details: { field: 'mode' },
      });
      await expect(t.client.start(T, 'bad', { maxNodes: 0 })).rejects.toMatchObject({
        code: 'bad_request',
      });
      await expect(t.client.query(T, 'bad')).rejects.toMatchObject({ code: 'not_found' });
      await expect(t.client.view(T, 'f1', { view: 'nope' })).rejects.toMatchObject({
        code: 'bad_request',
        details: { views: ['tree', 'nodes', 'node'] },
      });
    } finally {
      await t.close();
    }
  });

  it('retry then success: attempt notices make the node retrying with exact delays, then complete', async () => {
    const at: number[] = [];
    const t = await setup({
      flaky: (_i, ctx) => {
        at.push(Date.now());
        if (ctx.attempt < 3) throw new Error(`bank flaky ${ctx.attempt}`);
        return 'paid';
      },
    });
    const w = t.watch('r1');
    try {
      await t.client.start(T, 'r1', { signalQueue: 'flaky' });
      await t.client.signal(T, 'r1', {
        type: 'signal',
        name: 'flaky',
        retry: { maxAttempts: 5, delaysMs: [300, 900], jitter: 0 },
      });
      await until(() => w.changes.some((c) => c.name === 'flaky' && c.to === 'complete'));
      expect(path(w.changes, 'flaky')).toEqual([
        'null→ready',
        'ready→running',
        'running→retrying',
        'retrying→complete',
      ]);
      expect(w.changes.find((c) => c.to === 'retrying')).toMatchObject({ attempt: 1 });
      expect(at).toHaveLength(3);
      expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(290);
      expect(at[1]! - at[0]!).toBeLessThan(900);
      expect(at[2]! - at[1]!).toBeGreaterThanOrEqual(890);
      const { node } = await t.client.view<{ node: Record<string, unknown> }>(T, 'r1', {
        view: 'node',
        nodeId: 'n1',
      });
      expect(node).toMatchObject({
        status: 'complete',
        attempt: 2,
        maxAttempts: 5,
        output: 'paid',
      });
      expect(
        (node.errors as { attempt: number; error: { message: string } }[]).map((e) => [
          e.attempt,
          e.error.message,
        ]),
      ).toEqual([
        [1, 'bank flaky 1'],
        [2, 'bank flaky 2'],
      ]);
      // The journal shows the failed attempts as steps of their own.
      const h = await t.client.history(T, 'r1');
      const notices = h.entries.filter(
        (e) => e.kind === 'step' && e.event.type === 'jetflow.task.retrying',
      );
      expect(notices.map((e) => (e.kind === 'step' ? e.activity?.attempt : 0))).toEqual([1, 2]);
      // One journal entry per step, numbered without gaps (notices are steps like any other).
      const steps = h.entries.filter((e) => e.kind === 'step').map((e) => e.step);
      expect(steps).toEqual(steps.map((_, i) => i));
      expect(steps.length).toBe((await t.client.query(T, 'r1')).step + 1);
    } finally {
      w.stop();
      await t.close();
    }
  });

  it('retries exhausted: the node is parked, an alert counts the blocked signals and repeats', async () => {
    const t = await setup(
      {
        pay: () => {
          const e = new Error('bank is down') as Error & { details: unknown };
          e.name = 'BankDown';
          e.details = { status: 503 };
          throw e;
        },
        later: () => 'never',
      },
      [activityTree()],
      {},
      ['bank'],
    );
    const a = t.alerts('bank');
    try {
      await t.client.start(T, 'x1', { signalQueue: 'bank', defaults: { realertMs: 1500 } });
      await t.client.signal(T, 'x1', {
        type: 'signal',
        name: 'pay',
        retry: { maxAttempts: 2, delaysMs: [50] },
      });
      await t.client.signal(T, 'x1', { type: 'signal', name: 'later', queue: 'later' });
      await t.client.signal(T, 'x1', { type: 'signal', name: 'later', queue: 'later' });
      await until(() => a.got.length >= 2 || undefined, 20_000);
      expect(a.got[0]).toMatchObject({
        type: 'nodeErrored',
        alert: 'bank',
        workflowType: T,
        id: 'x1',
        nodeId: 'n1',
        name: 'pay',
        queue: 'bank',
        run: 1,
        attempt: 2,
        maxAttempts: 2,
        onExhausted: 'park',
        error: { type: 'BankDown', message: 'bank is down', details: { status: 503 } },
        blocked: 2,
        count: 1,
      });
      expect(a.got[1]).toMatchObject({ nodeId: 'n1', count: 2, blocked: 2 });
      const tree = await t.client.view<{
        counts: Record<string, number>;
        nodes: Record<string, unknown>[];
      }>(T, 'x1', { view: 'tree' });
      expect(tree.counts).toMatchObject({ errored: 1, ready: 2 });
      expect(tree.nodes.map((n) => [n.id, n.status, n.blockedBy])).toEqual([
        ['n1', 'errored', undefined],
        ['n2', 'ready', 'n1'],
        ['n3', 'ready', 'n1'],
      ]);
      const page = await t.client.view<{ nodes: { id: string }[]; next: string | null }>(T, 'x1', {
        view: 'nodes',
        status: 'ready',
        limit: 1,
      });
      expect(page.nodes.map((n) => n.id)).toEqual(['n2']);
      const page2 = await t.client.view<{ nodes: { id: string }[]; next: string | null }>(T, 'x1', {
        view: 'nodes',
        status: 'ready',
        limit: 1,
        cursor: page.next,
      });
      expect(page2).toMatchObject({ nodes: [{ id: 'n3' }], next: null });
      // A parked node keeps a closing tree open.
      expect((await t.client.signal(T, 'x1', { type: 'close' })).value).toBe('closing');
      expect((await t.client.query(T, 'x1')).status).toBe('running');
    } finally {
      a.stop();
      await t.close();
    }
  });

  it('onExhausted "fail" ends the workflow failed with NodeFailed; result() throws', async () => {
    const t = await setup({
      pay: () => {
        throw new TerminalError('declined');
      },
    });
    try {
      await t.client.start(T, 'ff', { signalQueue: 'pay' });
      await t.client.signal(T, 'ff', { type: 'signal', name: 'pay', onExhausted: 'fail' });
      await expect(t.client.result(T, 'ff')).rejects.toMatchObject({ name: 'WorkflowFailedError' });
      const q = await t.client.query(T, 'ff');
      expect(q.status).toBe('failed');
      expect(q.error).toMatchObject({ type: 'NodeFailed', details: { nodeId: 'n1' } });
    } finally {
      await t.close();
    }
  });

  it('merchantPayment: the failed final state reports status failed (E11) and result() throws', async () => {
    const t = await setup(
      {
        getSoldVouchers: () => {
          throw new TerminalError('merchant unknown');
        },
      },
      [merchantPayment],
    );
    try {
      await t.client.start('merchantPayment', 'mp1', { merchantId: 'm-404' });
      await expect(t.client.result('merchantPayment', 'mp1')).rejects.toMatchObject({
        name: 'WorkflowFailedError',
      });
      const q = await t.client.query('merchantPayment', 'mp1');
      expect(q.status).toBe('failed');
      expect(q.value).toBe('failed');
      expect(q.error).toMatchObject({ message: 'merchant unknown' });
    } finally {
      await t.close();
    }
  });

  it('a node scheduled 2 s ahead is scheduled, then runs at its time', async () => {
    const runs: number[] = [];
    const t = await setup({ later: () => void runs.push(Date.now()) });
    const w = t.watch('d1');
    try {
      await t.client.start(T, 'd1', { signalQueue: 'later' });
      const fireAt = new Date(Date.now() + 2000).toISOString();
      await t.client.signal(T, 'd1', { type: 'signal', name: 'later', fireAt });
      const { text } = await t.client.view<{ text: string }>(T, 'd1', {
        view: 'tree',
        format: 'text',
      });
      expect(text.split('\n')[1]).toBe(`└─ later [n1] scheduled (blocking, fires at ${fireAt})`);
      await until(() => w.changes.some((c) => c.to === 'complete'));
      expect(runs).toHaveLength(1);
      expect(runs[0]).toBeGreaterThanOrEqual(Date.parse(fireAt));
      expect(runs[0]).toBeLessThan(Date.parse(fireAt) + 1500);
      expect(path(w.changes, 'later')).toEqual([
        'null→ready',
        'ready→scheduled',
        'scheduled→running',
        'running→complete',
      ]);
    } finally {
      w.stop();
      await t.close();
    }
  });

  it('a result whose decisions would not fit in the record parks its node with RecordTooLarge; the workflow runs on (E10)', async () => {
    const t = await setup({
      huge: () =>
        withDecisions(
          'too many',
          Array.from({ length: 2500 }, (_, i) => ({
            name: 'leaf',
            mode: 'non_blocking',
            input: i,
          })),
        ),
      small: () => 'ok',
    });
    try {
      await t.client.start(T, 'huge', { signalQueue: 'huge', maxNodes: 5000 });
      await t.client.signal(T, 'huge', { type: 'signal', name: 'huge' });
      const v = await until(async () => {
        const n = await t.client.view<{ node: Record<string, unknown> }>(T, 'huge', {
          view: 'node',
          nodeId: 'n1',
        });
        return n.node.status === 'errored' ? n : undefined;
      });
      expect(v.node).toMatchObject({
        error: { type: 'RecordTooLarge', code: 'payload_too_large' },
        childIds: [],
      });
      const q = await t.client.query(T, 'huge');
      expect(q.status).toBe('running');
      // Another lane still runs.
      await t.client.signal(T, 'huge', {
        type: 'signal',
        name: 'small',
        queue: 'small',
        lane: 'other',
      });
      await until(async () => {
        const n = await t.client.view<{ node: { status: string } }>(T, 'huge', {
          view: 'node',
          nodeId: 'n2',
        });
        return n.node.status === 'complete' || undefined;
      });
    } finally {
      await t.close();
    }
  });

  it('a 1,000-child non-blocking fan-out with join completes (node count, record size, time)', async () => {
    const N = 1000;
    // The fan decides once join and close are applied (else they queue behind its leaves' results).
    let release = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const t = await setup({
      fan: async () => {
        await gate;
        return withDecisions(
          'fanned',
          Array.from({ length: N }, (_, i) => ({ name: 'leaf', mode: 'non_blocking', input: i })),
        );
      },
      leaf: (i: number) => i * 2,
      join: () => 'joined',
    });
    try {
      await t.client.start(T, 'big', { signalQueue: 'fan' });
      const t0 = Date.now();
      await t.client.signal(T, 'big', { type: 'signal', name: 'fan' });
      await t.client.signal(T, 'big', { type: 'signal', name: 'join', queue: 'join' });
      await t.client.signal(T, 'big', { type: 'close' });
      release();
      const out = await t.client.result(T, 'big', { timeoutMs: 170_000 });
      const ms = Date.now() - t0;
      expect(out).toEqual({ nodes: N + 2, counts: { complete: N + 2, canceled: 0 } });
      const kv = await new Kvm(env.nc).open(`${t.prefix}_workflows`);
      const e = await kv.get(`${T}.big`);
      const bytes = e!.value.length;
      const rec = unpack(e!.value) as { step: number };
      console.log(`fan-out: ${N + 2} nodes, ${rec.step} steps, record ${bytes} bytes, ${ms} ms`);
      expect(bytes).toBeLessThan(1024 * 1024);
    } finally {
      await t.close();
    }
  }, 180_000);
});
