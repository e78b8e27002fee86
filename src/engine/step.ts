/**
 * The pure part of a step: given the stored record (or none) and one inbox message, decide the
 * next record and its outbox, or a rejection. No I/O; same inputs give the same outputs.
 */
import { createHash } from 'node:crypto';
import { taskToken, timerToken, tokenMatches } from './proof.js';
import type { AnyMachineSnapshot, EventObject } from 'xstate';
import type { DebounceOptions, Registry, WorkflowDefinition } from './registry.js';
import { isNodeAdmin } from './admin.js';
import { checkSnapshot } from './migrate.js';
import * as m from './machine.js';
import {
  DEFAULT_RETRY,
  resolveActivity,
  rateKeyOf,
  priorityOf,
  fairnessOf,
  resolveActivityOptions,
  type ActivityOptions,
} from './activity.js';
import { isToken } from '../contracts/subjects.js';
import { resolveChild, type ChildSpawn } from './child.js';
import {
  eventPayload,
  journalEvent,
  journalState,
  sameState,
  searchAttributes,
  type JournalOptions,
} from './journal.js';
import { DEFAULT_PRIORITY, shardOf, type Subjects } from '../contracts/subjects.js';
import type { KeyCancel } from './admission.js';
import {
  HELD_MAX,
  INBOUND_MEMORY,
  MSG_ID_MEMORY,
  SEND_FAILED_EVENT,
  REQUEST_ID_MEMORY,
  WIRE_VERSION,
  type AdminReply,
  type StartReply,
  type Effect,
  type InboxMessage,
  type JournalEntry,
  type JournalOperator,
  type Notification,
  type ParentRef,
  type SendOrigin,
  type TaskRef,
  type WorkflowRef,
  type WorkflowRecord,
  type WorkflowStatus,
} from '../contracts/wire.js';
import {
  BadRequestError,
  ErrorCode,
  RetryableError,
  toErrorData,
  type ErrorData,
  type JetflowError,
} from '../errors.js';

/**
 * A message to another workflow owed by a decision that writes no record (a child start that
 * finds a workflow of another parent, a watch of a finished one): performed before the message
 * is acknowledged, idempotent by its msg id.
 */
export type Tell = Extract<Effect, { kind: 'message' }> & { msgId: string };

/** What a step decided. */
export type Decision =
  /** Write `record` (create when `create`), then perform its outbox, then reply `reply`. */
  | {
      kind: 'write';
      record: WorkflowRecord;
      create: boolean;
      reply: unknown;
      /**
       * The live snapshot `record.snapshot` persists (reusable by the next step, saves a
       * restore); absent for a deferred workflow (its machine has not started).
       */
      live?: AnyMachineSnapshot;
      /**
       * The message is not consumed by this write (a send with `startIfAbsent` created the
       * workflow, `lastSeq` stays below the message): decide it again, now against this record.
       */
      again?: true;
    }
  /** Nothing to store: reply (start of an existing workflow). */
  | { kind: 'noop'; reply: unknown; tell?: Tell[] }
  /** Nothing to store, nothing to tell: a late or duplicate result or timer. Logged. */
  | {
      kind: 'ignore';
      reason: string;
      tell?: Tell[];
      /** Dropped for want of the right proof (issue 17): counted apart from late messages. */
      forged?: true;
    }
  /** The message cannot be applied now: nothing stored; notify and reply with the error. */
  | { kind: 'reject'; error: JetflowError; accepts: string[] }
  /**
   * This engine cannot decide: the workflow's `type@version` is not registered here (a rolling
   * upgrade or rollback, or engines with different registries). Nothing stored, nothing told:
   * the message is left for an engine that knows the definition.
   */
  | { kind: 'defer'; error: JetflowError };

/** What every step needs besides the record and the message. */
export interface StepContext {
  registry: Registry;
  subjects: Subjects;
  /**
   * Shard count of the server's mapping. When given, a start that arrives on a shard other than
   * the mapping's shard for its type and id is rejected (a forged publish onto a shard subject).
   */
  shards?: number;
  /** Client message ids remembered per workflow (default {@link MSG_ID_MEMORY}). */
  msgIdMemory?: number;
  /** Journal every step (an outbox `journal` effect); absent: no journal. */
  journal?: JournalOptions;
  /** Signals and cancels a paused workflow holds at most (default {@link HELD_MAX}). */
  heldMax?: number;
}

export interface StepInput {
  type: string;
  id: string;
  /** Inbox shard the message arrived on. */
  shard: number;
  /** Inbox stream sequence of the message. */
  seq: number;
  message: InboxMessage;
  now: number;
  /** Identity of the inbox stream the message came from; stored with `lastSeq`. */
  inbox?: string;
  /**
   * For an admin `reset`: the journal's step entry of `toStep` (read by the caller; absent when
   * the journal no longer has it).
   */
  restore?: JournalEntry;
  /**
   * For a start of a definition with a concurrency key: what the admission stage decided (the
   * key record's answer, see `admission.ts`). Without it such a start is refused.
   */
  admission?: StartAdmission;
  /**
   * A fresh random secret for a record this step creates (issue 17, `proof.ts`), drawn by the
   * caller so that the step stays pure. Absent: a record created now has none (its results and
   * timers are then not checked).
   */
  secret?: string;
}

/** The admission stage's answer for a start with a concurrency key. */
export type StartAdmission =
  | { kind: 'admitted'; key: string; keyToken: string; at?: number }
  | {
      kind: 'deferred';
      key: string;
      keyToken: string;
      position: number;
      queuedAt: number;
      cancel: KeyCancel[];
    };

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

/**
 * The workflow status a snapshot means. A final state tagged `failed` ends the workflow
 * `failed` (E11): a machine's own way to say its run failed, with `output.error` as the error.
 */
function statusOf(s: AnyMachineSnapshot): WorkflowStatus {
  if (s.status === 'done') return s.hasTag('failed') ? 'failed' : 'completed';
  if (s.status === 'error' || s.status === 'stopped') return 'failed';
  return 'running';
}

function errorOfSnapshot(s: AnyMachineSnapshot): ErrorData {
  if (s.status === 'done') {
    // A final state tagged `failed`: the error is the output's `error` when it has one.
    const e = (s.output as { error?: unknown } | undefined)?.error;
    const o = (e && typeof e === 'object' ? e : {}) as Record<string, unknown>;
    return {
      type: typeof o.type === 'string' ? o.type : 'WorkflowFailed',
      code: typeof o.code === 'string' ? (o.code as ErrorCode) : ErrorCode.Internal,
      message:
        typeof o.message === 'string'
          ? o.message
          : typeof e === 'string'
            ? e
            : `the workflow reached a final state tagged failed (${JSON.stringify(s.value)})`,
      retryable: false,
      ...(o.details !== undefined ? { details: o.details } : {}),
    };
  }
  const data = toErrorData(s.error);
  return { ...data, code: ErrorCode.MachineError, retryable: false };
}

/** Subject token for a task id (a hash: ids may contain any character). */
export function taskKeyOf(taskId: string): string {
  return createHash('sha256').update(taskId).digest('base64url').slice(0, 27);
}

/** Notification for the state a step reached. */
function lifecycle(
  rec: WorkflowRecord,
  snapshot: AnyMachineSnapshot,
  event: string,
  at: string,
  emitted: Record<string, unknown>[] = [],
): Notification {
  const base = {
    workflowType: rec.type,
    id: rec.id,
    version: rec.version,
    step: rec.step,
    at,
    ...(emitted.length > 0 ? { emitted } : {}),
  };
  if (rec.status === 'completed') {
    return { ...base, type: 'completed', value: snapshot.value, output: snapshot.output };
  }
  if (rec.status === 'failed') return { ...base, type: 'failed', error: rec.error! };
  return { ...base, type: 'transitioned', event, value: snapshot.value };
}

interface Pending {
  timers: Record<string, number>;
  tasks: Record<string, TaskRef>;
}

/**
 * Subject token of one setting of a workflow's timer: its schedule subject, purged to cancel it.
 * It includes the step that set the timer, so a re-set timer lives on a new subject: a cancel, a
 * local twin's purge, a late or re-performed publish and the server's per-subject rollup of a
 * schedule only ever touch the setting they belong to (never the live one).
 */
export function timerKeyOf(w: { type: string; id: string }, timerId: string, step: number): string {
  return taskKeyOf(`${w.type}.${w.id}.${timerId}.${step}`);
}

/** The effect that cancels a running activity. */
function stopTaskEffect(actorId: string, t: TaskRef): Effect {
  return {
    kind: 'stopTask',
    actorId,
    taskId: t.taskId,
    queue: t.queue,
    taskKey: t.taskKey,
    ...(t.priority !== undefined ? { priority: t.priority } : {}),
  };
}

/**
 * The effects that stop what `t` awaits: an activity's task is purged and aborted; a child
 * workflow is canceled (`parentClose: cancel`, the default) or left running (`abandon`); a
 * watched workflow is left alone (its end, when reported, is no longer current).
 */
function stopEffects(w: WorkflowRef, actorId: string, t: TaskRef): Effect[] {
  if (t.kind === 'watch') return [];
  if (t.kind === 'workflow') {
    if (t.parentClose === 'abandon' || !t.target) return [];
    return [
      {
        kind: 'message',
        inbox: 'cancel',
        to: t.target,
        body: {
          reason: `parent ${w.type}/${w.id} left ${actorId}`,
          from: { type: w.type, id: w.id, taskId: t.taskId, key: actorId },
        },
      },
    ];
  }
  return [stopTaskEffect(actorId, t)];
}

/** A result or attempt notice without the proof of the task it names: dropped (issue 17). */
function forgedResult(message: { taskId: string; token?: string }): Decision {
  return {
    kind: 'ignore',
    forged: true,
    reason: `result for task ${message.taskId} ${message.token === undefined ? 'without a' : 'with a wrong'} proof of the task (forged)`,
  };
}

/** The result message that tells a parent or watcher how workflow `rec` ended. */
export function endResult(
  rec: Pick<WorkflowRecord, 'type' | 'id' | 'status' | 'output' | 'error'>,
  to: ParentRef,
  reason?: string,
): Tell {
  const who = `${rec.type}/${rec.id}`;
  const body: Record<string, unknown> = {
    taskId: to.taskId,
    actorId: to.key,
    ok: rec.status === 'completed',
    attempt: 1,
    from: { type: rec.type, id: rec.id },
    ...(to.token !== undefined ? { token: to.token } : {}),
  };
  if (rec.status === 'completed') body.output = rec.output ?? null;
  else if (rec.status === 'canceled')
    body.error = {
      type: 'ChildCanceled',
      code: 'canceled',
      message: `workflow ${who} was canceled${reason ? `: ${reason}` : ''}`,
      retryable: false,
      details: { type: rec.type, id: rec.id, ...(reason ? { reason } : {}) },
    };
  else
    body.error = {
      type: 'ChildFailed',
      code: rec.error?.code ?? ErrorCode.Internal,
      message: `workflow ${who} failed: ${rec.error?.message ?? 'unknown error'}`,
      retryable: false,
      details: { type: rec.type, id: rec.id, ...(rec.error ? { error: rec.error } : {}) },
    };
  return {
    kind: 'message',
    inbox: 'result',
    to: { type: to.type, id: to.id },
    body,
    msgId: `result.${to.taskId}`,
  };
}

/** An error result for a parent or watcher (the child could not be started or found). */
export function errorResult(
  to: ParentRef,
  from: WorkflowRef,
  error: { type: string; code: string; message: string; details?: unknown },
): Tell {
  return {
    kind: 'message',
    inbox: 'result',
    to: { type: to.type, id: to.id },
    body: {
      taskId: to.taskId,
      actorId: to.key,
      ok: false,
      attempt: 1,
      error: { ...error, retryable: false },
      from,
      ...(to.token !== undefined ? { token: to.token } : {}),
    },
    msgId: `result.${to.taskId}`,
  };
}

/**
 * A workflow that ends tells its parent and its watchers (E8): one result message each, with
 * msg id `result.<their taskId>`; their task tables apply it at most once.
 */
function endEffects(rec: WorkflowRecord, reason?: string): Effect[] {
  if (rec.status === 'running') return [];
  const out: Effect[] = [];
  if (rec.parent) out.push(endResult(rec, rec.parent, reason));
  for (const w of Object.values(rec.watchers ?? {})) out.push(endResult(rec, w, reason));
  delete rec.watchers;
  if (rec.batch) out.push(batchItemEffect(rec));
  return out;
}

/**
 * The end of a batch item (issue 23): its ledger key moves to the terminal status. Only in the
 * step that ends the workflow, so the item counts once (DESIGN: terminal steps, not messages).
 */
function batchItemEffect(rec: WorkflowRecord): Effect {
  const status =
    rec.status === 'completed' ? 'succeeded' : rec.status === 'canceled' ? 'canceled' : 'failed';
  return {
    kind: 'batchItem',
    batch: rec.batch!,
    status,
    ...(status === 'failed' && rec.error ? { error: rec.error } : {}),
  };
}

/**
 * `jetflow.send.failed` for the sender of a cross-workflow send that could not be applied: a
 * signal to the sender's inbox, deduplicated there by its `/failed` watermark (the failed send's
 * `[step, index]`) and here by its msg id.
 */
export function sendFailed(
  target: WorkflowRef,
  from: SendOrigin,
  event: { type: string; [k: string]: unknown },
  error: { type: string; code: string; message: string; details?: unknown },
): Tell {
  return {
    kind: 'message',
    inbox: 'signal',
    to: { type: from.type, id: from.id },
    body: {
      event: {
        type: SEND_FAILED_EVENT,
        to: { type: target.type, id: target.id },
        event,
        error: { type: error.type, code: error.code, message: error.message, retryable: false },
      },
      undeliverable: { type: target.type, id: target.id, step: from.step, index: from.index },
    },
    msgId: `sendfail.${target.type}.${target.id}.${from.type}.${from.id}.${from.step}.${from.index}`,
  };
}

/** `[step, index]` is at or below `mark`. */
const atOrBelow = (step: number, index: number, mark: [number, number] | undefined) =>
  mark !== undefined && (step < mark[0] || (step === mark[0] && index <= mark[1]));

/** `inbound` with `key` moved to the newest place at `[step, index]`, bounded. */
function withInbound(
  inbound: Record<string, [number, number]> | undefined,
  key: string,
  step: number,
  index: number,
): Record<string, [number, number]> {
  const out = { ...(inbound ?? {}) };
  delete out[key];
  out[key] = [step, index];
  const keys = Object.keys(out);
  for (let i = 0; i < keys.length - INBOUND_MEMORY; i++) delete out[keys[i]!];
  return out;
}

/**
 * Search attribute naming the trigger whose message last started or signaled a workflow:
 * `jetflow ls --where jetflow.trigger=<name>`.
 */
export const TRIGGER_ATTRIBUTE = 'jetflow.trigger';
/**
 * The search attribute of a batch item's workflow (issue 23): its batch's id, so that the
 * visibility index finds a batch's items (`{ attributes: { batchId } }`).
 */
export const BATCH_ATTRIBUTE = 'batchId';

/** The sender key of a trigger in a record's `inbound` watermarks (`/` is not in a type token). */
export function triggerMarkKey(trigger: string): string {
  return `trigger/${trigger}`;
}

/** The watermark key a message is deduplicated by (cross-workflow sends and their failures). */
function inboundKey(msg: InboxMessage): { key: string; step: number; index: number } | undefined {
  if (msg.kind !== 'signal') return undefined;
  // A trigger's stream sequence: one key's messages are forwarded in stream order.
  if (msg.trigger) {
    if (msg.trigger.seq === 0 || msg.trigger.replay) return undefined;
    return { key: triggerMarkKey(msg.trigger.name), step: msg.trigger.seq, index: 0 };
  }
  if (msg.from)
    return { key: `${msg.from.type}.${msg.from.id}`, step: msg.from.step, index: msg.from.index };
  if (msg.undeliverable) {
    const u = msg.undeliverable;
    return { key: `${u.type}.${u.id}/failed`, step: u.step, index: u.index };
  }
  return undefined;
}

/** Internal timer id of an activity's schedule-to-close deadline. */
const deadlineTimerId = (actorId: string) => `jetflow.deadline.${actorId}`;
/** Event type of a fired activity deadline. */
const DEADLINE_EVENT = 'jetflow.deadline';
/** The event of a debounce window's timer: `{type, key}` (the record holds the window). */
const DEBOUNCE_EVENT = 'jetflow.debounce';

/**
 * A shallow copy of a table (tasks, timers), key by key. Object spread copies a table in
 * dictionary mode (one that had keys deleted, as these do at every finished task) about 17 times
 * slower: with a fan-out's 1,000 pending tasks, two spreads were 1.8 ms of every result's step.
 */
function copyOf<T>(table: Readonly<Record<string, T>>): Record<string, T> {
  const out: Record<string, T> = {};
  for (const k in table) out[k] = table[k]!;
  return out;
}

/** Turn commands into durable effects, tracking pending timers and tasks. */
function materialize(
  def: WorkflowDefinition,
  ctx: StepContext,
  rec: { type: string; id: string; step: number; secret?: string; priority?: number },
  before: Pending,
  commands: m.Command[],
  now: number,
): Pending & {
  effects: Effect[];
  emitted: Record<string, unknown>[];
  reply?: { value: unknown };
  reject?: { code: string; message: string; details?: unknown };
} {
  const machine = def.machine;
  const emitted: Record<string, unknown>[] = [];
  let replied: { value: unknown } | undefined;
  let rejected: { code: string; message: string; details?: unknown } | undefined;
  const timers = copyOf(before.timers);
  const tasks = copyOf(before.tasks);
  const effects: Effect[] = [];
  const setTimer = (timerId: string, event: unknown, delayMs: number) => {
    timers[timerId] = rec.step;
    effects.push({
      kind: 'timer',
      timerId,
      timerKey: timerKeyOf(rec, timerId, rec.step),
      step: rec.step,
      event,
      delayMs,
      dueAt: now + delayMs,
    });
  };
  const cancelTimer = (timerId: string) => {
    const setAt = timers[timerId];
    if (setAt === undefined) return; // fired or never set
    delete timers[timerId];
    if (setAt === rec.step) {
      // Set by this very step: its schedule was never published, so drop it instead of
      // publishing and purging it (a re-performance would then publish it again).
      const i = effects.findIndex((e) => e.kind === 'timer' && e.timerId === timerId);
      if (i >= 0) effects.splice(i, 1);
      return;
    }
    effects.push({ kind: 'cancelTimer', timerId, timerKey: timerKeyOf(rec, timerId, setAt) });
  };
  const pushTask = (
    actorId: string,
    a: { name: string; options: ActivityOptions; input: unknown },
    extra: { maxAttempts?: number; node?: Record<string, unknown>; dispatched?: boolean },
  ) => {
    const taskId = `${rec.type}.${rec.id}.${rec.step}.${actorId}`;
    const taskKey = taskKeyOf(taskId);
    const review =
      !extra.dispatched && (a.options.onExhausted ?? def.onExhausted ?? 'fail') === 'review';
    // An activity without its own priority takes its workflow's (set at its start).
    const level = priorityOf(a.options, a.input, rec.priority);
    const leveled = level !== DEFAULT_PRIORITY ? { priority: level } : {};
    const fair = fairnessOf(a.options, a.input);

    tasks[actorId] = {
      taskId,
      taskKey,
      activity: a.name,
      queue: a.options.queue,
      ...leveled,
      ...(fair ? { fairness: fair.key } : {}),
      ...(review ? { onExhausted: 'review' as const } : {}),
      ...(extra.dispatched ? { dispatched: true as const } : {}),
    };
    const r = a.options.retry;
    const retry = {
      initialIntervalMs: r.initialIntervalMs,
      backoffCoefficient: r.backoffCoefficient,
      maxIntervalMs: r.maxIntervalMs,
      jitter: r.jitter,
      nonRetryableErrorTypes: r.nonRetryableErrorTypes,
      ...(r.delaysMs ? { delaysMs: r.delaysMs } : {}),
    };
    const common = {
      taskId,
      taskKey,
      actorId,
      activity: a.name,
      queue: a.options.queue,
      input: a.input,
      maxAttempts: extra.maxAttempts ?? r.maxAttempts,
      startToCloseMs: a.options.startToCloseMs,
      ...(a.options.heartbeatMs ? { heartbeatMs: a.options.heartbeatMs } : {}),
      ...(a.options.scheduleToCloseMs ? { deadline: now + a.options.scheduleToCloseMs } : {}),
      ...(extra.node ? { node: extra.node } : {}),
      ...(a.options.http ? { http: a.options.http } : {}),
      ...(a.options.rateLimit
        ? {
            rateLimit: {
              key: rateKeyOf(a.options.rateLimit, a.input),
              limit: a.options.rateLimit.limit,
              periodMs: a.options.rateLimit.periodMs,
            },
          }
        : {}),
      ...(a.options.concurrency
        ? {
            concurrency: {
              key: rateKeyOf(a.options.concurrency, a.input),
              limit: a.options.concurrency.limit,
            },
          }
        : {}),
      ...leveled,
      ...(fair ? { fairness: fair } : {}),
    };
    effects.push({
      kind: 'task',
      task: extra.dispatched
        ? // Stored compactly (a tree may dispatch 1,000 at once): the performer fills in the
          // fields the record implies and the default retry fields (`fullTask`).
          { ...common, retry: changedRetry(retry) }
        : {
            v: WIRE_VERSION,
            ...common,
            workflowType: rec.type,
            workflowId: rec.id,
            retry,
            resultSubject: ctx.subjects.inbox('result', rec.type, rec.id),
            scheduledAt: now,
          },
    });
    if (a.options.scheduleToCloseMs) {
      // The engine's own deadline: fires even when no worker ever picks the task up.
      setTimer(
        deadlineTimerId(actorId),
        { type: DEADLINE_EVENT, actorId, taskId },
        a.options.scheduleToCloseMs,
      );
    }
  };
  const stopTask = (actorId: string) => {
    const t = tasks[actorId];
    if (!t) return; // already finished: nothing to cancel
    delete tasks[actorId];
    effects.push(...stopEffects(rec, actorId, t));
    cancelTimer(deadlineTimerId(actorId));
  };
  const checkRef = (what: string, r: { type?: unknown; id?: unknown }) => {
    if (!isToken(r.type) || !isToken(r.id))
      throw new BadRequestError(
        `workflow ${rec.type}/${rec.id}: ${what} needs a type and an id of 1-256 characters of A-Z a-z 0-9 _ - = (got ${JSON.stringify(r.type)}/${JSON.stringify(r.id)})`,
        {
          workflowType: rec.type,
          workflowId: rec.id,
          code: ErrorCode.BadRequest,
          details: { type: r.type, id: r.id },
        },
      );
  };
  /** Start (or attach to) a child workflow under `actorId`: a task of kind workflow or watch. */
  const pushChild = (actorId: string, c: ChildSpawn, dispatched: boolean) => {
    checkRef('a child workflow', c);
    const taskId = `${rec.type}.${rec.id}.${rec.step}.${actorId}`;
    const ref: ParentRef = {
      type: rec.type,
      id: rec.id,
      taskId,
      key: actorId,
      ...(rec.secret ? { token: taskToken(rec.secret, taskId) } : {}),
    };
    tasks[actorId] = {
      taskId,
      taskKey: taskKeyOf(taskId),
      activity: c.type,
      queue: '',
      kind: c.attach ? 'watch' : 'workflow',
      target: { type: c.type, id: c.id },
      ...(c.attach ? {} : { parentClose: c.parentClose }),
      ...(dispatched ? { dispatched: true as const } : {}),
    };
    effects.push(
      c.attach
        ? {
            kind: 'message',
            inbox: 'watch',
            to: { type: c.type, id: c.id },
            body: { watcher: ref },
          }
        : {
            kind: 'message',
            inbox: 'start',
            to: { type: c.type, id: c.id },
            body: { input: c.input ?? null, parent: ref },
          },
    );
  };
  for (const c of commands) {
    switch (c.kind) {
      case 'batch': {
        const b = c.batch;
        if (!Array.isArray(b.items) || b.items.length > m.WORKFLOW_BATCH_MAX_ITEMS)
          throw new BadRequestError(
            `workflow ${rec.type}/${rec.id}: startBatch takes an array of at most ${m.WORKFLOW_BATCH_MAX_ITEMS} items (submit bigger batches from an activity)`,
            { workflowType: rec.type, workflowId: rec.id, code: ErrorCode.BadRequest },
          );
        effects.push({ kind: 'batchStart', batch: b });
        break;
      }
      case 'send': {
        checkRef('sendToWorkflow', c.to);
        const ev = c.event as { type?: unknown } | undefined;
        if (
          !ev ||
          typeof ev !== 'object' ||
          typeof ev.type !== 'string' ||
          ev.type.length === 0 ||
          ev.type.startsWith('xstate.')
        )
          throw new BadRequestError(
            `workflow ${rec.type}/${rec.id}: sendToWorkflow needs an event with a type (not xstate.*)`,
            { workflowType: rec.type, workflowId: rec.id, code: ErrorCode.BadRequest },
          );
        effects.push({
          kind: 'message',
          inbox: 'signal',
          to: { type: c.to.type, id: c.to.id },
          body: {
            event: c.event,
            ...(c.startIfAbsent ? { startIfAbsent: { input: c.startIfAbsent.input ?? null } } : {}),
          },
          stamp: true,
        });
        break;
      }
      case 'dispatch': {
        const t = c.target;
        if ('workflow' in t) {
          pushChild(
            c.key,
            { ...t.workflow, attach: false, input: t.workflow.input, parentClose: 'cancel' },
            true,
          );
          break;
        }
        if ('watch' in t) {
          pushChild(
            c.key,
            { ...t.watch, attach: true, input: undefined, parentClose: 'cancel' },
            true,
          );
          break;
        }
        const options = resolveActivityOptions(t.activity, {
          ...(t.options ?? {}),
          queue: t.queue,
        });
        pushTask(
          c.key,
          { name: t.activity, options, input: t.input },
          { dispatched: true, ...(t.node ? { node: t.node } : {}) },
        );
        break;
      }
      case 'cancelTask':
        stopTask(c.key);
        break;
      case 'emit':
        emitted.push(c.event);
        break;
      case 'reply':
        replied = { value: c.value };
        break;
      case 'reject':
        rejected ??= { code: c.code, message: c.message, details: c.details };
        break;
      case 'spawn': {
        const child = resolveChild(machine, c.src, c.input);
        if (child) {
          pushChild(c.actorId, child, false);
          break;
        }
        const a = resolveActivity(machine, c.src, c.input);
        pushTask(c.actorId, a, c.maxAttempts !== undefined ? { maxAttempts: c.maxAttempts } : {});
        break;
      }
      case 'stop':
        stopTask(c.actorId);
        break;
      case 'timer':
        setTimer(c.timerId, c.event, c.delayMs);
        break;
      case 'cancelTimer':
        cancelTimer(c.timerId);
        break;
    }
  }
  return {
    timers,
    tasks,
    effects,
    emitted,
    ...(replied ? { reply: replied } : {}),
    ...(rejected ? { reject: rejected } : {}),
  };
}

/** The retry fields that differ from the engine defaults (a stored task leaves the rest out). */
function changedRetry(r: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const d = DEFAULT_RETRY as unknown as Record<string, unknown>;
  for (const [k, v] of Object.entries(r)) {
    if (k === 'maxAttempts') continue;
    if (JSON.stringify(v) !== JSON.stringify(d[k])) out[k] = v;
  }
  return out;
}

/** Effects that wind down whatever is still pending when a workflow ends. */
function windDown(w: { type: string; id: string }, p: Pending): Effect[] {
  return [
    ...Object.entries(p.tasks).flatMap(([actorId, t]) => stopEffects(w, actorId, t)),
    ...Object.entries(p.timers).map(([timerId, setAt]): Effect => ({
      kind: 'cancelTimer',
      timerId,
      timerKey: timerKeyOf(w, timerId, setAt),
    })),
  ];
}

/** The definition, or a `defer` decision when this engine does not have it. */
function definitionOf(
  lookup: () => WorkflowDefinition,
): { def: WorkflowDefinition } | { defer: Decision } {
  try {
    return { def: lookup() };
  } catch (err) {
    if (
      err instanceof BadRequestError &&
      (err.code === ErrorCode.UnknownType || err.code === ErrorCode.UnknownVersion)
    ) {
      return { defer: { kind: 'defer', error: err } };
    }
    throw err;
  }
}

/** Bounded, fixed-size form of a client message id as remembered in the record. */
export function msgIdKey(kind: string, msgId: string): string {
  return createHash('sha256').update(`${kind}.${msgId}`).digest('base64url').slice(0, 16);
}

/** `ids` plus `key`, keeping the newest `max`. */
function remember(ids: string[] | undefined, key: string | undefined, max: number): string[] {
  const out = [...(ids ?? [])];
  if (key !== undefined) out.push(key);
  return out.length > max ? out.slice(out.length - max) : out;
}

/** The events of the timers still pending after a step (see `WorkflowRecord.timerEvents`). */
function timerEventsOf(
  prev: Record<string, unknown> | undefined,
  effects: Effect[],
  timers: Record<string, number>,
): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  for (const id of Object.keys(timers)) if (prev && id in prev) out[id] = prev[id];
  for (const e of effects) if (e.kind === 'timer' && e.timerId in timers) out[e.timerId] = e.event;
  return Object.keys(out).length > 0 ? out : undefined;
}

/** The due time of the timers still pending after a step (see `WorkflowRecord.timerDue`). */
function timerDueOf(
  prev: Record<string, number> | undefined,
  effects: Effect[],
  timers: Record<string, number>,
): Record<string, number> | undefined {
  const out: Record<string, number> = {};
  for (const id of Object.keys(timers)) if (prev && id in prev) out[id] = prev[id]!;
  for (const e of effects) if (e.kind === 'timer' && e.timerId in timers) out[e.timerId] = e.dueAt;
  return Object.keys(out).length > 0 ? out : undefined;
}

/**
 * The snapshot without the children whose activity has finished (no longer in `tasks`). XState's
 * pure API never learns that an activity ended, so without this every spawned child would stay
 * in the persisted snapshot for good and a workflow that spawns in a loop would grow unbounded.
 * Every spawned child is an activity with an entry in `tasks` while it runs.
 */
function withoutFinishedChildren(
  snapshot: AnyMachineSnapshot,
  tasks: Record<string, TaskRef>,
): AnyMachineSnapshot {
  const children = snapshot.children as Record<string, unknown>;
  const finished = Object.keys(children).filter((id) => !(id in tasks));
  if (finished.length === 0) return snapshot;
  const kept: Record<string, unknown> = {};
  for (const [id, child] of Object.entries(children)) if (id in tasks) kept[id] = child;
  // A snapshot is a plain object; XState's own clone is `{ ...snapshot, ...changes }` as well.
  return { ...snapshot, children: kept } as AnyMachineSnapshot;
}

/**
 * A start's priority level: the start's own (`priority` in its body), else the definition's
 * `priority` (a level or a function of the input), else 3.
 */
export function startPriority(
  def: Pick<WorkflowDefinition, 'priority'>,
  message: { input: unknown; priority?: number },
): number {
  return message.priority ?? priorityOf(def, message.input);
}

/**
 * The record of a workflow whose machine starts now (at its start, or at its admission by a
 * concurrency key: then `at.step` is the admission's step). No journal effect: the caller adds it.
 */
function begin(
  ctx: StepContext,
  def: WorkflowDefinition,
  at: {
    type: string;
    id: string;
    shard: number;
    seq: number;
    now: number;
    step: number;
    inbox: string | undefined;
    /** The workflow that started this one as its child (E8). */
    parent?: WorkflowRecord['parent'];
    /** The batch this workflow is an item of (issue 23). */
    batch?: WorkflowRecord['batch'];
    /** The new record's secret (`StepInput.secret`). */
    secret?: string;
    /** The workflow's priority level when not 3 (its activities' default). */
    priority?: number;
  },
  input: unknown,
): Extract<Decision, { kind: 'write' | 'reject' }> {
  const { type, id, shard, seq, now } = at;
  const fields = { workflowId: id, workflowType: type };
  const iat = iso(now);
  let start: ReturnType<typeof m.start>;
  try {
    start = m.start(def.machine, input);
  } catch (cause) {
    return {
      kind: 'reject',
      error: new BadRequestError(
        `workflow ${type}/${id}: the machine threw on start: ${String((cause as Error)?.message ?? cause)}`,
        { ...fields, code: ErrorCode.MachineError, cause },
      ),
      accepts: [],
    };
  }
  const { actions } = start;
  const status = statusOf(start.snapshot);
  const secret = at.secret;
  const priority = at.priority !== undefined && at.priority !== 3 ? at.priority : undefined;
  const head = {
    type,
    id,
    step: at.step,
    ...(secret ? { secret } : {}),
    ...(priority !== undefined ? { priority } : {}),
  };
  const p = materialize(
    def,
    ctx,
    head,
    { timers: {}, tasks: {} },
    m.toCommands(actions, at.step),
    now,
  );
  // The machine refused its input (`jetflow.reject` in the initial transition): nothing exists.
  if (p.reject) return machineReject(p.reject, fields, []) as Extract<Decision, { kind: 'reject' }>;
  const snapshot = withoutFinishedChildren(start.snapshot, p.tasks);
  const timerEvents = timerEventsOf(undefined, p.effects, p.timers);
  const timerDue = timerDueOf(undefined, p.effects, p.timers);
  const rec: WorkflowRecord = {
    v: WIRE_VERSION,
    type,
    id,
    version: def.version,
    status,
    snapshot: m.persist(def.machine, snapshot),
    step: at.step,
    lastSeq: seq,
    outbox: [],
    timers: p.timers,
    ...(timerEvents ? { timerEvents } : {}),
    ...(timerDue ? { timerDue } : {}),
    tasks: p.tasks,
    shard,
    ...(secret ? { secret } : {}),
    ...(priority !== undefined ? { priority } : {}),
    ...(at.inbox !== undefined ? { inbox: at.inbox } : {}),
    createdAt: now,
    updatedAt: now,
    stateSince: now,
    ...(at.parent ? { parent: at.parent } : {}),
    ...(at.batch ? { batch: at.batch } : {}),
  };
  const attributes = searchAttributes(def.searchAttributes, snapshot.context);
  if (attributes || at.batch) {
    rec.attributes = { ...attributes, ...(at.batch ? { [BATCH_ATTRIBUTE]: at.batch.id } : {}) };
  }
  const started: Notification = {
    type: 'started',
    workflowType: type,
    id,
    version: def.version,
    step: at.step,
    at: iat,
    value: snapshot.value,
    input,
    ...(at.parent ? { parent: { type: at.parent.type, id: at.parent.id } } : {}),
    ...(p.emitted.length > 0 ? { emitted: p.emitted } : {}),
  };
  rec.outbox = [
    { kind: 'notify', notification: started },
    ...p.effects,
    ...alertEffects(rec, p.emitted, iat),
  ];
  if (status !== 'running') {
    if (status === 'completed') rec.output = snapshot.output;
    if (status === 'failed') rec.error = errorOfSnapshot(snapshot);
    rec.outbox.push(
      ...windDown(rec, rec),
      {
        kind: 'notify',
        notification: lifecycle(rec, snapshot, 'xstate.init', iat),
      },
      ...endEffects(rec),
    );
    rec.timers = {};
    delete rec.timerEvents;
    delete rec.timerDue;
    rec.tasks = {};
  }
  return {
    kind: 'write',
    record: rec,
    create: true,
    reply: { id, type, version: def.version, created: true },
    live: snapshot,
  };
}

/** The reply to a start (new or repeated) from the workflow's record. */
export function startReply(rec: WorkflowRecord, created: boolean): StartReply {
  return {
    id: rec.id,
    type: rec.type,
    version: rec.version,
    created,
    ...(rec.status === 'deferred'
      ? { deferred: true as const, position: rec.admission?.position ?? 0 }
      : {}),
  };
}

/** The effect that frees a workflow's concurrency slot (or place in the queue) when it ends. */
function keyReleaseOf(rec: WorkflowRecord): Effect[] {
  const a = rec.admission;
  return a ? [{ kind: 'keyRelease', key: a.key, keyToken: a.keyToken }] : [];
}

/**
 * A start beyond its key's limit: stored as `deferred` (the machine does not run; the input is
 * kept for the admission), notified `deferred` with its position. Workflows the start makes
 * cancel (`cancel-in-progress`, `replace-queued`) are sent a cancel by the outbox.
 */
function deferStart(
  ctx: StepContext,
  def: WorkflowDefinition,
  input: StepInput,
  adm: Extract<StartAdmission, { kind: 'deferred' }>,
): Decision {
  const { type, id, seq, shard, now } = input;
  const message = input.message as Extract<InboxMessage, { kind: 'start' }>;
  const level = startPriority(def, message);
  const rec: WorkflowRecord = {
    v: WIRE_VERSION,
    type,
    id,
    version: def.version,
    status: 'deferred',
    snapshot: null,
    step: 0,
    lastSeq: seq,
    outbox: [],
    timers: {},
    tasks: {},
    shard,
    ...(input.inbox !== undefined ? { inbox: input.inbox } : {}),
    ...(message.parent ? { parent: message.parent } : {}),
    ...(message.batch ? { batch: message.batch } : {}),
    ...(level !== DEFAULT_PRIORITY ? { priority: level } : {}),
    createdAt: now,
    updatedAt: now,
    stateSince: now,
    admission: {
      key: adm.key,
      keyToken: adm.keyToken,
      startSeq: seq,
      deferredAt: adm.queuedAt,
      position: adm.position,
      input: message.input,
    },
  };
  rec.outbox = [
    {
      kind: 'notify',
      notification: {
        type: 'deferred',
        workflowType: type,
        id,
        version: def.version,
        step: 0,
        at: iso(now),
        key: adm.key,
        position: adm.position,
        input: message.input,
      },
    },
    ...adm.cancel.map((c): Effect => ({ kind: 'keyCancel', id: c.id, reason: c.reason })),
  ];
  if (ctx.journal) {
    rec.outbox.push({
      kind: 'journal',
      cause: 'start',
      seq,
      event: journalEvent('xstate.init', message.input, ctx.journal.payloadMaxBytes),
    });
  }
  return { kind: 'write', record: rec, create: true, reply: startReply(rec, true) };
}

/**
 * A message for a deferred workflow (its machine has not started). Signals are kept in order
 * (`held`, at most `heldMax`) and applied after the admission; a cancel, terminate or an
 * operator's skip cancels it (it leaves the queue); promote moves it to the head of the queue;
 * an `admit` carrying its start's sequence starts the machine. Results and timers cannot exist.
 */
function deferredStep(
  ctx: StepContext,
  stored: WorkflowRecord,
  input: StepInput,
  memory: Memory,
): Decision {
  const msg = input.message;
  const a = stored.admission!;
  const fields = { workflowType: stored.type, workflowId: stored.id };
  const who = `workflow ${stored.type}/${stored.id}`;
  const value = null;
  const reject = (message: string, code: ErrorCode, details?: unknown): Decision => ({
    kind: 'reject',
    error: new BadRequestError(message, { ...fields, code, ...(details ? { details } : {}) }),
    accepts: [],
  });
  switch (msg.kind) {
    case 'admit': {
      if (msg.startSeq !== a.startSeq) {
        return {
          kind: 'ignore',
          reason: `admit for start ${msg.startSeq}, not this run's (${a.startSeq})`,
        };
      }
      const found = definitionOf(() => ctx.registry.get(stored.type, stored.version));
      if ('defer' in found) return found.defer;
      const began = begin(
        ctx,
        found.def,
        {
          type: stored.type,
          id: stored.id,
          shard: stored.shard,
          ...(input.secret ? { secret: input.secret } : {}),
          seq: input.seq,
          now: input.now,
          step: stored.step + 1,
          inbox: input.inbox ?? stored.inbox,
          ...(stored.parent ? { parent: stored.parent } : {}),
          ...(stored.batch ? { batch: stored.batch } : {}),
          ...(stored.priority !== undefined ? { priority: stored.priority } : {}),
        },
        a.input,
      );
      if (began.kind === 'reject') {
        // The machine refuses the input it was validated with at the start (a new version of
        // the definition): the workflow fails, and its slot goes to the next waiter.
        const rec = failure(
          stored,
          { ...toErrorData(began.error), retryable: false },
          input.seq,
          input.now,
          ctx.journal,
        );
        return { kind: 'write', record: rec, create: false, reply: undefined };
      }
      const rec = began.record;
      rec.createdAt = stored.createdAt;
      if (stored.msgIds) rec.msgIds = stored.msgIds;
      if (stored.requestIds) rec.requestIds = stored.requestIds;
      if (stored.held) rec.held = stored.held;
      rec.admission = {
        key: a.key,
        keyToken: a.keyToken,
        startSeq: a.startSeq,
        deferredAt: a.deferredAt,
        position: a.position,
        admittedAt: msg.at ?? input.now,
      };
      if (rec.status !== 'running') {
        rec.outbox.push(...keyReleaseOf(rec));
        delete rec.held;
      }
      if (ctx.journal) {
        rec.outbox.push({
          kind: 'journal',
          cause: 'admit',
          seq: input.seq,
          event: journalEvent(
            'jetflow.admit',
            {
              key: a.key,
              waitedMs: input.now - (a.deferredAt ?? input.now),
              ...(msg.at !== undefined ? { admittedAt: msg.at } : {}),
            },
            ctx.journal.payloadMaxBytes,
          ),
          from: journalState(value),
        });
      }
      return { ...began, create: false, reply: undefined };
    }
    case 'result':
    case 'progress':
    case 'timer':
      return { kind: 'ignore', reason: `${msg.kind} for a deferred workflow (it has not started)` };
    case 'signal': {
      const held = stored.held ?? [];
      const max = ctx.heldMax ?? HELD_MAX;
      if (held.length >= max) {
        return {
          kind: 'reject',
          error: new RetryableError(
            `${who} is deferred (waiting for a slot of concurrency key ${JSON.stringify(a.key)}) and already holds ${max} signals; retry after it is admitted`,
            { ...fields, code: ErrorCode.Deferred, details: { held: held.length, max } },
          ),
          accepts: [],
        };
      }
      const kept: InboxMessage = { ...msg };
      delete kept.msgId;
      const rec = quietStep(stored, input, memory);
      rec.held = [...held, { seq: input.seq, message: kept }];
      if (ctx.journal) {
        rec.outbox.push({
          kind: 'journal',
          cause: 'signal',
          seq: input.seq,
          event: journalEvent(msg.event.type, eventPayload(msg.event), ctx.journal.payloadMaxBytes),
          from: journalState(value),
          held: true,
        });
      }
      return {
        kind: 'write',
        record: rec,
        create: false,
        reply: {
          id: rec.id,
          type: rec.type,
          step: rec.step,
          status: rec.status,
          value,
          deferred: true,
          held: true,
        },
      };
    }
    case 'cancel':
    case 'admin': {
      if (msg.kind === 'admin' && msg.verb === 'promote') {
        const rec = quietStep(stored, input, memory);
        rec.outbox.push({ kind: 'keyPromote', key: a.key, keyToken: a.keyToken });
        if (ctx.journal) {
          rec.outbox.push({
            kind: 'journal',
            cause: 'operator',
            seq: input.seq,
            event: journalEvent('jetflow.promote', { key: a.key }, ctx.journal.payloadMaxBytes),
            from: journalState(value),
            operator: operatorOf(msg),
          });
        }
        return {
          kind: 'write',
          record: rec,
          create: false,
          reply: adminReply(rec, 'promote', { key: a.key, promoted: true }),
        };
      }
      if (msg.kind === 'admin' && msg.verb !== 'skip' && msg.verb !== 'terminate') {
        return reject(
          `${who} is deferred (waiting for a slot of concurrency key ${JSON.stringify(a.key)}): ${msg.verb} needs an admitted workflow; promote, skip or terminate it`,
          ErrorCode.Deferred,
          { key: a.key },
        );
      }
      const rec = quietStep(stored, input, memory);
      rec.status = 'canceled';
      rec.stateSince = input.now;
      const dropped = rec.held?.length ?? 0;
      delete rec.held;
      rec.admission = { ...a };
      delete rec.admission.input;
      const reason = msg.reason;
      const action = msg.kind === 'admin' ? `jetflow.${msg.verb}` : 'jetflow.cancel';
      // Its parent, its watchers and its batch learn of the end, as for any workflow's end.
      rec.outbox.push(...endEffects(rec, reason), ...keyReleaseOf(rec), {
        kind: 'notify',
        notification: {
          type: 'canceled',
          workflowType: rec.type,
          id: rec.id,
          version: rec.version,
          step: rec.step,
          at: iso(input.now),
          reason,
        },
      });
      if (ctx.journal) {
        rec.outbox.push({
          kind: 'journal',
          cause: msg.kind === 'admin' ? 'operator' : 'cancel',
          seq: input.seq,
          event: journalEvent(
            action,
            reason === undefined ? undefined : { reason },
            ctx.journal.payloadMaxBytes,
          ),
          from: journalState(value),
          ...(msg.kind === 'admin' ? { operator: operatorOf(msg) } : {}),
        });
      }
      return {
        kind: 'write',
        record: rec,
        create: false,
        reply:
          msg.kind === 'admin'
            ? adminReply(rec, msg.verb, {
                status: 'canceled',
                key: a.key,
                ...(dropped ? { heldDropped: dropped } : {}),
              })
            : { id: rec.id, type: rec.type, step: rec.step, status: rec.status, value },
      };
    }
    default:
      return { kind: 'ignore', reason: `${msg.kind} for a deferred workflow` };
  }
}

/**
 * Decide what one message does to one workflow. Throws only on programming errors; machine
 * errors (a throwing guard or assign) come back as a rejection with code `machine_error`.
 */
export function decide(
  ctx: StepContext,
  stored: WorkflowRecord | undefined,
  input: StepInput,
  /** The live snapshot of `stored`, when the caller kept it from the previous step. */
  live?: AnyMachineSnapshot,
): Decision {
  const { registry } = ctx;
  const { type, id, seq, shard, message, now } = input;
  const at = iso(now);
  const fields = { workflowId: id, workflowType: type };
  const inboxId = input.inbox !== undefined ? { inbox: input.inbox } : {};

  // A workflow lives on one shard; a message for it on another shard was not routed by the
  // server's mapping (a forged publish onto a shard subject). Applying it would also mix inbox
  // sequences of two shards' consumers in `lastSeq`.
  const expected =
    stored?.shard ??
    (message.kind === 'start' && ctx.shards ? shardOf(type, id, ctx.shards) : shard);
  if (expected !== shard) {
    return {
      kind: 'reject',
      error: new BadRequestError(
        `message for workflow ${type}/${id} arrived on shard ${shard}, but the workflow's shard is ${expected}`,
        { ...fields, code: ErrorCode.BadRequest, details: { shard, expected } },
      ),
      accepts: [],
    };
  }

  if (message.kind === 'start') {
    if (stored) {
      const reply = startReply(stored, stored.lastSeq === seq);
      const parent = message.parent;
      // A child start again for the same parent task (a re-performed outbox): nothing more.
      if (!parent || stored.parent?.taskId === parent.taskId) return { kind: 'noop', reply };
      return {
        kind: 'noop',
        reply,
        tell: [
          errorResult(
            parent,
            { type, id },
            {
              type: 'ChildAlreadyExists',
              code: ErrorCode.Conflict,
              message: `workflow ${type}/${id} already exists${stored.parent ? ` as the child of ${stored.parent.type}/${stored.parent.id}` : ''}`,
              details: {
                type,
                id,
                status: stored.status,
                ...(stored.parent
                  ? { parent: { type: stored.parent.type, id: stored.parent.id } }
                  : {}),
              },
            },
          ),
        ],
      };
    }
    const found = definitionOf(() => registry.latest(type));
    if ('defer' in found) return found.defer;
    const def = found.def;
    const adm = input.admission;
    if (def.concurrency && !adm) {
      return {
        kind: 'reject',
        error: new RetryableError(
          `workflow ${type}/${id}: ${type} has a concurrency key but this engine has no key store`,
          { ...fields, code: ErrorCode.Config },
        ),
        accepts: [],
      };
    }
    if (adm?.kind === 'deferred') return deferStart(ctx, def, input, adm);
    const began = begin(
      ctx,
      def,
      {
        type,
        id,
        shard,
        seq,
        now,
        step: 0,
        inbox: input.inbox,
        parent: message.parent,
        ...(message.batch ? { batch: message.batch } : {}),
        ...(input.secret ? { secret: input.secret } : {}),
        priority: startPriority(def, message),
      },
      message.input,
    );
    if (began.kind !== 'write') return began;
    const rec = began.record;
    if (adm) {
      rec.admission = {
        key: adm.key,
        keyToken: adm.keyToken,
        startSeq: seq,
        admittedAt: adm.at ?? now,
      };
      // A machine that ends in its initial transition frees the slot at once.
      if (rec.status !== 'running') rec.outbox.push(...keyReleaseOf(rec));
    }
    if (ctx.journal) {
      rec.outbox.push({
        kind: 'journal',
        cause: 'start',
        seq,
        event: journalEvent('xstate.init', message.input, ctx.journal.payloadMaxBytes),
      });
    }
    return { ...began, reply: startReply(rec, true) };
  }

  if (message.kind === 'timer') {
    if (!stored) return { kind: 'ignore', reason: 'timer of a workflow that does not exist' };
    if (stored.status !== 'running')
      return { kind: 'ignore', reason: `timer after the workflow ${stored.status}` };
    if (
      stored.secret &&
      !tokenMatches(timerToken(stored.secret, message.timerId, message.step), message.token)
    )
      return {
        kind: 'ignore',
        forged: true,
        reason: `timer message for ${message.timerId} without the proof of a timer this engine set (forged)`,
      };
    if (stored.timers[message.timerId] !== message.step) {
      return {
        kind: 'ignore',
        reason: `timer ${message.timerId} (set at step ${message.step}) was canceled or already fired`,
      };
    }
  }
  if (message.kind === 'result') {
    if (!stored) return { kind: 'ignore', reason: 'result for a workflow that does not exist' };
    if (stored.status !== 'running')
      return { kind: 'ignore', reason: `result after the workflow ${stored.status}` };
    if (stored.secret && !tokenMatches(taskToken(stored.secret, message.taskId), message.token))
      return forgedResult(message);
    const ref = stored.tasks[message.actorId];
    if (!ref || ref.taskId !== message.taskId) {
      return {
        kind: 'ignore',
        reason: `result of task ${message.taskId} which is no longer current (late, duplicate or canceled)`,
      };
    }
    if (ref.parked) {
      return { kind: 'ignore', reason: `result of task ${message.taskId}, parked for review` };
    }
  }
  if (message.kind === 'admit') {
    if (!stored) return { kind: 'ignore', reason: 'admit of a workflow that does not exist' };
    if (stored.status !== 'deferred')
      return {
        kind: 'ignore',
        reason: `admit of a workflow that is ${stored.status}, not deferred`,
      };
  }
  if (message.kind === 'progress') {
    // An attempt notice is information: applied only when it tells something new.
    if (!stored)
      return { kind: 'ignore', reason: 'attempt notice for a workflow that does not exist' };
    if (stored.status !== 'running')
      return { kind: 'ignore', reason: `attempt notice after the workflow ${stored.status}` };
    if (stored.secret && !tokenMatches(taskToken(stored.secret, message.taskId), message.token))
      return forgedResult(message);
    const ref = stored.tasks[message.actorId];
    if (!ref || ref.taskId !== message.taskId)
      return {
        kind: 'ignore',
        reason: `attempt notice of task ${message.taskId}, no longer current`,
      };
    if (!ref.dispatched)
      return {
        kind: 'ignore',
        reason: `attempt ${message.attempt} of ${ref.activity} failed (${message.error?.message ?? 'error'}); retrying`,
      };
    if (ref.noticed !== undefined && message.attempt <= ref.noticed)
      return { kind: 'ignore', reason: `attempt notice ${message.attempt} already applied` };
    if (stored.paused)
      return { kind: 'ignore', reason: 'attempt notice while the workflow is paused (not held)' };
  }

  if (message.kind === 'signal' && message.startIfAbsent && message.from && !stored) {
    // A send with `startIfAbsent` to a workflow that does not exist: start it (this write), then
    // apply the send against the new record (`again`: the message stays unconsumed until then).
    const d = decide(ctx, undefined, {
      ...input,
      message: { kind: 'start', input: message.startIfAbsent.input },
    });
    if (d.kind !== 'write') return d;
    d.record.lastSeq = seq - 1;
    return { ...d, reply: undefined, again: true };
  }
  if (message.kind === 'watch') {
    const w = message.watcher;
    if (!stored) {
      return {
        kind: 'ignore',
        reason: `watch by ${w.type}/${w.id} of a workflow that does not exist`,
        tell: [
          errorResult(
            w,
            { type, id },
            {
              type: 'ChildNotFound',
              code: ErrorCode.NotFound,
              message: `workflow ${type}/${id} does not exist`,
              details: { type, id },
            },
          ),
        ],
      };
    }
    // An already finished workflow answers at once; a watcher already registered needs nothing.
    if (stored.status !== 'running')
      return { kind: 'noop', reply: undefined, tell: [endResult(stored, w)] };
    if (stored.watchers?.[w.taskId]) return { kind: 'noop', reply: undefined };
  }
  if (message.kind === 'cancel' && message.from) {
    // A parent's cancel (parent close): only the parent task that started this workflow may.
    if (!stored) return { kind: 'ignore', reason: 'cancel from a parent: no such workflow' };
    if (stored.parent?.taskId !== message.from.taskId)
      return {
        kind: 'ignore',
        reason: `cancel from ${message.from.type}/${message.from.id}, which did not start this workflow (task ${message.from.taskId})`,
      };
    if (stored.status !== 'running')
      return {
        kind: 'ignore',
        reason: `cancel from the parent after the workflow ${stored.status}`,
      };
  }
  if (!stored) {
    return {
      kind: 'reject',
      error: new BadRequestError(`workflow ${type}/${id} does not exist`, {
        ...fields,
        code: ErrorCode.NotFound,
      }),
      accepts: [],
    };
  }
  // A cross-workflow send (or a failure report) at or below its sender's watermark is a repeat:
  // a re-performed outbox, also after the server's dedup window has passed.
  const mark = inboundKey(message);
  if (mark && atOrBelow(mark.step, mark.index, stored.inbound?.[mark.key])) {
    // A trigger is told that it was a duplicate (its ledger says so).
    if (message.kind === 'signal' && message.trigger) return duplicateOf(stored, id, type);
    return {
      kind: 'ignore',
      reason: `repeat of send ${mark.key} [${mark.step}, ${mark.index}] (watermark [${stored.inbound?.[mark.key]?.join(', ')}])`,
    };
  }
  // A client's retry of a signal or cancel it already sent (same `Nats-Msg-Id`) is a duplicate,
  // also after the server forgot the id (restart, dedup window passed): the record remembers it.
  const msgKey =
    (message.kind === 'signal' || message.kind === 'cancel') && message.msgId !== undefined
      ? msgIdKey(message.kind, message.msgId)
      : undefined;
  if (msgKey !== undefined && stored.msgIds?.includes(msgKey)) return duplicateOf(stored, id, type);
  const msgIds = remember(stored.msgIds, msgKey, ctx.msgIdMemory ?? MSG_ID_MEMORY);
  const memory: { msgIds?: string[]; requestIds?: string[] } = msgIds.length > 0 ? { msgIds } : {};

  // An operator's repeat of a request it already made (same `requestId`) changes nothing more.
  if (message.kind === 'admin' && message.requestId !== undefined) {
    const reqKey = msgIdKey('admin', message.requestId);
    if (stored.requestIds?.includes(reqKey)) {
      return { kind: 'noop', reply: adminReply(stored, message.verb, {}, true) };
    }
    memory.requestIds = remember(stored.requestIds, reqKey, REQUEST_ID_MEMORY);
  }

  // Not admitted yet by its concurrency key: the machine has not started.
  if (stored.status === 'deferred') return deferredStep(ctx, stored, input, memory);

  if (stored.status !== 'running' && !(message.kind === 'admin' && message.verb === 'reset')) {
    return {
      kind: 'reject',
      error: new BadRequestError(`workflow ${type}/${id} has already finished (${stored.status})`, {
        ...fields,
        code: ErrorCode.AlreadyFinished,
        details: { status: stored.status },
      }),
      accepts: [],
    };
  }

  const found = definitionOf(() => registry.get(type, stored.version));
  if ('defer' in found) return found.defer;
  const def = found.def;
  const snapshot = live ?? m.restore(def.machine, stored.snapshot);
  const stepNo = stored.step + 1;

  if (message.kind === 'watch') {
    // Registered even while paused: it changes nothing the machine sees.
    const rec = quietStep(stored, input, memory);
    rec.watchers = { ...stored.watchers, [message.watcher.taskId]: message.watcher };
    if (ctx.journal) {
      rec.outbox.push({
        kind: 'journal',
        cause: 'watch',
        seq,
        event: journalEvent(
          'jetflow.watch',
          { watcher: message.watcher },
          ctx.journal.payloadMaxBytes,
        ),
        from: journalState(snapshot.value),
      });
    }
    return { kind: 'write', record: rec, create: false, reply: undefined, live: snapshot };
  }
  if (stored.paused && message.kind !== 'admin') {
    return hold(ctx, stored, input, snapshot, memory);
  }
  if (message.kind === 'signal') {
    const debounce = def.debounce?.[message.event.type] as DebounceOptions | undefined;
    if (debounce) {
      return debounceSignal(ctx, debounce, stored, input, message, snapshot, memory, mark);
    }
  }
  if (message.kind === 'admin' && message.verb !== 'terminate') {
    const d = operator(ctx, def, stored, input, message, snapshot, memory);
    if (d) return d;
  }

  const terminate = message.kind === 'admin' && message.verb === 'terminate';
  if (message.kind === 'cancel' || terminate) {
    const reason = message.reason;
    const rec: WorkflowRecord = {
      ...stored,
      status: 'canceled',
      step: stepNo,
      lastSeq: seq,
      ...inboxId,
      ...memory,
      timers: {},
      tasks: {},
      updatedAt: now,
      outbox: [],
    };
    delete rec.timerEvents;
    delete rec.timerDue;
    delete rec.paused;
    delete rec.held;
    rec.outbox = [
      ...windDown(stored, stored),
      ...keyReleaseOf(stored),
      {
        kind: 'notify',
        notification: {
          type: 'canceled',
          workflowType: type,
          id,
          version: rec.version,
          step: stepNo,
          at,
          reason,
        },
      },
      ...endEffects(rec, reason),
    ];
    if (ctx.journal) {
      rec.outbox.push({
        kind: 'journal',
        cause: message.kind === 'admin' ? 'operator' : 'cancel',
        seq,
        event: journalEvent(
          message.kind === 'admin' ? 'jetflow.terminate' : 'jetflow.cancel',
          reason === undefined ? undefined : { reason },
          ctx.journal.payloadMaxBytes,
        ),
        from: journalState(snapshot.value),
        ...(message.kind === 'admin' ? { operator: operatorOf(message) } : {}),
      });
    }
    const dropped = stored.held?.length ?? 0;
    return {
      kind: 'write',
      record: rec,
      create: false,
      reply:
        message.kind === 'admin'
          ? adminReply(rec, 'terminate', {
              status: 'canceled',
              stopped: Object.keys(stored.tasks),
              timersCanceled: Object.keys(stored.timers).length,
              ...(dropped ? { heldDropped: dropped } : {}),
            })
          : { id, type, step: stepNo, status: rec.status, value: snapshot.value as unknown },
      live: snapshot,
    };
  }

  if (
    message.kind === 'result' &&
    !message.ok &&
    stored.tasks[message.actorId]?.onExhausted === 'review' &&
    !stored.tasks[message.actorId]?.dispatched
  ) {
    return park(ctx, stored, input, message, snapshot, memory);
  }

  let event: EventObject;
  /** Set when this step applies a closed debounce window's event. */
  let closedWindow: { key: string; count: number } | undefined;
  let before: Pending = { timers: stored.timers, tasks: stored.tasks };
  const finishTask = (actorId: string) => {
    const tasks = copyOf(before.tasks);
    delete tasks[actorId];
    const timers = copyOf(before.timers);
    const deadline = deadlineTimerId(actorId);
    const setAt = timers[deadline];
    if (setAt !== undefined) {
      delete timers[deadline];
      preEffects.push({
        kind: 'cancelTimer',
        timerId: deadline,
        timerKey: timerKeyOf(stored, deadline, setAt),
      });
    }
    before = { timers, tasks };
  };
  const preEffects: Effect[] = [];
  if (message.kind === 'result' && stored.tasks[message.actorId]?.dispatched) {
    // A task the machine dispatched itself (`jetflow.dispatch`): a `jetflow.task.*` event.
    finishTask(message.actorId);
    event = (message.ok
      ? {
          type: 'jetflow.task.done',
          key: message.actorId,
          taskId: message.taskId,
          output: message.output,
          ...(message.decisions !== undefined ? { decisions: message.decisions } : {}),
          attempt: message.attempt,
        }
      : {
          type: 'jetflow.task.failed',
          key: message.actorId,
          taskId: message.taskId,
          error: message.error,
          attempt: message.attempt,
        }) as unknown as EventObject;
  } else if (message.kind === 'progress') {
    const ref = before.tasks[message.actorId]!;
    before = {
      ...before,
      tasks: { ...before.tasks, [message.actorId]: { ...ref, noticed: message.attempt } },
    };
    event = {
      type: 'jetflow.task.retrying',
      key: message.actorId,
      taskId: message.taskId,
      attempt: message.attempt,
      retryAt: message.retryAt,
      error: message.error,
    } as unknown as EventObject;
  } else if (message.kind === 'result') {
    finishTask(message.actorId);
    event = (message.ok
      ? { type: `xstate.done.actor.${message.actorId}`, output: message.output }
      : {
          type: `xstate.error.actor.${message.actorId}`,
          error: message.error,
        }) as unknown as EventObject;
  } else if (message.kind === 'timer') {
    const timers = copyOf(before.timers);
    delete timers[message.timerId];
    before = { ...before, timers };
    // The event is the one the record stored when the timer was set, not the message's (which
    // anyone able to publish on the inbox could forge). Records from before `timerEvents`
    // existed fall back to the message's event.
    const stuck = stored.timerEvents;
    const timerEvent = stuck && message.timerId in stuck ? stuck[message.timerId] : message.event;
    const ev = timerEvent as { type?: string; actorId?: string; taskId?: string; key?: string };
    if (ev?.type === DEBOUNCE_EVENT && typeof ev.key === 'string') {
      // A debounce window closed: apply the event it kept (its record entry goes with this step).
      const w = stored.debounced?.[ev.key];
      if (!w) return { kind: 'ignore', reason: `debounce window ${ev.key} is not open` };
      closedWindow = { key: ev.key, count: w.count };
      event = w.event as EventObject;
    } else if (ev?.type === DEADLINE_EVENT && typeof ev.actorId === 'string') {
      // An activity's schedule-to-close deadline: if the task is still running, it failed.
      const t = before.tasks[ev.actorId];
      if (!t || t.taskId !== ev.taskId)
        return { kind: 'ignore', reason: 'deadline of a finished activity' };
      const actorId = ev.actorId;
      const tasks = copyOf(before.tasks);
      delete tasks[actorId];
      before = { ...before, tasks };
      preEffects.push(stopTaskEffect(actorId, t));
      const error = {
        type: 'ScheduleToCloseTimeout',
        code: ErrorCode.Timeout,
        message: `activity ${t.activity} did not complete before its schedule-to-close deadline`,
        retryable: false,
      };
      event = (t.dispatched
        ? { type: 'jetflow.task.failed', key: actorId, taskId: t.taskId, error, attempt: 0 }
        : { type: `xstate.error.actor.${actorId}`, error }) as unknown as EventObject;
    } else {
      event = timerEvent as EventObject;
    }
  } else if (message.kind === 'admin' && isNodeAdmin(message)) {
    // A tree's node verb or dispatch pause/resume (E9): the machine checks it against its table.
    event = {
      type: `jetflow.admin.${message.verb}`,
      ...(message.nodeId !== undefined ? { nodeId: message.nodeId } : {}),
      ...(message.attempts !== undefined ? { attempts: message.attempts } : {}),
      ...('output' in message ? { output: message.output } : {}),
      ...(message.decisions !== undefined ? { decisions: message.decisions } : {}),
      ...(message.scope !== undefined ? { scope: message.scope } : {}),
      by: message.by,
      reason: message.reason,
      ...(message.requestId !== undefined ? { requestId: message.requestId } : {}),
    } as EventObject;
  } else if (message.kind === 'admin') {
    // resolve / fail of a parked activity (`operator` checked it is parked).
    const actorId = message.actorId!;
    const parked = stored.tasks[actorId]!.parked!;
    finishTask(actorId);
    event = (message.verb === 'resolve'
      ? { type: `xstate.done.actor.${actorId}`, output: message.output }
      : {
          type: `xstate.error.actor.${actorId}`,
          error: message.error
            ? { ...parked.error, ...message.error, retryable: false }
            : parked.error,
        }) as unknown as EventObject;
  } else if (message.kind === 'signal') {
    event = message.event;
  } else {
    throw new Error('unreachable: a message kind without an event reached the transition');
  }

  // Every delivered event carries the step time (E5): pure machines read time from `$at`, never
  // from a clock. The journal keeps the event as it came (without `$at`).
  // An event sent by another workflow also carries its sender, `$from` (set by the engine only).
  const plain = { ...event } as EventObject & { $from?: unknown };
  delete plain.$from;
  const from = message.kind === 'signal' ? message.from : undefined;
  const delivered = {
    ...plain,
    $at: now,
    ...(from ? { $from: { type: from.type, id: from.id } } : {}),
  } as EventObject;
  let next: ReturnType<typeof m.step>;
  try {
    next = m.step(def.machine, snapshot, delivered);
    // Not taken (no handler in the active states, guards false, or an empty handler): XState
    // returns the very same snapshot and no actions. One transition instead of can() + transition.
    const nodeAdmin = message.kind === 'admin' && isNodeAdmin(message);
    if (nodeAdmin && next.snapshot === snapshot && next.actions.length === 0) {
      return {
        kind: 'reject',
        error: new BadRequestError(
          `workflow ${type}/${id} does not take ${message.verb} ${message.nodeId !== undefined ? 'of a node' : 'with scope "dispatch"'} (${event.type}): only activity trees do`,
          { ...fields, code: ErrorCode.EventNotAccepted, details: { event: event.type } },
        ),
        accepts: [],
      };
    }
    if (message.kind === 'signal' && next.snapshot === snapshot && next.actions.length === 0) {
      const accepts = m.acceptedEvents(snapshot);
      if (accepts.includes(event.type)) {
        // The state handles the event, but every guard of its transitions refused it.
        return {
          kind: 'reject',
          error: new BadRequestError(
            `workflow ${type}/${id} handles event ${JSON.stringify(event.type)} in state ${JSON.stringify(snapshot.value)}, but its guard refused it (with this event and the context as it is)`,
            {
              ...fields,
              code: ErrorCode.GuardRejected,
              details: { event: event.type, value: snapshot.value as unknown },
            },
          ),
          accepts,
        };
      }
      return {
        kind: 'reject',
        error: new BadRequestError(
          `workflow ${type}/${id} cannot take event ${JSON.stringify(event.type)} in state ${JSON.stringify(snapshot.value)}; it accepts ${accepts.length ? accepts.join(', ') : 'no events'} now`,
          {
            ...fields,
            code: ErrorCode.EventNotAccepted,
            details: { event: event.type, value: snapshot.value as unknown },
          },
        ),
        accepts,
      };
    }
  } catch (cause) {
    return {
      kind: 'reject',
      error: new BadRequestError(
        `workflow ${type}/${id}: the machine threw on ${JSON.stringify(event.type)}: ${String((cause as Error)?.message ?? cause)}`,
        { ...fields, code: ErrorCode.MachineError, cause },
      ),
      accepts: m.acceptedEvents(snapshot),
    };
  }
  const status = statusOf(next.snapshot);
  const p = materialize(
    def,
    ctx,
    {
      type,
      id,
      step: stepNo,
      ...(stored.secret ? { secret: stored.secret } : {}),
      ...(stored.priority !== undefined ? { priority: stored.priority } : {}),
    },
    before,
    m.toCommands(next.actions, stepNo),
    now,
  );
  if (p.reject) {
    // A node verb the tree refused (invalid_state, not_found, bad decisions): `accepts` is about
    // signals, not verbs.
    const accepts = message.kind === 'admin' ? [] : m.acceptedEvents(snapshot);
    return machineReject(p.reject, fields, accepts);
  }
  const after = withoutFinishedChildren(next.snapshot, p.tasks);
  const timerEvents = timerEventsOf(stored.timerEvents, p.effects, p.timers);
  const timerDue = timerDueOf(stored.timerDue, p.effects, p.timers);
  const rec: WorkflowRecord = {
    ...stored,
    status,
    snapshot: m.persist(def.machine, after),
    step: stepNo,
    lastSeq: seq,
    ...inboxId,
    ...memory,
    timers: p.timers,
    tasks: p.tasks,
    updatedAt: now,
    stateSince: sameState(snapshot.value, after.value)
      ? (stored.stateSince ?? stored.updatedAt)
      : now,
    outbox: [],
  };
  const attributes = searchAttributes(def.searchAttributes, after.context);
  if (attributes) {
    // The trigger that last started or signaled it is kept beside the definition's attributes.
    // So is a batch item's batch.
    const trig = stored.attributes?.[TRIGGER_ATTRIBUTE];
    rec.attributes = {
      ...attributes,
      ...(trig !== undefined ? { [TRIGGER_ATTRIBUTE]: trig } : {}),
      ...(stored.batch ? { [BATCH_ATTRIBUTE]: stored.batch.id } : {}),
    };
  }
  if (timerEvents) rec.timerEvents = timerEvents;
  else delete rec.timerEvents;
  if (timerDue) rec.timerDue = timerDue;
  else delete rec.timerDue;
  if (closedWindow) {
    const open = { ...stored.debounced };
    delete open[closedWindow.key];
    if (Object.keys(open).length > 0) rec.debounced = open;
    else delete rec.debounced;
  }
  if (mark) rec.inbound = withInbound(stored.inbound, mark.key, mark.step, mark.index);
  rec.outbox = [...preEffects, ...p.effects, ...alertEffects(rec, p.emitted, at)];
  if (status !== 'running') {
    if (status === 'completed') rec.output = next.snapshot.output;
    if (status === 'failed') rec.error = errorOfSnapshot(next.snapshot);
    // Whatever is still pending (e.g. a fire-and-forget activity, a timer of an outer state) ends.
    rec.outbox.push(...windDown(stored, p), ...endEffects(rec), ...keyReleaseOf(stored));
    rec.timers = {};
    delete rec.timerEvents;
    delete rec.timerDue;
    rec.tasks = {};
    // Open debounce windows end with the workflow (their timers were canceled above).
    delete rec.debounced;
  }
  // With the journal on, a transition that neither ends nor starts the workflow is told by its
  // journal entry alone (`<prefix>.journal.<type>.<id>`): one message per step, not two. The
  // events stream keeps the lifecycle (started, completed, failed, canceled, rejected).
  // A step that emitted events is told on the events stream too (that is where they are read).
  if (status !== 'running' || !ctx.journal || p.emitted.length > 0) {
    rec.outbox.push({
      kind: 'notify',
      notification: lifecycle(rec, after, event.type, at, p.emitted),
    });
  }
  if (ctx.journal) {
    rec.outbox.push({
      kind: 'journal',
      cause:
        message.kind === 'admin'
          ? 'operator'
          : message.kind === 'progress'
            ? 'result'
            : message.kind,
      seq,
      event: journalEvent(event.type, eventPayload(plain), ctx.journal.payloadMaxBytes),
      from: journalState(snapshot.value),
      ...(message.kind === 'timer' ? { timerId: message.timerId } : {}),
      ...(from ? { sender: from } : {}),
      ...(message.kind === 'progress'
        ? {
            activity: {
              actorId: message.actorId,
              taskId: message.taskId,
              activity: stored.tasks[message.actorId]?.activity,
              ok: false,
              attempt: message.attempt,
              error: message.error,
            },
          }
        : {}),
      ...(message.kind === 'admin' ? { operator: operatorOf(message) } : {}),
      ...(closedWindow
        ? {
            debounced: { key: closedWindow.key, count: closedWindow.count, applied: true as const },
          }
        : {}),
      ...(message.kind === 'result'
        ? {
            activity: {
              actorId: message.actorId,
              taskId: message.taskId,
              activity: stored.tasks[message.actorId]?.activity,
              ok: message.ok,
              attempt: message.attempt,
              ...(message.ok ? {} : { exhausted: true }),
              ...(message.error ? { error: message.error } : {}),
            },
          }
        : {}),
    });
  }
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply:
      message.kind === 'admin'
        ? adminReply(
            rec,
            message.verb,
            {
              ...(message.actorId !== undefined ? { actorId: message.actorId } : {}),
              ...(message.nodeId !== undefined ? { nodeId: message.nodeId } : {}),
              delivered: event.type,
              value: after.value as unknown,
            },
            false,
            isNodeAdmin(message) ? (p.reply?.value as AdminReply['result']) : undefined,
          )
        : {
            id,
            type,
            step: stepNo,
            status,
            value: after.value as unknown,
            ...(p.reply ? { result: p.reply.value } : {}),
          },
    live: after,
  };
}

/** A rejection the machine asked for (`jetflow.reject`): nothing is stored. */
function machineReject(
  r: { code: string; message: string; details?: unknown },
  fields: { workflowId: string; workflowType: string },
  accepts: string[],
): Decision {
  return {
    kind: 'reject',
    error: new BadRequestError(r.message, {
      ...fields,
      code: r.code as ErrorCode,
      ...(r.details !== undefined ? { details: r.details } : {}),
    }),
    accepts,
  };
}

/**
 * The alerts among a step's emitted events (a string `alert` naming a queue): each is published
 * on `wf.alerts.<queue>.<type>.<id>` with the notification's base fields (E7).
 */
function alertEffects(
  rec: WorkflowRecord,
  emitted: Record<string, unknown>[],
  at: string,
): Effect[] {
  const out: Effect[] = [];
  for (const e of emitted) {
    if (typeof e.alert !== 'string' || !isToken(e.alert)) continue;
    out.push({
      kind: 'alert',
      queue: e.alert,
      alert: {
        ...e,
        workflowType: rec.type,
        id: rec.id,
        version: rec.version,
        step: rec.step,
        at,
      },
    });
  }
  return out;
}

/** The notification for a rejected message (published; nothing stored). */
export function rejection(
  stored: WorkflowRecord | undefined,
  type: string,
  id: string,
  eventType: string,
  error: JetflowError,
  accepts: string[],
  now: number,
): Notification {
  return {
    type: 'rejected',
    workflowType: type,
    id,
    version: stored?.version ?? 0,
    step: stored?.step ?? 0,
    at: iso(now),
    event: eventType,
    error: toErrorData(error),
    accepts,
  };
}

/**
 * The record that ends a workflow whose step can never succeed (a record over `max_payload`, a
 * snapshot that cannot be restored or serialised, an effect the server always rejects): status
 * `failed` with `error`, the last stored snapshot kept as it is, pending activities and timers
 * wound down. `seq` is the inbox message it consumes (`stored.lastSeq` when it consumes none).
 */
export function failure(
  stored: WorkflowRecord,
  error: ErrorData,
  seq: number,
  now: number,
  journal?: JournalOptions,
): WorkflowRecord {
  const step = stored.step + 1;
  const rec: WorkflowRecord = {
    ...stored,
    status: 'failed',
    error,
    step,
    lastSeq: Math.max(seq, stored.lastSeq),
    timers: {},
    tasks: {},
    updatedAt: now,
    outbox: [],
  };
  delete rec.outboxDone;
  delete rec.timerEvents;
  delete rec.timerDue;
  rec.outbox = [
    ...windDown(stored, stored),
    ...keyReleaseOf(stored),
    {
      kind: 'notify',
      notification: {
        type: 'failed',
        workflowType: stored.type,
        id: stored.id,
        version: stored.version,
        step,
        at: iso(now),
        error,
      },
    },
    ...endEffects(rec),
  ];
  if (journal) {
    const value = (stored.snapshot as { value?: unknown } | undefined)?.value;
    rec.outbox.push({
      kind: 'journal',
      cause: 'failure',
      seq: rec.lastSeq,
      event: journalEvent('jetflow.failure', { error }, journal.payloadMaxBytes),
      from: journalState(value),
    });
  }
  return rec;
}

type AdminMessage = Extract<InboxMessage, { kind: 'admin' }>;
type Memory = { msgIds?: string[]; requestIds?: string[] };

/** The journal's record of an operator action. */
function operatorOf(msg: AdminMessage): JournalOperator {
  const params: Record<string, unknown> = {};
  if (msg.actorId !== undefined) params.actorId = msg.actorId;
  if (msg.attempts !== undefined) params.attempts = msg.attempts;
  if ('output' in msg) params.output = msg.output;
  if (msg.error !== undefined) params.error = msg.error;
  if (msg.toStep !== undefined) params.toStep = msg.toStep;
  if (msg.nodeId !== undefined) params.nodeId = msg.nodeId;
  if (msg.decisions !== undefined) params.decisions = msg.decisions;
  if (msg.scope !== undefined) params.scope = msg.scope;
  if (msg.version !== undefined) params.version = msg.version;
  if (msg.expectStep !== undefined) params.expectStep = msg.expectStep;
  if (msg.jobId !== undefined) params.jobId = msg.jobId;
  if (msg.revertOf !== undefined) params.revertOf = msg.revertOf;
  return {
    action: msg.verb,
    by: msg.by,
    reason: msg.reason,
    ...(msg.requestId !== undefined ? { requestId: msg.requestId } : {}),
    ...(Object.keys(params).length > 0 ? { params } : {}),
  };
}

/** The reply to an admin request, from the record it left. */
function adminReply(
  rec: WorkflowRecord,
  action: AdminReply['action'],
  changed: Record<string, unknown>,
  duplicate = false,
  result?: AdminReply['result'],
): AdminReply {
  return {
    id: rec.id,
    type: rec.type,
    action,
    verb: action,
    ...(result !== undefined ? { result } : {}),
    step: rec.step,
    status: rec.status,
    value: (rec.snapshot as { value?: unknown } | undefined)?.value,
    paused: rec.paused !== undefined,
    changed,
    ...(duplicate ? { duplicate: true } : {}),
  };
}

/** A message the record shows was applied already: answered as a duplicate, nothing stored. */
function duplicateOf(stored: WorkflowRecord, id: string, type: string): Decision {
  return {
    kind: 'noop',
    reply: {
      id,
      type,
      step: stored.step,
      status: stored.status,
      value: (stored.snapshot as { value?: unknown } | undefined)?.value,
      duplicate: true,
    },
  };
}

/** The event a message would deliver, as the journal names it (for held messages). */
function heldEvent(stored: WorkflowRecord, msg: InboxMessage): { type: string; payload?: unknown } {
  switch (msg.kind) {
    case 'signal':
      return { type: msg.event.type, payload: eventPayload(msg.event) };
    case 'cancel':
      return { type: 'jetflow.cancel', payload: msg.reason ? { reason: msg.reason } : undefined };
    case 'result':
      return {
        type: `xstate.${msg.ok ? 'done' : 'error'}.actor.${msg.actorId}`,
        payload: msg.ok ? { output: msg.output } : { error: msg.error },
      };
    case 'timer': {
      const ev = (stored.timerEvents?.[msg.timerId] ?? msg.event) as { type?: unknown };
      return { type: typeof ev?.type === 'string' ? ev.type : '(timer)' };
    }
    default:
      return { type: `(${msg.kind})` };
  }
}

/** A base record for a step that changes no state: step + 1, the message consumed. */
function quietStep(stored: WorkflowRecord, input: StepInput, memory: Memory): WorkflowRecord {
  const rec: WorkflowRecord = {
    ...stored,
    step: stored.step + 1,
    lastSeq: input.seq,
    ...(input.inbox !== undefined ? { inbox: input.inbox } : {}),
    ...memory,
    updatedAt: input.now,
    outbox: [],
  };
  return rec;
}

/**
 * A signal of a debounced event type: kept in its window (`debounced`), not applied. The window's
 * durable timer is moved `ms` ahead (the previous setting canceled); when it fires, the step
 * applies the window's event. A signal the current state does not take is refused at once, as an
 * undebounced one would be (a guard is only asked when the window's event is applied).
 */
function debounceSignal(
  ctx: StepContext,
  opts: DebounceOptions,
  stored: WorkflowRecord,
  input: StepInput,
  message: Extract<InboxMessage, { kind: 'signal' }>,
  snapshot: AnyMachineSnapshot,
  memory: Memory,
  mark: { key: string; step: number; index: number } | undefined,
): Decision {
  const fields = { workflowType: input.type, workflowId: input.id };
  const event = message.event;
  const accepts = m.acceptedEvents(snapshot);
  if (!accepts.includes(event.type)) {
    return {
      kind: 'reject',
      error: new BadRequestError(
        `workflow ${input.type}/${input.id} cannot take event ${JSON.stringify(event.type)} in state ${JSON.stringify(snapshot.value)}; it accepts ${accepts.length ? accepts.join(', ') : 'no events'} now`,
        {
          ...fields,
          code: ErrorCode.EventNotAccepted,
          details: { event: event.type, value: snapshot.value as unknown },
        },
      ),
      accepts,
    };
  }
  let windowKey = event.type;
  let kept: unknown;
  try {
    if (opts.key) {
      const k = opts.key(event);
      if (typeof k !== 'string' || k.length === 0 || k.length > 128) {
        throw new Error(`debounce key must be a string of 1 to 128 characters (got ${String(k)})`);
      }
      windowKey = `${event.type}.${k}`;
    }
    const open = stored.debounced?.[windowKey];
    kept =
      !open || opts.keep === undefined || opts.keep === 'last'
        ? event
        : opts.keep === 'first'
          ? open.event
          : opts.keep(open.event as EventObject, event);
    const folded = kept as { type?: unknown } | null;
    if (typeof folded !== 'object' || folded === null || folded.type !== event.type) {
      throw new Error(`debounce fold must return an event of type ${JSON.stringify(event.type)}`);
    }
  } catch (cause) {
    return {
      kind: 'reject',
      error: new BadRequestError(
        `workflow ${input.type}/${input.id}: debounce of ${JSON.stringify(event.type)} threw: ${String((cause as Error)?.message ?? cause)}`,
        { ...fields, code: ErrorCode.MachineError, cause },
      ),
      accepts,
    };
  }
  const open = stored.debounced?.[windowKey];
  const count = (open?.count ?? 0) + 1;
  const rec = quietStep(stored, input, memory);
  const timerId = `${DEBOUNCE_EVENT}.${windowKey}`;
  const dueAt = input.now + opts.ms;
  const setAt = stored.timers[timerId];
  if (setAt !== undefined) {
    rec.outbox.push({ kind: 'cancelTimer', timerId, timerKey: timerKeyOf(rec, timerId, setAt) });
  }
  const timerEvent = { type: DEBOUNCE_EVENT, key: windowKey };
  rec.outbox.push({
    kind: 'timer',
    timerId,
    timerKey: timerKeyOf(rec, timerId, rec.step),
    step: rec.step,
    event: timerEvent,
    delayMs: opts.ms,
    dueAt,
  });
  rec.timers = { ...stored.timers, [timerId]: rec.step };
  rec.timerEvents = { ...stored.timerEvents, [timerId]: timerEvent };
  rec.timerDue = { ...stored.timerDue, [timerId]: dueAt };
  rec.debounced = {
    ...stored.debounced,
    [windowKey]: { event: kept, count, since: open?.since ?? input.now },
  };
  if (mark) rec.inbound = withInbound(stored.inbound, mark.key, mark.step, mark.index);
  if (ctx.journal) {
    rec.outbox.push({
      kind: 'journal',
      cause: 'signal',
      seq: input.seq,
      event: journalEvent(event.type, eventPayload(event), ctx.journal.payloadMaxBytes),
      from: journalState(snapshot.value),
      debounced: { key: windowKey, count, applyAt: dueAt },
    });
  }
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: {
      id: rec.id,
      type: rec.type,
      step: rec.step,
      status: rec.status,
      value: snapshot.value as unknown,
      debounced: { key: windowKey, count, applyAt: new Date(dueAt).toISOString() },
    },
    live: snapshot,
  };
}

/**
 * A message for a paused workflow: kept in the record (`held`, inbox order), not applied. Results
 * and timers are always held (while paused no step starts an activity or sets a timer, so there
 * are at most as many as pending tasks and timers); signals and cancels at most `heldMax`, then
 * refused with a retryable error (nothing stored).
 */
function hold(
  ctx: StepContext,
  stored: WorkflowRecord,
  input: StepInput,
  snapshot: AnyMachineSnapshot,
  memory: Memory,
): Decision {
  const msg = input.message;
  const held = stored.held ?? [];
  if (msg.kind === 'signal' || msg.kind === 'cancel') {
    const max = ctx.heldMax ?? HELD_MAX;
    const public_ = held.filter((h) => h.message.kind === 'signal' || h.message.kind === 'cancel');
    if (public_.length >= max) {
      return {
        kind: 'reject',
        error: new RetryableError(
          `workflow ${input.type}/${input.id} is paused and already holds ${max} signals and cancels; retry after it is resumed`,
          {
            workflowType: input.type,
            workflowId: input.id,
            code: ErrorCode.Paused,
            details: { held: held.length, max },
          },
        ),
        accepts: [],
      };
    }
  }
  if (
    msg.kind === 'result' &&
    held.some((h) => h.message.kind === 'result' && h.message.taskId === msg.taskId)
  ) {
    return { kind: 'ignore', reason: `result of task ${msg.taskId} is already held` };
  }
  const sender = msg.kind === 'signal' ? (msg.from ?? msg.undeliverable) : undefined;
  if (
    sender &&
    held.some((h) => {
      const o =
        h.message.kind === 'signal' ? (h.message.from ?? h.message.undeliverable) : undefined;
      return (
        o !== undefined &&
        o.type === sender.type &&
        o.id === sender.id &&
        o.step === sender.step &&
        o.index === sender.index
      );
    })
  ) {
    return { kind: 'ignore', reason: 'this send is already held' };
  }
  if (
    msg.kind === 'timer' &&
    held.some(
      (h) =>
        h.message.kind === 'timer' &&
        h.message.timerId === msg.timerId &&
        h.message.step === msg.step,
    )
  ) {
    return { kind: 'ignore', reason: `timer ${msg.timerId} is already held` };
  }
  // The client's msg id is remembered now (`memory`): the released message must not be taken
  // for its own duplicate.
  const kept: InboxMessage = { ...msg };
  if (kept.kind === 'signal' || kept.kind === 'cancel') delete kept.msgId;
  const rec = quietStep(stored, input, memory);
  rec.held = [...held, { seq: input.seq, message: kept }];
  if (ctx.journal) {
    const ev = heldEvent(stored, msg);
    rec.outbox.push({
      kind: 'journal',
      cause: msg.kind as 'signal' | 'cancel' | 'result' | 'timer',
      seq: input.seq,
      event: journalEvent(ev.type, ev.payload, ctx.journal.payloadMaxBytes),
      from: journalState(snapshot.value),
      held: true,
    });
  }
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: {
      id: rec.id,
      type: rec.type,
      step: rec.step,
      status: rec.status,
      value: snapshot.value as unknown,
      paused: true,
      held: true,
    },
    live: snapshot,
  };
}

/** A final failure of an activity with `onExhausted: 'review'`: parked, the machine stays. */
function park(
  ctx: StepContext,
  stored: WorkflowRecord,
  input: StepInput,
  msg: Extract<InboxMessage, { kind: 'result' }>,
  snapshot: AnyMachineSnapshot,
  memory: Memory,
): Decision {
  const ref = stored.tasks[msg.actorId]!;
  const rec = quietStep(stored, input, memory);
  const error = msg.error ?? {
    type: 'Error',
    code: ErrorCode.Internal,
    message: 'activity failed',
    retryable: false,
  };
  rec.tasks = {
    ...stored.tasks,
    [msg.actorId]: { ...ref, parked: { error, attempts: msg.attempt, at: input.now } },
  };
  // The schedule-to-close deadline no longer runs: the operator decides now.
  const deadline = deadlineTimerId(msg.actorId);
  const setAt = stored.timers[deadline];
  if (setAt !== undefined) {
    rec.timers = { ...stored.timers };
    delete rec.timers[deadline];
    rec.outbox.push({
      kind: 'cancelTimer',
      timerId: deadline,
      timerKey: timerKeyOf(stored, deadline, setAt),
    });
    if (rec.timerEvents) {
      rec.timerEvents = { ...rec.timerEvents };
      delete rec.timerEvents[deadline];
    }
    if (rec.timerDue) {
      rec.timerDue = { ...rec.timerDue };
      delete rec.timerDue[deadline];
    }
  }
  if (ctx.journal) {
    rec.outbox.push({
      kind: 'journal',
      cause: 'result',
      seq: input.seq,
      event: journalEvent('jetflow.review', { actorId: msg.actorId }, ctx.journal.payloadMaxBytes),
      from: journalState(snapshot.value),
      activity: {
        actorId: msg.actorId,
        taskId: msg.taskId,
        activity: ref.activity,
        ok: false,
        attempt: msg.attempt,
        exhausted: true,
        error,
      },
    });
  }
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: undefined,
    live: snapshot,
  };
}

/**
 * The operator verbs other than terminate. Returns the decision, or undefined for `resolve` and
 * `fail` once checked (they deliver the activity's done or error event through the machine).
 */
function operator(
  ctx: StepContext,
  def: WorkflowDefinition,
  stored: WorkflowRecord,
  input: StepInput,
  msg: AdminMessage,
  snapshot: AnyMachineSnapshot,
  memory: Memory,
): Decision | undefined {
  const fields = { workflowType: stored.type, workflowId: stored.id };
  const reject = (message: string, code: ErrorCode, details?: unknown): Decision => ({
    kind: 'reject',
    error: new BadRequestError(message, { ...fields, code, ...(details ? { details } : {}) }),
    accepts: [],
  });
  const journal = (rec: WorkflowRecord, eventType: string, from: AnyMachineSnapshot) => {
    if (!ctx.journal) return;
    rec.outbox.push({
      kind: 'journal',
      cause: 'operator',
      seq: input.seq,
      event: journalEvent(eventType, undefined, ctx.journal.payloadMaxBytes),
      from: journalState(from.value),
      operator: operatorOf(msg),
    });
  };
  const write = (
    rec: WorkflowRecord,
    changed: Record<string, unknown>,
    live: AnyMachineSnapshot,
  ): Decision => ({
    kind: 'write',
    record: rec,
    create: false,
    reply: adminReply(rec, msg.verb, changed),
    live,
  });
  const who = `workflow ${stored.type}/${stored.id}`;

  if (isNodeAdmin(msg)) {
    // A tree's node verb or dispatch pause/resume: the machine decides (an event), in order
    // with everything else. While the workflow is paused, refused like the other verbs.
    if (stored.paused) {
      return reject(
        `${who} is paused: resume it before ${msg.verb} (or terminate it)`,
        ErrorCode.Paused,
      );
    }
    return undefined;
  }
  if (msg.verb === 'pause') {
    if (stored.paused) {
      return { kind: 'noop', reply: adminReply(stored, 'pause', { alreadyPaused: true }) };
    }
    const rec = quietStep(stored, input, memory);
    rec.paused = { at: input.now, by: msg.by, reason: msg.reason };
    journal(rec, 'jetflow.pause', snapshot);
    return write(rec, { paused: true }, snapshot);
  }
  if (msg.verb === 'resume') {
    if (!stored.paused) {
      return { kind: 'noop', reply: adminReply(stored, 'resume', { notPaused: true }) };
    }
    const rec = quietStep(stored, input, memory);
    delete rec.paused;
    journal(rec, 'jetflow.resume', snapshot);
    // The held messages stay in `held`: the engine applies them one step each, in order, right
    // after this step (and before any later message), see `release`.
    return write(rec, { paused: false, released: stored.held?.length ?? 0 }, snapshot);
  }
  if (stored.paused) {
    return reject(
      `${who} is paused: resume it before ${msg.verb} (or terminate it)`,
      ErrorCode.Paused,
    );
  }
  if (msg.verb === 'migrate') return migrateStep(ctx, stored, input, msg, snapshot, memory);
  if (msg.verb === 'promote' || msg.verb === 'skip') {
    return reject(
      `${who} is ${stored.status}, not deferred: ${msg.verb} acts on a workflow waiting for its concurrency key`,
      ErrorCode.NotDeferred,
      { status: stored.status },
    );
  }
  if (msg.verb === 'release') {
    return reject(
      `${who} is running and holds its slot: cancel or terminate it (the slot is freed when it ends)`,
      ErrorCode.HolderRunning,
    );
  }
  if (msg.verb === 'reset') return reset(ctx, def, stored, input, msg, snapshot, memory);

  // retry, resolve, fail: a parked activity.
  const actorId = msg.actorId!;
  const ref = stored.tasks[actorId];
  const parked = Object.entries(stored.tasks)
    .filter(([, t]) => t.parked)
    .map(([a]) => a);
  if (!ref || !ref.parked) {
    return reject(
      ref
        ? `${who}: activity ${JSON.stringify(actorId)} is running, not parked for review`
        : `${who} has no activity ${JSON.stringify(actorId)}; parked for review: ${parked.length ? parked.join(', ') : 'none'}`,
      ErrorCode.NotParked,
      { actorId, parked },
    );
  }
  if (msg.verb !== 'retry') return undefined;
  const spawn = m.childSpawns(stored.snapshot).find((c) => c.actorId === actorId);
  if (!spawn) {
    return reject(
      `${who}: the snapshot has no child ${JSON.stringify(actorId)} to dispatch again`,
      ErrorCode.NotParked,
      { actorId },
    );
  }
  const rec = quietStep(stored, input, memory);
  const tasks = { ...stored.tasks };
  delete tasks[actorId];
  const p = materialize(
    def,
    ctx,
    rec,
    { timers: stored.timers, tasks },
    [{ ...spawn, ...(msg.attempts !== undefined ? { maxAttempts: msg.attempts } : {}) }],
    input.now,
  );
  rec.tasks = p.tasks;
  rec.timers = p.timers;
  const timerEvents = timerEventsOf(stored.timerEvents, p.effects, p.timers);
  const timerDue = timerDueOf(stored.timerDue, p.effects, p.timers);
  if (timerEvents) rec.timerEvents = timerEvents;
  if (timerDue) rec.timerDue = timerDue;
  rec.outbox.push(...p.effects);
  journal(rec, 'jetflow.retry', snapshot);
  const task = p.effects.find((e) => e.kind === 'task');
  return write(
    rec,
    {
      actorId,
      taskId: p.tasks[actorId]!.taskId,
      attempts: task?.kind === 'task' ? task.task.maxAttempts : undefined,
    },
    snapshot,
  );
}

/**
 * Restore the state the workflow had after step `toStep` (from its journal entry): the snapshot,
 * its activities dispatched again with new task ids, its pending timers re-armed with the time
 * they had left; whatever is pending now is canceled. The step number keeps rising.
 */
function reset(
  ctx: StepContext,
  def: WorkflowDefinition,
  stored: WorkflowRecord,
  input: StepInput,
  msg: AdminMessage,
  snapshot: AnyMachineSnapshot,
  memory: Memory,
): Decision {
  const fields = { workflowType: stored.type, workflowId: stored.id };
  const toStep = msg.toStep!;
  const who = `workflow ${stored.type}/${stored.id}`;
  const out = (message: string, details?: unknown): Decision => ({
    kind: 'reject',
    error: new BadRequestError(message, {
      ...fields,
      code: ErrorCode.StepOutOfRange,
      details: { toStep, step: stored.step, ...(details as object) },
    }),
    accepts: [],
  });
  if (stored.admission && stored.status !== 'running') {
    // Running again would need a slot of its key, which it freed when it ended.
    return {
      kind: 'reject',
      error: new BadRequestError(
        `${who} has ended and freed its slot of concurrency key ${JSON.stringify(stored.admission.key)}: a reset would run it without a slot; start a new workflow instead`,
        { ...fields, code: ErrorCode.ConcurrencyKey, details: { key: stored.admission.key } },
      ),
      accepts: [],
    };
  }
  if (toStep >= stored.step) {
    return out(
      `${who}: toStep ${toStep} is not an earlier step (the workflow is at step ${stored.step})`,
    );
  }
  const entry = input.restore;
  if (!entry || entry.kind !== 'step' || entry.step !== toStep) {
    return out(
      `${who}: step ${toStep} is not in the journal (the journal is off, or its retention removed the entry)`,
    );
  }
  if (entry.snapshot === undefined || entry.snapshotOmitted) {
    return out(
      entry.snapshotOmitted?.folded
        ? `${who}: the journal entry of step ${toStep} has no snapshot (the step was folded into the record write of a later step, whose entry has it)`
        : `${who}: the journal entry of step ${toStep} has no snapshot (it was too large)`,
    );
  }
  if (entry.version !== stored.version) {
    return out(
      `${who}: step ${toStep} ran on version ${entry.version}, the workflow is on ${stored.version}`,
    );
  }
  let restored: AnyMachineSnapshot;
  try {
    restored = m.restore(def.machine, entry.snapshot);
  } catch (cause) {
    return {
      kind: 'reject',
      error: new BadRequestError(
        `${who}: the snapshot of step ${toStep} cannot be restored: ${String((cause as Error)?.message ?? cause)}`,
        { ...fields, code: ErrorCode.MachineError, cause },
      ),
      accepts: [],
    };
  }
  const rec = quietStep(stored, input, memory);
  const stepNo = rec.step;
  // Timers pending at `toStep`, with the time they had left then (deadlines of activities are
  // set again with their dispatch).
  const commands: m.Command[] = m.childSpawns(entry.snapshot);
  const timerEvents: Record<string, unknown> = {};
  for (const [timerId, t] of Object.entries(entry.timers ?? {})) {
    if (timerId.startsWith('jetflow.deadline.')) continue;
    commands.push({
      kind: 'timer',
      timerId,
      event: t.event,
      delayMs: Math.max(0, t.dueAt - entry.at),
    });
    timerEvents[timerId] = t.event;
  }
  const p = materialize(
    def,
    ctx,
    {
      type: stored.type,
      id: stored.id,
      step: stepNo,
      ...(stored.secret ? { secret: stored.secret } : {}),
      ...(stored.priority !== undefined ? { priority: stored.priority } : {}),
    },
    { timers: {}, tasks: {} },
    commands,
    input.now,
  );
  rec.status = 'running';
  rec.snapshot = entry.snapshot;
  rec.timers = p.timers;
  rec.tasks = p.tasks;
  const events = timerEventsOf(undefined, p.effects, p.timers);
  const due = timerDueOf(undefined, p.effects, p.timers);
  if (events) rec.timerEvents = events;
  else delete rec.timerEvents;
  if (due) rec.timerDue = due;
  else delete rec.timerDue;
  delete rec.output;
  delete rec.error;
  delete rec.outboxDone;
  rec.stateSince = input.now;
  if (entry.attributes) rec.attributes = entry.attributes;
  else delete rec.attributes;
  // Cancel what is pending now (a finished workflow has nothing pending), then start anew.
  rec.outbox.push(...windDown(stored, stored), ...p.effects);
  if (ctx.journal) {
    rec.outbox.push({
      kind: 'journal',
      cause: 'operator',
      seq: input.seq,
      event: journalEvent('jetflow.reset', { toStep }, ctx.journal.payloadMaxBytes),
      from: journalState(snapshot.value),
      operator: operatorOf(msg),
    });
  }
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: adminReply(rec, 'reset', {
      toStep,
      from: { status: stored.status, value: snapshot.value as unknown },
      to: { status: 'running', value: restored.value as unknown },
      dispatched: Object.values(p.tasks).map((t) => t.taskId),
      timers: Object.keys(p.timers),
      canceled: { tasks: Object.keys(stored.tasks), timers: Object.keys(stored.timers) },
    }),
    live: restored,
  };
}

/**
 * An operator's migration (`jetflow migrate --apply` / `--revert`): the workflow moves to
 * `msg.version` with `msg.snapshot`, planned by the operator's tool from the record at step
 * `msg.expectStep`. Applied only at that step (a message that came first makes it a `conflict`:
 * the tool reads and plans again), so no signal is lost or applied twice; validated again against
 * the new machine; pending tasks and timers stay as they are (the plan checked they still
 * belong). A workflow this job moved already is a duplicate. The step before's journal entry
 * keeps the old snapshot, so the move can be reverted.
 */
function migrateStep(
  ctx: StepContext,
  stored: WorkflowRecord,
  input: StepInput,
  msg: AdminMessage,
  snapshot: AnyMachineSnapshot,
  memory: Memory,
): Decision {
  const fields = { workflowType: stored.type, workflowId: stored.id };
  const who = `workflow ${stored.type}/${stored.id}`;
  const reject = (message: string, code: ErrorCode, details?: unknown): Decision => ({
    kind: 'reject',
    error: new BadRequestError(message, { ...fields, code, ...(details ? { details } : {}) }),
    accepts: [],
  });
  const to = msg.version!;
  if (msg.jobId !== undefined && stored.migration?.jobId === msg.jobId) {
    return {
      kind: 'noop',
      reply: adminReply(stored, 'migrate', { jobId: msg.jobId, already: true }, true),
    };
  }
  if (stored.step !== msg.expectStep) {
    return reject(
      `${who} is at step ${stored.step}, not ${msg.expectStep}: a message came first; plan the migration again`,
      ErrorCode.Conflict,
      { step: stored.step, expectStep: msg.expectStep },
    );
  }
  let def: WorkflowDefinition;
  try {
    def = ctx.registry.get(stored.type, to);
  } catch {
    return reject(
      `${who}: this engine has no ${stored.type}@${to}; register it on every engine before migrating`,
      ErrorCode.UnknownVersion,
      { version: to },
    );
  }
  const checked = checkSnapshot(stored, def, msg.snapshot);
  if (checked.snapshot === undefined) {
    return reject(
      `${who} cannot move to ${stored.type}@${to}: ${checked.problems.join('; ')}`,
      ErrorCode.InvalidState,
      { problems: checked.problems },
    );
  }
  const live = m.restore(def.machine, checked.snapshot);
  const rec = quietStep(stored, input, memory);
  rec.version = to;
  rec.snapshot = checked.snapshot;
  rec.migration = {
    jobId: msg.jobId ?? msg.requestId ?? `seq-${input.seq}`,
    from: stored.version,
    to,
    step: rec.step,
    at: input.now,
    ...(msg.revertOf !== undefined ? { revertOf: msg.revertOf } : {}),
  };
  if (!sameState(live.value, snapshot.value)) rec.stateSince = input.now;
  const attributes = searchAttributes(def.searchAttributes, live.context);
  const trig = stored.attributes?.[TRIGGER_ATTRIBUTE];
  if (attributes || trig !== undefined)
    rec.attributes = {
      ...attributes,
      ...(trig !== undefined ? { [TRIGGER_ATTRIBUTE]: trig } : {}),
    };
  else delete rec.attributes;
  if (ctx.journal) {
    rec.outbox.push({
      kind: 'journal',
      cause: 'operator',
      seq: input.seq,
      event: journalEvent(
        'jetflow.migrate',
        {
          from: stored.version,
          to,
          ...(msg.jobId !== undefined ? { jobId: msg.jobId } : {}),
          ...(msg.revertOf !== undefined ? { revertOf: msg.revertOf } : {}),
        },
        ctx.journal.payloadMaxBytes,
      ),
      from: journalState(snapshot.value),
      operator: operatorOf(msg),
    });
  }
  rec.outbox.push({
    kind: 'notify',
    notification: lifecycle(rec, live, 'jetflow.migrate', iso(input.now)),
  });
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: adminReply(rec, 'migrate', {
      from: { version: stored.version, value: snapshot.value as unknown },
      to: { version: to, value: live.value as unknown },
      ...(msg.jobId !== undefined ? { jobId: msg.jobId } : {}),
    }),
    live,
  };
}

/**
 * The step that applies the first held message of a resumed workflow (`stored.held[0]`). It is
 * decided as if it arrived now, but keeps its inbox sequence; `lastSeq` does not move back. A
 * held message that can no longer be applied (a signal the state no longer takes, a timer its
 * predecessor canceled) is dropped by a step of its own, journaled with the reason.
 */
export function release(
  ctx: StepContext,
  stored: WorkflowRecord,
  now: number,
  live?: AnyMachineSnapshot,
): Decision {
  const [head, ...rest] = stored.held ?? [];
  if (!head) throw new Error('release: nothing held');
  const base: WorkflowRecord = { ...stored };
  if (rest.length > 0) base.held = rest;
  else delete base.held;
  const input: StepInput = {
    type: stored.type,
    id: stored.id,
    shard: stored.shard,
    seq: head.seq,
    message: head.message,
    now,
    ...(stored.inbox !== undefined ? { inbox: stored.inbox } : {}),
  };
  const d = decide(ctx, base, input, live);
  if (d.kind === 'write') {
    d.record.lastSeq = stored.lastSeq;
    for (const e of d.record.outbox) if (e.kind === 'journal') e.released = true;
    return { ...d, reply: undefined };
  }
  if (d.kind === 'defer') return d;
  const reason =
    d.kind === 'reject' ? d.error.message : d.kind === 'ignore' ? d.reason : 'a duplicate';
  const rec = quietStep(base, { ...input, seq: stored.lastSeq }, {});
  const snapshot = (stored.snapshot as { value?: unknown } | undefined)?.value;
  if (d.kind === 'reject' && head.message.kind === 'signal' && head.message.from) {
    rec.outbox.push(
      sendFailed(stored, head.message.from, head.message.event, {
        type: 'SendFailed',
        code: d.error.code,
        message: d.error.message,
      }),
    );
  }
  if (d.kind === 'reject') {
    rec.outbox.push({
      kind: 'notify',
      notification: rejection(
        stored,
        stored.type,
        stored.id,
        heldEvent(stored, head.message).type,
        d.error,
        d.accepts,
        now,
      ),
    });
  }
  if (ctx.journal) {
    const ev = heldEvent(stored, head.message);
    rec.outbox.push({
      kind: 'journal',
      cause: head.message.kind as 'signal' | 'cancel' | 'result' | 'timer',
      seq: head.seq,
      event: journalEvent(ev.type, ev.payload, ctx.journal.payloadMaxBytes),
      from: journalState(snapshot),
      released: true,
      dropped: { reason, ...(d.kind === 'reject' ? { error: toErrorData(d.error) } : {}) },
    });
  }
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: undefined,
    live: live ?? m.restore(ctx.registry.get(stored.type, stored.version).machine, stored.snapshot),
  };
}
