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
import type { EffectSink, Logger, RecordStore } from '../engine/ports.js';
import type { Registry } from '../engine/registry.js';
import { parseRequest, queryReply } from '../engine/gateway.js';
import { encodingOf, pack, type BodyEncoding } from '../contracts/codec.js';
import { isToken, parsePublic } from '../contracts/subjects.js';
import { rejection } from '../engine/step.js';
import { Header, type InboxMessage } from '../contracts/wire.js';
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
}

export interface Gateway {
  stop(): Promise<void>;
  readonly stats: { accepted: number; rejected: number; queries: number };
}

export function startGateway(o: GatewayOptions): Gateway {
  const { nc, js, names, registry, store, sink, logger } = o;
  const queue = o.queue ?? `${names.subjects.prefix}-gateway`;
  const stats = { accepted: 0, rejected: 0, queries: 0 };
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
    } catch (err) {
      return fail(m, enc, err);
    }
    const h = headers();
    if (m.reply) {
      h.set(Header.ReplyTo, m.reply);
      h.set(Header.ReplyEncoding, enc === 'msgpack' ? 'application/msgpack' : 'application/json');
    }
    const msgId = m.headers?.get(Header.MsgId) || undefined;
    try {
      const ack = await js.publish(
        names.subjects.inbox(message.kind, p.type, p.id),
        pack(message),
        {
          headers: h,
          ...(msgId ? { msgID: `${p.verb}.${p.type}.${p.id}.${msgId}` } : {}),
        },
      );
      stats.accepted++;
      if (ack.duplicate && m.reply) {
        sink.reply(m.reply, enc, { id: p.id, type: p.type, duplicate: true });
      }
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

  async function onQuery(m: Msg): Promise<void> {
    stats.queries++;
    const enc = encodingOf(m.headers?.get(Header.ContentType));
    const p = parsePublic(m.subject);
    if (!p || !m.reply) return;
    try {
      const stored = await store.get(p.type, p.id);
      if (!stored) {
        throw new BadRequestError(`workflow ${p.type}/${p.id} does not exist`, {
          code: ErrorCode.NotFound,
          workflowId: p.id,
          workflowType: p.type,
        });
      }
      sink.reply(m.reply, enc, queryReply(registry, stored.record));
    } catch (err) {
      fail(m, enc, err);
    }
  }

  const track = (f: (m: Msg) => Promise<void>) => (err: Error | null, m: Msg) => {
    if (err) return logger.error({ err }, 'gateway subscription error');
    const p = f(m).catch((e: unknown) => logger.error({ err: e }, 'gateway handler failed'));
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
  };
  const w = names.subjects.publicWildcards;
  for (const subj of [w.start, w.signal, w.cancel])
    subs.push(nc.subscribe(subj, { queue, callback: track(onCommand) }));
  subs.push(nc.subscribe(w.query, { queue, callback: track(onQuery) }));

  return {
    stats,
    async stop() {
      await Promise.all(subs.map((s) => s.drain().catch(() => undefined)));
      await Promise.allSettled([...inflight]);
    },
  };
}
