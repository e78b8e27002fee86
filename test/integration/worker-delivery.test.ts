/**
 * Worker delivery guarantees (issue 11, worker part), against a real nats-server:
 * - H6: a result publish that fails is retried until acknowledged; it is never an attempt.
 * - M2: a retry waiting out its backoff holds no `maxInFlight` slot (scheduled message).
 * - M3: a queue consumer's settings have one owner; workers use its actual AckWait.
 * - M4: `heartbeatMs` not below the queue's AckWait is rejected with a clear error.
 * - L7: cancels still reach attempts during `close()`; a forced release keeps the attempt.
 */
import { describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { assign, setup as machineSetup } from 'xstate';
import { quietLogger, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { workflows } from '../fixtures/workflows.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker, type WorkerOptions } from '../../src/worker/index.js';
import { activity, type ActivityOptionsInput } from '../../src/engine/activity.js';
import { defineWorkflow, type WorkflowDefinition } from '../../src/engine/registry.js';
import { topologyNames } from '../../src/nats/topology.js';
import type { Logger } from '../../src/engine/ports.js';
import type { Engine } from '../../src/host/engine.js';

const env = useServer();

/** A workflow that invokes one activity and ends with `{ output, error }`. */
function single(type: string, src: string, options: ActivityOptionsInput): WorkflowDefinition {
  return defineWorkflow({
    type,
    version: 1,
    machine: machineSetup({
      types: {
        context: {} as { output: unknown; error: unknown },
        events: {} as { type: 'STOP' },
      },
      actors: { [src]: activity(src, options) },
    }).createMachine({
      id: type,
      context: { output: null, error: null },
      initial: 'working',
      states: {
        working: {
          invoke: {
            id: 'call',
            src,
            onDone: {
              target: 'done',
              actions: assign({ output: ({ event }) => event.output as unknown }),
            },
            onError: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
          },
          on: { STOP: 'stopped' },
        },
        done: { type: 'final' },
        failed: { type: 'final' },
        stopped: { type: 'final' },
      },
      output: ({ context }) => ({ output: context.output, error: context.error }),
    }),
  });
}

const slotQueue = 'slots';
const extra: WorkflowDefinition[] = [
  single('hold', 'holdSlot', { queue: slotQueue, retry: { maxAttempts: 1 } }),
  single('failonce', 'failOnce', {
    queue: slotQueue,
    retry: { maxAttempts: 2, initialIntervalMs: 5_000, jitter: 0 },
  }),
  single('other', 'otherTask', { queue: slotQueue, retry: { maxAttempts: 1 } }),
  single('retrylater', 'failsFirst', {
    retry: { maxAttempts: 3, initialIntervalMs: 300, jitter: 0 },
  }),
  single('longbeat', 'beatsSlowly', {
    heartbeatMs: 1_500,
    startToCloseMs: 20_000,
    retry: { maxAttempts: 3, initialIntervalMs: 50 },
  }),
];

/** A logger that records warnings and errors instead of printing them. */
function recordingLogger(): Logger & { warnings: string[]; errors: string[] } {
  const warnings: string[] = [];
  const errors: string[] = [];
  const l: Logger & { warnings: string[]; errors: string[] } = {
    ...quietLogger,
    warnings,
    errors,
    warn: (_o, m) => void warnings.push(m ?? ''),
    error: (_o, m) => void errors.push(m ?? ''),
    child: () => l,
  };
  return l;
}

async function until(f: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await f())) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
  return true;
}

/** One engine and a client in a fresh namespace; workers are created per test. */
async function setup() {
  const prefix = uniquePrefix();
  const engine: Engine = await startEngine(env.server.url, prefix, {
    workflows: [...workflows, ...extra],
  });
  const client = new Client(env.nc, { prefix });
  const workers: Worker[] = [];
  const names = topologyNames(prefix);
  return {
    prefix,
    names,
    client,
    engine,
    async worker(o: Omit<WorkerOptions, 'connection' | 'prefix'>): Promise<Worker> {
      const w = await createWorker({ connection: env.nc, prefix, logger: quietLogger, ...o });
      workers.push(w);
      return w;
    },
    async close() {
      await Promise.all(workers.map((w) => w.close()));
      await engine.close();
    },
  };
}

/** Make the inbox stream reject every publish (as a leader election or an outage would), or undo it. */
async function blockInbox(prefix: string, blocked: boolean): Promise<void> {
  const jsm = await jetstreamManager(env.nc);
  await jsm.streams.update(topologyNames(prefix).inboxStream, { max_msg_size: blocked ? 1 : -1 });
}

describe('H6: result publishing', () => {
  it('a result publish that fails after a successful attempt is retried until acknowledged: the activity runs once', async () => {
    const t = await setup();
    const logger = recordingLogger();
    let runs = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    try {
      await t.worker({
        logger,
        activities: {
          flaky: async (_i: unknown, ctx) => {
            runs++;
            if (runs === 1) await gate; // the first attempt succeeds while the inbox rejects
            return { attempt: ctx.attempt };
          },
        },
      });
      await t.client.start('flaky', 'h6-ok');
      expect(await until(() => runs === 1)).toBe(true);
      await blockInbox(t.prefix, true);
      release();
      // Wait until the worker saw its result publish fail at least twice (or gave up on it).
      await until(
        () => logger.warnings.filter((w) => /result publish failed/.test(w)).length >= 2,
        5_000,
      );
      await blockInbox(t.prefix, false);
      expect(await t.client.result('flaky', 'h6-ok', { timeoutMs: 15_000 })).toEqual({
        output: { attempt: 1 },
        error: null,
      });
      expect(runs).toBe(1);
      expect((await t.client.query('flaky', 'h6-ok')).step).toBe(1);
    } finally {
      await blockInbox(t.prefix, false);
      await t.close();
    }
  });

  it('a final error result whose publish fails is retried until acknowledged, not turned into another attempt', async () => {
    const t = await setup();
    const logger = recordingLogger();
    const attempts: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    try {
      await t.worker({
        logger,
        activities: {
          alwaysFails: async (_i: unknown, ctx) => {
            attempts.push(ctx.attempt);
            if (ctx.attempt === 3) await gate; // the last attempt fails while the inbox rejects
            const e = new Error('bank is down');
            e.name = 'BankDown';
            throw e;
          },
        },
      });
      await t.client.start('exhausted', 'h6-err');
      expect(await until(() => attempts.length === 3)).toBe(true);
      await blockInbox(t.prefix, true);
      release();
      await until(
        () => logger.warnings.filter((w) => /result publish failed/.test(w)).length >= 2,
        5_000,
      );
      await blockInbox(t.prefix, false);
      const out = await t.client.result<{ error: Record<string, unknown> }>('exhausted', 'h6-err', {
        timeoutMs: 15_000,
      });
      expect(out.error).toMatchObject({ type: 'BankDown', attempt: 3, retryable: false });
      expect(attempts).toEqual([1, 2, 3]);
    } finally {
      await blockInbox(t.prefix, false);
      await t.close();
    }
  });
});

describe('M2: retries waiting out their backoff', () => {
  it('a retry waiting out a 5 s backoff holds no maxInFlight slot: another task of the queue starts at once', async () => {
    const t = await setup();
    const started: Record<string, number> = {};
    let failedAt = 0;
    let releaseHold!: () => void;
    const hold = new Promise<void>((r) => (releaseHold = r));
    let releaseFail!: () => void;
    const failGate = new Promise<void>((r) => (releaseFail = r));
    try {
      await t.worker({
        queues: [slotQueue],
        queueSettings: { [slotQueue]: { maxInFlight: 2 } },
        activities: {
          holdSlot: async () => {
            started.hold = Date.now();
            await hold;
            return 'held';
          },
          failOnce: async (_i: unknown, ctx) => {
            started[`failOnce#${ctx.attempt}`] = Date.now();
            if (ctx.attempt === 1) {
              await failGate;
              failedAt = Date.now();
              throw new Error('flaky dependency');
            }
            return 'second attempt';
          },
          otherTask: () => {
            started.other = Date.now();
            return 'other';
          },
        },
      });
      await t.client.start('hold', 'm2-hold');
      await t.client.start('failonce', 'm2-fail');
      expect(await until(() => !!started.hold && !!started['failOnce#1'])).toBe(true);
      // Both slots are taken; the third task waits in the queue.
      await t.client.start('other', 'm2-other');
      const jsm = await jetstreamManager(env.nc);
      expect(
        await until(
          async () =>
            (await jsm.consumers.info(t.names.tasksStream, t.names.queueConsumer(slotQueue)))
              .num_pending === 1,
        ),
      ).toBe(true);
      expect(started.other).toBeUndefined();
      releaseFail(); // attempt 1 fails: its retry is due in 5 s
      expect(await t.client.result('other', 'm2-other', { timeoutMs: 15_000 })).toEqual({
        output: 'other',
        error: null,
      });
      const gap = started.other! - failedAt;
      console.log(`M2: other task started ${gap} ms after the failed attempt freed its slot`);
      expect(started['failOnce#2']).toBeUndefined(); // it did not wait for the retry
      expect(gap).toBeLessThan(100);
      releaseHold();
      expect(await t.client.result('failonce', 'm2-fail', { timeoutMs: 15_000 })).toEqual({
        output: 'second attempt',
        error: null,
      });
      expect(started['failOnce#2']! - failedAt).toBeGreaterThanOrEqual(5_000);
    } finally {
      releaseHold();
      releaseFail();
      await t.close();
    }
  });

  it('a scheduled retry outlives its worker: the server fires it and another worker runs the next attempt', async () => {
    const t = await setup();
    const seen: { attempt: number; worker: string }[] = [];
    const impl = (worker: string) => ({
      failsFirst: (_i: unknown, ctx: { attempt: number }) => {
        seen.push({ attempt: ctx.attempt, worker });
        if (ctx.attempt === 1) throw new Error('first attempt fails');
        return ctx.attempt;
      },
    });
    try {
      const a = await t.worker({ activities: impl('a') });
      await t.client.start('retrylater', 'm2-durable');
      expect(await until(() => seen.length === 1)).toBe(true);
      await a.close(); // its local timer for the retry is gone; the schedule is in JetStream
      await t.worker({ activities: impl('b') });
      expect(await t.client.result('retrylater', 'm2-durable', { timeoutMs: 15_000 })).toEqual({
        output: 2,
        error: null,
      });
      expect(seen).toEqual([
        { attempt: 1, worker: 'a' },
        { attempt: 2, worker: 'b' },
      ]);
    } finally {
      await t.close();
    }
  });

  it('canceling a task whose retry is pending removes the retry: no further attempt runs', async () => {
    const t = await setup();
    const attempts: number[] = [];
    try {
      // A worker started after the cancel does not have it in its memory: only the purge stops it.
      const a = await t.worker({
        activities: {
          failsFirst: (_i: unknown, ctx) => {
            attempts.push(ctx.attempt);
            throw new Error('fails');
          },
        },
      });
      await t.client.start('retrylater', 'm2-cancel');
      expect(await until(() => attempts.length === 1)).toBe(true);
      await a.close();
      const jsm = await jetstreamManager(env.nc);
      const pending = async () => (await jsm.streams.info(t.names.tasksStream)).state.messages;
      expect(await pending()).toBe(1); // the retry's schedule
      expect((await t.client.signal('retrylater', 'm2-cancel', { type: 'STOP' })).value).toBe(
        'stopped',
      );
      expect(await until(async () => (await pending()) === 0, 5_000)).toBe(true);
      await t.worker({
        activities: {
          failsFirst: (_i: unknown, ctx) => {
            attempts.push(ctx.attempt);
            return 'ran';
          },
        },
      });
      // Past the retry's due time (300 ms + the schedule's slack): nothing ran.
      await new Promise((r) => setTimeout(r, 2_500));
      expect(attempts).toEqual([1]);
    } finally {
      await t.close();
    }
  });
});

describe('M3: queue settings have one owner', () => {
  it('a worker without queueSettings keeps the existing limit; disagreeing settings warn and are ignored; force overwrites', async () => {
    const t = await setup();
    const jsm = await jetstreamManager(env.nc);
    const consumer = async () =>
      (await jsm.consumers.info(t.names.tasksStream, t.names.queueConsumer('bank'))).config;
    try {
      await t.worker({
        queueSettings: { bank: { maxInFlight: 2, ackWaitMs: 1_000 } },
        activities: { sendToBank: () => 'sent' },
      });
      expect(await consumer()).toMatchObject({ max_ack_pending: 2, ack_wait: 1_000_000_000 });
      await t.worker({ queues: ['bank'], activities: { sendToBank: () => 'sent' } });
      expect(await consumer()).toMatchObject({ max_ack_pending: 2, ack_wait: 1_000_000_000 });
      const logger = recordingLogger();
      await t.worker({
        logger,
        queueSettings: { bank: { maxInFlight: 5 } },
        activities: { sendToBank: () => 'sent' },
      });
      expect((await consumer()).max_ack_pending).toBe(2);
      expect(logger.warnings.some((w) => /queue settings differ/.test(w))).toBe(true);
      await t.worker({
        queueSettings: { bank: { maxInFlight: 5, force: true } },
        activities: { sendToBank: () => 'sent' },
      });
      expect(await consumer()).toMatchObject({ max_ack_pending: 5, ack_wait: 1_000_000_000 });
    } finally {
      await t.close();
    }
  });

  it("a worker renews the lease at the consumer's actual AckWait, also after an operator changed it: no duplicate attempt", async () => {
    const t = await setup();
    const attempts: number[] = [];
    let running = 0;
    let maxRunning = 0;
    try {
      // This worker creates the consumer with the default AckWait (30 s) ...
      const w = await t.worker({
        queues: ['bank'],
        activities: {
          sendToBank: async (_i: unknown, ctx) => {
            attempts.push(ctx.attempt);
            running++;
            maxRunning = Math.max(maxRunning, running);
            await new Promise((r) => setTimeout(r, 2_500)); // longer than the new AckWait
            running--;
            return 'sent';
          },
        },
      });
      // ... then an operator lowers it to 1 s.
      const admin = await t.worker({
        queueSettings: { bank: { ackWaitMs: 1_000, force: true } },
        activities: {},
      });
      await admin.close();
      // The running worker follows the consumer (it re-reads it every few seconds).
      await until(() => w.queueSettings?.('bank')?.ackWaitMs === 1_000, 12_000);
      await t.client.start('bank', 'm3-lease');
      expect(await t.client.result('bank', 'm3-lease', { timeoutMs: 15_000 })).toEqual({
        output: 'sent',
        error: null,
      });
      expect(attempts).toEqual([1]);
      expect(maxRunning).toBe(1);
    } finally {
      await t.close();
    }
  });
});

describe('M4: heartbeatMs against the queue AckWait', () => {
  it('heartbeatMs not below the queue AckWait fails the activity at once with a clear error, no attempt runs', async () => {
    const t = await setup();
    const attempts: number[] = [];
    const logger = recordingLogger();
    try {
      await t.worker({
        logger,
        queueSettings: { beatsSlowly: { ackWaitMs: 1_000 } },
        activities: {
          beatsSlowly: async (_i: unknown, ctx) => {
            attempts.push(ctx.attempt);
            for (let i = 0; i < 3; i++) {
              await new Promise((r) => setTimeout(r, 1_200));
              ctx.heartbeat(); // within heartbeatMs (1.5 s), but slower than the AckWait
            }
            return 'ok';
          },
        },
      });
      await t.client.start('longbeat', 'm4');
      const out = await t.client.result<{ error: Record<string, unknown> }>('longbeat', 'm4', {
        timeoutMs: 15_000,
      });
      expect(out.error).toMatchObject({ type: 'ConfigError', code: 'config', retryable: false });
      expect(String(out.error.message)).toMatch(
        /heartbeatMs .*1500 ms.* below the AckWait .*1000 ms/,
      );
      expect(attempts).toEqual([]);
      expect(logger.errors).toContain('heartbeatMs not below the queue AckWait');
    } finally {
      await t.close();
    }
  });
});

describe('L7: shutdown', () => {
  it('close(): an attempt still running in the grace period can be canceled by its workflow', async () => {
    const t = await setup();
    let started = false;
    let abortedWith: unknown;
    try {
      const w = await t.worker({
        shutdownGraceMs: 15_000,
        activities: {
          slow: async (_i: unknown, ctx) => {
            started = true;
            await new Promise((r) => {
              setTimeout(r, 20_000);
              ctx.signal.addEventListener('abort', () => {
                abortedWith = ctx.signal.reason;
                r(undefined);
              });
            });
            return 'late';
          },
        },
      });
      await t.client.start('cancellable', 'l7-cancel');
      expect(await until(() => started)).toBe(true);
      const closing = w.close();
      expect((await t.client.signal('cancellable', 'l7-cancel', { type: 'STOP' })).value).toBe(
        'stopped',
      );
      await closing;
      expect(String((abortedWith as Error).message)).toMatch(/canceled by its workflow/);
      expect(w.stats.canceled).toBe(1);
    } finally {
      await t.close();
    }
  });

  it('a forced shutdown releases the running task without using up its attempt', async () => {
    const t = await setup();
    const attempts: { attempt: number; worker: string }[] = [];
    try {
      const a = await t.worker({
        shutdownGraceMs: 200,
        queues: ['bank'],
        activities: {
          sendToBank: async (_i: unknown, ctx) => {
            attempts.push({ attempt: ctx.attempt, worker: 'a' });
            await new Promise((r) => ctx.signal.addEventListener('abort', r)); // ignores the grace
            return 'aborted';
          },
        },
      });
      await t.client.start('bank', 'l7-release'); // maxAttempts 1
      expect(await until(() => attempts.length === 1)).toBe(true);
      await a.close();
      await t.worker({
        queues: ['bank'],
        activities: {
          sendToBank: (_i: unknown, ctx) => {
            attempts.push({ attempt: ctx.attempt, worker: 'b' });
            return 'sent';
          },
        },
      });
      expect(await t.client.result('bank', 'l7-release', { timeoutMs: 15_000 })).toEqual({
        output: 'sent',
        error: null,
      });
      expect(attempts).toEqual([
        { attempt: 1, worker: 'a' },
        { attempt: 1, worker: 'b' },
      ]);
    } finally {
      await t.close();
    }
  });
});
