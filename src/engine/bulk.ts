/**
 * Bulk operator jobs, the pure part: validation of `<prefix>.admin.bulk` requests, the request id
 * of each per-workflow action, the rate limiter and the cursor of a running job. The NATS side is
 * `src/nats/bulk.ts`, the role that runs jobs `src/host/bulk.ts`.
 */
import {
  BULK_DEFAULT_RATE,
  BULK_FAILURES_KEPT,
  BULK_MAX_RATE,
  type BulkCounters,
  type BulkFailure,
  type BulkRequest,
} from '../contracts/bulk.js';
import { BULK_VERBS, type AdminVerb } from '../contracts/wire.js';
import { BadRequestError } from '../errors.js';
import { BulkJobFieldsSchema, compile, firstIssue, issueDetails } from '../contracts/schemas.js';
import { parseAdminFields } from './admin.js';

/** Search fields a bulk query may not carry: a job takes every match, in its own order. */
const PAGING = ['sort', 'order', 'limit', 'cursor'] as const;

/** The job's own fields (`BulkJobFieldsSchema`); the rest are the verb's. */
const JOB_FIELDS = ['verb', 'query', 'dryRun', 'ratePerSec'];
const jobCheck = compile(BulkJobFieldsSchema);
const JOB_MESSAGES: Record<string, (why: string, value: unknown) => string> = {
  verb: (_, v) => `unknown or missing verb ${JSON.stringify(v)} (verbs: ${BULK_VERBS.join(', ')})`,
  query: () => 'query must be an object of search filters (as for <prefix>.search)',
  dryRun: () => 'dryRun must be true or false',
  ratePerSec: (why) => `ratePerSec must be a number in (0, ${BULK_MAX_RATE}]: ${why}`,
};

function bad(message: string, details?: unknown): BadRequestError {
  return new BadRequestError(message, details === undefined ? {} : { details });
}

/**
 * Validate a decoded `<prefix>.admin.bulk` body. `checkQuery` validates the search filters as
 * `<prefix>.search` does (throws {@link BadRequestError}). Throws naming the field at fault;
 * nothing is started on an error.
 */
export function parseBulkRequest(
  body: unknown,
  checkQuery: (query: Record<string, unknown>) => void,
): BulkRequest & { ratePerSec: number; dryRun: boolean } {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw bad('a bulk request must be an object with "verb", "query", "reason" and "by"', {
      field: '',
      why: 'Expected object',
    });
  }
  const jobFields = Object.fromEntries(
    Object.entries(body).filter(([k]) => JOB_FIELDS.includes(k)),
  );
  if (!jobCheck.Check(jobFields)) {
    const i = firstIssue(jobCheck, jobFields)!;
    const top = i.field.split('.')[0] ?? '';
    throw bad(
      (JOB_MESSAGES[top] ?? ((why: string) => `${top}: ${why}`))(i.why, i.value),
      issueDetails(i),
    );
  }
  const b = body as Record<string, unknown>;
  const verb = b.verb as AdminVerb;
  const q = b.query;
  const query = q as Record<string, unknown>;
  for (const k of PAGING) {
    if (k in query) {
      throw bad(
        `query.${k} is not allowed: a bulk job acts on every match (narrow the filters instead)`,
        { field: `query.${k}`, why: 'Unexpected property' },
      );
    }
  }
  if (Object.keys(query).length === 0) {
    throw bad(
      'query has no filter: a bulk job over every workflow is refused (say e.g. {"status":"running"} to mean every running one)',
      { field: 'query', why: 'Expected at least one filter' },
    );
  }
  try {
    checkQuery(query);
  } catch (err) {
    if (!(err instanceof BadRequestError)) throw err;
    const field = (err.details as { field?: unknown } | undefined)?.field;
    throw bad(`query: ${err.message}`, {
      field: typeof field === 'string' ? `query.${field}` : 'query',
      why: err.message,
    });
  }
  const ratePerSec = (b.ratePerSec as number | undefined) ?? BULK_DEFAULT_RATE;
  const rest = Object.fromEntries(Object.entries(b).filter(([k]) => !JOB_FIELDS.includes(k)));
  const fields = parseAdminFields(verb, rest, bad, {
    common: ['reason', 'by'],
    actorOptional: true,
    nodes: false,
  });
  const out: BulkRequest & { ratePerSec: number; dryRun: boolean } = {
    verb,
    query,
    reason: fields.reason,
    by: fields.by,
    dryRun: b.dryRun === true,
    ratePerSec,
  };
  if (fields.actorId !== undefined) out.actorId = fields.actorId;
  if (fields.attempts !== undefined) out.attempts = fields.attempts;
  if ('output' in fields) out.output = fields.output;
  if (fields.error !== undefined) out.error = fields.error;
  if (fields.toStep !== undefined) out.toStep = fields.toStep;
  return out;
}

/** True for the verbs that act on a parked activity (`actorId`). */
export function needsActor(verb: AdminVerb): boolean {
  return verb === 'retry' || verb === 'resolve' || verb === 'fail';
}

/**
 * The request id of one action of a job: deterministic, so a job resumed after its runner died
 * sends the same id again and the workflow applies it once (the record remembers it).
 * `actorId` is part of it only when the job resolved the parked activities itself.
 */
export function bulkRequestId(jobId: string, type: string, id: string, actorId?: string): string {
  return `bulk-${jobId}-${type}-${id}${actorId === undefined ? '' : `-${actorId}`}`;
}

/**
 * A token bucket: at most `ratePerSec` acquisitions per second, bursts up to one second's worth
 * (at least 1). `take()` returns how long to wait before the next acquisition is allowed (0 =
 * now, and the token is taken). The clock is injected.
 */
export class RateLimiter {
  private tokens: number;
  private last: number;
  private readonly burst: number;

  constructor(
    readonly ratePerSec: number,
    private readonly now: () => number,
  ) {
    this.burst = Math.max(1, Math.min(ratePerSec, 100));
    this.tokens = 1;
    this.last = now();
  }

  take(): number {
    const t = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((t - this.last) * this.ratePerSec) / 1000);
    this.last = t;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) * 1000) / this.ratePerSec);
  }
}

/** What happened to one workflow of a job. */
export type BulkOutcome =
  { kind: 'done' } | { kind: 'skipped' } | { kind: 'failed'; code: string; message: string };

/**
 * The cursor of a running job: items are acted on out of order (several at once), but the
 * cursor only moves over a contiguous run of finished items, and the counters count exactly the
 * items below it. A job resumed from a stored cursor therefore repeats only items at or above it,
 * whose actions carry the same request ids: applied once.
 */
export class BulkCursor {
  private readonly finished = new Map<number, BulkOutcome & { type: string; id: string }>();
  /** Failures the cursor moved over since the last {@link takeFailures}. */
  private fresh: BulkFailure[] = [];

  constructor(
    readonly counters: BulkCounters,
    readonly kept: BulkFailure[],
  ) {}

  get cursor(): number {
    return this.counters.processed;
  }

  finish(index: number, type: string, id: string, outcome: BulkOutcome): void {
    if (index < this.counters.processed) return;
    this.finished.set(index, { ...outcome, type, id });
    for (let f = this.finished.get(this.counters.processed); f;) {
      this.finished.delete(this.counters.processed);
      this.counters.processed++;
      if (f.kind === 'done') this.counters.done++;
      else if (f.kind === 'skipped') this.counters.skipped++;
      else {
        this.counters.failed++;
        const failure = { type: f.type, id: f.id, code: f.code, message: f.message };
        this.fresh.push(failure);
        if (this.kept.length < BULK_FAILURES_KEPT) this.kept.push(failure);
      }
      f = this.finished.get(this.counters.processed);
    }
  }

  /** The failures the cursor moved over since the last call. */
  takeFailures(): BulkFailure[] {
    const out = this.fresh;
    this.fresh = [];
    return out;
  }

  /** Put back failures that were not published (the checkpoint that carried them failed). */
  restoreFailures(f: BulkFailure[]): void {
    this.fresh = [...f, ...this.fresh];
  }
}
