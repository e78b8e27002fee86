/**
 * Wire contract v1: bodies of public requests and replies, notifications, internal inbox
 * messages and the stored workflow record. Field names here ARE the wire names.
 */
import type { ErrorData } from '../errors.js';

/** Version of the wire contract and of the stored record layout. */
export const WIRE_VERSION = 1;

/** How many client message ids a record remembers by default (see `WorkflowRecord.msgIds`). */
export const MSG_ID_MEMORY = 64;

/** Headers jetflow reads or writes. */
export const Header = {
  /** Selects the body encoding (`application/json` default, `application/msgpack`). */
  ContentType: 'Content-Type',
  /** JetStream dedup id; on a signal it makes repeated sends of one signal count once. */
  MsgId: 'Nats-Msg-Id',
  /** Internal: the requester's reply subject, carried through the inbox stream to the step. */
  ReplyTo: 'Jf-Reply-To',
  /** Internal: encoding the requester used, so the reply uses it too. */
  ReplyEncoding: 'Jf-Reply-Encoding',
  /** Set on every error reply: the error code. */
  ErrorCode: 'Jf-Error',
  /** Set by the server on a timer schedule message (a plain publish on a timer subject lacks it). */
  Schedule: 'Nats-Schedule',
  /**
   * On a task message: the attempt number of its first delivery (absent = 1). A retry or a
   * released task is a new message whose delivery count starts again at 1, so a worker's attempt
   * is `Jf-Attempt + delivery count - 1`.
   */
  Attempt: 'Jf-Attempt',
  /**
   * On a task postponed by its activity's rate limit: the epoch ms of the slot it holds. The
   * worker runs it at that time without taking another slot.
   */
  RateSlot: 'Jf-Rate-Slot',
  /**
   * On a task postponed because its activity's concurrency key had no free slot: the epoch ms it
   * first found the key full (kept across postponements, for `jetflow why`).
   */
  SlotWait: 'Jf-Slot-Wait',
  /**
   * W3C Trace Context (optional, on start, signal and cancel requests): carried through the
   * inbox into the step's span, onto the tasks the step publishes, into the worker's attempt
   * span and back on the result, so one causal chain is one trace.
   */
  TraceParent: 'traceparent',
  /** W3C Trace Context vendor state, carried with `traceparent`. */
  TraceState: 'tracestate',
} as const;

/**
 * Lifecycle of a workflow. `running` until the machine reaches a final state or fails.
 * `deferred`: started, but waiting for a slot of its concurrency key (the machine has not run
 * yet); it becomes `running` when admitted, or `canceled` when canceled or skipped while waiting.
 */
export type WorkflowStatus = 'deferred' | 'running' | 'completed' | 'failed' | 'canceled';

/** Body of `wf.start.<type>.<id>`. */
export interface StartRequest {
  input?: unknown;
  /**
   * The start's priority level, 1 (first) to 5, over the definition's `priority` (default 3):
   * its place among its concurrency key's waiters, and its activities' default level.
   */
  priority?: number;
}

/**
 * Reply to a start. `created` is false when the workflow already existed (idempotent start).
 * A start beyond its concurrency key's limit is accepted and waits: `deferred: true` with its
 * 1-based `position` among the key's waiters.
 */
export interface StartReply {
  id: string;
  type: string;
  version: number;
  created: boolean;
  deferred?: true;
  position?: number;
}

/** Reply to a signal that was applied (or recognised as a duplicate). */
export interface SignalReply {
  id: string;
  type: string;
  step: number;
  status: WorkflowStatus;
  value: unknown;
  duplicate?: boolean;
  /**
   * The signal was debounced: kept in window `key` (with `count` signals so far), applied at
   * `applyAt` (ISO) unless another one moves the window on.
   */
  debounced?: { key: string; count: number; applyAt: string };
  /** The step's reply value (`jetflow.reply`), e.g. `{nodeId, duplicate}` for a tree signal. */
  result?: unknown;
}

/** Body of `wf.cancel.<type>.<id>`. */
export interface CancelRequest {
  reason?: string;
}

/** Reply to `wf.query.<type>.<id>`. */
export interface QueryReply {
  id: string;
  type: string;
  version: number;
  status: WorkflowStatus;
  value: unknown;
  context: unknown;
  tags: string[];
  /** Event types the workflow accepts right now (empty once finished). */
  accepts: string[];
  step: number;
  createdAt: string;
  updatedAt: string;
  output?: unknown;
  error?: ErrorData;
  /** True while paused by an operator (messages are held, not applied). */
  paused?: boolean;
  /** Messages held while paused (applied in order on resume). */
  held?: number;
  /** While `deferred`: its concurrency key, 1-based position among the waiters, since when. */
  deferred?: { key: string; position: number | null; since: string };
  /** The concurrency key the workflow holds a slot of (admitted, not finished). */
  concurrencyKey?: string;
  /** The workflow that started this one as its child (E8). */
  parent?: WorkflowRef;
  /** Activities parked for manual review (`onExhausted: 'review'`), by actor id. */
  needsReview?: {
    actorId: string;
    activity: string;
    taskId: string;
    error: ErrorData;
    attempts: number;
    at: string;
  }[];
  /**
   * What the running workflow awaits now, from its record: its pending activities, child
   * workflows and watches (one per invoking actor), and its timers with their due times. Absent
   * once finished. `jetflow why` adds what the server knows of each (queued, running, backoff).
   */
  waiting?: {
    tasks: WaitingTask[];
    timers: { id: string; dueAt: string | null }[];
    /** Open debounce windows: signals kept, applied when the window's timer fires. */
    debounced?: { key: string; count: number; since: string }[];
  };
}

/** One pending activity, child workflow or watch of a running workflow (see `QueryReply`). */
export interface WaitingTask {
  actorId: string;
  kind: 'activity' | 'workflow' | 'watch';
  taskId: string;
  /** Activities: the activity name, its queue and the task's subject token. */
  activity?: string;
  queue?: string;
  taskKey?: string;
  /** Activities: the task's priority level when not 3. */
  priority?: number;
  /** Activities: the task's fairness key, when it has one. */
  fairness?: string;
  /** Child workflows and watches: the awaited workflow. */
  target?: WorkflowRef;
  /** Parked for manual review (`onExhausted: 'review'`). */
  parked?: boolean;
}

/** Every error reply: `{ "error": { type, code, message, retryable, details? } }`. */
export interface ErrorReply {
  error: ErrorData & { accepts?: string[] };
}

interface NotificationBase {
  workflowType: string;
  id: string;
  version: number;
  /** Step number after which this was emitted; with `type` it identifies the notification. */
  step: number;
  /** ISO-8601 time of the step. */
  at: string;
  /** Events the step emitted with XState `emit()`, in order (e.g. a tree's `nodes` changes). */
  emitted?: Record<string, unknown>[];
}

/** Lifecycle notifications on `wf.events.<type>.<id>`, discriminated on `type`. */
export type Notification =
  | (NotificationBase & {
      type: 'started';
      value: unknown;
      input: unknown;
      /** The workflow that started this one as its child (E8). */
      parent?: WorkflowRef;
    })
  /** The start waits for a slot of its concurrency key (`position` among the waiters, 1-based). */
  | (NotificationBase & { type: 'deferred'; key: string; position: number; input: unknown })
  | (NotificationBase & { type: 'transitioned'; event: string; value: unknown })
  | (NotificationBase & { type: 'completed'; value: unknown; output: unknown })
  | (NotificationBase & { type: 'failed'; error: ErrorData })
  | (NotificationBase & { type: 'canceled'; reason: string | undefined })
  | (NotificationBase & { type: 'rejected'; event: string; error: ErrorData; accepts: string[] });

export type NotificationType = Notification['type'];

/**
 * An effect the step owes, persisted in the record's outbox before it is performed. Each has a
 * deterministic message id `<type>.<id>.<step>.<index>` so that performing it twice is harmless.
 */
export type Effect =
  | { kind: 'notify'; notification: Notification }
  /** Publish an activity task to its queue (msg id = `taskId`). */
  | { kind: 'task'; task: StoredTask }
  /** Cancel an activity: purge its queued task and tell a running attempt to abort. */
  | {
      kind: 'stopTask';
      actorId: string;
      taskId: string;
      queue: string;
      taskKey: string;
      /** The task's priority level when not 3 (its subject). */
      priority?: number;
    }
  /**
   * Durable timer: a scheduled message (`Nats-Schedule: @at <dueAt>`) on
   * `wf.timer.<type>.<id>.<timerKey>` whose target is the workflow's shard inbox. `timerKey`
   * is derived from (type, id, timerId, step): each setting of a timer has its own subject.
   */
  | {
      kind: 'timer';
      timerId: string;
      timerKey: string;
      step: number;
      event: unknown;
      delayMs: number;
      dueAt: number;
    }
  /** Cancel a timer: purge the schedule subject of the setting being canceled. */
  | { kind: 'cancelTimer'; timerId: string; timerKey: string }
  /**
   * Concurrency keys: leave the key record of `key` (a holder frees its slot, a waiter leaves
   * the queue) and send an `admit` to each waiter the freed slots go to. Idempotent: a repeat
   * finds the workflow gone from the record and only sends the hand-over's admits again.
   */
  | { kind: 'keyRelease'; key: string; keyToken: string }
  /** Concurrency keys: move this waiter to the head of its key's queue (operator `promote`). */
  | { kind: 'keyPromote'; key: string; keyToken: string }
  /**
   * Concurrency keys: cancel workflow `id` of the same type (its inbox, kind `cancel`, with a
   * msg id the target remembers): `cancel-in-progress` and `replace-queued`.
   */
  | { kind: 'keyCancel'; id: string; reason: string }
  /**
   * A message to another workflow's inbox (E8, ACTIVITY-TREES §2.9.12): msgpack `body` on
   * `wf.inbox.<inbox>.<to.type>.<to.id>`, msg id `msgId` when given (a child's result:
   * `result.<taskId>`), else the effect's own id `<type>.<id>.<step>.<index>`. With `stamp`, the
   * performer adds `from: {type, id, step, index}` (this workflow, this effect) to the body: the
   * receiver's watermark. Messages to one target are performed in outbox order.
   */
  | {
      kind: 'message';
      inbox: CrossInboxKind;
      to: WorkflowRef;
      body: Record<string, unknown>;
      msgId?: string;
      stamp?: true;
    }
  /**
   * The end of a batch item's workflow (issue 23): move ledger key `<batch.id>.i.<batch.item>`
   * of `<prefix>_batches` to `status` with compare-and-set, once per generation (a repeat finds
   * it terminal, a stale generation finds a newer one): the batch's counters fold that change.
   */
  | {
      kind: 'batchItem';
      batch: BatchRef;
      status: 'succeeded' | 'failed' | 'canceled';
      error?: ErrorData;
    }
  /**
   * A batch this workflow starts (issue 23, `startBatch`): create batch `batch.id`, submit its
   * items from position 0 and seal it, with this workflow as the `onComplete` signal target.
   * Each part is idempotent, so performing it again after a crash changes nothing.
   */
  | {
      kind: 'batchStart';
      batch: {
        id: string;
        type: string;
        items: { key: string; input: unknown }[];
        policy?: unknown;
        cancelRest?: boolean;
        event?: string;
      };
    }
  /**
   * An emitted event with `alert: <queue>`: JSON on `wf.alerts.<queue>.<type>.<id>` (stream of
   * the events), the event plus the base fields `workflowType`, `id`, `version`, `step`, `at`.
   */
  | { kind: 'alert'; queue: string; alert: Record<string, unknown> }
  /**
   * Steps applied in the same record write as this record's step (issue 18: several queued
   * messages of one workflow folded into one write), oldest first. Each keeps what it owes:
   * its journal entry (built when it was decided: it needs the record of its own step) and its
   * notifications and alerts, with the msg ids they would have had as steps of their own. The
   * performer publishes them in step order, before any other effect of the outbox. Engines from
   * before this kind have no handler for it: the outbox stays owed until a newer engine performs it.
   */
  | { kind: 'steps'; steps: FoldedStep[] }
  /**
   * Append the step's journal entry. The effect holds what the record does not (the event, the
   * state before, the activity outcome); the performer completes it from the record.
   */
  | {
      kind: 'journal';
      cause: JournalCause;
      seq: number;
      event: JournalEvent;
      from?: JournalState;
      activity?: JournalActivity;
      /** For `cause: 'operator'`: the action. */
      operator?: JournalOperator;
      /** The message was held (the workflow is paused), not applied. */
      held?: true;
      /** A debounced signal: kept in its window, not applied (see `WorkflowRecord.debounced`). */
      debounced?: JournalDebounce;
      /** A held message applied (or dropped) after a resume. */
      released?: true;
      /** A released message that could no longer be applied (rejected or ignored), and why. */
      dropped?: { reason: string; error?: ErrorData };
      /** Events the step emitted (XState `emit()`), in order. */
      emitted?: Record<string, unknown>[];
      /** The trigger message that caused the step. */
      trigger?: TriggerOrigin;
      /** For `cause: 'timer'`: the timer that fired. */
      timerId?: string;
      /** For a cross-workflow send: its sender (delivered to the machine as `$from`). */
      sender?: SendOrigin;
    };

/**
 * A step folded into a later step's record write (see the `steps` effect): its number, its journal
 * entry and its own notify and alert effects with their index in its outbox (the msg id).
 */
export interface FoldedStep {
  step: number;
  entry?: JournalEntry;
  effects: [number, Extract<Effect, { kind: 'notify' } | { kind: 'alert' }>][];
}

/** A debounce window as the journal tells it. */
export interface JournalDebounce {
  key: string;
  /** Signals the window took so far (with this one). */
  count: number;
  /** When its event is applied if no further signal comes (epoch ms); absent once applied. */
  applyAt?: number;
  applied?: true;
}

/** What caused a step. */
export type JournalCause =
  | 'start'
  | 'signal'
  | 'cancel'
  | 'result'
  | 'timer'
  | 'failure'
  /** A deferred workflow was admitted by its concurrency key: its machine starts. */
  | 'admit'
  /** An operator's admin request (`<prefix>.admin.<verb>.<type>.<id>`). */
  | 'operator'
  /** Another workflow started awaiting this one's end (`wf.inbox.watch`, E8). */
  | 'watch';

/** The operator action a step applied (step entries with `cause: 'operator'`). */
export interface JournalOperator {
  action: AdminVerb;
  by: string;
  reason: string;
  requestId?: string;
  /** The verb's parameters: `actorId`, `attempts`, `output`, `toStep`. */
  params?: Record<string, unknown>;
}

/**
 * Operator verbs on `<prefix>.admin.<verb>.<type>.<id>`. `shutdown`, `cancel` and `prune` act on
 * an activity tree's node only (`nodeId`); `retry` and `resolve` on a node (`nodeId`) or a parked
 * activity (`actorId`); `pause` / `resume` on the workflow or, with `scope: "dispatch"`, on a
 * tree's dispatch. `promote`, `skip` and `release` act on concurrency keys.
 */
export type AdminVerb =
  | 'pause'
  | 'resume'
  | 'retry'
  | 'resolve'
  | 'fail'
  | 'reset'
  | 'terminate'
  | 'shutdown'
  | 'cancel'
  | 'prune'
  /** Concurrency keys: move a deferred workflow to the head of its key's queue. */
  | 'promote'
  /** Concurrency keys: cancel a deferred workflow (leaves the queue), with a reason. */
  | 'skip'
  /** Concurrency keys: free the slot of a holder that has ended (or whose record is gone). */
  | 'release'
  /**
   * Move the workflow to another version of its definition with a given snapshot (a step of its
   * own, in inbox order): what `jetflow migrate --apply` and `--revert` send.
   */
  | 'migrate';

export const ADMIN_VERBS: readonly AdminVerb[] = Object.freeze([
  'pause',
  'resume',
  'retry',
  'resolve',
  'fail',
  'reset',
  'terminate',
  'shutdown',
  'cancel',
  'prune',
  'promote',
  'skip',
  'release',
  'migrate',
]);

/** The verbs that act on a tree node (`nodeId`), or need it (`shutdown`, `cancel`, `prune`). */
export const NODE_ONLY_VERBS: readonly AdminVerb[] = Object.freeze(['shutdown', 'cancel', 'prune']);

/** The verbs a bulk job runs (workflow-level forms only). */
export const BULK_VERBS: readonly AdminVerb[] = Object.freeze([
  'pause',
  'resume',
  'retry',
  'resolve',
  'fail',
  'reset',
  'terminate',
  'promote',
  'skip',
  'release',
]);

/** How many operator request ids a record remembers (see `WorkflowRecord.requestIds`). */
export const REQUEST_ID_MEMORY = 100;

/** Max messages held in a paused workflow's record by default (signals and cancels beyond it are refused). */
export const HELD_MAX = 100;

/**
 * Body of an admin request (JSON or msgpack). `reason` and `by` are free text (journaled);
 * `requestId` makes a repeat count once. The other fields belong to some verbs only.
 */
export interface AdminRequest {
  reason: string;
  by: string;
  requestId?: string;
  /** retry, resolve, fail: the parked activity (XState actor id). */
  actorId?: string;
  /** retry: attempt budget of the new dispatch (default: the activity's `maxAttempts`). */
  attempts?: number;
  /** resolve: the activity's output. */
  output?: unknown;
  /** fail: the error delivered (default: the parked error). */
  error?: { type?: string; message?: string; details?: unknown };
  /** reset: the step whose state is restored. */
  toStep?: number;
  /** retry, resolve, shutdown, cancel, prune: the activity tree's node (`n<k>`). */
  nodeId?: string;
  /** resolve of a node: children created as from a result. */
  decisions?: unknown[];
  /** pause, resume: `workflow` (default: the whole inbox is held) or `dispatch` (a tree's). */
  scope?: 'workflow' | 'dispatch';
  /** release: the concurrency key, needed only when the holder's record no longer exists. */
  key?: string;
  /** migrate: the version the workflow moves to. */
  version?: number;
  /** migrate: the persisted snapshot it has on that version (validated against its machine). */
  snapshot?: unknown;
  /**
   * migrate: the step the snapshot was planned from. Applied only if the workflow is still at
   * that step; otherwise refused with `conflict` (a message came first: plan again).
   */
  expectStep?: number;
  /** migrate: the migration job; a workflow already moved by this job is a duplicate. */
  jobId?: string;
  /** migrate: the job this one reverts (`jetflow migrate --revert <job>`). */
  revertOf?: string;
}

/** What a record keeps of the last migration that moved it (see the admin verb `migrate`). */
export interface MigrationMark {
  /** The job that moved it (`requestId`-independent: a repeat of the job is recognised). */
  jobId: string;
  from: number;
  to: number;
  /** The step that applied it; the journal's entry of `step - 1` holds the snapshot before. */
  step: number;
  at: number;
  /** Set when this migration reverted the job named. */
  revertOf?: string;
}

/** Reply to an applied admin request. */
export interface AdminReply {
  id: string;
  type: string;
  action: AdminVerb;
  /** Step that applied it (the workflow's current step for a duplicate). */
  step: number;
  status: WorkflowStatus;
  value: unknown;
  paused: boolean;
  /** What changed, in words and data (held messages released, task dispatched, …). */
  changed: Record<string, unknown>;
  /** The verb (ACTIVITY-TREES §2.9.9's name for `action`). */
  verb: AdminVerb;
  /**
   * A node verb or dispatch pause/resume (§2.9.9): every node status change it caused, in order
   * (`from: null` for a node it created), and `dispatchPaused` for pause/resume.
   */
  result?: {
    nodeId?: string;
    changed: { nodeId: string; from: string | null; to: string }[];
    dispatchPaused?: boolean;
  };
  /** True when a request with the same `requestId` was already applied: nothing changed. */
  duplicate?: boolean;
}

export type EffectKind = Effect['kind'];

/** A workflow, by type and id. */
export interface WorkflowRef {
  type: string;
  id: string;
}

/**
 * The trigger message a start or signal came from: the trigger's name and the message's stream
 * sequence in the trigger's stream. On a signal it is the sender watermark `trigger/<name>` of
 * the workflow record (a sequence at or below it is a repeat: a redelivery, a rewind).
 */
export interface TriggerOrigin {
  name: string;
  /** 0 for a core-NATS subject trigger (no sequence, no watermark: at most once). */
  seq: number;
  /**
   * An operator's replay of a parked message that is deduplicated by its message id (`msgId`
   * `trigger/<name>/<seq>` in the record's `msgIds`), not by the watermark: later messages of
   * its key may have been applied meanwhile (`onPoison: 'park-message'`).
   */
  replay?: true;
}

/** Inbox kinds one workflow's engine writes into another's inbox (E8). */
export type CrossInboxKind = 'signal' | 'start' | 'watch' | 'result' | 'cancel';

/** A batch item's workflow: its batch, item key and generation (issue 23). */
export interface BatchRef {
  id: string;
  item: string;
  gen: number;
}

/** Where a cross-workflow send comes from: the sender and its outbox effect (the watermark). */
export interface SendOrigin extends WorkflowRef {
  step: number;
  index: number;
}

/** The parent (or watcher) of a workflow: the task of its record that awaits the end. */
export interface ParentRef extends WorkflowRef {
  taskId: string;
  /** The parent's task key (XState actor id, or a tree node's run key). */
  key: string;
  /** Proof the result must carry (`taskToken` of the parent's secret; absent from old parents). */
  token?: string;
}

/** Senders remembered per workflow in `inbound` (least recently applied ones are forgotten). */
export const INBOUND_MEMORY = 10_000;

/** Reserved event a sender receives when a send of it could not be delivered (E8). */
export const SEND_FAILED_EVENT = 'jetflow.send.failed';

/** The durable state of one workflow: value of key `<type>.<id>` in the workflows bucket. */
export interface WorkflowRecord {
  v: typeof WIRE_VERSION;
  type: string;
  id: string;
  version: number;
  status: WorkflowStatus;
  /** XState persisted snapshot. */
  snapshot: unknown;
  /** Number of applied steps; 0 after start. */
  step: number;
  /** Inbox stream sequence of the last applied message: a redelivery at or below it is a repeat. */
  lastSeq: number;
  /**
   * The workflow's priority level when not 3 (from its start or its definition): its place among
   * the waiters of its concurrency key, and the default level of its activities.
   */
  priority?: number;
  /** Timers set and not yet fired or cancelled: timer id → step that set it. */
  timers: Record<string, number>;
  /**
   * Debounced signals waiting for their window to close, by window key (`<event type>` or
   * `<event type>.<key>`): the event to apply (last, first or the fold so far), how many signals
   * the window took, and when it opened. Its timer is `jetflow.debounce.<window key>`.
   */
  debounced?: Record<string, DebouncedWindow>;
  /**
   * The event of each pending timer (timer id → event). A fired timer applies this event, not the
   * one in the timer message, so a forged timer message cannot inject an event. Absent in records
   * written before it existed (their timers fall back to the message's event).
   */
  timerEvents?: Record<string, unknown>;
  /**
   * Client message ids (`Nats-Msg-Id` of signals and cancels, schedule tick ids) of the last
   * applied messages, oldest first, at most {@link MSG_ID_MEMORY} by default: a repeat is a
   * duplicate even after the server forgot the id (restart, dedup window passed).
   */
  msgIds?: string[];
  /**
   * Identity of the inbox stream `lastSeq` belongs to (its creation time). When the inbox stream
   * is recreated, sequences restart; a record from another incarnation has its `lastSeq` rebased
   * (treated as 0) instead of every new message being taken for a repeat.
   */
  inbox?: string;
  /** Inbox shard of this workflow (learned from the start message): where its timers fire. */
  shard: number;
  /**
   * Random secret of this workflow (issue 17, `src/engine/proof.ts`): results, attempt notices and
   * timer messages are applied only with a token derived from it. Never sent or journaled.
   * Absent in records written before it existed (their messages are not checked).
   */
  secret?: string;
  /** Activities started and not yet finished, by XState actor id. */
  tasks: Record<string, TaskRef>;
  /** Effects owed by step `step` (performed idempotently; replaced by the next step's). */
  outbox: Effect[];
  /**
   * Set to `step` once the outbox of that step was performed (written for outboxes that start
   * work: activity tasks and timers). A record loaded with `outboxDone === step` is not performed
   * again, so a finished activity is never queued a second time, however late the load.
   */
  outboxDone?: number;
  /**
   * Operator request ids (`requestId` of admin requests, hashed) of the last applied ones,
   * oldest first, at most {@link REQUEST_ID_MEMORY}: a repeat is applied once.
   */
  requestIds?: string[];
  /** Set while paused: messages are held (`held`), not applied, until resume. */
  paused?: { at: number; by: string; reason: string };
  /** Messages that arrived while paused, in inbox order; applied one step each after resume. */
  held?: HeldMessage[];
  /** Due time (epoch ms) of each pending timer: journaled, so a reset can re-arm them. */
  timerDue?: Record<string, number>;
  /** Set for a workflow whose definition has a concurrency key (see {@link Admission}). */
  admission?: Admission;
  /** Set once an operator's migration (`migrate` verb) moved it to another version. */
  migration?: MigrationMark;
  /** Epoch ms. */
  createdAt: number;
  updatedAt: number;
  /** Epoch ms since the state value is what it is now (absent in records from before it). */
  stateSince?: number;
  /** The definition's search attributes, read from the context after the last step. */
  attributes?: Record<string, string | number | boolean | null>;
  output?: unknown;
  error?: ErrorData;
  /** Set when another workflow started this one as its child: told of the end (E8). */
  parent?: ParentRef;
  /** Set for an item of a batch: its end moves the item's ledger key (issue 23). */
  batch?: BatchRef;
  /** Workflows awaiting this one's end (`wf.inbox.watch`), by their task id. */
  watchers?: Record<string, ParentRef>;
  /**
   * Per-sender watermarks of cross-workflow sends, `"<type>.<id>"` → `[step, index]` of the last
   * applied send (a send at or below it is a repeat), least recently applied first, at most
   * {@link INBOUND_MEMORY}. `"<type>.<id>/failed"` keys track the `jetflow.send.failed`
   * messages about this workflow's own sends to that target (their `[step, index]`).
   */
  inbound?: Record<string, [number, number]>;
}

/**
 * A workflow's place under its concurrency key. While `status` is `deferred` the machine has not
 * run: `input` is kept for it; the admit message must carry `startSeq`.
 */
export interface Admission {
  /** The concurrency key (the definition's `concurrency.key(input)`). */
  key: string;
  /** Subject-safe token of the key (hash): its record is `<type>.<keyToken>` in `<prefix>_keys`. */
  keyToken: string;
  /** Inbox sequence of the start: an `admit` names it, so a stale or foreign admit is ignored. */
  startSeq: number;
  /** Epoch ms the start was deferred (absent: admitted at once). */
  deferredAt?: number;
  /** Position among the waiters when deferred (1-based). */
  position?: number;
  /** Epoch ms of admission (absent while deferred). */
  admittedAt?: number;
  /** The start input, kept while deferred (dropped on admission). */
  input?: unknown;
}

/** Body of an internal `admit` inbox message (msgpack): a freed slot of `key` is this workflow's. */
export interface AdmitMessage {
  key: string;
  startSeq: number;
  /** Epoch ms the key record admitted it (journaled: the admission order per key). */
  at?: number;
}

/**
 * The durable state of one concurrency key: value of `<type>.<keyToken>` in bucket
 * `<prefix>_keys`, written only with compare-and-set. `holders` run (at most `limit`);
 * `waiters` are kept in arrival order and admitted in the order of `waiterOrder`
 * (`src/engine/admission.ts`): promoted first, then aged, then by priority level, round robin
 * across fairness keys, FIFO within one; without priorities or fairness keys, FIFO.
 */
export interface KeyRecord {
  v: typeof WIRE_VERSION;
  type: string;
  key: string;
  /** The limit of the last definition that acquired a slot. */
  limit: number;
  holders: KeyHolder[];
  waiters: KeyWaiter[];
  updatedAt: number;
  /** The aging bound of the last definition that acquired a slot, when not the default 60 s. */
  maxWaitMs?: number;
  /** Per priority level (`"1"`..`"5"`): the fairness key served last and how many in a row. */
  turns?: Record<string, { key: string; n: number }>;
}

export interface KeyHolder {
  id: string;
  /** Inbox sequence of the holder's start (the admit message names it). */
  startSeq: number;
  /** Epoch ms admitted. */
  at: number;
  /** Epoch ms the start arrived (equal to `at` when admitted at once). */
  queuedAt: number;
  /** The holder whose release handed this slot over (absent: admitted at start). */
  via?: string;
  /** Set when a `cancel-in-progress` start asked this holder to cancel (the newer start's id). */
  canceling?: string;
  /** Set when an operator promoted it. */
  promoted?: true;
}

export interface KeyWaiter {
  id: string;
  startSeq: number;
  /** Epoch ms the start arrived. */
  queuedAt: number;
  promoted?: true;
  /** The start's priority level when not 3 (1 first). */
  priority?: number;
  /** The start's fairness key, when it has one. */
  fairness?: string;
  /** Waiters of its fairness key admitted per turn, when not 1. */
  weight?: number;
}

/** Body of an internal inbox message (msgpack). */
export type InboxMessage =
  | {
      kind: 'start';
      input: unknown;
      /** The start's own priority level (1-5), over the definition's. */
      priority?: number;
      parent?: ParentRef;
      batch?: BatchRef;
      trigger?: TriggerOrigin;
    }
  | {
      kind: 'signal';
      event: { type: string; [k: string]: unknown };
      msgId?: string;
      /** Forwarded by a trigger (deduplicated by the record's `trigger/<name>` watermark). */
      trigger?: TriggerOrigin;
      /** A cross-workflow send (E8): its sender and outbox effect. */
      from?: SendOrigin;
      /** With `from`: start the workflow with this input if it does not exist. */
      startIfAbsent?: { input: unknown };
      /**
       * A `jetflow.send.failed` from the target of one of this workflow's sends: the target and
       * the failed send's own `[step, index]` (deduplicated by the `/failed` watermark).
       */
      undeliverable?: SendOrigin;
    }
  | { kind: 'cancel'; reason: string | undefined; msgId?: string; from?: ParentRef }
  | { kind: 'watch'; watcher: ParentRef }
  | ({ kind: 'result' } & ResultMessage)
  | ({ kind: 'progress' } & ProgressMessage)
  | ({ kind: 'timer' } & TimerMessage)
  | ({ kind: 'admit' } & AdmitMessage)
  | ({ kind: 'admin'; verb: AdminVerb } & AdminRequest);

/** Body (msgpack) of a fired timer, delivered to `wf.in.<shard>.timer.<type>.<id>`. */
export interface TimerMessage {
  timerId: string;
  /** Step that set the timer: a fired timer whose id was since re-set is recognised as stale. */
  step: number;
  event: unknown;
  /** When the timer was due (epoch ms): the timer's lateness is measured from it. */
  dueAt?: number;
  /** Proof the engine set this timer (`timerToken`): a timer message without it is dropped. */
  token?: string;
}

/** One open debounce window of a workflow (see `WorkflowRecord.debounced`). */
export interface DebouncedWindow {
  event: unknown;
  count: number;
  /** Epoch ms of the window's first signal. */
  since: number;
}

/** What a record remembers of a running activity. */
export interface TaskRef {
  taskId: string;
  taskKey: string;
  activity: string;
  queue: string;
  /** The task's priority level when not 3 (its subject carries it). */
  priority?: number;
  /** The task's fairness key, when it has one (it is staged until its turn). */
  fairness?: string;
  /** Set when the activity's `onExhausted` is `'review'`: a final failure parks it. */
  onExhausted?: 'review';
  /** Set while the activity is parked for manual review (retry, resolve or fail it). */
  parked?: ParkedActivity;
  /**
   * Set for a task the machine dispatched with `jetflow.dispatch` (no XState child): its
   * results are delivered as `jetflow.task.done|failed|retrying` events keyed by actor id.
   */
  dispatched?: true;
  /** The last attempt an attempt notice reported (a notice at or below it is not applied). */
  noticed?: number;
  /** `workflow`: a child workflow this one started; `watch`: one it awaits. Absent: activity. */
  kind?: 'activity' | 'workflow' | 'watch';
  /** For `workflow` and `watch`: the awaited workflow. */
  target?: WorkflowRef;
  /** For `workflow`: what leaving the invoking state (or ending) does to the child. */
  parentClose?: 'cancel' | 'abandon';
}

/** An activity whose retries were exhausted with `onExhausted: 'review'`. */
export interface ParkedActivity {
  error: ErrorData;
  /** Attempts used. */
  attempts: number;
  /** Epoch ms. */
  at: number;
}

/** A message kept in a paused workflow's record, applied in order on resume. */
export interface HeldMessage {
  /** Inbox sequence it arrived with. */
  seq: number;
  message: InboxMessage;
}

/**
 * An activity task: msgpack body of a message on `wf.task.<queue>.<taskKey>` (stream `WF_TASKS`,
 * work-queue retention; header `Nats-Msg-Id: <taskId>`, `Content-Type: application/msgpack`).
 * The attempt number is `Jf-Attempt` (absent = 1) plus the JetStream delivery count minus 1: the
 * engine's first message has no `Jf-Attempt`; a retry waiting out its backoff is a scheduled
 * message on `wf.task.<queue>.<taskKey>.<attempt>` (`Nats-Msg-Id: <taskId>.a<attempt>`) that the
 * server publishes to the task subject with `Jf-Attempt: <attempt>` when the backoff has passed.
 */
export interface TaskMessage {
  v: typeof WIRE_VERSION;
  /** Unique per activity invocation: `<type>.<id>.<step>.<actorId>`. */
  taskId: string;
  /** Subject token derived from `taskId` (hash): the task's own subject, for cancel-by-purge. */
  taskKey: string;
  workflowType: string;
  workflowId: string;
  /** XState actor id of the invocation: the done/error event is `xstate.done.actor.<actorId>`. */
  actorId: string;
  activity: string;
  queue: string;
  input: unknown;
  maxAttempts: number;
  retry: {
    initialIntervalMs: number;
    backoffCoefficient: number;
    maxIntervalMs: number;
    jitter: number;
    nonRetryableErrorTypes: string[];
    /**
     * Exact schedule: the delay before attempt `a+1` is `delaysMs[min(a-1, len-1)]`, spread by
     * `jitter`. Absent: the exponential formula.
     */
    delaysMs?: number[];
  };
  startToCloseMs: number;
  heartbeatMs?: number;
  /** Epoch ms after which no attempt starts and the workflow gets a timeout error. */
  deadline?: number;
  /** For a tree node: the node's identity (ACTIVITY-TREES §2.9.4). */
  node?: Record<string, unknown>;
  /** An HTTP activity's endpoint: run by a worker with `http` enabled, no user code. */
  http?: { url: string; method?: string; headers?: Record<string, string>; timeoutMs?: number };
  /**
   * The activity's global rate limit, its key computed by the engine from the input: at most
   * `limit` attempts of (activity, key) start in any `periodMs` (see `ActivityOptions.rateLimit`).
   */
  rateLimit?: { key: string; limit: number; periodMs: number };
  /**
   * The activity's global concurrency limit, its key computed by the engine from the input: at
   * most `limit` attempts of (activity, key) run at once (see `ActivityOptions.concurrency`).
   */
  concurrency?: { key: string; limit: number };
  /**
   * The task's priority level, computed by the engine (`ActivityOptions.priority`): 1 is served
   * first. Absent: 3. It picks the task's subject and so its queue consumer.
   */
  priority?: number;
  /**
   * The task's fairness key (`ActivityOptions.fairnessKey`) and its weight (tasks per turn):
   * published first to the key's staging subject, from which workers move tasks onto the
   * level's subject round robin across keys.
   */
  fairness?: { key: string; weight: number };
  /** Where the worker publishes the result (JetStream): `wf.inbox.result.<type>.<id>`. */
  resultSubject: string;
  scheduledAt: number;
  /** Proof of this task: the result and attempt notices must carry it back unchanged. */
  token?: string;
}

/**
 * A task as an outbox keeps it. Fields every task of the record shares (`v`, `workflowType`,
 * `workflowId`, `resultSubject`, `scheduledAt` = the step's time) and retry fields equal to the
 * defaults may be left out: the performer fills them in ({@link fullTask}). A tree's fan-out of
 * 1,000 nodes puts 1,000 tasks in one record; this keeps that record well under `max_payload`.
 */
export type StoredTask = Omit<
  TaskMessage,
  'v' | 'workflowType' | 'workflowId' | 'resultSubject' | 'scheduledAt' | 'retry'
> &
  Partial<
    Pick<TaskMessage, 'v' | 'workflowType' | 'workflowId' | 'resultSubject' | 'scheduledAt'>
  > & {
    retry?: Partial<TaskMessage['retry']>;
  };

/** The task message a stored task stands for (see {@link StoredTask}). */
export function fullTask(
  record: Pick<WorkflowRecord, 'type' | 'id' | 'updatedAt'>,
  t: StoredTask,
  resultSubject: string,
  defaults: TaskMessage['retry'],
): TaskMessage {
  return {
    v: WIRE_VERSION,
    workflowType: record.type,
    workflowId: record.id,
    resultSubject,
    scheduledAt: record.updatedAt,
    ...t,
    retry: { ...defaults, ...t.retry },
  };
}

/**
 * An activity result: msgpack body published by a worker with JetStream to the task's
 * `resultSubject`, header `Nats-Msg-Id: result.<taskId>`. Exactly one of `output` / `error`.
 */
export interface ResultMessage {
  taskId: string;
  actorId: string;
  ok: boolean;
  output?: unknown;
  error?: ErrorData & { attempt?: number };
  attempt: number;
  /** On success of a tree node: the children it decided (ignored elsewhere but passed on). */
  decisions?: unknown;
  /** A child's or watched workflow's end (E8): the workflow that ended. */
  from?: WorkflowRef;
  /** The task's `token` (a child's end: its `ParentRef.token`); required when the task had one. */
  token?: string;
}

/**
 * An attempt notice: a worker publishes it on `resultSubject` before it naks a failed attempt
 * that will be retried (msg id `progress.<taskId>.<attempt>`). Informational: the engine applies
 * it only while the task is current and `attempt` is above the last one it saw.
 */
export interface ProgressMessage {
  taskId: string;
  actorId: string;
  progress: 'retrying';
  attempt: number;
  /** Epoch ms of the next attempt. */
  retryAt: number;
  error: ErrorData & { attempt?: number };
  /** The task's `token`. */
  token?: string;
}

/** An event as the journal keeps it: its type, and its payload unless cut. */
export interface JournalEvent {
  type: string;
  /** The event without `type` (the event object's other fields); absent when cut. */
  payload?: unknown;
  /** Set when the payload was cut: its encoded size in bytes (over `journalPayloadMaxBytes`). */
  truncated?: { bytes: number };
}

/** State of a workflow as the journal keeps it. */
export interface JournalState {
  /** XState state value, e.g. `{ "shipping": "packing" }`. */
  value: unknown;
  /** Active leaf state paths, dot-joined, e.g. `["shipping.packing"]` (several when parallel). */
  paths: string[];
}

/** One effect a step issued, as the journal lists it. */
export type JournalEffect =
  | {
      kind: 'task';
      actorId: string;
      taskId: string;
      activity: string;
      queue: string;
      /** The task's input (absent when cut: then `inputTruncated`; absent in older entries). */
      input?: unknown;
      /** Set when the input was cut: its encoded size in bytes. */
      inputTruncated?: { bytes: number };
    }
  | { kind: 'stopTask'; actorId: string; taskId: string }
  | { kind: 'timer'; timerId: string; dueAt: number; event: string }
  | { kind: 'cancelTimer'; timerId: string }
  | { kind: 'notify'; type: NotificationType }
  /** An alert published on `wf.alerts.<queue>.<type>.<id>`. */
  | { kind: 'alert'; queue: string; type: string }
  /** A message to another workflow (links, children): its subject and event type. */
  | {
      kind: 'message';
      subject: string;
      event?: string;
      /** The message body (absent when cut: then `bodyTruncated`; absent in older entries). */
      body?: unknown;
      bodyTruncated?: { bytes: number };
    };

interface JournalBase {
  v: typeof WIRE_VERSION;
  workflowType: string;
  id: string;
  version: number;
  /**
   * Step number: for `step` entries, the step this entry records (0 is the start; contiguous,
   * one entry per step). For the others, the workflow's step when it happened (unchanged).
   */
  step: number;
  /** Epoch ms. */
  at: number;
  /** Engine that wrote the entry. */
  engine: string;
  /** Inbox stream sequence of the message (absent for operator actions). */
  seq?: number;
}

/** A workflow's admission by its concurrency key, as the journal keeps it (epoch ms). */
export interface JournalAdmission {
  key: string;
  deferredAt?: number;
  position?: number;
  /** When the key's record admitted it (the order of these is the admission order per key). */
  admittedAt?: number;
}

/** An activity outcome that produced a step (a `result` message). */
export interface JournalActivity {
  actorId: string;
  taskId: string;
  activity?: string;
  ok: boolean;
  /** Attempt that produced the result (1 = first). */
  attempt: number;
  /** A failure after every retry was used up (or not retryable): the activity's end. */
  exhausted?: boolean;
  error?: ErrorData;
}

/**
 * A journal entry: msgpack on `<prefix>.journal.<type>.<id>` in stream `<PREFIX>_HISTORY`, with
 * `Nats-Msg-Id` `<type>.<id>.<step>.j` for steps (`….rej.<seq>`, `….ign.<seq>` for the others),
 * so a step re-performed after a crash is journaled once within the stream's dedup window; a
 * reader drops a step number it has already seen (a re-performance after the window).
 */
export type JournalEntry =
  | (JournalBase & {
      kind: 'step';
      /** The message kind that caused it (`operator`: an admin request). */
      cause: JournalCause;
      /** For `cause: 'operator'`: the action, who, why, the request id and parameters. */
      operator?: JournalOperator;
      /** The message was held, not applied (the workflow is paused): state unchanged. */
      held?: true;
      /**
       * A debounced signal kept in its window (state unchanged), or, on the step that applies a
       * window's event, `applied: true` with how many signals it stands for.
       */
      debounced?: JournalDebounce;
      /** A held message, applied after a resume (its `seq` is older than the resume's). */
      released?: true;
      /** A released message that could no longer be applied: state unchanged, and why. */
      dropped?: { reason: string; error?: ErrorData };
      /** Events the step emitted (XState `emit()`), in order: a tree's `nodes` changes, alerts. */
      emitted?: Record<string, unknown>[];
      /** The trigger message (trigger name, stream sequence) that caused the step. */
      trigger?: TriggerOrigin;
      /** True while the workflow is paused. */
      paused?: boolean;
      /**
       * Pending timers after the step (timer id → due time and event), so that a reset to this
       * step can re-arm them with the time they had left.
       */
      timers?: Record<string, { dueAt: number; event: unknown; setAt?: number }>;
      /**
       * Activities, child workflows and watches pending after the step (actor id → task), as in
       * the record: with the snapshot, the state a step can be re-run from (`jetflow verify`).
       */
      tasks?: Record<string, TaskRef>;
      /** For `cause: 'timer'`: the timer that fired. */
      timerId?: string;
      /** For a cross-workflow send: its sender (the machine saw it as `$from`). */
      sender?: SendOrigin;
      event: JournalEvent;
      /** State before (absent for the start). */
      from?: JournalState;
      to: JournalState;
      status: WorkflowStatus;
      /** Epoch ms since the workflow is in its current state (`to`). */
      stateSince: number;
      /** The context after the step (in a stored entry it is read from `snapshot.context`). */
      context?: unknown;
      /** The persisted XState snapshot after the step: enough to restore the workflow here. */
      snapshot: unknown;
      effects: JournalEffect[];
      /** The definition's search attributes, read from the context after the step. */
      attributes?: Record<string, string | number | boolean | null>;
      activity?: JournalActivity;
      /** Concurrency key, on a `start` and an `admit` entry: deferred at / position, admitted at. */
      admission?: JournalAdmission;
      /**
       * True while the workflow has an activity parked for manual review (retries exhausted with
       * `onExhausted: 'review'`); the visibility index's `needsReview` follows it.
       */
      needsReview?: boolean;
      /** For `completed`: the workflow's output. */
      output?: unknown;
      /** For `failed`: the error. */
      error?: ErrorData;
      createdAt: number;
      /**
       * Set when snapshot and context were left out: the entry was too large for the server
       * (`bytes`: its size), or (`folded`) the step was folded into a later step's record write
       * and its snapshot or pending tasks were large (`bytes` -1, not measured; `tasks` left out
       * too). The entry of the write's last step has the state in full.
       */
      snapshotOmitted?: { bytes: number; folded?: true };
    })
  | (JournalBase & {
      kind: 'rejected';
      event: JournalEvent;
      error: ErrorData;
      accepts: string[];
    })
  | (JournalBase & {
      kind: 'ignored';
      /** `result` or `timer`. */
      cause: string;
      reason: string;
      activity?: JournalActivity;
      timerId?: string;
    })
  | (JournalBase & {
      /**
       * A worker held or deferred an activity task at a stage of the admission pipeline (its
       * rate limit or its concurrency key), written by the worker once per wait (`engine` is
       * `worker <id>`; `step` the step that scheduled the task). Msg id
       * `<taskId>.adm.<stage>.<outcome>.<attempt>.<since>`. `version` is 0 (a worker does not
       * know the workflow's version).
       */
      kind: 'admission';
      stage: 'rate-limit' | 'concurrency-key';
      /** `held`: waits on its worker; `deferred`: postponed as a scheduled message. */
      outcome: 'held' | 'deferred';
      actorId: string;
      taskId: string;
      activity: string;
      attempt: number;
      /** The rate limit's or concurrency key's key. */
      key: string;
      /** Epoch ms the task comes back (deferred) or its rate slot. */
      until?: number;
      /** One line for a person. */
      what: string;
    })
  | (JournalBase & {
      kind: 'operator';
      /** The operator action (e.g. `pause`, `resume`, `retry`, `resolve`) and its parameters. */
      action: string;
      params?: unknown;
      by?: string;
      reason?: string;
    });

export type JournalEntryKind = JournalEntry['kind'];

/** Body of `<prefix>.history.<type>.<id>`. */
export interface HistoryRequest {
  /** First step to return (default 0). */
  fromStep?: number;
  /** Max entries (default 100, max 1,000). */
  limit?: number;
}

/** Reply to a history request: entries in order; `next` is the `fromStep` of the next page. */
export interface HistoryReply {
  entries: JournalEntry[];
  next: number | null;
}
