/**
 * The pure part of a step: given the stored record (or none) and one inbox message, decide the
 * next record and its outbox, or a rejection. No I/O; same inputs give the same outputs.
 */
import { createHash } from 'node:crypto';
import type { AnyMachineSnapshot, AnyStateMachine, EventObject } from 'xstate';
import type { Registry } from './registry.js';
import * as m from './machine.js';
import { resolveActivity } from './activity.js';
import type { Subjects } from '../contracts/subjects.js';
import {
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
  | { kind: 'reject'; error: JetflowError; accepts: string[] };

/** What every step needs besides the record and the message. */
export interface StepContext {
  registry: Registry;
  subjects: Subjects;
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

  if (message.kind === 'start') {
    if (stored) {
      return {
        kind: 'noop',
        reply: { id, type, version: stored.version, created: stored.lastSeq === seq },
      };
    }
    const def = registry.latest(type);
    const { snapshot, actions } = m.start(def.machine, message.input);
    const status = statusOf(snapshot);
    const head = { type, id, step: 0 };
    const p = materialize(
      def.machine,
      ctx,
      head,
      { timers: {}, tasks: {} },
      m.toCommands(actions, 0),
      now,
    );
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
      tasks: p.tasks,
      shard,
      createdAt: now,
      updatedAt: now,
    };
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

  const def = registry.get(type, stored.version);
  const snapshot = live ?? m.restore(def.machine, stored.snapshot);
  const stepNo = stored.step + 1;

  if (message.kind === 'cancel') {
    const rec: WorkflowRecord = {
      ...stored,
      status: 'canceled',
      step: stepNo,
      lastSeq: seq,
      timers: {},
      tasks: {},
      updatedAt: now,
      outbox: [],
    };
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
    const ev = message.event as { type?: string; actorId?: string; taskId?: string };
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
      event = message.event as EventObject;
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
  const rec: WorkflowRecord = {
    ...stored,
    status,
    snapshot: m.persist(def.machine, next.snapshot),
    step: stepNo,
    lastSeq: seq,
    timers: p.timers,
    tasks: p.tasks,
    updatedAt: now,
    outbox: [],
  };
  rec.outbox = [...preEffects, ...p.effects];
  if (status !== 'running') {
    if (status === 'completed') rec.output = next.snapshot.output;
    if (status === 'failed') rec.error = errorOfSnapshot(next.snapshot);
    // Whatever is still pending (e.g. a fire-and-forget activity, a timer of an outer state) ends.
    rec.outbox.push(...windDown(stored, p));
    rec.timers = {};
    rec.tasks = {};
  }
  rec.outbox.push({ kind: 'notify', notification: lifecycle(rec, next.snapshot, event.type, at) });
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: { id, type, step: stepNo, status, value: next.snapshot.value as unknown },
    live: next.snapshot,
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
  return rec;
}
