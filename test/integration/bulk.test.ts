/**
 * Bulk operator jobs against a real nats-server, engine, worker and visibility replica: 2,000
 * workflows parked for review, a dry run that changes nothing, then a bulk retry that completes
 * them all with monotonic progress while a live load runs (its latency is logged, not asserted:
 * timing belongs in benchmarks); and bad input that starts nothing.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import type { Engine } from '../../src/host/engine.js';
import { Visibility } from '../../src/host/visibility.js';
import { JetflowError } from '../../src/errors.js';
import type { BulkProgress } from '../../src/contracts/bulk.js';
import { quietLogger, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { workflows } from '../fixtures/workflows.js';
import { sequential } from '../../bench/workflows.js';
import { runJetflow } from '../harness/cli.js';

const env = useServer();
const who = { by: 'ops@test', reason: 'the bank was down for an hour' };
const N = 2_000;

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
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

/** Every workflow the index matches (all pages). */
async function searchAll(client: Client, q: Record<string, unknown>) {
  const out: { type: string; id: string }[] = [];
  let cursor: string | null | undefined;
  do {
    const r = await client.search({ ...q, limit: 1000, ...(cursor ? { cursor } : {}) });
    out.push(...r.workflows);
    cursor = r.cursor;
  } while (cursor);
  return out;
}

const p99 = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))] ?? NaN;
};

/**
 * Workload 1 at concurrency 64 until `stop()`: latency from start to the `completed` notification
 * (one subscription for all, as `bench/run.ts` does).
 */
function liveLoad(client: Client, prefix: string, tag: string) {
  const lat: number[] = [];
  const waiters = new Map<string, () => void>();
  const sub = client.nc.subscribe(`${prefix}.events.sequential.*`, {
    callback: (_e, m) => {
      const n = m.json<{ type: string; id: string }>();
      if (n.type === 'completed') waiters.get(n.id)?.();
    },
  });
  let running = true;
  let n = 0;
  const loops = Array.from({ length: 64 }, async () => {
    while (running) {
      const id = `${tag}-${n++}`;
      const t0 = performance.now();
      const done = new Promise<void>((ok) => waiters.set(id, ok));
      await client.start('sequential', id, { x: 0 });
      await done;
      waiters.delete(id);
      lat.push(performance.now() - t0);
    }
  });
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
      sub.unsubscribe();
      return lat;
    },
  };
}

describe('bulk retry of workflows parked for review', () => {
  const prefix = uniquePrefix();
  const dir = mkdtempSync(join(tmpdir(), 'jetflow-bulk-'));
  const bank = { down: true, calls: new Map<number, number>() };
  let engine: Engine;
  let worker: Worker;
  let vis: Visibility;
  let client: Client;

  beforeAll(async () => {
    engine = await startEngine(env.server.url, prefix, {
      workflows: [...workflows, sequential],
    });
    worker = await createWorker({
      connection: env.nc,
      prefix,
      concurrency: 200,
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
        inc: ({ x }: { x: number }) => Promise.resolve(x + 1),
      },
    });
    vis = await Visibility.create({
      servers: env.server.url,
      prefix,
      file: join(dir, 'v.db'),
      logger: quietLogger,
      progress: () => undefined,
    });
    client = new Client(env.nc, { prefix, timeoutMs: 30_000 });
  }, 60_000);

  afterAll(async () => {
    await vis?.close();
    await worker?.close();
    await engine?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('dry run changes nothing and reports 2,000; the real run completes all 2,000 once, progress monotonic', async () => {
    // 2,000 payments whose bank call exhausts its retries: parked for review.
    for (let i = 0; i < N; i += 200) {
      await Promise.all(
        Array.from({ length: 200 }, async (_, k) => {
          const id = `p${i + k}`;
          await client.start('rpayment', id, { amount: i + k });
          await client.signal('rpayment', id, { type: 'GO' });
          await client.signal('rpayment', id, { type: 'NOTE' });
        }),
      );
    }
    const query = { type: 'rpayment', needsReview: true };
    await until('2,000 parked in the index', async () =>
      (await searchAll(client, query)).length === N ? true : undefined,
    );

    // Dry run: matched and reported, nothing changed.
    bank.down = false;
    const dry = await client.bulk({ verb: 'retry', query, dryRun: true, ...who });
    expect(dry).toMatchObject({ matched: N, dryRun: true });
    expect(dry.sample).toHaveLength(20);
    const dryStatus = await client.bulkStatus(dry.jobId);
    expect(dryStatus).toMatchObject({ state: 'completed', matched: N, processed: 0, done: 0 });
    await new Promise((r) => setTimeout(r, 1_000));
    expect(bank.calls.size).toBe(0);
    expect((await searchAll(client, query)).length).toBe(N);
    const q0 = await client.query('rpayment', 'p7');
    expect(q0.needsReview).toHaveLength(1);

    // Live load alone, then the same load while the bulk retry runs.
    const before = liveLoad(client, prefix, 'before');
    await new Promise((r) => setTimeout(r, 8_000));
    const latBefore = await before.stop();

    const during = liveLoad(client, prefix, 'during');
    const t0 = Date.now();
    const ratePerSec = 250;
    const job = await client.bulk({ verb: 'retry', query, ratePerSec, ...who });
    expect(job).toMatchObject({ matched: N, dryRun: false });
    const seen: BulkProgress[] = [];
    for await (const p of client.followBulk(job.jobId)) seen.push(p);
    const seconds = (Date.now() - t0) / 1000;
    const latDuring = await during.stop();

    const last = seen.at(-1)!;
    expect(last).toMatchObject({ state: 'completed', matched: N, processed: N, failed: 0 });
    expect(last.done + last.skipped).toBe(N);
    expect(last.done).toBe(N); // no runner died: every workflow was acted on by this job
    for (let i = 1; i < seen.length; i++) {
      for (const k of ['processed', 'done', 'failed', 'skipped'] as const) {
        expect(seen[i]![k]).toBeGreaterThanOrEqual(seen[i - 1]![k]);
      }
    }
    expect(seen.length).toBeGreaterThan(3);

    // Every payment completes, its bank call applied exactly once.
    await until('all 2,000 completed', async () =>
      (await searchAll(client, { type: 'rpayment', status: 'completed' })).length === N
        ? true
        : undefined,
    );
    expect(bank.calls.size).toBe(N);
    expect([...bank.calls.values()].every((c) => c === 1)).toBe(true);
    const r = await client.result<{ receipt: unknown }>('rpayment', 'p1999');
    expect(r.receipt).toEqual({ receipt: 'r-1999' });

    console.log(
      `bulk retry: ${N} workflows in ${seconds.toFixed(1)} s at ratePerSec ${ratePerSec} ` +
        `(${(N / seconds).toFixed(0)}/s); workload-1 p99 at concurrency 64: ` +
        `${p99(latBefore).toFixed(0)} ms without (n=${latBefore.length}), ` +
        `${p99(latDuring).toFixed(0)} ms during the bulk (n=${latDuring.length})`,
    );
  }, 300_000);

  it('bad input: a clear error and no job', async () => {
    const kv = await new Kvm(env.nc).open(`${prefix}_bulk`);
    const jobsBefore: string[] = [];
    for await (const k of await kv.keys('jobs.*')) jobsBefore.push(k);
    const cases: [unknown, string, RegExp][] = [
      [{ verb: 'explode', query: { type: 'rpayment' }, ...who }, 'verb', /unknown or missing verb/],
      [{ query: { type: 'rpayment' }, ...who }, 'verb', /verb/],
      [{ verb: 'retry', ...who }, 'query', /query must be an object/],
      [{ verb: 'retry', query: 'type=rpayment', ...who }, 'query', /query must be an object/],
      [{ verb: 'retry', query: {}, ...who }, 'query', /no filter/],
      [{ verb: 'retry', query: { type: 'rpayment', limit: 10 }, ...who }, 'query.limit', /limit/],
      [
        { verb: 'retry', query: { type: 'rpayment', cursor: 'x' }, ...who },
        'query.cursor',
        /cursor/,
      ],
      [{ verb: 'retry', query: { colour: 'red' }, ...who }, 'query.colour', /colour/],
      [{ verb: 'retry', query: { status: 'sleeping' }, ...who }, 'query.status', /status/],
      [{ verb: 'retry', query: { type: 'rpayment' }, by: 'x' }, 'reason', /reason/],
      [{ verb: 'retry', query: { type: 'rpayment' }, reason: 'x' }, 'by', /by/],
      [{ verb: 'retry', query: { type: 'rpayment' }, ...who, attempts: 0 }, 'attempts', /attempts/],
      [{ verb: 'reset', query: { type: 'rpayment' }, ...who }, 'toStep', /toStep/],
      [{ verb: 'resolve', query: { type: 'rpayment' }, ...who }, 'output', /output/],
      [
        { verb: 'pause', query: { type: 'rpayment' }, ...who, ratePerSec: 0 },
        'ratePerSec',
        /ratePerSec/,
      ],
      [{ verb: 'pause', query: { type: 'rpayment' }, ...who, dryRun: 'yes' }, 'dryRun', /dryRun/],
      [
        { verb: 'pause', query: { type: 'rpayment' }, ...who, ratePerSec: 10_001 },
        'ratePerSec',
        /ratePerSec must be a number in \(0, 10000\]/,
      ],
      [
        { verb: 'pause', query: { type: 'rpayment' }, ...who, ratePerSec: 'fast' },
        'ratePerSec',
        /ratePerSec/,
      ],
      [{ verb: 5, query: { type: 'rpayment' }, ...who }, 'verb', /unknown or missing verb 5/],
      [{ verb: 'pause', query: ['rpayment'], ...who }, 'query', /query must be an object/],
      [
        { verb: 'pause', query: { type: 'rpayment' }, by: 'x', reason: 'r'.repeat(1025) },
        'reason',
        /reason/,
      ],
      [
        { verb: 'pause', query: { type: 'rpayment' }, ...who, requestId: 'r' },
        'requestId',
        /unknown field/,
      ],
    ];
    for (const [body, field, message] of cases) {
      const e = await errorOf(client.bulk(body as never));
      expect(e.code, JSON.stringify(body)).toBe('bad_request');
      expect(e.message).toMatch(message);
      expect((e.details as { field?: string }).field, JSON.stringify(body)).toBe(field);
      expect((e.details as { why?: unknown }).why, JSON.stringify(body)).toEqual(
        expect.any(String),
      );
    }
    // A body that is not JSON.
    const raw = await env.nc.request(`${prefix}.admin.bulk`, new TextEncoder().encode('{nope'));
    expect(raw.headers?.get('Jf-Error')).toBe('malformed_body');
    // Status of a job that does not exist; a malformed status request.
    expect((await errorOf(client.bulkStatus('nosuchjob'))).code).toBe('not_found');
    expect((await errorOf(client.bulkStatus('a.b'))).code).toBe('bad_request');
    const jobsAfter: string[] = [];
    for await (const k of await kv.keys('jobs.*')) jobsAfter.push(k);
    expect(jobsAfter.sort()).toEqual(jobsBefore.sort());
  });

  it('CLI: bulk forms of the verbs, with exit codes as for one workflow', async () => {
    const conn = ['--nats-url', env.server.url, '--prefix', prefix];
    const byWho = ['--reason', 'cli test', '--by', 'ops@test'];
    // Dry run: the count, nothing changed (exit 0).
    const dry = await runJetflow([
      'terminate',
      '--type',
      'rpayment',
      '--id-prefix',
      'p19',
      '--dry-run',
      ...byWho,
      ...conn,
      '--json',
    ]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(JSON.parse(dry.stdout)).toMatchObject({ matched: 111, dryRun: true });
    // A real job whose every workflow refuses (already finished): failures listed, exit 4.
    const real = await runJetflow([
      'terminate',
      '--where',
      '{"type":"rpayment","idPrefix":"p19"}',
      '--status',
      'completed',
      '--rate',
      '500',
      ...byWho,
      ...conn,
    ]);
    expect(real.code, real.stderr).toBe(4);
    expect(real.stderr).toMatch(/failed rpayment\/p19\d*: already_finished/);
    expect(real.stderr).toMatch(/111\/111 done 0 failed 111/);
    expect(real.stdout).toMatch(/state\s+completed/);
    // Usage: filters and <type> <id> together, no filters and no id, no reason.
    for (const args of [
      ['retry', 'rpayment', 'p1', '--type', 'rpayment', ...byWho],
      ['retry', ...byWho],
      ['retry', '--needs-review', '--by', 'x'],
      ['pause', 'rpayment', 'p1', '--dry-run', ...byWho],
    ]) {
      const r = await runJetflow([...args, ...conn]);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
    }
    // Bad filters reach the replica and come back as a bad request: exit 4, nothing started.
    const badFilter = await runJetflow(['pause', '--status', 'sleeping', ...byWho, ...conn]);
    expect(badFilter.code).toBe(4);
    expect(badFilter.stderr).toMatch(/bad_request: query/);
  }, 120_000);
});
