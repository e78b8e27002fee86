/**
 * Triggers, the NATS part: the durable consumer of a trigger on the user's stream, the parking
 * lot (`<PREFIX>_PARKED`), the ledger (`<PREFIX>_TRIGGERS`), the status bucket, and forwarding a
 * mapped message into a workflow's inbox with a JetStream ack and the step's reply.
 */
import {
  AckPolicy,
  DeliverPolicy,
  type ConsumerConfig,
  type ConsumerInfo,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type StoredMsg,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import {
  headers,
  nuid,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
import { decodeBody, pack, unpack } from '../contracts/codec.js';
import { Header, type InboxMessage, type TriggerOrigin } from '../contracts/wire.js';
import {
  triggerConsumerName,
  type DeliverFrom,
  type Mapped,
  type TriggerError,
  type TriggerLedgerEntry,
  type TriggerMessage,
  type TriggerSpec,
  type TriggerStatus,
} from '../engine/triggers.js';
import type { ErrorData } from '../errors.js';
import { ErrorCode, TerminalError } from '../errors.js';
import type { TopologyNames } from './topology.js';

const ms = (n: number) => n * 1_000_000;
const dec = new TextDecoder();

/** The priority group of every trigger consumer: the server pins one engine per trigger. */
export const TRIGGERS_GROUP = 'jetflow';

/** A message of a stream, a stored message or a core-NATS message, as a mapping sees it. */
export function triggerMessageOf(m: {
  subject: string;
  seq?: number;
  data: Uint8Array;
  headers?: MsgHdrs;
  header?: MsgHdrs;
}): TriggerMessage {
  const h = m.headers ?? m.header;
  return {
    subject: m.subject,
    seq: m.seq ?? 0,
    data: m.data,
    header: (name) => h?.get(name) || undefined,
    headers: () => headersOf(h),
    text: () => dec.decode(m.data),
    json: <T>() => JSON.parse(dec.decode(m.data)) as T,
  };
}

function headersOf(h: MsgHdrs | undefined): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  if (!h) return out;
  for (const k of h.keys()) out[k] = h.values(k);
  return out;
}

function consumerConfig(
  spec: TriggerSpec,
  o: { ackWaitMs: number; pinTimeoutMs: number },
  from: DeliverFrom,
): Partial<ConsumerConfig> {
  const start: Partial<ConsumerConfig> =
    from === 'all'
      ? { deliver_policy: DeliverPolicy.All }
      : from === 'new'
        ? { deliver_policy: DeliverPolicy.New }
        : 'seq' in from
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: from.seq }
          : {
              deliver_policy: DeliverPolicy.StartTime,
              opt_start_time: new Date(from.time).toISOString(),
            };
  return {
    durable_name: triggerConsumerName(spec.name),
    description: `jetflow trigger ${spec.name} (workflow ${spec.workflowType}, ${spec.kind})`,
    filter_subject: spec.subject,
    ack_policy: AckPolicy.Explicit,
    ...start,
    ack_wait: ms(o.ackWaitMs),
    max_ack_pending: spec.window,
    max_deliver: -1,
    // One engine at a time per trigger, chosen and moved by the server.
    priority_groups: [TRIGGERS_GROUP],
    priority_policy: 'pinned_client',
    priority_timeout: ms(o.pinTimeoutMs),
  };
}

function isNotFound(err: unknown): boolean {
  return err instanceof Error && /not found/i.test(err.message);
}

/**
 * Create the trigger's consumer when it is missing (starting at `deliverFrom`), or bring the
 * settings of an existing one in line (it keeps its place in the stream). The stream is the
 * user's: a missing stream is a configuration error, never created here.
 */
export async function ensureTriggerConsumer(
  jsm: JetStreamManager,
  spec: TriggerSpec,
  o: { ackWaitMs: number; pinTimeoutMs: number },
): Promise<void> {
  const stream = spec.stream!;
  await jsm.streams.info(stream).catch((err: unknown) => {
    throw new TerminalError(
      isNotFound(err)
        ? `trigger ${spec.name}: stream ${stream} does not exist (jetflow never creates a trigger's stream)`
        : `trigger ${spec.name}: cannot read stream ${stream}: ${String((err as Error)?.message ?? err)}`,
      { code: ErrorCode.Topology, cause: err },
    );
  });
  const name = triggerConsumerName(spec.name);
  const existing = await jsm.consumers.info(stream, name).catch(() => undefined);
  const cfg = consumerConfig(spec, o, spec.deliverFrom);
  if (!existing) {
    await jsm.consumers.add(stream, cfg);
    return;
  }
  await jsm.consumers.update(stream, name, {
    ack_wait: cfg.ack_wait,
    max_ack_pending: cfg.max_ack_pending,
    description: cfg.description,
    priority_timeout: (cfg as { priority_timeout?: number }).priority_timeout,
  });
}

/** Delete and re-create the consumer so that it delivers again from `from` (a rewind). */
export async function rewindTriggerConsumer(
  jsm: JetStreamManager,
  spec: TriggerSpec,
  o: { ackWaitMs: number; pinTimeoutMs: number },
  from: { seq: number } | { time: number },
): Promise<void> {
  const name = triggerConsumerName(spec.name);
  await jsm.consumers.delete(spec.stream!, name).catch((err: unknown) => {
    if (!isNotFound(err)) throw err;
  });
  await jsm.consumers.add(
    spec.stream!,
    consumerConfig(spec, o, 'seq' in from ? { seq: from.seq } : { time: new Date(from.time) }),
  );
}

export async function triggerConsumerInfo(
  jsm: JetStreamManager,
  spec: TriggerSpec,
): Promise<ConsumerInfo | undefined> {
  if (!spec.stream) return undefined;
  return jsm.consumers.info(spec.stream, triggerConsumerName(spec.name)).catch(() => undefined);
}

/** The status bucket: one key per trigger, written by its holder. */
export async function openTriggersBucket(
  nc: NatsConnection,
  names: TopologyNames,
  replicas: number,
): Promise<KV> {
  return new Kvm(nc).create(names.triggersBucket, { history: 1, replicas });
}

/** A parked message as the parking lot keeps it. */
export interface ParkedMessage {
  trigger: string;
  /** Its sequence in the trigger's stream. */
  seq: number;
  /** Its sequence in the parking lot. */
  parkedSeq: number;
  subject: string;
  key?: string;
  error: TriggerError;
  at: number;
  headers: Record<string, string[]>;
  data: Uint8Array;
}

interface ParkedBody {
  trigger: string;
  seq: number;
  subject: string;
  key?: string;
  error: TriggerError;
  at: number;
  headers: Record<string, string[]>;
  data: Uint8Array;
}

const parkedSubject = (prefix: string, name: string, seq: number) =>
  `${prefix}.parked.${name}.${seq}`;
const ledgerSubject = (prefix: string, name: string, seq: number) =>
  `${prefix}.tledger.${name}.${seq}`;

/** Read every message on `filter` of `stream` in order, one direct request each. */
async function* readAll(
  jsm: JetStreamManager,
  stream: string,
  filter: string,
): AsyncGenerator<StoredMsg> {
  let from = 1;
  for (;;) {
    let m: StoredMsg | null;
    try {
      m = await jsm.streams.getMessage(stream, {
        seq: from,
        next_by_subj: filter,
      } as unknown as { seq: number });
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    if (!m) return;
    yield m;
    from = m.seq + 1;
  }
}

/** The parking lot and the ledger. */
export function createTriggerStore(
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
) {
  const prefix = names.subjects.prefix;
  return {
    /** Park a message (with its original subject, headers, body, sequence and error). */
    async park(
      trigger: string,
      m: { subject: string; seq: number; data: Uint8Array; headers: Record<string, string[]> },
      error: TriggerError,
      key: string | undefined,
      at: number,
    ): Promise<number> {
      const body: ParkedBody = {
        trigger,
        seq: m.seq,
        subject: m.subject,
        ...(key !== undefined ? { key } : {}),
        error,
        at,
        headers: m.headers,
        data: m.data,
      };
      const ack = await js.publish(parkedSubject(prefix, trigger, m.seq), pack(body));
      return ack.seq;
    },
    /** Every parked message of a trigger, in the order it was parked. */
    async parked(trigger: string): Promise<ParkedMessage[]> {
      const out: ParkedMessage[] = [];
      for await (const m of readAll(jsm, names.parkedStream, `${prefix}.parked.${trigger}.>`)) {
        const b = unpack(m.data) as ParkedBody;
        out.push({ ...b, parkedSeq: m.seq, data: new Uint8Array(b.data) });
      }
      return out;
    },
    async unpark(parkedSeq: number): Promise<void> {
      await jsm.streams.deleteMessage(names.parkedStream, parkedSeq, false);
    },
    async parkedCount(trigger: string): Promise<number> {
      const si = await jsm.streams.info(names.parkedStream, {
        subjects_filter: `${prefix}.parked.${trigger}.>`,
      });
      return Object.values(si.state.subjects ?? {}).reduce((a, b) => a + b, 0);
    },
    async ledger(e: TriggerLedgerEntry): Promise<void> {
      await js.publish(ledgerSubject(prefix, e.trigger, e.seq), pack(e));
    },
    /** Every ledger entry of one message, oldest first. */
    async trace(trigger: string, seq: number): Promise<TriggerLedgerEntry[]> {
      const out: TriggerLedgerEntry[] = [];
      for await (const m of readAll(jsm, names.ledgerStream, ledgerSubject(prefix, trigger, seq)))
        out.push(unpack(m.data) as TriggerLedgerEntry);
      return out;
    },
  };
}
export type TriggerStore = ReturnType<typeof createTriggerStore>;

/** The stored form of a message, for parking. */
export function storedForm(m: {
  subject: string;
  seq: number;
  data: Uint8Array;
  headers?: MsgHdrs;
}): { subject: string; seq: number; data: Uint8Array; headers: Record<string, string[]> } {
  return { subject: m.subject, seq: m.seq, data: m.data, headers: headersOf(m.headers) };
}

/** A parked message as a mapping sees it again (replay). */
export function triggerMessageOfParked(p: ParkedMessage): TriggerMessage {
  return {
    subject: p.subject,
    seq: p.seq,
    data: p.data,
    header: (name) => {
      const k = Object.keys(p.headers).find((x) => x.toLowerCase() === name.toLowerCase());
      return k ? p.headers[k]?.[0] : undefined;
    },
    headers: () => p.headers,
    text: () => dec.decode(p.data),
    json: <T>() => JSON.parse(dec.decode(p.data)) as T,
  };
}

/** What a forward got back. */
export type ForwardResult =
  /** The inbox already had this message id (the server's dedup): applied or being applied. */
  | { pubDuplicate: true }
  /** The step's reply (an error reply has `error`). */
  | { reply: { error?: ErrorData; created?: unknown; duplicate?: unknown } }
  /** Stored in the inbox; the step did not answer within the timeout. */
  | { noReply: true };

/**
 * Writes mapped messages into workflows' inboxes, each with a JetStream ack (the inbox has it)
 * and then waits for the step's reply (on one subscription per forwarder).
 */
export class Forwarder {
  private readonly sub: Subscription;
  private readonly base = `_INBOX.jft.${nuid.next()}`;
  private readonly waiting = new Map<string, (r: ForwardResult) => void>();
  private n = 0;

  constructor(
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly names: TopologyNames,
  ) {
    this.sub = nc.subscribe(`${this.base}.*`, {
      callback: (err, m) => {
        if (err) return;
        const token = m.subject.slice(this.base.length + 1);
        const done = this.waiting.get(token);
        if (!done) return;
        let body: unknown;
        try {
          body = decodeBody(m.data, 'msgpack');
        } catch {
          body = undefined;
        }
        done({ reply: body ?? {} });
      },
    });
  }

  async forward(
    workflowType: string,
    mapped: Exclude<Mapped, { kind: 'poison' }>,
    origin: TriggerOrigin,
    msgId: string,
    timeoutMs: number,
    /** A signal deduplicated by the record's message ids instead of the watermark (a replay). */
    recordMsgId?: string,
  ): Promise<ForwardResult> {
    const token = String(++this.n);
    const h = headers();
    h.set(Header.ReplyTo, `${this.base}.${token}`);
    h.set(Header.ReplyEncoding, 'application/msgpack');
    const body: InboxMessage =
      mapped.kind === 'start'
        ? { kind: 'start', input: mapped.input, trigger: origin }
        : {
            kind: 'signal',
            event: mapped.event,
            trigger: origin,
            ...(recordMsgId !== undefined ? { msgId: recordMsgId } : {}),
          };
    let timer: NodeJS.Timeout | undefined;
    const answered = new Promise<ForwardResult>((ok) => {
      this.waiting.set(token, ok);
    });
    try {
      const ack = await this.js.publish(
        this.names.subjects.inbox(mapped.kind, workflowType, mapped.id),
        pack(body),
        { msgID: msgId, headers: h },
      );
      if (ack.duplicate) return { pubDuplicate: true };
      return await Promise.race([
        answered,
        new Promise<ForwardResult>(
          (ok) => (timer = setTimeout(() => ok({ noReply: true }), timeoutMs)),
        ),
      ]);
    } finally {
      clearTimeout(timer);
      this.waiting.delete(token);
    }
  }

  close(): void {
    this.sub.unsubscribe();
  }
}

/** Publish a status report of a held trigger. */
export async function putTriggerStatus(kv: KV, s: TriggerStatus): Promise<void> {
  await kv.put(s.trigger, JSON.stringify(s));
}

export async function readTriggerStatus(kv: KV, name: string): Promise<TriggerStatus | undefined> {
  const e = await kv.get(name).catch(() => null);
  if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
  return e.json<TriggerStatus>();
}

/** Read the stream range (fromSeq..toSeq] of a trigger's filter (catch-up after a pin move). */
export async function* readTriggerRange(
  jsm: JetStreamManager,
  spec: TriggerSpec,
  fromSeq: number,
  toSeq: number,
): AsyncGenerator<StoredMsg> {
  let from = fromSeq + 1;
  while (from <= toSeq) {
    let m: StoredMsg | null;
    try {
      m = await jsm.streams.getMessage(spec.stream!, {
        seq: from,
        next_by_subj: spec.subject,
      } as unknown as { seq: number });
    } catch (err) {
      if (isNotFound(err)) return;
      throw err;
    }
    if (!m || m.seq > toSeq) return;
    yield m;
    from = m.seq + 1;
  }
}

export type { JsMsg };
