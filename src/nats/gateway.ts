/**
 * The public face of the engines: core-NATS queue subscriptions on `wf.start|signal|cancel|query`.
 * Start, signal and cancel are validated and written durably into the inbox stream (the reply,
 * if requested, comes from the step once it is applied); queries are answered from KV.
 */
import {
  headers,
  nuid,
  type Msg,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
import type { JetStreamClient } from '@nats-io/jetstream';
import type { EffectSink, EngineMetrics, KeyStore, Logger, RecordStore } from '../engine/ports.js';
import type { Registry } from '../engine/registry.js';
import { parseRequest, queryReply } from '../engine/gateway.js';
import { positionOf } from '../engine/admission.js';
import { decodeRequestBody, encodingOf, pack, type BodyEncoding } from '../contracts/codec.js';
import { parseHistoryRequest } from '../engine/journal.js';
import { parseAdminRequest } from '../engine/admin.js';
import type { HistoryReader } from './history.js';
import {
  DEFAULT_REPLY_PREFIXES,
  isReplySubject,
  isToken,
  parseAdmin,
  parsePublic,
} from '../contracts/subjects.js';
import { rejection } from '../engine/step.js';
import { Header, type InboxMessage } from '../contracts/wire.js';
import type { InboxKind } from '../contracts/subjects.js';
import {
  BadRequestError,
  ErrorCode,
  JetflowError,
  RetryableError,
  toErrorData,
} from '../errors.js';
import type { TopologyNames } from './topology.js';

export interface GatewayOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  names: TopologyNames;
  registry: Registry;
  store: RecordStore;
  sink: EffectSink;
  logger: Logger;
  maxInputBytes: number;
  /** Queue group shared by every engine. */
  queue?: string;
  /** Reply subjects accepted on start, signal and cancel (default `_INBOX.`). */
  replyPrefixes?: readonly string[];
  /** Requests worked on at once (default 64); more wait, see {@link GATEWAY_WAITING_BYTES}. */
  maxInFlight?: number;
  /** Reads journals for `<prefix>.history.<type>.<id>` (absent: not answered here). */
  history?: HistoryReader;
  /** Concurrency keys: a deferred workflow's query tells its current position. */
  keys?: KeyStore;
  /** Counts a repeat the server dropped by msg id (admission stage `dedup`). */
  metrics?: Pick<EngineMetrics, 'admission'>;
}

/**
 * Requests beyond `maxInFlight` wait in arrival order, up to this many bytes (body + 1 KiB per
 * request for the message itself). Core NATS has no flow control towards publishers, so waiting
 * cannot be unbounded: a request that would exceed it is answered `unavailable` (retryable) at
 * once, or, without a reply subject, notified as rejected.
 */
export const GATEWAY_WAITING_BYTES = 64 * 1024 * 1024;
const WAITING_OVERHEAD = 1024;

export interface GatewayStats {
  accepted: number;
  rejected: number;
  queries: number;
  /** Requests being worked on now (at most `maxInFlight`). */
  inFlight: number;
  /** The most requests ever worked on at once. */
  inFlightHigh: number;
  /** Requests waiting for a slot now. */
  waiting: number;
  /** Requests refused with `unavailable` because the waiting room was full. */
  overloaded: number;
}

export interface Gateway {
  stop(): Promise<void>;
  readonly stats: Readonly<GatewayStats>;
}

export function startGateway(o: GatewayOptions): Gateway {
  const { nc, js, names, registry, store, sink, logger } = o;
  const queue = o.queue ?? `${names.subjects.prefix}-gateway`;
  const stats: GatewayStats = {
    accepted: 0,
    rejected: 0,
    queries: 0,
    inFlight: 0,
    inFlightHigh: 0,
    waiting: 0,
    overloaded: 0,
  };
  const maxInFlight = Math.max(1, o.maxInFlight ?? 64);
  const replyPrefixes = o.replyPrefixes ?? DEFAULT_REPLY_PREFIXES;
  const inflight = new Set<Promise<void>>();
  const subs: Subscription[] = [];

  const fail = (m: Msg, enc: BodyEncoding, err: unknown) => {
    stats.rejected++;
    const e =
      err instanceof JetflowError
        ? err
        : new RetryableError(String((err as Error)?.message ?? err), { cause: err });
    logger.warn({ subject: m.subject, code: e.code }, e.message);
    if (m.reply) {
      sink.reply(m.reply, enc, { error: toErrorData(e) }, e.code);
      return;
    }
    // No reply subject: the workflow's notifications carry the rejection instead.
    const p = parsePublic(m.subject);
    if (p && isToken(p.type) && isToken(p.id)) {
      const n = rejection(undefined, p.type, p.id, `(${p.verb})`, e, [], Date.now());
      sink
        .notify(n, `gw.${p.type}.${p.id}.${nuid.next()}`)
        .catch((err2: unknown) =>
          logger.warn({ err: err2 }, 'rejection notification not published'),
        );
    }
  };

  /** Type and id of a read request must be tokens (nothing could be stored under others). */
  const checkTokens = (m: Msg, p: { type: string; id: string }) => {
    if (!isToken(p.type) || !isToken(p.id)) {
      throw new BadRequestError(
        'workflow type and id must be 1-256 characters of A-Z a-z 0-9 _ - =',
        { workflowType: p.type, workflowId: p.id, subject: m.subject },
      );
    }
  };

  /** The step replies to `Jf-Reply-To`: only request inboxes may be named there. */
  const checkReply = (m: Msg, p: { type: string; id: string }) => {
    if (m.reply && !isReplySubject(m.reply, replyPrefixes)) {
      throw new BadRequestError(
        `reply subject ${JSON.stringify(m.reply)} is not a request inbox: the engines reply only on subjects starting with ${replyPrefixes.join(', ')} (engine option replyPrefixes)`,
        { workflowId: p.id, workflowType: p.type, subject: m.subject },
      );
    }
  };

  /**
   * Write a validated message into the workflow's inbox (the step replies, through
   * `Jf-Reply-To`). A repeat the server deduplicated on `msgId` is answered `duplicate` here.
   */
  async function toInbox(
    m: Msg,
    enc: BodyEncoding,
    p: { type: string; id: string },
    kind: InboxKind,
    body: unknown,
    msgId: string | undefined,
    duplicate: object,
  ): Promise<void> {
    const h = headers();
    // W3C trace context: carried through the inbox to the step (see `Header.TraceParent`).
    const traceparent = m.headers?.get(Header.TraceParent);
    if (traceparent) {
      h.set(Header.TraceParent, traceparent);
      const tracestate = m.headers?.get(Header.TraceState);
      if (tracestate) h.set(Header.TraceState, tracestate);
    }
    if (m.reply) {
      h.set(Header.ReplyTo, m.reply);
      h.set(Header.ReplyEncoding, enc === 'msgpack' ? 'application/msgpack' : 'application/json');
    }
    try {
      const ack = await js.publish(names.subjects.inbox(kind, p.type, p.id), pack(body), {
        headers: h,
        ...(msgId ? { msgID: msgId } : {}),
      });
      stats.accepted++;
      if (ack.duplicate) o.metrics?.admission?.('dedup', 'dropped');
      if (ack.duplicate && m.reply) sink.reply(m.reply, enc, duplicate);
    } catch (err) {
      fail(
        m,
        enc,
        new RetryableError(`inbox unavailable: ${String((err as Error)?.message ?? err)}`, {
          code: ErrorCode.Unavailable,
          workflowId: p.id,
          workflowType: p.type,
          subject: m.subject,
          cause: err,
        }),
      );
    }
  }

  async function onCommand(m: Msg): Promise<void> {
    const enc = encodingOf(m.headers?.get(Header.ContentType));
    const p = parsePublic(m.subject);
    if (!p)
      return fail(
        m,
        enc,
        new BadRequestError(`unexpected subject ${m.subject}`, { subject: m.subject }),
      );
    let message: InboxMessage;
    try {
      message = parseRequest(
        { verb: p.verb, type: p.type, id: p.id, data: m.data, encoding: enc, subject: m.subject },
        registry,
        o.maxInputBytes,
      );
      checkReply(m, p);
    } catch (err) {
      return fail(m, enc, err);
    }
    const msgId = m.headers?.get(Header.MsgId) || undefined;
    // The client's msg id travels in the body too: the record remembers it, so a retry is a
    // duplicate even after the server's dedup window or a server restart.
    const body =
      msgId !== undefined && (message.kind === 'signal' || message.kind === 'cancel')
        ? { ...message, msgId }
        : message;
    await toInbox(
      m,
      enc,
      p,
      message.kind as 'start' | 'signal' | 'cancel',
      body,
      msgId && `${p.verb}.${p.type}.${p.id}.${msgId}`,
      { id: p.id, type: p.type, duplicate: true },
    );
  }

  /**
   * `<prefix>.admin.<verb>.<type>.<id>`: validated, then written into the workflow's inbox (kind
   * `admin`) like any message, so it is ordered with the workflow's other messages, applied
   * once and journaled; the step replies. `requestId` is the JetStream msg id too.
   */
  async function onAdmin(m: Msg): Promise<void> {
    const enc = encodingOf(m.headers?.get(Header.ContentType));
    const p = parseAdmin(m.subject);
    let message: InboxMessage;
    try {
      if (!p) {
        throw new BadRequestError(
          `unexpected admin subject ${m.subject}: use <prefix>.admin.<verb>.<type>.<id>`,
          { subject: m.subject },
        );
      }
      message = parseAdminRequest(
        {
          verb: p.verb,
          type: p.type,
          id: p.id,
          data: m.data,
          encoding: enc,
          subject: m.subject,
          maxBytes: o.maxInputBytes,
        },
        registry,
      );
      checkReply(m, p);
    } catch (err) {
      return fail(m, enc, err);
    }
    const requestId = message.kind === 'admin' ? message.requestId : undefined;
    await toInbox(
      m,
      enc,
      p,
      'admin',
      message,
      requestId !== undefined ? `admin.${p.type}.${p.id}.${requestId}` : undefined,
      { id: p.id, type: p.type, action: p.verb, verb: p.verb, changed: {}, duplicate: true },
    );
  }

  async function onQuery(m: Msg): Promise<void> {
    stats.queries++;
    const enc = encodingOf(m.headers?.get(Header.ContentType));
    const p = parsePublic(m.subject);
    if (!p || !m.reply) return;
    try {
      checkTokens(m, p);
      const stored = await store.get(p.type, p.id);
      if (!stored) {
        throw new BadRequestError(`workflow ${p.type}/${p.id} does not exist`, {
          code: ErrorCode.NotFound,
          workflowId: p.id,
          workflowType: p.type,
        });
      }
      const body = decodeRequestBody(m.data, enc, { subject: m.subject });
      const r = stored.record;
      // A deferred workflow's position changes as the waiters ahead are admitted: read it now.
      const position =
        r.status === 'deferred' && r.admission && o.keys
          ? (positionOf(await o.keys.get(r.type, r.admission.keyToken), r.id, Date.now()) ?? null)
          : undefined;
      sink.reply(m.reply, enc, queryReply(registry, r, body, position));
    } catch (err) {
      fail(m, enc, err);
    }
  }

  async function onHistory(m: Msg): Promise<void> {
    stats.queries++;
    const enc = encodingOf(m.headers?.get(Header.ContentType));
    const p = parsePublic(m.subject);
    if (!p || !m.reply || !o.history) return;
    try {
      checkTokens(m, p);
      const q = parseHistoryRequest(decodeRequestBody(m.data, enc, { subject: m.subject }));
      const reply = await o.history(p.type, p.id, q);
      if (reply.entries.length === 0 && !(await store.get(p.type, p.id))) {
        throw new BadRequestError(`workflow ${p.type}/${p.id} does not exist`, {
          code: ErrorCode.NotFound,
          workflowId: p.id,
          workflowType: p.type,
        });
      }
      sink.reply(m.reply, enc, reply);
    } catch (err) {
      fail(m, enc, err);
    }
  }

  // The bound: at most `maxInFlight` handlers run; the rest wait, in bounded bytes, one FIFO per
  // workflow (the subject's last two tokens, `<type>.<id>`), served round robin across
  // workflows: a workflow sent thousands of requests at once holds the others back by one turn,
  // not by its whole backlog (issue 18's head-of-line). One workflow's requests keep their order.
  // Each FIFO and the rotation have a head index (Array.shift is O(n) on a long queue).
  type Waiting = { f: (m: Msg) => Promise<void>; m: Msg; weight: number };
  class Fifo<T> {
    private items: (T | undefined)[] = [];
    private head = 0;
    get size() {
      return this.items.length - this.head;
    }
    push(x: T) {
      this.items.push(x);
    }
    shift(): T | undefined {
      const x = this.items[this.head];
      if (x === undefined) return undefined;
      this.items[this.head++] = undefined; // let it be collected
      if (this.head >= 1024 && this.head * 2 >= this.items.length) {
        this.items = this.items.slice(this.head);
        this.head = 0;
      }
      return x;
    }
  }
  const byWorkflow = new Map<string, Fifo<Waiting>>();
  /** Workflows with waiting requests, in turn order; each appears once. */
  const turns = new Fifo<string>();
  let queuedBytes = 0;
  const workflowOf = (subject: string) => {
    const last = subject.lastIndexOf('.');
    const before = last > 0 ? subject.lastIndexOf('.', last - 1) : -1;
    return before >= 0 ? subject.slice(before + 1) : subject;
  };
  const enqueue = (x: Waiting) => {
    const key = workflowOf(x.m.subject);
    let q = byWorkflow.get(key);
    if (!q) {
      byWorkflow.set(key, (q = new Fifo<Waiting>()));
      turns.push(key);
    }
    q.push(x);
    queuedBytes += x.weight;
    stats.waiting++;
  };
  const dequeue = () => {
    const key = turns.shift();
    if (key === undefined) return undefined;
    const q = byWorkflow.get(key)!;
    const next = q.shift()!;
    // Back to the end of the rotation while it has more waiting.
    if (q.size > 0) turns.push(key);
    else byWorkflow.delete(key);
    queuedBytes -= next.weight;
    stats.waiting--;
    return next;
  };
  let idle: (() => void) | undefined;
  const run = (f: (m: Msg) => Promise<void>, m: Msg) => {
    stats.inFlight++;
    stats.inFlightHigh = Math.max(stats.inFlightHigh, stats.inFlight);
    const p = f(m)
      .catch((e: unknown) => logger.error({ err: e }, 'gateway handler failed'))
      .finally(() => {
        inflight.delete(p);
        stats.inFlight--;
        const next = dequeue();
        if (next) run(next.f, next.m);
        else if (stats.inFlight === 0) idle?.();
      });
    inflight.add(p);
  };
  const track = (f: (m: Msg) => Promise<void>) => (err: Error | null, m: Msg) => {
    if (err) return logger.error({ err }, 'gateway subscription error');
    if (stats.inFlight < maxInFlight) return run(f, m);
    const weight = m.data.length + WAITING_OVERHEAD;
    if (queuedBytes + weight > GATEWAY_WAITING_BYTES) {
      stats.overloaded++;
      return fail(
        m,
        encodingOf(m.headers?.get(Header.ContentType)),
        new RetryableError(
          `engine overloaded: ${maxInFlight} requests in flight and ${stats.waiting} waiting; retry later`,
          { code: ErrorCode.Unavailable, subject: m.subject, retryAfterMs: 100 },
        ),
      );
    }
    enqueue({ f, m, weight });
  };
  const w = names.subjects.publicWildcards;
  for (const subj of [w.start, w.signal, w.cancel])
    subs.push(nc.subscribe(subj, { queue, callback: track(onCommand) }));
  subs.push(nc.subscribe(w.query, { queue, callback: track(onQuery) }));
  subs.push(nc.subscribe(names.subjects.adminWildcard, { queue, callback: track(onAdmin) }));
  if (o.history) {
    subs.push(nc.subscribe(names.subjects.historyWildcard, { queue, callback: track(onHistory) }));
  }

  return {
    stats,
    async stop() {
      await Promise.all(subs.map((s) => s.drain().catch(() => undefined)));
      // Every request received is worked on: the waiting ones start as slots free up.
      if (stats.inFlight > 0) await new Promise<void>((ok) => (idle = ok));
      await Promise.allSettled([...inflight]);
    },
  };
}
