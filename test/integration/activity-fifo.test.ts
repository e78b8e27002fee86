/**
 * FIFO among tasks waiting for an activity's concurrency key, against a real nats-server with two
 * worker processes (`test/fixtures/fifo-worker.ts`, each printing when its activity starts): tasks
 * that joined a key's waiters in the order a1..an (limit 1, the slot held by a blocker) start in
 * that order once the blocker ends; a head waiter whose worker process is SIGKILLed stops blocking
 * the queue once its waiter lease ends (the task behind it runs first; it runs later, as its next
 * attempt); 20 tasks of 20 ms enqueued at once all complete (the wall time is printed, as an
 * indication: timing is for benchmarks); and a waiter next in turn behind a long-running holder
 * gives its worker slot back after a while (postponed, keeping its place) and still runs next.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { repoRoot, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { openSlots } from '../../src/nats/slots.js';
import { liveWaiters } from '../../src/engine/slots.js';
import { topologyNames } from '../../src/nats/topology.js';
import { fifoed } from '../fixtures/slot-workflows.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];
const procs: ChildProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) if (p.exitCode === null) p.kill('SIGKILL');
  for (const o of open.splice(0).reverse()) await o.close();
});

/** A start of `fifoCall` as its worker process prints it. */
type Start = [workflowId: string, at: number, attempt: number];

/** A worker process; `starts` collects the starts of its activity. */
async function workerProcess(
  prefix: string,
  workMs: number,
  starts: Start[],
  opts: { concurrency?: number; ackWaitMs?: number } = {},
): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      resolve(repoRoot, 'test/fixtures/fifo-worker.ts'),
      env.server.url,
      prefix,
      String(workMs),
      String(opts.concurrency ?? 20),
      ...(opts.ackWaitMs ? [String(opts.ackWaitMs)] : []),
    ],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  procs.push(child);
  let out = '';
  let rest = '';
  child.stdout.on('data', (b: Buffer) => {
    out += b.toString();
    rest += b.toString();
    const lines = rest.split('\n');
    rest = lines.pop()!;
    for (const l of lines) {
      const m = /^start (\S+) (\d+(?:\.\d+)?) (\d+)$/.exec(l);
      if (m) starts.push([m[1]!, Number(m[2]), Number(m[3])]);
    }
  });
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const deadline = Date.now() + 30_000;
  while (!out.includes('worker ready') && Date.now() < deadline)
    await new Promise((r) => setTimeout(r, 25));
  expect(out).toContain('worker ready');
  return child;
}

async function until(what: string, f: () => Promise<boolean> | boolean, ms = 15_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await f()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/**
 * No holder and no waiter left: the record is deleted. A slot is released just after its
 * attempt's result is published, so the last one may still be on its way: wait a little.
 */
async function noneLeft(prefix: string): Promise<void> {
  const slots = await openSlots(env.nc, topologyNames(prefix));
  const deadline = Date.now() + 5_000;
  let rec = await slots.read('fifoCall', 'k');
  while (rec && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 20));
    rec = await slots.read('fifoCall', 'k');
  }
  expect(rec?.holders ?? []).toEqual([]);
  expect(rec?.waiters ?? []).toEqual([]);
}

describe('activity concurrency key: FIFO among waiting tasks', () => {
  it('tasks that queued a1..a8 on a key with limit 1 start in that order (two worker processes)', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [fifoed] });
    open.push(engine);
    const starts: Start[] = [];
    await workerProcess(prefix, 20, starts);
    await workerProcess(prefix, 20, starts);
    const client = new Client(env.nc, { prefix });
    const slots = await openSlots(env.nc, topologyNames(prefix));
    await client.start('fifoed', 'hold-1', { key: 'k' });
    await until('the blocker to start', () => starts.some(([id]) => id === 'hold-1'));
    const n = 8;
    const ids = Array.from({ length: n }, (_, i) => `a${i + 1}`);
    // Each task is started once the previous one is among the key's waiters: the order in
    // which they queued is a1..an, whichever worker took them.
    for (const id of ids) {
      await client.start('fifoed', id, { key: 'k' });
      await until(`${id} to queue`, async () => {
        const rec = await slots.read('fifoCall', 'k');
        return (rec?.waiters ?? []).some((w) => w.id.startsWith(`fifoed.${id}.`));
      });
    }
    const rec = await slots.read('fifoCall', 'k');
    expect(rec!.waiters!.map((w) => w.id.split('.')[1])).toEqual(ids);
    env.nc.publish(`${prefix}.test.release`);
    for (const id of ['hold-1', ...ids]) await client.result('fifoed', id, { timeoutMs: 30_000 });
    const order = [...starts]
      .filter(([id]) => id !== 'hold-1')
      .sort((a, b) => a[1] - b[1])
      .map(([id]) => id);
    expect(order).toEqual(ids);
    await noneLeft(prefix);
  }, 60_000);

  it('a head waiter whose worker is SIGKILLed stops blocking the queue after its waiter lease', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [fifoed] });
    open.push(engine);
    const starts: Start[] = [];
    // AckWait 9 s: the dead worker's task comes back after its waiter entry (5 s) has expired.
    const ackWaitMs = 9_000;
    // The blocker's worker runs one task at a time: it takes nothing else while it blocks.
    await workerProcess(prefix, 20, starts, { concurrency: 1, ackWaitMs });
    const client = new Client(env.nc, { prefix });
    const slots = await openSlots(env.nc, topologyNames(prefix));
    const waiters = async () =>
      liveWaiters((await slots.read('fifoCall', 'k')) ?? { limit: 1, holders: [] }, Date.now());
    await client.start('fifoed', 'hold-1', { key: 'k' });
    await until('the blocker to start', () => starts.some(([id]) => id === 'hold-1'));
    const doomed = await workerProcess(prefix, 20, starts, { ackWaitMs });
    await client.start('fifoed', 'a1', { key: 'k' });
    await until('a1 to queue', async () => (await waiters()).length === 1);
    doomed.kill('SIGKILL');
    await new Promise((r) => doomed.once('exit', r));
    await workerProcess(prefix, 20, starts, { ackWaitMs });
    await client.start('fifoed', 'b1', { key: 'k' });
    await until('b1 to queue behind a1', async () =>
      (await waiters()).some((w) => w.id.startsWith('fifoed.b1.')),
    );
    // a1's entry ends with its lease (nobody asks for it any more): then the blocker ends.
    await until('a1 to leave the queue', async () =>
      (await waiters()).every((w) => !w.id.startsWith('fifoed.a1.')),
    );
    env.nc.publish(`${prefix}.test.release`);
    for (const id of ['hold-1', 'b1', 'a1'])
      await client.result('fifoed', id, { timeoutMs: 30_000 });
    const order = [...starts]
      .filter(([id]) => id !== 'hold-1')
      .sort((a, b) => a[1] - b[1])
      .map(([id, , attempt]) => `${id}#${attempt}`);
    // a1's first attempt died waiting (it never started); b1 was served before its redelivery.
    expect(order).toEqual(['b1#1', 'a1#2']);
    await noneLeft(prefix);
  }, 60_000);

  it('20 tasks of 20 ms at once on a key with limit 1: all complete, one at a time', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [fifoed] });
    open.push(engine);
    const starts: Start[] = [];
    await workerProcess(prefix, 20, starts);
    await workerProcess(prefix, 20, starts);
    const client = new Client(env.nc, { prefix });
    const ids = Array.from({ length: 20 }, (_, i) => `t${i + 1}`);
    const t0 = performance.now();
    await Promise.all(ids.map((id) => client.start('fifoed', id, { key: 'k' })));
    for (const id of ids) await client.result('fifoed', id, { timeoutMs: 60_000 });
    const wall = performance.now() - t0;
    console.log(`activity FIFO: 20 tasks × 20 ms, limit 1, two workers: ${wall.toFixed(0)} ms`);
    const sorted = [...starts].sort((a, b) => a[1] - b[1]);
    expect(sorted.map(([id]) => id).sort()).toEqual([...ids].sort());
    // One at a time: each start at least the work time after the previous one.
    for (let i = 1; i < sorted.length; i++)
      expect(sorted[i]![1] - sorted[i - 1]![1]).toBeGreaterThanOrEqual(19);
  }, 90_000);

  it('a waiter next in turn behind a long holder frees its worker slot after 5 s, keeps its place and runs next', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [fifoed] });
    open.push(engine);
    const starts: Start[] = [];
    // One task at a time on each worker: the blocker's worker takes nothing else.
    await workerProcess(prefix, 20, starts, { concurrency: 1 });
    const client = new Client(env.nc, { prefix });
    await client.start('fifoed', 'hold-1', { key: 'k' });
    await until('the blocker to start', () => starts.some(([id]) => id === 'hold-1'));
    await workerProcess(prefix, 20, starts, { concurrency: 1 });
    await client.start('fifoed', 'a1', { key: 'k' });
    // a1 waits in place on the second worker (its turn is next), then is postponed.
    await until(
      'a1 to be postponed',
      async () =>
        (await client.history('fifoed', 'a1', { limit: 100 })).entries.some(
          (e) => e.kind === 'admission' && e.outcome === 'deferred',
        ),
      20_000,
    );
    // Its worker is free again: a task of another key runs while the blocker still holds k.
    await client.start('fifoed', 'other', { key: 'k2' });
    await client.result('fifoed', 'other', { timeoutMs: 15_000 });
    expect(starts.some(([id]) => id === 'a1')).toBe(false);
    // a1 kept its place: a later waiter does not go first.
    await client.start('fifoed', 'b1', { key: 'k' });
    const slots = await openSlots(env.nc, topologyNames(prefix));
    await until('b1 to queue behind a1', async () => {
      const w = liveWaiters((await slots.read('fifoCall', 'k'))!, Date.now());
      return w.length === 2 && w[0]!.id.startsWith('fifoed.a1.');
    });
    const released = Date.now();
    env.nc.publish(`${prefix}.test.release`);
    for (const id of ['hold-1', 'a1', 'b1'])
      await client.result('fifoed', id, { timeoutMs: 30_000 });
    const order = [...starts]
      .filter(([id]) => id === 'a1' || id === 'b1')
      .sort((a, b) => a[1] - b[1])
      .map(([id, , attempt]) => `${id}#${attempt}`);
    expect(order).toEqual(['a1#1', 'b1#1']);
    const a1 = starts.find(([id]) => id === 'a1')!;
    console.log(
      `postponed head waiter back after the release: ${(a1[1] - released).toFixed(0)} ms`,
    );
    await noneLeft(prefix);
  }, 90_000);
});
