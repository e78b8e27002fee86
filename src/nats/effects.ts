/** Performs outbox effects over NATS, each with a deterministic `Nats-Msg-Id`. */
import { injectTrace } from '../tracing/index.js';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import type { JetStreamClient } from '@nats-io/jetstream';
import type { EffectSink, Logger } from '../engine/ports.js';
import { encodeBody, JSON_TYPE, MSGPACK, pack, type BodyEncoding } from '../contracts/codec.js';
import {
  journalMsgId,
  stepEntry,
  storedEntry,
  storedStepEntry,
  withoutSnapshot,
} from '../engine/journal.js';
import {
  Header,
  type Effect,
  type EffectKind,
  type JournalEntry,
  type Notification,
  type WorkflowRecord,
} from '../contracts/wire.js';
import type { TopologyNames } from './topology.js';
import { toJetflowError } from './connection.js';
import {
  EffectsError,
  ErrorCode,
  RetryableError,
  TerminalError,
  type JetflowError,
} from '../errors.js';

/** A handler for effect kinds beyond notifications (activities, timers). */
export type EffectHandler = (
  record: WorkflowRecord,
  effect: Effect,
  msgId: string,
) => Promise<void>;

const enc = new TextEncoder();

/** Effects with the same key must be performed in order. */
function orderKey(e: Effect): string | undefined {
  switch (e.kind) {
    case 'timer':
    case 'cancelTimer':
      return `timer:${e.timerKey}`;
    case 'task':
      return `task:${e.task.taskKey}`;
    case 'stopTask':
      return `task:${e.taskKey}`;
    case 'message':
      // Sends, starts, cancels and results to one workflow arrive in outbox order.
      return `send:${e.to.type}.${e.to.id}`;
    default:
      return undefined;
  }
}

export function createEffectSink(
  nc: NatsConnection,
  js: JetStreamClient,
  names: TopologyNames,
  logger: Logger,
  handlers: Partial<Record<EffectKind, EffectHandler>> = {},
  /** Name written into journal entries. */
  engine = 'engine',
): EffectSink {
  const s = names.subjects;
  const msgpackHeaders = () => {
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    return h;
  };
  /**
   * Append a journal entry. An entry over the server's `max_payload` (a record near the limit
   * plus the event) is journaled without its snapshot and context, marked `snapshotOmitted`:
   * journaling never fails a step.
   */
  const journal = async (
    build: () => JournalEntry,
    msgId: string,
    /** The stored form built directly (else `storedEntry(build())`). */
    buildStored?: () => JournalEntry,
  ): Promise<void> => {
    // An entry that cannot be built is a bug in jetflow, never in the workflow: the step goes on
    // without it (its record and other effects are stored), loudly, instead of staying owed
    // forever with the start or signal that caused it unanswered.
    let stored: JournalEntry;
    let data: Uint8Array;
    try {
      stored = buildStored ? buildStored() : storedEntry(build());
      data = pack(stored);
      const max = nc.info?.max_payload;
      const full = max !== undefined && data.length + 1024 > max ? build() : undefined;
      if (full?.kind === 'step') data = pack(withoutSnapshot(full, { bytes: data.length }));
    } catch (err) {
      logger.error({ err, msgId }, 'journal entry not built: the step goes on without it');
      return;
    }
    // No Content-Type header: journal bodies are always msgpack (31 bytes less per entry).
    await js.publish(s.journal(stored.workflowType, stored.id), data, { msgID: msgId });
  };
  const jsonHeaders = () => {
    const h = headers();
    h.set(Header.ContentType, JSON_TYPE);
    return h;
  };
  const notify = async (notification: Notification, msgId: string): Promise<void> => {
    await js.publish(
      s.events(notification.workflowType, notification.id),
      enc.encode(JSON.stringify(notification)),
      { msgID: msgId, headers: jsonHeaders() },
    );
  };
  /** Publish a message to another workflow's inbox (JetStream; msg id dedups a repeat). */
  const message = async (
    e: Extract<Effect, { kind: 'message' }>,
    msgId: string,
    from?: { type: string; id: string; step: number; index: number },
  ): Promise<void> => {
    const body = from ? { ...e.body, from } : e.body;
    const h = msgpackHeaders();
    // The sending step's span (when traced): the other workflow's step continues the trace.
    injectTrace(h);
    await js.publish(s.inbox(e.inbox, e.to.type, e.to.id), pack(body), {
      msgID: e.msgId ?? msgId,
      headers: h,
    });
  };
  const alert = async (
    e: Extract<Effect, { kind: 'alert' }>,
    record: WorkflowRecord,
    msgId: string,
  ): Promise<void> => {
    await js.publish(
      s.alerts(e.queue, record.type, record.id),
      enc.encode(JSON.stringify(e.alert)),
      { msgID: msgId, headers: jsonHeaders() },
    );
  };
  /**
   * The steps folded into this record's write: every one's journal entry and notifications, in
   * step order. They are published back to back and their acks awaited together: publishes of
   * one connection reach a stream in the order they were made, so the journal keeps step order
   * (nothing here awaits between two publishes). Settles every publish before it throws.
   */
  const folded = async (
    e: Extract<Effect, { kind: 'steps' }>,
    record: WorkflowRecord,
  ): Promise<void> => {
    const sent: Promise<void>[] = [];
    for (const step of e.steps) {
      const base = `${record.type}.${record.id}.${step.step}`;
      const entry = step.entry;
      if (entry) sent.push(journal(() => entry, journalMsgId(record.type, record.id, step.step)));
      for (const [i, x] of step.effects) {
        sent.push(
          x.kind === 'notify'
            ? notify(x.notification, `${base}.${i}`)
            : alert(x, record, `${base}.${i}`),
        );
      }
    }
    const failed = (await Promise.allSettled(sent)).find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
  };
  return {
    async perform(record, only) {
      const base = `${record.type}.${record.id}.${record.step}`;
      const fields = { workflowId: record.id, workflowType: record.type };
      // Effects on the same timer or task run in outbox order (a re-set timer is purged, then
      // scheduled again); all others run concurrently. Once one effect of a chain fails, the
      // rest of that chain is not attempted (it stays owed, in order).
      const chains = new Map<string, { indexes: number[]; done: Promise<void> }>();
      const failures = new Map<number, JetflowError>();
      const run = async (e: Effect, i: number) => {
        const msgId = `${base}.${i}`;
        if (e.kind === 'notify') return notify(e.notification, msgId);
        if (e.kind === 'alert') return alert(e, record, msgId);
        if (e.kind === 'steps') return folded(e, record);
        if (e.kind === 'message') {
          return message(
            e,
            msgId,
            e.stamp ? { type: record.type, id: record.id, step: record.step, index: i } : undefined,
          );
        }
        if (e.kind === 'journal') {
          return journal(
            () => stepEntry(record, e, engine),
            journalMsgId(record.type, record.id, record.step),
            () => storedStepEntry(record, e, engine),
          );
        }
        const h = handlers[e.kind];
        if (h) return h(record, e, msgId);
        // Not performed, so not done: it stays owed (and the message unacknowledged) until an
        // engine with a handler for it performs it.
        throw new RetryableError(`no handler for effect kind ${e.kind} on this engine`, {
          ...fields,
          code: ErrorCode.Config,
        });
      };
      const indexes = only ?? record.outbox.map((_, i) => i);
      // Folded earlier steps go first, whole: their effects precede this step's, as they would
      // have if each had been a step of its own. If they fail, everything else stays owed too.
      for (const i of indexes) {
        const e = record.outbox[i];
        if (e?.kind !== 'steps') continue;
        try {
          await run(e, i);
        } catch (err) {
          failures.set(i, toJetflowError(err, fields));
        }
      }
      if (failures.size > 0) {
        for (const i of indexes) {
          if (!failures.has(i))
            failures.set(i, new RetryableError('the folded steps before it failed', fields));
        }
      }
      // The step's journal entry goes last, once every other effect is performed: an entry in
      // the journal then proves the whole outbox was performed, which is what a cold load reads
      // instead of an `outboxDone` write (processor, `journaledOutbox`).
      const last: number[] = [];
      for (const i of failures.size > 0 ? [] : indexes) {
        if (record.outbox[i]?.kind === 'steps') continue;
        if (record.outbox[i]?.kind === 'journal') {
          last.push(i);
          continue;
        }
        const e = record.outbox[i];
        if (!e) continue;
        const key = orderKey(e) ?? `#${i}`;
        const chain = chains.get(key) ?? { indexes: [], done: Promise.resolve() };
        chain.indexes.push(i);
        chain.done = chain.done.then(async () => {
          if (chain.indexes.some((j) => failures.has(j))) {
            failures.set(i, new RetryableError('an earlier effect on the same key failed', fields));
            return;
          }
          try {
            await run(e, i);
          } catch (err) {
            failures.set(i, toJetflowError(err, fields));
          }
        });
        chains.set(key, chain);
      }
      // Every chain settles before this returns: a retry never overlaps a pass still running.
      await Promise.all([...chains.values()].map((c) => c.done));
      for (const i of last) {
        if (failures.size > 0) {
          failures.set(i, new RetryableError('the other effects of the step failed', fields));
          continue;
        }
        try {
          await run(record.outbox[i]!, i);
        } catch (err) {
          failures.set(i, toJetflowError(err, fields));
        }
      }
      if (failures.size === 0) return;
      const failed = [...failures.keys()].sort((a, b) => a - b);
      const errors = [...failures.values()];
      const terminal = errors.find((x): x is TerminalError => x instanceof TerminalError);
      const first = terminal ?? errors[0]!;
      for (const kind of new Set(failed.map((i) => record.outbox[i]!.kind))) {
        if (kind !== 'notify' && !handlers[kind]) {
          logger.warn({ kind }, 'no handler for this effect kind on this engine; it stays owed');
        }
      }
      throw new EffectsError(
        `${failed.length} of ${indexes.length} effects of ${base} failed: ${first.message}`,
        { ...fields, failed, terminal, cause: first },
      );
    },
    notify,
    journal: (entry: JournalEntry, msgId: string) => journal(() => entry, msgId),
    message: (m) => message(m, m.msgId),
    reply(subject: string, encoding: BodyEncoding, body: unknown, errorCode?: string) {
      const h = headers();
      h.set(Header.ContentType, encoding === 'msgpack' ? MSGPACK : JSON_TYPE);
      if (errorCode) h.set(Header.ErrorCode, errorCode);
      try {
        nc.publish(subject, encodeBody(body, encoding), { headers: h });
      } catch (err) {
        logger.warn({ err, subject }, 'reply not sent');
      }
    },
  };
}
