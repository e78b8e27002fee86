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
 *   performed again before the next step (its first performance may have been cut by a crash).
 * - `lastSeq` is only compared with sequences of the same inbox stream incarnation (the record
 *   stores the stream's identity) and of the workflow's own shard (a message on another shard
 *   is rejected without touching the record).
 * - A message whose workflow `type@version` is not registered on this engine is never rejected
 *   or acked: it is given back (nak with a delay) for an engine that knows the definition.
 */
import { LRUCache } from 'lru-cache';
import type { AnyMachineSnapshot } from 'xstate';
import { decide, rejection } from './step.js';
import type { Registry } from './registry.js';
import type { Subjects } from '../contracts/subjects.js';
import type {
  Clock,
  EffectSink,
  InboxDelivery,
  InboxEntry,
  InboxIdentity,
  InboxReader,
  Logger,
  RecordStore,
  StoredRecord,
} from './ports.js';
import { unpack } from '../contracts/codec.js';
import type { InboxMessage, ResultMessage, WorkflowRecord } from '../contracts/wire.js';
import { DEFAULT_REPLY_PREFIXES, isReplySubject, isToken } from '../contracts/subjects.js';
import { BadRequestError, ConflictError, ErrorCode, JetflowError, toErrorData } from '../errors.js';

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
}

interface CacheEntry {
  stored: StoredRecord;
  /** The live XState snapshot of `stored` when this engine computed it (saves a restore). */
  live?: AnyMachineSnapshot;

  /** True once this engine performed the record's outbox. */
  effectsDone: boolean;
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
  /** Messages given back because this engine does not know the workflow's `type@version`. */
  deferred: number;
}

export interface Processor {
  /** Queue a delivery; resolves once it is applied and acked (or left for redelivery on stop). */
  handle(d: InboxDelivery): Promise<void>;
  /** Number of workflows with messages in progress. */
  readonly busy: number;
  readonly stats: Readonly<ProcessorStats>;
  /** Stop taking new work and wait for in-flight messages (those still failing are left unacked). */
  close(): Promise<void>;
}

const keyOf = (type: string, id: string) => `${type}.${id}`;

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
  switch (e.kind) {
    case 'start':
      return { kind: 'start', input: b.input };
    case 'cancel':
      return {
        kind: 'cancel',
        reason: typeof b.reason === 'string' ? b.reason : undefined,
        ...(typeof b.msgId === 'string' ? { msgId: b.msgId } : {}),
      };
    case 'result': {
      if (
        typeof b.taskId !== 'string' ||
        typeof b.actorId !== 'string' ||
        typeof b.ok !== 'boolean'
      ) {
        throw new BadRequestError(
          'activity result needs string taskId, string actorId and boolean ok',
          {
            code: ErrorCode.BadRequest,
            workflowId: e.id,
            workflowType: e.type,
          },
        );
      }
      return {
        kind: 'result',
        taskId: b.taskId,
        actorId: b.actorId,
        ok: b.ok,
        output: b.output,
        error: b.error as ResultMessage['error'],
        attempt: typeof b.attempt === 'number' ? b.attempt : 0,
      };
    }
    case 'timer': {
      if (typeof b.timerId !== 'string' || typeof b.step !== 'number') {
        throw new BadRequestError('timer message needs string timerId and numeric step', {
          code: ErrorCode.BadRequest,
          workflowId: e.id,
          workflowType: e.type,
        });
      }
      return { kind: 'timer', timerId: b.timerId, step: b.step, event: b.event };
    }
    case 'signal': {
      const ev = b.event as { type?: unknown } | undefined;
      if (!ev || typeof ev !== 'object' || typeof ev.type !== 'string' || ev.type.length === 0) {
        throw new BadRequestError('signal has no event type', {
          code: ErrorCode.BadRequest,
          workflowId: e.id,
          workflowType: e.type,
        });
      }
      if (ev.type.startsWith('xstate.')) {
        // Done, error and init events are the engine's: only results and timers produce them.
        throw new BadRequestError(
          'event types starting with "xstate." are reserved for the engine',
          {
            code: ErrorCode.BadRequest,
            workflowId: e.id,
            workflowType: e.type,
          },
        );
      }
      return {
        kind: 'signal',
        event: ev as { type: string },
        ...(typeof b.msgId === 'string' ? { msgId: b.msgId } : {}),
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
  const ctx = {
    registry: opts.registry,
    subjects: opts.subjects,
    shards: opts.shards,
    msgIdMemory: opts.msgIdMemory,
  };
  const replyPrefixes = opts.replyPrefixes ?? DEFAULT_REPLY_PREFIXES;
  const identity = opts.inboxIdentity;
  const deferDelayMs = opts.deferDelayMs ?? 5_000;
  // Last time an unknown definition was logged, per `type@version` (logged loudly, not per message).
  const deferLogged = new Map<string, number>();
  const maxBackoffMs = opts.maxBackoffMs ?? 5_000;
  const cache = new LRUCache<string, CacheEntry>({ max: Math.max(1, opts.cacheSize) });
  const tails = new Map<string, Promise<void>>();
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
    deferred: 0,
  };
  let stopping = false;

  async function load(type: string, id: string): Promise<CacheEntry | undefined> {
    const key = keyOf(type, id);
    const hit = cache.get(key);
    if (hit) return hit;
    const stored = await store.get(type, id);
    if (!stored) return undefined;
    const entry = { stored, effectsDone: false };
    cache.set(key, entry);
    return entry;
  }

  async function settleOutbox(entry: CacheEntry): Promise<void> {
    if (entry.effectsDone) return;
    if (entry.stored.record.outbox.length > 0) {
      await effects.perform(entry.stored.record, entry.stored.record.outbox);
    }
    entry.effectsDone = true;
  }

  /** The entry's reply subject if the engine may publish to it; others are logged and dropped. */
  function replyOf(e: InboxEntry): string | undefined {
    if (!e.replyTo) return undefined;
    if (isReplySubject(e.replyTo, replyPrefixes)) return e.replyTo;
    logger.warn(
      { workflowType: e.type, workflowId: e.id, seq: e.seq, replyTo: e.replyTo },
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

  function logDeferred(e: InboxEntry, record: WorkflowRecord | undefined, err: JetflowError): void {
    stats.deferred++;
    const what = `${e.type}@${record?.version ?? 'latest'}`;
    const now = clock.now();
    const last = deferLogged.get(what);
    if (last !== undefined && now - last < 30_000) return;
    deferLogged.set(what, now);
    logger.error(
      {
        workflowType: e.type,
        workflowId: e.id,
        version: record?.version,
        seq: e.seq,
        code: err.code,
        deferred: stats.deferred,
        retryInMs: deferDelayMs,
      },
      `${err.message}: the message is left for an engine that has ${what} (register it here, or run an engine that has it); logged at most every 30 s`,
    );
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
   * Apply one message that is known to be next in order for its workflow. Resolves `'deferred'`
   * when this engine cannot decide it (the message and every later one of the workflow wait).
   */
  async function applyOne(
    e: InboxEntry,
    cur: CacheEntry | undefined,
    epoch: string | undefined,
  ): Promise<'deferred' | undefined> {
    const key = keyOf(e.type, e.id);
    if (cur) await settleOutbox(cur);
    let message: InboxMessage;
    let decision: ReturnType<typeof decide>;
    const now = clock.now();
    try {
      message = decodeInbox(e);
      decision = decide(
        ctx,
        cur?.stored.record,
        { type: e.type, id: e.id, seq: e.seq, shard: e.shard, message, now, inbox: epoch },
        cur?.live,
      );
    } catch (err) {
      if (!(err instanceof JetflowError) || err instanceof ConflictError) throw err;
      decision = { kind: 'reject', error: err, accepts: [] };
      message = { kind: 'signal', event: { type: `(${e.kind})` } };
    }
    if (decision.kind === 'defer') {
      logDeferred(e, cur?.stored.record, decision.error);
      return 'deferred';
    }
    if (decision.kind !== 'write') handledWithoutWrite.set(e.seq, true);
    if (decision.kind === 'reject') {
      stats.rejected++;
      const eventType = message.kind === 'signal' ? message.event.type : `(${message.kind})`;
      logger.warn(
        {
          workflowType: e.type,
          workflowId: e.id,
          seq: e.seq,
          code: decision.error.code,
          event: eventType,
        },
        decision.error.message,
      );
      await effects.notify(
        rejection(
          cur?.stored.record,
          e.type,
          e.id,
          eventType,
          decision.error,
          decision.accepts,
          now,
        ),
        `${e.type}.${e.id}.rej.${e.seq}`,
      );
      replyError(e, decision.error, decision.accepts);
      return undefined;
    }
    if (decision.kind === 'ignore') {
      stats.ignored++;
      logger.info(
        { workflowType: e.type, workflowId: e.id, seq: e.seq, kind: e.kind },
        `ignored: ${decision.reason}`,
      );
      return undefined;
    }
    const replyTo = replyOf(e);
    if (decision.kind === 'noop') {
      if (replyTo) effects.reply(replyTo, e.replyEncoding, decision.reply);
      return undefined;
    }
    const record = decision.record;
    let revision: number;
    if (decision.create) {
      revision = await store.create(record);
    } else {
      revision = await store.update(record, cur!.stored.revision);
    }
    const entry: CacheEntry = {
      stored: { record, revision },
      effectsDone: false,
      live: decision.live,
    };
    cache.set(key, entry);
    stats.applied++;
    await settleOutbox(entry);
    if (replyTo) effects.reply(replyTo, e.replyEncoding, decision.reply);
    return undefined;
  }

  /** Apply `d` after any earlier unapplied message of the same workflow. */
  async function apply(d: InboxDelivery): Promise<'deferred' | undefined> {
    if (!isToken(d.type) || !isToken(d.id)) {
      // Not a workflow jetflow can name (nor store: KV keys are tokens). Nothing to notify.
      stats.rejected++;
      const err = new BadRequestError(
        `inbox message for ${JSON.stringify(d.type)}/${JSON.stringify(d.id)}: workflow type and id must be 1-256 characters of A-Z a-z 0-9 _ - =`,
        { code: ErrorCode.BadRequest, details: { kind: d.kind, type: d.type, id: d.id } },
      );
      logger.warn({ seq: d.seq, shard: d.shard, kind: d.kind }, err.message);
      replyError(d, err);
      return undefined;
    }
    let from = 0;
    let epoch = identity ? await identity.current() : undefined;
    let refreshed = false;
    for (;;) {
      const cur = await load(d.type, d.id);
      const rec = cur?.stored.record;
      if (rec && rec.shard !== d.shard) {
        // Not on the workflow's shard: rejected by decide, without comparing sequences.
        return applyOne(d, cur, epoch);
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
        const fresh = await identity.current(true);
        if (fresh !== epoch) {
          logger.warn(
            { previous: epoch, current: fresh },
            'the inbox stream was recreated: sequences restart, records are rebased',
          );
          handledWithoutWrite.clear();
          epoch = fresh;
          continue;
        }
      }
      if (lastSeq >= d.seq) {
        stats.repeats++;
        await settleOutbox(cur!);
        const replyTo = replyOf(d);
        if (replyTo) {
          const r = cur!.stored.record;
          effects.reply(
            replyTo,
            d.replyEncoding,
            d.kind === 'start'
              ? { id: r.id, type: r.type, version: r.version, created: r.lastSeq === d.seq }
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
        return undefined;
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
          { workflowType: d.type, workflowId: d.id, seq: d.seq, earlier: earlier.seq },
          'applying an earlier unapplied message first',
        );
        if ((await applyOne(earlier, cur, epoch)) === 'deferred') return 'deferred';
        from = earlier.seq + 1;
        continue;
      }
      return applyOne(d, cur, epoch);
    }
  }

  async function run(d: InboxDelivery): Promise<void> {
    const key = keyOf(d.type, d.id);
    for (let attempt = 0; ; attempt++) {
      try {
        if ((await apply(d)) === 'deferred') {
          // Not acked: redelivered later, here or (after a shard move) on an engine that knows it.
          d.nak?.(deferDelayMs);
          return;
        }
        await d.ack();
        return;
      } catch (err) {
        cache.delete(key);
        if (err instanceof ConflictError) {
          stats.conflicts++;
          logger.debug(
            { workflowType: d.type, workflowId: d.id, seq: d.seq },
            'compare-and-set lost; retrying from the stored record',
          );
          continue;
        }
        stats.transientErrors++;
        if (stopping) {
          logger.warn(
            { err: toErrorData(err), seq: d.seq },
            'stopping: message left for redelivery',
          );
          return;
        }
        const delay = Math.min(maxBackoffMs, 50 * 2 ** Math.min(attempt, 10));
        logger.warn(
          {
            workflowType: d.type,
            workflowId: d.id,
            seq: d.seq,
            attempt,
            err: toErrorData(err),
            retryInMs: delay,
          },
          'step failed; retrying in place (later messages of this workflow wait)',
        );
        d.working();
        await new Promise((r) => setTimeout(r, delay));
      }
    }
  }

  return {
    handle(d) {
      const key = keyOf(d.type, d.id);
      const prev = tails.get(key) ?? Promise.resolve();
      const next = prev.then(() => run(d));
      const tail = next.catch(() => undefined);
      tails.set(key, tail);
      void tail.then(() => {
        if (tails.get(key) === tail) tails.delete(key);
      });
      return next;
    },
    get busy() {
      return tails.size;
    },
    stats,
    async close() {
      stopping = true;
      while (tails.size > 0) await Promise.allSettled([...tails.values()]);
    },
  };
}
