/**
 * The pure part of the journal: what a step records besides its record (the event, the state
 * before, the activity outcome), search attributes, and the full entry a performer publishes.
 * No I/O, and no XState: clients load it too.
 */
import { fitsPacked, pack } from '../contracts/codec.js';
import {
  WIRE_VERSION,
  type Admission,
  type Effect,
  type JournalAdmission,
  type HistoryReply,
  type JournalEffect,
  type JournalEntry,
  type JournalEvent,
  type JournalState,
  type TaskRef,
  type WorkflowRecord,
} from '../contracts/wire.js';
import { BadRequestError, ErrorCode } from '../errors.js';
import { compile, firstIssue, HistoryRequestSchema } from '../contracts/schemas.js';

/** Default cut of a journaled event payload, in encoded (msgpack) bytes. */
export const JOURNAL_PAYLOAD_MAX_BYTES = 4096;

/** Journal options of the step (absent: the journal is off). */
export interface JournalOptions {
  /** Event payloads larger than this (msgpack bytes) are journaled without payload, marked. */
  payloadMaxBytes: number;
}

/** The event as the journal keeps it: type, payload (the other fields) unless too large. */
export function journalEvent(type: string, payload: unknown, maxBytes: number): JournalEvent {
  if (payload === undefined) return { type };
  // Most payloads are far below the cut: a bound on their size decides without encoding them.
  if (fitsPacked(payload, maxBytes)) return { type, payload };
  let bytes: number;
  try {
    bytes = pack(payload).length;
  } catch {
    return { type, truncated: { bytes: -1 } };
  }
  return bytes > maxBytes ? { type, truncated: { bytes } } : { type, payload };
}

/** The fields of an event object other than `type` (undefined when there are none). */
export function eventPayload(event: object): unknown {
  let rest: Record<string, unknown> | undefined;
  for (const k in event) {
    if (k === 'type' || !Object.prototype.hasOwnProperty.call(event, k)) continue;
    (rest ??= {})[k] = (event as Record<string, unknown>)[k];
  }
  return rest;
}

export function journalState(value: unknown): JournalState {
  return { value, paths: statePaths(value) };
}

/** Read `path` (dot-separated) from `context`. */
function readPath(context: unknown, path: string): unknown {
  let v: unknown = context;
  for (const k of path.split('.')) {
    if (v === null || typeof v !== 'object') return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

/**
 * The definition's search attributes read from `context`: scalars as they are, anything else
 * as JSON text, a missing field as null. Undefined when the definition names none.
 */
export function searchAttributes(
  names: readonly string[] | undefined,
  context: unknown,
): Record<string, string | number | boolean | null> | undefined {
  if (!names || names.length === 0) return undefined;
  const out: Record<string, string | number | boolean | null> = {};
  for (const name of names) {
    const v = readPath(context, name);
    if (v === undefined || v === null) out[name] = null;
    else if (typeof v === 'string' || typeof v === 'boolean') out[name] = v;
    else if (typeof v === 'number') out[name] = Number.isFinite(v) ? v : String(v);
    else out[name] = JSON.stringify(v) ?? null;
  }
  return out;
}

/** `value` under `key`, or its size under `<key>Truncated` when over `maxBytes` encoded. */
function cut<K extends string>(
  key: K,
  value: unknown,
  maxBytes: number,
): Partial<Record<K, unknown>> & Partial<Record<`${K}Truncated`, { bytes: number }>> {
  if (value === undefined) return {};
  if (fitsPacked(value, maxBytes)) {
    return { [key]: value } as Partial<Record<K, unknown>> &
      Partial<Record<`${K}Truncated`, { bytes: number }>>;
  }
  let bytes: number;
  try {
    bytes = pack(value).length;
  } catch {
    bytes = -1;
  }
  return (
    bytes >= 0 && bytes <= maxBytes ? { [key]: value } : { [`${key}Truncated`]: { bytes } }
  ) as Partial<Record<K, unknown>> & Partial<Record<`${K}Truncated`, { bytes: number }>>;
}

/**
 * How the journal lists an outbox effect: a task with its input and a message with its body
 * (each cut over `maxBytes` encoded, like event payloads), the rest without payloads.
 */
export function journalEffect(
  e: Effect,
  maxBytes: number = JOURNAL_PAYLOAD_MAX_BYTES,
): JournalEffect | undefined {
  switch (e.kind) {
    case 'task':
      return {
        kind: 'task',
        actorId: e.task.actorId,
        taskId: e.task.taskId,
        activity: e.task.activity,
        queue: e.task.queue,
        ...cut('input', e.task.input, maxBytes),
      };
    case 'stopTask':
      return { kind: 'stopTask', actorId: e.actorId, taskId: e.taskId };
    case 'timer': {
      const ev = e.event as { type?: unknown } | undefined;
      return {
        kind: 'timer',
        timerId: e.timerId,
        dueAt: e.dueAt,
        event: typeof ev?.type === 'string' ? ev.type : '',
      };
    }
    case 'cancelTimer':
      return { kind: 'cancelTimer', timerId: e.timerId };
    case 'notify':
      return { kind: 'notify', type: e.notification.type };
    case 'alert':
      return { kind: 'alert', queue: e.queue, type: String(e.alert.type) };
    case 'message': {
      // The subject without the prefix (the journal does not know it): `inbox.<kind>.<type>.<id>`.
      const ev = e.body.event as { type?: unknown } | undefined;
      return {
        kind: 'message',
        subject: `inbox.${e.inbox}.${e.to.type}.${e.to.id}`,
        ...(typeof ev?.type === 'string' ? { event: ev.type } : {}),
        ...cut('body', e.body, maxBytes),
      };
    }
    default:
      return undefined;
  }
}

/** Msg id of the journal entry of a record's step: one entry per step. */
export function journalMsgId(type: string, id: string, step: number): string {
  return `${type}.${id}.${step}.j`;
}

/**
 * The full journal entry of `record`'s step, from its `journal` effect, as a reader gets it
 * (without the context: {@link readEntry} adds it). The performer publishes its stored form,
 * {@link storedStepEntry}.
 */
export function stepEntry(
  record: WorkflowRecord,
  effect: Extract<Effect, { kind: 'journal' }>,
  engine: string,
): JournalEntry {
  return buildStepEntry(record, effect, engine, false);
}

/**
 * `storedEntry(stepEntry(record, effect, engine))`, built in one pass: the journal effect of
 * every step goes through here, so the full entry is not built only to be thinned.
 */
export function storedStepEntry(
  record: WorkflowRecord,
  effect: Extract<Effect, { kind: 'journal' }>,
  engine: string,
): JournalEntry {
  return buildStepEntry(record, effect, engine, record.snapshot != null);
}

/**
 * Fields are assigned one by one in a fixed order (not spread from conditional objects: this
 * runs once per step). With `stored`, the fields {@link storedEntry} leaves out are not set.
 */
function buildStepEntry(
  record: WorkflowRecord,
  effect: Extract<Effect, { kind: 'journal' }>,
  engine: string,
  stored: boolean,
): JournalEntry {
  const snap = record.snapshot as { value?: unknown; output?: unknown } | undefined;
  const value = snap?.value;
  const effects: JournalEffect[] = [];
  for (const e of record.outbox) {
    const j = journalEffect(e);
    if (j) effects.push(j);
  }
  const out: Record<string, unknown> = {
    v: WIRE_VERSION,
    kind: 'step',
    workflowType: record.type,
    id: record.id,
    version: record.version,
    step: record.step,
    at: record.updatedAt,
    engine,
    seq: effect.seq,
    cause: effect.cause,
  };
  if (effect.operator) out.operator = effect.operator;
  if (effect.held) out.held = true;
  if (effect.debounced) out.debounced = effect.debounced;
  if (effect.released) out.released = true;
  if (effect.dropped) out.dropped = effect.dropped;
  const emitted = emittedOf(record, effect);
  if (emitted) out.emitted = emitted;
  out.event = effect.event;
  if (effect.from) out.from = effect.from;
  if (effect.trigger) out.trigger = effect.trigger;
  // Stored: `to` is the snapshot's value (and its paths).
  if (!stored) out.to = journalState(value);
  out.status = record.status;
  const stateSince = record.stateSince ?? record.updatedAt;
  if (!stored || stateSince !== record.updatedAt) out.stateSince = stateSince;
  out.snapshot = record.snapshot;
  out.effects = effects;
  let needsReview = false;
  for (const actorId in record.tasks) {
    if (record.tasks[actorId]!.parked !== undefined) {
      needsReview = true;
      break;
    }
  }
  if (!stored || needsReview) out.needsReview = needsReview;
  if (record.paused) out.paused = true;
  let timers: Record<string, { dueAt: number; event: unknown; setAt: number }> | undefined;
  for (const timerId in record.timers) {
    const dueAt = record.timerDue?.[timerId];
    // A timer set before `timerDue` existed has no known due time: it cannot be re-armed.
    if (dueAt !== undefined) {
      (timers ??= {})[timerId] = {
        dueAt,
        event: record.timerEvents?.[timerId],
        setAt: record.timers[timerId]!,
      };
    }
  }
  if (timers) out.timers = timers;
  if (hasKeys(record.tasks)) out.tasks = stored ? slimTasks(record.tasks, effects) : record.tasks;
  if (effect.timerId !== undefined) out.timerId = effect.timerId;
  if (effect.sender) out.sender = effect.sender;
  if (record.attributes) out.attributes = record.attributes;
  if (effect.activity) out.activity = effect.activity;
  if (record.admission && (effect.cause === 'start' || effect.cause === 'admit'))
    out.admission = admissionOf(record.admission);
  if (
    record.output !== undefined &&
    !(
      stored &&
      record.status === 'completed' &&
      (record.output === snap?.output || sameJson(record.output, snap?.output))
    )
  )
    out.output = record.output;
  if (record.error) out.error = record.error;
  out.createdAt = record.createdAt;
  if (stored) {
    // As `storedEntry`: a field whose value is undefined is not stored.
    for (const k in out) if (out[k] === undefined) delete out[k];
  }
  return out as unknown as JournalEntry;
}

/**
 * A folded step's entry (a step whose record write was the one of a later step: see the
 * processor's folding) as it is published: whole while its snapshot and pending tasks surely
 * pack into `maxBytes` (a cheap upper bound, never an encoding), else without them, marked
 * `snapshotOmitted: { bytes: -1, folded: true }`. The last step of the same write carries the
 * full state, so the journal loses no state a reader needs; what goes is the snapshot of each
 * step in between, which a fan-out's results would otherwise store once per result: 1,000
 * activities stored about 100 MB of snapshots (every entry carried the table of those still
 * pending), in O(n²).
 */
export function foldedEntry(entry: JournalEntry, maxBytes: number): JournalEntry {
  if (entry.kind !== 'step' || entry.snapshot == null || entry.snapshotOmitted) return entry;
  if (fitsPacked(entry.snapshot, maxBytes) && (!entry.tasks || fitsPacked(entry.tasks, maxBytes)))
    return entry;
  return withoutSnapshot(entry, { bytes: -1, folded: true }, true);
}

/**
 * A step entry without its snapshot and context (and, with `tasks`, its pending tasks), marked
 * `snapshotOmitted`: what is journaled when the state cannot or need not go with the entry.
 */
export function withoutSnapshot(
  entry: Extract<JournalEntry, { kind: 'step' }>,
  omitted: NonNullable<Extract<JournalEntry, { kind: 'step' }>['snapshotOmitted']>,
  tasks = false,
): JournalEntry {
  const out: Record<string, unknown> = {};
  for (const k in entry) {
    if (k === 'snapshot' || k === 'context' || (tasks && k === 'tasks')) continue;
    const v = (entry as unknown as Record<string, unknown>)[k];
    if (v !== undefined) out[k] = v;
  }
  out.snapshotOmitted = omitted;
  return out as unknown as JournalEntry;
}

/** True when `o` has an enumerable key (without building the array of its keys). */
function hasKeys(o: object): boolean {
  for (const k in o) if (k !== undefined) return true;
  return false;
}

/** A record's admission as the journal keeps it (the input is not repeated). */
function admissionOf(a: Admission): JournalAdmission {
  return {
    key: a.key,
    ...(a.deferredAt !== undefined ? { deferredAt: a.deferredAt, position: a.position } : {}),
    ...(a.admittedAt !== undefined ? { admittedAt: a.admittedAt } : {}),
  };
}

/**
 * The events the step emitted: kept once in the record's outbox, on the step's notification
 * (a large fan-out's `nodes` changes would otherwise be stored twice in the record).
 */
function emittedOf(
  record: WorkflowRecord,
  effect: Extract<Effect, { kind: 'journal' }>,
): Record<string, unknown>[] | undefined {
  if (effect.emitted) return effect.emitted;
  for (const e of record.outbox) {
    if (e.kind === 'notify' && e.notification.emitted && e.notification.step === record.step)
      return e.notification.emitted;
  }
  return undefined;
}

/**
 * A step entry as it is stored: what a reader can rebuild from the rest of the same entry is
 * left out (the server stores four or more entries per workflow, so each byte counts):
 * - `to` (it is `snapshot.value` and its paths),
 * - `stateSince` when it is the entry's `at` (the state was entered at this step),
 * - `needsReview` when false,
 * - `output` when it is `snapshot.output` (a completed workflow),
 * - a pending task's `taskId`, `activity` and `queue` when the task was issued by this step (the
 *   entry's task effect for the same actor has them).
 * The context is never stored (it is `snapshot.context`). An entry whose snapshot is left out
 * (too large for the server) keeps them all. {@link readEntry} restores the full entry; entries
 * written before this form hold the fields already and read unchanged.
 */
export function storedEntry(entry: JournalEntry): JournalEntry {
  if (entry.kind !== 'step' || entry.snapshot == null || entry.snapshotOmitted) return entry;
  const snap = entry.snapshot as { value?: unknown; output?: unknown };
  // Built key by key (not copied and deleted): a plain object msgpack encodes fast.
  const out: Record<string, unknown> = {};
  for (const k in entry) {
    const v = (entry as unknown as Record<string, unknown>)[k];
    if (v === undefined) continue;
    switch (k) {
      case 'context':
        continue;
      case 'to':
        // `stepEntry` builds `to` from the snapshot's value: the same object, nothing to compare.
        if (entry.to.value === snap.value || sameJson(entry.to, journalState(snap.value))) continue;
        break;
      case 'stateSince':
        if (v === entry.at) continue;
        break;
      case 'needsReview':
        if (v === false) continue;
        break;
      case 'output':
        if (entry.status === 'completed' && (v === snap.output || sameJson(v, snap.output)))
          continue;
        break;
      case 'tasks':
        out.tasks = slimTasks(entry.tasks!, entry.effects);
        continue;
    }
    out[k] = v;
  }
  return out as unknown as JournalEntry;
}

/** Pending tasks without the fields of the task effect that issued them in the same entry. */
function slimTasks(
  tasks: Record<string, TaskRef>,
  effects: readonly JournalEffect[],
): Record<string, TaskRef> {
  const out: Record<string, TaskRef> = {};
  for (const actorId in tasks) {
    const t = tasks[actorId]!;
    const issued = effects.some(
      (e) =>
        e.kind === 'task' &&
        e.actorId === actorId &&
        e.taskId === t.taskId &&
        e.activity === t.activity &&
        e.queue === t.queue,
    );
    if (!issued) {
      out[actorId] = t;
      continue;
    }
    const slim: Record<string, unknown> = {};
    for (const k in t) {
      if (k !== 'taskId' && k !== 'activity' && k !== 'queue')
        slim[k] = (t as unknown as Record<string, unknown>)[k];
    }
    out[actorId] = slim as unknown as TaskRef;
  }
  return out;
}

/**
 * A journal entry as a reader gets it: the fields {@link storedEntry} left out filled in from
 * the rest of the entry, and the context from the snapshot. Every reader of the stream decodes
 * through it.
 */
export function readEntry(entry: JournalEntry): JournalEntry {
  if (entry.kind !== 'step') return entry;
  const snap = entry.snapshot as
    { value?: unknown; context?: unknown; output?: unknown } | undefined;
  if (snap == null) return entry;
  const e = entry as Partial<Extract<JournalEntry, { kind: 'step' }>>;
  let tasks = e.tasks;
  if (tasks && Object.values(tasks).some((t) => t.taskId === undefined)) {
    tasks = { ...tasks };
    for (const [actorId, t] of Object.entries(tasks)) {
      if (t.taskId !== undefined) continue;
      const issued = entry.effects.find((x) => x.kind === 'task' && x.actorId === actorId);
      if (issued?.kind === 'task')
        tasks[actorId] = {
          ...t,
          taskId: issued.taskId,
          activity: issued.activity,
          queue: issued.queue,
        };
    }
  }
  return {
    ...entry,
    ...(e.to === undefined ? { to: journalState(snap.value) } : {}),
    ...(e.stateSince === undefined ? { stateSince: entry.at } : {}),
    ...(e.needsReview === undefined ? { needsReview: false } : {}),
    ...(e.output === undefined && entry.status === 'completed' && snap.output !== undefined
      ? { output: snap.output }
      : {}),
    ...(tasks !== e.tasks ? { tasks } : {}),
    ...(e.context === undefined && snap.context !== undefined ? { context: snap.context } : {}),
  };
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/** True when two state values are the same state (value-equal). */
export function sameState(a: unknown, b: unknown): boolean {
  return JSON.stringify(statePaths(a)) === JSON.stringify(statePaths(b));
}

/** Default and maximum page size of a history request. */
export const HISTORY_DEFAULT_LIMIT = 100;
export const HISTORY_MAX_LIMIT = 1000;

/** A validated history request. */
export interface HistoryQuery {
  fromStep: number;
  limit: number;
}

const historyCheck = compile(HistoryRequestSchema);

/** Validate a history request body (already decoded); throws `bad_request` with the reason. */
export function parseHistoryRequest(body: unknown): HistoryQuery {
  if (body === undefined) return { fromStep: 0, limit: HISTORY_DEFAULT_LIMIT };
  if (!historyCheck.Check(body)) {
    const i = firstIssue(historyCheck, body)!;
    const s = i.schema as { minimum?: number; maximum?: number };
    throw new BadRequestError(
      i.field === ''
        ? 'history request body must be an object'
        : i.unknown
          ? `unknown field ${JSON.stringify(i.field)} in history request (fields: fromStep, limit)`
          : `${i.field} must be an integer in ${s.minimum}..${s.maximum}`,
      {
        code: ErrorCode.BadRequest,
        ...(i.field === '' ? {} : { details: { field: i.field, value: i.value, why: i.why } }),
      },
    );
  }
  return {
    fromStep: body.fromStep ?? 0,
    limit: body.limit ?? HISTORY_DEFAULT_LIMIT,
  };
}

/**
 * Collects one page of a workflow's history from its journal entries in stream order. Step
 * entries repeated past the dedup window (a re-performed outbox) are dropped; a page never ends
 * between two entries of the same step number (unless one step alone has more entries than the
 * limit), so `next` (the `fromStep` of the following page) neither repeats nor skips entries.
 */
export class HistoryPage {
  private readonly entries: JournalEntry[] = [];
  private readonly steps = new Set<number>();
  private overflow: number | undefined;

  constructor(private readonly q: HistoryQuery) {}

  /** Offer the next entry in stream order; false once the page is complete. */
  add(entry: JournalEntry): boolean {
    if (this.overflow !== undefined) return false;
    if (entry.step < this.q.fromStep) return true;
    if (entry.kind === 'step') {
      if (this.steps.has(entry.step)) return true;
      this.steps.add(entry.step);
    }
    if (this.entries.length >= this.q.limit) {
      const last = this.entries[this.entries.length - 1]!.step;
      if (entry.step === last && this.entries.every((e) => e.step === last)) {
        // One step with more entries than the limit: the page grows rather than loop.
        this.entries.push(entry);
        return true;
      }
      this.overflow = entry.step;
      return false;
    }
    this.entries.push(entry);
    return true;
  }

  /** The reply: entries with context filled in; `next` null when the journal was exhausted. */
  reply(): HistoryReply {
    let entries = this.entries;
    let next: number | null = null;
    if (this.overflow !== undefined) {
      const cut = this.overflow;
      // Entries of the overflowing step number belong to the next page, whole.
      const keep = entries.filter((e) => e.step < cut);
      if (keep.length > 0) entries = keep;
      next = keep.length > 0 ? cut : cut + 1;
    }
    return { entries: entries.map(readEntry), next };
  }
}

/**
 * Active leaf state paths of a state value, dot-joined and sorted: `"idle"` → `["idle"]`,
 * `{ shipping: "packing" }` → `["shipping.packing"]`, parallel regions give one path each.
 */
export function statePaths(value: unknown): string[] {
  const out: string[] = [];
  const walk = (v: unknown, at: string) => {
    if (typeof v === 'string') {
      out.push(at ? `${at}.${v}` : v);
    } else if (v && typeof v === 'object') {
      const entries = Object.entries(v as Record<string, unknown>);
      if (entries.length === 0 && at) out.push(at);
      for (const [k, child] of entries) walk(child, at ? `${at}.${k}` : k);
    }
  };
  walk(value, '');
  return out.sort();
}
