/**
 * Activity tasks on JetStream: the engine side (publish a task, cancel it) and the queue
 * consumers workers pull from.
 */
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createInbox, headers, type Msg, type NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  type ConsumerInfo,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type MsgRequest,
  type NextMsgRequest,
} from '@nats-io/jetstream';
import type { Logger, TraceCarrier } from '../engine/ports.js';
import { injectTrace } from '../tracing/index.js';
import { MSGPACK, pack, unpack } from '../contracts/codec.js';
import {
  fullTask,
  Header,
  type Effect,
  type TaskMessage,
  type WorkflowRecord,
} from '../contracts/wire.js';
import { DEFAULT_RETRY } from '../engine/retry.js';
import { taskToken } from '../engine/proof.js';
import { ConfigError, ErrorCode } from '../errors.js';
import { toJetflowError } from './connection.js';
import type { EffectHandler } from './effects.js';
import type { TopologyNames } from './topology.js';

const ms = (n: number) => n * 1_000_000;

const RETRY_DEFAULTS = {
  initialIntervalMs: DEFAULT_RETRY.initialIntervalMs,
  backoffCoefficient: DEFAULT_RETRY.backoffCoefficient,
  maxIntervalMs: DEFAULT_RETRY.maxIntervalMs,
  jitter: DEFAULT_RETRY.jitter,
  nonRetryableErrorTypes: DEFAULT_RETRY.nonRetryableErrorTypes,
};

/** Effect handlers for `task` and `stopTask`. */
/**
 * The task message a stored task effect stands for, as workers get it: defaults filled in, the
 * result subject of its workflow and, when the record has a secret, the task's proof token.
 */
export function taskMessageOf(
  record: WorkflowRecord,
  e: Extract<Effect, { kind: 'task' }>,
  names: TopologyNames,
): TaskMessage {
  const task = fullTask(
    record,
    e.task,
    names.subjects.inbox('result', record.type, record.id),
    RETRY_DEFAULTS,
  );
  if (record.secret) task.token = taskToken(record.secret, task.taskId);
  return task;
}

export function taskEffectHandlers(
  nc: NatsConnection,
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  logger: Logger,
): Record<'task' | 'stopTask', EffectHandler> {
  const s = names.subjects;
  return {
    async task(record: WorkflowRecord, e: Effect) {
      if (e.kind !== 'task') return;
      const h = headers();
      h.set(Header.ContentType, MSGPACK);
      // The step's span (when traced): the worker's attempt span continues it.
      injectTrace(h);
      const task = taskMessageOf(record, e, names);
      // A task with a fairness key waits for its key's turn on the key's staging subject.
      const subject = task.fairness
        ? s.taskStaging(task.queue, task.priority ?? 3, fairnessToken(task.fairness.key))
        : s.task(e.task.queue, e.task.taskKey, task.priority);
      await js.publish(subject, pack(task), {
        msgID: e.task.taskId,
        headers: h,
      });
    },
    async stopTask(_record: WorkflowRecord, e: Effect) {
      if (e.kind !== 'stopTask') return;
      // A queued task and its pending retry schedules are removed before any worker starts them
      // (retries first: a retry that fires in between lands on the task subject, purged next);
      // a running attempt is told to abort.
      const level = e.priority;
      await jsm.streams.purge(names.tasksStream, {
        filter: s.taskRetries(e.queue, e.taskKey, level),
      });
      await jsm.streams.purge(names.tasksStream, { filter: s.task(e.queue, e.taskKey, level) });
      nc.publish(s.taskControl(e.queue), pack({ cancel: e.taskId }));
      logger.debug({ taskId: e.taskId }, 'activity canceled');
    },
  };
}

/** Per-queue settings that live on the queue's consumer (server-enforced). */
export interface QueueSettings {
  /**
   * Max tasks of this queue in flight across all workers (consumer `MaxAckPending`): the global
   * concurrency limit, e.g. "only 2 connections to the bank". Retries waiting out their backoff
   * are not in flight (they are scheduled messages outside the consumer).
   */
  maxInFlight: number;
  /**
   * How long a task held by a dead worker waits before redelivery (consumer `AckWait`). Live
   * workers extend it (every AckWait/3) while an attempt runs; with `heartbeatMs`, while the
   * activity heartbeats.
   */
  ackWaitMs: number;
  /**
   * Aging of priority levels: once the oldest waiting task of a level has waited this long, the
   * queue's workers take from that level before any higher one, so no task waits much longer
   * than this behind higher levels. Kept in the level-3 consumer's metadata.
   */
  maxWaitMs: number;
}

/**
 * What a worker asks of a queue's consumer. Fields left out are not asked for. `force` makes the
 * given fields overwrite an existing consumer's settings (an operator's deliberate change).
 */
export type QueueSettingsInput = Partial<QueueSettings> & { force?: boolean };

export const DEFAULT_QUEUE_SETTINGS: QueueSettings = Object.freeze({
  maxInFlight: 1000,
  ackWaitMs: 30_000,
  maxWaitMs: 60_000,
});

const MAX_WAIT_KEY = 'jetflow.maxWaitMs';

/** The settings a queue consumer actually has. */
export function settingsOf(info: ConsumerInfo): QueueSettings {
  return {
    maxInFlight: info.config.max_ack_pending ?? DEFAULT_QUEUE_SETTINGS.maxInFlight,
    ackWaitMs:
      info.config.ack_wait !== undefined
        ? Math.round(info.config.ack_wait / 1_000_000)
        : DEFAULT_QUEUE_SETTINGS.ackWaitMs,
    maxWaitMs: maxWaitOf(info.config.metadata?.[MAX_WAIT_KEY]),
  };
}

function maxWaitOf(raw: string | undefined): number {
  const n = Number(raw);
  return raw !== undefined && Number.isSafeInteger(n) && n >= 1
    ? n
    : DEFAULT_QUEUE_SETTINGS.maxWaitMs;
}

/**
 * Create the durable consumer of one queue, or adopt the existing one, and return the settings
 * it actually has. One source of truth for the global limit: the first to create the consumer
 * sets `maxInFlight` and `ackWaitMs` (given fields over {@link DEFAULT_QUEUE_SETTINGS}). Later
 * callers never change them: fields they leave out are not compared, and fields that disagree
 * are logged as a warning and ignored, unless `force` is set, which overwrites them.
 *
 * @throws when the consumer can be neither read nor created (stream missing, no permission).
 */
export async function ensureQueueConsumer(
  jsm: JetStreamManager,
  names: TopologyNames,
  queue: string,
  requested: QueueSettingsInput = {},
  logger?: Logger,
): Promise<QueueSettings> {
  const durable = names.queueConsumer(queue);
  const { force, ...asked } = requested;
  const read = () => jsm.consumers.info(names.tasksStream, durable).catch(() => undefined);
  let info = await read();
  if (!info) {
    const initial = { ...DEFAULT_QUEUE_SETTINGS, ...asked };
    try {
      info = await jsm.consumers.add(names.tasksStream, {
        durable_name: durable,
        description: `jetflow activity queue ${queue}`,
        filter_subject: names.subjects.taskFilter(queue),
        ack_policy: AckPolicy.Explicit,
        deliver_policy: DeliverPolicy.All,
        ack_wait: ms(initial.ackWaitMs),
        max_ack_pending: initial.maxInFlight,
        max_deliver: -1,
        metadata: { [MAX_WAIT_KEY]: String(initial.maxWaitMs) },
      });
      await ensureLevelConsumers(jsm, names, queue, settingsOf(info), logger);
      return settingsOf(info);
    } catch (err) {
      // Another worker created it at the same time with other settings: adopt that one.
      info = await read();
      if (!info) throw err;
    }
  }
  const actual = settingsOf(info);
  const differs = (Object.keys(asked) as (keyof QueueSettings)[]).filter(
    (k) => asked[k] !== undefined && asked[k] !== actual[k],
  );
  if (differs.length === 0) {
    await ensureLevelConsumers(jsm, names, queue, actual, logger);
    return actual;
  }
  if (!force) {
    logger?.warn(
      { queue, asked, actual, differs },
      'queue settings differ from the existing queue consumer; keeping the existing ones (pass force: true to overwrite)',
    );
    await ensureLevelConsumers(jsm, names, queue, actual, logger);
    return actual;
  }
  const next = { ...actual, ...asked };
  info = await jsm.consumers.update(names.tasksStream, durable, {
    ack_wait: ms(next.ackWaitMs),
    max_ack_pending: next.maxInFlight,
    metadata: { ...info.config.metadata, [MAX_WAIT_KEY]: String(next.maxWaitMs) },
  });
  logger?.info({ queue, before: actual, after: settingsOf(info) }, 'queue settings overwritten');
  await ensureLevelConsumers(jsm, names, queue, settingsOf(info), logger);
  return settingsOf(info);
}

/** The priority levels that have a consumer of their own (level 3 is the queue's consumer). */
export const OTHER_LEVELS = [1, 2, 4, 5] as const;

/**
 * The consumers of levels 1, 2, 4 and 5 of a queue (`queue<level>-<queue>`, filter
 * `<prefix>.task.<queue>.p<level>.*`), created or brought to the level-3 consumer's `ackWaitMs`
 * and `maxInFlight`: each level's consumer enforces `maxInFlight` on its own level.
 */
async function ensureLevelConsumers(
  jsm: JetStreamManager,
  names: TopologyNames,
  queue: string,
  settings: QueueSettings,
  logger?: Logger,
): Promise<void> {
  for (const level of OTHER_LEVELS) {
    const durable = names.levelConsumer(queue, level);
    const info = await jsm.consumers.info(names.tasksStream, durable).catch(() => undefined);
    if (!info) {
      try {
        await jsm.consumers.add(names.tasksStream, {
          durable_name: durable,
          description: `jetflow activity queue ${queue}, priority ${level}`,
          filter_subject: names.subjects.taskFilter(queue, level),
          ack_policy: AckPolicy.Explicit,
          deliver_policy: DeliverPolicy.All,
          ack_wait: ms(settings.ackWaitMs),
          max_ack_pending: settings.maxInFlight,
          max_deliver: -1,
        });
      } catch (err) {
        // Created by another worker meanwhile: fine; otherwise the queue cannot serve the level.
        if (!(await jsm.consumers.info(names.tasksStream, durable).catch(() => undefined)))
          throw err;
      }
      continue;
    }
    const have = settingsOf(info);
    if (have.ackWaitMs !== settings.ackWaitMs || have.maxInFlight !== settings.maxInFlight) {
      await jsm.consumers.update(names.tasksStream, durable, {
        ack_wait: ms(settings.ackWaitMs),
        max_ack_pending: settings.maxInFlight,
      });
      logger?.info({ queue, level }, 'priority level consumer brought to the queue settings');
    }
  }
}

/** Attempt number of a delivered task: `Jf-Attempt` (absent = 1) + delivery count - 1. */
export function taskAttempt(m: JsMsg): number {
  const raw = m.headers?.get(Header.Attempt);
  const base = raw ? Number(raw) : 1;
  return (Number.isInteger(base) && base >= 1 ? base : 1) + m.info.deliveryCount - 1;
}

function taskHeaders(attempt: number, trace?: TraceCarrier): ReturnType<typeof headers> {
  const h = headers();
  h.set(Header.ContentType, MSGPACK);
  h.set(Header.Attempt, String(attempt));
  if (trace?.traceparent) {
    h.set(Header.TraceParent, trace.traceparent);
    if (trace.tracestate) h.set(Header.TraceState, trace.tracestate);
  }
  return h;
}

/**
 * Durably schedule attempt `attempt` of a task for `dueAt`: a scheduled message on the task's
 * retry subject, fired by the server onto the task subject. Msg id `<taskId>.a<attempt>`, so two
 * workers scheduling the same attempt (a redelivered failure) store it once.
 *
 * @returns the schedule's stream sequence (for {@link fireRetryNow}).
 * @throws when the publish is not acknowledged (the caller then keeps the task by `nak`).
 */
export async function scheduleRetry(
  js: JetStreamClient,
  names: TopologyNames,
  task: TaskMessage,
  body: Uint8Array,
  attempt: number,
  dueAt: number,
  trace?: TraceCarrier,
): Promise<number> {
  const s = names.subjects;
  const ack = await js.publish(
    s.taskRetry(task.queue, task.taskKey, attempt, task.priority),
    body,
    {
      msgID: `${task.taskId}.a${attempt}`,
      headers: taskHeaders(attempt, trace),
      schedule: {
        specification: new Date(dueAt),
        target: s.task(task.queue, task.taskKey, task.priority),
      },
    },
  );
  return ack.seq;
}

/**
 * Postpone attempt `attempt` of a task to `at`, the slot its activity's rate limit reserved for
 * it: a scheduled message (fired at `fireAt`, default `at`) on the task's retry subject carrying `Jf-Attempt: <attempt>` (the same
 * attempt: a postponement uses none) and `Jf-Rate-Slot: <at>` (the worker that gets it runs it
 * in that slot without taking another). Msg id `<taskId>.a<attempt>.s<at>`.
 *
 * @throws when the publish is not acknowledged (the caller keeps the task).
 */
export async function postponeTask(
  js: JetStreamClient,
  names: TopologyNames,
  task: TaskMessage,
  body: Uint8Array,
  attempt: number,
  at: number,
  fireAt: number = at,
  trace?: TraceCarrier,
): Promise<void> {
  const s = names.subjects;
  const h = taskHeaders(attempt, trace);
  h.set(Header.RateSlot, String(at));
  await js.publish(s.taskRetry(task.queue, task.taskKey, attempt, task.priority), body, {
    msgID: `${task.taskId}.a${attempt}.s${at}`,
    headers: h,
    schedule: {
      specification: new Date(fireAt),
      target: s.task(task.queue, task.taskKey, task.priority),
    },
  });
}

/**
 * Postpone attempt `attempt` of a task whose activity's concurrency key has no free slot: a
 * scheduled message fired at `fireAt` on the task's retry subject, with `Jf-Attempt: <attempt>`
 * (a wait uses no attempt) and `Jf-Slot-Wait: <since>` (epoch ms it first found the key full, for
 * `jetflow why`). Msg id `<taskId>.a<attempt>.w<fireAt>`. Returns the schedule's stream sequence
 * (for {@link firePostponedNow}).
 *
 * @throws when the publish is not acknowledged (the caller keeps the task).
 */
export async function postponeForSlot(
  js: JetStreamClient,
  names: TopologyNames,
  task: TaskMessage,
  body: Uint8Array,
  attempt: number,
  fireAt: number,
  since: number,
  trace?: TraceCarrier,
): Promise<number> {
  const s = names.subjects;
  const h = taskHeaders(attempt, trace);
  h.set(Header.SlotWait, String(since));
  const ack = await js.publish(
    s.taskRetry(task.queue, task.taskKey, attempt, task.priority),
    body,
    {
      msgID: `${task.taskId}.a${attempt}.w${fireAt}`,
      headers: h,
      schedule: {
        specification: new Date(fireAt),
        target: s.task(task.queue, task.taskKey, task.priority),
      },
    },
  );
  return ack.seq;
}

/**
 * Bring a task postponed for its concurrency key back now (its turn is near): publish it on its
 * task subject with the same headers and cancel its schedule in the same server operation, only
 * if the schedule is still stored at `scheduleSeq` (one that fired or whose task was canceled
 * makes this a no-op). Msg id `<taskId>.a<attempt>.w<fireAt>.now`. Returns whether it was
 * published.
 */
export async function firePostponedNow(
  js: JetStreamClient,
  names: TopologyNames,
  task: TaskMessage,
  body: Uint8Array,
  attempt: number,
  fireAt: number,
  since: number,
  scheduleSeq: number,
  trace?: TraceCarrier,
): Promise<boolean> {
  const s = names.subjects;
  const retrySubject = s.taskRetry(task.queue, task.taskKey, attempt, task.priority);
  const h = taskHeaders(attempt, trace);
  h.set(Header.SlotWait, String(since));
  try {
    await js.publish(s.task(task.queue, task.taskKey, task.priority), body, {
      msgID: `${task.taskId}.a${attempt}.w${fireAt}.now`,
      headers: h,
      cancelSchedule: { scheduleSubject: retrySubject },
      expect: { lastSubjectSequence: scheduleSeq, lastSubjectSequenceSubject: retrySubject },
    });
    return true;
  } catch (err) {
    if (/wrong last sequence/i.test(String((err as Error)?.message))) return false;
    throw err;
  }
}

/**
 * Publish a scheduled retry now and cancel its schedule in the same server operation, but only if
 * the schedule is still stored at `scheduleSeq`: a schedule that already fired or whose task was
 * canceled (purged) makes this a no-op. Returns whether the retry was published.
 */
export async function fireRetryNow(
  js: JetStreamClient,
  names: TopologyNames,
  task: TaskMessage,
  body: Uint8Array,
  attempt: number,
  scheduleSeq: number,
  trace?: TraceCarrier,
): Promise<boolean> {
  const s = names.subjects;
  const retrySubject = s.taskRetry(task.queue, task.taskKey, attempt, task.priority);
  try {
    await js.publish(s.task(task.queue, task.taskKey, task.priority), body, {
      msgID: `${task.taskId}.a${attempt}.now`,
      headers: taskHeaders(attempt, trace),
      cancelSchedule: { scheduleSubject: retrySubject },
      expect: { lastSubjectSequence: scheduleSeq, lastSubjectSequenceSubject: retrySubject },
    });
    return true;
  } catch (err) {
    if (/wrong last sequence/i.test(String((err as Error)?.message))) return false;
    throw err;
  }
}

/**
 * Hand a task back to the queue without using up an attempt (forced worker shutdown): the same
 * body on the task subject with `Jf-Attempt: <attempt>`. Msg id `<taskId>.r<stream seq>`, unique per
 * released delivery. The caller acks the original afterwards.
 */
export async function releaseTask(
  js: JetStreamClient,
  names: TopologyNames,
  task: TaskMessage,
  body: Uint8Array,
  attempt: number,
  seq: number,
  trace?: TraceCarrier,
): Promise<void> {
  await js.publish(names.subjects.task(task.queue, task.taskKey, task.priority), body, {
    msgID: `${task.taskId}.r${seq}`,
    headers: taskHeaders(attempt, trace),
  });
}

// nats.js turns a pull's raw reply into a JsMsg (ack, nak, term, working, delivery info) with
// `toJsMsg`, which its package does not export: loaded from the same installed module.
const requireHere = createRequire(import.meta.url);
const { toJsMsg } = requireHere(
  join(dirname(requireHere.resolve('@nats-io/jetstream')), 'jsmsg.js'),
) as { toJsMsg: (m: Msg, ackTimeout?: number) => JsMsg };

/**
 * One pull request on a priority level's consumer of `queue`: up to `batch` tasks. With
 * `waitMs` 0 it does not wait (`no_wait`: an empty level answers at once); otherwise the server
 * holds the request up to `waitMs` for the first messages. Resolves the tasks received, in
 * stream order; `stop` ends it early (a message the server sends after that is redelivered
 * after AckWait, as with any pull a client abandons).
 */
export function pullLevel(
  nc: NatsConnection,
  names: TopologyNames,
  queue: string,
  level: number,
  batch: number,
  waitMs: number,
  stop: AbortSignal,
): Promise<JsMsg[]> {
  return new Promise((resolve) => {
    const inbox = createInbox((nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);
    const got: JsMsg[] = [];
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(guard);
      stop.removeEventListener('abort', finish);
      sub.unsubscribe();
      resolve(got);
    };
    const sub = nc.subscribe(inbox, {
      callback: (err, m) => {
        if (err) return finish();
        const code = m.headers?.code ?? 0;
        if (code === 100) return; // idle heartbeat or flow control
        // 404 no messages, 408 request expired, 409 (MaxAckPending reached, leader change...).
        if (code !== 0) return finish();
        got.push(toJsMsg(m));
        if (got.length >= batch) finish();
      },
    });
    // The server answers a pull within its expiry; this only ends one it never answers.
    const guard = setTimeout(finish, waitMs + 5_000);
    stop.addEventListener('abort', finish, { once: true });
    if (stop.aborted) return finish();
    const req = waitMs > 0 ? { batch, expires: ms(waitMs) } : { batch, no_wait: true };
    nc.publish(
      `$JS.API.CONSUMER.MSG.NEXT.${names.tasksStream}.${names.levelConsumer(queue, level)}`,
      JSON.stringify(req),
      { reply: inbox },
    );
  });
}

/**
 * Enqueue time (epoch ms) of the oldest task of `queue` at `level` that no worker has been
 * given yet (after the level consumer's delivered sequence); undefined when none waits. Two
 * requests: the consumer's info and one message get.
 */
export async function oldestWaiting(
  jsm: JetStreamManager,
  names: TopologyNames,
  queue: string,
  level: number,
): Promise<number | undefined> {
  const ci = await jsm.consumers.info(names.tasksStream, names.levelConsumer(queue, level));
  if (ci.num_pending === 0) return undefined;
  const m = await jsm.streams
    // The server's message get takes `next_by_subj` (nats.js types only its direct get's).
    .getMessage(names.tasksStream, {
      next_by_subj: names.subjects.taskFilter(queue, level),
      seq: ci.delivered.stream_seq + 1,
    } as NextMsgRequest as unknown as MsgRequest)
    .catch(() => undefined);
  return m?.time.getTime();
}

/** The subject token of a fairness key (any string): 22 characters of its SHA-256. */
export function fairnessToken(key: string): string {
  return createHash('sha256').update(key).digest('base64url').slice(0, 22);
}

/**
 * The fairness keys of `queue` that have staged tasks, by priority level: key token → count
 * (one stream info request; its size grows with the keys that have tasks, not with the tasks).
 */
export async function stagedKeys(
  jsm: JetStreamManager,
  names: TopologyNames,
  queue: string,
): Promise<Map<number, Map<string, number>>> {
  const filter = names.subjects.taskStagingFilter(queue);
  const info = await jsm.streams.info(names.tasksStream, { subjects_filter: filter });
  const out = new Map<number, Map<string, number>>();
  const head = filter.length - 1; // `<prefix>.task.<queue>.fair.`
  for (const [subject, n] of Object.entries(info.state.subjects ?? {})) {
    const [level, token] = subject.slice(head).split('.');
    const l = Number(level);
    if (!token || !Number.isInteger(l)) continue;
    const m = out.get(l) ?? new Map<string, number>();
    m.set(token, n);
    out.set(l, m);
  }
  return out;
}

/**
 * Move the oldest staged task of one fairness key onto its level's task subject (msg id
 * `<taskId>.f`, so two workers moving the same task store it once), then delete it from the
 * staging subject. Resolves the task's weight, or undefined when the key has no staged task.
 * A worker that dies between the two leaves the staged copy, which the next move publishes
 * again under the same msg id (a duplicate after the dedup window is refused by the attempt
 * ledger).
 */
export async function moveStaged(
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  queue: string,
  level: number,
  token: string,
): Promise<number | undefined> {
  const m = await jsm.streams
    .getMessage(names.tasksStream, {
      next_by_subj: names.subjects.taskStaging(queue, level, token),
      seq: 0,
    } as NextMsgRequest as unknown as MsgRequest)
    .catch((err: unknown) => {
      // Without the message get (`jetflow auth --priority-workers`) no staged task ever moves:
      // say so (the mover logs it) instead of reading it as an empty key.
      if (toJetflowError(err).code === ErrorCode.Unauthorized) {
        throw new ConfigError(
          `fairness keys of queue ${queue}: this worker may not read staged tasks (${names.tasksStream} message get); grant it with jetflow auth --priority-workers`,
        );
      }
      return undefined;
    });
  if (!m) return undefined;
  let task: TaskMessage;
  try {
    task = unpack(m.data) as TaskMessage;
  } catch {
    await jsm.streams.deleteMessage(names.tasksStream, m.seq, false).catch(() => false);
    return 1;
  }
  const h = headers();
  // Its headers (content type, trace) but not the server's (`Nats-*`: msg id, stream info).
  for (const [k, v] of m.header ? [...m.header] : [])
    if (!/^nats-/i.test(k)) for (const x of v) h.append(k, x);
  await js.publish(names.subjects.task(queue, String(task.taskKey), level), m.data, {
    msgID: `${String(task.taskId)}.f`,
    headers: h,
  });
  await jsm.streams.deleteMessage(names.tasksStream, m.seq, false).catch(() => false);
  const w = task.fairness?.weight;
  return typeof w === 'number' && Number.isInteger(w) && w >= 1 ? w : 1;
}
