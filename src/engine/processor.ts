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
  InboxReader,
  Logger,
  RecordStore,
  StoredRecord,
} from './ports.js';
import { unpack } from '../contracts/codec.js';
import type { InboxMessage, ResultMessage } from '../contracts/wire.js';
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
      return { kind: 'cancel', reason: typeof b.reason === 'string' ? b.reason : undefined };
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
      return { kind: 'signal', event: ev as { type: string } };
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
  const ctx = { registry: opts.registry, subjects: opts.subjects };
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

  function replyError(e: InboxEntry, err: JetflowError, accepts?: string[]): void {
    if (!e.replyTo) return;
    const data = toErrorData(err);
    effects.reply(
      e.replyTo,
      e.replyEncoding,
      { error: accepts ? { ...data, accepts } : data },
      err.code,
    );
  }

  /** Apply one message that is known to be next in order for its workflow. */
  async function applyOne(e: InboxEntry, cur: CacheEntry | undefined): Promise<void> {
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
        { type: e.type, id: e.id, seq: e.seq, shard: e.shard, message, now },
        cur?.live,
      );
    } catch (err) {
      if (!(err instanceof JetflowError) || err instanceof ConflictError) throw err;
      decision = { kind: 'reject', error: err, accepts: [] };
      message = { kind: 'signal', event: { type: `(${e.kind})` } };
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
      return;
    }
    if (decision.kind === 'ignore') {
      stats.ignored++;
      logger.info(
        { workflowType: e.type, workflowId: e.id, seq: e.seq, kind: e.kind },
        `ignored: ${decision.reason}`,
      );
      return;
    }
    if (decision.kind === 'noop') {
      if (e.replyTo) effects.reply(e.replyTo, e.replyEncoding, decision.reply);
      return;
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
    if (e.replyTo) effects.reply(e.replyTo, e.replyEncoding, decision.reply);
  }

  /** Apply `d` after any earlier unapplied message of the same workflow. */
  async function apply(d: InboxDelivery): Promise<void> {
    let from = 0;
    for (;;) {
      const cur = await load(d.type, d.id);
      const lastSeq = cur?.stored.record.lastSeq ?? 0;
      if (lastSeq >= d.seq) {
        stats.repeats++;
        await settleOutbox(cur!);
        if (d.replyTo) {
          const r = cur!.stored.record;
          effects.reply(
            d.replyTo,
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
        return;
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
        await applyOne(earlier, cur);
        from = earlier.seq + 1;
        continue;
      }
      await applyOne(d, cur);
      return;
    }
  }

  async function run(d: InboxDelivery): Promise<void> {
    const key = keyOf(d.type, d.id);
    for (let attempt = 0; ; attempt++) {
      try {
        await apply(d);
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
