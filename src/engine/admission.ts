/**
 * Admission by concurrency key (Jet's deferred workflows): the pure decisions over one key's
 * record. No I/O: `src/nats/keys.ts` reads the record, applies one of these functions and writes
 * the result with compare-and-set on the revision it read (retrying on a lost race), so every
 * decision about one key is taken on the latest record — linearizable per key.
 *
 * Invariants (property-tested in `test/unit/admission.test.ts`):
 * - at most `limit` holders; a workflow id is a holder or a waiter, never both, at most once;
 * - waiters leave in the order of `admissionOrder` ({@link waiterOrder}): promoted ones first, then those that
 *   have waited `maxWaitMs` behind a higher level (aging: nothing starves), then strictly by
 *   priority level, round robin across fairness keys within a level (weighted), FIFO within one
 *   fairness key. Without priorities and fairness keys that is plain FIFO;
 * - every function is idempotent for the same workflow: a repeat after a crash changes nothing
 *   and returns the same outcome (a repeated release returns the admits its first run made).
 */
import { createHash } from 'node:crypto';
import { WIRE_VERSION, type KeyHolder, type KeyRecord, type KeyWaiter } from '../contracts/wire.js';
import { BadRequestError, ConfigError, ErrorCode } from '../errors.js';

/** What happens to a start when its key already has `limit` holders. */
export type OnLimit = 'queue' | 'cancel-newest' | 'cancel-in-progress' | 'replace-queued';

export const ON_LIMIT: readonly OnLimit[] = Object.freeze([
  'queue',
  'cancel-newest',
  'cancel-in-progress',
  'replace-queued',
]);

/** A definition's `concurrency` option. */
export interface ConcurrencyOptions<I = never> {
  /** The key of a start, from its input (pure). A workflow holds a slot of this key. */
  key: (input: I) => string;
  /** Max workflows of one key admitted (running) at once: a positive integer. */
  limit: number;
  /**
   * Beyond the limit: `'queue'` (default) waits in FIFO order; `'cancel-newest'` refuses the
   * new start (`concurrency_limit`); `'cancel-in-progress'` cancels the oldest holder and admits
   * the new start in its slot once it has ended; `'replace-queued'` keeps one waiter: a new
   * start replaces it (the replaced one is canceled).
   */
  onLimit?: OnLimit;
  /**
   * Aging of waiters (ms, default 60 s): a waiter that has waited this long behind waiters of a
   * higher priority level is admitted before them (see the definition's `priority`).
   */
  maxWaitMs?: number;
}

/** Default `concurrency.maxWaitMs`. */
export const DEFAULT_KEY_MAX_WAIT_MS = 60_000;

/** Max length of a concurrency key (it is stored and shown; its token is a hash). */
export const KEY_MAX_LENGTH = 512;

/** Check a definition's concurrency option; throws {@link ConfigError}. */
export function checkConcurrency(type: string, c: ConcurrencyOptions<never>): void {
  if (typeof c !== 'object' || c === null || typeof c.key !== 'function') {
    throw new ConfigError(`workflow ${type}: concurrency.key must be a function of the input`);
  }
  if (!Number.isInteger(c.limit) || c.limit < 1) {
    throw new ConfigError(`workflow ${type}: concurrency.limit must be a positive integer`);
  }
  if (
    c.maxWaitMs !== undefined &&
    !(Number.isInteger(c.maxWaitMs) && c.maxWaitMs >= 1 && c.maxWaitMs <= 30 * 86_400_000)
  ) {
    throw new ConfigError(
      `workflow ${type}: concurrency.maxWaitMs must be an integer of ms from 1 to 30 days`,
    );
  }
  if (c.onLimit !== undefined && !ON_LIMIT.includes(c.onLimit)) {
    throw new ConfigError(
      `workflow ${type}: concurrency.onLimit must be one of ${ON_LIMIT.join(', ')}`,
    );
  }
}

/** Subject- and KV-safe token of a key (a hash: a key may contain any character). */
export function keyTokenOf(key: string): string {
  return createHash('sha256').update(key).digest('base64url').slice(0, 27);
}

/** The key of a start, checked; throws `concurrency_key` (the start is refused, nothing stored). */
export function keyOfInput(
  c: ConcurrencyOptions<never>,
  input: unknown,
  fields: { workflowType: string; workflowId: string },
): { key: string; keyToken: string } {
  let key: unknown;
  try {
    key = (c.key as (i: unknown) => unknown)(input);
  } catch (cause) {
    throw new BadRequestError(
      `workflow ${fields.workflowType}/${fields.workflowId}: concurrency.key threw on this input: ${String((cause as Error)?.message ?? cause)}`,
      { ...fields, code: ErrorCode.ConcurrencyKey, cause },
    );
  }
  if (typeof key !== 'string' || key.length === 0 || key.length > KEY_MAX_LENGTH) {
    throw new BadRequestError(
      `workflow ${fields.workflowType}/${fields.workflowId}: concurrency.key must return a string of 1-${KEY_MAX_LENGTH} characters, got ${JSON.stringify(key)?.slice(0, 80)}`,
      { ...fields, code: ErrorCode.ConcurrencyKey, details: { key } },
    );
  }
  return { key, keyToken: keyTokenOf(key) };
}

/** A start asking for a slot. */
export interface AcquireRequest {
  type: string;
  key: string;
  id: string;
  /** Inbox sequence of the start. */
  startSeq: number;
  limit: number;
  onLimit: OnLimit;
  now: number;
  /** The start's priority level (1 first; default 3). */
  priority?: number;
  /** The start's fairness key and its weight (waiters per turn). */
  fairness?: { key: string; weight: number };
  /** The definition's `concurrency.maxWaitMs` (default 60 s). */
  maxWaitMs?: number;
}

/** What the key decided for a start. */
export type AcquireOutcome =
  /** `at`: when the key record admitted it (a repeat: the first admission's time). */
  | { kind: 'admitted'; at: number }
  /** Waits; `position` is 1-based. `cancel`: workflows the start makes cancel (with why). */
  | { kind: 'deferred'; position: number; queuedAt: number; cancel: KeyCancel[] }
  /** `cancel-newest` with a full key: refused, nothing stored. */
  | { kind: 'rejected'; holders: string[] };

/** A workflow a start makes cancel: a holder (`cancel-in-progress`) or a waiter (`replace-queued`). */
export interface KeyCancel {
  id: string;
  reason: string;
}

/** A decision's result: the record to write (undefined: nothing changes) and the outcome. */
export interface KeyChange<T> {
  next: KeyRecord | undefined;
  /** True when `next` is empty and the key may be deleted instead of written. */
  empty?: boolean;
  result: T;
}

function emptyRecord(type: string, key: string, limit: number, now: number): KeyRecord {
  return { v: WIRE_VERSION, type, key, limit, holders: [], waiters: [], updatedAt: now };
}

const clone = (r: KeyRecord): KeyRecord => ({
  ...r,
  holders: r.holders.map((h) => ({ ...h })),
  waiters: r.waiters.map((w) => ({ ...w })),
  ...(r.turns ? { turns: { ...r.turns } } : {}),
});

const levelOf = (w: KeyWaiter): number => w.priority ?? 3;
const fairKeyOf = (w: KeyWaiter): string => w.fairness ?? '';

type Turns = NonNullable<KeyRecord['turns']>;

/**
 * The waiters in the order the next free slots go to, at `now`, and the fairness turns (to store
 * in `turns`) after each of them: what positions mean, and what `fill` admits.
 * 1. promoted waiters (an operator's `promote` puts one at the head: the last promoted first);
 * 2. aged waiters: waited `maxWaitMs` or longer while a higher level (lower number) still has
 *    waiters, in arrival order (so no level starves);
 * 3. the highest level present; within it, round robin across fairness keys in key order
 *    (`weight` waiters of a key per turn; waiters without a key form one more key, ``), and
 *    arrival order within one key.
 * Arrival order when no waiter has a priority or a fairness key (the common case, O(n);
 * promoted ones are at the head already). Otherwise O(n · k) for n waiters and k fairness keys.
 */
function admissionOrder(
  rec: KeyRecord,
  now: number,
): { waiters: KeyWaiter[]; turns: (Turns | undefined)[] } {
  const ws = rec.waiters;
  if (ws.every((w) => w.priority === undefined && w.fairness === undefined)) {
    return { waiters: ws, turns: ws.map(() => rec.turns) };
  }
  const out: KeyWaiter[] = [];
  const turnsAfter: (Turns | undefined)[] = [];
  const taken = new Uint8Array(ws.length);
  let turns: Turns | undefined = rec.turns;
  const left = [0, 0, 0, 0, 0, 0];
  const take = (i: number) => {
    taken[i] = 1;
    out.push(ws[i]!);
    turnsAfter.push(turns);
    left[levelOf(ws[i]!)]!--;
  };
  // Per level: fairness key → its waiters' indices (arrival order) and a read pointer.
  const queues = new Map<number, Map<string, { at: number[]; next: number }>>();
  for (let i = 0; i < ws.length; i++) {
    const w = ws[i]!;
    const l = levelOf(w);
    left[l]!++;
    let byKey = queues.get(l);
    if (!byKey) queues.set(l, (byKey = new Map<string, { at: number[]; next: number }>()));
    const k = fairKeyOf(w);
    const q = byKey.get(k);
    if (q) q.at.push(i);
    else byKey.set(k, { at: [i], next: 0 });
  }
  for (let i = 0; i < ws.length; i++) if (ws[i]!.promoted) take(i);
  const maxWait = rec.maxWaitMs ?? DEFAULT_KEY_MAX_WAIT_MS;
  const aged: number[] = [];
  for (let i = 0; i < ws.length; i++) {
    if (!taken[i] && now - ws[i]!.queuedAt >= maxWait) aged.push(i);
  }
  let agedAt = 0;
  while (out.length < ws.length) {
    let top = 1;
    while (left[top] === 0) top++;
    // The top level never goes up again: an aged waiter at or above it is served by its level.
    while (agedAt < aged.length && (taken[aged[agedAt]!] || levelOf(ws[aged[agedAt]!]!) <= top)) {
      agedAt++;
    }
    if (agedAt < aged.length) {
      take(aged[agedAt]!);
      continue;
    }
    const byKey = queues.get(top)!;
    const head = (k: string): number | undefined => {
      const q = byKey.get(k);
      if (!q) return undefined;
      while (q.next < q.at.length && taken[q.at[q.next]!]) q.next++;
      return q.next < q.at.length ? q.at[q.next] : undefined;
    };
    const live = [...byKey.keys()].filter((k) => head(k) !== undefined);
    if (live.length === 1 && live[0] === '') {
      take(head('')!);
      continue;
    }
    const last = turns?.[String(top)];
    if (last) {
      const i = head(last.key);
      if (i !== undefined && last.n < (ws[i]!.weight ?? 1)) {
        turns = { ...turns, [String(top)]: { key: last.key, n: last.n + 1 } };
        take(i);
        continue;
      }
    }
    live.sort();
    const key = (last && live.find((k) => k > last.key)) ?? live[0]!;
    turns = { ...turns, [String(top)]: { key, n: 1 } };
    take(head(key)!);
  }
  return { waiters: out, turns: turnsAfter };
}

/** The waiters in the order they would be admitted if slots freed now (see `admissionOrder`). */
export function waiterOrder(rec: KeyRecord | undefined, now: number): KeyWaiter[] {
  return rec ? admissionOrder(rec, now).waiters : [];
}

/**
 * A start asks for a slot. Idempotent: a holder is admitted again, a waiter keeps its place (a
 * start redelivered after a crash finds its own earlier decision).
 */
export function acquire(
  rec: KeyRecord | undefined,
  req: AcquireRequest,
): KeyChange<AcquireOutcome> {
  if (rec) {
    const held = rec.holders.find((h) => h.id === req.id);
    if (held) return { next: undefined, result: { kind: 'admitted', at: held.at } };
    const waiting = rec.waiters.find((w) => w.id === req.id);
    if (waiting) {
      return {
        next: undefined,
        result: {
          kind: 'deferred',
          position: positionOf(rec, req.id, req.now)!,
          queuedAt: waiting.queuedAt,
          cancel: [],
        },
      };
    }
  }
  const next = rec ? clone(rec) : emptyRecord(req.type, req.key, req.limit, req.now);
  next.limit = req.limit;
  next.updatedAt = req.now;
  if (req.maxWaitMs !== undefined && req.maxWaitMs !== DEFAULT_KEY_MAX_WAIT_MS) {
    next.maxWaitMs = req.maxWaitMs;
  } else {
    delete next.maxWaitMs;
  }
  if (next.holders.length < next.limit && next.waiters.length === 0) {
    next.holders.push({ id: req.id, startSeq: req.startSeq, at: req.now, queuedAt: req.now });
    return { next, result: { kind: 'admitted', at: req.now } };
  }
  // Free slots with waiters ahead (a hand-over in flight, or a raised limit): they go first.
  const waiter: KeyWaiter = {
    id: req.id,
    startSeq: req.startSeq,
    queuedAt: req.now,
    ...(req.priority !== undefined && req.priority !== 3 ? { priority: req.priority } : {}),
    ...(req.fairness ? { fairness: req.fairness.key } : {}),
    ...(req.fairness && req.fairness.weight !== 1 ? { weight: req.fairness.weight } : {}),
  };
  const cancel: KeyCancel[] = [];
  switch (req.onLimit) {
    case 'cancel-newest':
      if (next.holders.length >= next.limit) {
        return {
          next: undefined,
          result: { kind: 'rejected', holders: next.holders.map((h) => h.id) },
        };
      }
      break;
    case 'cancel-in-progress': {
      // The newest start wins. The oldest holder not already asked to cancel makes room, and
      // the new start takes its slot once it has ended (a slot is never held twice); starts
      // still waiting for such a slot are superseded too.
      const reason = `superseded by ${req.id} (concurrency key ${req.key}, cancel-in-progress)`;
      for (const w of next.waiters.splice(0, next.waiters.length))
        cancel.push({ id: w.id, reason });
      const victim = next.holders.find((h) => h.canceling === undefined);
      if (victim && next.holders.length >= next.limit) {
        victim.canceling = req.id;
        cancel.push({ id: victim.id, reason });
      }
      break;
    }
    case 'replace-queued': {
      // One waiter at most: the newest start replaces the one waiting.
      const replaced = next.waiters.splice(0, next.waiters.length);
      for (const w of replaced) {
        cancel.push({
          id: w.id,
          reason: `replaced by ${req.id} (concurrency key ${req.key}, replace-queued)`,
        });
      }
      break;
    }
    case 'queue':
      break;
  }
  next.waiters.push(waiter);
  const position = positionOf(next, req.id, req.now) ?? next.waiters.length;
  return {
    next,
    result: { kind: 'deferred', position, queuedAt: req.now, cancel },
  };
}

/** Admits a release hands the freed slots over to (the admit messages to send). */
export interface Admit {
  id: string;
  startSeq: number;
  /** Epoch ms of the admission (the key record's decision). */
  at: number;
}

/**
 * Workflow `id` leaves the key: a holder frees its slot, a waiter its place. Free slots go to
 * the head waiters (FIFO), each marked `via: id`. Idempotent: when `id` is no longer in the
 * record, the holders it handed over to (`via: id`) are returned again, so a repeated release
 * re-sends the same admits (the admitted workflow applies only the first).
 */
export function release(
  rec: KeyRecord | undefined,
  id: string,
  now: number,
): KeyChange<{ was: 'holder' | 'waiter' | 'gone'; admits: Admit[] }> {
  if (!rec) return { next: undefined, result: { was: 'gone', admits: [] } };
  const h = rec.holders.findIndex((x) => x.id === id);
  const w = rec.waiters.findIndex((x) => x.id === id);
  if (h < 0 && w < 0) {
    const admits = rec.holders
      .filter((x) => x.via === id)
      .map((x) => ({ id: x.id, startSeq: x.startSeq, at: x.at }));
    return { next: undefined, result: { was: 'gone', admits } };
  }
  const next = clone(rec);
  next.updatedAt = now;
  if (w >= 0) {
    next.waiters.splice(w, 1);
  } else {
    next.holders.splice(h, 1);
  }
  const admits = fill(next, id, now);
  return {
    next,
    empty: next.holders.length === 0 && next.waiters.length === 0,
    result: { was: h >= 0 ? 'holder' : 'waiter', admits },
  };
}

/** Move the next waiters (`admissionOrder`) into free slots (marked `via`); the admits to send. */
function fill(next: KeyRecord, via: string, now: number): Admit[] {
  const admits: Admit[] = [];
  const free = next.limit - next.holders.length;
  if (free <= 0 || next.waiters.length === 0) return admits;
  const order = admissionOrder(next, now);
  const admitted = order.waiters.slice(0, free);
  const turns = order.turns[admitted.length - 1];
  if (turns) next.turns = turns;
  const gone = new Set(admitted);
  next.waiters = next.waiters.filter((w) => !gone.has(w));
  for (const w of admitted) {
    const holder: KeyHolder = {
      id: w.id,
      startSeq: w.startSeq,
      at: now,
      queuedAt: w.queuedAt,
      via,
      ...(w.promoted ? { promoted: true as const } : {}),
    };
    next.holders.push(holder);
    admits.push({ id: w.id, startSeq: w.startSeq, at: now });
  }
  return admits;
}

/**
 * An operator moves waiter `id` to the head of the queue (it is admitted at the next free slot;
 * the limit still holds). Idempotent; a workflow that is not waiting is reported as such.
 */
export function promote(
  rec: KeyRecord | undefined,
  id: string,
  now: number,
): KeyChange<{ was: 'waiter' | 'holder' | 'gone'; from?: number }> {
  if (!rec) return { next: undefined, result: { was: 'gone' } };
  const w = rec.waiters.findIndex((x) => x.id === id);
  if (w < 0) {
    return {
      next: undefined,
      result: { was: rec.holders.some((x) => x.id === id) ? 'holder' : 'gone' },
    };
  }
  if (w === 0 && rec.waiters[0]!.promoted) {
    return { next: undefined, result: { was: 'waiter', from: 1 } };
  }
  const next = clone(rec);
  next.updatedAt = now;
  const [moved] = next.waiters.splice(w, 1);
  next.waiters.unshift({ ...moved!, promoted: true });
  return { next, result: { was: 'waiter', from: w + 1 } };
}

/** 1-based position of waiter `id` in {@link waiterOrder} at `now`, or undefined. */
export function positionOf(
  rec: KeyRecord | undefined,
  id: string,
  now: number,
): number | undefined {
  const i = waiterOrder(rec, now).findIndex((w) => w.id === id);
  return i >= 0 ? i + 1 : undefined;
}
