/**
 * Batches (issue 23): wire types of the `<prefix>.admin.batch.<verb>` requests and replies, the
 * records of bucket `<prefix>_batches`, and the `batch.completed` callback event.
 *
 * Where things live (bucket `<prefix>_batches`, no history):
 * - `<batchId>.meta` — the batch: type, policy, callback, sealed/paused/canceled, the submission
 *   watermark (`next`), accepted items (`total`), generation and outcome. Small, fixed size.
 * - `<batchId>.counts` — the counters: terminal items of the current generation and the stream
 *   sequence of the last ledger change folded into them. Small, fixed size.
 * - `<batchId>.i.<itemKey>` — the ledger: one key per item (status, workflow id, attempts, error).
 */
import type { ErrorData } from '../errors.js';
import type { BatchJobVerb, BulkJobState } from './bulk.js';

/** Status of one item in the ledger. `pending`: accepted while paused, not started yet. */
export type BatchItemStatus = 'pending' | 'running' | 'succeeded' | 'failed' | 'canceled';

export const BATCH_ITEM_STATUSES: readonly BatchItemStatus[] = Object.freeze([
  'pending',
  'running',
  'succeeded',
  'failed',
  'canceled',
]);

export type BatchTerminalStatus = Extract<BatchItemStatus, 'succeeded' | 'failed' | 'canceled'>;

/**
 * When a batch is done and how it ends:
 * - `'complete-with-errors'` (default): done when every item is terminal; outcome `succeeded`
 *   when all succeeded, else `completedWithErrors`.
 * - `'all-must-succeed'`: `failed` at the first failed (or canceled) item; with `cancelRest`
 *   on the batch the items still running are canceled then.
 * - `{ failIfMoreThan: x }` (0 ≤ x < 1): `failed` as soon as more than `x` of the sealed batch's
 *   items failed, else as `'complete-with-errors'`.
 */
export type BatchPolicy = 'complete-with-errors' | 'all-must-succeed' | { failIfMoreThan: number };

export type BatchOutcome = 'succeeded' | 'completedWithErrors' | 'failed';

/** Where `batch.completed` goes: signal an existing workflow, or start one. */
export type BatchCallback =
  /** Signal `type/id` with the event (its `type` is `event`, default `batch.completed`). */
  | { signal: { type: string; id: string; event?: string } }
  /** Start `type/id` (default id `<batchId>-completed-<generation>`) with the event as input. */
  | { start: { type: string; id?: string } };

/** The batch's item counts. `total` = accepted items; `running` = total - pending - terminal. */
export interface BatchCounts {
  total: number;
  pending: number;
  running: number;
  succeeded: number;
  failed: number;
  canceled: number;
}

/** The callback event (exactly one per sealed batch and generation). */
export interface BatchCompletedEvent {
  type: string;
  id: string;
  policy: BatchPolicy;
  outcome: BatchOutcome;
  counts: BatchCounts;
  /** 1, then +1 per `retry-failed`. */
  generation: number;
}

/** `<batchId>.meta`. */
export interface BatchMeta {
  v: 1;
  id: string;
  type: string;
  policy: BatchPolicy;
  cancelRest?: boolean;
  onComplete?: BatchCallback;
  /** Closed to new items: the batch can complete. */
  sealed: boolean;
  paused?: { at: number; by: string; reason: string };
  canceled?: { at: number; by: string; reason: string };
  /** Submission watermark: items at positions below it were handled (accepted or reported). */
  next: number;
  /** Accepted items. */
  total: number;
  /** Accepted items not started (paused). */
  pending: number;
  duplicates: number;
  rejected: number;
  /** A chunk accepted whose starts may not all be published yet (re-published by anyone). */
  inflight?: { keys: string[] };
  /** Generation: 1, then +1 per retry-failed. Item workflows of generation g > 1 are `<id>=<key>=<g>`. */
  gen: number;
  /** Set while a retry-failed has not restarted every failed item yet (its job clears it). */
  retrying?: boolean;
  /**
   * The background job (in `<prefix>_bulk`) of the last cancel, retry-failed and resume: each
   * walks the ledger, so it runs beside the request, resumable, instead of inside it.
   */
  jobs?: Partial<Record<BatchJobVerb, string>>;
  /** The outcome of the current generation, once decided. */
  outcome?: BatchOutcome;
  decidedAt?: number;
  /** The callback of generation `gen` was published. */
  notified?: number;
  /**
   * Epoch ms when a tracker found the batch ended (callback sent, nothing running): trackers
   * then leave it alone. Any later change of the record (retry-failed…) removes it.
   */
  closed?: number;
  createdAt: number;
  updatedAt: number;
}

/** `<batchId>.counts`: terminal items (as of the last folded ledger change). */
export interface BatchCounter {
  v: 1;
  gen: number;
  /** Stream sequence of the last ledger change folded in. */
  lastSeq: number;
  succeeded: number;
  failed: number;
  canceled: number;
  /** Terminal items counted in this generation (for the rate). */
  inGen?: number;
  /** Epoch ms of the first terminal item of this generation (for the rate). */
  since?: number;
  updatedAt: number;
  /** The tracker that last wrote (lease: another one takes over when this stops changing). */
  owner?: string;
}

/** `<batchId>.i.<itemKey>`: one item. */
export interface BatchItem {
  key: string;
  /** The item's workflow id (of the current generation). */
  wf: string;
  /** Position in the submission (first accepted position of this key). */
  index: number;
  gen: number;
  status: BatchItemStatus;
  /** Runs of this item: 1, +1 per retry-failed that restarted it. */
  attempts: number;
  error?: ErrorData;
  at: number;
  /** The item's input (kept to start it after a pause, or again on retry-failed). */
  input?: unknown;
}

/** `<prefix>.admin.batch.create`: declare (or find again) a batch. */
export interface BatchCreateRequest {
  id: string;
  type: string;
  policy?: BatchPolicy;
  cancelRest?: boolean;
  onComplete?: BatchCallback;
}

/** `<prefix>.admin.batch.add`: one chunk of items at positions `from`, `from + 1`, … */
export interface BatchAddRequest {
  id: string;
  from: number;
  items: { key: string; input?: unknown }[];
}

export interface BatchAddReply {
  id: string;
  /** The new submission watermark: resume from here. */
  next: number;
  accepted: number;
  /** Keys already in the batch at another position: not added again. */
  duplicates: { key: string; index: number; firstIndex: number }[];
  /** Items refused (bad key, input too large): not in the batch. */
  rejected: { key: string; index: number; error: ErrorData }[];
}

/** `<prefix>.admin.batch.<verb>` for the verbs that name only the batch. */
export interface BatchRequest {
  id: string;
  by?: string;
  reason?: string;
}

/** `<prefix>.admin.batch.items`. */
export interface BatchItemsRequest {
  id: string;
  status?: BatchItemStatus;
  /** Page cursor from a previous reply. */
  cursor?: number;
  limit?: number;
}

export interface BatchItemsReply {
  id: string;
  items: BatchItem[];
  /** Absent on the last page. */
  cursor?: number;
}

/** Reply of create, seal, status, pause, resume, cancel, retry-failed. */
export interface BatchStatus {
  id: string;
  type: string;
  policy: BatchPolicy;
  sealed: boolean;
  paused: boolean;
  canceled: boolean;
  generation: number;
  next: number;
  counts: BatchCounts;
  duplicates: number;
  rejected: number;
  /** `open` until the outcome of the current generation is decided. */
  state: 'open' | 'done';
  outcome?: BatchOutcome;
  /** The callback of this generation was published. */
  notified: boolean;
  /** Terminal items per second in this generation (since its first), and the time left at it. */
  rate?: number;
  etaMs?: number;
  createdAt: string;
  updatedAt: string;
  /** What a verb changed: the job it started (`jobId`, `verb`), or `restarted: 0`… */
  changed?: Record<string, unknown>;
  /** The background jobs of the last cancel, retry-failed and resume, with their progress. */
  jobs?: BatchJobProgress[];
}

/** A batch job's progress, as in `<prefix>.admin.bulk.status`. */
export interface BatchJobProgress {
  verb: BatchJobVerb;
  jobId: string;
  /** `missing`: not stored yet (the batch's tracker stores it) or expired. */
  state: BulkJobState | 'missing';
  /** Ledger entries walked, of `matched` (the batch's items when the job was made). */
  processed: number;
  matched: number;
  /** Items acted on (canceled, restarted, started). */
  done: number;
}
