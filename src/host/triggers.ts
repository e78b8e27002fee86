/**
 * The trigger role of an engine: holds the triggers assigned to it and forwards their messages
 * into workflows' inboxes, exactly once per stream message.
 *
 * - **Holding**: every engine advertises the triggers its registry declares; the holder of a
 *   trigger is the live engine ranking highest for it (rendezvous hashing, like shards). The
 *   trigger's durable consumer `jetflow-trigger-<name>` is a `pinned_client` priority group, so
 *   the server delivers to one engine at a time while the holder changes.
 * - **Order**: one lane per workflow id: a key's messages are forwarded one at a time in stream
 *   order; different keys in parallel, at most the consumer's MaxAckPending (`window`) in flight.
 *   When the pin moves (a new holder, a server restart), the new holder first forwards again,
 *   in stream order, every message between the consumer's ack floor and its last delivered
 *   sequence (those the old holder may have left unacknowledged), so no later message of a key
 *   overtakes an earlier one that is redelivered only after its AckWait.
 * - **Exactly once**: a forward is a JetStream publish into the inbox (acked) carrying the
 *   trigger and the stream sequence; the message is acknowledged only after that, and after the
 *   step's answer. A start is idempotent on the workflow id; a signal is applied only above the
 *   record's `trigger/<name>` watermark. A redelivery, a catch-up or a rewind is a duplicate.
 * - **Poison**: parked to `<PREFIX>_PARKED` and acknowledged; `park-key` parks the key's later
 *   messages behind it.
 */
import {
  headers,
  nuid,
  type Msg,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node';
import type {
  ConsumerMessages,
  JetStreamClient,
  JetStreamManager,
  JsMsg,
} from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { Logger } from '../engine/ports.js';
import type { Registry } from '../engine/registry.js';
import {
  mapTriggerMessage,
  triggerSpecs,
  verdictOf,
  type Mapped,
  type RewindReply,
  type TriggerError,
  type TriggerLedgerEntry,
  type TriggerMessage,
  type TriggerOutcome,
  type TriggerRow,
  type TriggerSpec,
} from '../engine/triggers.js';
import { decodeBody, encodeBody } from '../contracts/codec.js';
import { Header } from '../contracts/wire.js';
import {
  BadRequestError,
  ErrorCode,
  JetflowError,
  RetryableError,
  toErrorData,
} from '../errors.js';
import {
  createTriggerStore,
  ensureTriggerConsumer,
  Forwarder,
  putTriggerStatus,
  readTriggerRange,
  rewindTriggerConsumer,
  triggerMessageOf,
  triggerMessageOfParked,
  TRIGGERS_GROUP,
  type ParkedMessage,
  type TriggerStore,
} from '../nats/triggers.js';
import { triggerHolder, type Member } from '../nats/membership.js';
import { pinTimeoutMs, pullExpiryMs, type TopologyNames } from '../nats/topology.js';
import { parseTriggerRequest, triggerConsumerName } from '../engine/triggers.js';

export interface TriggerRoleOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  names: TopologyNames;
  registry: Registry;
  logger: Logger;
  engineName: string;
  engineId: string;
  members: () => Member[];
  failoverMs: number;
  ackWaitMs: number;
  maxInputBytes: number;
  statusKv: KV;
  /** How long a forward waits for the step's answer before it counts as `forwarded`. */
  replyTimeoutMs?: number;
}

const emptyCounts = (): Record<TriggerOutcome, number> => ({
  started: 0,
  signaled: 0,
  duplicate: 0,
  parked: 0,
  skipped: 0,
  forwarded: 0,
});

/** The triggers this engine holds, kept in step with the membership. */
export class TriggerRole {
  readonly specs: TriggerSpec[];
  private readonly held = new Map<string, TriggerRunner>();
  private readonly releasing = new Set<Promise<void>>();
  private readonly failedAt = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private stopped = false;
  readonly store: TriggerStore;
  private readonly forwarder: Forwarder;

  constructor(private readonly o: TriggerRoleOptions) {
    // A webhook trigger consumes jetflow's hooks stream, on its own subject.
    this.specs = triggerSpecs(o.registry.all()).map((s) =>
      s.webhook ? { ...s, stream: o.names.hooksStream, subject: o.names.hookSubject(s.name) } : s,
    );
    this.store = createTriggerStore(o.js, o.jsm, o.names);
    this.forwarder = new Forwarder(o.nc, o.js, o.names);
  }

  /** Names this engine can hold (advertised on its heartbeat). */
  get declared(): string[] {
    return this.specs.map((s) => s.name);
  }

  get heldNames(): string[] {
    return [...this.held.keys()].sort();
  }

  /** Tell `jetflow http` how to check each webhook trigger's requests (no secret: its name). */
  async publishWebhooks(): Promise<void> {
    for (const s of this.specs)
      if (s.webhook) await this.o.statusKv.put(`webhook.${s.name}`, JSON.stringify(s.webhook));
  }

  start(): void {
    if (this.specs.length === 0) return;
    const every = Math.max(100, Math.floor(this.o.failoverMs / 10));
    this.timer = setInterval(() => void this.tick(), every);
    void this.tick();
  }

  private async tick(): Promise<void> {
    if (this.busy || this.stopped) return;
    this.busy = true;
    try {
      const live = this.o.members().filter((m) => m.live);
      for (const spec of this.specs) {
        const mine = triggerHolder(live, spec.name) === this.o.engineId;
        const runner = this.held.get(spec.name);
        if (mine && !runner) {
          // A trigger that could not be held (its stream is missing) is tried again every 5 s.
          if (Date.now() - (this.failedAt.get(spec.name) ?? 0) < 5_000) continue;
          const r = new TriggerRunner(spec, this.o, this.store, this.forwarder);
          this.held.set(spec.name, r);
          try {
            await r.start();
            this.o.logger.info({ trigger: spec.name }, 'trigger held');
          } catch (err) {
            this.held.delete(spec.name);
            this.failedAt.set(spec.name, Date.now());
            await r.stop(0).catch(() => undefined);
            this.o.logger.error({ err, trigger: spec.name }, 'cannot hold trigger');
          }
        } else if (!mine && runner) {
          this.held.delete(spec.name);
          this.release(runner);
        }
      }
    } finally {
      this.busy = false;
    }
  }

  private release(r: TriggerRunner): void {
    const p = r
      .stop(Math.floor(this.o.failoverMs / 2))
      .catch((err: unknown) => this.o.logger.warn({ err }, 'trigger release failed'));
    this.releasing.add(p);
    void p.finally(() => this.releasing.delete(p));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    for (const r of this.held.values()) this.release(r);
    this.held.clear();
    await Promise.allSettled([...this.releasing]);
    this.forwarder.close();
  }
}

type Job = () => Promise<void>;

/** One held trigger: its consumer (or core subscription), lanes, parked keys and admin verbs. */
export class TriggerRunner {
  private messages: ConsumerMessages | undefined;
  private coreSub: Subscription | undefined;
  private adminSub: Subscription | undefined;
  private loop: Promise<void> | undefined;
  private stopped = false;
  private readonly lanes = new Map<string, Promise<void>>();
  private readonly inflight = new Set<Promise<void>>();
  /** Parked keys (park-key): key → original sequences parked, in order. */
  private readonly parkedKeys = new Map<string, number[]>();
  /** Original sequences parked (a redelivery of one is acknowledged, not parked twice). */
  private readonly parkedSeqs = new Set<number>();
  private lastPin: string | undefined;
  private readonly counts = emptyCounts();
  private lastError: (TriggerError & { seq: number; at: number }) | undefined;
  private statusTimer: NodeJS.Timeout | undefined;
  private lastReport = { at: Date.now(), total: 0 };
  private rewind: RewindSession | undefined;
  /** Held while a rewind re-creates the consumer: consumption is suspended. */
  private suspended = false;
  private readonly ackWaitMs: number;
  private readonly replyTimeoutMs: number;

  constructor(
    readonly spec: TriggerSpec,
    private readonly o: TriggerRoleOptions,
    private readonly store: TriggerStore,
    private readonly forwarder: Forwarder,
  ) {
    this.ackWaitMs = o.ackWaitMs;
    this.replyTimeoutMs = o.replyTimeoutMs ?? Math.max(30_000, 2 * o.failoverMs);
  }

  private get consumerOpts() {
    return { ackWaitMs: this.ackWaitMs, pinTimeoutMs: pinTimeoutMs(this.o.failoverMs) };
  }

  async start(): Promise<void> {
    const { spec, o } = this;
    if (spec.stream) await ensureTriggerConsumer(o.jsm, spec, this.consumerOpts);
    for (const p of await this.store.parked(spec.name)) this.noteParked(p.seq, p.key);
    this.adminSub = o.nc.subscribe(o.names.subjects.triggerHeld('*', spec.name), {
      queue: `${o.names.subjects.prefix}-trigger-${spec.name}`,
      callback: (err, m) => {
        if (!err) void this.admin(m);
      },
    });
    if (spec.stream) await this.consume();
    else
      this.coreSub = o.nc.subscribe(spec.subject, {
        callback: (err, m) => {
          if (!err) this.dispatch(triggerMessageOf(m), undefined, 'core');
        },
      });
    this.statusTimer = setInterval(() => void this.report(), 2_000);
  }

  private async consume(): Promise<void> {
    const { spec, o } = this;
    const consumer = await o.js.consumers.get(spec.stream!, triggerConsumerName(spec.name));
    const messages = await consumer.consume({
      max_messages: Math.min(spec.window, 256),
      expires: pullExpiryMs(o.failoverMs),
      group: TRIGGERS_GROUP,
      abort_on_missing_resource: true,
    });
    this.messages = messages;
    this.loop = (async () => {
      for await (const m of messages) {
        const pin = m.headers?.get('Nats-Pin-Id') || undefined;
        if (pin !== this.lastPin) {
          this.lastPin = pin;
          await this.catchUp(m.seq).catch((err: unknown) =>
            o.logger.warn({ err, trigger: spec.name }, 'trigger catch-up failed'),
          );
        }
        this.dispatch(triggerMessageOf(m), m, 'live');
      }
    })()
      .catch((err: unknown) => o.logger.warn({ err, trigger: spec.name }, 'trigger consumer ended'))
      .finally(() => {
        // Ended on its own (consumer deleted, connection closed): consume again.
        if (!this.stopped && !this.suspended && this.messages === messages)
          setTimeout(() => {
            if (!this.stopped && !this.suspended && this.messages === messages) void this.restart();
          }, 500);
      });
  }

  private async restart(): Promise<void> {
    try {
      this.lastPin = undefined;
      if (this.spec.stream) await ensureTriggerConsumer(this.o.jsm, this.spec, this.consumerOpts);
      await this.consume();
    } catch (err) {
      this.o.logger.warn({ err, trigger: this.spec.name }, 'trigger consumer restart failed');
      if (!this.stopped)
        setTimeout(() => {
          if (!this.stopped && !this.suspended) void this.restart();
        }, 1_000);
    }
  }

  /**
   * The pin moved to this engine: forward again, in stream order, every message the previous
   * holder may have left unacknowledged (ack floor .. last delivered), before anything newer.
   */
  private async catchUp(firstSeq: number): Promise<void> {
    const info = await this.o.jsm.consumers.info(
      this.spec.stream!,
      triggerConsumerName(this.spec.name),
    );
    const floor = info.ack_floor.stream_seq;
    const delivered = info.delivered.stream_seq;
    let n = 0;
    for await (const sm of readTriggerRange(this.o.jsm, this.spec, floor, delivered)) {
      if (sm.seq >= firstSeq) break;
      this.dispatch(triggerMessageOf({ ...sm, headers: sm.header }), undefined, 'catch-up');
      n++;
    }
    if (n > 0)
      this.o.logger.info(
        { trigger: this.spec.name, from: floor + 1, to: firstSeq - 1, messages: n },
        'trigger pinned here: forwarding unacknowledged messages again first',
      );
  }

  /** Queue one message on its key's lane. `m`: the delivery to acknowledge (absent: none). */
  private dispatch(tm: TriggerMessage, m: JsMsg | undefined, via: 'live' | 'core' | 'catch-up') {
    const mapped = mapTriggerMessage(this.spec, tm, this.o.maxInputBytes);
    const key = mapped.id ?? `\u0000seq-${tm.seq}-${nuid.next()}`;
    void this.enqueue(key, () => this.handle(tm, mapped, m, via));
  }

  private enqueue(key: string, job: Job): Promise<void> {
    const prev = this.lanes.get(key) ?? Promise.resolve();
    const p = prev.then(job).catch((err: unknown) => {
      this.o.logger.error({ err, trigger: this.spec.name, key }, 'trigger lane failed');
    });
    this.lanes.set(key, p);
    this.inflight.add(p);
    void p.finally(() => {
      this.inflight.delete(p);
      if (this.lanes.get(key) === p) this.lanes.delete(key);
    });
    return p;
  }

  private noteParked(seq: number, key: string | undefined): void {
    this.parkedSeqs.add(seq);
    if (key !== undefined && this.spec.onPoison === 'park-key') {
      const list = this.parkedKeys.get(key) ?? [];
      if (!list.includes(seq)) list.push(seq);
      list.sort((a, b) => a - b);
      this.parkedKeys.set(key, list);
    }
  }

  private forgetParked(seq: number, key: string | undefined): void {
    this.parkedSeqs.delete(seq);
    if (key === undefined) return;
    const list = (this.parkedKeys.get(key) ?? []).filter((s) => s !== seq);
    if (list.length === 0) this.parkedKeys.delete(key);
    else this.parkedKeys.set(key, list);
  }

  private async handle(
    tm: TriggerMessage,
    mapped: Mapped,
    m: JsMsg | undefined,
    via: 'live' | 'core' | 'catch-up',
  ): Promise<void> {
    if (this.stopped) return; // left unacknowledged: the next holder gets it
    const id = mapped.id;
    const isStream = tm.seq > 0;
    if (isStream && this.parkedSeqs.has(tm.seq)) {
      // Parked already (a redelivery, a catch-up, a rewind): it waits in the parking lot.
      await this.count(tm, 'duplicate', id, undefined, via);
      m?.ack();
      return;
    }
    if (mapped.kind === 'poison') {
      await this.park(tm, mapped.error, id, via);
      m?.ack();
      return;
    }
    const head = id !== undefined ? this.parkedKeys.get(id)?.[0] : undefined;
    if (head !== undefined && isStream && tm.seq > head) {
      await this.park(
        tm,
        { code: 'parked_key', message: `behind parked message ${head} of key ${id}` },
        id,
        via,
      );
      m?.ack();
      return;
    }
    const outcome = await this.forward(tm, mapped, false);
    if (outcome === undefined) return; // stopped: not acknowledged
    if ('error' in outcome) {
      await this.park(tm, outcome.error, id, via);
    } else {
      await this.count(tm, outcome.outcome, id, undefined, via);
    }
    m?.ack();
  }

  /** Forward until answered (a retryable refusal waits and tries again); undefined if stopped. */
  private async forward(
    tm: TriggerMessage,
    mapped: Exclude<Mapped, { kind: 'poison' }>,
    replay: boolean,
  ): Promise<{ outcome: TriggerOutcome } | { error: TriggerError } | undefined> {
    const { spec } = this;
    const isStream = tm.seq > 0;
    const byMsgId = replay && (spec.kind === 'start' || spec.onPoison === 'park-message');
    const origin = {
      name: spec.name,
      seq: tm.seq,
      ...(byMsgId ? { replay: true as const } : {}),
    };
    let pause = 250;
    // A core message has no sequence: one id for its forwards, so that a retry after a lost
    // reply is recognised as a repeat (not applied twice); a new one after a refusal.
    let coreId = isStream ? '' : nuid.next();
    // The inbox's dedup only says the id was stored, not that the step applied it: a copy the
    // step refused (retryable) would hide the retry. After a refusal, or when the server calls
    // the first copy a duplicate (a previous holder may have had it refused before it died),
    // the message is forwarded under a fresh id and the record decides: a start is idempotent
    // on the workflow id, a signal at or below the key's trigger watermark (or, replayed, with a
    // remembered msg id) is a duplicate.
    let fresh = false;
    // A webhook request the sender delivers again after the hooks stream's dedup window is a
    // new stream message: the record remembers the request's id (the last 64 per workflow).
    const hookId = spec.webhook ? tm.header('Nats-Msg-Id') : undefined;
    for (;;) {
      if (this.stopped) return undefined;
      const msgId = isStream
        ? replay || fresh
          ? `jf-trigger.${spec.name}.${tm.seq}.r.${nuid.next()}`
          : `jf-trigger.${spec.name}.${tm.seq}`
        : `jf-trigger.${spec.name}.core.${coreId}`;
      try {
        const r = await this.forwarder.forward(
          spec.workflowType,
          mapped,
          origin,
          msgId,
          this.replyTimeoutMs,
          mapped.kind !== 'signal'
            ? undefined
            : hookId !== undefined
              ? `hook/${hookId}`
              : byMsgId
                ? `trigger/${spec.name}/${tm.seq}`
                : undefined,
        );
        if ('pubDuplicate' in r) {
          if (!isStream || fresh) return { outcome: 'duplicate' };
          fresh = true;
          continue;
        }
        if ('noReply' in r) return { outcome: 'forwarded' };
        const v = verdictOf(spec.kind, r.reply);
        if ('retry' in v) {
          this.noteError(tm.seq, v.retry);
          fresh = true;
          coreId = isStream ? '' : nuid.next();
        } else if (v.outcome === 'parked') {
          return { error: v.error };
        } else {
          return { outcome: v.outcome };
        }
      } catch (err) {
        this.noteError(tm.seq, {
          code: 'unavailable',
          message: String((err as Error)?.message ?? err),
        });
      }
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(5_000, pause * 2);
    }
  }

  private noteError(seq: number, e: TriggerError): void {
    this.lastError = { ...e, seq, at: Date.now() };
  }

  private async park(
    tm: TriggerMessage,
    error: TriggerError,
    id: string | undefined,
    via: 'live' | 'core' | 'catch-up' | 'replay',
  ): Promise<void> {
    const { spec } = this;
    // An operator skipped it before (a rewind or catch-up reads it again): it stays skipped.
    const skipped = tm.seq > 0 ? await this.skippedBefore(tm.seq) : undefined;
    if (skipped) {
      await this.count(tm, 'skipped', id, error, via === 'replay' ? 'catch-up' : via, skipped);
      return;
    }
    const form = { subject: tm.subject, seq: tm.seq, data: tm.data, headers: tm.headers() };
    for (;;) {
      try {
        await this.store.park(spec.name, form, error, id, Date.now());
        break;
      } catch (err) {
        if (this.stopped) throw err;
        this.o.logger.warn({ err, trigger: spec.name }, 'cannot park a message yet; retrying');
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
    if (tm.seq > 0) this.noteParked(tm.seq, id);
    this.noteError(tm.seq, error);
    await this.count(tm, 'parked', id, error, via === 'replay' ? 'catch-up' : via);
  }

  /** The skip of message `seq` (who and why), when an operator skipped it. */
  private async skippedBefore(seq: number): Promise<{ by: string; reason: string } | undefined> {
    for (;;) {
      try {
        const e = await this.o.statusKv.get(skipKey(this.spec.name, seq));
        if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
        return e.json<{ by: string; reason: string }>();
      } catch (err) {
        if (this.stopped) throw err;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  private count(
    tm: TriggerMessage,
    outcome: TriggerOutcome,
    id: string | undefined,
    error: TriggerError | undefined,
    via: 'live' | 'core' | 'catch-up' | 'replay' | 'rewind',
    extra: { by?: string; reason?: string } = {},
  ): Promise<void> {
    this.counts[outcome]++;
    const r = this.rewind;
    if (r && tm.seq >= r.from && tm.seq <= r.to && !r.seen.has(tm.seq)) {
      r.seen.add(tm.seq);
      if (outcome === 'started' || outcome === 'signaled') r.new++;
      else if (outcome === 'duplicate') r.duplicates++;
      else if (outcome === 'parked') r.parked++;
      else if (outcome === 'skipped') r.skipped++;
    }
    if (tm.seq === 0) return Promise.resolve();
    const entry: TriggerLedgerEntry = {
      trigger: this.spec.name,
      seq: tm.seq,
      at: Date.now(),
      outcome,
      workflowType: this.spec.workflowType,
      ...(id !== undefined ? { id } : {}),
      subject: tm.subject,
      engine: this.o.engineName,
      ...(error ? { error } : {}),
      ...extra,
      ...(via === 'catch-up' || via === 'replay' || via === 'rewind'
        ? { via }
        : r && tm.seq <= r.to
          ? { via: 'rewind' as const }
          : {}),
    };
    // Written before the message is acknowledged; a failure to write it is logged, not retried
    // (the message's effect is already decided).
    return this.store
      .ledger(entry)
      .catch((err: unknown) => this.o.logger.warn({ err }, 'ledger entry not written'));
  }

  private async report(): Promise<void> {
    const total = Object.values(this.counts).reduce((a, b) => a + b, 0);
    const now = Date.now();
    const rate = ((total - this.lastReport.total) * 1000) / Math.max(1, now - this.lastReport.at);
    this.lastReport = { at: now, total };
    await putTriggerStatus(this.o.statusKv, {
      trigger: this.spec.name,
      engine: this.o.engineName,
      engineId: this.o.engineId,
      at: now,
      counts: { ...this.counts },
      rate: Math.round(rate * 10) / 10,
      ...(this.lastError ? { lastError: this.lastError } : {}),
    }).catch(() => undefined);
  }

  /** Stop consuming, finish in-flight forwards (at most `graceMs`), unpin. */
  async stop(graceMs: number): Promise<void> {
    this.stopped = true;
    clearInterval(this.statusTimer);
    this.adminSub?.unsubscribe();
    this.coreSub?.unsubscribe();
    this.messages?.stop();
    await this.loop?.catch(() => undefined);
    await this.idle(graceMs);
    await this.report();
    if (this.spec.stream) {
      // Our pull requests stay registered until they expire; then hand the pin on at once.
      await new Promise((r) => setTimeout(r, pullExpiryMs(this.o.failoverMs) + 250));
      await this.o.jsm.consumers
        .unpin(this.spec.stream, triggerConsumerName(this.spec.name), TRIGGERS_GROUP)
        .catch(() => undefined);
    }
  }

  private async idle(graceMs: number): Promise<void> {
    let t: NodeJS.Timeout | undefined;
    const all = (async () => {
      while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    })();
    await Promise.race([all, new Promise<void>((ok) => (t = setTimeout(ok, graceMs)))]);
    clearTimeout(t);
  }

  // ---- holder-only admin verbs: replay, skip, rewind ----

  private async admin(m: Msg): Promise<void> {
    const verb = m.subject.split('.').at(-2);
    try {
      if (verb !== 'replay' && verb !== 'skip' && verb !== 'rewind')
        throw new BadRequestError(`unknown trigger verb ${verb}`, { code: ErrorCode.BadRequest });
      const body = parseTriggerRequest(verb, decodeBody(m.data));
      let reply: unknown;
      if (verb === 'replay') reply = await this.replay(body);
      else if (verb === 'skip') reply = await this.skip(body);
      else reply = await this.doRewind(body);
      m.respond(encodeBody(reply));
    } catch (err) {
      const e =
        err instanceof JetflowError
          ? err
          : new RetryableError(String((err as Error)?.message ?? err), { cause: err });
      const h = headers();
      h.set(Header.ErrorCode, e.code);
      m.respond(encodeBody({ error: toErrorData(e) }), { headers: h });
    }
  }

  /**
   * Forward parked messages again, in stream order per key. A message applied (or found a
   * duplicate) leaves the parking lot; one refused again stays, and so do its key's later ones.
   */
  async replay(b: Record<string, unknown>): Promise<{
    trigger: string;
    replayed: { seq: number; id?: string; outcome: TriggerOutcome; error?: TriggerError }[];
    remaining: number;
  }> {
    const seq = typeof b.seq === 'number' ? b.seq : undefined;
    const key = typeof b.key === 'string' ? b.key : undefined;
    if (seq === undefined && key === undefined && b.all !== true)
      throw new BadRequestError('replay needs seq, key or all', { code: ErrorCode.BadRequest });
    const parked = (await this.store.parked(this.spec.name)).sort((a, c) => a.seq - c.seq);
    const chosen = parked.filter(
      (p) => (seq === undefined || p.seq === seq) && (key === undefined || p.key === key),
    );
    if (seq !== undefined && chosen.length === 0)
      throw new BadRequestError(`message ${seq} of trigger ${this.spec.name} is not parked`, {
        code: ErrorCode.NotFound,
      });
    const results: { seq: number; id?: string; outcome: TriggerOutcome; error?: TriggerError }[] =
      [];
    const failedKeys = new Set<string>();
    const jobs: Promise<void>[] = [];
    for (const p of chosen) {
      const laneKey = p.key ?? `\u0000parked-${p.seq}`;
      jobs.push(
        this.enqueue(laneKey, async () => {
          if (p.key !== undefined && failedKeys.has(p.key)) return;
          const r = await this.replayOne(p);
          results.push(r);
          if (r.outcome === 'parked' && p.key !== undefined) failedKeys.add(p.key);
        }),
      );
    }
    await Promise.all(jobs);
    results.sort((a, c) => a.seq - c.seq);
    return {
      trigger: this.spec.name,
      replayed: results,
      remaining: await this.store.parkedCount(this.spec.name),
    };
  }

  private async replayOne(
    p: ParkedMessage,
  ): Promise<{ seq: number; id?: string; outcome: TriggerOutcome; error?: TriggerError }> {
    const tm = triggerMessageOfParked(p);
    const mapped = mapTriggerMessage(this.spec, tm, this.o.maxInputBytes);
    if (mapped.kind === 'poison') {
      return {
        seq: p.seq,
        ...(p.key ? { id: p.key } : {}),
        outcome: 'parked',
        error: mapped.error,
      };
    }
    // A park-key key replays from its head: a message behind an earlier parked one waits.
    const head = this.parkedKeys.get(mapped.id)?.[0];
    if (head !== undefined && head < p.seq && this.spec.onPoison === 'park-key')
      return {
        seq: p.seq,
        id: mapped.id,
        outcome: 'parked',
        error: { code: 'parked_key', message: `behind parked message ${head} of key ${mapped.id}` },
      };
    const r = await this.forward(tm, mapped, true);
    if (r === undefined) throw new RetryableError('the trigger was released during the replay');
    if ('error' in r) {
      this.noteError(p.seq, r.error);
      return { seq: p.seq, id: mapped.id, outcome: 'parked', error: r.error };
    }
    await this.store.unpark(p.parkedSeq);
    this.forgetParked(p.seq, p.key ?? mapped.id);
    await this.count(tm, r.outcome, mapped.id, undefined, 'replay');
    return { seq: p.seq, id: mapped.id, outcome: r.outcome };
  }

  /** Drop one parked message for good, with who and why in the ledger. */
  async skip(b: Record<string, unknown>): Promise<{ trigger: string; seq: number; skipped: true }> {
    const seq = b.seq;
    const reason = b.reason;
    const by = typeof b.by === 'string' && b.by ? b.by : 'operator';
    if (typeof seq !== 'number' || typeof reason !== 'string' || reason.trim() === '')
      throw new BadRequestError('skip needs seq and a reason', { code: ErrorCode.BadRequest });
    const p = (await this.store.parked(this.spec.name)).find((x) => x.seq === seq);
    if (!p)
      throw new BadRequestError(`message ${seq} of trigger ${this.spec.name} is not parked`, {
        code: ErrorCode.NotFound,
      });
    const laneKey = p.key ?? `\u0000parked-${p.seq}`;
    await this.enqueue(laneKey, async () => {
      // Remembered, so that a rewind does not park it again.
      await this.o.statusKv.put(
        skipKey(this.spec.name, p.seq),
        JSON.stringify({ by, reason, at: Date.now() }),
      );
      await this.store.unpark(p.parkedSeq);
      this.forgetParked(p.seq, p.key);
      await this.count(triggerMessageOfParked(p), 'skipped', p.key, p.error, 'replay', {
        by,
        reason,
      });
    });
    return { trigger: this.spec.name, seq, skipped: true };
  }

  /**
   * Deliver again from a sequence or a time: suspend consumption, let in-flight forwards end,
   * re-create the consumer there, and count what comes back up to the stream's last sequence at
   * this moment: `reread` and, of those, `new` (started or signaled anything).
   */
  async doRewind(b: Record<string, unknown>): Promise<RewindReply> {
    const { spec, o } = this;
    if (!spec.stream)
      throw new BadRequestError(`trigger ${spec.name} has no stream: nothing to rewind`, {
        code: ErrorCode.BadRequest,
      });
    if (this.rewind)
      throw new BadRequestError(`trigger ${spec.name} is already rewinding`, {
        code: ErrorCode.Conflict,
      });
    const toSeq = typeof b.toSeq === 'number' ? b.toSeq : undefined;
    const since = typeof b.since === 'number' ? b.since : undefined;
    if ((toSeq === undefined) === (since === undefined) || (toSeq !== undefined && toSeq < 1))
      throw new BadRequestError('rewind needs toSeq (>= 1) or since (epoch ms)', {
        code: ErrorCode.BadRequest,
      });
    const waitMs = typeof b.waitMs === 'number' ? b.waitMs : 600_000;
    const before = await o.jsm.consumers.info(spec.stream, triggerConsumerName(spec.name));
    if ((before as { paused?: boolean }).paused)
      throw new BadRequestError(`trigger ${spec.name} is paused: resume it before a rewind`, {
        code: ErrorCode.Paused,
      });
    this.suspended = true;
    try {
      this.messages?.stop();
      await this.loop?.catch(() => undefined);
      await this.idle(this.replyTimeoutMs);
      const si = await o.jsm.streams.info(spec.stream);
      const last = si.state.last_seq;
      let from = toSeq ?? 0;
      if (since !== undefined) {
        const first = await o.jsm.streams
          .getMessage(spec.stream, { start_time: new Date(since) } as never)
          .catch(() => null);
        from = first?.seq ?? last + 1;
      }
      this.rewind = {
        from,
        to: last,
        seen: new Set(),
        new: 0,
        duplicates: 0,
        parked: 0,
        skipped: 0,
      };
      await rewindTriggerConsumer(o.jsm, spec, this.consumerOpts, { seq: Math.max(1, from) });
      this.lastPin = undefined;
      this.suspended = false;
      await this.consume();
      const deadline = Date.now() + waitMs;
      let done = false;
      while (!this.stopped && Date.now() < deadline) {
        const ci = await o.jsm.consumers.info(spec.stream, triggerConsumerName(spec.name));
        if (ci.ack_floor.stream_seq >= last || (ci.num_pending === 0 && ci.num_ack_pending === 0)) {
          done = true;
          break;
        }
        await new Promise((r) => setTimeout(r, 200));
      }
      await this.idle(this.replyTimeoutMs);
      const r = this.rewind;
      return {
        trigger: spec.name,
        fromSeq: from,
        toSeq: last,
        reread: r.seen.size,
        new: r.new,
        duplicates: r.duplicates,
        parked: r.parked,
        skipped: r.skipped,
        done,
      };
    } finally {
      this.rewind = undefined;
      if (this.suspended) {
        this.suspended = false;
        void this.restart();
      }
    }
  }
}

/** Status-bucket key remembering an operator's skip of message `seq`. */
const skipKey = (name: string, seq: number) => `skipped.${name}.${seq}`;

interface RewindSession {
  from: number;
  to: number;
  seen: Set<number>;
  new: number;
  duplicates: number;
  parked: number;
  skipped: number;
}

/**
 * The read-only and consumer-level trigger verbs, answered by any engine (queue group) on
 * `<prefix>.admin.triggers.<verb>`: list, parked, trace, pause, resume.
 */
export function startTriggerAdmin(o: {
  nc: NatsConnection;
  jsm: JetStreamManager;
  names: TopologyNames;
  role: TriggerRole;
  statusKv: KV;
  members: () => Member[];
}): Subscription {
  const prefix = o.names.subjects.prefix;
  const specOf = (b: Record<string, unknown>): TriggerSpec => {
    const s = o.role.specs.find((x) => x.name === b.name);
    if (!s)
      throw new BadRequestError(`unknown trigger ${JSON.stringify(b.name)}`, {
        code: ErrorCode.NotFound,
        details: { known: o.role.specs.map((x) => x.name) },
      });
    return s;
  };
  const list = async (): Promise<TriggerRow[]> => {
    const live = o.members().filter((m) => m.live);
    const rows: TriggerRow[] = [];
    for (const s of o.role.specs) {
      const ci = s.stream
        ? await o.jsm.consumers.info(s.stream, triggerConsumerName(s.name)).catch(() => undefined)
        : undefined;
      const st = await o.statusKv
        .get(s.name)
        .then((e) =>
          e && e.operation === 'PUT' && e.value.length > 0
            ? e.json<TriggerStatusLike>()
            : undefined,
        )
        .catch(() => undefined);
      const holder = live.find((m) => m.heldTriggers?.includes(s.name));
      rows.push({
        name: s.name,
        workflowType: s.workflowType,
        kind: s.kind,
        stream: s.stream ?? null,
        filter: s.subject,
        consumer: s.stream ? triggerConsumerName(s.name) : null,
        onPoison: s.onPoison,
        holder: holder ? `${holder.name} (${holder.id})` : null,
        holderPid: holder ? holder.pid : null,
        pending: ci ? ci.num_pending : null,
        ackPending: ci ? ci.num_ack_pending : null,
        paused: (ci as { paused?: boolean } | undefined)?.paused === true,
        rate: st && holder && st.engineId === holder.id ? st.rate : st ? 0 : null,
        parked: await o.role.store.parkedCount(s.name).catch(() => 0),
        counts: st?.counts ?? null,
        lastError: st?.lastError ?? null,
      });
    }
    return rows;
  };
  return o.nc.subscribe(o.names.subjects.triggerAdmin('*'), {
    queue: `${prefix}-triggers`,
    callback: (err, m) => {
      if (err) return;
      void (async () => {
        const verb = m.subject.split('.').at(-1);
        try {
          if (
            verb !== 'list' &&
            verb !== 'parked' &&
            verb !== 'trace' &&
            verb !== 'pause' &&
            verb !== 'resume'
          )
            throw new BadRequestError(`unknown trigger verb ${JSON.stringify(verb)}`, {
              code: ErrorCode.BadRequest,
            });
          const b = parseTriggerRequest(verb, decodeBody(m.data));
          let reply: unknown;
          if (verb === 'list') reply = { triggers: await list() };
          else if (verb === 'parked') {
            const s = specOf(b);
            const dec = new TextDecoder();
            reply = {
              trigger: s.name,
              // In stream order (the parking lot holds them in the order they were parked).
              parked: (await o.role.store.parked(s.name))
                .sort((a, c) => a.seq - c.seq)
                .map((p) => ({
                  seq: p.seq,
                  subject: p.subject,
                  ...(p.key !== undefined ? { key: p.key } : {}),
                  error: p.error,
                  at: p.at,
                  headers: p.headers,
                  body: dec.decode(p.data),
                })),
            };
          } else if (verb === 'trace') {
            const s = specOf(b);
            if (typeof b.seq !== 'number')
              throw new BadRequestError('trace needs seq', { code: ErrorCode.BadRequest });
            reply = {
              trigger: s.name,
              seq: b.seq,
              entries: await o.role.store.trace(s.name, b.seq),
            };
          } else {
            // pause, resume
            const s = specOf(b);
            if (!s.stream)
              throw new BadRequestError(`trigger ${s.name} is a core subject: nothing to pause`, {
                code: ErrorCode.BadRequest,
              });
            const r =
              verb === 'pause'
                ? await o.jsm.consumers.pause(
                    s.stream,
                    triggerConsumerName(s.name),
                    new Date(Date.now() + 100 * 365 * 86_400_000),
                  )
                : await o.jsm.consumers.resume(s.stream, triggerConsumerName(s.name));
            reply = { trigger: s.name, paused: r.paused };
          }
          m.respond(encodeBody(reply));
        } catch (e) {
          const je =
            e instanceof JetflowError
              ? e
              : new RetryableError(String((e as Error)?.message ?? e), { cause: e });
          const h = headers();
          h.set(Header.ErrorCode, je.code);
          m.respond(encodeBody({ error: toErrorData(je) }), { headers: h });
        }
      })();
    },
  });
}

type TriggerStatusLike = {
  engineId: string;
  rate: number;
  counts: Record<TriggerOutcome, number>;
  lastError?: TriggerError & { seq: number; at: number };
};
