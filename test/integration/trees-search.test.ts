/**
 * Node search end to end (`<prefix>.search.nodes`, ACTIVITY-TREES §2.9.11): an engine runs
 * trees, a visibility replica indexes their `nodes` events from the journal, and searches find
 * nodes by status, past status and time window, name, queue and metadata; an operator's retry
 * shows up as run 2; a rebuilt replica answers the same; `jetflow ls --nodes`; bad filters are
 * `bad_request`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Client } from '../../src/client/index.js';
import type { Engine } from '../../src/host/engine.js';
import { Visibility } from '../../src/host/visibility.js';
import type { NodeSearchReply, NodeSearchRequest } from '../../src/contracts/search.js';
import { createWorker, withDecisions, type Worker } from '../../src/worker/index.js';
import { activityTree } from '../../actors/activity-tree.js';
import { JetflowError } from '../../src/errors.js';
import { parseNodeSearch } from '../../src/visibility/query.js';
import { quietLogger, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runJetflow } from '../harness/cli.js';

const env = useServer();
const prefix = uniquePrefix();
const T = 'activityTree';
const who = { by: 'ops', reason: 'bank back' };
let engine: Engine;
let worker: Worker;
let vis: Visibility;
let client: Client;
const dir = mkdtempSync(join(tmpdir(), 'jetflow-vis-nodes-'));
const bank = { down: true };

beforeAll(async () => {
  engine = await startEngine(env.server.url, prefix, { workflows: [activityTree()] });
  worker = await createWorker({
    connection: env.nc,
    prefix,
    activities: {
      pay: () => {
        if (bank.down) throw new Error('bank is down');
        return 'paid';
      },
      fan: () =>
        withDecisions('fanned', [
          { name: 'leaf', mode: 'non_blocking', queue: 'leaves', metadata: { merchant: 'm-1' } },
          { name: 'leaf', mode: 'non_blocking', queue: 'leaves', metadata: { merchant: 'm-2' } },
        ]),
      leaf: () => 'leaf',
    },
    queues: ['bank', 'fan', 'leaves'],
  });
  vis = await Visibility.create({
    servers: env.server.url,
    prefix,
    dataDir: join(dir, 'a'),
    logger: quietLogger,
    progress: () => undefined,
  });
  client = new Client(env.nc, { prefix });
});
afterAll(async () => {
  await vis?.close();
  await worker?.close();
  await engine?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function until(
  body: NodeSearchRequest,
  done: (r: NodeSearchReply) => boolean,
  c: { searchNodes: (b: NodeSearchRequest) => Promise<NodeSearchReply> } = client,
) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await c.searchNodes(body);
    if (done(r)) return r;
    if (Date.now() > deadline) throw new Error(`timed out: ${JSON.stringify(r)}`);
    await new Promise((res) => setTimeout(res, 50));
  }
}
const ids = (r: NodeSearchReply) => r.results.map((x) => `${x.id}/${x.nodeId}`).sort();

it('finds tree nodes by status, past status in a window, name, queue and metadata; a retry shows as run 2; a rebuilt replica agrees; ls --nodes', async () => {
  await client.start(T, 's1', { signalQueue: 'bank' });
  await client.signal(T, 's1', { type: 'signal', name: 'pay', retry: { maxAttempts: 1 } });
  await client.signal(T, 's1', { type: 'signal', name: 'pay', metadata: { merchant: 'm-1' } });
  await client.start(T, 's2', { signalQueue: 'fan' });
  await client.signal(T, 's2', { type: 'signal', name: 'fan' });

  const parked = await until({ status: 'errored' }, (r) => r.results.length === 1);
  expect(parked.results[0]).toMatchObject({
    type: T,
    id: 's1',
    nodeId: 'n1',
    name: 'pay',
    queue: 'bank',
    status: 'errored',
    attempt: 1,
    run: 1,
  });
  const since = parked.results[0]!.statusSince;
  // wf.search: the trees with a parked node, and their node counts.
  const trees = await client.search({ type: T, node: { status: 'errored' } });
  expect(trees.workflows.map((w) => [w.id, w.nodeCounts])).toEqual([
    ['s1', { errored: 1, ready: 1 }],
  ]);
  // The blocked signal, and the fan-out's leaves, by queue, name and metadata.
  expect(ids(await until({ id: 's1', status: 'ready' }, (r) => r.results.length === 1))).toEqual([
    's1/n2',
  ]);
  await until({ queue: 'leaves', status: 'complete' }, (r) => r.results.length === 2);
  expect(ids(await client.searchNodes({ name: 'leaf', metadata: { merchant: 'm-1' } }))).toEqual([
    's2/n2',
  ]);
  expect(ids(await client.searchNodes({ metadata: { merchant: 'm-1' } }))).toEqual([
    's1/n2',
    's2/n2',
  ]);
  expect(
    ids(await client.searchNodes({ type: T, status: ['complete', 'errored'], limit: 1000 })),
  ).toEqual(['s1/n1', 's2/n1', 's2/n2', 's2/n3']);

  // The operator retries: run 2, running then complete; it still entered errored at `since`.
  bank.down = false;
  await client.node('retry', T, 's1', 'n1', who);
  await until({ id: 's1', status: 'complete' }, (r) => r.results.length === 2);
  const s1 = await client.searchNodes({ id: 's1', name: 'pay', status: 'complete' });
  expect(s1.results.map((x) => [x.nodeId, x.run, x.attempt]).sort()).toEqual([
    ['n1', 2, 0],
    ['n2', 1, 0],
  ]);
  const windowed = await client.searchNodes({
    pastStatus: 'errored',
    since,
    until: Date.parse(since) + 1,
  });
  expect(ids(windowed)).toEqual(['s1/n1']);
  expect((await client.searchNodes({ pastStatus: 'errored', until: since })).results).toEqual([]);

  // A replica built from scratch (from the records) answers the same.
  const fresh = await Visibility.create({
    servers: env.server.url,
    prefix: prefix,
    dataDir: join(dir, 'b'),
    logger: quietLogger,
    progress: () => undefined,
  });
  try {
    const a = await client.searchNodes({ type: T, limit: 1000 });
    expect(a.results).toHaveLength(5);
    // Asked directly (the queue group would pick either replica).
    const b = await until({ type: T, limit: 1000 }, (r) => r.results.length === 5, {
      searchNodes: (q) => Promise.resolve(fresh.index.searchNodes(parseNodeSearch(q))),
    });
    expect(b.results).toEqual(a.results);
  } finally {
    await fresh.close();
  }

  // The CLI.
  const ls = await runJetflow([
    'ls',
    '--nodes',
    '--past-status',
    'errored',
    '--json',
    '--nats-url',
    env.server.url,
    '--prefix',
    prefix,
  ]);
  expect(ls.code).toBe(0);
  expect(JSON.parse(ls.stdout)).toMatchObject({
    results: [{ id: 's1', nodeId: 'n1', status: 'complete', run: 2 }],
    next: null,
  });
  const table = await runJetflow([
    'ls',
    '--nodes',
    '--queue',
    'leaves',
    '--nats-url',
    env.server.url,
    '--prefix',
    prefix,
  ]);
  expect(table.stdout.split('\n')[0]).toMatch(/^TYPE\s+ID\s+NODE\s+NAME\s+QUEUE\s+STATUS/);
  expect(table.stdout).toMatch(/s2\s+n3\s+leaf\s+leaves\s+complete/);

  // Bad filters: bad_request naming the field.
  for (const [body, field] of [
    [{ status: 'stuck' }, 'status'],
    [{ limit: 5000 }, 'limit'],
    [{ nodeStatus: 'x' }, 'nodeStatus'],
  ] as const) {
    const e = await client.searchNodes(body as NodeSearchRequest).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(JetflowError);
    expect([
      (e as JetflowError).code,
      ((e as JetflowError).details as { field: string }).field,
    ]).toEqual(['bad_request', field]);
  }
}, 90_000);
