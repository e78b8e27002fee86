/**
 * `jetflow verify`: runs of the demo's merchantPayment recorded through a real engine and worker
 * (varied inputs, failed activities, retried attempts), then re-run from the journal with new
 * definitions: a refactor → no divergence; a new guard → exactly the workflows whose path
 * changes, at the step it changes; a changed activity input → an effect divergence. The CLI is
 * run as a user runs it (exit codes, text and JSON). `VERIFY_RUNS=1000` records 1,000 runs.
 */
import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { quietLogger, startEngine, uniquePrefix, useServer, repoRoot } from '../harness/jetflow.js';
import { Visibility } from '../../src/host/visibility.js';
import { broken } from '../fixtures/broken-workflows.js';
import { runJetflow } from '../harness/cli.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { merchantPayment, type Voucher } from '../../actors/merchant-payment.js';
import { topologyNames } from '../../src/nats/topology.js';
import { readJournal } from '../../src/nats/journal-scan.js';
import type { verifyJournal } from '../../src/engine/verify.js';
import { Verifier } from '../../src/engine/verify.js';
import { RetryableError, TerminalError } from '../../src/errors.js';
import type { JournalEntry } from '../../src/contracts/wire.js';
import type { Engine } from '../../src/host/engine.js';
import { guarded, PAYMENT_LIMIT, refactored, withCurrency } from '../fixtures/merchant-variants.js';

const env = useServer();
const RUNS = Number(process.env.VERIFY_RUNS ?? 40);

/** The recorded runs' inputs and what their activities do (deterministic per run). */
const vouchersOf = (i: number): Voucher[] =>
  Array.from({ length: i % 6 }, (_, k) => ({
    id: `v${i}-${k}`,
    price: ((i * 7 + k * 3) % 20) + 1,
  }));
const amountOf = (i: number) => vouchersOf(i).reduce((s, v) => s + v.price, 0);
const vouchersFail = (i: number) => i % 11 === 5;
const bankFails = (i: number) => i % 7 === 3;
const bankRetries = (i: number) => i % 9 === 2;
const indexOf = (merchantId: string) => Number(merchantId.slice(2));

const prefix = uniquePrefix();
let engine: Engine;
let worker: Worker;
/** Every journal entry of the recorded runs, in stream order. */
const journal: JournalEntry[] = [];

beforeAll(async () => {
  engine = await startEngine(env.server.url, prefix, { workflows: [merchantPayment] });
  const tried = new Set<number>();
  worker = await createWorker({
    connection: env.nc,
    prefix,
    queues: ['getSoldVouchers', 'calculatePayment', 'bank'],
    concurrency: 16,
    activities: {
      getSoldVouchers: ({ merchantId }: { merchantId: string }, ctx) => {
        if (merchantId.startsWith('stuck'))
          return new Promise((_ok, no) =>
            ctx.signal.addEventListener('abort', () => no(new Error('aborted'))),
          );
        const i = indexOf(merchantId);
        if (vouchersFail(i)) throw new TerminalError(`no such merchant ${merchantId}`);
        return vouchersOf(i);
      },
      calculatePayment: ({ vouchers }: { vouchers: Voucher[] }) =>
        vouchers.reduce((s, v) => s + v.price, 0),
      sendToBank: ({ merchantId }: { merchantId: string; amount: number }) => {
        const i = indexOf(merchantId);
        if (bankFails(i)) throw new TerminalError('account closed');
        if (bankRetries(i) && !tried.has(i)) {
          tried.add(i);
          throw new RetryableError('bank busy');
        }
        return `ref-${i}`;
      },
    },
  });
  const client = new Client(env.nc, { prefix });
  const ids = Array.from({ length: RUNS }, (_, i) => `m-${i}`);
  for (let i = 0; i < RUNS; i += 100)
    await Promise.all(
      ids.slice(i, i + 100).map((id) => client.start('merchantPayment', id, { merchantId: id })),
    );
  for (const id of ids) await client.result('merchantPayment', id).catch(() => undefined);
  const names = topologyNames(prefix);
  // The last step's entry is published with its outbox, after the record: wait for all of them.
  const end = Date.now() + 30_000;
  for (;;) {
    journal.length = 0;
    await readJournal(
      jetstream(env.nc),
      await jetstreamManager(env.nc),
      names,
      { type: 'merchantPayment' },
      (e) => journal.push(e),
    );
    const finished = journal.filter((e) => e.kind === 'step' && e.status !== 'running').length;
    if (finished >= RUNS || Date.now() > end) break;
    await new Promise((r) => setTimeout(r, 100));
  }
}, 600_000);

afterAll(async () => {
  await worker?.close();
  await engine?.close();
});

const verify = (defs: Parameters<typeof verifyJournal>[0]) => {
  const v = new Verifier(defs);
  for (const e of journal) v.add(e);
  return v;
};

describe('verify', () => {
  it('journals what a step is re-run from: pending tasks, task inputs', () => {
    const steps = journal.filter((e) => e.kind === 'step');
    const first = steps.find((e) => e.id === 'm-0' && e.step === 0)!;
    expect(first.tasks).toEqual({
      getSoldVouchers: expect.objectContaining({ activity: 'getSoldVouchers' }) as unknown,
    });
    expect(first.effects).toContainEqual(
      expect.objectContaining({ kind: 'task', input: { merchantId: 'm-0' } }),
    );
  });

  it('the recording definition and a behaviour-preserving refactor: no divergence', () => {
    const steps = journal.filter((e) => e.kind === 'step').length;
    for (const defs of [[merchantPayment], [refactored]]) {
      const s = verify(defs).summary();
      expect(s.workflows).toBe(RUNS);
      expect(s.divergedSteps).toBe(0);
      expect(s.steps).toBe(steps);
      expect(s.identical).toBe(steps);
    }
  });

  it('a new guard: divergences exactly on the workflows whose path changes, at the calculation', () => {
    const v = verify([guarded]);
    const changes = Array.from({ length: RUNS }, (_, i) => i)
      .filter((i) => !vouchersFail(i) && amountOf(i) > PAYMENT_LIMIT)
      .map((i) => `m-${i}`);
    expect(changes.length).toBeGreaterThan(0);
    const diverged = v.results().filter((r) => r.first);
    expect(diverged.map((r) => r.id).sort()).toEqual(changes.sort());
    for (const r of diverged) {
      expect(r.first!.step).toBe(2);
      expect(r.first!.event).toBe('xstate.done.actor.calculatePayment');
      expect(r.first!.kinds).toEqual(['state', 'status', 'context', 'effects']);
      expect(r.first!.diff[0]).toBe('state: "sendingToBank" → "failed"');
    }
  });

  it('a changed activity input: an effect divergence on the task, nothing else', () => {
    const v = verify([withCurrency]);
    const reaching = Array.from({ length: RUNS }, (_, i) => i).filter((i) => !vouchersFail(i));
    const diverged = v.results().filter((r) => r.first);
    expect(diverged).toHaveLength(reaching.length);
    for (const r of diverged) {
      expect(r.first!.step).toBe(2);
      expect(r.first!.kinds).toEqual(['effects']);
      const i = indexOf(r.id);
      expect(r.first!.diff).toEqual([
        `- task {"activity":"sendToBank","actorId":"sendToBank","input":{"amount":${amountOf(i)},"merchantId":"${r.id}"},"queue":"bank"}`,
        `+ task {"activity":"sendToBank","actorId":"sendToBank","input":{"amount":${amountOf(i)},"currency":"EUR","merchantId":"${r.id}"},"queue":"bank"}`,
      ]);
    }
    expect(verify([withCurrency]).summary().diverged).toEqual({ effects: reaching.length });
  });

  it('the CLI: exit 0 on a refactor, exit 1 with the first divergence on a changed guard', async () => {
    const base = ['--nats-url', env.server.url, '--prefix', prefix, '--type', 'merchantPayment'];
    const fixture = (n: string) => resolve(repoRoot, `test/fixtures/verify/${n}.ts`);
    const ok = await runJetflow(['verify', '--workflows', fixture('refactored'), ...base]);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain('verify: no divergence');

    const bad = await runJetflow(['verify', '--workflows', fixture('guarded'), ...base]);
    expect(bad.code).toBe(1);
    const first = Array.from({ length: RUNS }, (_, i) => i).find(
      (i) => !vouchersFail(i) && amountOf(i) > PAYMENT_LIMIT,
    )!;
    expect(bad.stdout).toContain(
      `diverged  merchantPayment/m-${first} v1  step 2 (xstate.done.actor.calculatePayment): state, status, context, effects`,
    );
    expect(bad.stdout).toContain('state: "sendingToBank" → "failed"');

    const json = await runJetflow([
      'verify',
      '--workflows',
      fixture('guarded'),
      ...base,
      '--ids',
      `m-${first},m-0`,
      '--json',
    ]);
    expect(json.code).toBe(1);
    const out = JSON.parse(json.stdout) as {
      summary: { workflows: number; divergedWorkflows: number };
    };
    expect(out.summary).toMatchObject({ workflows: 2, divergedWorkflows: 1 });

    const sampled = await runJetflow([
      'verify',
      '--workflows',
      fixture('refactored'),
      ...base,
      '--sample',
      '5',
      '--since',
      '1h',
      '--json',
    ]);
    expect(sampled.code).toBe(0);
    expect(JSON.parse(sampled.stdout)).toMatchObject({ summary: { workflows: 5 } });
    const otherVersion = await runJetflow([
      'verify',
      '--workflows',
      fixture('guarded'),
      ...base,
      '--version',
      '2',
      '--json',
    ]);
    expect(otherVersion.code).toBe(0);
    expect(JSON.parse(otherVersion.stdout)).toMatchObject({ summary: { workflows: 0 } });
    const usage = await runJetflow([
      'verify',
      '--workflows',
      fixture('guarded'),
      ...base,
      '--allow',
      'nope',
    ]);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('--allow: unknown kind "nope"');

    const allowed = await runJetflow([
      'verify',
      '--workflows',
      fixture('guarded'),
      ...base,
      '--allow',
      'state,status,context,effects',
    ]);
    expect(allowed.code).toBe(0);
  }, 60_000);

  it('test-gen: the generated file passes on the recording definition and fails on a changed one, naming the step', async () => {
    const i = Array.from({ length: RUNS }, (_, k) => k).find(
      (k) => !vouchersFail(k) && amountOf(k) > PAYMENT_LIMIT && !bankFails(k),
    )!;
    const dir = resolve(repoRoot, `test/recorded-tmp-${prefix}`);
    try {
      const gen = await runJetflow([
        'test-gen',
        'merchantPayment',
        `m-${i}`,
        '--workflows',
        resolve(repoRoot, 'actors/index.ts'),
        '--out',
        dir,
        '--nats-url',
        env.server.url,
        '--prefix',
        prefix,
      ]);
      expect(gen.stderr).toBe('');
      expect(gen.code).toBe(0);
      const file = resolve(dir, `merchantPayment-m-${i}.test.ts`);
      expect(gen.stdout).toContain(
        `merchantPayment-m-${i}.test.ts: 4 steps of merchantPayment/m-${i}`,
      );
      const vitest = (f: string) =>
        runJetflow(['run', f, '--reporter', 'verbose'], {
          command: [process.execPath, resolve(repoRoot, 'node_modules/vitest/vitest.mjs')],
          cwd: repoRoot,
          timeoutMs: 120_000,
        });
      const pass = await vitest(file);
      expect(pass.stdout + pass.stderr).toContain('4 passed');
      expect(pass.code).toBe(0);

      // The same recording against a changed definition: the guard now fails the payment.
      const source = readFileSync(file, 'utf8');
      expect(source).toContain(`from "../../actors/index.ts"`);
      const changed = resolve(dir, `changed-m-${i}.test.ts`);
      writeFileSync(
        changed,
        source.replace(`"../../actors/index.ts"`, '"../fixtures/verify/guarded.ts"'),
      );
      const fail = await vitest(changed);
      const out = fail.stdout + fail.stderr;
      expect(fail.code).toBe(1);
      expect(out).toContain('1 failed');
      expect(out).toContain(
        `merchantPayment/m-${i} step 2 (xstate.done.actor.calculatePayment) diverged from the recording: state, status, context, effects`,
      );
      expect(out).toContain('state: "sendingToBank" → "failed"');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 240_000);

  it('check: the broken fixture exits 1 with each finding, the demo passes clean; --against-live names the states in flight a new version lacks; an engine refuses errors', async () => {
    const common = ['--nats-url', env.server.url, '--prefix', prefix];
    const bad = await runJetflow([
      'check',
      '--workflows',
      resolve(repoRoot, 'test/fixtures/broken-workflows.ts'),
      '--json',
    ]);
    expect(bad.code).toBe(1);
    const found = (JSON.parse(bad.stdout) as { findings: { type: string; code: string }[] })
      .findings;
    expect(found.map((f) => `${f.type} ${f.code}`).sort()).toEqual(
      broken.map((b) => `${b.def.type} ${b.expected}`).sort(),
    );
    const demo = await runJetflow(['check']);
    expect(demo.code).toBe(0);
    expect(demo.stdout.trim()).toBe('3 definitions: 0 errors, 0 warnings');

    // Two workflows in flight in `gettingVouchers` (their vouchers never come).
    const dir = mkdtempSync(join(tmpdir(), 'jf-check-'));
    const vis = await Visibility.create({
      servers: env.server.url,
      prefix,
      file: join(dir, 'v.db'),
      logger: quietLogger,
      progress: () => undefined,
    });
    try {
      const client = new Client(env.nc, { prefix });
      await client.start('merchantPayment', 'stuck-1', { merchantId: 'stuck-1' });
      await client.start('merchantPayment', 'stuck-2', { merchantId: 'stuck-2' });
      const end = Date.now() + 15_000;
      for (;;) {
        const c = await client.searchCounts({ type: 'merchantPayment' });
        const row = c.byState.find((r) => r.state === 'gettingVouchers' && r.status === 'running');
        if (row?.count === 2) break;
        if (Date.now() > end) throw new Error('visibility did not count the stuck workflows');
        await new Promise((r) => setTimeout(r, 100));
      }
      const live = await runJetflow([
        'check',
        '--workflows',
        resolve(repoRoot, 'test/fixtures/verify/renamed.ts'),
        '--against-live',
        ...common,
      ]);
      expect(live.code).toBe(1);
      expect(live.stdout).toContain(
        'merchantPayment@2  2 workflows in flight are in state gettingVouchers, which merchantPayment@2 no longer has: a migration map is required  (state-removed)',
      );
      const same = await runJetflow([
        'check',
        '--workflows',
        resolve(repoRoot, 'test/fixtures/verify/refactored.ts'),
        '--against-live',
        ...common,
      ]);
      expect(same.code).toBe(0);

      // migrate --dry-run: what a v1 → v2 rename would do to them; every record unchanged.
      const kv = await new Kvm(env.nc).open(topologyNames(prefix).bucket);
      const revisions = async () =>
        Promise.all(
          ['stuck-1', 'stuck-2'].map(
            async (id) => (await kv.get(`merchantPayment.${id}`))?.revision,
          ),
        );
      const before = await revisions();
      const migrate = (extra: string[]) =>
        runJetflow([
          'migrate',
          'merchantPayment',
          '--to',
          '2',
          '--workflows',
          resolve(repoRoot, 'test/fixtures/verify/renamed.ts'),
          '--dry-run',
          ...common,
          ...extra,
        ]);
      const blocked = await migrate([]);
      expect(blocked.code).toBe(1);
      expect(blocked.stdout).toContain(
        'blocked  merchantPayment/stuck-1 v1 → v2: state gettingVouchers does not exist in merchantPayment@2',
      );
      const mapped = await migrate([
        '--map',
        resolve(repoRoot, 'test/fixtures/verify/rename-map.ts'),
      ]);
      expect(mapped.code).toBe(0);
      expect(mapped.stdout).toContain(
        'ok       merchantPayment/stuck-2 v1 → v2: gettingVouchers → fetchingVouchers',
      );
      expect(mapped.stdout).toContain(
        'dry run (nothing written): 2 workflows in flight, 2 migratable (2 with renamed states, 0 with a new context), 0 blocked',
      );
      expect(await revisions()).toEqual(before);
      expect(before.every((r) => typeof r === 'number')).toBe(true);
      const apply = await migrate(['--apply']);
      expect(apply.code).toBe(2);
    } finally {
      await vis.close();
      rmSync(dir, { recursive: true, force: true });
    }

    await expect(
      startEngine(env.server.url, uniquePrefix(), {
        workflows: [broken.find((b) => b.def.type === 'spinning')!.def],
      }),
    ).rejects.toThrow(/workflow definitions with errors .*spinning@1: .*\(eventless-loop\)/);
  }, 120_000);
});
