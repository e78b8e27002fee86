/**
 * Batches (issue 23), the pure part: validation of requests, the item workflow ids, the fold of
 * ledger changes into counters and the completion decision. No I/O: `src/nats/batches.ts`
 * reads and writes the records and calls these.
 *
 * Counting rule (DESIGN: batches count terminal steps, not messages): an item's workflow ends in
 * one step whose outbox holds a `batchItem` effect; performing it moves the item's ledger key
 * to its terminal status with compare-and-set, at most once per generation (a repeat finds it
 * terminal). The counters fold the ledger's changes in stream order with a sequence watermark
 * (`lastSeq`), so a change is counted once however often the fold is repeated.
 */
import type {
  BatchCallback,
  BatchCounter,
  BatchCounts,
  BatchCompletedEvent,
  BatchCreateRequest,
  BatchItem,
  BatchItemStatus,
  BatchMeta,
  BatchOutcome,
  BatchPolicy,
  BatchStatus,
} from '../contracts/batch.js';
import { isToken } from '../contracts/subjects.js';
import { BadRequestError, ErrorCode } from '../errors.js';
import {
  BATCH_ID_MAX,
  BatchCallbackSchema,
  BatchPolicySchema,
  BatchRequestSchemas,
  compile,
  firstIssue,
  issueDetails,
  type BatchRequestVerb,
} from '../contracts/schemas.js';

export { BATCH_ID_MAX };
/** Longest item key. */
export const ITEM_KEY_MAX = 140;
/** Default event type of the callback. */
export const BATCH_COMPLETED = 'batch.completed';

const bad = (message: string, details?: unknown) =>
  new BadRequestError(message, { code: ErrorCode.BadRequest, ...(details ? { details } : {}) });

/** Why an item key cannot be used, or undefined when it can. */
export function itemKeyProblem(key: unknown): string | undefined {
  if (!isToken(key) || key.length > ITEM_KEY_MAX) {
    return `item key must be 1-${ITEM_KEY_MAX} characters of A-Z a-z 0-9 _ - = (got ${JSON.stringify(key)})`;
  }
  return undefined;
}

/**
 * The workflow id of an item: `<batchId>=<itemKey>` (generation 1), `<batchId>=<itemKey>=<g>`
 * for the run started by the (g-1)th retry-failed. (`:` is not allowed in a workflow id: ids
 * are subject tokens and KV keys.)
 */
export function itemWorkflowId(batchId: string, key: string, gen: number): string {
  return gen <= 1 ? `${batchId}=${key}` : `${batchId}=${key}=${gen}`;
}

const policyCheck = compile(BatchPolicySchema);
const callbackCheck = compile(BatchCallbackSchema);

/** A create request's `policy` (absent: `complete-with-errors`), checked by its schema. */
export function parsePolicy(p: unknown): BatchPolicy {
  if (p === undefined || p === null) return 'complete-with-errors';
  if (policyCheck.Check(p)) return p;
  throw bad(
    `batch policy must be 'complete-with-errors', 'all-must-succeed' or { failIfMoreThan: x } with 0 <= x < 1 (got ${JSON.stringify(p)})`,
    { field: 'policy', why: firstIssue(policyCheck, p)?.why ?? 'Expected union value' },
  );
}

/** A create request's `onComplete` (absent: none), checked by its schema. */
export function parseCallback(c: unknown): BatchCallback | undefined {
  if (c === undefined || c === null) return undefined;
  if (callbackCheck.Check(c)) return c;
  throw bad(
    `onComplete must be { signal: { type, id, event? } } or { start: { type, id? } } (got ${JSON.stringify(c)})`,
    { field: 'onComplete', why: firstIssue(callbackCheck, c)?.why ?? 'Expected union value' },
  );
}

const BATCH_CHECKS = Object.fromEntries(
  Object.entries(BatchRequestSchemas).map(([k, v]) => [k, compile(v)]),
) as { [K in BatchRequestVerb]: ReturnType<typeof compile<(typeof BatchRequestSchemas)[K]>> };

/**
 * Check the (decoded) body of a batch verb against its schema (`BatchRequestSchemas`); throws
 * `bad_request` with `details: {field, why}` naming the field at fault. Pure.
 */
export function parseBatchRequest(verb: BatchRequestVerb, body: unknown): Record<string, unknown> {
  const c = BATCH_CHECKS[verb];
  const b = body ?? {};
  if (c.Check(b)) return b;
  const i = firstIssue(c, b)!;
  const top = i.field.split('.')[0];
  const message =
    i.field === ''
      ? `a batch ${verb} request body must be an object`
      : top === 'id' && !i.unknown
        ? `batch id must be 1-${BATCH_ID_MAX} characters of A-Z a-z 0-9 _ - = (got ${JSON.stringify(i.value)})`
        : top === 'policy' && !i.unknown
          ? `batch policy must be 'complete-with-errors', 'all-must-succeed' or { failIfMoreThan: x } with 0 <= x < 1 (got ${JSON.stringify((b as { policy?: unknown }).policy)})`
          : top === 'onComplete'
            ? `onComplete must be { signal: { type, id, event? } } or { start: { type, id? } } (got ${JSON.stringify((b as { onComplete?: unknown }).onComplete)})`
            : i.unknown
              ? `batch ${verb}: unknown field ${JSON.stringify(i.field)}`
              : `batch ${verb}: ${i.field}: ${i.why}`;
  throw bad(message, issueDetails(i));
}

export function parseCreate(body: unknown): BatchCreateRequest {
  const b = parseBatchRequest('create', body);
  const onComplete = parseCallback(b.onComplete);
  return {
    id: b.id as string,
    type: b.type as string,
    policy: parsePolicy(b.policy),
    ...(b.cancelRest === true ? { cancelRest: true } : {}),
    ...(onComplete ? { onComplete } : {}),
  };
}

export const isTerminal = (s: BatchItemStatus) =>
  s === 'succeeded' || s === 'failed' || s === 'canceled';

/** A fresh counter (or the rollover of one to generation `gen`: the failed items run again). */
export function counterFor(gen: number, prev: BatchCounter | undefined, now: number): BatchCounter {
  if (!prev) return { v: 1, gen, lastSeq: 0, succeeded: 0, failed: 0, canceled: 0, updatedAt: now };
  if (prev.gen >= gen) return prev;
  const next: BatchCounter = { ...prev, gen, failed: 0, updatedAt: now };
  delete next.since;
  delete next.inGen;
  return next;
}

/**
 * Fold one ledger change (stream sequence `seq`) into the counter, in place. Returns false for a
 * change at or below the watermark (already folded). Only a terminal status of the counter's
 * generation counts: every item reaches one at most once per generation.
 */
export function fold(
  c: BatchCounter,
  seq: number,
  item: BatchItem | undefined,
  now: number,
): boolean {
  if (seq <= c.lastSeq) return false;
  c.lastSeq = seq;
  if (!item || item.gen !== c.gen || !isTerminal(item.status)) return true;
  if (item.status === 'succeeded') c.succeeded++;
  else if (item.status === 'failed') c.failed++;
  else c.canceled++;
  c.inGen = (c.inGen ?? 0) + 1;
  c.since ??= now;
  c.updatedAt = now;
  return true;
}

export function countsOf(meta: BatchMeta, c: BatchCounter | undefined): BatchCounts {
  const succeeded = c?.succeeded ?? 0;
  const failed = c?.failed ?? 0;
  const canceled = c?.canceled ?? 0;
  return {
    total: meta.total,
    pending: meta.pending,
    running: Math.max(0, meta.total - meta.pending - succeeded - failed - canceled),
    succeeded,
    failed,
    canceled,
  };
}

/**
 * The outcome of the batch's current generation, or undefined while it is still open. A batch
 * that was never sealed never completes (more items may come); `all-must-succeed` and
 * `failIfMoreThan` fail early.
 */
export function decideOutcome(
  meta: BatchMeta,
  c: BatchCounter | undefined,
): BatchOutcome | undefined {
  if (meta.outcome) return meta.outcome;
  if (c && c.gen !== meta.gen) return undefined;
  const n = countsOf(meta, c);
  const p = meta.policy;
  if (p === 'all-must-succeed' && n.failed + n.canceled > 0) return 'failed';
  if (!meta.sealed || meta.inflight || meta.retrying) return undefined;
  const failTooMany = typeof p === 'object' && n.failed > p.failIfMoreThan * n.total;
  if (failTooMany) return 'failed';
  if (n.succeeded + n.failed + n.canceled < n.total) return undefined;
  return n.failed + n.canceled === 0 ? 'succeeded' : 'completedWithErrors';
}

/** The callback event of the current generation. */
export function completedEvent(meta: BatchMeta, c: BatchCounter | undefined): BatchCompletedEvent {
  const type =
    meta.onComplete && 'signal' in meta.onComplete
      ? (meta.onComplete.signal.event ?? BATCH_COMPLETED)
      : BATCH_COMPLETED;
  return {
    type,
    id: meta.id,
    policy: meta.policy,
    outcome: meta.outcome!,
    counts: countsOf(meta, c),
    generation: meta.gen,
  };
}

/** Id of the workflow a `start` callback starts. */
export function callbackStartId(meta: BatchMeta, id: string | undefined): string {
  return id ?? `${meta.id}-completed-${meta.gen}`;
}

/** The status reply: counts, rate (terminal items per second in this generation) and ETA. */
export function batchStatus(
  meta: BatchMeta,
  c: BatchCounter | undefined,
  now: number,
): BatchStatus {
  const counts = countsOf(meta, c);
  const done = counts.succeeded + counts.failed + counts.canceled;
  const out: BatchStatus = {
    id: meta.id,
    type: meta.type,
    policy: meta.policy,
    sealed: meta.sealed,
    paused: !!meta.paused,
    canceled: !!meta.canceled,
    generation: meta.gen,
    next: meta.next,
    counts,
    duplicates: meta.duplicates,
    rejected: meta.rejected,
    state: meta.outcome ? 'done' : 'open',
    ...(meta.outcome ? { outcome: meta.outcome } : {}),
    notified: meta.notified === meta.gen,
    createdAt: new Date(meta.createdAt).toISOString(),
    updatedAt: new Date(Math.max(meta.updatedAt, c?.updatedAt ?? 0)).toISOString(),
  };
  if (c?.since !== undefined && done > 0) {
    const seconds = Math.max(0.001, (Math.max(c.updatedAt, now) - c.since) / 1000);
    const inGen = c.inGen ?? done;
    out.rate = Math.round((inGen / seconds) * 10) / 10;
    const left = counts.total - done;
    if (out.rate > 0 && !meta.outcome) out.etaMs = Math.round((left / out.rate) * 1000);
  }
  return out;
}
