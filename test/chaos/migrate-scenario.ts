/**
 * The migration acceptance scenario, shared by the full-size soak (`npm run soak:migrate`, 10,000
 * workflows) and the small test in the fast suite: `workflows` ledger workflows in flight across
 * three states (`open`, `review`, `settled`) on v1, two engine processes; v2 (which renames
 * `review` to `checking`) is deployed; then
 *
 * 1. `jetflow migrate --dry-run` (every KV revision must stay as it was),
 * 2. `jetflow migrate --apply` as a real process while PING signals keep arriving (each with its
 *    own msg id, repeated until an engine answers): engine A is SIGKILLed once mid-job (and
 *    restarted), and the migrate process itself is SIGKILLed once mid-job and the job resumed
 *    with `--resume <job>`,
 * 3. `jetflow migrate --revert <job>` while the signals still arrive.
 *
 * What it measures, for the test to assert: per workflow its version, state and the PINGs its
 * context counted against the PINGs sent, and how many migrate / revert steps its journal has.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { Kvm } from '@nats-io/kv';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { EngineProcess, repoRoot, uniquePrefix } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { JetflowError } from '../../src/errors.js';
import { topologyNames } from '../../src/nats/topology.js';
import { readJournal } from '../../src/nats/journal-scan.js';
import { unpack } from '../../src/contracts/codec.js';
import type { BulkProgress } from '../../src/contracts/bulk.js';
import type { WorkflowRecord } from '../../src/contracts/wire.js';

export interface MigrateScenario {
  url: string;
  nc: NatsConnection;
  workflows: number;
  /** PING signals per second while the jobs run. */
  signalsPerSec: number;
  /** The jobs' `--rate`. */
  rate: number;
  log?: (line: string) => void;
}

export interface MigrateOutcome {
  workflows: number;
  /** Workflows whose KV revision the dry run changed. */
  dryRunChanged: number;
  dryRunLine: string;
  apply: { jobId: string; ms: number; done: number; failed: number; skipped: number };
  revert: { jobId: string; ms: number; done: number; failed: number; skipped: number };
  engineKilledAt: number;
  runnerKilledAt: number;
  signals: { sent: number; duringApply: number; duringRevert: number };
  afterApply: Check;
  afterRevert: Check;
  /** Workflows never signaled whose snapshot after the revert is not the one before apply. */
  notExactlyRestored: number;
  untouched: number;
}

export interface Check {
  /** Workflows not on the expected version / not in the expected state. */
  wrongVersion: string[];
  wrongState: string[];
  /** Workflows whose context counted a PING count or sum other than what was sent. */
  lostOrDoubled: string[];
  /** Workflows whose journal has not exactly one step of the job. */
  notOnce: string[];
  /** Workflows by state. */
  states: Record<string, number>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const AT = ['open', 'review', 'settled'] as const;

/** Retry a request until an engine answers (one may be dead or restarting). */
async function untilAnswered<T>(f: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (err instanceof JetflowError && err.code !== 'unavailable' && err.code !== 'timeout')
        throw err;
      await sleep(100);
    }
  }
}

function cli(args: string[]): {
  child: ChildProcess;
  done: Promise<{ code: number | null; out: string; err: string }>;
  jobId: Promise<string>;
} {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', resolve(repoRoot, 'src/cli/main.ts'), ...args],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
  );
  let out = '';
  let err = '';
  let found: (id: string) => void = () => undefined;
  const jobId = new Promise<string>((ok) => (found = ok));
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => {
    err += b.toString();
    const m = /migration job (\w+) \(/.exec(err);
    if (m) found(m[1]!);
  });
  const done = new Promise<{ code: number | null; out: string; err: string }>((ok) =>
    child.once('close', (code) => ok({ code, out, err })),
  );
  return { child, done, jobId };
}

export async function runMigrateScenario(o: MigrateScenario): Promise<MigrateOutcome> {
  const log = o.log ?? (() => undefined);
  const prefix = uniquePrefix();
  const names = topologyNames(prefix);
  const mod = (f: string) => resolve(repoRoot, 'test/fixtures/migrate', f);
  const opts = (v: string) => ({ ackWaitMs: 2_000, failoverMs: 2_000, workflows: mod(v) });
  let a = await new EngineProcess(o.url, prefix, opts('v1.ts')).start();
  let b = await new EngineProcess(o.url, prefix, opts('v1.ts')).start();
  const client = new Client(o.nc, { prefix, timeoutMs: 5_000 });
  const t0 = Date.now();
  const common = ['--nats-url', o.url, '--prefix', prefix, '--workflows', mod('v2.ts')];
  const ids = Array.from({ length: o.workflows }, (_, i) => `w${String(i).padStart(6, '0')}`);
  try {
    // Workflows in flight on v1, a third in each state.
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < ids.length) {
          const i = next++;
          await untilAnswered(() => client.start('ledger', ids[i]!, { at: AT[i % 3] }));
        }
      }),
    );
    log(`${ids.length} started on v1 at +${Date.now() - t0} ms`);
    // Deploy v2 (both versions registered), one engine at a time.
    await a.stop();
    a = await new EngineProcess(o.url, prefix, opts('v2.ts')).start();
    await b.stop();
    b = await new EngineProcess(o.url, prefix, opts('v2.ts')).start();
    log(`v2 deployed at +${Date.now() - t0} ms`);

    const js = jetstream(o.nc);
    const jsm = await jetstreamManager(o.nc);
    const kv = await new Kvm(o.nc).open(names.bucket);
    const records = async () => {
      const out = new Map<string, { rec: WorkflowRecord; revision: number }>();
      for await (const key of await kv.keys('ledger.*')) {
        const e = await kv.get(key);
        if (e && e.operation === 'PUT' && e.value.length > 0)
          out.set(key.slice('ledger.'.length), {
            rec: unpack(e.value) as WorkflowRecord,
            revision: e.revision,
          });
      }
      return out;
    };

    // 1. Dry run: nothing written.
    const before = await records();
    const dry = await cli([
      'migrate',
      'ledger',
      '--to',
      '2',
      '--map',
      mod('map.ts'),
      '--dry-run',
      ...common,
    ]).done;
    if (dry.code !== 0) throw new Error(`dry run exited ${dry.code}: ${dry.err}`);
    const dryRunLine = dry.out.trim().split('\n').pop() ?? '';
    const afterDry = await records();
    let dryRunChanged = 0;
    for (const [id, r] of before) if (afterDry.get(id)?.revision !== r.revision) dryRunChanged++;
    log(`dry run: ${dryRunLine} (${dryRunChanged} revisions changed)`);

    // Signals: PING {n} with a msg id of its own, repeated until answered.
    const sent = new Map<string, { count: number; sum: number }>();
    let signaling = true;
    let total = 0;
    let seq = 0;
    const signalInflight = new Set<Promise<void>>();
    const signaler = (async () => {
      const gap = 1000 / o.signalsPerSec;
      let due = Date.now();
      while (signaling) {
        const id = ids[Math.floor(Math.random() * ids.length)]!;
        const n = (seq++ % 97) + 1;
        const msgId = `ping-${seq}`;
        const p = untilAnswered(() =>
          client.signal('ledger', id, { type: 'PING', n }, { msgId }),
        ).then(() => {
          const s = sent.get(id) ?? { count: 0, sum: 0 };
          s.count++;
          s.sum += n;
          sent.set(id, s);
          total++;
        });
        signalInflight.add(p);
        void p.finally(() => signalInflight.delete(p));
        due += gap;
        const wait = due - Date.now();
        if (wait > 0) await sleep(wait);
        while (signalInflight.size > 200) await sleep(5);
      }
      await Promise.all([...signalInflight]);
    })();

    // Progress of the jobs (for the kills).
    let progress: BulkProgress | undefined;
    const sub = o.nc.subscribe(`${prefix}.admin.bulk.*`, {
      callback: (_e, m) => {
        try {
          progress = JSON.parse(new TextDecoder().decode(m.data)) as BulkProgress;
        } catch {
          /* not a progress notification */
        }
      },
    });
    const untilProcessed = async (jobId: string, n: number) => {
      while (!(progress?.jobId === jobId && progress.processed >= n)) await sleep(20);
    };

    // 2. Apply, with an engine SIGKILL and a runner SIGKILL mid-job.
    const signalsBeforeApply = total;
    const tApply = Date.now();
    const apply = cli([
      'migrate',
      'ledger',
      '--to',
      '2',
      '--map',
      mod('map.ts'),
      '--apply',
      '--reason',
      'v2 renames review',
      '--by',
      'soak',
      '--rate',
      String(o.rate),
      ...common,
    ]);
    const jobId = await Promise.race([
      apply.jobId,
      apply.done.then((r) => {
        throw new Error(`migrate --apply exited ${r.code} before it started: ${r.err}`);
      }),
    ]);
    await untilProcessed(jobId, Math.floor(o.workflows * 0.2));
    apply.child.kill('SIGKILL');
    await apply.done;
    const runnerKilledAt = progress!.processed;
    log(`migrate runner SIGKILL at ${runnerKilledAt}/${o.workflows} (+${Date.now() - t0} ms)`);
    const resume = cli(['migrate', '--resume', jobId, '--map', mod('map.ts'), ...common]);
    await untilProcessed(jobId, Math.floor(o.workflows * 0.5));
    await a.kill();
    const engineKilledAt = progress!.processed;
    log(`engine A SIGKILL at ${engineKilledAt}/${o.workflows} (+${Date.now() - t0} ms)`);
    // Restarted in the background: the job goes on with engine B meanwhile.
    const restarted = sleep(1_000).then(async () => {
      a = await new EngineProcess(o.url, prefix, opts('v2.ts')).start();
      log(`engine A restarted at +${Date.now() - t0} ms`);
    });
    const resumed = await resume.done;
    await restarted;
    if (resumed.code !== 0)
      throw new Error(`migrate --resume exited ${resumed.code}: ${resumed.err}`);
    const applyMs = Date.now() - tApply;
    await sleep(500);
    const applyP = progress!;
    log(`apply ${jobId}: ${resumed.out.replace(/\s+/g, ' ')} in ${applyMs} ms`);
    const duringApply = total - signalsBeforeApply;

    // Stop the signals, wait for every answer, check.
    signaling = false;
    await signaler;
    const check = async (
      version: number,
      job: string,
      state: (at: string) => string,
    ): Promise<Check> => {
      const recs = await records();
      const c: Check = {
        wrongVersion: [],
        wrongState: [],
        lostOrDoubled: [],
        notOnce: [],
        states: {},
      };
      for (const [i, id] of ids.entries()) {
        const r = recs.get(id)?.rec;
        const snap = r?.snapshot as
          { value?: unknown; context?: { count: number; sum: number } } | undefined;
        if (!r || r.version !== version) {
          c.wrongVersion.push(id);
          log(
            `wrong version ${id}: ${r ? `v${r.version}, step ${r.step}, status ${r.status}, migration ${JSON.stringify(r.migration)}` : 'no record in the listing'}`,
          );
        }
        const value = String(snap?.value);
        c.states[value] = (c.states[value] ?? 0) + 1;
        if (value !== state(AT[i % 3]!)) c.wrongState.push(id);
        const s = sent.get(id) ?? { count: 0, sum: 0 };
        if (snap?.context?.count !== s.count || snap.context.sum !== s.sum)
          c.lostOrDoubled.push(id);
      }
      const steps = new Map<string, Set<number>>();
      await readJournal(js, jsm, names, { type: 'ledger' }, (e) => {
        if (e.kind !== 'step' || e.event.type !== 'jetflow.migrate') return;
        if ((e.event.payload as { jobId?: string } | undefined)?.jobId !== job) return;
        const set = steps.get(e.id) ?? new Set<number>();
        set.add(e.step);
        steps.set(e.id, set);
      });
      for (const id of ids) if (steps.get(id)?.size !== 1) c.notOnce.push(id);
      return c;
    };
    const afterApply = await check(2, jobId, (at) => (at === 'review' ? 'checking' : at));
    log(
      `after apply: ${JSON.stringify({ ...afterApply, wrongVersion: afterApply.wrongVersion.length, wrongState: afterApply.wrongState.length, lostOrDoubled: afterApply.lostOrDoubled.length, notOnce: afterApply.notOnce.length })}`,
    );

    // 3. Revert, signals arriving again.
    signaling = true;
    const signalsBeforeRevert = total;
    const signaler2 = (async () => {
      const gap = 1000 / o.signalsPerSec;
      while (signaling) {
        const id = ids[Math.floor(Math.random() * ids.length)]!;
        const n = (seq++ % 97) + 1;
        const msgId = `ping-${seq}`;
        const p = untilAnswered(() =>
          client.signal('ledger', id, { type: 'PING', n }, { msgId }),
        ).then(() => {
          const s = sent.get(id) ?? { count: 0, sum: 0 };
          s.count++;
          s.sum += n;
          sent.set(id, s);
          total++;
        });
        signalInflight.add(p);
        void p.finally(() => signalInflight.delete(p));
        await sleep(gap);
        while (signalInflight.size > 200) await sleep(5);
      }
      await Promise.all([...signalInflight]);
    })();
    const tRevert = Date.now();
    const revert = cli([
      'migrate',
      '--revert',
      jobId,
      '--reason',
      'back to v1',
      '--by',
      'soak',
      '--rate',
      String(o.rate),
      ...common,
    ]);
    const revertJob = await revert.jobId;
    const rv = await revert.done;
    if (rv.code !== 0) throw new Error(`migrate --revert exited ${rv.code}: ${rv.err}`);
    const revertMs = Date.now() - tRevert;
    await sleep(500);
    const revertP = progress!;
    signaling = false;
    await signaler2;
    const duringRevert = total - signalsBeforeRevert;
    sub.unsubscribe();
    const afterRevert = await check(1, revertJob, (at) => at);
    // Workflows no signal reached: the revert put back the very snapshot they had on v1.
    const after = await records();
    let notExactlyRestored = 0;
    let untouched = 0;
    for (const id of ids) {
      if (sent.has(id)) continue;
      untouched++;
      const x = JSON.stringify(before.get(id)?.rec.snapshot);
      if (x !== JSON.stringify(after.get(id)?.rec.snapshot)) notExactlyRestored++;
    }
    const counters = (p: BulkProgress) => ({ done: p.done, failed: p.failed, skipped: p.skipped });
    return {
      workflows: ids.length,
      dryRunChanged,
      dryRunLine,
      apply: { jobId, ms: applyMs, ...counters(applyP) },
      revert: { jobId: revertJob, ms: revertMs, ...counters(revertP) },
      engineKilledAt,
      runnerKilledAt,
      signals: { sent: total, duringApply, duringRevert },
      afterApply,
      afterRevert,
      notExactlyRestored,
      untouched,
    };
  } finally {
    await Promise.all([a.stop(5_000), b.stop(5_000)]);
  }
}
