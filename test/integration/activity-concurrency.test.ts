/**
 * An activity's global concurrency limit per key against a real nats-server: three workers on
 * their own connections never run more than `limit` attempts of one key at once, tasks over the
 * limit wait (in place, then postponed) without using an attempt, and every workflow completes
 * once with no slot left held. A worker process SIGKILLed while holding both slots of a key: its
 * slots free when their leases (the queue's AckWait) end, and every task completes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { repoRoot, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type ActivityContext, type Worker } from '../../src/worker/index.js';
import { openSlots } from '../../src/nats/slots.js';
import { createMetricsRegistry, createWorkerMetrics } from '../../src/metrics/index.js';
import { topologyNames } from '../../src/nats/topology.js';
import { banked, SLOT_LIMIT } from '../fixtures/slot-workflows.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];
const procs: ChildProcess[] = [];
afterEach(async () => {
  for (const p of procs.splice(0)) if (p.exitCode === null) p.kill('SIGKILL');
  for (const o of open.splice(0).reverse()) await o.close();
});

/** Runs of `bankCall`, per bank: how many run now and the most seen at once. */
class Tracker {
  running = new Map<string, number>();
  max = new Map<string, number>();
  runs = new Map<string, number>();
  attempts: number[] = [];
  enter(bank: string, ctx: ActivityContext): void {
    const n = (this.running.get(bank) ?? 0) + 1;
    this.running.set(bank, n);
    this.max.set(bank, Math.max(this.max.get(bank) ?? 0, n));
    this.runs.set(ctx.taskId, (this.runs.get(ctx.taskId) ?? 0) + 1);
    this.attempts.push(ctx.attempt);
  }
  leave(bank: string): void {
    this.running.set(bank, this.running.get(bank)! - 1);
  }
}

async function worker(prefix: string, t: Tracker, workMs: number): Promise<Worker> {
  const nc = await connect({ servers: env.server.url });
  open.push({ close: () => nc.close() });
  const w = await createWorker({
    connection: nc,
    prefix,
    queues: ['banks'],
    queueSettings: { banks: { ackWaitMs: 2_000 } },
    concurrency: 50,
    activities: {
      bankCall: async (input: { bank: string }, ctx: ActivityContext) => {
        t.enter(input.bank, ctx);
        await new Promise((r) => setTimeout(r, workMs));
        t.leave(input.bank);
        return { ok: true };
      },
    },
  });
  open.push(w);
  return w;
}

/**
 * No holder and no waiter left. A slot is released just after its attempt's result is published,
 * so the last one may still be on its way when the workflow's result is read: wait a little.
 */
async function noHolders(prefix: string, banks: string[]): Promise<void> {
  const slots = await openSlots(env.nc, topologyNames(prefix));
  for (const bank of banks) {
    const deadline = Date.now() + 5_000;
    let rec = await slots.read('bankCall', bank);
    while (rec && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 20));
      rec = await slots.read('bankCall', bank);
    }
    expect(rec?.holders ?? []).toEqual([]);
    expect(rec?.waiters ?? []).toEqual([]);
  }
}

describe('activity concurrency per key', () => {
  it('jetflow why names the concurrency key a task waits for and its place among the waiters; the wait is counted and journaled', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [banked] });
    open.push(engine);
    let release!: () => void;
    const blocked = new Promise<void>((r) => (release = r));
    const registry = createMetricsRegistry();
    const attempts = new Map<string, number>();
    const w = await createWorker({
      connection: env.nc,
      prefix,
      metrics: createWorkerMetrics(registry),
      queues: ['banks'],
      activities: {
        bankCall: async (_input: unknown, ctx: ActivityContext) => {
          attempts.set(ctx.workflowId, ctx.attempt);
          await blocked;
          return { ok: true };
        },
      },
    });
    open.push(w);
    const client = new Client(env.nc, { prefix });
    const slots = await openSlots(env.nc, topologyNames(prefix));
    const ids = ['w1', 'w2', 'w3', 'w4', 'w5', 'w6', 'w7'];
    // Started one by one, each once the previous one holds a slot or has queued for one.
    for (const id of ids) {
      await client.start('banked', id, { bank: 'w' });
      const deadline = Date.now() + 10_000;
      for (;;) {
        const rec = await slots.read('bankCall', 'w');
        const mine = (e: { id: string }) => e.id.startsWith(`banked.${id}.`);
        if (rec && (rec.holders.some(mine) || (rec.waiters ?? []).some(mine))) break;
        expect(Date.now()).toBeLessThan(deadline);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    // w3 is next (its turn is near: it waits in place); w7 is fifth of five, beyond the next two
    // rounds of holders: it waits in place, then is postponed.
    const first = await client.why('banked', 'w3');
    expect(first.stage).toBe('concurrency-key');
    expect(first.summary).toContain(
      'waits for a slot of its concurrency key "w" (limit 2): position 1 of 5 waiting, waiting in place',
    );
    const seen = new Set<string>();
    const deadline = Date.now() + 15_000;
    // Waiting in place first, then postponed: both read as the concurrency key.
    while (Date.now() < deadline && !(seen.has('place') && seen.has('postponed'))) {
      const why = await client.why('banked', 'w7');
      if (why.stage === 'concurrency-key') {
        expect(why.summary).toContain(
          'waits for a slot of its concurrency key "w" (limit 2): position 5 of 5 waiting',
        );
        expect(why.summary).toMatch(/held by banked\.w[12]\.\S+#1 on worker \S+.*banked\.w[12]/);
        seen.add(why.summary.includes('postponed') ? 'postponed' : 'place');
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    expect([...seen].sort()).toEqual(['place', 'postponed']);
    release();
    for (const id of ids) await client.result('banked', id, { timeoutMs: 15_000 });
    // w7 waited in place, was postponed (at least once), then ran: as its first attempt.
    expect(Object.fromEntries(attempts)).toEqual(Object.fromEntries(ids.map((id) => [id, 1])));
    expect(w.stats.slotWaits).toBeGreaterThan(0);
    // The stage's metric and journal: held in place once, then deferred (each journaled once,
    // not again when the postponed task comes back and waits again).
    const text = await registry.metrics();
    for (const outcome of ['held', 'deferred'])
      expect(text).toMatch(
        new RegExp(
          `jetflow_admission_total\\{stage="concurrency-key",outcome="${outcome}"\\} [1-9]`,
        ),
      );
    const entries = (await client.history('banked', 'w7')).entries.filter(
      (e) => e.kind === 'admission',
    );
    expect(entries.map((e) => (e.kind === 'admission' ? e.outcome : ''))).toEqual([
      'held',
      'deferred',
    ]);
    await noHolders(prefix, ['w']);
    expect(entries[0]).toMatchObject({ stage: 'concurrency-key', key: 'w', attempt: 1 });
    expect(entries[0]!.kind === 'admission' && entries[0]!.what).toContain('waits for a slot');
  }, 30_000);

  it(`limit ${SLOT_LIMIT} per bank across three workers: never more at once, no attempt used by waiting, all complete`, async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [banked] });
    open.push(engine);
    const t = new Tracker();
    const workers: Worker[] = [];
    for (let i = 0; i < 3; i++) workers.push(await worker(prefix, t, 100));
    const client = new Client(env.nc, { prefix });
    const ids: string[] = [];
    // 24 × 100 ms at 2 at once is 1.2 s of work per bank: most tasks wait (whether in place or
    // postponed depends on how fast they are delivered; the test below makes both happen).
    for (let i = 0; i < 24; i++) {
      for (const bank of ['b1', 'b2']) {
        ids.push(`${bank}-${i}`);
        await client.start('banked', `${bank}-${i}`, { bank });
      }
    }
    for (const id of ids) await client.result('banked', id, { timeoutMs: 60_000 });
    console.log(
      `activity concurrency: max at once per bank ${JSON.stringify(Object.fromEntries(t.max))}; ` +
        `postponed for a slot ${workers.map((w) => w.stats.slotWaits).join('/')} (per worker)`,
    );
    for (const bank of ['b1', 'b2']) expect(t.max.get(bank)).toBeLessThanOrEqual(SLOT_LIMIT);
    expect(t.runs.size).toBe(48);
    expect([...t.runs.values()].every((n) => n === 1)).toBe(true);
    // Waiting for a slot, in place or postponed, uses no attempt.
    expect(t.attempts.every((a) => a === 1)).toBe(true);
    await noHolders(prefix, ['b1', 'b2']);
  }, 90_000);

  it('a worker SIGKILLed holding both slots of a key: the slots free after their lease and all complete', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [banked] });
    open.push(engine);
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        resolve(repoRoot, 'test/fixtures/slot-worker.ts'),
        env.server.url,
        prefix,
      ],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    procs.push(child);
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const waitFor = async (s: string) => {
      const deadline = Date.now() + 30_000;
      while (!out.includes(s) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
      expect(out).toContain(s);
    };
    await waitFor('worker ready');
    const client = new Client(env.nc, { prefix });
    await client.start('banked', 'a1', { bank: 'x' });
    await client.start('banked', 'a2', { bank: 'x' });
    await waitFor('holding a1');
    await waitFor('holding a2');
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const slots = await openSlots(env.nc, topologyNames(prefix));
    expect((await slots.read('bankCall', 'x'))?.holders).toHaveLength(SLOT_LIMIT);
    const t = new Tracker();
    await worker(prefix, t, 20);
    for (let i = 0; i < 4; i++) await client.start('banked', `b${i}`, { bank: 'x' });
    for (const id of ['a1', 'a2', 'b0', 'b1', 'b2', 'b3'])
      await client.result('banked', id, { timeoutMs: 30_000 });
    expect(t.max.get('x')).toBeLessThanOrEqual(SLOT_LIMIT);
    // The dead worker's attempts were redelivered as attempt 2; the others waited and used none.
    expect(t.runs.size).toBe(6);
    await noHolders(prefix, ['x']);
  }, 60_000);
});
