/**
 * A bulk job survives the death of the process running it: two `jetflow visibility` processes
 * (real child processes) share the job; the one holding it is SIGKILLed mid-job; the other claims
 * it after the lease and finishes it. Side effects are counted: every parked payment's bank call
 * runs exactly once, and each workflow's journal shows the job's retry applied exactly once.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import type { Engine } from '../../src/host/engine.js';
import type { BulkProgress } from '../../src/contracts/bulk.js';
import { repoRoot, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runRoot } from '../harness/nats-server.js';
import { workflows } from '../fixtures/workflows.js';

const env = useServer();
const who = { by: 'ops@test', reason: 'bank back' };
const N = 300;

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A `jetflow visibility` child process (tsx, as the engine processes of the harness). */
class VisibilityProcess {
  child: ChildProcess | undefined;
  log = '';
  exited: Promise<void> = Promise.resolve();
  constructor(
    readonly name: string,
    readonly url: string,
    readonly prefix: string,
    readonly dir: string,
  ) {}
  async start(): Promise<this> {
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        resolve(repoRoot, 'src/cli/main.ts'),
        'visibility',
        '--nats-url',
        this.url,
        '--prefix',
        this.prefix,
        '--file',
        join(this.dir, `${this.name}.db`),
        '--name',
        `${this.name}:${runRoot()}`,
        '--bulk-lease-ms',
        '1500',
        '--bulk-checkpoint-ms',
        '250',
      ],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    this.exited = new Promise((ok) => child.once('exit', () => ok()));
    await new Promise<void>((ok, fail) => {
      const onData = (b: Buffer) => {
        this.log = (this.log + b.toString()).slice(-50_000);
        if (this.log.includes('visibility ready')) ok();
      };
      child.stdout?.on('data', onData);
      child.stderr?.on('data', onData);
      child.once('exit', (code) => fail(new Error(`visibility exited ${code}:\n${this.log}`)));
    });
    return this;
  }
  async kill(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }
  async stop(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child?.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
  }
}

const prefix = uniquePrefix();
const dir = mkdtempSync(join(tmpdir(), 'jetflow-bulk-kill-'));
const bank = { down: true, calls: new Map<number, number>() };
let engine: Engine;
let worker: Worker;
let client: Client;
const replicas: VisibilityProcess[] = [];

beforeAll(async () => {
  engine = await startEngine(env.server.url, prefix, { workflows });
  worker = await createWorker({
    connection: env.nc,
    prefix,
    concurrency: 100,
    activities: {
      sendToBank: ({ amount }: { amount: number }) => {
        if (bank.down) {
          const e = new Error('bank unreachable');
          e.name = 'BankDown';
          return Promise.reject(e);
        }
        bank.calls.set(amount, (bank.calls.get(amount) ?? 0) + 1);
        return Promise.resolve({ receipt: `r-${amount}` });
      },
    },
  });
  client = new Client(env.nc, { prefix, timeoutMs: 20_000 });
}, 60_000);

afterAll(async () => {
  await Promise.all(replicas.map((r) => r.stop()));
  await worker?.close();
  await engine?.close();
  rmSync(dir, { recursive: true, force: true });
});

it('the job is resumed by the other replica after its runner is SIGKILLed; nothing applied twice', async () => {
  for (let i = 0; i < N; i += 100) {
    await Promise.all(
      Array.from({ length: 100 }, async (_, k) => {
        const id = `k${i + k}`;
        await client.start('rpayment', id, { amount: i + k });
        await client.signal('rpayment', id, { type: 'NOTE' });
        await client.signal('rpayment', id, { type: 'GO' });
      }),
    );
  }
  for (const name of ['vis-a', 'vis-b']) {
    replicas.push(await new VisibilityProcess(name, env.server.url, prefix, dir).start());
  }
  const query = { type: 'rpayment', needsReview: true };
  await until('all parked in the index', async () => {
    const r = await client.search({ ...query, limit: 1000 });
    return r.workflows.length === N ? true : undefined;
  });
  bank.down = false;

  const job = await client.bulk({ verb: 'retry', query, ratePerSec: 40, ...who });
  expect(job.matched).toBe(N);
  const seen: BulkProgress[] = [];
  let killed: string | undefined;
  for await (const p of client.followBulk(job.jobId, { pollMs: 1_000 })) {
    seen.push(p);
    if (!killed && p.processed >= N / 4 && p.owner) {
      const victim = replicas.find((r) => p.owner!.startsWith(`${r.name}:`))!;
      killed = victim.name;
      await victim.kill();
    }
  }
  expect(killed).toBeDefined();
  const last = seen.at(-1)!;
  expect(last).toMatchObject({ state: 'completed', matched: N, processed: N, failed: 0 });
  expect(last.done + last.skipped).toBe(N);
  expect(last.runs).toBeGreaterThanOrEqual(2);
  for (let i = 1; i < seen.length; i++) {
    expect(seen[i]!.processed).toBeGreaterThanOrEqual(seen[i - 1]!.processed);
    expect(seen[i]!.done).toBeGreaterThanOrEqual(seen[i - 1]!.done);
  }
  // Side effects: each bank call once, each workflow completed, each retry journaled once.
  await until('all completed', async () => {
    const r = await client.search({ type: 'rpayment', status: 'completed', limit: 1000 });
    return r.workflows.length === N ? true : undefined;
  });
  expect(bank.calls.size).toBe(N);
  expect([...bank.calls.entries()].filter(([, c]) => c !== 1)).toEqual([]);
  const applied = await Promise.all(
    Array.from({ length: N }, async (_, i) => {
      let n = 0;
      for await (const e of client.historyAll('rpayment', `k${i}`)) {
        if (
          e.kind === 'step' &&
          e.cause === 'operator' &&
          e.operator?.requestId?.startsWith(`bulk-${job.jobId}-`)
        )
          n++;
      }
      return n;
    }),
  );
  expect(applied.filter((n) => n !== 1)).toEqual([]);
}, 180_000);
