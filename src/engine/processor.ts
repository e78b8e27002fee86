/**
 * The step loop of one engine: inbox deliveries in, records and effects out.
 *
 * Per workflow, messages are applied strictly one at a time and in inbox-sequence order; across
 * workflows, concurrently. Each step: load the record (LRU cache or KV) → decide (pure) → write
 * with compare-and-set on the revision read → perform the outbox (deterministic msg ids) →
 * reply → ack.
 *
 * Guarantees, and why:
 * - A transition is applied exactly once: the record stores `lastSeq`, the inbox sequence of the
 *   last applied message; a redelivery at or below it is recognised as a repeat.
 * - Order: before applying message `seq`, the inbox stream is asked for an earlier unapplied
 *   message of the same workflow (`firstFrom(lastSeq + 1)`); if one exists (a message still
 *   held by a dead or stale engine), it is applied first. So a skipped or redelivered message
 *   is never overtaken by a later one.
 * - Fencing: a stale writer's compare-and-set fails; it drops its cache entry and retries from
 *   the stored record, where its message is then a repeat.
 * - Effects are at-least-once, made idempotent by msg ids: an outbox read fresh from KV is
 *   performed again before the next step (its first performance may have been cut by a crash),
 *   unless the record says it was performed (`outboxDone === step`, written after performing an
 *   outbox that starts activities or timers). Effects that failed are retried only after the
 *   store confirms that no other engine wrote the record since; if one did, they are its.
 * - No message is dropped on the word of a record that might be stale: before a message is
 *   acknowledged as ignored or rejected, a cached record is re-read from the store (the stream
 *   leader) and the message decided again if it changed. `forgetShard()` drops a gained shard's
 *   cached records.
 * - Failures are classified: transient ones (timeouts, no responders, lost compare-and-set) are
 *   retried in place with backoff; a step that can never succeed rejects a public request
 *   (error reply, nothing stored changes) or fails the workflow (internal results and timers).
 * - `lastSeq` is only compared with sequences of the same inbox stream incarnation (the record
 *   stores the stream's identity) and of the workflow's own shard (a message on another shard
 *   is rejected without touching the record).
 * - A message whose workflow `type@version` is not registered on this engine is never rejected
 *   or acked: it is given back (nak with a delay) for an engine that knows the definition.
 * - Folding (issue 18): queued messages of one workflow that came in one delivery run (see
 *   `foldable` for why they are contiguous) may be applied in one write (`applyFolded`): each is
 *   still decided on its own and keeps its step, journal entry, notifications and reply; the
 *   record's `lastSeq` is the last one's and its outbox carries the earlier steps' effects.
 */
import { newSecret } from './proof.js';
import { LRUCache } from 'lru-cache';
import type { AnyMachineSnapshot } from 'xstate';
import {
  decide,
  errorResult,
  failure,
  rejection,
  release,
  sendFailed,
  startReply,
  startPriority,
  type Decision,
  type StartAdmission,
  type StepInput,
  type Tell,
  TRIGGER_ATTRIBUTE,
} from './step.js';
import { keyOfInput, keyTokenOf } from './admission.js';
import { fairnessOf } from './activity.js';
import { decodeAdmin } from './admin.js';
import {
  eventPayload,
  foldedEntry,
  journalEvent,
  stepEntry,
  type JournalOptions,
} from './journal.js';
import type { Registry } from './registry.js';
import type { Subjects } from '../contracts/subjects.js';
import type {
  Clock,
  EffectSink,
  AdmissionOutcome,
  AdmissionStage,
  EngineMetrics,
  StepTracing,
  InboxDelivery,
  InboxEntry,
  InboxIdentity,
  InboxReader,
  JournalReader,
  KeyStore,
  Logger,
  RecordStore,
  StoredRecord,
} from './ports.js';
import { pack, unpack } from '../contracts/codec.js';
import {
  WIRE_VERSION,
  type AdminReply,
  type Effect,
  type FoldedStep,
  type InboxMessage,
  type ResultMessage,
  type TriggerOrigin,
  type WorkflowRecord,
} from '../contracts/wire.js';
import {
  AdminInboxSchema,
  AdmitMessageSchema,
  CancelInboxSchema,
  compile,
  firstIssue,
  issueDetails,
  ProgressMessageSchema,
  ResultMessageSchema,
  SignalInboxSchema,
  StartInboxSchema,
  TimerMessageSchema,
  topField,
  WatchInboxSchema,
  WorkflowRefSchema,
  type WireIssue,
} from '../contracts/schemas.js';
import {
  BadRequestError,
  ConflictError,
  EffectsError,
  ErrorCode,
  JetflowError,
  RetryableError,
  TerminalError,
  toErrorData,
} from '../errors.js';
import { DEFAULT_REPLY_PREFIXES, isReplySubject, isToken } from '../contracts/subjects.js';

export interface ProcessorOptions {
  registry: Registry;
  subjects: Subjects;
  store: RecordStore;
  inbox: InboxReader;
  effects: EffectSink;
  clock: Clock;
  logger: Logger;
  /** Max records kept in memory (LRU). A cached record is never trusted over a failed CAS. */
  cacheSize: number;
  /**
   * Max bytes of cached records (estimated: {@link cacheEntryBytes}); the least recently used
   * go first. Default: unbounded by bytes (only by `cacheSize`).
   */
  cacheMaxBytes?: number;
  /**
   * Retention of finished records in the store (0: forever). A cached finished record is
   * forgotten after half of it, so the cache never answers for a record the store removed.
   */
  finishedRetentionMs?: number;
  /** Backoff cap for transient failures of one message (it is retried in place). */
  maxBackoffMs?: number;
  /** Shard count of the server's mapping: a start on another shard than its own is rejected. */
  shards?: number;
  /** Client message ids remembered per workflow (default 64). */
  msgIdMemory?: number;
  /** Subjects the engine replies on must start with one of these (default `_INBOX.`). */
  replyPrefixes?: readonly string[];
  /** Identity of the inbox stream; without it records carry none and are never rebased. */
  inboxIdentity?: InboxIdentity;
  /** Redelivery delay of a message this engine cannot handle (unknown `type@version`). */
  deferDelayMs?: number;
  /** Journal every step, rejection and ignored message (absent: no journal). */
  journal?: JournalOptions;
  /** This engine's name, written into journal entries. */
  engineName?: string;
  /** Reads journal entries for an operator's reset (absent: reset is refused). */
  journalReader?: JournalReader;
  /** Signals and cancels a paused workflow holds at most (default 100). */
  heldMax?: number;
  /** Concurrency keys' records (absent: a start of a type with a concurrency key is refused). */
  keys?: KeyStore;
  /** Counters and timings of the steps (absent: none are kept beyond {@link ProcessorStats}). */
  metrics?: EngineMetrics;
  /** Spans around steps (absent: no tracing, at no cost). */
  tracing?: StepTracing;
  /**
   * Most queued messages of one workflow folded into one record write (default
   * {@link FOLD_MAX_MESSAGES}; 1: every message is a step with a write of its own).
   */
  foldMax?: number;
  /** Most bytes the folded steps may add to the record (default {@link FOLD_MAX_BYTES}). */
  foldMaxBytes?: number;
  /**
   * A folded step's journal entry keeps its snapshot and pending tasks while each surely packs
   * into this many bytes (default {@link FOLD_SNAPSHOT_MAX_BYTES}); else they are left out (see
   * `foldedEntry`).
   */
  foldSnapshotMaxBytes?: number;
  /**
   * With the journal: how long after a step its `outboxDone` write waits (default
   * {@link LAZY_MARK_MS}). A workflow that steps again before then never needs it.
   */
  lazyMarkMs?: number;
}

/**
 * Default delay of an `outboxDone` write with the journal on. Until it lands, a cold load reads
 * the workflow's last journal entry instead (its presence proves the outbox was performed). It
 * must land long before the journal could lose the entry to its retention limits.
 */
export const LAZY_MARK_MS = 5_000;

/** Default most messages of one workflow applied in one record write. */
export const FOLD_MAX_MESSAGES = 64;
/** Default most bytes (msgpack) folded steps add to a record: their journal entries, mostly. */
export const FOLD_MAX_BYTES = 256 * 1024;
/** Default most bytes of a folded step's snapshot (and of its pending tasks) kept in its entry. */
export const FOLD_SNAPSHOT_MAX_BYTES = 16 * 1024;

interface CacheEntry {
  stored: StoredRecord;
  /** The live XState snapshot of `stored` when this engine computed it (saves a restore). */
  live?: AnyMachineSnapshot;

  /** True once this engine performed the record's outbox (or the record says it was). */
  effectsDone: boolean;
  /** Outbox indexes still owed after a partial failure (undefined: the whole outbox). */
  owed?: readonly number[];
  /** The reply of the step that wrote `stored`, for a retry of the same delivery. */
  reply?: unknown;
  /** The replies of the steps folded into `stored`'s write, by inbox sequence (same purpose). */
  replies?: ReadonlyMap<number, unknown>;
}

/**
 * Heap bytes a cache entry costs per byte of its packed record: the decoded record (msgpack is
 * compact; JS objects, property maps and string headers are not) plus the live XState
 * snapshot kept beside a record this engine wrote. Measured by `npm run bench:memory` (heap
 * growth per cached entry / packed record size, 10 KB contexts): 1.4 for a record this engine
 * wrote, 2.5–2.6 for one read back from KV. See the README.
 */
export const CACHE_ENTRY_FACTOR = 3;

/** Estimated heap bytes of a cache entry holding a record of `packedBytes` (at least 1). */
export function cacheEntryBytes(packedBytes: number): number {
  return Math.max(1, Math.ceil(packedBytes * CACHE_ENTRY_FACTOR) + 256);
}

/** What the record cache holds now. */
export interface CacheStats {
  entries: number;
  /** Estimated bytes ({@link cacheEntryBytes}); bounded by `cacheMaxBytes`. */
  bytes: number;
  maxBytes: number;
}

export interface ProcessorStats {
  applied: number;
  repeats: number;
  rejected: number;
  conflicts: number;
  gapFills: number;
  transientErrors: number;
  /** Late or duplicate results and timers, dropped. */
  ignored: number;
  /** Ignore or reject decisions that a re-read of the record overturned (the cache was stale). */
  staleRereads: number;
  /** Follow-up writes that mark an outbox performed (`outboxDone`). */
  outboxMarks: number;
  /** Marks not written because the workflow stepped again before {@link LAZY_MARK_MS}. */
  marksSkipped: number;
  /** Cold loads whose unmarked outbox the journal showed performed (not performed again). */
  journaledOutboxes: number;
  /** Workflows failed because a step could never succeed. */
  poisoned: number;
  /** Messages given back because this engine does not know the workflow's `type@version`. */
  deferred: number;
}

export interface Processor {
  /** Queue a delivery; resolves once it is applied and acked (or left for redelivery on stop). */
  handle(d: InboxDelivery): Promise<void>;
  /** Number of workflows with messages in progress. */
  readonly busy: number;
  readonly stats: Readonly<ProcessorStats>;
  /** Entries and estimated bytes of the record cache. */
  cacheStats(): CacheStats;
  /** Stop taking new work and wait for in-flight messages (those still failing are left unacked). */
  close(): Promise<void>;
  /**
   * Drop the cached records of the workflows of `shard`. Call it when this engine gains the
   * shard: while another engine held it, the cached copies may have gone stale.
   */
  forgetShard(shard: number): void;
}

const keyOf = (type: string, id: string) => `${type}.${id}`;

/** A delivery waiting in its workflow's queue; `taken` once applied (alone or folded). */
interface Queued {
  d: InboxDelivery;
  taken: boolean;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const INBOX = {
  start: compile(StartInboxSchema),
  signal: compile(SignalInboxSchema),
  cancel: compile(CancelInboxSchema),
  watch: compile(WatchInboxSchema),
  result: compile(ResultMessageSchema),
  progress: compile(ProgressMessageSchema),
  timer: compile(TimerMessageSchema),
  admit: compile(AdmitMessageSchema),
  admin: compile(AdminInboxSchema),
};
const refCheck = compile(WorkflowRefSchema);

/**
 * What a bad inbox message of each kind is told (by its top-level field at fault): the messages
 * users of the raw inbox have always seen. `details` names the exact field.
 */
const INBOX_ERRORS: Record<keyof typeof INBOX, (i: WireIssue) => string> = {
  start: (i) =>
    ({
      parent: 'a child start needs parent {type, id, taskId, key}',
      batch: 'a batch item start needs batch {id, item, gen}',
      trigger: 'a trigger start needs trigger {name, seq}',
    })[topField(i)] ?? `start message: ${i.field}: ${i.why}`,
  signal: (i) =>
    ({
      event:
        i.field === 'event.type' && typeof i.value === 'string' && i.value.length > 0
          ? 'event types starting with "xstate." are reserved for the engine'
          : 'signal has no event type',
      from: 'a send needs from {type, id, step, index}',
      undeliverable: 'a send failure needs undeliverable {type, id, step, index}',
      startIfAbsent: 'startIfAbsent must be {input} on a send with from',
      trigger: 'a trigger signal needs trigger {name, seq}',
    })[topField(i)] ?? `signal message: ${i.field}: ${i.why}`,
  cancel: () => "a parent's cancel needs from {type, id, taskId, key}",
  watch: () => 'a watch needs watcher {type, id, taskId, key}',
  result: () => 'activity result needs string taskId, string actorId and boolean ok',
  progress: () => 'attempt notice needs string taskId, actorId, numeric attempt',
  timer: () => 'timer message needs string timerId and numeric step',
  admit: () => 'admit message needs string key and numeric startSeq',
  admin: () => 'admin message needs a known verb, reason and by',
};

/** Decode an inbox body, checking its shape against its subject's kind. */
export function decodeInbox(e: InboxEntry): InboxMessage {
  let body: unknown;
  try {
    body = unpack(e.data);
  } catch (cause) {
    throw new BadRequestError('inbox message body is not valid msgpack', {
      code: ErrorCode.MalformedBody,
      workflowId: e.id,
      workflowType: e.type,
      cause,
    });
  }
  const b = (body ?? {}) as Record<string, unknown>;
  const fail = (kind: keyof typeof INBOX): never => {
    const i = firstIssue(INBOX[kind], b)!;
    throw new BadRequestError(
      i.field === '' ? `${kind} message body must be an object` : INBOX_ERRORS[kind](i),
      {
        code: ErrorCode.BadRequest,
        workflowId: e.id,
        workflowType: e.type,
        details: issueDetails(i),
      },
    );
  };
  switch (e.kind) {
    case 'start': {
      if (!INBOX.start.Check(b)) return fail('start');
      return {
        kind: 'start',
        input: b.input,
        ...(b.priority !== undefined ? { priority: b.priority } : {}),
        ...(b.parent !== undefined ? { parent: b.parent } : {}),
        ...(b.batch !== undefined ? { batch: b.batch } : {}),
        ...(b.trigger !== undefined ? { trigger: b.trigger as TriggerOrigin } : {}),
      };
    }
    case 'cancel': {
      if (!INBOX.cancel.Check(b)) return fail('cancel');
      return {
        kind: 'cancel',
        reason: typeof b.reason === 'string' ? b.reason : undefined,
        ...(typeof b.msgId === 'string' ? { msgId: b.msgId } : {}),
        ...(b.from !== undefined ? { from: b.from } : {}),
      };
    }
    case 'watch':
      if (!INBOX.watch.Check(b)) return fail('watch');
      return { kind: 'watch', watcher: b.watcher };
    case 'result': {
      if (b.progress === 'retrying') {
        // An attempt notice (E3), on the result subject before the worker's nak.
        if (!INBOX.progress.Check(b)) return fail('progress');
        return {
          kind: 'progress',
          taskId: b.taskId,
          actorId: b.actorId,
          progress: 'retrying',
          attempt: b.attempt,
          retryAt: typeof b.retryAt === 'number' ? b.retryAt : 0,
          ...(typeof b.token === 'string' ? { token: b.token } : {}),
          error: (b.error ?? {
            type: 'Error',
            code: ErrorCode.Internal,
            message: 'attempt failed',
            retryable: true,
          }) as ResultMessage['error'] & object,
        };
      }
      if (!INBOX.result.Check(b)) return fail('result');
      return {
        kind: 'result',
        taskId: b.taskId,
        actorId: b.actorId,
        ok: b.ok,
        output: b.output,
        error: b.error as ResultMessage['error'],
        attempt: typeof b.attempt === 'number' ? b.attempt : 0,
        ...(b.decisions !== undefined ? { decisions: b.decisions } : {}),
        ...(refCheck.Check(b.from) ? { from: { type: b.from.type, id: b.from.id } } : {}),
        ...(typeof b.token === 'string' ? { token: b.token } : {}),
      };
    }
    case 'timer': {
      if (!INBOX.timer.Check(b)) return fail('timer');
      return {
        kind: 'timer',
        timerId: b.timerId,
        step: b.step,
        event: b.event,
        ...(typeof b.dueAt === 'number' ? { dueAt: b.dueAt } : {}),
        ...(typeof b.token === 'string' ? { token: b.token } : {}),
      };
    }
    case 'admin':
      if (!INBOX.admin.Check(b)) return fail('admin');
      return decodeAdmin(b, { workflowType: e.type, workflowId: e.id });
    case 'admit': {
      if (!INBOX.admit.Check(b)) return fail('admit');
      return {
        kind: 'admit',
        key: b.key,
        startSeq: b.startSeq,
        ...(typeof b.at === 'number' ? { at: b.at } : {}),
      };
    }
    case 'signal': {
      if (!INBOX.signal.Check(b)) return fail('signal');
      const start = b.startIfAbsent;
      if (start !== undefined && !b.from) {
        throw new BadRequestError('startIfAbsent must be {input} on a send with from', {
          code: ErrorCode.BadRequest,
          workflowId: e.id,
          workflowType: e.type,
          details: { field: 'startIfAbsent', why: 'only on a send with from' },
        });
      }
      return {
        kind: 'signal',
        event: b.event,
        ...(typeof b.msgId === 'string' ? { msgId: b.msgId } : {}),
        ...(b.trigger !== undefined ? { trigger: b.trigger as TriggerOrigin } : {}),
        ...(b.from !== undefined ? { from: b.from } : {}),
        ...(start !== undefined ? { startIfAbsent: { input: start.input ?? null } } : {}),
        ...(b.undeliverable !== undefined ? { undeliverable: b.undeliverable } : {}),
      };
    }
    default:
      throw new BadRequestError(
        `inbox kind ${JSON.stringify(e.kind)} is not handled by this engine`,
        {
          code: ErrorCode.BadRequest,
          workflowId: e.id,
          workflowType: e.type,
        },
      );
  }
}

export function createProcessor(opts: ProcessorOptions): Processor {
  const { store, inbox, effects, clock, logger } = opts;
  const metrics = opts.metrics;
  const tracing = opts.tracing;
  /** Seconds since `t0` (a `performance.now()`), for the phase histograms. */
  const since = (t0: number) => (performance.now() - t0) / 1000;
  /** Count an applied write: the step, and the lifecycle change from `before` to `after`. */
  const countWrite = (before: WorkflowRecord | undefined, after: WorkflowRecord) => {
    stats.applied++;
    if (!metrics) return;
    metrics.step(after.type, 'applied');
    const was = before?.status;
    if (was === undefined) metrics.lifecycle(after.type, 'started');
    if (was === after.status) return;
    if (after.status === 'completed' || after.status === 'failed' || after.status === 'canceled')
      metrics.lifecycle(after.type, after.status);
  };
  /**
   * Count what the admission stages did in a written step: a start deferred on its concurrency
   * key or a deferred workflow admitted, a debounced signal held (opens a window) or merged (into
   * an open one), a window's event applied (admitted).
   */
  const countAdmission = (
    message: InboxMessage,
    decision: Extract<Decision, { kind: 'write' }>,
    before: WorkflowRecord | undefined,
    r: WorkflowRecord,
  ) => {
    if (!metrics?.admission) return;
    const count = (stage: AdmissionStage, outcome: AdmissionOutcome) =>
      metrics.admission?.(stage, outcome);
    if (message.kind === 'start' && r.status === 'deferred') count('concurrency-key', 'deferred');
    else if (before?.status === 'deferred' && r.status !== 'deferred')
      count('concurrency-key', 'admitted');
    const d = (decision.reply as { debounced?: { count: number } } | undefined)?.debounced;
    if (d) count('debounce', d.count > 1 ? 'merged' : 'held');
    else if (
      message.kind === 'timer' &&
      before?.debounced !== undefined &&
      Object.keys(r.debounced ?? {}).length < Object.keys(before.debounced).length
    )
      count('debounce', 'admitted');
  };
  const ctx = {
    registry: opts.registry,
    subjects: opts.subjects,
    shards: opts.shards,
    msgIdMemory: opts.msgIdMemory,
    journal: opts.journal,
    heldMax: opts.heldMax,
  };
  const engineName = opts.engineName ?? 'engine';
  const replyPrefixes = opts.replyPrefixes ?? DEFAULT_REPLY_PREFIXES;
  const identity = opts.inboxIdentity;
  const deferDelayMs = opts.deferDelayMs ?? 5_000;
  // Last time an unknown definition was logged, per `type@version` (logged loudly, not per message).
  const deferLogged = new Map<string, number>();
  const maxBackoffMs = opts.maxBackoffMs ?? 5_000;
  const maxBytes = opts.cacheMaxBytes ?? 0;
  const cache = new LRUCache<string, CacheEntry>({
    max: Math.max(1, opts.cacheSize),
    ...(maxBytes > 0
      ? { maxSize: maxBytes, sizeCalculation: (e: CacheEntry) => cacheEntryBytes(e.stored.bytes) }
      : {}),
  });
  const finishedTtl = Math.floor((opts.finishedRetentionMs ?? 0) / 2);
  /**
   * Cache an entry. A finished record leaves the cache after half its retention: the store
   * removes it after the retention, and a start or signal must then find no workflow.
   */
  const remember = (key: string, entry: CacheEntry) => {
    // A newer record of the workflow: the mark waiting for the older one is not needed.
    const mark = lazyMarks?.get(key);
    if (mark && mark.entry !== entry) {
      lazyMarks!.delete(key);
      stats.marksSkipped++;
    }
    const st = entry.stored.record.status;
    const finished = st !== 'running' && st !== 'deferred';
    cache.set(key, entry, finished && finishedTtl > 0 ? { ttl: finishedTtl } : undefined);
  };
  const tails = new Map<string, Promise<void>>();
  /** Deliveries of each workflow not yet applied, in the order they were handed over. */
  const queues = new Map<string, Queued[]>();
  const foldMax = Math.max(1, opts.foldMax ?? FOLD_MAX_MESSAGES);
  const foldMaxBytes = opts.foldMaxBytes ?? FOLD_MAX_BYTES;
  const foldSnapshotMaxBytes = opts.foldSnapshotMaxBytes ?? FOLD_SNAPSHOT_MAX_BYTES;
  /**
   * The head of a workflow's queue and the deliveries behind it that may be applied in the same
   * write: those of the head's delivery run (`InboxDelivery.run`), up to `foldMax`.
   *
   * Why they are contiguous for the workflow (no message of it lies between them in the inbox
   * that is not among them): deliveries of one run are first deliveries of one shard consumer
   * with consecutive delivery sequences, all received by this subscription. A consumer delivers
   * each message of its filter for the first time in stream order, numbering every delivery; so
   * every message of the shard's subjects stored between two deliveries of a run was delivered
   * for the first time between them, to this engine, and handed to `handle` between them. A
   * message of this workflow among those is therefore queued between them here, and a queue is
   * applied from its head in order. The head itself is checked against the stream as before
   * (`firstFrom(lastSeq + 1)`), and every write is a compare-and-set, so an engine that
   * applied any of them meanwhile makes this write fail and the deliveries be decided again.
   */
  const foldable = (q: readonly Queued[]): Queued[] => {
    const head = q[0]!;
    const out = [head];
    if (foldMax <= 1 || head.d.run === undefined) return out;
    for (let i = 1; i < q.length && out.length < foldMax; i++) {
      const x = q[i]!;
      if (x.d.run !== head.d.run || x.d.seq <= out[out.length - 1]!.d.seq) break;
      out.push(x);
    }
    return out;
  };
  // Inbox sequences this engine handled without a record write (rejections, ignored results and
  // timers, repeated starts): their acks are asynchronous, so the gap check can still see them.
  const handledWithoutWrite = new LRUCache<number, true>({ max: 10_000 });
  const stats: ProcessorStats = {
    ignored: 0,
    applied: 0,
    repeats: 0,
    rejected: 0,
    conflicts: 0,
    gapFills: 0,
    transientErrors: 0,
    staleRereads: 0,
    outboxMarks: 0,
    marksSkipped: 0,
    journaledOutboxes: 0,
    poisoned: 0,
    deferred: 0,
  };
  let stopping = false;

  const entryOf = (stored: StoredRecord): CacheEntry => ({
    stored,
    effectsDone: stored.record.outboxDone === stored.record.step,
  });

  /** The workflow's step as cached here (for log lines; undefined when not cached). */
  const stepOf = (type: string, id: string) => cache.peek(keyOf(type, id))?.stored.record.step;
  /** The fields every log line about a workflow carries (the trace id comes from the logger). */
  const wf = (type: string, id: string) => ({
    workflowType: type,
    workflowId: id,
    step: stepOf(type, id),
  });

  /** The cached record, or the stored one (`fresh`: read from the store by this call). */
  async function load(
    type: string,
    id: string,
  ): Promise<{ cur: CacheEntry | undefined; fresh: boolean }> {
    if (!metrics) return loadRecord(type, id);
    const t0 = performance.now();
    try {
      return await loadRecord(type, id);
    } finally {
      metrics.phase('load', since(t0));
    }
  }

  async function loadRecord(
    type: string,
    id: string,
  ): Promise<{ cur: CacheEntry | undefined; fresh: boolean }> {
    const key = keyOf(type, id);
    const hit = cache.get(key);
    metrics?.cache(hit !== undefined);
    if (hit && hit.owed === undefined) return { cur: hit, fresh: false };
    if (hit) {
      // Effects of this step failed and are about to be retried. If another engine wrote the
      // record meanwhile (the shard moved while this one retried), that engine took the outbox
      // over (it performs an unmarked outbox when it loads it): performing these effects now
      // would be late, e.g. re-publish a timer the new owner has already canceled.
      const now = await store.get(type, id);
      if (now && now.revision === hit.stored.revision) return { cur: hit, fresh: true };
      cache.delete(key);
      if (!now) return { cur: undefined, fresh: true };
      logger.info(
        { workflowType: type, workflowId: id, step: hit.stored.record.step },
        'record written by another engine while effects of this step were owed; they are left to it',
      );
      const entry = await journaledOutbox(entryOf(now));
      remember(key, entry);
      return { cur: entry, fresh: true };
    }
    const stored = await store.get(type, id);
    if (!stored) return { cur: undefined, fresh: true };
    const entry = await journaledOutbox(entryOf(stored));
    remember(key, entry);
    return { cur: entry, fresh: true };
  }

  /**
   * With the journal on, a step's `outboxDone` write is lazy ({@link LAZY_MARK_MS}): a record
   * loaded from the store may hold an outbox that was performed but not marked. Its journal
   * entry tells: the performer publishes it only after every other effect of the step
   * (`effects.ts`), so an entry of this step, of this incarnation of the id (same `createdAt`),
   * proves the whole outbox was performed; it is not performed again. No entry (a crash before
   * it, or a read that failed): performed again, deduplicated by msg ids as before.
   */
  async function journaledOutbox(entry: CacheEntry): Promise<CacheEntry> {
    const r = entry.stored.record;
    const reader = opts.journalReader;
    if (entry.effectsDone || !opts.journal || !reader?.lastStep || !needsMark(r)) return entry;
    if (!r.outbox.some((e) => e.kind === 'journal')) return entry;
    let last: { step: number; createdAt?: number } | undefined;
    try {
      last = await reader.lastStep(r.type, r.id);
    } catch (err) {
      logger.debug(
        { ...wf(r.type, r.id), err: toErrorData(err) },
        'journal not read; the unmarked outbox is performed again',
      );
      return entry;
    }
    if (last && last.step >= r.step && last.createdAt === r.createdAt) {
      entry.effectsDone = true;
      stats.journaledOutboxes++;
      deferMark(entry);
    }
    return entry;
  }

  /**
   * `outboxDone` writes waiting out {@link LAZY_MARK_MS}, by workflow key: written then through
   * the workflow's own queue unless it stepped again meanwhile (its next write replaces the
   * outbox). Undefined when marks are written at once (journal off).
   */
  const lazyMarkMs = opts.lazyMarkMs ?? LAZY_MARK_MS;
  const lazyMarks =
    opts.journal && opts.journalReader?.lastStep && lazyMarkMs > 0
      ? new Map<string, { entry: CacheEntry; revision: number; due: number }>()
      : undefined;
  let lazyTimer: ReturnType<typeof setInterval> | undefined;

  function deferMark(entry: CacheEntry): void {
    if (!lazyMarks) return;
    const { record, revision } = entry.stored;
    const key = keyOf(record.type, record.id);
    // Deleted first so that the map's order is the order of due times (the sweep stops early).
    lazyMarks.delete(key);
    lazyMarks.set(key, { entry, revision, due: clock.now() + lazyMarkMs });
    if (!lazyTimer) {
      lazyTimer = setInterval(
        () => void sweepMarks(false),
        Math.max(100, Math.min(1_000, lazyMarkMs)),
      );
      lazyTimer.unref?.();
    }
  }

  /** Write the marks that are due (all of them with `all`), each in its workflow's turn. */
  function sweepMarks(all: boolean): Promise<unknown> {
    if (!lazyMarks) return Promise.resolve();
    const now = clock.now();
    const writes: Promise<void>[] = [];
    for (const [key, m] of lazyMarks) {
      if (!all && m.due > now) break;
      lazyMarks.delete(key);
      if (m.entry.stored.revision !== m.revision) {
        stats.marksSkipped++;
        continue;
      }
      writes.push(
        serial(key, async () => {
          // Stepped again while this waited for its turn: the new record has its own outbox.
          if (m.entry.stored.revision !== m.revision) {
            stats.marksSkipped++;
            return;
          }
          await markDone(m.entry, true);
        }),
      );
    }
    if (lazyMarks.size === 0 && lazyTimer) {
      clearInterval(lazyTimer);
      lazyTimer = undefined;
    }
    return Promise.allSettled(writes);
  }

  /**
   * True when `cur` is still the stored record. Otherwise the cache now holds the stored one and
   * the caller must decide again.
   */
  async function confirm(type: string, id: string, cur: CacheEntry | undefined): Promise<boolean> {
    const latest = await store.get(type, id);
    if (latest?.revision === cur?.stored.revision) return true;
    stats.staleRereads++;
    const key = keyOf(type, id);
    if (latest) remember(key, entryOf(latest));
    else cache.delete(key);
    logger.info(
      {
        ...wf(type, id),
        cached: cur?.stored.revision,
        stored: latest?.revision,
      },
      'cached record was stale; deciding again from the stored one',
    );
    return false;
  }

  /** True when the outbox starts work (activities, timers) that must never be started twice. */
  const needsMark = (r: WorkflowRecord) =>
    r.outboxDone !== r.step && r.outbox.some((e) => e.kind === 'task' || e.kind === 'timer');

  /**
   * Perform what `entry`'s outbox still owes. Only the effects that failed are retried. If one
   * can never succeed, the workflow fails and the entry of its final record is returned.
   */
  async function settleOutbox(entry: CacheEntry): Promise<CacheEntry> {
    if (entry.effectsDone) return entry;
    const { record } = entry.stored;
    if (record.outbox.length > 0) {
      const t0 = metrics ? performance.now() : 0;
      try {
        await effects.perform(record, entry.owed);
        if (metrics) {
          metrics.phase('effects', since(t0));
          for (const [i, e] of record.outbox.entries()) {
            if (entry.owed && !entry.owed.includes(i)) continue;
            if (e.kind === 'task') metrics.taskPublished(e.task.queue);
            else if (e.kind === 'timer') metrics.timerSet();
          }
        }
      } catch (err) {
        if (!(err instanceof EffectsError)) throw err;
        entry.owed = err.failed;
        if (!err.terminal) throw err;
        try {
          return await failWorkflow(entry, err.terminal, record.lastSeq);
        } catch (err2) {
          if (!(err2 instanceof TerminalError)) throw err2;
          logger.error(
            {
              workflowType: record.type,
              workflowId: record.id,
              step: record.step,
              failed: err.failed,
              err: toErrorData(err.terminal),
              failure: toErrorData(err2),
            },
            'STUCK: effects of this step can never be performed and the workflow cannot be failed; they are given up',
          );
        }
      }
    }
    entry.effectsDone = true;
    entry.owed = undefined;
    return entry;
  }

  /**
   * Record durably that `entry`'s outbox was performed, so that no later load performs it again.
   * Best effort: when it is not written, the outbox may be performed again (the old behaviour).
   */
  async function markDone(entry: CacheEntry, now = false): Promise<void> {
    const { record, revision } = entry.stored;
    if (!entry.effectsDone || !needsMark(record)) return;
    // With the journal on, the step's journal entry marks it meanwhile (`journaledOutbox`).
    if (!now && lazyMarks && record.outbox.some((e) => e.kind === 'journal')) {
      deferMark(entry);
      return;
    }
    const marked: WorkflowRecord = { ...record, outboxDone: record.step };
    try {
      entry.stored = await store.update(marked, revision);
      stats.outboxMarks++;
    } catch (err) {
      // A late mark lost to a newer write: that write is the record now, and the cache has it.
      if (err instanceof ConflictError && !now) cache.delete(keyOf(record.type, record.id));
      logger.debug(
        { ...wf(record.type, record.id), err: toErrorData(err) },
        'outbox performed but not marked; a later load may perform it again',
      );
    }
  }

  /**
   * End a workflow whose step can never succeed: write `status: failed` with the error (keeping
   * the last stored snapshot) and perform its wind-down. Throws when even that cannot be written.
   */
  async function failWorkflow(
    cur: CacheEntry,
    err: JetflowError,
    seq: number,
  ): Promise<CacheEntry> {
    const { record, revision } = cur.stored;
    const error = { ...toErrorData(err), retryable: false };
    const rec = failure(record, error, seq, clock.now(), opts.journal);
    const stored = await store.update(rec, revision);
    stats.poisoned++;
    if (metrics && record.status !== 'failed') metrics.lifecycle(record.type, 'failed');
    logger.error(
      { workflowType: record.type, workflowId: record.id, seq, step: rec.step, err: error },
      'a step of this workflow can never succeed: the workflow failed',
    );
    const entry: CacheEntry = { stored, effectsDone: false };
    remember(keyOf(record.type, record.id), entry);
    try {
      await effects.perform(rec);
    } catch (e) {
      if (e instanceof EffectsError) entry.owed = e.failed;
      if (!(e instanceof EffectsError) || !e.terminal) throw e;
      logger.error(
        { ...wf(record.type, record.id), err: toErrorData(e) },
        'the wind-down of a failed workflow cannot be performed; left as it is',
      );
    }
    entry.effectsDone = true;
    return entry;
  }

  /** The entry's reply subject if the engine may publish to it; others are logged and dropped. */
  function replyOf(e: InboxEntry): string | undefined {
    if (!e.replyTo) return undefined;
    if (isReplySubject(e.replyTo, replyPrefixes)) return e.replyTo;
    logger.warn(
      { ...wf(e.type, e.id), seq: e.seq, replyTo: e.replyTo },
      `not replying: ${JSON.stringify(e.replyTo)} is not a reply subject (allowed prefixes: ${replyPrefixes.join(', ')})`,
    );
    return undefined;
  }

  function replyError(e: InboxEntry, err: JetflowError, accepts?: string[]): void {
    const replyTo = replyOf(e);
    if (!replyTo) return;
    const data = toErrorData(err);
    effects.reply(
      replyTo,
      e.replyEncoding,
      { error: accepts ? { ...data, accepts } : data },
      err.code,
    );
  }

  /**
   * True when an ignore or reject decided from `cur` cannot depend on `cur` being stale: a timer
   * set at a step the record has already reached can never become pending again (a re-set or
   * re-armed timer is tagged with a later step). A finished workflow is not conclusive: an
   * operator's reset makes it run again.
   */
  function conclusive(cur: CacheEntry | undefined, message: InboxMessage): boolean {
    if (!cur) return false;
    const r = cur.stored.record;
    return message.kind === 'timer' && r.step >= message.step;
  }

  /**
   * A message whose step can never succeed. A result or timer (which nobody would send again)
   * fails the workflow; a public request is rejected, and nothing stored changes. Returns the
   * rejection, or undefined when the workflow was failed (the message is consumed by that write).
   */
  async function permanent(
    e: InboxEntry,
    cur: CacheEntry | undefined,
    err: TerminalError,
  ): Promise<Decision | undefined> {
    const fields = { workflowId: e.id, workflowType: e.type };
    if ((e.kind === 'result' || e.kind === 'timer') && cur?.stored.record.status === 'running') {
      try {
        await failWorkflow(cur, err, e.seq);
        return undefined;
      } catch (err2) {
        if (!(err2 instanceof TerminalError)) throw err2;
        logger.error(
          {
            ...fields,
            step: stepOf(fields.workflowType, fields.workflowId),
            seq: e.seq,
            kind: e.kind,
            err: toErrorData(err),
            failure: toErrorData(err2),
          },
          'STUCK: a step can never succeed and the workflow cannot be failed; message dropped',
        );
        return {
          kind: 'reject',
          error: new TerminalError(`workflow ${e.type}/${e.id} is stuck: ${err.message}`, {
            ...fields,
            code: err.code,
            cause: err2,
          }),
          accepts: [],
        };
      }
    }
    const error =
      err.code === ErrorCode.PayloadTooLarge
        ? new BadRequestError(
            `workflow ${e.type}/${e.id}: this ${e.kind} would make the workflow record larger than the server accepts (max_payload); nothing was stored`,
            { ...fields, code: ErrorCode.PayloadTooLarge, cause: err },
          )
        : err;
    return { kind: 'reject', error, accepts: [] };
  }

  function logDeferred(e: InboxEntry, record: WorkflowRecord | undefined, err: JetflowError): void {
    stats.deferred++;
    const what = `${e.type}@${record?.version ?? 'latest'}`;
    const now = clock.now();
    const last = deferLogged.get(what);
    if (last !== undefined && now - last < 30_000) return;
    deferLogged.set(what, now);
    logger.error(
      {
        ...wf(e.type, e.id),
        version: record?.version,
        seq: e.seq,
        code: err.code,
        deferred: stats.deferred,
        retryInMs: deferDelayMs,
      },
      `${err.message}: the message is left for an engine that has ${what} (register it here, or run an engine that has it); logged at most every 30 s`,
    );
  }

  /**
   * The admission stage of a new start whose definition has a concurrency key. The start is
   * first decided as if admitted (pure): a start the machine refuses never takes a slot. Then
   * the key's record is asked (compare-and-set, idempotent per workflow id, so a start
   * redelivered after a crash finds its own earlier answer). Undefined: no key (or no key store).
   * Transient store failures throw (the message is retried in place).
   */
  async function admission(
    e: InboxEntry,
    message: Extract<InboxMessage, { kind: 'start' }>,
    now: number,
    epoch: string | undefined,
  ): Promise<{ admission: StartAdmission } | { decision: Decision } | undefined> {
    const keys = opts.keys;
    if (!keys || !opts.registry.has(e.type)) return undefined;
    const def = opts.registry.latest(e.type);
    const c = def.concurrency;
    if (!c) return undefined;
    const input = message.input;
    const fields = { workflowType: e.type, workflowId: e.id };
    let k: { key: string; keyToken: string };
    try {
      k = keyOfInput(c, input, fields);
    } catch (err) {
      if (err instanceof JetflowError)
        return { decision: { kind: 'reject', error: err, accepts: [] } };
      throw err;
    }
    const base: StepInput = {
      type: e.type,
      id: e.id,
      seq: e.seq,
      shard: e.shard,
      message,
      now,
      inbox: epoch,
    };
    const asAdmitted: StartAdmission = { kind: 'admitted', ...k };
    let probe: Decision;
    try {
      probe = decide(ctx, undefined, { ...base, admission: asAdmitted });
    } catch {
      // A programming error: the step decides again and reports it the usual way.
      return { admission: asAdmitted };
    }
    if (probe.kind !== 'write') return { decision: probe };
    const onLimit = c.onLimit ?? 'queue';
    const fairness = fairnessOf(def, input);
    const outcome = await keys.acquire({
      priority: startPriority(def, message),
      ...(fairness ? { fairness } : {}),
      ...(c.maxWaitMs !== undefined ? { maxWaitMs: c.maxWaitMs } : {}),
      type: e.type,
      key: k.key,
      keyToken: k.keyToken,
      id: e.id,
      startSeq: e.seq,
      limit: c.limit,
      onLimit,
      now,
    });
    if (outcome.kind === 'admitted') {
      // The probe is the decision; the admission time is the key record's.
      if (probe.record.admission) probe.record.admission.admittedAt = outcome.at;
      return { decision: probe };
    }
    if (outcome.kind === 'rejected') {
      return {
        decision: {
          kind: 'reject',
          error: new BadRequestError(
            `workflow ${e.type}/${e.id} not started: concurrency key ${JSON.stringify(k.key)} already runs ${outcome.holders.length} of ${c.limit} (onLimit: cancel-newest)`,
            {
              ...fields,
              code: ErrorCode.ConcurrencyLimit,
              details: { key: k.key, limit: c.limit, holders: outcome.holders },
            },
          ),
          accepts: [],
        },
      };
    }
    return {
      admission: {
        kind: 'deferred',
        ...k,
        position: outcome.position,
        queuedAt: outcome.queuedAt,
        cancel: outcome.cancel,
      },
    };
  }

  /**
   * An operator's `release` of a holder that has ended or whose record is gone: the key's
   * record lets it go and hands the slot to the head waiter; journaled as an operator entry.
   * Idempotent: a repeat (a redelivery after a crash) sends the same hand-over again.
   */
  async function releaseSlot(
    e: InboxEntry,
    msg: Extract<InboxMessage, { kind: 'admin' }>,
    r: WorkflowRecord | undefined,
    now: number,
  ): Promise<void> {
    const fields = { workflowType: e.type, workflowId: e.id };
    const key = r?.admission?.key ?? msg.key;
    if (key === undefined) {
      stats.rejected++;
      metrics?.step(e.type, 'rejected');
      replyError(
        e,
        new BadRequestError(
          r
            ? `workflow ${e.type}/${e.id} has no concurrency key`
            : `workflow ${e.type}/${e.id} does not exist: release needs "key", the concurrency key its slot belongs to`,
          { ...fields, code: r ? ErrorCode.BadRequest : ErrorCode.NotFound },
        ),
      );
      return;
    }
    const keyToken = r?.admission?.keyToken ?? keyTokenOf(key);
    const out = await opts.keys!.release(e.type, keyToken, e.id);
    const changed = { key, was: out.was, admitted: out.admits.map((a) => a.id) };
    logger.warn(
      {
        ...fields,
        step: stepOf(fields.workflowType, fields.workflowId),
        by: msg.by,
        reason: msg.reason,
        ...changed,
      },
      'operator released a concurrency slot',
    );
    if (opts.journal) {
      await effects.journal(
        {
          v: WIRE_VERSION,
          kind: 'operator',
          workflowType: e.type,
          id: e.id,
          version: r?.version ?? 0,
          step: r?.step ?? 0,
          at: now,
          engine: engineName,
          seq: e.seq,
          action: 'release',
          params: changed,
          by: msg.by,
          reason: msg.reason,
        },
        `${e.type}.${e.id}.op.${e.seq}`,
      );
    }
    handledWithoutWrite.set(e.seq, true);
    const replyTo = replyOf(e);
    if (replyTo) {
      const reply: AdminReply = {
        id: e.id,
        type: e.type,
        action: 'release',
        verb: 'release',
        step: r?.step ?? 0,
        status: r?.status ?? 'canceled',
        value: (r?.snapshot as { value?: unknown } | null | undefined)?.value ?? null,
        paused: false,
        changed,
      };
      effects.reply(replyTo, e.replyEncoding, reply);
    }
  }

  /** The record's `lastSeq` if it counts in the inbox stream incarnation `epoch`, else 0. */
  function lastSeqIn(record: WorkflowRecord | undefined, epoch: string | undefined): number {
    if (!record) return 0;
    if (record.inbox === undefined || epoch === undefined || record.inbox === epoch) {
      return record.lastSeq;
    }
    return 0;
  }

  /**
   * Apply one message that is known to be next in order for its workflow. Resolves `'stale'`
   * when the cached record turned out to be stale (the cache now holds the stored one: decide
   * again), `'deferred'` when this engine cannot decide it (the message and every later one of
   * the workflow wait), `'done'` otherwise.
   */
  async function applyOne(
    e: InboxEntry,
    given: CacheEntry | undefined,
    freshRead: boolean,
    epoch: string | undefined,
  ): Promise<'done' | 'stale' | 'deferred'> {
    const key = keyOf(e.type, e.id);
    let cur = given;
    let fresh = freshRead;
    if (cur) {
      cur = await settleOutbox(cur);
      await markDone(cur);
      const drained = await drainHeld(cur);
      if (cur !== given || drained !== cur) fresh = true; // this engine just wrote it
      cur = drained;
    }
    let message: InboxMessage = { kind: 'signal', event: { type: `(${e.kind})` } };
    let decision: Decision;
    let decoded = false;
    let decodeError: unknown;
    try {
      message = decodeInbox(e);
      decoded = true;
    } catch (err) {
      decodeError = err;
    }
    // A reset restores a step's snapshot from the journal: read before the (pure) decision. A
    // failure to read is transient (retried in place); a missing entry is the decision's to refuse.
    const restore =
      decoded &&
      message.kind === 'admin' &&
      message.verb === 'reset' &&
      cur &&
      opts.journalReader &&
      message.toStep! < cur.stored.record.step
        ? await opts.journalReader.stepEntry(e.type, e.id, message.toStep!)
        : undefined;
    const now = clock.now();
    // An operator's release of a holder that has ended (or whose record is gone): no step of
    // the workflow, only its key's record (see `releaseSlot`).
    if (decoded && message.kind === 'admin' && message.verb === 'release' && opts.keys) {
      const r = cur?.stored.record;
      if (!r || (r.status !== 'running' && r.status !== 'deferred')) {
        await releaseSlot(e, message, r, now);
        return 'done';
      }
    }
    // The admission stage of the start path (concurrency keys): before the step, the key's
    // record decides whether the start runs now, waits, or is refused.
    const admitted =
      decoded && message.kind === 'start' && !cur
        ? await admission(e, message, now, epoch)
        : undefined;
    const decideStart = metrics ? performance.now() : 0;
    try {
      if (!decoded) throw decodeError;
      decision =
        admitted && 'decision' in admitted
          ? admitted.decision
          : decide(
              ctx,
              cur?.stored.record,
              {
                type: e.type,
                id: e.id,
                seq: e.seq,
                shard: e.shard,
                message,
                now,
                inbox: epoch,
                ...(restore ? { restore } : {}),
                ...(admitted ? { admission: admitted.admission } : {}),
                // A record created by this step gets its secret (drawn here: the step is pure).
                ...(!cur || cur.stored.record.status === 'deferred' ? { secret: newSecret() } : {}),
              },
              cur?.live,
            );
    } catch (err) {
      if (err instanceof ConflictError) throw err;
      if (err instanceof JetflowError) {
        decision = { kind: 'reject', error: err, accepts: [] };
      } else {
        // `decide` is pure: what it throws (a snapshot that cannot be restored, an effect that
        // cannot be built) it throws again on every retry.
        const p = await permanent(
          e,
          cur,
          new TerminalError(
            `workflow ${e.type}/${e.id}: the step threw: ${String((err as Error)?.message ?? err)}`,
            { workflowId: e.id, workflowType: e.type, code: ErrorCode.Internal, cause: err },
          ),
        );
        if (!p) return 'done';
        decision = p;
      }
    }
    // The step a trigger message caused names the trigger and its stream sequence.
    if (decision.kind === 'write' && (message.kind === 'start' || message.kind === 'signal')) {
      const trigger = message.trigger;
      if (trigger) {
        for (const eff of decision.record.outbox)
          if (eff.kind === 'journal' && eff.seq === e.seq) eff.trigger = trigger;
        decision.record.attributes = {
          ...decision.record.attributes,
          [TRIGGER_ATTRIBUTE]: trigger.name,
        };
      }
    }
    if (metrics) metrics.phase('decide', since(decideStart));
    let written: CacheEntry | undefined;
    if (decision.kind === 'write') {
      const persistStart = metrics ? performance.now() : 0;
      try {
        const stored = decision.create
          ? await store.create(decision.record)
          : await store.update(decision.record, cur!.stored.revision);
        written = {
          stored,
          effectsDone: false,
          live: decision.live,
          reply: decision.reply,
        };
        if (metrics) metrics.phase('persist', since(persistStart));
      } catch (err) {
        if (!(err instanceof TerminalError)) throw err;
        // E10: a dispatched task's result that would make the record too large (a fan-out too
        // big for one record) becomes that task's failure, `RecordTooLarge`: the machine (a tree
        // parks the node and drops its decisions) goes on, instead of the workflow failing.
        const ref =
          message.kind === 'result' ? cur?.stored.record.tasks[message.actorId] : undefined;
        let retried = false;
        if (
          err.code === ErrorCode.PayloadTooLarge &&
          message.kind === 'result' &&
          ref?.dispatched
        ) {
          const failed: InboxMessage = {
            kind: 'result',
            taskId: message.taskId,
            actorId: message.actorId,
            ok: false,
            attempt: message.attempt,
            ...(message.token !== undefined ? { token: message.token } : {}),
            error: {
              type: 'RecordTooLarge',
              code: ErrorCode.PayloadTooLarge,
              message: `the result of ${ref.activity} would make the workflow record larger than the server accepts (max_payload); its output and decisions were dropped`,
              retryable: false,
              attempt: message.attempt,
            },
          };
          const d2 = decide(
            ctx,
            cur!.stored.record,
            {
              type: e.type,
              id: e.id,
              seq: e.seq,
              shard: e.shard,
              message: failed,
              now,
              inbox: epoch,
            },
            cur!.live,
          );
          if (d2.kind === 'write') {
            try {
              const stored = await store.update(d2.record, cur!.stored.revision);
              written = { stored, effectsDone: false, live: d2.live, reply: d2.reply };
              decision = d2;
              retried = true;
              logger.warn(
                { ...wf(e.type, e.id), seq: e.seq, actorId: message.actorId },
                failed.error!.message,
              );
            } catch (err2) {
              if (!(err2 instanceof TerminalError)) throw err2;
            }
          }
        }
        if (!retried) {
          const p = await permanent(e, cur, err);
          if (!p) return 'done';
          decision = p;
        }
      }
    }
    // Never drop a message on the word of a record that might be stale.
    if (
      (decision.kind === 'ignore' || (decision.kind === 'reject' && decoded)) &&
      !fresh &&
      !conclusive(cur, message) &&
      !(await confirm(e.type, e.id, cur))
    ) {
      return 'stale';
    }
    if (decision.kind === 'defer') {
      logDeferred(e, cur?.stored.record, decision.error);
      return 'deferred';
    }
    // Messages to other workflows this message owes without a record write (E8): a child start
    // or watch answered at once, a send that could not be applied. Idempotent by msg id.
    const tells: Tell[] =
      decision.kind === 'noop' || decision.kind === 'ignore'
        ? (decision.tell ?? [])
        : decision.kind === 'reject'
          ? rejectTells(e, message, decision.error)
          : [];
    if (tells.length > 0) await Promise.all(tells.map((t) => effects.message(t)));
    if (decision.kind !== 'write') handledWithoutWrite.set(e.seq, true);
    if (decision.kind === 'reject') {
      stats.rejected++;
      metrics?.step(e.type, 'rejected');
      const eventType = message.kind === 'signal' ? message.event.type : `(${message.kind})`;
      logger.warn(
        {
          ...wf(e.type, e.id),
          seq: e.seq,
          code: decision.error.code,
          event: eventType,
        },
        decision.error.message,
      );
      const stored = cur?.stored.record;
      await Promise.all([
        effects.notify(
          rejection(stored, e.type, e.id, eventType, decision.error, decision.accepts, now),
          `${e.type}.${e.id}.rej.${e.seq}`,
        ),
        // A message for a workflow that does not exist has no journal to go into.
        opts.journal && stored
          ? effects.journal(
              {
                v: WIRE_VERSION,
                kind: 'rejected',
                workflowType: e.type,
                id: e.id,
                version: stored.version,
                step: stored.step,
                at: now,
                engine: engineName,
                seq: e.seq,
                event: journalEvent(
                  eventType,
                  message.kind === 'signal' ? eventPayload(message.event) : undefined,
                  opts.journal.payloadMaxBytes,
                ),
                error: toErrorData(decision.error),
                accepts: decision.accepts,
              },
              `${e.type}.${e.id}.rej.${e.seq}`,
            )
          : undefined,
      ]);
      if (decision.error.code === ErrorCode.ConcurrencyLimit)
        metrics?.admission?.('concurrency-key', 'dropped');
      replyError(e, decision.error, decision.accepts);
      return 'done';
    }
    if (decision.kind === 'ignore') {
      stats.ignored++;
      metrics?.step(e.type, decision.forged ? 'forged' : 'ignored');
      logger.info({ ...wf(e.type, e.id), seq: e.seq, kind: e.kind }, `ignored: ${decision.reason}`);
      const stored = cur?.stored.record;
      if (opts.journal && stored) {
        await effects.journal(
          {
            v: WIRE_VERSION,
            kind: 'ignored',
            workflowType: e.type,
            id: e.id,
            version: stored.version,
            step: stored.step,
            at: now,
            engine: engineName,
            seq: e.seq,
            cause: message.kind,
            reason: decision.reason,
            ...(message.kind === 'result'
              ? {
                  activity: {
                    actorId: message.actorId,
                    taskId: message.taskId,
                    ok: message.ok,
                    attempt: message.attempt,
                    ...(message.error ? { error: message.error } : {}),
                  },
                }
              : {}),
            ...(message.kind === 'timer' ? { timerId: message.timerId } : {}),
          },
          `${e.type}.${e.id}.ign.${e.seq}`,
        );
      }
      return 'done';
    }
    const replyTo = replyOf(e);
    if (decision.kind === 'noop') {
      // A start of an existing workflow, a signal or cancel whose msg id the record remembers.
      const r = decision.reply as { duplicate?: boolean; created?: boolean } | undefined;
      if (r?.duplicate === true || r?.created === false) metrics?.admission?.('dedup', 'dropped');
      if (replyTo) effects.reply(replyTo, e.replyEncoding, decision.reply);
      return 'done';
    }
    if (!written) throw new Error('unreachable: a write decision without a written record');
    remember(key, written);
    countWrite(cur?.stored.record, written.stored.record);
    if (metrics?.admission)
      countAdmission(message, decision, cur?.stored.record, written.stored.record);
    if (metrics && message.kind === 'timer')
      metrics.timerFired(message.dueAt === undefined ? undefined : (now - message.dueAt) / 1000);
    const entry = await settleOutbox(written);
    if (decision.again && entry === written) {
      // Started by a send's `startIfAbsent`: the send itself is applied next, to this record.
      await markDone(entry);
      return 'stale';
    }
    if (entry === written) {
      if (replyTo) effects.reply(replyTo, e.replyEncoding, decision.reply);
    } else {
      replyFailed(e, entry);
    }
    await markDone(entry);
    // A resume: the held messages are applied now, before this message is acknowledged.
    await drainHeld(entry);
    return 'done';
  }

  /**
   * Apply the held messages of a resumed workflow, one step each, in inbox order. Runs before any
   * later message of the workflow is decided and before a resume is acknowledged, so after a
   * crash the redelivered resume (or the next message) finishes the job.
   */
  async function drainHeld(entry: CacheEntry): Promise<CacheEntry> {
    let cur = entry;
    for (;;) {
      const r = cur.stored.record;
      if (r.status !== 'running' || r.paused || !r.held?.length) return cur;
      const decision = release(ctx, r, clock.now(), cur.live);
      if (decision.kind === 'defer') {
        throw new RetryableError(
          `workflow ${r.type}@${r.version} is not registered on this engine: held messages wait`,
          { workflowType: r.type, workflowId: r.id, code: decision.error.code },
        );
      }
      if (decision.kind !== 'write') throw new Error('unreachable: release decided no write');
      const stored = await store.update(decision.record, cur.stored.revision);
      const written: CacheEntry = { stored, effectsDone: false, live: decision.live };
      remember(keyOf(r.type, r.id), written);
      countWrite(r, stored.record);
      cur = await settleOutbox(written);
      await markDone(cur);
    }
  }

  /**
   * What a rejected message owes other workflows: a cross-workflow send tells its sender
   * (`jetflow.send.failed`); a child start tells its parent (the invoke fails with `ChildFailed`).
   */
  function rejectTells(e: InboxEntry, message: InboxMessage, error: JetflowError): Tell[] {
    const target = { type: e.type, id: e.id };
    if (message.kind === 'signal' && message.from) {
      return [
        sendFailed(target, message.from, message.event, {
          type: 'SendFailed',
          code: error.code,
          message: error.message,
        }),
      ];
    }
    if (message.kind === 'start' && message.parent) {
      return [
        errorResult(message.parent, target, {
          type: 'ChildFailed',
          code: error.code,
          message: `workflow ${e.type}/${e.id} could not be started: ${error.message}`,
          details: { type: e.type, id: e.id, code: error.code },
        }),
      ];
    }
    return [];
  }

  /** Error reply for a request whose step was applied but whose workflow then failed. */
  function replyFailed(e: InboxEntry, entry: CacheEntry): void {
    const error = entry.stored.record.error;
    replyError(
      e,
      new TerminalError(
        `workflow ${e.type}/${e.id} failed: ${error?.message ?? 'a step can never succeed'}`,
        { workflowId: e.id, workflowType: e.type, code: error?.code ?? ErrorCode.Internal },
      ),
    );
  }

  /** True when an outbox holds only what a folded step may owe (see {@link FoldedStep}). */
  const foldableOutbox = (outbox: readonly Effect[]) =>
    outbox.every((e) => e.kind === 'journal' || e.kind === 'notify' || e.kind === 'alert');

  /** What a step folded into a later step's write owes: its journal entry and notifications. */
  function foldStep(record: WorkflowRecord): FoldedStep {
    const effects: FoldedStep['effects'] = [];
    let entry: FoldedStep['entry'];
    for (const [i, e] of record.outbox.entries()) {
      if (e.kind === 'notify' || e.kind === 'alert') effects.push([i, e]);
      else if (e.kind === 'journal')
        entry = foldedEntry(stepEntry(record, e, engineName), foldSnapshotMaxBytes);
    }
    return { step: record.step, ...(entry ? { entry } : {}), effects };
  }

  /**
   * Apply the head of `ds` (known to be next in order for its workflow) and the deliveries after
   * it (contiguous with it: see `foldable`) in ONE record write: each message is decided in turn
   * on the record the previous one left, exactly as it would be alone; the record written is the
   * last one's, with `lastSeq` its sequence, and its outbox keeps the earlier steps' effects
   * (`steps`, performed first). Every message keeps its own step number, journal entry,
   * notifications and reply; a redelivery of any of them is a repeat (its sequence is at or below
   * `lastSeq`).
   *
   * Only the common kinds fold: signals (not trigger messages, not `startIfAbsent` sends),
   * activity results and timers, each decided into a write of a running, unpaused workflow
   * whose earlier steps owe nothing but journal entries, notifications and alerts (a step that
   * starts or stops work, sets timers or tells other workflows ends the batch, as its last
   * message). Anything else (a rejection, an ignored message, a start, an admin verb, a deferral)
   * ends the batch before it and is applied alone, as are all messages when the cached record
   * still owes effects. Resolves how many messages were applied, or undefined when fewer than two
   * fold (the caller then applies the head alone).
   */
  async function applyFolded(
    ds: readonly InboxDelivery[],
    cur: CacheEntry | undefined,
    epoch: string | undefined,
  ): Promise<number | undefined> {
    if (!cur || !cur.effectsDone || cur.owed !== undefined) return undefined;
    const first = cur.stored.record;
    if (first.status !== 'running' || first.paused || first.held?.length) return undefined;
    const now = clock.now();
    const decideStart = metrics ? performance.now() : 0;
    const parts: {
      d: InboxDelivery;
      message: InboxMessage;
      decision: Extract<Decision, { kind: 'write' }>;
      before: WorkflowRecord;
    }[] = [];
    const steps: FoldedStep[] = [];
    let bytes = 0;
    let rec = first;
    let live = cur.live;
    let pending: { step: FoldedStep; size: number } | undefined;
    for (const d of ds) {
      if (d.kind !== 'signal' && d.kind !== 'result' && d.kind !== 'timer') break;
      let message: InboxMessage;
      let decision: Decision;
      try {
        message = decodeInbox(d);
        if (message.kind === 'signal' && (message.trigger || message.startIfAbsent)) break;
        if (message.kind === 'progress') break;
        decision = decide(
          ctx,
          rec,
          {
            type: d.type,
            id: d.id,
            seq: d.seq,
            shard: d.shard,
            message,
            now,
            inbox: epoch,
          },
          live,
        );
      } catch {
        break; // Applied alone, where its failure is handled.
      }
      if (decision.kind !== 'write' || decision.create || decision.again) break;
      if (pending) {
        // The previous step becomes a folded one: it is written as what it owes.
        if (bytes + pending.size > foldMaxBytes) break;
        bytes += pending.size;
        steps.push(pending.step);
      }
      parts.push({ d, message, decision, before: rec });
      rec = decision.record;
      live = decision.live;
      if (rec.status !== 'running' || rec.paused || rec.held?.length) break;
      if (!foldableOutbox(rec.outbox) || parts.length === ds.length) break;
      // Built now, from this step's own record, before the next step is decided on it.
      const step = foldStep(rec);
      pending = { step, size: pack(step).length };
    }
    if (parts.length < 2) return undefined;
    if (metrics) metrics.phase('decide', since(decideStart));
    const last = parts[parts.length - 1]!;
    const record: WorkflowRecord = {
      ...last.decision.record,
      // The last step's effects keep their indexes (their msg ids); the folded steps go after.
      outbox: [...last.decision.record.outbox, { kind: 'steps', steps }],
    };
    const persistStart = metrics ? performance.now() : 0;
    let stored: StoredRecord;
    try {
      stored = await store.update(record, cur.stored.revision);
    } catch (err) {
      // A record too large with the folded steps: the head is applied alone.
      if (err instanceof TerminalError && !(err instanceof ConflictError)) return undefined;
      throw err;
    }
    if (metrics) metrics.phase('persist', since(persistStart));
    const written: CacheEntry = {
      stored,
      effectsDone: false,
      live: last.decision.live,
      reply: last.decision.reply,
      replies: new Map(parts.map((p) => [p.d.seq, p.decision.reply])),
    };
    remember(keyOf(record.type, record.id), written);
    for (const p of parts) {
      countWrite(p.before, p.decision.record);
      if (metrics?.admission) countAdmission(p.message, p.decision, p.before, p.decision.record);
      if (metrics && p.message.kind === 'timer') {
        const due = p.message.dueAt;
        metrics.timerFired(due === undefined ? undefined : (now - due) / 1000);
      }
    }
    const entry = await settleOutbox(written);
    // When the outbox could never be performed and the workflow failed: the folded steps' own
    // effects were performed unless their part failed too.
    const stepsFailed = entry !== written && written.owed?.includes(record.outbox.length - 1);
    for (const [i, p] of parts.entries()) {
      const failed = entry !== written && (i === parts.length - 1 || stepsFailed);
      if (failed) replyFailed(p.d, entry);
      else {
        const replyTo = replyOf(p.d);
        if (replyTo) effects.reply(replyTo, p.d.replyEncoding, p.decision.reply);
      }
    }
    await markDone(entry);
    return parts.length;
  }

  /** Apply `d` after any earlier unapplied message of the same workflow. */
  async function apply(
    d: InboxDelivery,
    rest: readonly InboxDelivery[],
  ): Promise<number | 'deferred'> {
    if (!isToken(d.type) || !isToken(d.id)) {
      // Not a workflow jetflow can name (nor store: KV keys are tokens). Nothing to notify.
      stats.rejected++;
      metrics?.step('(invalid)', 'rejected');
      const err = new BadRequestError(
        `inbox message for ${JSON.stringify(d.type)}/${JSON.stringify(d.id)}: workflow type and id must be 1-256 characters of A-Z a-z 0-9 _ - =`,
        { code: ErrorCode.BadRequest, details: { kind: d.kind, type: d.type, id: d.id } },
      );
      logger.warn({ seq: d.seq, shard: d.shard, kind: d.kind }, err.message);
      replyError(d, err);
      return 1;
    }
    let from = 0;
    let epoch = identity ? await identity.current() : undefined;
    let refreshed = false;
    for (;;) {
      const { cur, fresh } = await load(d.type, d.id);
      const rec = cur?.stored.record;
      if (rec && rec.shard !== d.shard) {
        // Not on the workflow's shard: rejected by decide, without comparing sequences.
        const r = await applyOne(d, cur, fresh, epoch);
        if (r === 'stale') continue;
        return r === 'deferred' ? 'deferred' : 1;
      }
      if (identity && !refreshed && rec?.inbox !== undefined && rec.inbox !== epoch) {
        // Written in another incarnation of the inbox stream, or this engine's view is old.
        refreshed = true;
        epoch = await identity.current(true);
        continue;
      }
      const lastSeq = lastSeqIn(rec, epoch);
      if (lastSeq >= d.seq && identity && !refreshed) {
        // Looks like a repeat: make sure the stream was not recreated since it was last looked at.
        refreshed = true;
        const current = await identity.current(true);
        if (current !== epoch) {
          logger.warn(
            { previous: epoch, current },
            'the inbox stream was recreated: sequences restart, records are rebased',
          );
          handledWithoutWrite.clear();
          epoch = current;
          continue;
        }
      }
      if (lastSeq >= d.seq) {
        stats.repeats++;
        metrics?.step(d.type, 'repeated');
        const settled = await settleOutbox(cur!);
        await markDone(settled);
        // A resume redelivered after a crash: what it released may still be held.
        const entry = settled === cur ? await drainHeld(settled).then(() => settled) : settled;
        const replyTo = replyOf(d);
        if (replyTo) {
          const r = entry.stored.record;
          if (entry !== cur) replyFailed(d, entry);
          else if (entry.reply !== undefined && r.lastSeq === d.seq) {
            // A retry of the delivery this engine applied: the requester gets the step's reply.
            effects.reply(replyTo, d.replyEncoding, entry.reply);
          } else if (entry.replies?.has(d.seq)) {
            // The same, for a message whose step was folded into the write of a later one.
            effects.reply(replyTo, d.replyEncoding, entry.replies.get(d.seq));
          } else {
            effects.reply(
              replyTo,
              d.replyEncoding,
              d.kind === 'start'
                ? startReply(r, r.lastSeq === d.seq)
                : {
                    id: r.id,
                    type: r.type,
                    step: r.step,
                    status: r.status,
                    value: (r.snapshot as { value?: unknown })?.value,
                    duplicate: true,
                  },
            );
          }
        }
        await markDone(entry);
        return 1;
      }
      from = Math.max(from, lastSeq + 1);
      const earlier = from < d.seq ? await inbox.firstFrom(d.shard, d.type, d.id, from) : undefined;
      if (earlier && earlier.seq < d.seq && handledWithoutWrite.has(earlier.seq)) {
        from = earlier.seq + 1;
        continue;
      }
      if (earlier && earlier.seq < d.seq) {
        stats.gapFills++;
        logger.info(
          { ...wf(d.type, d.id), seq: d.seq, earlier: earlier.seq },
          'applying an earlier unapplied message first',
        );
        // The earlier message's own trace, not the one of the message that found it.
        const r = await (tracing
          ? tracing.step(earlier, () => applyOne(earlier, cur, fresh, epoch))
          : applyOne(earlier, cur, fresh, epoch));
        if (r === 'deferred') return 'deferred';
        if (r === 'done') from = earlier.seq + 1;
        continue;
      }
      if (rest.length > 0) {
        const folded = await applyFolded([d, ...rest], cur, epoch);
        if (folded !== undefined) return folded;
      }
      const r = await applyOne(d, cur, fresh, epoch);
      if (r === 'stale') continue;
      return r === 'deferred' ? 'deferred' : 1;
    }
  }

  /**
   * Apply `d`, and with it as many of `rest` (deliveries of the same workflow queued behind it,
   * contiguous with it) as fold into its write. Resolves how many of `[d, ...rest]` were applied
   * and acknowledged (or left for redelivery), at least 1.
   */
  async function run(d: InboxDelivery, rest: readonly InboxDelivery[]): Promise<number> {
    const key = keyOf(d.type, d.id);
    let conflicts = 0;
    for (let attempt = 0; ; attempt++) {
      try {
        const applied = await apply(d, rest);
        if (applied === 'deferred') {
          // Not acked: redelivered later, here or (after a shard move) on an engine that knows it.
          d.nak?.(deferDelayMs);
          return 1;
        }
        await Promise.all([d, ...rest].slice(0, applied).map((x) => x.ack()));
        return applied;
      } catch (err) {
        // An effects failure keeps the entry: it knows which effects are still owed.
        if (!(err instanceof EffectsError)) cache.delete(key);
        if (err instanceof ConflictError) {
          stats.conflicts++;
          metrics?.step(d.type, 'conflict');
          logger.debug(
            { ...wf(d.type, d.id), seq: d.seq },
            'compare-and-set lost; retrying from the stored record',
          );
          // A little jittered backoff, growing with repeated conflicts (a lagging reader or a
          // competing writer needs a moment; a tight loop only adds load).
          const ms = Math.random() * Math.min(200, 2 ** Math.min(conflicts++, 8));
          if (ms >= 1) await sleep(ms);
          continue;
        }
        if (err instanceof TerminalError && !(err instanceof ConflictError)) {
          // Not expected here (permanent failures are handled where they happen); retrying in
          // place would wedge the workflow and its shard. Drop the message, loudly.
          stats.rejected++;
          metrics?.step(d.type, 'rejected');
          logger.error(
            { ...wf(d.type, d.id), seq: d.seq, err: toErrorData(err) },
            'STUCK: a step can never succeed; message dropped',
          );
          replyError(d, err);
          await effects
            .notify(
              rejection(undefined, d.type, d.id, `(${d.kind})`, err, [], clock.now()),
              `${d.type}.${d.id}.rej.${d.seq}`,
            )
            .catch(() => undefined);
          await d.ack();
          return 1;
        }
        stats.transientErrors++;
        if (stopping) {
          logger.warn(
            { ...wf(d.type, d.id), err: toErrorData(err), seq: d.seq },
            'stopping: message left for redelivery',
          );
          return 1;
        }
        const retryAfter = err instanceof RetryableError ? (err.retryAfterMs ?? 0) : 0;
        const delay = Math.max(retryAfter, Math.min(maxBackoffMs, 50 * 2 ** Math.min(attempt, 10)));
        logger.warn(
          {
            ...wf(d.type, d.id),
            seq: d.seq,
            attempt,
            err: toErrorData(err),
            retryInMs: delay,
          },
          'step failed; retrying in place (later messages of this workflow wait)',
        );
        d.working();
        await sleep(delay);
      }
    }
  }

  /** Run `fn` in `key`'s turn: after every message of the workflow queued before it. */
  function serial(key: string, fn: () => Promise<void>): Promise<void> {
    const prev = tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn);
    const tail = next.catch(() => undefined);
    tails.set(key, tail);
    void tail.then(() => {
      if (tails.get(key) === tail) tails.delete(key);
    });
    return next;
  }

  return {
    handle(d) {
      const key = keyOf(d.type, d.id);
      const queued: Queued = { d, taken: false };
      let queue = queues.get(key);
      if (!queue) queues.set(key, (queue = []));
      queue.push(queued);
      const turn = async (): Promise<void> => {
        // Already applied, folded into the write of a message queued before it.
        if (queued.taken) return;
        const q = queues.get(key)!;
        const batch = foldable(q);
        const rest = batch.slice(1).map((x) => x.d);
        let applied = 1;
        try {
          applied = await (tracing ? tracing.step(d, () => run(d, rest)) : run(d, rest));
        } finally {
          for (const x of batch.slice(0, applied)) x.taken = true;
          q.splice(0, applied);
          if (q.length === 0 && queues.get(key) === q) queues.delete(key);
        }
      };
      return serial(key, turn);
    },
    get busy() {
      return tails.size;
    },
    stats,
    cacheStats() {
      return { entries: cache.size, bytes: cache.calculatedSize ?? 0, maxBytes };
    },
    async close() {
      stopping = true;
      while (tails.size > 0) await Promise.allSettled([...tails.values()]);
      // Pending marks are written now (best effort): the journal covers any that fail.
      await sweepMarks(true);
      while (tails.size > 0) await Promise.allSettled([...tails.values()]);
    },
    forgetShard(shard) {
      const stale: string[] = [];
      cache.forEach((entry, key) => {
        if (entry.stored.record.shard === shard) stale.push(key);
      });
      for (const key of stale) cache.delete(key);
    },
  };
}
