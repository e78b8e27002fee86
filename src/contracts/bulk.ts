/**
 * Wire contract v1 of bulk operator jobs: `<prefix>.admin.bulk` creates a job that applies one
 * admin verb to every workflow a search matched; progress is published on
 * `<prefix>.admin.bulk.<jobId>`; `<prefix>.admin.bulk.status` and `<prefix>.admin.bulk.cancel`
 * take `{"jobId"}`. Bodies are JSON unless `Content-Type: application/msgpack`.
 */
import type { SearchRequest } from './search.js';
import type { AdminRequest, AdminVerb } from './wire.js';

/** Default and maximum `ratePerSec` of a job: workflows acted on per second. */
export const BULK_DEFAULT_RATE = 100;
export const BULK_MAX_RATE = 10_000;

/** Body of `<prefix>.admin.bulk`. */
export interface BulkRequest {
  verb: AdminVerb;
  /** Search filters as for `<prefix>.search` (no `sort`, `order`, `limit` or `cursor`). */
  query: Omit<SearchRequest, 'sort' | 'order' | 'limit' | 'cursor'>;
  reason: string;
  by: string;
  /** Match and report only; nothing is changed. */
  dryRun?: boolean;
  /** Workflows acted on per second (default {@link BULK_DEFAULT_RATE}). */
  ratePerSec?: number;
  /**
   * retry, resolve, fail: the parked activity. Absent: every activity parked in the workflow
   * when the job reaches it (read with `query`).
   */
  actorId?: string;
  attempts?: number;
  output?: unknown;
  error?: AdminRequest['error'];
  toStep?: number;
  /**
   * Set on a migration job (verb `migrate`): run by the `jetflow migrate` command that holds it
   * (it has the definitions and the map), never claimed by a visibility replica.
   */
  migration?: MigrationJobSpec;
}

/** What a migration job moves (`jetflow migrate --apply`) or puts back (`--revert <job>`). */
export interface MigrationJobSpec {
  type: string;
  /** The version moved to (a revert: the versions the workflows came from, per workflow). */
  to: number;
  /** Only workflows on this version. */
  from?: number;
  /** The map's state renames (a revert of a workflow that moved on inverts them). */
  states?: Record<string, string>;
  /** True when the map had a context function (a revert then needs the map's `revert.context`). */
  contextMapped: boolean;
  /** Only workflows whose search attributes have these values (`--where k=v`). */
  where?: Record<string, string>;
  /** Set on a revert job: the migration job it reverts. */
  revertOf?: string;
}

/** Reply to `<prefix>.admin.bulk`. */
export interface BulkReply {
  jobId: string;
  matched: number;
  dryRun: boolean;
  /** dryRun: the first matches (at most 20), to see what a real run would touch. */
  sample?: { type: string; id: string }[];
}

/**
 * A job over a batch's ledger (issue 23) instead of a search snapshot: `cancel` (the items not
 * ended), `retry-failed` (the failed items of earlier generations, as generation `gen`) and
 * `resume` (the pending items). The job walks ledger changes of stream sequences `seq + 1 …
 * untilSeq` in stream order; `seq` is its stored cursor. Run by the engines (they own batches).
 */
export type BatchJobVerb = 'cancel' | 'retry-failed' | 'resume';

export interface BatchJobSpec {
  id: string;
  verb: BatchJobVerb;
  /** The batch's generation when the job was made (retry-failed: the generation it starts). */
  gen: number;
  /** Last ledger sequence walked (0: none yet). */
  seq: number;
  /** The ledger's last sequence when the job was made: the walk ends there. */
  untilSeq: number;
}

/** Lifecycle of a job. */
export type BulkJobState = 'running' | 'completed' | 'canceled';

/** One workflow the job could not act on, and why. */
export interface BulkFailure {
  type: string;
  id: string;
  code: string;
  message: string;
}

/** Counters of a job; they only grow. `done + failed + skipped = processed ≤ matched`. */
export interface BulkCounters {
  matched: number;
  /** Workflows finished with, in snapshot order (`done + failed + skipped`). */
  processed: number;
  /** The verb was applied (or had been applied already under the job's request id). */
  done: number;
  failed: number;
  /** retry/resolve/fail without `actorId`: nothing was parked when the job reached it. */
  skipped: number;
}

/** Progress notification on `<prefix>.admin.bulk.<jobId>`, and the reply to `status`. */
export interface BulkProgress extends BulkCounters {
  jobId: string;
  verb: AdminVerb;
  state: BulkJobState;
  dryRun: boolean;
  ratePerSec: number;
  createdAt: string;
  updatedAt: string;
  finishedAt?: string;
  /**
   * Notification: the failures among the workflows processed since the previous one. Status:
   * the first {@link BULK_FAILURES_KEPT} failures of the job.
   */
  failures: BulkFailure[];
  /** How many times the job was claimed (1 + takeovers after a runner died). */
  runs: number;
  /** The runner (visibility replica, or engine for a batch job) holding the job now. */
  owner?: string;
  /** A job over a batch's ledger: the batch and the batch verb. */
  batch?: { id: string; verb: BatchJobVerb };
}

/** Failures kept in the job record (all of them are in the notifications). */
export const BULK_FAILURES_KEPT = 1_000;
