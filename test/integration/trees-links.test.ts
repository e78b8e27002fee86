/**
 * Activity-tree links (`linkTo`) and child-workflow nodes (`workflow`), built on cross-workflow
 * effects (E8), in wire terms: a real nats-server, an engine and a worker in this process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';
import { Client } from '../../src/client/index.js';
import { createWorker, withDecisions, type Worker } from '../../src/worker/index.js';
import type { AdminReply } from '../../src/contracts/wire.js';

const env = useServer();
const prefix = uniquePrefix();
const T = 'activityTree';
const dec = new TextDecoder();
let engine: Engine;
let client: Client;
let worker: Worker;
const gates = new Map<string, () => void>();
/** Node changes of every tree, as the events stream tells them: `<id>:<nodeId>` → changes. */
const changes: {
  wf: string;
  nodeId: string;
  name: string;
  from: string | null;
  to: string;
  at: string;
}[] = [];
const alerts: Record<string, unknown>[] = [];

type NodeView = {
  node: {
    status: string;
    output?: unknown;
    error?: { type: string; code: string };
    link?: { type: string; id: string; nodeId: string | null; status?: string };
    linkedFrom?: { type: string; id: string; nodeId: string };
    workflow?: { type: string; id: string; attach: boolean; status?: string };
  };
};

beforeAll(async () => {
  engine = await startEngine(env.server.url, prefix);
  client = new Client(env.nc, { prefix });
  worker = await createWorker({
    connection: env.nc,
    prefix,
    queues: ['decider', 'remote'],
    activities: {
      // A node on queue `decider` decides children from its input.
      L: (input: { decisions: unknown[] }) => withDecisions('L out', input.decisions),
      // The remote node: held until the test opens its gate.
      S: async (input: { gate: string }) => {
        await new Promise<void>((ok) => gates.set(input.gate, ok));
        return `S out ${input.gate}`;
      },
    },
  });
  env.nc.subscribe(`${prefix}.events.${T}.>`, {
    callback: (_e, m) => {
      const n = JSON.parse(dec.decode(m.data)) as {
        id: string;
        emitted?: { type: string; changes?: Omit<(typeof changes)[number], 'wf'>[] }[];
      };
      for (const e of n.emitted ?? [])
        if (e.type === 'nodes') for (const c of e.changes!) changes.push({ wf: n.id, ...c });
    },
  });
  env.nc.subscribe(`${prefix}.alerts.>`, {
    callback: (_e, m) => {
      alerts.push(JSON.parse(dec.decode(m.data)) as Record<string, unknown>);
    },
  });
});
afterAll(async () => {
  for (const open of gates.values()) open();
  await worker?.close();
  await engine?.close();
});

async function until<T>(
  what: string,
  f: () => Promise<T | undefined | false> | T | undefined | false,
  ms = 15_000,
) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const node = (id: string, nodeId: string) => client.view<NodeView>(T, id, { view: 'node', nodeId });
const statusOf = async (id: string, nodeId: string) => (await node(id, nodeId)).node.status;
const change = (wf: string, nodeId: string, to: string) =>
  changes.find((c) => c.wf === wf && c.nodeId === nodeId && c.to === to);

describe('activity tree links', () => {
  it('a link across two workflows completing in the right order: L′ waits for S, then L completes', async () => {
    await client.start(T, 'w1', { signalQueue: 'decider' });
    await client.start(T, 'w2', { signalQueue: 'remote' });
    await client.signal(T, 'w1', {
      type: 'signal',
      name: 'L',
      input: {
        decisions: [
          { name: 'S', linkTo: { type: T, id: 'w2' }, queue: 'remote', input: { gate: 'g1' } },
        ],
      },
    });
    // W2 runs S (its n1), linked from W1's link node L′ (n2); L waits.
    await until('S runs in w2', () => gates.has('g1'));
    const remote = await node('w2', 'n1');
    expect(remote.node).toMatchObject({
      status: 'running',
      linkedFrom: { type: T, id: 'w1', nodeId: 'n2' },
    });
    const linked = await until('linkAccepted', async () => {
      const v = await node('w1', 'n2');
      return v.node.link?.nodeId ? v : undefined;
    });
    expect(linked.node).toMatchObject({
      status: 'running',
      link: { type: T, id: 'w2', nodeId: 'n1', status: 'running' },
    });
    expect(await statusOf('w1', 'n1')).toBe('awaitingChildren');
    const text = await client.view<{ text: string }>(T, 'w1', { view: 'tree', format: 'text' });
    expect(text.text).toContain(`S [n2] running (blocking, link ${T}/w2/n1)`);
    // S completes; then L′ completes with S's output; then L.
    gates.get('g1')!();
    await until('L complete', async () => (await statusOf('w1', 'n1')) === 'complete');
    expect((await node('w1', 'n2')).node).toMatchObject({ status: 'complete', output: 'S out g1' });
    const sDone = change('w2', 'n1', 'complete')!;
    const lPrimeDone = change('w1', 'n2', 'complete')!;
    const lDone = change('w1', 'n1', 'complete')!;
    expect(Date.parse(sDone.at)).toBeLessThanOrEqual(Date.parse(lPrimeDone.at));
    expect(Date.parse(lPrimeDone.at)).toBeLessThanOrEqual(Date.parse(lDone.at));
    expect(changes.filter((c) => c.wf === 'w1' && c.nodeId === 'n2').map((c) => c.to)).toEqual([
      'ready',
      'running',
      'complete',
    ]);
    // Both trees close and complete.
    await client.signal(T, 'w2', { type: 'close' });
    await client.signal(T, 'w1', { type: 'close' });
    expect(await client.result(T, 'w1')).toEqual({
      nodes: 2,
      counts: { complete: 2, canceled: 0 },
    });
    expect(await client.result(T, 'w2')).toEqual({
      nodes: 1,
      counts: { complete: 1, canceled: 0 },
    });
  });

  it('a link with start creates the remote tree; a link to a missing tree parks L′ with LinkRejected and an alert', async () => {
    await client.start(T, 'w3', { signalQueue: 'decider' });
    await client.signal(T, 'w3', {
      type: 'signal',
      name: 'L',
      input: {
        decisions: [
          {
            name: 'S',
            mode: 'non_blocking',
            linkTo: { type: T, id: 'w4', start: { input: { signalQueue: 'remote' } } },
            queue: 'remote',
            input: { gate: 'g2' },
          },
          { name: 'S', mode: 'non_blocking', linkTo: { type: T, id: 'nobody' }, queue: 'remote' },
        ],
      },
    });
    await until('S runs in the new tree w4', () => gates.has('g2'));
    expect((await client.query(T, 'w4')).status).toBe('running');
    const rejected = await until('LinkRejected', async () => {
      const v = await node('w3', 'n3');
      return v.node.status === 'errored' ? v : undefined;
    });
    expect(rejected.node.error).toMatchObject({ type: 'LinkRejected', code: 'not_found' });
    const alert = await until('alert', () =>
      alerts.find((a) => a.id === 'w3' && a.nodeId === 'n3'),
    );
    expect(alert).toMatchObject({ type: 'nodeErrored', error: { type: 'LinkRejected' } });
    gates.get('g2')!();
    await until('n2 complete', async () => (await statusOf('w3', 'n2')) === 'complete');
    await expect(client.query(T, 'nobody')).rejects.toMatchObject({ code: 'not_found' });
  });
});

describe('child-workflow nodes', () => {
  it('a workflow node completes with the child output; a failed child parks it (ChildFailed) with an alert', async () => {
    await client.start(T, 'w5', { signalQueue: 'decider' });
    await client.signal(T, 'w5', {
      type: 'signal',
      name: 'L',
      input: {
        decisions: [
          {
            name: 'kid',
            mode: 'non_blocking',
            workflow: { type: 'xchild', id: 'k1', input: { label: 'k1' } },
          },
          { name: 'bad', mode: 'non_blocking', workflow: { type: 'xchild', id: 'k2' } },
        ],
      },
    });
    const q = await until('child k1 started', () =>
      client.query('xchild', 'k1').catch(() => undefined),
    );
    expect(q.parent).toEqual({ type: T, id: 'w5' });
    expect((await node('w5', 'n2')).node).toMatchObject({
      status: 'running',
      workflow: { type: 'xchild', id: 'k1', attach: false },
    });
    await client.signal('xchild', 'k1', { type: 'DONE', value: 5 });
    await until('kid complete', async () => (await statusOf('w5', 'n2')) === 'complete');
    expect((await node('w5', 'n2')).node).toMatchObject({
      output: { label: 'k1', worked: 5 },
      workflow: { status: 'completed' },
    });
    await until('child k2 started', () => client.query('xchild', 'k2').catch(() => undefined));
    await client.signal('xchild', 'k2', { type: 'FAIL' });
    const failed = await until('bad errored', async () => {
      const v = await node('w5', 'n3');
      return v.node.status === 'errored' ? v : undefined;
    });
    expect(failed.node).toMatchObject({
      error: { type: 'ChildFailed' },
      workflow: { type: 'xchild', id: 'k2', status: 'failed' },
    });
    await until('alert', () => alerts.find((a) => a.id === 'w5' && a.nodeId === 'n3'));
    expect(await statusOf('w5', 'n1')).toBe('awaitingChildren');
  });
});

/** The operator's `retry` (E9) on link and workflow nodes: run r+1 by the node's kind (E8). */
describe('node verbs on link and workflow nodes', () => {
  const who = { by: 'ops@test', reason: 'fixed upstream' };
  const changed = (r: AdminReply) => r.result!.changed.map((c) => `${c.nodeId}:${c.from}→${c.to}`);

  it('a workflow node whose child fails is errored ChildFailed; an operator retry starts a new child <id>-r2, and the node completes with its output', async () => {
    await client.start(T, 'w6', { signalQueue: 'decider' });
    await client.signal(T, 'w6', {
      type: 'signal',
      name: 'L',
      input: {
        decisions: [
          { name: 'kid', workflow: { type: 'xchild', id: 'k6', input: { label: 'k6' } } },
        ],
      },
    });
    await until('child k6 started', () => client.query('xchild', 'k6').catch(() => undefined));
    await client.signal('xchild', 'k6', { type: 'FAIL' });
    const failed = await until('kid errored', async () => {
      const v = await node('w6', 'n2');
      return v.node.status === 'errored' ? v : undefined;
    });
    expect(failed.node).toMatchObject({
      error: { type: 'ChildFailed' },
      workflow: { type: 'xchild', id: 'k6', status: 'failed' },
    });
    // No second child yet: only the operator starts run 2.
    await expect(client.query('xchild', 'k6-r2')).rejects.toMatchObject({ code: 'not_found' });
    const r = await client.node('retry', T, 'w6', 'n2', { ...who, requestId: 'retry-w6-n2' });
    expect(changed(r)).toEqual(['n2:errored→running']);
    const q = await until('child k6-r2 started', () =>
      client.query('xchild', 'k6-r2').catch(() => undefined),
    );
    expect(q.parent).toEqual({ type: T, id: 'w6' });
    expect((await client.query('xchild', 'k6')).status).toBe('failed'); // run 1's child as it ended
    const running = await node('w6', 'n2');
    // The node object names the child of its current run.
    expect(running.node).toMatchObject({ status: 'running', run: 2, workflow: { id: 'k6-r2' } });
    await client.signal('xchild', 'k6-r2', { type: 'DONE', value: 2 });
    await until('kid complete', async () => (await statusOf('w6', 'n2')) === 'complete');
    expect((await node('w6', 'n2')).node).toMatchObject({
      output: { label: 'k6', worked: 2 },
      workflow: { status: 'completed' },
    });
    await until('L complete', async () => (await statusOf('w6', 'n1')) === 'complete');
    expect(changes.filter((c) => c.wf === 'w6' && c.nodeId === 'n2').map((c) => c.to)).toEqual([
      'ready',
      'running',
      'errored',
      'running',
      'complete',
    ]);
  });

  it('a refused link (no such tree) is errored LinkRejected; once the tree exists, an operator retry sends the link again and L′ completes with the remote output', async () => {
    await client.start(T, 'w7', { signalQueue: 'decider' });
    await client.signal(T, 'w7', {
      type: 'signal',
      name: 'L',
      input: {
        decisions: [
          { name: 'S', linkTo: { type: T, id: 'w8' }, queue: 'remote', input: { gate: 'g7' } },
        ],
      },
    });
    const rejected = await until('LinkRejected', async () => {
      const v = await node('w7', 'n2').catch(() => undefined); // n2 exists once L has decided
      return v?.node.status === 'errored' ? v : undefined;
    });
    expect(rejected.node.error).toMatchObject({ type: 'LinkRejected', code: 'not_found' });
    await client.start(T, 'w8', { signalQueue: 'remote' });
    const r = await client.node('retry', T, 'w7', 'n2', { ...who, requestId: 'retry-w7-n2' });
    expect(changed(r)).toEqual(['n2:errored→running']);
    // The remote tree runs S for run 2 of L′; S completes; L′ completes with its output; then L.
    await until('S runs in w8', () => gates.has('g7'));
    expect((await node('w8', 'n1')).node).toMatchObject({
      status: 'running',
      linkedFrom: { type: T, id: 'w7', nodeId: 'n2' },
    });
    await until('linkAccepted', async () => (await node('w7', 'n2')).node.link?.nodeId === 'n1');
    gates.get('g7')!();
    await until('L complete', async () => (await statusOf('w7', 'n1')) === 'complete');
    expect((await node('w7', 'n2')).node).toMatchObject({ status: 'complete', output: 'S out g7' });
    expect(changes.filter((c) => c.wf === 'w7' && c.nodeId === 'n2').map((c) => c.to)).toEqual([
      'ready',
      'running',
      'errored',
      'running',
      'complete',
    ]);
    const sDone = change('w8', 'n1', 'complete')!;
    expect(Date.parse(sDone.at)).toBeLessThanOrEqual(
      Date.parse(change('w7', 'n1', 'complete')!.at),
    );
  });

  it('cancel of a running workflow node cancels the child it started; cancel of a running link node cancels the remote node', async () => {
    await client.start(T, 'w9', { signalQueue: 'decider' });
    await client.start(T, 'w10', { signalQueue: 'remote' });
    await client.signal(T, 'w9', {
      type: 'signal',
      name: 'L',
      input: {
        decisions: [
          { name: 'kid', mode: 'non_blocking', workflow: { type: 'xchild', id: 'k9' } },
          {
            name: 'S',
            mode: 'non_blocking',
            linkTo: { type: T, id: 'w10' },
            queue: 'remote',
            input: { gate: 'g9' },
          },
        ],
      },
    });
    await until('child k9 started', () => client.query('xchild', 'k9').catch(() => undefined));
    await until('S runs in w10', () => gates.has('g9'));
    await until('linkAccepted', async () => (await node('w9', 'n3')).node.link?.nodeId === 'n1');
    expect(changed(await client.node('cancel', T, 'w9', 'n2', who))).toEqual([
      'n2:running→canceled',
    ]);
    await until(
      'child k9 canceled',
      async () => (await client.query('xchild', 'k9')).status === 'canceled',
    );
    expect(changed(await client.node('cancel', T, 'w9', 'n3', who))).toEqual([
      'n3:running→canceled',
      'n1:awaitingChildren→complete',
    ]);
    await until('S canceled in w10', async () => (await statusOf('w10', 'n1')) === 'canceled');
    expect((await node('w10', 'n1')).node).toMatchObject({ canceledBy: 'link' });
    expect((await node('w9', 'n3')).node).toMatchObject({ canceledBy: 'operator' });
  });
});
