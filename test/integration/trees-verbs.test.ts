/**
 * Node verbs on activity trees (ACTIVITY-TREES §2.7, §2.9.9), in wire terms against a real
 * nats-server, engine and worker: a parked node (retries exhausted, alert with the blocked count)
 * dealt with by `retry`, `resolve` or `shutdown`; `cancel` and `prune`; pause/resume of dispatch;
 * every verb refused in a wrong state with `invalid_state`, an unknown node with `not_found`, a
 * workflow that is not a tree with `event_not_accepted`; requestIds applied once; journaled.
 */
import { describe, expect, it } from 'vitest';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runJetflow } from '../harness/cli.js';
import { Client } from '../../src/client/index.js';
import { createWorker, withDecisions, type ActivityFn } from '../../src/worker/index.js';
import { JetflowError } from '../../src/errors.js';
import { workflows } from '../fixtures/workflows.js';
import type { AdminReply, JournalEntry } from '../../src/contracts/wire.js';

const env = useServer();
const dec = new TextDecoder();
const T = 'activityTree';
const who = { by: 'ops@test', reason: 'bank was down' };

async function until<T>(f: () => Promise<T | undefined> | T | undefined, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error('timed out waiting');
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

async function setup(activities: Record<string, ActivityFn>, queues?: string[]) {
  const prefix = uniquePrefix();
  const engine = await startEngine(env.server.url, prefix, {
    workflows,
  });
  const worker = await createWorker({
    connection: env.nc,
    prefix,
    activities,
    ...(queues ? { queues } : {}),
  });
  const client = new Client(env.nc, { prefix });
  const alerts: Record<string, unknown>[] = [];
  const sub = env.nc.subscribe(`${prefix}.alerts.>`, {
    callback: (_e, m) => {
      alerts.push(JSON.parse(dec.decode(m.data)) as Record<string, unknown>);
    },
  });
  const node = async (id: string, nodeId: string) =>
    (
      await client.view<{ node: Record<string, unknown> & { status: string } }>(T, id, {
        view: 'node',
        nodeId,
      })
    ).node;
  return {
    prefix,
    client,
    alerts,
    node,
    /** Wait until node `nodeId` of tree `id` is in `status`. */
    async until(id: string, nodeId: string, status: string) {
      return await until(async () => {
        const n = await node(id, nodeId);
        return n.status === status ? n : undefined;
      });
    },
    async close() {
      sub.unsubscribe();
      await worker.close();
      await engine.close();
    },
  };
}

/** An error's details without `accepts` (every refused message carries it, `[]` for verbs). */
function details(e: JetflowError): unknown {
  const d = { ...(e.details as Record<string, unknown>) };
  expect(d.accepts).toEqual([]);
  delete d.accepts;
  return d;
}

const changed = (r: AdminReply) => r.result!.changed.map((c) => `${c.nodeId}:${c.from}→${c.to}`);

describe('activity trees: node verbs', () => {
  it('retries exhausted → parked, alert counts the blocked signals; retry by an operator runs it again (run 2) and the lane moves on; a repeated requestId changes nothing', async () => {
    const bank = { down: true, calls: 0 };
    const t = await setup(
      {
        pay: () => {
          bank.calls++;
          if (bank.down) {
            const e = new Error('bank is down');
            e.name = 'BankDown';
            throw e;
          }
          return 'paid';
        },
        later: () => 'later',
      },
      ['bank', 'later'],
    );
    try {
      await t.client.start(T, 'p1', { signalQueue: 'bank' });
      await t.client.signal(T, 'p1', {
        type: 'signal',
        name: 'pay',
        retry: { maxAttempts: 2, delaysMs: [50] },
      });
      await t.client.signal(T, 'p1', { type: 'signal', name: 'later', queue: 'later' });
      await t.client.signal(T, 'p1', { type: 'signal', name: 'later', queue: 'later' });
      await t.until('p1', 'n1', 'errored');
      const alert = await until(() => t.alerts.find((a) => a.nodeId === 'n1'));
      expect(alert).toMatchObject({ type: 'nodeErrored', run: 1, attempt: 2, blocked: 2 });
      expect(bank.calls).toBe(2);

      bank.down = false;
      const r = await t.client.node('retry', T, 'p1', 'n1', {
        ...who,
        attempts: 3,
        requestId: 'INC-1-p1',
      });
      expect(r).toMatchObject({ id: 'p1', type: T, verb: 'retry', result: { nodeId: 'n1' } });
      expect(changed(r)).toEqual(['n1:errored→running']);
      await t.until('p1', 'n3', 'complete');
      const n1 = await t.node('p1', 'n1');
      expect(n1).toMatchObject({ status: 'complete', run: 2, attempt: 0, maxAttempts: 3 });
      expect(
        (n1.history as { to: string; by?: string }[]).map(
          (h) => `${h.to}${h.by ? ` by ${h.by}` : ''}`,
        ),
      ).toEqual(['ready', 'running', 'retrying', 'errored', 'running by ops@test', 'complete']);
      expect(bank.calls).toBe(3);
      // The same request again: nothing more happens.
      const again = await t.client.node('retry', T, 'p1', 'n1', { ...who, requestId: 'INC-1-p1' });
      expect(again).toMatchObject({ duplicate: true, verb: 'retry' });
      // Now complete: retry is refused, with the node's status and the allowed ones.
      const e = await errorOf(t.client.node('retry', T, 'p1', 'n1', who));
      expect(e.code).toBe('invalid_state');
      expect(details(e)).toEqual({
        nodeId: 'n1',
        status: 'complete',
        allowed: ['retrying', 'errored'],
      });
      // Journaled: the operator's step with who, why, request id and node; the refusal as rejected.
      const entries: JournalEntry[] = [];
      for await (const x of t.client.historyAll(T, 'p1')) entries.push(x);
      const op = entries.find((x) => x.kind === 'step' && x.operator);
      expect(op).toMatchObject({
        event: { type: 'jetflow.admin.retry' },
        operator: {
          action: 'retry',
          by: 'ops@test',
          requestId: 'INC-1-p1',
          params: { nodeId: 'n1', attempts: 3 },
        },
      });
      await until(async () => {
        const all: JournalEntry[] = [];
        for await (const x of t.client.historyAll(T, 'p1')) all.push(x);
        return (
          all.some((x) => x.kind === 'rejected' && x.error.code === 'invalid_state') || undefined
        );
      });
      expect(bank.calls).toBe(3);
    } finally {
      await t.close();
    }
  });

  it('resolve with decisions (the rescue_with pattern) and shutdown of a parked node; cancel and prune', async () => {
    const ran: string[] = [];
    const t = await setup({
      pay: () => {
        throw new Error('declined');
      },
      refund: () => void ran.push('refund'),
      slow: () => new Promise((r) => setTimeout(() => r('slow'), 60_000)),
      parent: () =>
        withDecisions('p', [
          { name: 'slow', mode: 'non_blocking' },
          { name: 'slow', mode: 'non_blocking' },
        ]),
      later: () => void ran.push('later'),
    });
    try {
      const park = async (id: string) => {
        await t.client.start(T, id, { signalQueue: 'pay' });
        await t.client.signal(T, id, { type: 'signal', name: 'pay', retry: { maxAttempts: 1 } });
        await t.client.signal(T, id, { type: 'signal', name: 'later', queue: 'later' });
        await t.until(id, 'n1', 'errored');
      };
      // resolve: output and children, as a result would have them.
      await park('rs');
      const r = await t.client.node('resolve', T, 'rs', 'n1', {
        ...who,
        output: { manual: true },
        decisions: [{ name: 'refund', queue: 'refund' }],
      });
      expect(changed(r)).toEqual([
        'n3:null→ready',
        'n1:errored→awaitingChildren',
        'n3:ready→running',
      ]);
      await t.until('rs', 'n2', 'complete');
      expect(await t.node('rs', 'n1')).toMatchObject({
        status: 'complete',
        outcome: 'resolved',
        output: { manual: true },
      });
      expect(ran).toEqual(['refund', 'later']);
      // bad decisions: bad_request naming the index and field; nothing changed.
      await park('rb');
      const bad = await errorOf(
        t.client.node('resolve', T, 'rb', 'n1', { ...who, decisions: [{ name: 'x', mode: 'up' }] }),
      );
      expect(bad.code).toBe('bad_request');
      expect(bad.details).toMatchObject({ index: 0, field: 'mode' });
      expect((await t.node('rb', 'n1')).status).toBe('errored');

      // shutdown: the later signal of the lane is canceled, then the node completes.
      const s = await t.client.node('shutdown', T, 'rb', 'n1', { ...who, output: 'given up' });
      expect(changed(s)).toEqual(['n2:ready→canceled', 'n1:errored→complete']);
      expect(await t.node('rb', 'n2')).toMatchObject({
        status: 'canceled',
        canceledBy: 'shutdown',
      });
      expect(await t.node('rb', 'n1')).toMatchObject({ outcome: 'shutdown', output: 'given up' });

      // cancel a running node: its task is stopped, the lane moves on.
      await t.client.start(T, 'c1', { signalQueue: 'slow' });
      await t.client.signal(T, 'c1', { type: 'signal', name: 'slow' });
      await t.client.signal(T, 'c1', { type: 'signal', name: 'later', queue: 'later' });
      await t.until('c1', 'n1', 'running');
      const c = await t.client.node('cancel', T, 'c1', 'n1', who);
      expect(changed(c)).toEqual(['n1:running→canceled', 'n2:ready→running']);
      await t.until('c1', 'n2', 'complete');
      expect((await t.client.query(T, 'c1')).step).toBeGreaterThan(0);

      // prune a node awaiting its children: they are canceled, it completes at once.
      await t.client.start(T, 'pr', { signalQueue: 'parent' });
      await t.client.signal(T, 'pr', { type: 'signal', name: 'parent' });
      await t.until('pr', 'n1', 'awaitingChildren');
      const p = await t.client.node('prune', T, 'pr', 'n1', who);
      expect(changed(p)).toEqual([
        'n3:running→canceled',
        'n2:running→canceled',
        'n1:awaitingChildren→complete',
      ]);
      expect(await t.node('pr', 'n2')).toMatchObject({ canceledBy: 'prune' });
      await t.client.signal(T, 'pr', { type: 'close' });
      expect(await t.client.result(T, 'pr')).toEqual({
        nodes: 3,
        counts: { complete: 1, canceled: 2 },
      });
    } finally {
      await t.close();
    }
  }, 60_000);

  it('pause / resume of dispatch: reached nodes wait paused (no task), resume dispatches them; twice changes nothing', async () => {
    const ran: string[] = [];
    const t = await setup({ a: () => void ran.push('a'), b: () => void ran.push('b') });
    try {
      await t.client.start(T, 'pd', { signalQueue: 'a' });
      const p = await t.client.pauseDispatch(T, 'pd', who);
      expect(p).toMatchObject({ verb: 'pause', result: { changed: [], dispatchPaused: true } });
      expect(p.paused).toBe(false); // the workflow itself is not paused
      expect((await t.client.pauseDispatch(T, 'pd', who)).result).toEqual({
        changed: [],
        dispatchPaused: true,
      });
      await t.client.signal(T, 'pd', { type: 'signal', name: 'a' });
      await t.client.signal(T, 'pd', { type: 'signal', name: 'b', queue: 'b', lane: 'other' });
      const { text } = await t.client.view<{ text: string }>(T, 'pd', {
        view: 'tree',
        format: 'text',
      });
      expect(text.split('\n')[0]).toBe(`${T}/pd running paused`);
      expect((await t.node('pd', 'n1')).status).toBe('paused');
      await new Promise((r) => setTimeout(r, 300));
      expect(ran).toEqual([]);
      const r = await t.client.resumeDispatch(T, 'pd', who);
      expect(r.result).toEqual({
        changed: [
          { nodeId: 'n1', from: 'paused', to: 'running' },
          { nodeId: 'n2', from: 'paused', to: 'running' },
        ],
        dispatchPaused: false,
      });
      await t.until('pd', 'n2', 'complete');
      await t.until('pd', 'n1', 'complete');
      expect(ran.sort()).toEqual(['a', 'b']);
      expect((await t.client.resumeDispatch(T, 'pd', who)).result).toEqual({
        changed: [],
        dispatchPaused: false,
      });
    } finally {
      await t.close();
    }
  });

  it('every verb refused in a wrong state with invalid_state; unknown node not_found; not a tree event_not_accepted; bad bodies bad_request; CLI --node', async () => {
    const t = await setup({ a: () => 'a' });
    try {
      await t.client.start(T, 'w', { signalQueue: 'a' });
      await t.client.signal(T, 'w', { type: 'signal', name: 'a' });
      await t.until('w', 'n1', 'complete');
      const allowed: Record<string, string[]> = {
        retry: ['retrying', 'errored'],
        resolve: ['scheduled', 'paused', 'running', 'retrying', 'errored'],
        shutdown: ['scheduled', 'paused', 'running', 'retrying', 'errored'],
        cancel: [
          'ready',
          'scheduled',
          'paused',
          'running',
          'retrying',
          'errored',
          'awaitingChildren',
        ],
      };
      const step = (await t.client.query(T, 'w')).step;
      for (const [verb, list] of Object.entries(allowed)) {
        const e = await errorOf(t.client.node(verb as 'retry', T, 'w', 'n1', who));
        expect([verb, e.code, details(e)]).toEqual([
          verb,
          'invalid_state',
          { nodeId: 'n1', status: 'complete', allowed: list },
        ]);
      }
      await t.client.node('cancel', T, 'w', 'n1', who).catch(() => undefined);
      // prune: any but canceled (a complete node is pruned of open fire-and-forget descendants).
      expect(changed(await t.client.node('prune', T, 'w', 'n1', who))).toEqual([]);
      // A canceled node: every verb refused.
      await t.client.signal(T, 'w', { type: 'signal', name: 'a', fireAt: Date.now() + 60_000 });
      await t.client.node('cancel', T, 'w', 'n2', who);
      for (const verb of ['retry', 'resolve', 'shutdown', 'cancel', 'prune'] as const) {
        const e = await errorOf(t.client.node(verb, T, 'w', 'n2', who));
        expect([verb, e.code, (e.details as { status: string }).status]).toEqual([
          verb,
          'invalid_state',
          'canceled',
        ]);
      }
      expect((await t.client.query(T, 'w')).step).toBe(step + 3); // the prune, a signal, a cancel
      const nf = await errorOf(t.client.node('cancel', T, 'w', 'n99', who));
      expect([nf.code, details(nf)]).toEqual(['not_found', { nodeId: 'n99' }]);
      // Not a tree.
      await t.client.start('counter', 'o1');
      const na = await errorOf(t.client.node('cancel', 'counter', 'o1', 'n1', who));
      expect(na.code).toBe('event_not_accepted');
      const nd = await errorOf(t.client.pauseDispatch('counter', 'o1', who));
      expect(nd.code).toBe('event_not_accepted');
      // Bad bodies: nothing reaches the workflow.
      const cases: [string, Record<string, unknown>, string][] = [
        ['shutdown', { ...who }, 'nodeId'],
        ['cancel', { ...who, nodeId: 'n1', actorId: 'x' }, 'unknown'],
        ['retry', { ...who, nodeId: 'n1', actorId: 'a' }, 'actorId'],
        ['resolve', { ...who, nodeId: 'n1', decisions: {} }, 'decisions'],
        ['pause', { ...who, scope: 'everything' }, 'scope'],
        ['prune', { reason: 'x', nodeId: 'n1' }, 'by'],
      ];
      for (const [verb, body, field] of cases) {
        const e = await errorOf(t.client.admin(verb as 'retry', T, 'w', body as never));
        expect([verb, e.code]).toEqual([verb, 'bad_request']);
        if (field !== 'unknown') expect((e.details as { field: string }).field).toBe(field);
      }
      // The CLI: the existing verbs with --node.
      const conn = ['--nats-url', env.server.url, '--prefix', t.prefix];
      const cli = await runJetflow([
        'retry',
        T,
        'w',
        '--node',
        'n2',
        '--by',
        'cli',
        '--reason',
        'x',
        '--json',
        ...conn,
      ]);
      expect(cli.code).toBe(4);
      expect(cli.stderr).toContain('invalid_state');
      await t.client.signal(T, 'w', { type: 'signal', name: 'a', fireAt: Date.now() + 60_000 });
      const ok = await runJetflow([
        'resolve',
        T,
        'w',
        '--node',
        'n3',
        '--output',
        '{"by":"cli"}',
        '--by',
        'cli',
        '--reason',
        'x',
        '--json',
        ...conn,
      ]);
      expect(ok.code).toBe(0);
      expect(JSON.parse(ok.stdout)).toMatchObject({
        verb: 'resolve',
        result: { nodeId: 'n3', changed: [{ nodeId: 'n3', from: 'scheduled', to: 'complete' }] },
      });
      const pd = await runJetflow([
        'pause',
        T,
        'w',
        '--scope',
        'dispatch',
        '--by',
        'cli',
        '--reason',
        'x',
        '--json',
        ...conn,
      ]);
      expect(JSON.parse(pd.stdout)).toMatchObject({ result: { dispatchPaused: true } });
    } finally {
      await t.close();
    }
  }, 60_000);
});
