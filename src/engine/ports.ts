/**
 * What the engine core needs from the outside world. `src/nats/` implements these over
 * JetStream; the core never imports a NATS library.
 */
import type { BodyEncoding } from '../contracts/codec.js';
import type { InboxKind } from '../contracts/subjects.js';
import type {
  Effect,
  JournalEntry,
  KeyRecord,
  Notification,
  WorkflowRecord,
} from '../contracts/wire.js';
import type { AcquireOutcome, AcquireRequest, Admit } from './admission.js';

/** A record with the KV revision it was read or written at. */
export interface StoredRecord {
  record: WorkflowRecord;
  revision: number;
  /** Size of the stored (encoded) record in bytes: what the engine's cache is bounded by. */
  bytes: number;
}

/** Durable record storage with compare-and-set. */
export interface RecordStore {
  get(type: string, id: string): Promise<StoredRecord | undefined>;
  /** Create; throws `ConflictError` when the key exists. Returns what was stored. */
  create(record: WorkflowRecord): Promise<StoredRecord>;
  /** Compare-and-set on `revision`; throws `ConflictError` when the stored revision differs. */
  update(record: WorkflowRecord, revision: number): Promise<StoredRecord>;
}

/** One inbox message as the engine sees it. */
export interface InboxEntry {
  /** Inbox stream sequence. */
  seq: number;
  shard: number;
  kind: InboxKind;
  type: string;
  id: string;
  /** msgpack body written by the gateway. */
  data: Uint8Array;
  replyTo: string | undefined;
  replyEncoding: BodyEncoding;
  /** W3C trace context the message carried (its `traceparent`/`tracestate` headers), if any. */
  trace?: TraceCarrier;
  /** When the message was stored in the inbox (epoch ms), if known: the inbox lag's start. */
  storedAt?: number;
}

/** A delivered inbox message: an entry plus its acknowledgement. */
export interface InboxDelivery extends InboxEntry {
  ack(): Promise<void>;
  /** Keep the message from being redelivered while it is worked on. */
  working(): void;
  /**
   * Give the message back for redelivery after `delayMs` (this engine cannot handle it). Without
   * it the message is left unacknowledged and comes back after the consumer's AckWait.
   */
  nak?(delayMs: number): void;
  /**
   * The delivery run this message came in, for folding (issue 18): set only on a first delivery
   * (never a redelivery) whose consumer delivery sequence follows the previous delivery this
   * subscription received. Two deliveries with the same run came from one unbroken stretch of
   * first deliveries of one consumer, all to this engine, in stream order: no message of their
   * subjects between them went anywhere else. Absent: the message is applied alone.
   */
  run?: string;
}

/** Identity of the inbox stream (its creation time): changes when the stream is recreated. */
export interface InboxIdentity {
  /** The current identity; cached briefly unless `fresh`. */
  current(fresh?: boolean): Promise<string>;
}

/** Reads the inbox stream directly, for the per-workflow gap check. */
export interface InboxReader {
  /** The first message of workflow type/id in `shard` with sequence >= `fromSeq`, if any. */
  firstFrom(
    shard: number,
    type: string,
    id: string,
    fromSeq: number,
  ): Promise<InboxEntry | undefined>;
}

/** Performs effects. Every call is idempotent for the same arguments (deterministic msg ids). */
export interface EffectSink {
  /**
   * Perform `record.outbox` (or only the effects at `only`), each with msg id
   * `<type>.<id>.<step>.<index>`. Resolves when every effect was performed. Otherwise it waits
   * until every attempted effect has settled (nothing keeps running after it returns) and throws
   * `EffectsError` listing the indexes still owed, with `terminal` set when one can never succeed.
   */
  perform(record: WorkflowRecord, only?: readonly number[]): Promise<void>;
  /** Publish a notification outside a record write (a rejection), deduplicated by `msgId`. */
  notify(notification: Notification, msgId: string): Promise<void>;
  /**
   * Publish a message to another workflow's inbox outside a record write (E8: a child start or
   * watch answered at once, a send that could not be applied), deduplicated by its `msgId`.
   */
  message(m: Extract<Effect, { kind: 'message' }> & { msgId: string }): Promise<void>;
  /** Append a journal entry outside a record write (a rejection, an ignored message). */
  journal(entry: JournalEntry, msgId: string): Promise<void>;
  /** Reply to a requester (core NATS, best effort). */
  reply(subject: string, encoding: BodyEncoding, body: unknown, errorCode?: string): void;
}

/** Reads a workflow's journal (the history stream): what a reset restores. */
export interface JournalReader {
  /** The step entry of step `step` of workflow type/id, or undefined when the journal has none. */
  stepEntry(type: string, id: string, step: number): Promise<JournalEntry | undefined>;
  /**
   * The step number and `createdAt` (which tells incarnations of one id apart) of the workflow's
   * last journal entry, or undefined when the journal has none. One read (the last message of the
   * workflow's subject); a replica that lags may answer an older entry, never a newer one. Only
   * step entries carry `createdAt`: when the last entry is another kind (a rejected signal, a
   * worker's admission entry), the caller cannot tell, and performs the outbox again.
   */
  lastStep?(type: string, id: string): Promise<{ step: number; createdAt?: number } | undefined>;
}

/**
 * Concurrency keys' records (`<prefix>_keys`), each change a compare-and-set on the revision
 * read, retried on a lost race: the decisions of `admission.ts` applied linearizably per key.
 */
export interface KeyStore {
  /** A start asks for a slot (idempotent per workflow id). */
  acquire(req: AcquireRequest & { keyToken: string }): Promise<AcquireOutcome>;
  /**
   * Workflow `id` leaves key `keyToken` of `type` (holder or waiter); the freed slots are handed
   * to the head waiters, each sent an `admit` through its inbox (deterministic msg id). A repeat
   * sends the same admits again. Resolves once the admits are published.
   */
  release(type: string, keyToken: string, id: string): Promise<{ was: string; admits: Admit[] }>;
  /** Move waiter `id` to the head of the queue. */
  promote(type: string, keyToken: string, id: string): Promise<{ was: string; from?: number }>;
  get(type: string, keyToken: string): Promise<KeyRecord | undefined>;
}

export interface Clock {
  now(): number;
}

/** The subset of a pino logger the core uses. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
  child(bindings: object): Logger;
}

/** The parts of a step timed by {@link EngineMetrics.phase}. */
export type StepPhase = 'load' | 'decide' | 'persist' | 'effects';

/** How the engine counted one inbox message (or one compare-and-set lost). */
export type StepOutcome =
  | 'applied'
  | 'rejected'
  | 'repeated'
  | 'ignored'
  | 'conflict'
  /** A result, attempt notice or timer without the right proof (issue 17): dropped. */
  | 'forged';

/**
 * The stages of the admission pipeline, in the order a start, signal or task passes them (see
 * the README's flow-control section): a repeat is dropped, signals of a window are merged, a task
 * waits for its rate-limit slot, then for its concurrency key (a workflow's or an activity's),
 * then (not built yet) for its priority level and fairness turn, and is dispatched.
 */
export const ADMISSION_STAGES = [
  'dedup',
  'debounce',
  'rate-limit',
  'concurrency-key',
  'priority',
  'dispatch',
] as const;
export type AdmissionStage = (typeof ADMISSION_STAGES)[number];

/**
 * What a stage did with one item: `held` (waits where it is), `merged` (folded into another),
 * `deferred` (set aside, to come back later), `dropped` (will not run: a repeat, a refusal),
 * `admitted` (passed the stage after being held or deferred).
 */
export type AdmissionOutcome = 'held' | 'merged' | 'deferred' | 'dropped' | 'admitted';

/** Lifecycle changes counted per workflow type. */
export type LifecycleEvent = 'started' | 'completed' | 'failed' | 'canceled';

/**
 * What the step reports to a metrics backend (`src/metrics/` implements it with prom-client).
 * Every method is called on the step's path: implementations must be cheap and never throw.
 */
export interface EngineMetrics {
  step(workflowType: string, outcome: StepOutcome): void;
  /** Seconds spent in one phase of a step. */
  phase(phase: StepPhase, seconds: number): void;
  /** A record load answered by the cache (true) or by the store (false). */
  cache(hit: boolean): void;
  lifecycle(workflowType: string, event: LifecycleEvent): void;
  /** An activity task published to `queue` (an outbox performed). */
  taskPublished(queue: string): void;
  timerSet(): void;
  /** A timer applied; `latenessSeconds` from its due time to the step (undefined: unknown). */
  timerFired(latenessSeconds: number | undefined): void;
  /** One item held, merged, deferred, dropped or admitted by a stage of the admission pipeline. */
  admission?(stage: AdmissionStage, outcome: AdmissionOutcome): void;
}

/**
 * Trace context of one message (W3C Trace Context: the `traceparent` and `tracestate` headers).
 */
export interface TraceCarrier {
  traceparent?: string;
  tracestate?: string;
}

/**
 * Spans around steps (`src/tracing/` implements it with `@opentelemetry/api`). Absent when no
 * tracer is configured, so that tracing costs nothing then.
 */
export interface StepTracing {
  /**
   * Run `f` (one message's step) inside a span whose parent is the message's trace context;
   * whatever `f` publishes carries the span's context.
   */
  step<T>(entry: InboxEntry, f: () => Promise<T>): Promise<T>;
  /** The current trace id, for log lines (undefined outside a traced step). */
  traceId(): string | undefined;
}
