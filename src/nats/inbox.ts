/** The inbox stream: shard consumers that feed the processor, and direct reads for the gap check. */
import type {
  JetStreamClient,
  JetStreamManager,
  JsMsg,
  StoredMsg,
  ConsumerMessages,
} from '@nats-io/jetstream';
import type { MsgHdrs } from '@nats-io/transport-node';
import type { InboxDelivery, InboxEntry, InboxReader, Logger } from '../engine/ports.js';
import type { Processor } from '../engine/processor.js';
import { encodingOf } from '../contracts/codec.js';
import { Header } from '../contracts/wire.js';
import { parseShardInbox, type Subjects } from '../contracts/subjects.js';
import type { TopologyNames } from './topology.js';

function entryOf(
  subject: string,
  seq: number,
  data: Uint8Array,
  h: MsgHdrs | undefined,
): InboxEntry | undefined {
  const p = parseShardInbox(subject);
  if (!p) return undefined;
  return {
    seq,
    shard: p.shard,
    kind: p.kind,
    type: p.type,
    id: p.id,
    data,
    replyTo: h?.get(Header.ReplyTo) || undefined,
    replyEncoding: encodingOf(h?.get(Header.ReplyEncoding)),
  };
}

export function createInboxReader(jsm: JetStreamManager, names: TopologyNames): InboxReader {
  const s: Subjects = names.subjects;
  return {
    async firstFrom(shard, type, id, fromSeq) {
      const m: StoredMsg | null = await jsm.streams.getMessage(names.inboxStream, {
        seq: fromSeq,
        next_by_subj: s.workflowFilter(shard, type, id),
      } as unknown as { seq: number });
      if (!m) return undefined;
      return entryOf(m.subject, m.seq, m.data, m.header);
    },
  };
}

/** The priority group of every shard consumer: the server pins one engine per shard. */
export const ENGINES_GROUP = 'engines';

export interface ShardConsumerOptions {
  js: JetStreamClient;
  names: TopologyNames;
  shard: number;
  processor: Processor;
  logger: Logger;
  /** Messages buffered per pull. */
  batch: number;
  /** Priority group to pull in (pinned consumers). */
  group: string;
  /** Pull expiry; must be well below the consumer's priority timeout or an idle pin is lost. */
  expiresMs: number;
}

export interface ShardHandle {
  readonly shard: number;
  /** The server's pin id for this engine on this shard, once pinned. */
  readonly pinId: string | undefined;
  /** Publish a no-op claim so that the server pins the shard to this consumer now. */
  claim(engineId: string): Promise<void>;
  /** Stop fetching and wait for in-flight steps. */
  stop(): Promise<void>;
}

/** Consume one shard until `stop()`. */
export async function consumeShard(o: ShardConsumerOptions): Promise<ShardHandle> {
  const consumer = await o.js.consumers.get(o.names.inboxStream, o.names.shardConsumer(o.shard));
  const messages: ConsumerMessages = await consumer.consume({
    max_messages: o.batch,
    expires: o.expiresMs,
    group: o.group,
  });
  let pinId: string | undefined;
  void (async () => {
    for await (const s of messages.status()) {
      if (s.type === 'consumer_pinned') pinId = s.id;
      else if (s.type === 'consumer_unpinned') pinId = undefined;
    }
  })().catch(() => undefined);
  const inflight = new Set<Promise<void>>();
  const loop = (async () => {
    for await (const msg of messages) {
      pinId = msg.headers?.get('Nats-Pin-Id') || pinId;
      const d = deliveryOf(msg);
      if (d?.kind === 'claim') {
        msg.ack();
        continue;
      }
      if (!d) {
        o.logger.error(
          { subject: msg.subject, seq: msg.seq },
          'inbox message on an unexpected subject; terminated',
        );
        msg.term('unexpected subject');
        continue;
      }
      const p = o.processor.handle(d).catch((err: unknown) => {
        o.logger.error({ err, seq: d.seq }, 'unexpected processor failure');
      });
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
  })();
  return {
    shard: o.shard,
    get pinId() {
      return pinId;
    },
    async claim(engineId: string) {
      await o.js.publish(
        o.names.subjects.shardInbox(o.shard, 'claim', engineId, 'claim'),
        new Uint8Array(),
      );
    },
    async stop() {
      messages.stop();
      await loop.catch(() => undefined);
      await Promise.allSettled([...inflight]);
    },
  };
}

function deliveryOf(msg: JsMsg): InboxDelivery | undefined {
  const e = entryOf(msg.subject, msg.seq, msg.data, msg.headers);
  if (!e) return undefined;
  return {
    ...e,
    ack: () => {
      msg.ack();
      return Promise.resolve();
    },
    working: () => msg.working(),
    nak: (delayMs: number) => msg.nak(delayMs),
  };
}
