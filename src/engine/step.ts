/**
 * The pure part of a step: given the stored record (or none) and one inbox message, decide the
 * next record and its outbox, or a rejection. No I/O; same inputs give the same outputs.
 */
import { createHash } from 'node:crypto';
import type { AnyMachineSnapshot, AnyStateMachine, EventObject } from 'xstate';
import type { Registry, WorkflowDefinition } from './registry.js';
import * as m from './machine.js';
import { resolveActivity } from './activity.js';
import {
  eventPayload,
  journalEvent,
  journalState,
  sameState,
  searchAttributes,
  type JournalOptions,
} from './journal.js';
import { shardOf, type Subjects } from '../contracts/subjects.js';
import {
  MSG_ID_MEMORY,
  WIRE_VERSION,
  type Effect,
  type InboxMessage,
  type Notification,
  type TaskRef,
  type WorkflowRecord,
  type WorkflowStatus,
} from '../contracts/wire.js';
import {
  BadRequestError,
  ErrorCode,
  toErrorData,
  type ErrorData,
  type JetflowError,
} from '../errors.js';

/** What a step decided. */
export type Decision =
  /** Write `record` (create when `create`), then perform its outbox, then reply `reply`. */
  | {
      kind: 'write';
      record: WorkflowRecord;
      create: boolean;
      reply: unknown;
      /** The live snapshot `record.snapshot` persists (reusable by the next step, saves a restore). */
      live: AnyMachineSnapshot;
    }
  /** Nothing to store: reply (start of an existing workflow). */
  | { kind: 'noop'; reply: unknown }
  /** Nothing to store, nothing to tell: a late or duplicate result or timer. Logged. */
  | { kind: 'ignore'; reason: string }
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
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}

function statusOf(s: AnyMachineSnapshot): WorkflowStatus {
  if (s.status === 'done') return 'completed';
  if (s.status === 'error' || s.status === 'stopped') return 'failed';
  return 'running';
}

function errorOfSnapshot(s: AnyMachineSnapshot): ErrorData {
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
): Notification {
  const base = { workflowType: rec.type, id: rec.id, version: rec.version, step: rec.step, at };
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
  return { kind: 'stopTask', actorId, taskId: t.taskId, queue: t.queue, taskKey: t.taskKey };
}

/** Internal timer id of an activity's schedule-to-close deadline. */
const deadlineTimerId = (actorId: string) => `jetflow.deadline.${actorId}`;
/** Event type of a fired activity deadline. */
const DEADLINE_EVENT = 'jetflow.deadline';

/** Turn commands into durable effects, tracking pending timers and tasks. */
function materialize(
  machine: AnyStateMachine,
  ctx: StepContext,
  rec: { type: string; id: string; step: number },
  before: Pending,
  commands: m.Command[],
  now: number,
): Pending & { effects: Effect[] } {
  const timers = { ...before.timers };
  const tasks = { ...before.tasks };
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
  for (const c of commands) {
    switch (c.kind) {
      case 'spawn': {
        const a = resolveActivity(machine, c.src, c.input);
        const taskId = `${rec.type}.${rec.id}.${rec.step}.${c.actorId}`;
        const taskKey = taskKeyOf(taskId);
        tasks[c.actorId] = { taskId, taskKey, activity: a.name, queue: a.options.queue };
        const r = a.options.retry;
        effects.push({
          kind: 'task',
          task: {
            v: WIRE_VERSION,
            taskId,
            taskKey,
            workflowType: rec.type,
            workflowId: rec.id,
            actorId: c.actorId,
            activity: a.name,
            queue: a.options.queue,
            input: a.input,
            maxAttempts: r.maxAttempts,
            retry: {
              initialIntervalMs: r.initialIntervalMs,
              backoffCoefficient: r.backoffCoefficient,
              maxIntervalMs: r.maxIntervalMs,
              jitter: r.jitter,
              nonRetryableErrorTypes: r.nonRetryableErrorTypes,
            },
            startToCloseMs: a.options.startToCloseMs,
            ...(a.options.heartbeatMs ? { heartbeatMs: a.options.heartbeatMs } : {}),
            ...(a.options.scheduleToCloseMs ? { deadline: now + a.options.scheduleToCloseMs } : {}),
            resultSubject: ctx.subjects.inbox('result', rec.type, rec.id),
            scheduledAt: now,
          },
        });
        if (a.options.scheduleToCloseMs) {
          // The engine's own deadline: fires even when no worker ever picks the task up.
          setTimer(
            deadlineTimerId(c.actorId),
            { type: DEADLINE_EVENT, actorId: c.actorId, taskId },
            a.options.scheduleToCloseMs,
          );
        }
        break;
      }
      case 'stop': {
        const t = tasks[c.actorId];
        if (!t) break; // already finished: nothing to cancel
        delete tasks[c.actorId];
        effects.push(stopTaskEffect(c.actorId, t));
        cancelTimer(deadlineTimerId(c.actorId));
        break;
      }
      case 'timer':
        setTimer(c.timerId, c.event, c.delayMs);
        break;
      case 'cancelTimer':
        cancelTimer(c.timerId);
        break;
    }
  }
  return { timers, tasks, effects };
}

/** Effects that wind down whatever is still pending when a workflow ends. */
function windDown(w: { type: string; id: string }, p: Pending): Effect[] {
  return [
    ...Object.entries(p.tasks).map(([actorId, t]) => stopTaskEffect(actorId, t)),
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
      return {
        kind: 'noop',
        reply: { id, type, version: stored.version, created: stored.lastSeq === seq },
      };
    }
    const found = definitionOf(() => registry.latest(type));
    if ('defer' in found) return found.defer;
    const def = found.def;
    const start = m.start(def.machine, message.input);
    const { actions } = start;
    const status = statusOf(start.snapshot);
    const head = { type, id, step: 0 };
    const p = materialize(
      def.machine,
      ctx,
      head,
      { timers: {}, tasks: {} },
      m.toCommands(actions, 0),
      now,
    );
    const snapshot = withoutFinishedChildren(start.snapshot, p.tasks);
    const timerEvents = timerEventsOf(undefined, p.effects, p.timers);
    const rec: WorkflowRecord = {
      v: WIRE_VERSION,
      type,
      id,
      version: def.version,
      status,
      snapshot: m.persist(def.machine, snapshot),
      step: 0,
      lastSeq: seq,
      outbox: [],
      timers: p.timers,
      ...(timerEvents ? { timerEvents } : {}),
      tasks: p.tasks,
      shard,
      ...inboxId,
      createdAt: now,
      updatedAt: now,
      stateSince: now,
    };
    const attributes = searchAttributes(def.searchAttributes, snapshot.context);
    if (attributes) rec.attributes = attributes;
    const started: Notification = {
      type: 'started',
      workflowType: type,
      id,
      version: def.version,
      step: 0,
      at,
      value: snapshot.value,
      input: message.input,
    };
    rec.outbox = [{ kind: 'notify', notification: started }, ...p.effects];
    if (status !== 'running') {
      if (status === 'completed') rec.output = snapshot.output;
      if (status === 'failed') rec.error = errorOfSnapshot(snapshot);
      rec.outbox.push(...windDown(rec, rec), {
        kind: 'notify',
        notification: lifecycle(rec, snapshot, 'xstate.init', at),
      });
      rec.timers = {};
      delete rec.timerEvents;
      rec.tasks = {};
    }
    if (ctx.journal) {
      rec.outbox.push({
        kind: 'journal',
        cause: 'start',
        seq,
        event: journalEvent('xstate.init', message.input, ctx.journal.payloadMaxBytes),
      });
    }
    return {
      kind: 'write',
      record: rec,
      create: true,
      reply: { id, type, version: def.version, created: true },
      live: snapshot,
    };
  }

  if (message.kind === 'timer') {
    if (!stored) return { kind: 'ignore', reason: 'timer of a workflow that does not exist' };
    if (stored.status !== 'running')
      return { kind: 'ignore', reason: `timer after the workflow ${stored.status}` };
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
    const ref = stored.tasks[message.actorId];
    if (!ref || ref.taskId !== message.taskId) {
      return {
        kind: 'ignore',
        reason: `result of task ${message.taskId} which is no longer current (late, duplicate or canceled)`,
      };
    }
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
  // A client's retry of a signal or cancel it already sent (same `Nats-Msg-Id`) is a duplicate,
  // also after the server forgot the id (restart, dedup window passed): the record remembers it.
  const msgKey =
    (message.kind === 'signal' || message.kind === 'cancel') && message.msgId !== undefined
      ? msgIdKey(message.kind, message.msgId)
      : undefined;
  if (msgKey !== undefined && stored.msgIds?.includes(msgKey)) {
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
  const msgIds = remember(stored.msgIds, msgKey, ctx.msgIdMemory ?? MSG_ID_MEMORY);
  const memory = msgIds.length > 0 ? { msgIds } : {};

  if (stored.status !== 'running') {
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

  if (message.kind === 'cancel') {
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
    rec.outbox = [
      ...windDown(stored, stored),
      {
        kind: 'notify',
        notification: {
          type: 'canceled',
          workflowType: type,
          id,
          version: rec.version,
          step: stepNo,
          at,
          reason: message.reason,
        },
      },
    ];
    if (ctx.journal) {
      rec.outbox.push({
        kind: 'journal',
        cause: 'cancel',
        seq,
        event: journalEvent(
          'jetflow.cancel',
          message.reason === undefined ? undefined : { reason: message.reason },
          ctx.journal.payloadMaxBytes,
        ),
        from: journalState(snapshot.value),
      });
    }
    return {
      kind: 'write',
      record: rec,
      create: false,
      reply: { id, type, step: stepNo, status: rec.status, value: snapshot.value as unknown },
      live: snapshot,
    };
  }

  let event: EventObject;
  let before: Pending = { timers: stored.timers, tasks: stored.tasks };
  const finishTask = (actorId: string) => {
    const tasks = { ...before.tasks };
    delete tasks[actorId];
    const timers = { ...before.timers };
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
  if (message.kind === 'result') {
    finishTask(message.actorId);
    event = (message.ok
      ? { type: `xstate.done.actor.${message.actorId}`, output: message.output }
      : {
          type: `xstate.error.actor.${message.actorId}`,
          error: message.error,
        }) as unknown as EventObject;
  } else if (message.kind === 'timer') {
    const timers = { ...before.timers };
    delete timers[message.timerId];
    before = { ...before, timers };
    // The event is the one the record stored when the timer was set, not the message's (which
    // anyone able to publish on the inbox could forge). Records from before `timerEvents`
    // existed fall back to the message's event.
    const stuck = stored.timerEvents;
    const timerEvent = stuck && message.timerId in stuck ? stuck[message.timerId] : message.event;
    const ev = timerEvent as { type?: string; actorId?: string; taskId?: string };
    if (ev?.type === DEADLINE_EVENT && typeof ev.actorId === 'string') {
      // An activity's schedule-to-close deadline: if the task is still running, it failed.
      const t = before.tasks[ev.actorId];
      if (!t || t.taskId !== ev.taskId)
        return { kind: 'ignore', reason: 'deadline of a finished activity' };
      const actorId = ev.actorId;
      const tasks = { ...before.tasks };
      delete tasks[actorId];
      before = { ...before, tasks };
      preEffects.push(stopTaskEffect(actorId, t));
      event = {
        type: `xstate.error.actor.${actorId}`,
        error: {
          type: 'ScheduleToCloseTimeout',
          code: ErrorCode.Timeout,
          message: `activity ${t.activity} did not complete before its schedule-to-close deadline`,
          retryable: false,
        },
      } as unknown as EventObject;
    } else {
      event = timerEvent as EventObject;
    }
  } else {
    event = message.event;
  }

  let next: ReturnType<typeof m.step>;
  try {
    next = m.step(def.machine, snapshot, event);
    // Not taken (no handler in the active states, guards false, or an empty handler): XState
    // returns the very same snapshot and no actions. One transition instead of can() + transition.
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
    def.machine,
    ctx,
    { type, id, step: stepNo },
    before,
    m.toCommands(next.actions, stepNo),
    now,
  );
  const after = withoutFinishedChildren(next.snapshot, p.tasks);
  const timerEvents = timerEventsOf(stored.timerEvents, p.effects, p.timers);
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
  if (attributes) rec.attributes = attributes;
  if (timerEvents) rec.timerEvents = timerEvents;
  else delete rec.timerEvents;
  rec.outbox = [...preEffects, ...p.effects];
  if (status !== 'running') {
    if (status === 'completed') rec.output = next.snapshot.output;
    if (status === 'failed') rec.error = errorOfSnapshot(next.snapshot);
    // Whatever is still pending (e.g. a fire-and-forget activity, a timer of an outer state) ends.
    rec.outbox.push(...windDown(stored, p));
    rec.timers = {};
    delete rec.timerEvents;
    rec.tasks = {};
  }
  // With the journal on, a transition that neither ends nor starts the workflow is told by its
  // journal entry alone (`<prefix>.journal.<type>.<id>`): one message per step, not two. The
  // events stream keeps the lifecycle (started, completed, failed, canceled, rejected).
  if (status !== 'running' || !ctx.journal) {
    rec.outbox.push({ kind: 'notify', notification: lifecycle(rec, after, event.type, at) });
  }
  if (ctx.journal) {
    rec.outbox.push({
      kind: 'journal',
      cause: message.kind,
      seq,
      event: journalEvent(event.type, eventPayload(event), ctx.journal.payloadMaxBytes),
      from: journalState(snapshot.value),
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
    reply: { id, type, step: stepNo, status, value: after.value as unknown },
    live: after,
  };
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
  rec.outbox = [
    ...windDown(stored, stored),
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
