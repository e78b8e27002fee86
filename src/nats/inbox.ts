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
import { pinnedClientOf } from './membership.js';

function entryOf(
  subject: string,
  seq: number,
  data: Uint8Array,
  h: MsgHdrs | undefined,
): InboxEntry | undefined {
  const p = parseShardInbox(subject);
  if (!p) return undefined;
  const traceparent = h?.get(Header.TraceParent);
  return {
    seq,
    shard: p.shard,
    kind: p.kind,
    type: p.type,
    id: p.id,
    data,
    replyTo: h?.get(Header.ReplyTo) || undefined,
    replyEncoding: encodingOf(h?.get(Header.ReplyEncoding)),
    ...(traceparent
      ? { trace: { traceparent, tracestate: h?.get(Header.TraceState) || undefined } }
      : {}),
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
  /**
   * Called before consuming again after the consumer's message iterator ended on its own (the
   * consumer was deleted, a pull was refused, the connection closed): re-create the consumer
   * from the topology table if it is missing or wrong.
   */
  repair?: () => Promise<void>;
  /** Called with each delivered message's inbox lag (seconds from stored to delivered). */
  lag?: (shard: number, seconds: number) => void;
}

export interface ShardHandle {
  readonly shard: number;
  /** The server's pin id for this engine on this shard, once pinned. */
  readonly pinId: string | undefined;
  /** Times the consumer was restarted after its iterator ended on its own. */
  readonly restarts: number;
  /** Publish a no-op claim so that the server pins the shard to this consumer now. */
  claim(engineId: string): Promise<void>;
  /**
   * Stop fetching and wait for in-flight steps, at most `graceMs` (default: unbounded). Steps
   * still running after the grace stay unacknowledged: the server redelivers their messages to
   * the next holder after the consumer's AckWait, where the record's `lastSeq` and the
   * compare-and-set on the record keep them exactly-once.
   */
  stop(graceMs?: number): Promise<void>;
}

const RESTART_MIN_MS = 250;

/** Delivery runs begun in this process (every subscription of every shard draws from it). */
let runs = 0;
const RESTART_MAX_MS = 5_000;

/**
 * Consume one shard until `stop()`. The consumption is supervised: if the message iterator ends
 * for any reason but `stop()` (a deleted consumer, a refused pull, a closed connection), it is
 * logged, the consumer repaired (`repair`) and consumption restarted with backoff, so a shard that
 * is advertised as held is always being consumed.
 */
export async function consumeShard(o: ShardConsumerOptions): Promise<ShardHandle> {
  let pinId: string | undefined;
  let stopped = false;
  let restarts = 0;
  let current: ConsumerMessages | undefined;
  const inflight = new Set<Promise<void>>();

  const open = async (): Promise<ConsumerMessages> => {
    const consumer = await o.js.consumers.get(o.names.inboxStream, o.names.shardConsumer(o.shard));
    const messages = await consumer.consume({
      max_messages: o.batch,
      expires: o.expiresMs,
      group: o.group,
      // A deleted consumer ends the iterator (and is re-created by `repair`) instead of being
      // polled for silently.
      abort_on_missing_resource: true,
    });
    void (async () => {
      for await (const s of messages.status()) {
        if (s.type === 'consumer_pinned') pinId = s.id;
        else if (s.type === 'consumer_unpinned') pinId = undefined;
      }
    })().catch(() => undefined);
    return messages;
  };

  // Delivery runs (see `InboxDelivery.run`): a new run begins at every break in the consumer's
  // delivery sequence as this subscription sees it (a delivery to another engine, a redelivery, a
  // restarted iterator, a re-created consumer), so that deliveries of one run are every first
  // delivery of the consumer between them. Run ids are unique in the process: a shard held
  // again later (a new subscription) never continues a run of the earlier holding.
  let run = '';
  let lastDelivery = -1;
  const drain = async (messages: ConsumerMessages): Promise<void> => {
    lastDelivery = -1;
    for await (const msg of messages) {
      pinId = msg.headers?.get('Nats-Pin-Id') || pinId;
      const { deliverySequence, redelivered } = msg.info;
      if (redelivered || lastDelivery < 0 || deliverySequence !== lastDelivery + 1)
        run = `${o.shard}.${++runs}`;
      lastDelivery = redelivered ? -1 : deliverySequence;
      const d = deliveryOf(msg, redelivered ? undefined : run);
      if (o.lag) o.lag(o.shard, Math.max(0, Date.now() - msg.info.timestampNanos / 1e6) / 1000);
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
  };

  let wake: (() => void) | undefined;
  const pause = (ms: number) =>
    new Promise<void>((ok) => {
      const t = setTimeout(ok, ms);
      wake = () => {
        clearTimeout(t);
        ok();
      };
    });

  current = await open();
  const loop = (async () => {
    let backoff = RESTART_MIN_MS;
    for (;;) {
      let err: unknown;
      try {
        if (current) await drain(current);
      } catch (e) {
        err = e;
      }
      current = undefined;
      if (stopped) return;
      pinId = undefined;
      o.logger.error(
        { err, shard: o.shard, restarts },
        'shard consumer stopped on its own; restarting it',
      );
      for (;;) {
        await pause(backoff);
        if (stopped) return;
        backoff = Math.min(RESTART_MAX_MS, backoff * 2);
        try {
          await o.repair?.();
          current = await open();
          restarts++;
          break;
        } catch (e) {
          o.logger.warn({ err: e, shard: o.shard }, 'shard consumer restart failed; will retry');
        }
      }
      backoff = RESTART_MIN_MS;
    }
  })();

  return {
    shard: o.shard,
    get pinId() {
      return pinId;
    },
    get restarts() {
      return restarts;
    },
    async claim(engineId: string) {
      await o.js.publish(
        o.names.subjects.shardInbox(o.shard, 'claim', engineId, 'claim'),
        new Uint8Array(),
      );
    },
    async stop(graceMs?: number) {
      stopped = true;
      current?.stop();
      wake?.();
      await loop.catch(() => undefined);
      const all = Promise.allSettled([...inflight]).then(() => undefined);
      if (graceMs === undefined) return all;
      let t: NodeJS.Timeout | undefined;
      await Promise.race([all, new Promise<void>((ok) => (t = setTimeout(ok, graceMs)))]);
      clearTimeout(t);
    },
  };
}

/** The server's current pin id of every shard consumer (one paged API call). */
export async function serverPins(
  jsm: JetStreamManager,
  names: TopologyNames,
): Promise<Map<number, string | undefined>> {
  const out = new Map<number, string | undefined>();
  const lister = jsm.consumers.list(names.inboxStream);
  for await (const ci of lister) {
    const m = /^shard-(\d+)$/.exec(ci.name);
    if (m) out.set(Number(m[1]), pinnedClientOf(ci));
  }
  return out;
}

function deliveryOf(msg: JsMsg, run: string | undefined): InboxDelivery | undefined {
  const e = entryOf(msg.subject, msg.seq, msg.data, msg.headers);
  if (!e) return undefined;
  return {
    ...e,
    ...(run !== undefined ? { run } : {}),
    ack: () => {
      msg.ack();
      return Promise.resolve();
    },
    working: () => msg.working(),
    nak: (delayMs: number) => msg.nak(delayMs),
  };
}
