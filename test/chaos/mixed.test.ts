/**
 * Mixed chaos (issue 10): what the other chaos tests keep apart, at once. One nats-server, two
 * engines (a third joins and later drains) and two workers, all real processes; the engines run
 * with a deliberately short dedup window (2 s). 500 `mixed` workflows each run an activity (some
 * attempts fail and are retried, a few calls run longer than the dedup window), take 2-4 signals
 * sent with `Nats-Msg-Id` (some sent twice on purpose), each of which re-sets a durable timer
 * that must finally fire, then run a second activity. Meanwhile engines are SIGKILLed and
 * restarted at random (at least 5 times), a worker is SIGKILLed mid-attempt twice (and
 * replaced), shards move on the join and the drain, and the nats-server is restarted once
 * (gracefully, same store).
 *
 * At the end: every workflow completed with the right output and step count; every activity
 * call's side effects (the workers count each run of each (task, attempt) in files) are
 * accounted for by its attempts: no attempt number of any task ran twice (the attempt ledger;
 * an engine killed between performing and marking an outbox queues a task twice after the dedup
 * window), the attempt whose result the workflow took ran, and every earlier run was a planned
 * failure or ran on a worker that was SIGKILLed (its task was redelivered as the next attempt).
 * A later run is an at-least-once redelivery whose result is ignored. A worker that dies by
 * itself fails the test and is replaced so the other checks still report. Attempt numbers lost
 * to deliveries no worker received are counted and reported, as are the copies the ledger kept
 * from running; no signal applied twice (also when every signal is sent once more after the
 * dedup window and the server restart); every timer fired exactly once; nothing is left in the
 * inbox or task queues.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  appendFileSync,
  cpSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join, resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { runRoot, type NatsServer } from '../harness/nats-server.js';
import { EngineProcess, repoRoot, startServer, uniquePrefix } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { JetflowError } from '../../src/errors.js';
import { topologyNames } from '../../src/nats/topology.js';
import { unpack } from '../../src/contracts/codec.js';
import type { WorkflowRecord } from '../../src/contracts/wire.js';
import type { MixedInput, MixedOutput } from '../fixtures/mixed-workflows.js';

const WORKFLOWS = 500;
const SHARDS = 8;
/** The engines' dedup window: the slow activity calls run longer than this. */
const DUPLICATE_WINDOW_MS = 2_000;
const SLOW_MS = 5_000;
/** Workflows driven at once by the test. */
const DRIVERS = 20;

let server: NatsServer;
let nc: NatsConnection;
let dir: string;
const engines: EngineProcess[] = [];
const workers: ChildProcess[] = [];
/** The two live worker processes (slot 0 and 1), replaced when one dies or is killed. */
const workerSlots: ChildProcess[] = [];
/** Pids of workers SIGKILLed on purpose: their runs may be followed by a redelivery. */
const killedWorkers = new Set<number>();
let workerNo = 0;

/** Small seeded PRNG (mulberry32), so that a failing run's fault schedule can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const seed = Number(process.env.MIXED_SEED ?? Math.floor(Math.random() * 2 ** 31));
/** Two streams: the fault schedule (victims, gaps) does not depend on the load's draws. */
const faultRandom = prng(seed);
const loadRandom = prng(seed ^ 0x5bd1e995);
const between = (random: () => number, lo: number, hi: number) =>
  lo + Math.floor(random() * (hi - lo));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What workflow `i` is started with. */
function inputOf(i: number): MixedInput {
  return {
    wf: `m${i}`,
    x: i,
    signals: 2 + (i % 3),
    // About one in 60 calls runs longer than the dedup window; the rest are short.
    ms: i % 60 === 7 ? SLOW_MS : 10 + (i % 5) * 20,
    failUntil: i % 7 === 0 ? 1 : i % 11 === 0 ? 2 : 0,
  };
}

beforeAll(async () => {
  server = await startServer({ shards: SHARDS });
  nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  dir = mkdtempSync(join(runRoot(), 'mixed-'));
  writeFileSync(
    join(dir, 'engine.json'),
    JSON.stringify({ duplicateWindowMs: DUPLICATE_WINDOW_MS }),
  );
});
afterAll(async () => {
  clearInterval(progress);
  stopping = true;
  await Promise.all(engines.map((e) => e.kill()));
  for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
  await nc?.close();
  await server?.stop();
  if (dir && !passed && keepAs) {
    cpSync(dir, keepAs, { recursive: true });
    console.log(`mixed chaos: logs and side-effect files kept in ${keepAs}`);
  }
  if (dir) rmSync(dir, { recursive: true, force: true });
});

let engineNo = 0;
/** Start an engine process whose whole log goes to `<dir>/engine-<n>.log`. */
async function startEngine(prefix: string): Promise<EngineProcess> {
  const n = ++engineNo;
  const e = new EngineProcess(server.url, prefix, {
    shards: SHARDS,
    // The CLI has no flag for the dedup window; its JSON config file has.
    env: { JETFLOW_CONFIG: join(dir, 'engine.json') },
  });
  engines.push(e);
  await e.start();
  const file = join(dir, `engine-${n}.log`);
  writeFileSync(file, e.log);
  const keep = (b: Buffer) => appendFileSync(file, b);
  e.child!.stdout?.on('data', keep);
  e.child!.stderr?.on('data', keep);
  return e;
}

/** Workers that died on their own (they are never killed here): each one fails the test. */
const workerDeaths: string[] = [];
let stopping = false;

/**
 * Start a worker process into `slot`. If it ever exits on its own (not killed by the test), that
 * is recorded (a failure of the test) and a replacement is started, so that the run goes on and
 * every other check still reports what it finds.
 */
async function startWorker(prefix: string, slot: number): Promise<void> {
  const n = ++workerNo;
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      resolve(repoRoot, 'test/fixtures/mixed-worker.ts'),
      server.url,
      prefix,
      dir,
    ],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  workers.push(child);
  workerSlots[slot] = child;
  const file = join(dir, `worker-${n}.log`);
  let out = '';
  const keep = (b: Buffer) => {
    out = (out + b.toString()).slice(-4_000);
    appendFileSync(file, b);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const deadline = Date.now() + 30_000;
  while (!out.includes('worker ready')) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`worker did not start:\n${out}`);
    await sleep(50);
  }
  child.once('exit', (code, signal) => {
    if (stopping || killedWorkers.has(child.pid!)) return;
    workerDeaths.push(
      `worker pid ${child.pid} exited by itself (${code ?? signal}); its log ends with: ${out.slice(-1_500)}`,
    );
    void startWorker(prefix, slot).catch((err: unknown) =>
      workerDeaths.push(`replacement worker did not start: ${String(err)}`),
    );
  });
}

/** Set when the test passed; otherwise `afterAll` keeps the logs for the diagnosis. */
let passed = false;
let keepAs = '';
let progress: NodeJS.Timeout | undefined;

/**
 * Repeat a request until an engine answers it: through SIGKILLs, failovers and the server
 * restart (NATS errors, timeouts, `unavailable`). Any other jetflow error is a failure. Gives
 * up (undefined) after `ms`: far beyond any failover here, so a request still unanswered then
 * names a workflow that is stuck.
 */
async function untilAnswered<T>(f: () => Promise<T>, ms = 90_000): Promise<T | undefined> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (err instanceof JetflowError && err.code !== 'unavailable' && err.code !== 'timeout')
        throw err;
      if (Date.now() > deadline) return undefined;
      await sleep(200);
    }
  }
}

describe('engines, workers and the server failing at once', () => {
  it(`${WORKFLOWS} workflows with activities, re-set timers and signals: nothing lost or doubled`, async () => {
    const prefix = uniquePrefix();
    keepAs = `/tmp/jetflow-mixed-${prefix}`;
    console.log(
      `mixed chaos: seed ${seed} (MIXED_SEED=${seed} replays the fault schedule's victims and gaps)`,
    );
    const slots: EngineProcess[] = [await startEngine(prefix), await startEngine(prefix)];
    await startWorker(prefix, 0);
    await startWorker(prefix, 1);
    const client = new Client(nc, { prefix, timeoutMs: 2_000 });
    const names = topologyNames(prefix);
    const problems: string[] = [];
    const faults: string[] = [];
    let phase = 'load';
    let kills = 0;
    let next = 0;
    const t0 = Date.now();
    progress = setInterval(() => {
      const s = Math.round((Date.now() - t0) / 1000);
      console.log(`mixed chaos +${s}s: ${phase}, started ${next}, faults ${faults.join('; ')}`);
    }, 15_000);

    // Load: workflows driven DRIVERS at a time; signals spaced so that most of them re-set a
    // timer that is already armed. Every signal has a msg id; one workflow in four sends each
    // signal a second time on purpose, which must be answered as a duplicate.
    const ids = Array.from({ length: WORKFLOWS }, (_, i) => `m${i}`);
    let resent = 0;
    const drive = async () => {
      while (next < ids.length) {
        const i = next++;
        const id = ids[i]!;
        const input = inputOf(i);
        if (!(await untilAnswered(() => client.start('mixed', id, input)))) {
          problems.push(`${id}: start unanswered`);
          continue;
        }
        for (let n = 0; n < input.signals; n++) {
          await sleep(between(loadRandom, 50, 400));
          const msgId = `${id}.s${n}`;
          const sig = () => client.signal('mixed', id, { type: 'SIG', n }, { msgId });
          if (!(await untilAnswered(sig))) {
            problems.push(`${id}: signal ${msgId} unanswered`);
            break;
          }
          if (i % 4 === 0) {
            resent++;
            const again = await untilAnswered(sig);
            if (again?.duplicate !== true)
              problems.push(`${id}: second send of ${msgId}: ${JSON.stringify(again)}`);
          }
        }
      }
    };
    let driving = true;
    const load = Promise.all(Array.from({ length: DRIVERS }, drive)).finally(
      () => (driving = false),
    );

    // Faults, one at a time, at random moments, against random engines.
    const killOne = async () => {
      const k = between(faultRandom, 0, slots.length);
      await slots[k]!.kill();
      kills++;
      faults.push(`SIGKILL slot ${k} +${Math.round((Date.now() - t0) / 1000)}s`);
      await sleep(between(faultRandom, 0, 2_000));
      slots[k] = await startEngine(prefix);
    };
    // A worker SIGKILLed while it runs attempts: each task it held is redelivered after the
    // queue's AckWait as the next attempt (at least once on a crash).
    const killWorker = async () => {
      const k = between(faultRandom, 0, 2);
      const victim = workerSlots[k]!;
      killedWorkers.add(victim.pid!);
      victim.kill('SIGKILL');
      faults.push(`worker ${k} SIGKILL +${Math.round((Date.now() - t0) / 1000)}s`);
      await startWorker(prefix, k);
    };
    const script: (() => Promise<void>)[] = [
      killOne,
      async () => {
        slots.push(await startEngine(prefix));
        faults.push('third engine joined');
      },
      killWorker,
      killOne,
      async () => {
        await server.restart();
        faults.push('nats-server restarted');
      },
      killOne,
      async () => {
        const code = await slots.pop()!.stop();
        faults.push(`third engine drained (exit ${code})`);
        if (code !== 0) problems.push(`the draining engine exited with ${code}`);
      },
      killOne,
      killWorker,
      killOne,
    ];
    for (const fault of script) {
      await sleep(between(faultRandom, 2_000, 5_000));
      await fault();
    }
    // Keep killing while the load still runs, so no phase of it is spared.
    while (driving) {
      await sleep(between(faultRandom, 2_000, 5_000));
      if (driving) await killOne();
    }
    await load;
    const loadMs = Date.now() - t0;

    // Every workflow completes (polled; a workflow still running long after the last fault is
    // stuck) with the output its input determines and one step per applied message.
    phase = 'waiting for completion';
    const outputs = new Map<string, { out: MixedOutput; step: number }>();
    const deadline = Date.now() + 120_000;
    while (outputs.size < WORKFLOWS && Date.now() < deadline) {
      for (const id of ids) {
        if (outputs.has(id)) continue;
        const q = await untilAnswered(() => client.query('mixed', id), 10_000);
        if (q && q.status !== 'running')
          outputs.set(id, { out: q.output as MixedOutput, step: q.step });
      }
      if (outputs.size < WORKFLOWS) await sleep(1_000);
    }
    const kv = await new Kvm(nc).open(names.bucket);
    for (const id of ids.filter((id) => !outputs.has(id))) {
      const e = await kv.get(`mixed.${id}`);
      const r = e?.value.length ? (unpack(e.value) as WorkflowRecord) : undefined;
      const { snapshot, ...rest } = r ?? ({ snapshot: undefined } as Partial<WorkflowRecord>);
      const snap = snapshot as { value?: unknown; context?: unknown } | undefined;
      problems.push(
        `${id} never finished: ${JSON.stringify({ value: snap?.value, context: snap?.context, ...rest })}`,
      );
    }
    // Side effects, as the workers counted them: the attempts each activity call ran.
    type Call = { taskId: string; attempts: number[]; by: string[]; killed: number[] };
    const byTask = new Map<string, { wf: string } & Omit<Call, 'taskId'>>();
    for (const f of readdirSync(dir).filter((f) => f.startsWith('runs-'))) {
      const pid = Number(f.slice('runs-'.length, -'.log'.length));
      for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
        if (!line) continue;
        const [taskId, attempt, wf] = line.split(' ');
        const t = byTask.get(taskId!) ?? { wf: wf!, attempts: [], by: [], killed: [] };
        t.attempts.push(Number(attempt));
        t.by.push(`${attempt}@${pid}`);
        if (killedWorkers.has(pid)) t.killed.push(Number(attempt));
        byTask.set(taskId!, t);
      }
    }
    const runs = new Map<string, Call[]>();
    let activityRuns = 0;
    for (const [taskId, t] of byTask) {
      runs.set(t.wf, [
        ...(runs.get(t.wf) ?? []),
        { taskId, attempts: t.attempts.sort((a, b) => a - b), by: t.by, killed: t.killed },
      ]);
      activityRuns += t.attempts.length;
      // The side effects of one (task, attempt): never more than one, whoever ran them.
      const perAttempt = new Map<number, number>();
      for (const a of t.attempts) perAttempt.set(a, (perAttempt.get(a) ?? 0) + 1);
      for (const [a, n] of perAttempt)
        if (n > 1) problems.push(`${taskId}: attempt ${a} ran ${n} times (${t.by.join(', ')})`);
    }
    // Copies the attempt ledger kept from running (a task queued twice, a retry stored twice).
    let ledgerDuplicates = 0;
    for (const f of readdirSync(dir).filter((f) => f.startsWith('worker-')))
      ledgerDuplicates += readFileSync(join(dir, f), 'utf8').split('already taken').length - 1;
    // Each call: no attempt number ran twice (no doubled side effect, checked above), the
    // attempt whose result the workflow took ran, and every earlier run was a planned failure or
    // ran on a worker SIGKILLed mid-attempt (redelivered as the next attempt).
    // An attempt number may be missing: the attempt is JetStream's delivery count, and a delivery
    // the server made but no worker received (in flight when the server restarted) uses one up
    // (README, Activities: attempts count deliveries). Such gaps are counted and reported.
    let skipped = 0;
    /** Runs before the taken attempt, not planned failures, on a worker that was then killed. */
    let cutByWorkerKills = 0;
    for (let i = 0; i < WORKFLOWS; i++) {
      const id = ids[i]!;
      const { failUntil } = inputOf(i);
      const calls = runs.get(id) ?? [];
      const took = outputs.get(id)?.out;
      const bad = (c: Call): boolean => {
        const a = c.attempts;
        const tookAttempt = c.taskId.endsWith('.first')
          ? took?.first?.attempt
          : took?.second?.attempt;
        // A run after the taken attempt, with a later number, is an at-least-once redelivery
        // (its ack was lost, e.g. in the server restart, or its worker was killed after
        // publishing the result): its result is ignored by the task table. What must never
        // happen: one attempt number run twice (a task queued twice), the taken attempt not
        // run, or an earlier run that neither failed as planned nor died with its worker.
        return (
          new Set(a).size !== a.length ||
          tookAttempt === undefined ||
          !a.includes(tookAttempt) ||
          tookAttempt <= failUntil ||
          a.filter((n) => n < tookAttempt).some((n) => n > failUntil && !c.killed.includes(n))
        );
      };
      if (calls.length !== 2 || calls.some(bad))
        problems.push(
          `${id}: activity runs ${JSON.stringify(calls)} (failUntil ${failUntil}, took ${JSON.stringify([took?.first, took?.second])})`,
        );
      for (const c of calls) {
        skipped += (c.attempts.at(-1) ?? 0) - new Set(c.attempts).size;
        const tookAttempt = c.taskId.endsWith('.first')
          ? took?.first?.attempt
          : took?.second?.attempt;
        if (tookAttempt !== undefined)
          cutByWorkerKills += c.attempts.filter(
            (n) => n < tookAttempt && n > failUntil && c.killed.includes(n),
          ).length;
      }
    }

    let resets = 0;
    for (let i = 0; i < WORKFLOWS; i++) {
      const id = ids[i]!;
      const got = outputs.get(id);
      if (!got) continue;
      const input = inputOf(i);
      const expected = {
        first: { v: i * 10 + 1, attempt: got.out?.first?.attempt },
        second: { v: i * 10 + 2, attempt: got.out?.second?.attempt },
        seq: Array.from({ length: input.signals }, (_, n) => n),
        fires: 1,
      };
      const { armed, ...rest } = got.out ?? ({ armed: 0 } as MixedOutput);
      // `timing` is entered once, plus once per signal that arrived while it was armed.
      if (
        JSON.stringify(rest) !== JSON.stringify(expected) ||
        armed < 1 ||
        armed > input.signals + 1
      )
        problems.push(
          `${id}: output ${JSON.stringify(got.out)}, expected ${JSON.stringify(expected)}`,
        );
      // Start, each signal, two activity results and one timer fire: one step each.
      if (got.step !== input.signals + 3)
        problems.push(`${id}: step ${got.step}, expected ${input.signals + 3}`);
      resets += armed - 1;
    }

    // Every signal once more, after the dedup window and the server restart: each one is
    // recognised by the record's msg id memory, and nothing changes.
    phase = 'late resends';
    for (let i = 0; i < WORKFLOWS; i++) {
      const id = ids[i]!;
      if (!outputs.has(id)) continue;
      for (let n = 0; n < inputOf(i).signals; n++) {
        const msgId = `${id}.s${n}`;
        const r = await untilAnswered(
          () => client.signal('mixed', id, { type: 'SIG', n }, { msgId }),
          10_000,
        );
        if (r?.duplicate !== true)
          problems.push(`${id}: late resend of ${msgId}: ${JSON.stringify(r)}`);
      }
      const q = await untilAnswered(() => client.query('mixed', id), 10_000);
      if (q?.status !== 'completed' || q.step !== inputOf(i).signals + 3)
        problems.push(`${id}: after the late resends: ${q?.status} at step ${q?.step}`);
    }

    // Nothing left behind: no unapplied inbox message, no pending timer schedule, no task.
    phase = 'checking the streams';
    const jsm = await jetstreamManager(nc);
    const left = async () => ({
      inbox: (await jsm.streams.info(names.inboxStream)).state.messages,
      tasks: (await jsm.streams.info(names.tasksStream)).state.messages,
    });
    let rest = await left();
    for (let waited = 0; (rest.inbox > 0 || rest.tasks > 0) && waited < 30_000; waited += 500) {
      await sleep(500);
      rest = await left();
    }
    if (rest.inbox > 0 || rest.tasks > 0) {
      const subjects = await jsm.streams
        .info(names.inboxStream, { subjects_filter: '>' })
        .then((si) => si.state.subjects);
      problems.push(`left in the streams: ${JSON.stringify({ ...rest, subjects })}`);
    }
    clearInterval(progress);
    stopping = true;
    problems.unshift(...workerDeaths);

    const report = {
      seed,
      t0,
      workflows: WORKFLOWS,
      kills,
      serverRestarts: 1,
      faults,
      signalsResentOnPurpose: resent,
      timerResets: resets,
      activityRuns,
      cutByWorkerKills,
      ledgerDuplicates,
      attemptsSkipped: skipped,
      loadMs,
      totalMs: Date.now() - t0,
    };
    console.log('mixed chaos', JSON.stringify(report));
    expect(problems).toEqual([]);
    expect(kills).toBeGreaterThanOrEqual(5);
    // The test did exercise re-sets of armed timers (a plain count, not a timing bound).
    expect(resets).toBeGreaterThan(0);
    passed = true;
  }, 420_000);
});
