/**
 * NATS side of the visibility role: reading the journal stream and the workflows bucket, and
 * answering `<prefix>.search` / `<prefix>.search.counts` in a queue group. No SQLite here: the
 * role hands what it reads to the projection and the projection's answers to these responders.
 */
import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { headers, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import {
  decodeRequestBody,
  encodeBody,
  encodingOf,
  JSON_TYPE,
  MSGPACK,
  unpack,
  type BodyEncoding,
} from '../contracts/codec.js';
import { Header, type JournalEntry, type WorkflowRecord } from '../contracts/wire.js';
import { readEntry } from '../engine/journal.js';
import {
  BadRequestError,
  ErrorCode,
  JetflowError,
  RetryableError,
  toErrorData,
} from '../errors.js';
import type { Logger } from '../engine/ports.js';
import type { TopologyNames } from './topology.js';

/** The journal stream's extent and identity (its creation time). */
export interface JournalStreamInfo {
  firstSeq: number;
  lastSeq: number;
  created: string;
}

/** Info of the history stream, or undefined while it does not exist. */
export async function journalStreamInfo(
  jsm: JetStreamManager,
  names: TopologyNames,
): Promise<JournalStreamInfo | undefined> {
  try {
    const si = await jsm.streams.info(names.historyStream);
    return { firstSeq: si.state.first_seq, lastSeq: si.state.last_seq, created: si.created };
  } catch (err) {
    if (err instanceof Error && /not found/i.test(err.message)) return undefined;
    throw err;
  }
}

export interface ScanProgress {
  scanned: number;
  /** Records in the bucket when the scan started (an estimate: it changes while scanning). */
  total: number;
}

/**
 * Read the latest version of every workflow record (an ordered consumer over the bucket's stream,
 * deliver-last-per-subject), handing them over in batches. Deleted and purged keys are skipped,
 * so are values that do not decode (counted in `undecodable`).
 */
export async function scanRecords(
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  onBatch: (records: WorkflowRecord[], progress: ScanProgress) => void,
  batchSize = 1_000,
): Promise<{ scanned: number; undecodable: number }> {
  const stream = `KV_${names.bucket}`;
  let total: number;
  try {
    total = (await jsm.streams.info(stream)).state.messages;
  } catch (err) {
    if (err instanceof Error && /not found/i.test(err.message))
      return { scanned: 0, undecodable: 0 };
    throw err;
  }
  if (total === 0) return { scanned: 0, undecodable: 0 };
  const consumer = await js.consumers.get(stream, {
    filter_subjects: [`$KV.${names.bucket}.>`],
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  const messages = await consumer.consume({ max_messages: 2_000 });
  let batch: WorkflowRecord[] = [];
  let scanned = 0;
  let undecodable = 0;
  try {
    for await (const m of messages) {
      scanned++;
      const op = m.headers?.get('KV-Operation');
      if (!op && m.data.length > 0) {
        try {
          batch.push(unpack(m.data) as WorkflowRecord);
        } catch {
          undecodable++;
        }
      }
      if (batch.length >= batchSize || m.info.pending === 0) {
        onBatch(batch, { scanned, total });
        batch = [];
      }
      if (m.info.pending === 0) break;
    }
  } finally {
    await messages.close();
  }
  return { scanned, undecodable };
}

export interface JournalTail {
  /** Stop reading; resolves after the last batch was handed over. */
  stop(): Promise<void>;
  /** Resolves when the tail ended by itself (an error), never on `stop()`. */
  readonly failed: Promise<unknown>;
}

/**
 * Follow the journal from stream sequence `fromSeq` (an ordered consumer: in stream order, no
 * acks, recreated by the client on a gap). `storedAt` is when the server stored the message. Messages are handed over in batches of up to
 * `maxBatch`, or whatever arrived within `maxDelayMs` of a batch's first message. A message that
 * does not decode is handed over with `entry: undefined` (its sequence still counts).
 */
export async function tailJournal(
  js: JetStreamClient,
  names: TopologyNames,
  fromSeq: number,
  onBatch: (items: { seq: number; entry: JournalEntry | undefined; storedAt: number }[]) => void,
  o: { maxBatch?: number; maxDelayMs?: number } = {},
): Promise<JournalTail> {
  const maxBatch = o.maxBatch ?? 1_000;
  const maxDelayMs = o.maxDelayMs ?? 10;
  const consumer = await js.consumers.get(names.historyStream, {
    filter_subjects: [names.subjects.journalWildcard],
    deliver_policy: DeliverPolicy.StartSequence,
    opt_start_seq: Math.max(1, fromSeq),
  });
  const messages = await consumer.consume({ max_messages: Math.max(maxBatch, 1_000) });
  let batch: { seq: number; entry: JournalEntry | undefined; storedAt: number }[] = [];
  let timer: NodeJS.Timeout | undefined;
  const flush = () => {
    clearTimeout(timer);
    timer = undefined;
    if (batch.length === 0) return;
    const b = batch;
    batch = [];
    onBatch(b);
  };
  const loop = (async () => {
    for await (const m of messages) {
      let entry: JournalEntry | undefined;
      try {
        entry = readEntry(unpack(m.data) as JournalEntry);
      } catch {
        entry = undefined;
      }
      batch.push({ seq: m.seq, entry, storedAt: Number(m.timestampNanos / 1_000_000n) });
      if (batch.length >= maxBatch) flush();
      else timer ??= setTimeout(flush, maxDelayMs);
    }
    flush();
  })();
  let stopping = false;
  const failed = loop.then(
    () => (stopping ? new Promise<unknown>(() => undefined) : new Error('journal tail ended')),
    (err: unknown) => err,
  );
  return {
    failed,
    async stop() {
      stopping = true;
      await messages.close();
      await loop.catch(() => undefined);
      flush();
    },
  };
}

export interface SearchHandlers {
  search(body: unknown): unknown;
  counts(body: unknown): unknown;
  nodes(body: unknown): unknown;
}

export interface SearchResponder {
  stop(): Promise<void>;
  readonly stats: { answered: number; rejected: number };
}

/** Queue group of every visibility replica of a prefix. */
export function visibilityQueue(names: TopologyNames): string {
  return `${names.subjects.prefix}-visibility`;
}

/**
 * Answer `<prefix>.search`, `<prefix>.search.counts` and `<prefix>.search.nodes` in the
 * visibility queue group. Bad input
 * is answered with an error reply (code `bad_request`, header `Jf-Error`); nothing a requester
 * sends stops the responder.
 */
export function startSearchResponder(
  nc: NatsConnection,
  names: TopologyNames,
  handlers: SearchHandlers,
  logger: Logger,
): SearchResponder {
  const stats = { answered: 0, rejected: 0 };
  const reply = (m: Msg, enc: BodyEncoding, body: unknown, errorCode?: string) => {
    const h = headers();
    h.set(Header.ContentType, enc === 'msgpack' ? MSGPACK : JSON_TYPE);
    if (errorCode) h.set(Header.ErrorCode, errorCode);
    try {
      m.respond(encodeBody(body, enc), { headers: h });
    } catch (err) {
      logger.warn({ err, subject: m.subject }, 'search reply not sent');
    }
  };
  const handle = (answer: (body: unknown) => unknown) => (err: Error | null, m: Msg) => {
    if (err) return logger.error({ err }, 'search subscription error');
    if (!m.reply) return;
    const enc = encodingOf(m.headers?.get(Header.ContentType));
    try {
      reply(m, enc, answer(decodeRequestBody(m.data, enc, { subject: m.subject })));
      stats.answered++;
    } catch (e) {
      stats.rejected++;
      const je =
        e instanceof JetflowError
          ? e
          : new RetryableError(`search failed: ${String((e as Error)?.message ?? e)}`, {
              code: ErrorCode.Internal,
              cause: e,
            });
      if (!(je instanceof BadRequestError)) logger.error({ err: e }, 'search failed');
      reply(m, enc, { error: toErrorData(je) }, je.code);
    }
  };
  const queue = visibilityQueue(names);
  const subs: Subscription[] = [
    nc.subscribe(names.subjects.search, { queue, callback: handle((b) => handlers.search(b)) }),
    nc.subscribe(names.subjects.searchCounts, {
      queue,
      callback: handle((b) => handlers.counts(b)),
    }),
    nc.subscribe(names.subjects.searchNodes, {
      queue,
      callback: handle((b) => handlers.nodes(b)),
    }),
  ];
  return {
    stats,
    async stop() {
      await Promise.all(subs.map((s) => s.drain().catch(() => undefined)));
    },
  };
}
