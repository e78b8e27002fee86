/**
 * Batches (issue 23) over JetStream KV: bucket `<prefix>_batches` (see `contracts/batch.ts` for
 * its keys), the `batchItem` effect, the verbs behind `<prefix>.admin.batch.<verb>` and the
 * tracker that folds ledger changes into the counters and sends the callback.
 *
 * Exactly once, and why:
 * - An item is accepted once: its ledger key is created with `create` (compare-and-set on "no
 *   key"); a key that exists at another position is a duplicate (reported, not started), at the
 *   same position a resubmission (started again: the start is idempotent on `type/id`).
 * - A chunk is accepted by one compare-and-set of the batch record that moves the watermark
 *   `next` over it and adds its accepted items to `total`, with the chunk's keys as `inflight`
 *   until their starts are published: anyone who finds `inflight` set publishes them again.
 * - An item's end counts once: its last step's `batchItem` effect moves the ledger key to a
 *   terminal status with compare-and-set (a repeat finds it terminal, a stale generation a newer
 *   one), and the tracker folds ledger changes in stream order with a sequence watermark stored
 *   in the same compare-and-set as the counts.
 * - The callback is published with msg id `batch.<id>.completed.<gen>` (a signal's target
 *   remembers it in its record; a start is idempotent on its id) before the batch record says
 *   `notified`; a crash between repeats the publish, never skips it.
 */
import { headers, nanos, nuid, type NatsConnection } from '@nats-io/transport-node';
import type { Consumer, JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import { AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type {
  BatchAddReply,
  BatchJobProgress,
  BatchCounter,
  BatchItem,
  BatchItemStatus,
  BatchItemsReply,
  BatchMeta,
  BatchStatus,
} from '../contracts/batch.js';
import { BULK_MAX_RATE, type BatchJobSpec, type BatchJobVerb } from '../contracts/bulk.js';
import { MSGPACK, pack, unpack } from '../contracts/codec.js';
import { Header, type Effect, type WorkflowRecord } from '../contracts/wire.js';
import {
  batchStatus,
  callbackStartId,
  parseBatchRequest,
  completedEvent,
  counterFor,
  decideOutcome,
  fold,
  isTerminal,
  itemKeyProblem,
  itemWorkflowId,
  parseCreate,
} from '../engine/batch.js';
import type { Logger, RecordStore } from '../engine/ports.js';
import type { Registry } from '../engine/registry.js';
import {
  BadRequestError,
  ConflictError,
  ErrorCode,
  JetflowError,
  RetryableError,
  toErrorData,
} from '../errors.js';
import { startResponder, type BulkJob, type BulkStore } from './bulk.js';
import type { EffectHandler } from './effects.js';
import { isCasFailure } from './store.js';
import type { TopologyNames } from './topology.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const MAX_CAS = 100;
/** Items per page of a ledger scan. */
const SCAN_FETCH = 1_000;

export const metaKey = (id: string) => `${id}.meta`;
export const counterKey = (id: string) => `${id}.counts`;
export const itemKey = (id: string, key: string) => `${id}.i.${key}`;

function valueOf<T>(e: KvEntry | null): T | undefined {
  if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
  return unpack(e.value) as T;
}

const notFound = (id: string) =>
  new JetflowError(`batch ${id} does not exist`, { code: ErrorCode.NotFound, details: { id } });

export interface BatchServiceOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  names: TopologyNames;
  registry: Registry;
  /** The workflows' records: a signal callback's target must exist. */
  store: RecordStore;
  logger: Logger;
  /** Largest item input (encoded), as the gateway's limit for a start. */
  maxInputBytes: number;
  /** This process in tracker leases. */
  owner: string;
  /** A tracker whose counter did not change for this long is replaced (default 5 s). */
  leaseMs?: number;
  /** The bulk jobs bucket: cancel, retry-failed and resume run as jobs there. */
  bulk: BulkStore;
  /** Told when this service stored a new job (the local runner may claim it at once). */
  onJob?: (jobId: string) => void;
  now?: () => number;
}

/** Open the batches bucket (created by `ensureTopology`). */
export async function openBatchesBucket(nc: NatsConnection, names: TopologyNames): Promise<KV> {
  return new Kvm(nc).open(names.batchesBucket);
}

export class BatchService {
  readonly stats = { itemsAccepted: 0, itemsEnded: 0, folds: 0, conflicts: 0, callbacks: 0 };
  private readonly now: () => number;
  private readonly stream: string;
  private readonly leaseMs: number;
  /** Batches whose last tracker pass changed nothing (the next pass may wait longer). */
  private readonly idle = new Set<string>();
  /** Job ids known to be stored (so the tracker does not read them again). */
  private readonly knownJobs = new Set<string>();

  constructor(
    private readonly kv: KV,
    private readonly o: BatchServiceOptions,
  ) {
    this.now = o.now ?? (() => Date.now());
    this.stream = `KV_${o.names.batchesBucket}`;
    this.leaseMs = o.leaseMs ?? 5_000;
  }

  // --- records ---------------------------------------------------------------------------

  async meta(id: string): Promise<{ meta: BatchMeta; revision: number } | undefined> {
    const e = await this.kv.get(metaKey(id));
    const meta = valueOf<BatchMeta>(e);
    return meta && e ? { meta, revision: e.revision } : undefined;
  }

  async counter(id: string): Promise<{ c: BatchCounter; revision: number } | undefined> {
    const e = await this.kv.get(counterKey(id));
    const c = valueOf<BatchCounter>(e);
    return c && e ? { c, revision: e.revision } : undefined;
  }

  /**
   * Change the batch record with compare-and-set: `f` gets the current record and returns the
   * new one (or undefined: nothing to write). Decided again on a lost race.
   */
  private async mutate(id: string, f: (m: BatchMeta) => BatchMeta | undefined): Promise<BatchMeta> {
    for (let i = 0; i < MAX_CAS; i++) {
      const cur = await this.meta(id);
      if (!cur) throw notFound(id);
      const next = f(structuredClone(cur.meta));
      if (!next) return cur.meta;
      // Any change opens a closed batch to its trackers again (but the close itself).
      if (cur.meta.closed !== undefined && next.closed === cur.meta.closed) delete next.closed;
      next.updatedAt = this.now();
      try {
        await this.kv.update(metaKey(id), pack(next), cur.revision);
        return next;
      } catch (err) {
        if (!isCasFailure(err)) throw err;
        this.stats.conflicts++;
      }
    }
    throw new ConflictError(`batch ${id}: too many concurrent changes`, { details: { id } });
  }

  // --- the item effect ---------------------------------------------------------------------

  /** The `batchItem` effect: the item's ledger key moves to its terminal status, once. */
  async itemEnded(
    e: Extract<Effect, { kind: 'batchItem' }>,
    record: WorkflowRecord,
  ): Promise<void> {
    const k = itemKey(e.batch.id, e.batch.item);
    for (let i = 0; i < MAX_CAS; i++) {
      const entry = await this.kv.get(k);
      const cur = valueOf<BatchItem>(entry);
      if (cur && (cur.gen > e.batch.gen || (cur.gen === e.batch.gen && isTerminal(cur.status)))) {
        return; // counted already, or a newer generation runs
      }
      const next: BatchItem = {
        key: e.batch.item,
        wf: record.id,
        index: cur?.index ?? -1,
        gen: e.batch.gen,
        status: e.status,
        attempts: cur?.attempts ?? 1,
        ...(e.error ? { error: e.error } : {}),
        at: this.now(),
      };
      if (cur?.input !== undefined) next.input = cur.input;
      try {
        if (entry && cur) await this.kv.update(k, pack(next), entry.revision);
        else await this.kv.create(k, pack(next));
        this.stats.itemsEnded++;
        return;
      } catch (err) {
        if (!isCasFailure(err)) throw err;
        this.stats.conflicts++;
      }
    }
    throw new ConflictError(`batch item ${k}: too many concurrent changes`);
  }

  /**
   * The `batchStart` effect (`startBatch` in a definition): create the batch with the workflow
   * as its signal target, submit the items from where the batch is, seal it. Every part is
   * idempotent, so a re-performed outbox does nothing twice. A batch that cannot be created
   * tells the workflow `jetflow.batch.failed` `{ id, error }` (once: msg id).
   */
  async startFromWorkflow(
    b: Extract<Effect, { kind: 'batchStart' }>['batch'],
    record: WorkflowRecord,
  ): Promise<void> {
    let status: BatchStatus;
    try {
      status = await this.create({
        id: b.id,
        type: b.type,
        ...(b.policy !== undefined ? { policy: b.policy } : {}),
        ...(b.cancelRest ? { cancelRest: true } : {}),
        onComplete: {
          signal: { type: record.type, id: record.id, ...(b.event ? { event: b.event } : {}) },
        },
      });
    } catch (err) {
      // Refused (bad request, unknown type): tell the workflow; anything else is retried.
      if (!(err instanceof JetflowError) || err instanceof RetryableError) throw err;
      const msgId = `batch.${String(b.id)}.failed.${record.type}.${record.id}`;
      const h = headers();
      h.set(Header.ContentType, MSGPACK);
      const event = { type: 'jetflow.batch.failed', id: b.id, error: toErrorData(err) };
      await this.o.js.publish(
        this.o.names.subjects.inbox('signal', record.type, record.id),
        pack({ kind: 'signal', event, msgId }),
        { msgID: msgId, headers: h },
      );
      return;
    }
    if (!status.sealed) {
      for (let from = status.next; from < b.items.length; from += 500) {
        await this.add({ id: b.id, from, items: b.items.slice(from, from + 500) });
      }
      await this.seal({ id: b.id });
    }
  }

  // --- verbs ---------------------------------------------------------------------------------

  /** Declare a batch, or find it again (same id and type): the reply's `next` is where to resume. */
  async create(body: unknown): Promise<BatchStatus> {
    const req = parseCreate(body);
    const existing = await this.meta(req.id);
    if (existing) {
      if (existing.meta.type !== req.type) {
        throw new BadRequestError(
          `batch ${req.id} exists with type ${existing.meta.type}, not ${req.type}`,
          { code: ErrorCode.Conflict, details: { id: req.id, type: existing.meta.type } },
        );
      }
      return this.status({ id: req.id });
    }
    if (!this.o.registry.has(req.type)) this.o.registry.latest(req.type); // unknown_type, with the list
    const cb = req.onComplete;
    if (cb && 'signal' in cb) {
      const target = await this.o.store.get(cb.signal.type, cb.signal.id);
      if (!target) {
        throw new JetflowError(
          `batch ${req.id}: the onComplete target workflow ${cb.signal.type}/${cb.signal.id} does not exist`,
          { code: ErrorCode.NotFound, details: { onComplete: cb } },
        );
      }
    } else if (cb && 'start' in cb && !this.o.registry.has(cb.start.type)) {
      this.o.registry.latest(cb.start.type);
    }
    const now = this.now();
    const meta: BatchMeta = {
      v: 1,
      id: req.id,
      type: req.type,
      policy: req.policy ?? 'complete-with-errors',
      ...(req.cancelRest ? { cancelRest: true } : {}),
      ...(cb ? { onComplete: cb } : {}),
      sealed: false,
      next: 0,
      total: 0,
      pending: 0,
      duplicates: 0,
      rejected: 0,
      gen: 1,
      createdAt: now,
      updatedAt: now,
    };
    try {
      await this.kv.create(metaKey(req.id), pack(meta));
    } catch (err) {
      if (!isCasFailure(err)) throw err;
      return this.create(body); // created meanwhile: compare the type
    }
    return batchStatus(meta, undefined, now);
  }

  /** Add one chunk of items at positions `from`… (see the module comment). */
  async add(body: unknown): Promise<BatchAddReply> {
    const b = parseBatchRequest('add', body);
    const id = b.id as string;
    const from = b.from as number;
    const items = b.items as { key?: unknown; input?: unknown }[];
    const cur = await this.meta(id);
    if (!cur) throw notFound(id);
    let meta = cur.meta;
    if (meta.inflight) meta = await this.flushInflight(meta);
    if (meta.canceled || meta.sealed || meta.outcome) {
      throw new BadRequestError(
        `batch ${id} is ${meta.canceled ? 'canceled' : meta.sealed ? 'sealed' : 'decided'}: it takes no more items`,
        { code: ErrorCode.InvalidState, details: { id, next: meta.next } },
      );
    }
    if (from > meta.next) {
      throw new BadRequestError(
        `batch ${id}: items from position ${from}, but the batch has ${meta.next} (resume from there)`,
        { code: ErrorCode.Conflict, details: { id, next: meta.next } },
      );
    }
    const skip = meta.next - from;
    const reply: BatchAddReply = { id, next: meta.next, accepted: 0, duplicates: [], rejected: [] };
    if (skip >= items.length) return reply;
    const paused = !!meta.paused;
    const gen = meta.gen;
    const now = this.now();
    const accepted: { key: string; input: unknown }[] = [];
    await Promise.all(
      items.slice(skip).map(async (it, j) => {
        const index = from + skip + j;
        const key = it?.key;
        const problem = itemKeyProblem(key);
        if (problem) {
          reply.rejected.push({
            key: String(key),
            index,
            error: toErrorData(new BadRequestError(problem, { details: { index } })),
          });
          return;
        }
        const k = key as string;
        const input = it.input ?? null;
        const size = pack(input).length;
        if (size > this.o.maxInputBytes) {
          reply.rejected.push({
            key: k,
            index,
            error: toErrorData(
              new BadRequestError(
                `item ${k}: input of ${size} bytes exceeds the limit of ${this.o.maxInputBytes} bytes`,
                {
                  code: ErrorCode.PayloadTooLarge,
                  details: { size, limit: this.o.maxInputBytes },
                },
              ),
            ),
          });
          return;
        }
        const item: BatchItem = {
          key: k,
          wf: itemWorkflowId(id, k, gen),
          index,
          gen,
          status: paused ? 'pending' : 'running',
          attempts: 1,
          input,
          at: now,
        };
        try {
          await this.kv.create(itemKey(id, k), pack(item));
          accepted.push({ key: k, input });
        } catch (err) {
          if (!isCasFailure(err)) throw err;
          const there = valueOf<BatchItem>(await this.kv.get(itemKey(id, k)));
          if (there && there.index === index) {
            // This chunk again (its reply was lost, or its acceptance lost a race): the item
            // takes the batch's mode now (started, or kept pending while paused).
            accepted.push({ key: k, input });
            const want = paused ? 'pending' : 'running';
            const other = paused ? 'running' : 'pending';
            if (there.status === other) {
              await this.setItem(id, k, (x) =>
                x.status === other ? { ...x, status: want } : undefined,
              );
            }
          } else reply.duplicates.push({ key: k, index, firstIndex: there?.index ?? -1 });
        }
      }),
    );
    // Two keys equal within the chunk: the one at the lower position is the item.
    reply.duplicates.sort((x, y) => x.index - y.index);
    reply.rejected.sort((x, y) => x.index - y.index);
    const end = from + items.length;
    const after = await this.mutate(id, (m) => {
      if (m.next !== meta.next) {
        throw new ConflictError(
          `batch ${id}: another submitter moved the batch to position ${m.next}; resume from there`,
          { details: { id, next: m.next } },
        );
      }
      if (m.sealed || m.canceled) {
        throw new BadRequestError(`batch ${id} was sealed meanwhile`, {
          code: ErrorCode.InvalidState,
        });
      }
      if (!!m.paused !== paused) {
        throw new ConflictError(
          `batch ${id} was paused or resumed meanwhile; send the chunk again`,
          {
            details: { id, next: m.next },
          },
        );
      }
      m.next = end;
      m.total += accepted.length;
      m.duplicates += reply.duplicates.length;
      m.rejected += reply.rejected.length;
      if (paused) m.pending += accepted.length;
      else if (accepted.length > 0) m.inflight = { keys: accepted.map((a) => a.key) };
      return m;
    });
    if (after.inflight) await this.flushInflight(after, accepted);
    this.stats.itemsAccepted += accepted.length;
    reply.next = end;
    reply.accepted = accepted.length;
    return reply;
  }

  /** Publish the starts of an accepted chunk (again: each is idempotent), then clear `inflight`. */
  private async flushInflight(
    meta: BatchMeta,
    known?: { key: string; input: unknown }[],
  ): Promise<BatchMeta> {
    const keys = meta.inflight?.keys ?? [];
    const inputs = new Map(known?.map((k) => [k.key, k.input]));
    await Promise.all(
      keys.map(async (k) => {
        let input = inputs.get(k);
        let gen = meta.gen;
        if (!inputs.has(k)) {
          const it = valueOf<BatchItem>(await this.kv.get(itemKey(meta.id, k)));
          if (!it) return;
          input = it.input;
          gen = it.gen;
        }
        await this.publishStart(meta, k, input, gen);
      }),
    );
    const want = JSON.stringify(keys);
    return this.mutate(meta.id, (m) => {
      if (!m.inflight || JSON.stringify(m.inflight.keys) !== want) return undefined;
      delete m.inflight;
      return m;
    });
  }

  private async publishStart(meta: BatchMeta, key: string, input: unknown, gen: number) {
    const s = this.o.names.subjects;
    const wf = itemWorkflowId(meta.id, key, gen);
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    await this.o.js.publish(
      s.inbox('start', meta.type, wf),
      pack({ kind: 'start', input, batch: { id: meta.id, item: key, gen } }),
      { msgID: `batch.${meta.id}.${gen}.${key}`, headers: h },
    );
  }

  /** Close the batch to new items: it completes once every item is terminal. */
  async seal(body: unknown): Promise<BatchStatus> {
    const id = parseBatchRequest('seal', body).id as string;
    const cur = await this.meta(id);
    if (!cur) throw notFound(id);
    if (cur.meta.inflight) await this.flushInflight(cur.meta);
    await this.mutate(id, (m) => (m.sealed ? undefined : ((m.sealed = true), m)));
    return this.status({ id });
  }

  async status(body: unknown): Promise<BatchStatus> {
    const id = parseBatchRequest('status', body).id as string;
    const [m, c] = await Promise.all([this.meta(id), this.counter(id)]);
    if (!m) throw notFound(id);
    const counter = c && c.c.gen === m.meta.gen ? c.c : counterFor(m.meta.gen, c?.c, this.now());
    const jobs = await this.jobsOf(m.meta);
    return { ...batchStatus(m.meta, counter, this.now()), ...(jobs ? { jobs } : {}) };
  }

  /** A page of the ledger (in stream order), optionally of one status. */
  async items(body: unknown): Promise<BatchItemsReply> {
    const b = parseBatchRequest('items', body) as {
      id: string;
      status?: BatchItemStatus;
      cursor?: number;
      limit?: number;
    };
    const id = b.id;
    if (!(await this.meta(id))) throw notFound(id);
    const status = b.status;
    const limit = Math.min(1000, b.limit ?? 100);
    const start = b.cursor ?? 1;
    const items: BatchItem[] = [];
    let cursor: number | undefined;
    await this.scan(id, start, (seq, it) => {
      if (items.length >= limit) {
        cursor = seq;
        return false;
      }
      if (!status || it.status === status) {
        const listed = { ...it };
        delete listed.input;
        items.push(listed);
      }
      return true;
    });
    return { id, items, ...(cursor !== undefined ? { cursor } : {}) };
  }

  /**
   * The tracker's read of the ledger changes after `afterSeq` (at most `max`). One direct read
   * says whether there is any; only then a consumer is made (and deleted after): a pass over an
   * idle batch makes none. (A consumer kept between passes would lose messages: a fetch left
   * before its end, when changed keys vanished, keeps its pull request open on the server.)
   */
  private async readLedger(
    id: string,
    afterSeq: number,
    max: number,
  ): Promise<{ page: [number, BatchItem | undefined][]; lastSeq: number }> {
    const page: [number, BatchItem | undefined][] = [];
    if (!(await this.hasAfter(id, afterSeq))) return { page, lastSeq: afterSeq };
    const c = await this.ledgerConsumer(id, afterSeq + 1);
    let lastSeq = afterSeq;
    try {
      let pending = (await c.info(true)).num_pending;
      while (pending > 0 && page.length < max) {
        const batch = await c.fetch({
          max_messages: Math.min(SCAN_FETCH, pending, max - page.length),
          expires: 1_000,
        });
        let got = 0;
        for await (const m of batch) {
          got++;
          lastSeq = m.seq;
          pending = m.info.pending;
          page.push([m.seq, itemOf(m)]);
          if (pending === 0 || page.length >= max) break;
        }
        if (got === 0) break;
      }
    } finally {
      await c.delete().catch(() => undefined);
    }
    return { page, lastSeq };
  }

  /**
   * An ephemeral pull consumer (no acks, in memory, gone after a minute unused) of batch `id`'s
   * ledger from stream sequence `from`. A plain one, read by one reader at a time: its fetches
   * continue where the last ended.
   */
  private async ledgerConsumer(id: string, from: number): Promise<Consumer> {
    const ci = await this.o.jsm.consumers.add(this.stream, {
      name: `batch_${nuid.next()}`,
      filter_subject: `$KV.${this.o.names.batchesBucket}.${id}.i.>`,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: from,
      ack_policy: AckPolicy.None,
      inactive_threshold: nanos(60_000),
      mem_storage: true,
      num_replicas: 1,
    });
    return this.o.js.consumers.getConsumerFromInfo(ci);
  }

  /** Whether the ledger of batch `id` has a change after stream sequence `seq` (one direct read). */
  private async hasAfter(id: string, seq: number): Promise<boolean> {
    try {
      // The server's message get takes `next_by_subj` (typed only for direct gets).
      const query = { seq: seq + 1, next_by_subj: `$KV.${this.o.names.batchesBucket}.${id}.i.>` };
      const m = await this.o.jsm.streams.getMessage(this.stream, query);
      return m !== null;
    } catch (err) {
      if (err instanceof Error && /no message found|not found/i.test(err.message)) return false;
      throw err;
    }
  }

  /**
   * Every ledger key of batch `id` from stream sequence `fromSeq`, in stream order (the bucket
   * keeps one message per key: the latest), until `f` returns false or the end is reached.
   */
  private async scan(
    id: string,
    fromSeq: number,
    f: (seq: number, item: BatchItem) => boolean | Promise<boolean>,
  ): Promise<void> {
    await this.scanPages(id, fromSeq, undefined, async (page) => {
      for (const [seq, it] of page) if (!(await f(seq, it))) return false;
      return true;
    });
  }

  /**
   * The ledger of batch `id` from stream sequence `fromSeq` up to `untilSeq` (default: the
   * end), in pages of up to {@link SCAN_FETCH} entries read through one consumer (deleted after);
   * `onPage` also gets the last sequence the page covers (deleted keys included), and returns
   * false to stop.
   */
  private async scanPages(
    id: string,
    fromSeq: number,
    untilSeq: number | undefined,
    onPage: (page: [number, BatchItem][], lastSeq: number) => boolean | Promise<boolean>,
  ): Promise<void> {
    const c = await this.ledgerConsumer(id, Math.max(1, fromSeq));
    try {
      let pending = (await c.info(true)).num_pending;
      while (pending > 0) {
        const batch = await c.fetch({
          max_messages: Math.min(SCAN_FETCH, pending),
          expires: 1_000,
        });
        const page: [number, BatchItem][] = [];
        let lastSeq = 0;
        let end = false;
        for await (const m of batch) {
          if (untilSeq !== undefined && m.seq > untilSeq) {
            end = true;
            break;
          }
          lastSeq = m.seq;
          pending = m.info.pending;
          const it = itemOf(m);
          if (it) page.push([m.seq, it]);
          if (pending === 0) break;
        }
        if (lastSeq === 0) break;
        if (!(await onPage(page, lastSeq))) return;
        if (end) break;
      }
    } finally {
      await c.delete().catch(() => undefined);
    }
  }

  async pause(body: unknown): Promise<BatchStatus> {
    const { id, by, reason } = who('pause', body);
    await this.mutate(id, (m) =>
      m.paused ? undefined : ((m.paused = { at: this.now(), by, reason }), m),
    );
    return this.status({ id });
  }

  /**
   * Admit new items again, and start the items accepted while paused: a background job walks
   * the ledger for them (the reply names it; `status` shows its progress).
   */
  async resume(body: unknown): Promise<BatchStatus> {
    const { id, by, reason } = who('resume', body);
    const jobId = nuid.next();
    const meta = await this.mutate(id, (m) => {
      if (!m.paused && (m.pending === 0 || m.canceled || m.jobs?.resume)) return undefined;
      delete m.paused;
      if (m.pending > 0 && !m.canceled) m.jobs = { ...m.jobs, resume: jobId };
      return m;
    });
    const job =
      meta.pending > 0 && !meta.canceled
        ? await this.ensureJob(meta, 'resume', by, reason)
        : undefined;
    return { ...(await this.status({ id })), changed: job ? { verb: 'resume', jobId: job } : {} };
  }

  /**
   * Cancel the items not ended yet; the batch takes no more items at once. The items are
   * canceled by a background job that walks the ledger (the reply names it).
   */
  async cancel(body: unknown): Promise<BatchStatus> {
    const { id, by, reason } = who('cancel', body);
    const jobId = nuid.next();
    const meta = await this.mutate(id, (m) => {
      if (m.canceled && m.jobs?.cancel) return undefined;
      m.canceled ??= { at: this.now(), by, reason };
      m.sealed = true;
      m.jobs = { ...m.jobs, cancel: m.jobs?.cancel ?? jobId };
      return m;
    });
    const job = await this.ensureJob(meta, 'cancel', by, reason);
    return { ...(await this.status({ id })), changed: { verb: 'cancel', jobId: job } };
  }

  /** The policy's cancel of the rest (all-must-succeed with cancelRest): a job, as `cancel`. */
  private async cancelRest(meta: BatchMeta): Promise<void> {
    const jobId = nuid.next();
    const m = await this.mutate(meta.id, (x) =>
      x.jobs?.cancel ? undefined : ((x.jobs = { ...x.jobs, cancel: jobId }), x),
    );
    await this.ensureJob(m, 'cancel', 'jetflow', 'the batch failed (all-must-succeed)');
  }

  /**
   * Run the failed items again, each as a new workflow `<id>=<key>=<gen>` with a fresh attempt
   * budget; the batch is open again and its callback fires again with the new counts. Only for
   * a decided batch whose items are all terminal. The restarts are a background job (the reply
   * names it); the batch stays open (`retrying`) until the job has walked the whole ledger.
   */
  async retryFailed(body: unknown): Promise<BatchStatus> {
    const { id, by, reason } = who('retry-failed', body);
    const [m, c] = await Promise.all([this.meta(id), this.counter(id)]);
    if (!m) throw notFound(id);
    let meta = m.meta;
    if (!meta.retrying) {
      const n = batchStatus(meta, c?.c, this.now()).counts;
      if (!meta.outcome || n.running + n.pending > 0 || meta.canceled) {
        throw new BadRequestError(
          `batch ${id}: retry-failed needs a decided batch whose items all ended (${n.running} running, ${n.pending} pending${meta.canceled ? ', canceled' : ''})`,
          { code: ErrorCode.InvalidState, details: { id, counts: n } },
        );
      }
      if (n.failed === 0) return { ...(await this.status({ id })), changed: { restarted: 0 } };
      const jobId = nuid.next();
      meta = await this.mutate(id, (x) => {
        if (x.gen !== meta.gen || x.retrying) return undefined;
        x.gen++;
        x.retrying = true;
        x.jobs = { ...x.jobs, 'retry-failed': jobId };
        delete x.outcome;
        delete x.decidedAt;
        return x;
      });
    }
    const job = await this.ensureJob(meta, 'retry-failed', by, reason);
    return { ...(await this.status({ id })), changed: { verb: 'retry-failed', jobId: job } };
  }

  // --- background jobs over the ledger (run by the engines' bulk runners) --------------------

  /**
   * The job the batch record names for `verb` exists in `<prefix>_bulk` (created here when not:
   * the record is written first, so a crash between leaves a name whose job the next verb call
   * or the tracker creates). Returns its id.
   */
  private async ensureJob(
    meta: BatchMeta,
    verb: BatchJobVerb,
    by = 'jetflow',
    reason = '',
  ): Promise<string> {
    const jobId = meta.jobs?.[verb];
    if (!jobId) throw new ConflictError(`batch ${meta.id}: no ${verb} job recorded`);
    if (this.knownJobs.has(jobId) || (await this.o.bulk.get(jobId))) {
      this.remember(jobId);
      return jobId;
    }
    const info = await this.o.jsm.streams.info(this.stream);
    const now = new Date(this.now()).toISOString();
    const job: BulkJob = {
      v: 1,
      jobId,
      request: {
        verb: verb === 'retry-failed' ? 'retry' : verb,
        query: { attributes: { batchId: meta.id } },
        reason,
        by,
        dryRun: false,
        ratePerSec: BULK_MAX_RATE,
      },
      chunks: 0,
      state: 'running',
      counters: { matched: meta.total, processed: 0, done: 0, failed: 0, skipped: 0 },
      failures: [],
      runs: 0,
      createdAt: now,
      updatedAt: now,
      batch: { id: meta.id, verb, gen: meta.gen, seq: 0, untilSeq: info.state.last_seq },
    };
    try {
      await this.o.bulk.create(job);
      this.o.logger.info({ batch: meta.id, verb, jobId, items: meta.total }, 'batch job created');
      this.o.onJob?.(jobId);
    } catch (err) {
      if (!isCasFailure(err)) throw err; // created meanwhile
    }
    this.remember(jobId);
    return jobId;
  }

  private remember(jobId: string): void {
    if (this.knownJobs.size > 10_000) this.knownJobs.clear();
    this.knownJobs.add(jobId);
  }

  /** The batch's jobs with their progress (for `status`). */
  private async jobsOf(meta: BatchMeta): Promise<BatchJobProgress[] | undefined> {
    const jobs = Object.entries(meta.jobs ?? {}) as [BatchJobVerb, string][];
    if (jobs.length === 0) return undefined;
    return Promise.all(
      jobs.map(async ([verb, jobId]) => {
        const got = await this.o.bulk.get(jobId);
        const c = got?.job.counters;
        return {
          verb,
          jobId,
          state: got?.job.state ?? 'missing',
          processed: c?.processed ?? 0,
          matched: c?.matched ?? meta.total,
          done: c?.done ?? 0,
        };
      }),
    );
  }

  /**
   * Walk a job's part of the ledger: stream sequences `fromSeq + 1 … spec.untilSeq`, in pages
   * of up to {@link SCAN_FETCH} entries through one consumer, until `onPage` returns false.
   */
  async walkJob(
    spec: BatchJobSpec,
    fromSeq: number,
    onPage: (page: [number, BatchItem][], lastSeq: number) => Promise<boolean>,
  ): Promise<void> {
    if (fromSeq >= spec.untilSeq) return;
    await this.scanPages(spec.id, fromSeq + 1, spec.untilSeq, onPage);
  }

  /** Act on one ledger entry for a job: whether something was done (else skipped). */
  async jobAct(spec: BatchJobSpec, meta: BatchMeta, it: BatchItem, seq?: number): Promise<boolean> {
    const now = () => this.now();
    const known = seq === undefined ? undefined : { item: it, revision: seq };
    switch (spec.verb) {
      case 'cancel':
        if (it.status === 'running') {
          const s = this.o.names.subjects;
          const h = headers();
          h.set(Header.ContentType, MSGPACK);
          const msgId = `batch.${meta.id}.cancel.${it.gen}.${it.key}`;
          const why = meta.canceled?.reason ?? 'the batch failed (all-must-succeed)';
          await this.o.js.publish(
            s.inbox('cancel', meta.type, it.wf),
            pack({ kind: 'cancel', reason: `batch ${meta.id}: ${why}`, msgId }),
            { msgID: msgId, headers: h },
          );
          return true;
        }
        if (it.status === 'pending') {
          return this.setItem(
            meta.id,
            it.key,
            (x) => (x.status === 'pending' ? { ...x, status: 'canceled', at: now() } : undefined),
            known,
          );
        }
        return false;
      case 'resume':
        if (it.status !== 'pending') return false;
        await this.publishStart(meta, it.key, it.input, it.gen);
        return this.setItem(
          meta.id,
          it.key,
          (x) => (x.status === 'pending' ? { ...x, status: 'running', at: now() } : undefined),
          known,
        );
      case 'retry-failed':
        if (it.status !== 'failed' || it.gen >= spec.gen) return false;
        await this.publishStart(meta, it.key, it.input, spec.gen);
        await this.setItem(meta.id, it.key, (x) =>
          x.status === 'failed' && x.gen < spec.gen
            ? {
                ...x,
                gen: spec.gen,
                wf: itemWorkflowId(meta.id, x.key, spec.gen),
                status: 'running',
                attempts: x.attempts + 1,
                at: now(),
              }
            : undefined,
        );
        return true;
    }
  }

  /** After a page of a cancel or resume job: `pending` loses the items that left it. */
  async jobPage(spec: BatchJobSpec, leftPending: number): Promise<void> {
    if (leftPending === 0) return;
    await this.mutate(spec.id, (m) => ((m.pending = Math.max(0, m.pending - leftPending)), m));
  }

  /** A job walked its whole part of the ledger. */
  async jobDone(spec: BatchJobSpec): Promise<void> {
    if (spec.verb === 'retry-failed') {
      await this.mutate(spec.id, (x) =>
        x.retrying && x.gen === spec.gen ? (delete x.retrying, x) : undefined,
      );
    } else if (spec.verb === 'cancel') {
      // Every pending item was canceled (a canceled batch starts and admits nothing).
      await this.mutate(spec.id, (x) =>
        x.canceled && x.pending > 0 ? ((x.pending = 0), x) : undefined,
      );
    }
  }

  /**
   * Change one ledger key with compare-and-set. `known`: the entry as read (a ledger walk's
   * message: its stream sequence is the key's revision), tried first without a read.
   */
  private async setItem(
    id: string,
    key: string,
    f: (x: BatchItem) => BatchItem | undefined,
    known?: { item: BatchItem; revision: number },
  ): Promise<boolean> {
    const k = itemKey(id, key);
    for (let i = 0; i < MAX_CAS; i++) {
      const e = i === 0 && known ? undefined : await this.kv.get(k);
      const cur = e ? valueOf<BatchItem>(e) : known?.item;
      const rev = e ? e.revision : known?.revision;
      if (!cur || rev === undefined) return false;
      const next = f(cur);
      if (!next) return false;
      try {
        await this.kv.update(k, pack(next), rev);
        return true;
      } catch (err) {
        if (!isCasFailure(err)) throw err;
      }
    }
    return false;
  }

  // --- the tracker -----------------------------------------------------------------------------

  /**
   * One pass of the tracker over batch `id`: fold the ledger changes after the counter's
   * watermark (one compare-and-set per page), decide the outcome, cancel the rest when the
   * policy says so, publish the callback. Returns whether the batch still needs tracking.
   * Safe to run anywhere and concurrently: every write is a compare-and-set.
   */
  async track(id: string): Promise<boolean> {
    const m = await this.meta(id);
    if (!m || m.meta.closed !== undefined) return false;
    let meta = m.meta;
    if (meta.inflight && this.now() - meta.updatedAt > this.leaseMs) {
      meta = await this.flushInflight(meta);
    }
    // A job named by the record but not stored (its verb's process died in between).
    if (this.now() - meta.updatedAt > this.leaseMs) {
      for (const [verb, jobId] of Object.entries(meta.jobs ?? {}) as [BatchJobVerb, string][]) {
        if (!this.knownJobs.has(jobId)) await this.ensureJob(meta, verb);
      }
    }
    const cur = await this.counter(id);
    if (
      cur?.c.owner &&
      cur.c.owner !== this.o.owner &&
      this.now() - cur.c.updatedAt < this.leaseMs
    ) {
      this.idle.add(id);
      return true; // another tracker holds it (its heartbeat is recent)
    }
    let c = counterFor(meta.gen, cur?.c, this.now());
    let revision = cur?.revision;
    let progressed = false;
    // A new counter, or the rollover to a new generation, is written even with nothing to fold.
    let dirty = !cur || cur.c.gen !== c.gen;
    for (;;) {
      const { page, lastSeq } = await this.readLedger(id, c.lastSeq, SCAN_FETCH * 5);
      const next = structuredClone(c);
      const now = this.now();
      for (const [seq, it] of page) fold(next, seq, it, now);
      next.lastSeq = Math.max(next.lastSeq, lastSeq);
      if (page.length > 0) progressed = true;
      const heartbeat = c.owner !== this.o.owner || now - c.updatedAt > this.leaseMs / 3;
      if (page.length === 0 && !dirty && !heartbeat) break;
      next.owner = this.o.owner;
      next.updatedAt = now;
      try {
        if (revision === undefined) revision = await this.kv.create(counterKey(id), pack(next));
        else revision = await this.kv.update(counterKey(id), pack(next), revision);
        this.stats.folds++;
      } catch (err) {
        if (!isCasFailure(err)) throw err;
        this.stats.conflicts++;
        return true; // another tracker moved it: next pass
      }
      c = next;
      dirty = false;
      if (page.length < SCAN_FETCH * 5) break;
    }
    // The outcome, the policy's cancel, the callback.
    const outcome = decideOutcome(meta, c);
    if (outcome && !meta.outcome) {
      progressed = true;
      meta = await this.mutate(id, (x) => {
        if (x.outcome || x.gen !== meta.gen) return undefined;
        x.outcome = outcome;
        x.decidedAt = this.now();
        return x;
      });
      if (outcome === 'failed' && meta.cancelRest && !meta.canceled) {
        await this.cancelRest(meta);
      }
    }
    if (meta.outcome && meta.notified !== meta.gen && meta.gen === c.gen) {
      await this.notify(meta, c);
      meta = await this.mutate(id, (x) =>
        x.gen === meta.gen && x.notified !== x.gen ? ((x.notified = x.gen), x) : undefined,
      );
    }
    if (progressed) this.idle.delete(id);
    else this.idle.add(id);
    const n = batchStatus(meta, c, this.now()).counts;
    const done = !!meta.outcome && meta.notified === meta.gen && n.running + n.pending === 0;
    if (done && meta.closed === undefined) {
      // Trackers starting later skip it (no pass per past batch at every engine start).
      await this.mutate(id, (x) =>
        x.closed === undefined && x.gen === meta.gen ? ((x.closed = this.now()), x) : undefined,
      );
    }
    return !done;
  }

  private async notify(meta: BatchMeta, c: BatchCounter): Promise<void> {
    const cb = meta.onComplete;
    const event = completedEvent(meta, c);
    const msgId = `batch.${meta.id}.completed.${meta.gen}`;
    const s = this.o.names.subjects;
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    if (cb && 'signal' in cb) {
      await this.o.js.publish(
        s.inbox('signal', cb.signal.type, cb.signal.id),
        pack({ kind: 'signal', event, msgId }),
        { msgID: msgId, headers: h },
      );
    } else if (cb && 'start' in cb) {
      await this.o.js.publish(
        s.inbox('start', cb.start.type, callbackStartId(meta, cb.start.id)),
        pack({ kind: 'start', input: event }),
        { msgID: msgId, headers: h },
      );
    }
    // Every batch's end is also published for watchers (`jetflow batch status --watch`, tests).
    this.o.nc.publish(s.batchEvents(meta.id), pack(event));
    this.stats.callbacks++;
    this.o.logger.info(
      { batch: meta.id, outcome: meta.outcome, counts: event.counts },
      'batch completed',
    );
  }

  /**
   * Track every batch that needs it: watches the batch records (`*.meta`) and runs `track`
   * for each open one every `intervalMs`, backing off to `idleMs` while passes change nothing
   * (a change of the batch record wakes it at once). Returns a stop function.
   */
  startTracker(intervalMs = 200, idleMs = 2_000): { stop(): Promise<void> } {
    let stopped = false;
    const open = new Set<string>();
    const loops = new Map<string, Promise<void>>();
    const wakers = new Map<string, () => void>();
    const stopRef: { w?: { stop(): void } } = {};
    const loop = async (id: string) => {
      let delay = intervalMs;
      while (!stopped && open.has(id)) {
        try {
          if (!(await this.track(id))) open.delete(id);
        } catch (err) {
          if (!stopped) this.o.logger.warn({ err, batch: id }, 'batch tracker pass failed');
        }
        delay = this.idle.has(id) ? Math.min(idleMs, delay * 2) : intervalMs;
        await new Promise<void>((ok) => {
          const t = setTimeout(ok, delay);
          wakers.set(id, () => {
            clearTimeout(t);
            ok();
          });
        });
        wakers.delete(id);
      }
      this.idle.delete(id);
      loops.delete(id);
    };
    const watching = (async () => {
      while (!stopped) {
        try {
          const w = await this.kv.watch({ key: '*.meta' });
          stopRef.w = w;
          for await (const e of w) {
            if (stopped) break;
            const meta = valueOf<BatchMeta>(e);
            if (!meta) continue;
            // A closed batch (ended, callback sent, nothing running) needs no tracker.
            if (meta.closed !== undefined && !loops.has(meta.id)) continue;
            open.add(meta.id);
            wakers.get(meta.id)?.();
            if (!loops.has(meta.id)) loops.set(meta.id, loop(meta.id));
          }
        } catch (err) {
          if (!stopped) this.o.logger.warn({ err }, 'batch watch failed; again');
        }
        if (!stopped) await sleep(500);
      }
    })();
    return {
      stop: async () => {
        stopped = true;
        stopRef.w?.stop();
        for (const wake of wakers.values()) wake();
        await watching.catch(() => undefined);
        await Promise.allSettled([...loops.values()]);
      },
    };
  }
}

function itemOf(m: JsMsg): BatchItem | undefined {
  const op = m.headers?.get('KV-Operation');
  if (op === 'DEL' || op === 'PURGE' || m.data.length === 0) return undefined;
  return unpack(m.data) as BatchItem;
}

function who(
  verb: 'retry-failed' | 'cancel' | 'pause' | 'resume',
  body: unknown,
): { id: string; by: string; reason: string } {
  const b = parseBatchRequest(verb, body) as { id: string; by?: string; reason?: string };
  return { id: b.id, by: b.by || 'unknown', reason: b.reason ?? '' };
}

/** The `batchItem` effect handler. */
export function batchEffectHandlers(
  batches: BatchService,
): Partial<Record<Effect['kind'], EffectHandler>> {
  return {
    batchItem: async (record: WorkflowRecord, e: Effect) => {
      if (e.kind !== 'batchItem') return;
      await batches.itemEnded(e, record);
    },
    batchStart: async (record: WorkflowRecord, e: Effect) => {
      if (e.kind !== 'batchStart') return;
      await batches.startFromWorkflow(e.batch, record);
    },
  };
}

/** The verbs on `<prefix>.admin.batch.<verb>`. */
export const BATCH_VERBS = Object.freeze([
  'create',
  'add',
  'seal',
  'status',
  'items',
  'retry-failed',
  'cancel',
  'pause',
  'resume',
] as const);
export type BatchVerb = (typeof BATCH_VERBS)[number];

/**
 * Answer `<prefix>.admin.batch.<verb>` in queue group `<prefix>-batches` (any engine answers;
 * every write is a compare-and-set). Errors reply `{ error }` with the `Jf-Error` header.
 */
export function startBatchResponder(
  nc: NatsConnection,
  names: TopologyNames,
  batches: BatchService,
  logger: Logger,
): { stop(): Promise<void> } {
  const answer = (verb: string, body: unknown): Promise<unknown> => {
    switch (verb as BatchVerb) {
      case 'create':
        return batches.create(body);
      case 'add':
        return batches.add(body);
      case 'seal':
        return batches.seal(body);
      case 'status':
        return batches.status(body);
      case 'items':
        return batches.items(body);
      case 'retry-failed':
        return batches.retryFailed(body);
      case 'cancel':
        return batches.cancel(body);
      case 'pause':
        return batches.pause(body);
      case 'resume':
        return batches.resume(body);
      default:
        throw new BadRequestError(
          `unknown batch verb ${JSON.stringify(verb)}: one of ${BATCH_VERBS.join(', ')}`,
        );
    }
  };
  return startResponder(
    nc,
    {
      queue: `${names.subjects.prefix}-batches`,
      what: 'batch',
      routes: [
        {
          subject: names.subjects.batchWildcard,
          answer: (body, subject) => answer(subject.slice(subject.lastIndexOf('.') + 1), body),
        },
      ],
    },
    logger,
  );
}
