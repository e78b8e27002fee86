/**
 * The attempt ledger (issue 10, the last open point of H1/H2): a task queued twice never runs one
 * attempt twice. Workers take attempt N of a task with `kv.create` in bucket `<prefix>_attempts`
 * before running it; a second copy of the same attempt is terminated without running.
 */
import { describe, expect, it } from 'vitest';
import { headers } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { assign, setup as machineSetup } from 'xstate';
import { quietLogger, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { workflows } from '../fixtures/workflows.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker, type WorkerOptions } from '../../src/worker/index.js';
import { activity } from '../../src/engine/activity.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { ensureTopology, topologyNames } from '../../src/nats/topology.js';
import { taskEffectHandlers, taskMessageOf } from '../../src/nats/tasks.js';
import { attemptKey, fromAttemptsBucket } from '../../src/nats/attempts.js';
import { MSGPACK, pack, unpack } from '../../src/contracts/codec.js';
import {
  Header,
  type Effect,
  type TaskMessage,
  type WorkflowRecord,
} from '../../src/contracts/wire.js';
import { ENGINE_DEFAULTS } from '../../src/config.js';
import type { Logger } from '../../src/engine/ports.js';
import type { Engine } from '../../src/host/engine.js';

const env = useServer();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Attempt 1 of `transfer` fails (retryable); the retry is due 1 s later. */
const retried = defineWorkflow({
  type: 'retried',
  version: 1,
  machine: machineSetup({
    types: { context: {} as { output: unknown } },
    actors: {
      transfer: activity('transfer', {
        queue: 'ledger',
        retry: { maxAttempts: 3, initialIntervalMs: 1_000, jitter: 0 },
      }),
    },
  }).createMachine({
    id: 'retried',
    context: { output: null },
    initial: 'working',
    states: {
      working: {
        invoke: {
          src: 'transfer',
          onDone: { target: 'done', actions: assign({ output: ({ event }) => event.output }) },
        },
      },
      done: { type: 'final' },
    },
    output: ({ context }) => context.output,
  }),
});

/** One attempt of `ledgerbeat` must heartbeat every 300 ms; queue `beats` has a 1 s AckWait. */
const beating = defineWorkflow({
  type: 'ledgerbeat',
  version: 1,
  machine: machineSetup({
    types: { context: {} as { output: unknown } },
    actors: {
      beat: activity('beat', { queue: 'beats', heartbeatMs: 300, retry: { maxAttempts: 3 } }),
    },
  }).createMachine({
    id: 'ledgerbeat',
    context: { output: null },
    initial: 'working',
    states: {
      working: {
        invoke: {
          src: 'beat',
          onDone: { target: 'done', actions: assign({ output: ({ event }) => event.output }) },
        },
      },
      done: { type: 'final' },
    },
    output: ({ context }) => context.output,
  }),
});

async function until(f: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await f())) {
    if (Date.now() > deadline) return false;
    await sleep(20);
  }
  return true;
}

function recordingLogger(): Logger & { warnings: string[] } {
  const warnings: string[] = [];
  const l: Logger & { warnings: string[] } = {
    ...quietLogger,
    warnings,
    warn: (_o, m) => void warnings.push(m ?? ''),
    child: () => l,
  };
  return l;
}

/** An engine with a 1 s dedup window, a client, and the runs of each (task, attempt). */
async function setup() {
  const prefix = uniquePrefix();
  const names = topologyNames(prefix);
  const engine: Engine = await startEngine(env.server.url, prefix, {
    workflows: [...workflows, retried, beating],
    duplicateWindowMs: 1_000,
  });
  const client = new Client(env.nc, { prefix });
  const jsm = await jetstreamManager(env.nc);
  const js = jetstream(env.nc);
  const workers: Worker[] = [];
  /** `<taskId>#<attempt>` → how many times the activity ran it (its side effects). */
  const runs = new Map<string, number>();
  const ran = (taskId: string, attempt: number) => {
    const k = `${taskId}#${attempt}`;
    runs.set(k, (runs.get(k) ?? 0) + 1);
  };
  return {
    prefix,
    names,
    client,
    jsm,
    js,
    runs,
    ran,
    async worker(o: Omit<WorkerOptions, 'connection' | 'prefix'>): Promise<Worker> {
      const w = await createWorker({ connection: env.nc, prefix, logger: quietLogger, ...o });
      workers.push(w);
      return w;
    },
    /** Messages in the tasks stream (queued tasks and pending retry schedules). */
    async queued(): Promise<number> {
      return (await jsm.streams.info(names.tasksStream)).state.messages;
    },
    /** The task effect of the workflow's stored outbox (what a re-performed outbox publishes). */
    /** The workflow's queued task effect, its record, and the task message workers get. */
    async taskEffect(
      type: string,
      id: string,
    ): Promise<
      Extract<Effect, { kind: 'task' }> & { record: WorkflowRecord; message: TaskMessage }
    > {
      const kv = await new Kvm(env.nc).open(names.bucket);
      const e = await kv.get(`${type}.${id}`);
      const record = unpack(e!.value) as WorkflowRecord;
      const task = record.outbox.find((x) => x.kind === 'task');
      if (task?.kind !== 'task') throw new Error(`no task in the outbox of ${type}/${id}`);
      return { ...task, record, message: taskMessageOf(record, task, names) };
    },
    async close() {
      await Promise.all(workers.map((w) => w.close()));
      await engine.close();
    },
  };
}

describe('the attempt ledger: one attempt number runs at most once', () => {
  it('an outbox performed again after the dedup window queues the task twice: attempt 1 runs once, the copy is terminated', async () => {
    const t = await setup();
    try {
      await t.client.start('bank', 'twice');
      expect(await until(async () => (await t.queued()) === 1)).toBe(true);
      const effect = await t.taskEffect('bank', 'twice');
      // As an engine does that loads the record before the outbox mark and performs its outbox
      // again, once the tasks stream's dedup window (1 s here) has passed: same body, same msg id.
      await sleep(1_500);
      const nats = taskEffectHandlers(env.nc, t.js, t.jsm, t.names, quietLogger);
      await nats.task(effect.record, effect, effect.task.taskId);
      expect(await t.queued()).toBe(2); // the server took the copy: the task is queued twice

      const w = await t.worker({
        queues: ['bank'],
        activities: {
          sendToBank: (_i: unknown, ctx) => {
            t.ran(ctx.taskId, ctx.attempt);
            return 'sent';
          },
        },
      });
      expect(await t.client.result('bank', 'twice', { timeoutMs: 15_000 })).toEqual({
        output: 'sent',
        error: null,
      });
      expect(await until(async () => (await t.queued()) === 0)).toBe(true);
      expect(Object.fromEntries(t.runs)).toEqual({ [`${effect.task.taskId}#1`]: 1 });
      expect(w.stats).toMatchObject({ started: 1, succeeded: 1, duplicates: 1 });
    } finally {
      await t.close();
    }
  });

  it('a stale copy behind a later attempt (attempt 2 ran, its first delivery lost; the copy queued after the dedup window comes as attempt 1): not run', async () => {
    const t = await setup();
    try {
      await t.client.start('bank', 'stale');
      expect(await until(async () => (await t.queued()) === 1)).toBe(true);
      const effect = await t.taskEffect('bank', 'stale');
      const subject = t.names.subjects.task('bank', effect.task.taskKey);
      // The live copy as its second delivery would be (the first lost in a server restart).
      await t.jsm.streams.purge(t.names.tasksStream, { filter: subject });
      const h = headers();
      h.set(Header.ContentType, MSGPACK);
      h.set(Header.Attempt, '2');
      await t.js.publish(subject, pack(effect.message), { headers: h });
      const w = await t.worker({
        queues: ['bank'],
        activities: {
          sendToBank: (_i: unknown, ctx) => {
            t.ran(ctx.taskId, ctx.attempt);
            return 'sent';
          },
        },
      });
      expect(await t.client.result('bank', 'stale', { timeoutMs: 15_000 })).toMatchObject({
        output: 'sent',
      });
      // The outbox performed again after the dedup window: a second copy, attempt 1 (no header).
      await sleep(1_500);
      const nats = taskEffectHandlers(env.nc, t.js, t.jsm, t.names, quietLogger);
      await nats.task(effect.record, effect, effect.task.taskId);
      expect(await until(async () => (await t.queued()) === 0)).toBe(true);
      expect(Object.fromEntries(t.runs)).toEqual({ [`${effect.task.taskId}#2`]: 1 });
      expect(w.stats).toMatchObject({ started: 1, succeeded: 1, duplicates: 1 });
    } finally {
      await t.close();
    }
  });

  it('a retry stored twice (Jf-Attempt 2 queued again beside its schedule): attempt 2 runs once', async () => {
    const t = await setup();
    try {
      const w = await t.worker({
        queues: ['ledger'],
        activities: {
          transfer: (_i: unknown, ctx) => {
            t.ran(ctx.taskId, ctx.attempt);
            if (ctx.attempt === 1) throw new Error('bank busy');
            return { attempt: ctx.attempt };
          },
        },
      });
      await t.client.start('retried', 'r1');
      const effect = await t.taskEffect('retried', 'r1');
      const taskId = effect.task.taskId;
      expect(await until(() => t.runs.has(`${taskId}#1`))).toBe(true);
      // Attempt 2 is scheduled (due in 1 s); a second copy of it arrives first, as a retry
      // stored again by a redelivered failure after the dedup window would.
      const h = headers();
      h.set(Header.ContentType, MSGPACK);
      h.set(Header.Attempt, '2');
      await t.js.publish(
        t.names.subjects.task('ledger', effect.task.taskKey),
        pack(effect.message),
        {
          headers: h,
        },
      );
      expect(await t.client.result('retried', 'r1', { timeoutMs: 15_000 })).toEqual({
        attempt: 2,
      });
      // Both copies of attempt 2 are gone: the copy ran, the scheduled retry was terminated.
      expect(await until(async () => (await t.queued()) === 0)).toBe(true);
      expect(Object.fromEntries(t.runs)).toEqual({ [`${taskId}#1`]: 1, [`${taskId}#2`]: 1 });
      expect(w.stats.duplicates).toBe(1);
    } finally {
      await t.close();
    }
  });

  it('the same message delivered again under a delivery count already taken (consumer state gone back) is not run and not dropped: it runs as the next attempt', async () => {
    const t = await setup();
    try {
      await t.client.start('retried', 'again');
      expect(await until(async () => (await t.queued()) === 1)).toBe(true);
      const effect = await t.taskEffect('retried', 'again');
      const queued = await t.jsm.streams.getMessage(t.names.tasksStream, {
        last_by_subj: t.names.subjects.task('ledger', effect.task.taskKey),
      });
      // As if an earlier delivery 1 of this very message had taken attempt 1 and the server
      // then forgot that delivery (an unclean restart): the next delivery is counted 1 again.
      const ledger = fromAttemptsBucket(await new Kvm(env.nc).open(t.names.attemptsBucket));
      await ledger.take(attemptKey(effect.task, 1), {
        worker: 'gone',
        seq: queued!.seq,
        delivery: 1,
        at: Date.now(),
      });
      const w = await t.worker({
        queues: ['ledger'],
        queueSettings: { ledger: { ackWaitMs: 1_000 } },
        activities: {
          transfer: (_i: unknown, ctx) => {
            t.ran(ctx.taskId, ctx.attempt);
            return { attempt: ctx.attempt };
          },
        },
      });
      expect(await t.client.result('retried', 'again', { timeoutMs: 15_000 })).toEqual({
        attempt: 2,
      });
      expect(Object.fromEntries(t.runs)).toEqual({ [`${effect.task.taskId}#2`]: 1 });
      expect(w.stats.duplicates).toBe(1);
    } finally {
      await t.close();
    }
  });

  it('a ledger that cannot be written: the attempt waits with its lease kept (also for a heartbeating activity), never runs without its entry, then runs once', async () => {
    const t = await setup();
    const logger = recordingLogger();
    const ledgerStream = `KV_${t.names.attemptsBucket}`;
    const block = (on: boolean) =>
      t.jsm.streams.update(ledgerStream, { max_msg_size: on ? 1 : -1 });
    try {
      await block(true);
      await t.worker({
        logger,
        queues: ['beats'],
        queueSettings: { beats: { ackWaitMs: 1_000 } },
        activities: {
          beat: (_i: unknown, ctx) => {
            t.ran(ctx.taskId, ctx.attempt);
            return 'sent';
          },
        },
      });
      await t.client.start('ledgerbeat', 'blocked');
      expect(
        await until(
          () => logger.warnings.filter((m) => /attempt ledger not written/.test(m)).length >= 3,
        ),
      ).toBe(true);
      // Longer than the queue's AckWait (1 s): the lease was kept, nothing ran, nothing failed.
      await sleep(1_500);
      expect(t.runs.size).toBe(0);
      await block(false);
      expect(await t.client.result('ledgerbeat', 'blocked', { timeoutMs: 15_000 })).toBe('sent');
      // No redelivery while it waited (that would have run as attempt 2).
      await sleep(1_500);
      expect([...t.runs.entries()]).toEqual([[expect.stringMatching(/#1$/), 1]]);
    } finally {
      await block(false).catch(() => undefined);
      await t.close();
    }
  });

  it('a worker refuses to start without the ledger bucket and says how to get it', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const { names } = await ensureTopology(env.nc, jsm, {
      ...ENGINE_DEFAULTS,
      prefix,
      shards: 4,
    });
    // As on a server whose topology an older engine made.
    await jsm.streams.delete(`KV_${names.attemptsBucket}`);
    await expect(
      createWorker({
        connection: env.nc,
        prefix,
        logger: quietLogger,
        activities: { sendToBank: () => 'sent' },
      }),
    ).rejects.toThrow(/attempt ledger bucket .* does not exist: start a current jetflow engine/);
  });

  it('the ledger bucket keeps entries for attemptRetentionMs; a changed retention updates it', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const o = { ...ENGINE_DEFAULTS, prefix, shards: 4 };
    const { names } = await ensureTopology(env.nc, jsm, o);
    const info = () => jsm.streams.info(`KV_${names.attemptsBucket}`);
    expect((await info()).config).toMatchObject({
      max_age: 7 * 24 * 3600_000 * 1e6,
      allow_direct: false,
      num_replicas: 1,
    });
    await ensureTopology(env.nc, jsm, { ...o, attemptRetentionMs: 3600_000 });
    expect((await info()).config.max_age).toBe(3600_000 * 1e6);
  });
});
