/**
 * The pure part of a step: given the stored record (or none) and one inbox message, decide the
 * next record and its outbox, or a rejection. No I/O; same inputs give the same outputs.
 */
import type { AnyMachineSnapshot, EventObject } from 'xstate';
import type { Registry } from './registry.js';
import * as m from './machine.js';
import {
  WIRE_VERSION,
  type Effect,
  type InboxMessage,
  type Notification,
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
  | { kind: 'write'; record: WorkflowRecord; create: boolean; reply: unknown }
  /** Nothing to store: reply (start of an existing workflow). */
  | { kind: 'noop'; reply: unknown }
  /** The message cannot be applied now: nothing stored; notify and reply with the error. */
  | { kind: 'reject'; error: JetflowError; accepts: string[] };

export interface StepInput {
  type: string;
  id: string;
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

/** Effects that wind down a workflow: stop every live child and cancel every pending timer. */
function windDown(rec: WorkflowRecord, snapshot: AnyMachineSnapshot): Effect[] {
  const children = Object.keys((snapshot.children ?? {}) as Record<string, unknown>);
  return [
    ...children.map((actorId): Effect => ({ kind: 'stopTask', actorId })),
    ...rec.timers.map((timerId): Effect => ({ kind: 'cancelTimer', timerId })),
  ];
}

/** Pending timer ids after applying `effects` to `before`. */
function nextTimers(before: string[], effects: Effect[]): string[] {
  const set = new Set(before);
  for (const e of effects) {
    if (e.kind === 'timer') set.add(e.timerId);
    else if (e.kind === 'cancelTimer') set.delete(e.timerId);
  }
  return [...set];
}

/**
 * Decide what one message does to one workflow. Throws only on programming errors; machine
 * errors (a throwing guard or assign) come back as a rejection with code `machine_error`.
 */
export function decide(
  registry: Registry,
  stored: WorkflowRecord | undefined,
  input: StepInput,
): Decision {
  const { type, id, seq, message, now } = input;
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
    const effects = m.toEffects(actions, 0, now);
    const status = statusOf(snapshot);
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
      timers: nextTimers([], effects),
      createdAt: now,
      updatedAt: now,
    };
    if (status === 'completed') rec.output = snapshot.output;
    if (status === 'failed') rec.error = errorOfSnapshot(snapshot);
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
    rec.outbox = [{ kind: 'notify', notification: started }, ...effects];
    if (status !== 'running')
      rec.outbox.push({
        kind: 'notify',
        notification: lifecycle(rec, snapshot, 'xstate.init', at),
      });
    return {
      kind: 'write',
      record: rec,
      create: true,
      reply: { id, type, version: def.version, created: true },
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
  const snapshot = m.restore(def.machine, stored.snapshot);
  const stepNo = stored.step + 1;

  if (message.kind === 'cancel') {
    const effects = windDown(stored, snapshot);
    const rec: WorkflowRecord = {
      ...stored,
      status: 'canceled',
      step: stepNo,
      lastSeq: seq,
      timers: [],
      updatedAt: now,
      outbox: [],
    };
    rec.outbox = [
      ...effects,
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
    };
  }

  const event = message.event as EventObject;
  const accepts = m.acceptedEvents(snapshot);
  let next: ReturnType<typeof m.step>;
  try {
    if (!m.canTake(snapshot, event)) {
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
    next = m.step(def.machine, snapshot, event);
  } catch (cause) {
    return {
      kind: 'reject',
      error: new BadRequestError(
        `workflow ${type}/${id}: the machine threw on ${JSON.stringify(event.type)}: ${String((cause as Error)?.message ?? cause)}`,
        {
          ...fields,
          code: ErrorCode.MachineError,
          cause,
        },
      ),
      accepts,
    };
  }
  const effects = m.toEffects(next.actions, stepNo, now);
  const status = statusOf(next.snapshot);
  const rec: WorkflowRecord = {
    ...stored,
    status,
    snapshot: m.persist(def.machine, next.snapshot),
    step: stepNo,
    lastSeq: seq,
    timers: nextTimers(stored.timers, effects),
    updatedAt: now,
    outbox: [],
  };
  if (status === 'completed') rec.output = next.snapshot.output;
  if (status === 'failed') rec.error = errorOfSnapshot(next.snapshot);
  // On reaching a final state XState already emitted stopChild for live children and cancel for
  // the exited states' timers; any timer still pending (set by an earlier state) is cancelled too.
  const finalEffects: Effect[] =
    status === 'running'
      ? []
      : rec.timers.map((timerId): Effect => ({ kind: 'cancelTimer', timerId }));
  if (status !== 'running') rec.timers = [];
  rec.outbox = [
    ...effects,
    ...finalEffects,
    { kind: 'notify', notification: lifecycle(rec, next.snapshot, event.type, at) },
  ];
  return {
    kind: 'write',
    record: rec,
    create: false,
    reply: { id, type, step: stepNo, status, value: next.snapshot.value as unknown },
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
