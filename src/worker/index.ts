/**
 * jetflow worker: runs activities. Pulls tasks from one durable consumer per queue, runs the
 * matching function, publishes the result into the workflow's inbox, then acks.
 *
 * Failure semantics (per task):
 * - An activity runs **at least once**; design it idempotent (the task id is stable across
 *   attempts: use it as an idempotency key towards external systems).
 * - Retries are JetStream redeliveries: a retryable failure naks with the policy's backoff delay;
 *   attempt = delivery count. Retries exhausted, a `TerminalError`, or an error whose `name` is in
 *   `nonRetryableErrorTypes`: the workflow receives `xstate.error.actor.<id>` with the error data.
 * - A worker that dies mid-attempt stops extending the task's AckWait; the task is redelivered to
 *   another worker after the queue's `ackWaitMs`.
 * - A result is published with JetStream (msg id `result.<taskId>`) *before* the ack: a crash in
 *   between reruns the activity, and the engine ignores the second result.
 * - Cancellation (the workflow left the state): a running attempt's `signal` aborts and its result
 *   is dropped; a queued task was already removed by the engine.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { headers } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JsMsg, type JetStreamClient } from '@nats-io/jetstream';
import { LRUCache } from 'lru-cache';
import { backoffDelayMs } from '../engine/activity.js';
import type { Logger } from '../engine/ports.js';
import { MSGPACK, pack, unpack } from '../contracts/codec.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import { Header, type ResultMessage, type TaskMessage } from '../contracts/wire.js';
import { ErrorCode, JetflowError, TerminalError, toErrorData, type ErrorData } from '../errors.js';
import { topologyNames, type TopologyNames } from '../nats/topology.js';
import { DEFAULT_QUEUE_SETTINGS, ensureQueueConsumer, type QueueSettings } from '../nats/tasks.js';

/** What an activity function gets besides its input. */
export interface ActivityContext {
  /** 1 for the first attempt. */
  attempt: number;
  maxAttempts: number;
  workflowType: string;
  workflowId: string;
  activity: string;
  /** Stable across attempts: use it as an idempotency key. */
  taskId: string;
  /** Fires on cancellation, start-to-close or heartbeat timeout, and forced shutdown. */
  signal: AbortSignal;
  /** Report progress: extends the task's lease (JetStream `working()`). */
  heartbeat(): void;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type ActivityFn = (input: any, ctx: ActivityContext) => unknown;

export interface WorkerOptions {
  connection: NatsConnection;
  /** Subject prefix of the engines (default `wf`). */
  prefix?: string;
  /** Activity implementations by name. */
  activities: Record<string, ActivityFn>;
  /** Queues to pull from (default: one per activity name, plus every queue in `queueSettings`). */
  queues?: string[];
  /** Max tasks this worker runs at once, per queue (default 10). */
  concurrency?: number;
  /** Server-enforced settings of each queue's consumer (global in-flight limit, AckWait). */
  queueSettings?: Record<string, Partial<QueueSettings>>;
  /** Max tasks started per second by this worker, per queue. */
  rateLimitPerSecond?: Record<string, number>;
  /** Grace for in-flight tasks on `close()` before they are aborted and released (default 10 s). */
  shutdownGraceMs?: number;
  logger?: Logger;
}

export interface WorkerStats {
  started: number;
  succeeded: number;
  retried: number;
  failed: number;
  canceled: number;
}

const silent: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  child: () => silent,
};

class AbortReason extends JetflowError {}

/** A simple token bucket (per worker, per queue). */
class RateLimiter {
  private tokens: number;
  private last = Date.now();
  constructor(private readonly perSecond: number) {
    this.tokens = perSecond;
  }
  async take(stop: AbortSignal): Promise<void> {
    for (;;) {
      const now = Date.now();
      this.tokens = Math.min(
        this.perSecond,
        this.tokens + ((now - this.last) / 1000) * this.perSecond,
      );
      this.last = now;
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return;
      }
      if (stop.aborted) return;
      await new Promise((r) =>
        setTimeout(r, Math.ceil(((1 - this.tokens) / this.perSecond) * 1000)),
      );
    }
  }
}

export class Worker implements AsyncDisposable {
  readonly stats: WorkerStats = { started: 0, succeeded: 0, retried: 0, failed: 0, canceled: 0 };
  private readonly stop = new AbortController();
  private readonly running = new Map<string, AbortController>();
  private readonly canceled = new LRUCache<string, true>({ max: 10_000 });
  private readonly inflight = new Set<Promise<void>>();
  private loops: Promise<void>[] = [];
  private closing: Promise<void> | undefined;
  private readonly logger: Logger;

  private constructor(
    private readonly o: WorkerOptions,
    private readonly js: JetStreamClient,
    private readonly names: TopologyNames,
    private readonly queues: string[],
    private readonly settings: Map<string, QueueSettings>,
  ) {
    this.logger = o.logger ?? silent;
  }

  /** Ensure the queues' consumers exist (with the given settings) and start pulling. */
  static async create(o: WorkerOptions): Promise<Worker> {
    const names = topologyNames(o.prefix ?? DEFAULT_PREFIX);
    const queues = o.queues ?? [
      ...new Set([...Object.keys(o.activities), ...Object.keys(o.queueSettings ?? {})]),
    ];
    const jsm = await jetstreamManager(o.connection);
    const settings = new Map<string, QueueSettings>();
    for (const q of queues) {
      const s = { ...DEFAULT_QUEUE_SETTINGS, ...o.queueSettings?.[q] };
      settings.set(q, s);
      await ensureQueueConsumer(jsm, names, q, s);
    }
    const w = new Worker(o, jetstream(o.connection), names, queues, settings);
    w.start();
    return w;
  }

  private start(): void {
    for (const q of this.queues) {
      const sub = this.o.connection.subscribe(this.names.subjects.taskControl(q), {
        callback: (_err, m) => {
          try {
            const { cancel } = unpack(m.data) as { cancel?: string };
            if (typeof cancel !== 'string') return;
            this.canceled.set(cancel, true);
            this.running
              .get(cancel)
              ?.abort(
                new AbortReason('activity canceled by its workflow', { code: ErrorCode.Internal }),
              );
          } catch {
            /* not a control message */
          }
        },
      });
      this.stop.signal.addEventListener('abort', () => sub.unsubscribe(), { once: true });
      this.loops.push(this.pull(q));
    }
  }

  private async pull(queue: string): Promise<void> {
    const consumer = await this.js.consumers.get(
      this.names.tasksStream,
      this.names.queueConsumer(queue),
    );
    const limit = this.o.concurrency ?? 10;
    const rate = this.o.rateLimitPerSecond?.[queue];
    const limiter = rate ? new RateLimiter(rate) : undefined;
    const mine = new Set<Promise<void>>();
    while (!this.stop.signal.aborted) {
      if (mine.size >= limit) {
        await Promise.race(mine);
        continue;
      }
      if (limiter) await limiter.take(this.stop.signal);
      if (this.stop.signal.aborted) break;
      let batch;
      try {
        batch = await consumer.fetch({
          max_messages: limiter ? 1 : limit - mine.size,
          expires: 1000,
        });
      } catch (err) {
        this.logger.warn({ err, queue }, 'fetch failed; retrying');
        await new Promise((r) => setTimeout(r, 500));
        continue;
      }
      for await (const m of batch) {
        const p = this.handle(queue, m).catch((err: unknown) =>
          this.logger.error({ err, queue }, 'task handler failed'),
        );
        mine.add(p);
        this.inflight.add(p);
        void p.finally(() => {
          mine.delete(p);
          this.inflight.delete(p);
        });
      }
    }
  }

  private async publishResult(task: TaskMessage, result: ResultMessage): Promise<void> {
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    await this.js.publish(task.resultSubject, pack(result), {
      msgID: `result.${task.taskId}`,
      headers: h,
    });
  }

  private async handle(queue: string, m: JsMsg): Promise<void> {
    let task: TaskMessage;
    try {
      task = unpack(m.data) as TaskMessage;
      if (!task || typeof task.taskId !== 'string' || typeof task.resultSubject !== 'string')
        throw new Error('not a task');
    } catch (err) {
      this.logger.error({ err, subject: m.subject }, 'malformed task message; terminated');
      m.term('malformed task');
      return;
    }
    const attempt = m.info.deliveryCount;
    const log = { taskId: task.taskId, activity: task.activity, attempt };
    if (this.canceled.has(task.taskId)) {
      this.stats.canceled++;
      m.term('canceled');
      return;
    }
    const finish = async (error: ErrorData) => {
      this.stats.failed++;
      await this.publishResult(task, {
        taskId: task.taskId,
        actorId: task.actorId,
        ok: false,
        error: { ...error, attempt },
        attempt,
      });
      m.ack();
    };
    if (task.deadline !== undefined && Date.now() > task.deadline) {
      await finish({
        type: 'ScheduleToCloseTimeout',
        code: ErrorCode.Timeout,
        message: `activity ${task.activity} did not complete before its schedule-to-close deadline`,
        retryable: false,
      });
      return;
    }
    const fn = this.o.activities[task.activity];
    const ac = new AbortController();
    this.running.set(task.taskId, ac);
    this.stats.started++;
    const settings = this.settings.get(queue) ?? DEFAULT_QUEUE_SETTINGS;
    const timers: NodeJS.Timeout[] = [];
    let lastBeat = Date.now();
    const heartbeat = () => {
      lastBeat = Date.now();
      m.working();
    };
    timers.push(
      setTimeout(
        () =>
          ac.abort(
            new AbortReason(`start-to-close timeout of ${task.startToCloseMs} ms`, {
              code: ErrorCode.Timeout,
            }),
          ),
        task.startToCloseMs,
      ),
    );
    if (task.heartbeatMs) {
      const hb = task.heartbeatMs;
      timers.push(
        setInterval(
          () => {
            if (Date.now() - lastBeat > hb)
              ac.abort(new AbortReason(`no heartbeat for ${hb} ms`, { code: ErrorCode.Timeout }));
          },
          Math.max(50, Math.floor(hb / 4)),
        ),
      );
    } else {
      // No heartbeat required: keep the lease while this (live) worker runs the attempt.
      timers.push(
        setInterval(() => m.working(), Math.max(250, Math.floor(settings.ackWaitMs / 3))),
      );
    }
    const aborted = new Promise<never>((_, fail) =>
      ac.signal.addEventListener('abort', () => fail(ac.signal.reason as Error), { once: true }),
    );
    aborted.catch(() => undefined);
    try {
      if (!fn)
        throw new JetflowError(`no activity ${JSON.stringify(task.activity)} on this worker`, {
          code: ErrorCode.UnknownType,
        });
      const ctx: ActivityContext = {
        attempt,
        maxAttempts: task.maxAttempts,
        workflowType: task.workflowType,
        workflowId: task.workflowId,
        activity: task.activity,
        taskId: task.taskId,
        signal: ac.signal,
        heartbeat,
      };
      const output = await Promise.race([
        Promise.resolve().then(() => fn(task.input, ctx)),
        aborted,
      ]);
      clearTimers(timers);
      this.running.delete(task.taskId);
      await this.publishResult(task, {
        taskId: task.taskId,
        actorId: task.actorId,
        ok: true,
        output,
        attempt,
      });
      m.ack();
      this.stats.succeeded++;
    } catch (err) {
      clearTimers(timers);
      this.running.delete(task.taskId);
      if (this.canceled.has(task.taskId)) {
        this.stats.canceled++;
        this.logger.info(log, 'attempt aborted: activity canceled');
        m.term('canceled');
        return;
      }
      if (this.stop.signal.aborted && ac.signal.aborted) {
        m.nak(0); // forced shutdown: release the task to another worker
        return;
      }
      const data = errorData(err);
      const nonRetryable =
        err instanceof TerminalError || task.retry.nonRetryableErrorTypes.includes(data.type);
      if (!nonRetryable && attempt < task.maxAttempts) {
        const delay = backoffDelayMs({ ...task.retry, maxAttempts: task.maxAttempts }, attempt);
        if (task.deadline === undefined || Date.now() + delay < task.deadline) {
          this.stats.retried++;
          this.logger.info(
            { ...log, delayMs: delay, error: data.message },
            'attempt failed; retrying',
          );
          m.nak(delay);
          return;
        }
      }
      this.logger.info({ ...log, error: data.message, nonRetryable }, 'activity failed');
      await finish({ ...data, retryable: false });
    }
  }

  /** Resolves when the worker stopped (after `close()`). */
  async run(): Promise<void> {
    await this.closing;
    await Promise.all(this.loops);
  }

  /**
   * Stop fetching, let in-flight attempts finish within the grace period, then abort the rest
   * and release them for redelivery. Idempotent.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stop.abort();
      await Promise.allSettled(this.loops);
      const grace = new Promise((r) => setTimeout(r, this.o.shutdownGraceMs ?? 10_000).unref());
      await Promise.race([Promise.allSettled([...this.inflight]), grace]);
      for (const ac of this.running.values())
        ac.abort(new AbortReason('worker shutting down', { code: ErrorCode.Unavailable }));
      await Promise.allSettled([...this.inflight]);
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function clearTimers(timers: NodeJS.Timeout[]): void {
  for (const t of timers) clearTimeout(t);
}

/** Error data of an activity failure (an `Error`'s own `name` is its type). */
function errorData(err: unknown): ErrorData {
  const d = toErrorData(err);
  if (err instanceof Error && !(err instanceof JetflowError)) {
    const details = (err as { details?: unknown }).details;
    return { ...d, type: err.name, ...(details !== undefined ? { details } : {}) };
  }
  return d;
}

/** Create a worker and start pulling. */
export function createWorker(o: WorkerOptions): Promise<Worker> {
  return Worker.create(o);
}
