/**
 * jetflow client: a thin layer over the public subjects. Any NATS client can do the same (see
 * the README's wire contract); this one adds typed replies, errors as exceptions, `result()`
 * and `watch()`.
 *
 * Failure semantics:
 * - `start` is idempotent on type/id: retrying after a timeout is safe.
 * - `signal` is at-least-once per call; pass `msgId` to make retries count once (JetStream
 *   dedup window, 2 min by default). Each call resolves after the engine applied the event.
 * - `query` reads the last stored record (never a half-applied step).
 * - `history` reads the journal: every step is journaled by the step that applied it, with its
 *   outbox (at-least-once, deduplicated by step number), so a step visible in `query` may take a
 *   moment to appear in `history`, and never appears twice.
 * - A timeout (`TimeoutError` from NATS) means "unknown": the request may still be applied.
 */
import { headers, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, DeliverPolicy } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { WebhookOptions } from '../engine/triggers.js';
import { Schedules } from '../nats/schedules.js';
import { Batches } from './batches.js';
import { listKeyRecords, openKeysBucket } from '../nats/keys.js';
import { keyTokenOf, waiterOrder } from '../engine/admission.js';
import { explainWhy, type WhyReply } from '../engine/why.js';
import { observeWhy } from '../nats/why.js';
import type { KeyRecord } from '../contracts/wire.js';
import { connectNats, connectionOptionsFromEnv, credsFileOptions } from '../nats/connection.js';
import { topologyNames, type TopologyNames } from '../nats/topology.js';
import { queueStatus, systemStatus, type QueueStatus, type SystemStatus } from '../nats/status.js';
import { decodeBody, encodeBody, JSON_TYPE, unpack } from '../contracts/codec.js';
import { readEntry } from '../engine/journal.js';
import {
  Header,
  type AdminReply,
  type AdminRequest,
  type AdminVerb,
  type HistoryReply,
  type HistoryRequest,
  type JournalEntry,
  type Notification,
  type QueryReply,
  type SignalReply,
  type StartReply,
} from '../contracts/wire.js';
import { DEFAULT_PREFIX, isToken } from '../contracts/subjects.js';
import { context } from '@opentelemetry/api';
import { inSpan, injectTrace, SpanKind, tracingActive } from '../tracing/index.js';
import type { BulkProgress, BulkReply, BulkRequest } from '../contracts/bulk.js';
import type {
  SearchCountsReply,
  SearchCountsRequest,
  NodeSearchRequest,
  NodeSearchReply,
  SearchReply,
  SearchRequest,
} from '../contracts/search.js';
import {
  BadRequestError,
  ErrorCode,
  fromErrorData,
  JetflowError,
  TerminalError,
  type ErrorData,
} from '../errors.js';

export interface ClientOptions {
  /** Subject prefix of the engines (default `wf`). */
  prefix?: string;
  /** Request timeout (default 10 s). */
  timeoutMs?: number;
  /**
   * For `Client.connect`: credentials and TLS (issue 17). Default: from the environment
   * (`NATS_NKEY`, `NATS_CREDS`, `NATS_USER`/`NATS_PASSWORD`, `NATS_CA`, ...).
   */
  connection?: Partial<ConnectionOptions>;
  /** `Client.connect`: a NATS credentials file to connect with (the operator's). */
  credsFile?: string;
}

/** Who acts and why (journaled), and an optional id that makes a repeat count once. */
export interface OperatorFields {
  reason: string;
  by: string;
  requestId?: string;
}

/** Raised by `result()` when the workflow failed or was canceled. */
export class WorkflowFailedError extends TerminalError {
  override name = 'WorkflowFailedError';
}

export class Client implements AsyncDisposable {
  private readonly names: TopologyNames;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(
    readonly nc: NatsConnection,
    opts: ClientOptions = {},
    private readonly owned = false,
  ) {
    this.prefix = opts.prefix ?? DEFAULT_PREFIX;
    this.names = topologyNames(this.prefix);
    this.timeoutMs = opts.timeoutMs ?? 10_000;
  }

  /** Connect a new NATS connection owned by this client. */
  static async connect(servers: string | string[], opts: ClientOptions = {}): Promise<Client> {
    const list = typeof servers === 'string' ? servers.split(',') : servers;
    const { nc } = await connectNats(list, 'jetflow-client', {
      ...connectionOptionsFromEnv(),
      ...(opts.credsFile ? credsFileOptions(opts.credsFile) : {}),
      ...opts.connection,
    });
    return new Client(nc, opts, true);
  }

  /** Type and id are subject tokens; anything else would reach no engine (or the wrong one). */
  private check(type: string, id: string): void {
    for (const [what, v] of [
      ['type', type],
      ['id', id],
    ] as const) {
      if (!isToken(v)) {
        throw new BadRequestError(
          `invalid workflow ${what} ${JSON.stringify(v)}: use 1-256 of A-Z a-z 0-9 _ - =`,
          { workflowType: type, workflowId: id },
        );
      }
    }
  }

  /**
   * Run a start, signal or cancel in a client span (`<verb> <type>`) when a tracer provider is
   * registered; its context travels with the request (`traceparent`) into the step.
   */
  private traced<T>(verb: string, type: string, id: string, f: () => Promise<T>): Promise<T> {
    if (!tracingActive()) return f();
    return inSpan(
      `${verb} ${type}`,
      SpanKind.CLIENT,
      context.active(),
      { 'messaging.system': 'nats', 'jetflow.workflow.type': type, 'jetflow.workflow.id': id },
      () => f(),
    );
  }

  private async request<T>(
    subject: string,
    body: unknown,
    extra?: Record<string, string>,
    timeoutMs?: number,
  ): Promise<T> {
    const h = headers();
    h.set(Header.ContentType, JSON_TYPE);
    for (const [k, v] of Object.entries(extra ?? {})) h.set(k, v);
    // W3C trace context of the active span (a no-op without one): the step continues it.
    injectTrace(h);
    const reply = await this.nc.request(
      subject,
      body === undefined ? new Uint8Array() : encodeBody(body),
      {
        timeout: timeoutMs ?? this.timeoutMs,
        headers: h,
      },
    );
    const decoded = decodeBody(reply.data) as { error?: ErrorData; status?: unknown } & T;
    // An error reply carries the `Jf-Error` header. A query reply of a failed workflow also has
    // an `error` field (the workflow's error) but a `status`: that is an answer, not an error.
    if (reply.headers?.get(Header.ErrorCode) || (decoded?.error && decoded.status === undefined)) {
      const e = decoded.error as ErrorData & { accepts?: string[] };
      // `accepts` (event_not_accepted, guard_rejected) travels in the error's details.
      const details = e.accepts ? { ...(e.details as object), accepts: e.accepts } : e.details;
      throw fromErrorData({ ...e, details }, { subject });
    }
    return decoded;
  }

  private schedulesApi: Schedules | undefined;
  private batchesApi: Batches | undefined;

  /**
   * Batches (issue 23): `create` (chunked, resumable submission), `seal`, `status`, `items`,
   * `retryFailed`, `cancel`, `pause`, `resume`. Needs an engine to answer.
   */
  get batches(): Batches {
    this.batchesApi ??= new Batches(
      <R>(subject: string, body: unknown, timeoutMs?: number) =>
        this.request<R>(subject, body, undefined, timeoutMs),
      (verb) => this.names.subjects.batch(verb),
      this.names.subjects.bulkStatus,
    );
    return this.batchesApi;
  }

  /**
   * Scheduled and recurring starts/signals (`create`, `list`, `get`, `pause`, `resume`,
   * `delete`), on the server's own message schedules. Needs no engine to manage; an engine must
   * run for fires to become starts.
   */
  get schedules(): Schedules {
    this.schedulesApi ??= new Schedules(this.nc, this.names);
    return this.schedulesApi;
  }

  /**
   * Start `type/id` with `input`. Idempotent by id: a second start replies `created: false`.
   * `msgId` (e.g. an HTTP `Idempotency-Key`) is the message id the server deduplicates on.
   * `priority` (1 first to 5; default the definition's, else 3) orders the start among its
   * concurrency key's waiters and is its activities' default level.
   */
  async start(
    type: string,
    id: string,
    input?: unknown,
    opts: { msgId?: string | undefined; priority?: number | undefined } = {},
  ): Promise<StartReply> {
    this.check(type, id);
    return await this.traced('start', type, id, () =>
      this.request<StartReply>(
        this.names.subjects.start(type, id),
        opts.priority !== undefined ? { input, priority: opts.priority } : { input },
        opts.msgId ? { [Header.MsgId]: opts.msgId } : undefined,
      ),
    );
  }

  /**
   * Deliver an event. Resolves once applied; rejects with code `event_not_accepted` (and the
   * accepted events in `details`) when the workflow cannot take it now.
   */
  async signal(
    type: string,
    id: string,
    event: { type: string; [k: string]: unknown },
    opts: { msgId?: string } = {},
  ): Promise<SignalReply> {
    this.check(type, id);
    return await this.traced('signal', type, id, () =>
      this.request<SignalReply>(
        this.names.subjects.signal(type, id),
        event,
        opts.msgId ? { [Header.MsgId]: opts.msgId } : undefined,
      ),
    );
  }

  /** Current state of the workflow. */
  async query(type: string, id: string): Promise<QueryReply> {
    this.check(type, id);
    return await this.request(this.names.subjects.query(type, id), undefined);
  }

  /**
   * A query view the workflow's definition declares (`wf.query` with body `{"view", …}`), e.g.
   * an activity tree's `tree`, `nodes` or `node`. Rejects `bad_request` for an unknown view.
   */
  async view<T = unknown>(
    type: string,
    id: string,
    request: { view: string; [k: string]: unknown },
  ): Promise<T> {
    this.check(type, id);
    return await this.request(this.names.subjects.query(type, id), request);
  }

  /**
   * One page of the workflow's journal, oldest first: its steps (event, from → to, effects,
   * snapshot), rejected events, ignored late results and timers. `next` is the `fromStep` of
   * the following page (null at the end). Entries older than the history stream's retention
   * are gone. Rejects with `not_found` when the workflow has neither a record nor a journal.
   */
  async history(type: string, id: string, opts: HistoryRequest = {}): Promise<HistoryReply> {
    this.check(type, id);
    return await this.request(this.names.subjects.history(type, id), opts);
  }

  /** Every journal entry of the workflow from `fromStep` on, page by page. */
  async *historyAll(
    type: string,
    id: string,
    opts: HistoryRequest = {},
  ): AsyncGenerator<JournalEntry> {
    let fromStep: number | null = opts.fromStep ?? 0;
    while (fromStep !== null) {
      const page = await this.history(type, id, { ...opts, fromStep });
      yield* page.entries;
      fromStep = page.next;
    }
  }

  /**
   * Cancel: stops activities and timers; final status `canceled`. A repeat with the same
   * `msgId` is applied once.
   */
  async cancel(
    type: string,
    id: string,
    reason?: string,
    opts: { msgId?: string | undefined } = {},
  ): Promise<SignalReply> {
    this.check(type, id);
    return await this.traced('cancel', type, id, () =>
      this.request<SignalReply>(
        this.names.subjects.cancel(type, id),
        { reason },
        opts.msgId ? { [Header.MsgId]: opts.msgId } : undefined,
      ),
    );
  }

  /**
   * Search the visibility index (`<prefix>.search`, answered by any visibility replica: `jetflow
   * visibility` or `jetflow dev`). Filters are ANDed; pass the reply's `cursor` back for the
   * next page. Bad filters reject with code `bad_request`; no replica running rejects with
   * NATS' no-responders error. The index follows the journal: a step just applied may take a
   * few milliseconds to be visible.
   */
  async search(filters: SearchRequest = {}): Promise<SearchReply> {
    return await this.request(this.names.subjects.search, filters);
  }

  /**
   * Search activity-tree nodes in the visibility index (`<prefix>.search.nodes`, ACTIVITY-TREES
   * §2.9.11): filters `type`, `id`, `status`, `pastStatus`, `name`, `queue` (a value or a list:
   * any of), `since` / `until`, `metadata`; newest `statusSince` first; pass `next` back as
   * `cursor` for the next page. Eventually consistent with the steps, like {@link search}.
   */
  async searchNodes(filters: NodeSearchRequest = {}): Promise<NodeSearchReply> {
    return await this.request(this.names.subjects.searchNodes, filters);
  }

  /** Counts by type, status and state from the visibility index (`<prefix>.search.counts`). */
  async searchCounts(filters: SearchCountsRequest = {}): Promise<SearchCountsReply> {
    return await this.request(this.names.subjects.searchCounts, filters);
  }

  /**
   * An operator action on `<prefix>.admin.<verb>.<type>.<id>` (see the README's admin contract).
   * Resolves with what changed once the workflow's step applied it; a repeat with the same
   * `requestId` is applied once (`duplicate: true`). Errors (unknown workflow, activity not
   * parked, step out of range, paused) reject with their code. A timeout means "unknown": retry
   * with the same `requestId`.
   */
  async admin(
    verb: AdminVerb,
    type: string,
    id: string,
    body: AdminRequest,
    opts: { timeoutMs?: number } = {},
  ): Promise<AdminReply> {
    this.check(type, id);
    return await this.request(
      this.names.subjects.admin(verb, type, id),
      body,
      undefined,
      opts.timeoutMs,
    );
  }

  /** Pause: later messages are held in order, not applied, until `resume`. */
  pause(type: string, id: string, who: OperatorFields): Promise<AdminReply> {
    return this.admin('pause', type, id, who);
  }

  /** Resume: the held messages are applied in inbox order, then new ones. */
  resume(type: string, id: string, who: OperatorFields): Promise<AdminReply> {
    return this.admin('resume', type, id, who);
  }

  /** Dispatch a parked activity again with a fresh attempt budget (`attempts`, default its own). */
  retry(
    type: string,
    id: string,
    actorId: string,
    who: OperatorFields & { attempts?: number },
  ): Promise<AdminReply> {
    return this.admin('retry', type, id, { ...who, actorId });
  }

  /** Deliver a parked activity's done event with `output` (the operator did its work). */
  resolve(
    type: string,
    id: string,
    actorId: string,
    output: unknown,
    who: OperatorFields,
  ): Promise<AdminReply> {
    return this.admin('resolve', type, id, { ...who, actorId, output });
  }

  /** Deliver a parked activity's error event (its last error unless `error` is given). */
  fail(
    type: string,
    id: string,
    actorId: string,
    who: OperatorFields & { error?: AdminRequest['error'] },
  ): Promise<AdminReply> {
    return this.admin('fail', type, id, { ...who, actorId });
  }

  /**
   * A node verb on an activity tree (`retry`, `resolve`, `shutdown`, `cancel`, `prune`; ACTIVITY-
   * TREES §2.7): `<prefix>.admin.<verb>.<type>.<id>` with `nodeId`. The reply's `result.changed`
   * lists every node status change it caused. A node whose status does not allow the verb rejects
   * with `invalid_state` (`details: {nodeId, status, allowed}`); an unknown node with `not_found`;
   * a workflow that is not a tree with `event_not_accepted`. Nothing changes on a rejection.
   */
  node(
    verb: 'retry' | 'resolve' | 'shutdown' | 'cancel' | 'prune',
    type: string,
    id: string,
    nodeId: string,
    who: OperatorFields & { attempts?: number; output?: unknown; decisions?: unknown[] },
  ): Promise<AdminReply> {
    return this.admin(verb, type, id, { ...who, nodeId });
  }

  /** Hold a tree's new dispatches (`pause` with `scope: "dispatch"`): reached nodes wait `paused`. */
  pauseDispatch(type: string, id: string, who: OperatorFields): Promise<AdminReply> {
    return this.admin('pause', type, id, { ...who, scope: 'dispatch' });
  }

  /** Dispatch a tree's `paused` nodes, in seq order, and the ones reached from now on. */
  resumeDispatch(type: string, id: string, who: OperatorFields): Promise<AdminReply> {
    return this.admin('resume', type, id, { ...who, scope: 'dispatch' });
  }

  /** Restore the state after step `toStep` (from the journal) and continue from there. */
  reset(type: string, id: string, toStep: number, who: OperatorFields): Promise<AdminReply> {
    return this.admin('reset', type, id, { ...who, toStep });
  }

  /**
   * Concurrency keys: move deferred workflow `id` to the head of its key's queue (admitted at the
   * next free slot; the limit still holds). Journaled. `not_deferred` when it is not waiting.
   */
  promote(type: string, id: string, who: OperatorFields): Promise<AdminReply> {
    return this.admin('promote', type, id, who);
  }

  /** Concurrency keys: cancel deferred workflow `id` (it leaves the queue), with a reason. */
  skip(type: string, id: string, who: OperatorFields): Promise<AdminReply> {
    return this.admin('skip', type, id, who);
  }

  /**
   * Concurrency keys: free the slot of holder `id` that has ended without freeing it, or whose
   * record is gone (then `key` is needed); the slot goes to the head waiter. Refused with
   * `holder_running` while it runs (cancel or terminate it instead). Journaled; idempotent.
   */
  release(type: string, id: string, who: OperatorFields & { key?: string }): Promise<AdminReply> {
    return this.admin('release', type, id, who);
  }

  /**
   * Concurrency keys of `type` (one key with `key`): holders, and waiters in the order they
   * would be admitted now (priority, aging and fairness applied: the first is position 1), read
   * from the keys bucket. A key nobody holds or waits for has no record.
   */
  async keys(type: string, key?: string): Promise<KeyRecord[]> {
    const kv = await openKeysBucket(this.nc, this.names);
    let recs: KeyRecord[];
    if (key === undefined) {
      recs = await listKeyRecords(kv, type);
    } else {
      const e = await kv.get(`${type}.${keyTokenOf(key)}`);
      recs =
        !e || e.operation !== 'PUT' || e.value.length === 0 ? [] : [unpack(e.value) as KeyRecord];
    }
    const now = Date.now();
    return recs.map((r) => ({ ...r, waiters: waiterOrder(r, now) }));
  }

  /**
   * Why has `type/id` not moved on? The stage that holds it (an operator's pause, its
   * concurrency key, an activity parked for review, a task no worker has taken, a retry's
   * backoff, a running attempt, a child workflow, a timer, an event from outside) and every
   * other thing it awaits, from its record and what the server knows of its tasks. Read-only:
   * it changes nothing. Rejects with `not_found` for an unknown workflow.
   */
  async why(type: string, id: string): Promise<WhyReply> {
    const q = await this.query(type, id);
    return explainWhy(await observeWhy(this.nc, this.names, q));
  }

  /**
   * Live engines, which engine holds each of the `shards` inbox shards and each shard's lag, as
   * `jetflow status` shows them. Engines silent for over `staleAfterMs` are left out. Read-only.
   */
  async status(shards: number, staleAfterMs = 5_000): Promise<SystemStatus> {
    return await systemStatus(this.nc, this.prefix, shards, staleAfterMs);
  }

  /** Activity queues: tasks waiting, in flight and the in-flight limit of each. Read-only. */
  async queues(): Promise<QueueStatus[]> {
    return await queueStatus(this.nc, this.prefix);
  }

  /** End the workflow as `canceled` (also while paused: held messages are dropped). */
  terminate(type: string, id: string, who: OperatorFields): Promise<AdminReply> {
    return this.admin('terminate', type, id, who);
  }

  /**
   * Create a bulk job (`<prefix>.admin.bulk`): apply `verb` to every workflow the search
   * `query` matches now (the list is taken once, at creation), at `ratePerSec` (default 100),
   * each with request id `bulk-<jobId>-<type>-<id>` so that nothing is applied twice even when the
   * job is resumed by another visibility replica after its runner died. `dryRun`: only counts.
   * Bad input (unknown verb, bad filters, missing reason) rejects with `bad_request`; nothing
   * starts. Follow it with {@link followBulk}; read it later with {@link bulkStatus}.
   */
  async bulk(req: BulkRequest, opts: { timeoutMs?: number } = {}): Promise<BulkReply> {
    return await this.request(this.names.subjects.bulk, req, undefined, opts.timeoutMs ?? 60_000);
  }

  /**
   * Operator verbs on triggers. `list`, `parked`, `trace`, `pause`, `resume` are answered by any
   * engine (`<prefix>.admin.triggers.<verb>`); `replay`, `skip`, `rewind` by the engine holding
   * the trigger (`<prefix>.admin.triggers.held.<verb>.<name>`; no responder: no engine holds it).
   */
  async triggers<T = Record<string, unknown>>(
    verb: 'list' | 'parked' | 'trace' | 'pause' | 'resume' | 'replay' | 'skip' | 'rewind',
    body: { name?: string; [k: string]: unknown } = {},
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    const held = verb === 'replay' || verb === 'skip' || verb === 'rewind';
    if (held && !isToken(body.name))
      throw new BadRequestError(`invalid trigger name ${JSON.stringify(body.name)}`);
    const subject = held
      ? this.names.subjects.triggerHeld(verb, body.name!)
      : this.names.subjects.triggerAdmin(verb);
    return await this.request<T>(subject, body, undefined, opts.timeoutMs);
  }

  /**
   * How webhook trigger `name` is checked (published by the engines that declare it in KV bucket
   * `<prefix>_triggers`), or undefined when no engine declares it.
   */
  async webhookConfig(name: string): Promise<WebhookOptions | undefined> {
    if (!isToken(name)) return undefined;
    const kv = await new Kvm(this.nc).open(this.names.triggersBucket);
    const e = await kv.get(`webhook.${name}`);
    if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
    return e.json<WebhookOptions>();
  }

  /**
   * Every declared webhook trigger and how it is checked (for the OpenAPI document of
   * `jetflow http`); empty when no engine declared one.
   */
  async webhookConfigs(): Promise<Record<string, WebhookOptions>> {
    const kv = await new Kvm(this.nc).open(this.names.triggersBucket);
    const out: Record<string, WebhookOptions> = {};
    for await (const k of await kv.keys('webhook.>')) {
      const e = await kv.get(k);
      if (e && e.operation === 'PUT' && e.value.length > 0)
        out[k.slice('webhook.'.length)] = e.json<WebhookOptions>();
    }
    return out;
  }

  /**
   * Store an accepted webhook request durably (stream `<PREFIX>_HOOKS`, subject
   * `<prefix>.hook.<name>`, acknowledged by JetStream), deduplicated by `msgId`; the trigger's
   * holder forwards it from there. `duplicate`: the stream already had it.
   */
  async storeHook(
    name: string,
    body: Uint8Array,
    hdrs: Record<string, string>,
    msgId: string,
  ): Promise<{ seq: number; duplicate: boolean }> {
    const h = headers();
    for (const [k, v] of Object.entries(hdrs)) h.set(k, v);
    const ack = await jetstream(this.nc).publish(this.names.hookSubject(name), body, {
      msgID: msgId,
      headers: h,
      timeout: this.timeoutMs,
    });
    return { seq: ack.seq, duplicate: ack.duplicate };
  }

  /** A bulk job's counters, state and first failures (`<prefix>.admin.bulk.status`). */
  async bulkStatus(jobId: string): Promise<BulkProgress> {
    return await this.request(this.names.subjects.bulkStatus, { jobId });
  }

  /** Cancel a running bulk job where it is; what was applied stays applied. */
  async bulkCancel(jobId: string): Promise<BulkProgress> {
    return await this.request(this.names.subjects.bulkCancel, { jobId });
  }

  /**
   * Follow a bulk job: its status now, then each progress notification that moved it on (the
   * counters only grow), until the job ends (the last one yielded has `state` other than
   * `running`). A notification's `failures` are the failures since the previous one; the
   * status's are the job's first ones. Ends early when `signal` aborts.
   */
  async *followBulk(
    jobId: string,
    opts: { signal?: AbortSignal; pollMs?: number } = {},
  ): AsyncGenerator<BulkProgress> {
    const queue: BulkProgress[] = [];
    let wake: (() => void) | undefined;
    const sub = this.nc.subscribe(this.names.subjects.bulkProgress(jobId), {
      callback: (err, m) => {
        if (err) return;
        try {
          queue.push(decodeBody(m.data) as BulkProgress);
        } catch {
          return;
        }
        wake?.();
      },
    });
    const abort = () => wake?.();
    opts.signal?.addEventListener('abort', abort, { once: true });
    try {
      await this.nc.flush(); // subscribed before the status is read: nothing falls in between
      let last = await this.bulkStatus(jobId);
      yield last;
      const pollMs = opts.pollMs ?? 5_000;
      while (last.state === 'running' && !opts.signal?.aborted) {
        if (queue.length === 0) {
          // A notification is core NATS (at most once): poll the status now and then too.
          const timer = setTimeout(() => wake?.(), pollMs);
          await new Promise<void>((ok) => (wake = ok));
          clearTimeout(timer);
          wake = undefined;
          if (queue.length === 0 && !opts.signal?.aborted) queue.push(await this.bulkStatus(jobId));
        }
        const n = queue.shift();
        if (!n) continue;
        const ended = n.state !== 'running';
        if (n.processed < last.processed || (n.processed === last.processed && !ended)) continue;
        last = n;
        yield n;
      }
    } finally {
      opts.signal?.removeEventListener('abort', abort);
      sub.unsubscribe();
    }
  }

  /**
   * Lifecycle notifications of one workflow, from its first (default) or only new ones. The
   * iterator ends when `signal` aborts or a terminal notification was yielded. `fromStep` skips
   * notifications of earlier steps (the end of a run that a reset undid).
   */
  async *watch(
    type: string,
    id: string,
    opts: { fromStart?: boolean; signal?: AbortSignal; fromStep?: number } = {},
  ): AsyncGenerator<Notification> {
    const js = jetstream(this.nc);
    const consumer = await js.consumers.get(this.names.eventsStream, {
      // One filter as a string: the consumer is created on `CONSUMER.CREATE.<stream>.<name>.<filter>`,
      // which a role's permissions can limit to its workflow types (an array uses a subject without).
      filter_subjects: this.names.subjects.events(type, id),
      deliver_policy: opts.fromStart === false ? DeliverPolicy.New : DeliverPolicy.All,
    });
    const messages = await consumer.consume();
    const abort = () => void messages.close();
    opts.signal?.addEventListener('abort', abort, { once: true });
    // Aborted while the consumer was being set up: the listener above will never fire.
    if (opts.signal?.aborted) abort();
    try {
      for await (const m of messages) {
        let n: Notification;
        try {
          n = m.json<Notification>();
        } catch {
          continue; // not a notification (anyone allowed to publish there could send it)
        }
        if (!n || typeof n !== 'object' || typeof n.type !== 'string' || typeof n.step !== 'number')
          continue;
        // Before `fromStep`: e.g. the end of a run that an operator's reset undid.
        if (opts.fromStep !== undefined && n.step < opts.fromStep) continue;
        if (n.type === 'completed' || n.type === 'failed' || n.type === 'canceled') {
          // An end is believed only as the record tells it (issue 17): a notification is a
          // message anyone allowed to publish on the events subjects could have written.
          const told = await this.endAsRecorded(type, id, n);
          if (!told) continue;
          yield told;
          break;
        }
        yield n;
      }
    } finally {
      opts.signal?.removeEventListener('abort', abort);
      await messages.close();
    }
  }

  /**
   * Follow the workflow's journal live: every entry from the start (or only new ones with
   * `fromStart: false`), in order, until the step that ends the workflow (its last end: a run an
   * operator's reset undid is followed past its end). Each step appears once
   * (a step re-journaled after a crash is skipped by its number). `afterStep: N`: starts at the
   * journal's latest entry, yielded when its step is after N, then every new one; so a reader
   * that has seen the workflow at step N learns that it moved between its read and this call
   * (from the latest of those steps only: read the history for the ones between).
   */
  async *follow(
    type: string,
    id: string,
    opts: { fromStart?: boolean; afterStep?: number; signal?: AbortSignal } = {},
  ): AsyncGenerator<JournalEntry> {
    this.check(type, id);
    const js = jetstream(this.nc);
    const consumer = await js.consumers.get(this.names.historyStream, {
      // One filter as a string: the consumer is created on `CONSUMER.CREATE.<stream>.<name>.<filter>`,
      // which a role's permissions can limit to its workflow types (an array uses a subject without).
      filter_subjects: this.names.subjects.journal(type, id),
      deliver_policy:
        opts.afterStep !== undefined
          ? DeliverPolicy.Last
          : opts.fromStart === false
            ? DeliverPolicy.New
            : DeliverPolicy.All,
    });
    const messages = await consumer.consume();
    const abort = () => void messages.close();
    opts.signal?.addEventListener('abort', abort, { once: true });
    // Aborted while the consumer was being set up: the listener above will never fire.
    if (opts.signal?.aborted) abort();
    const seen = new Set<number>();
    try {
      for await (const m of messages) {
        let e: JournalEntry;
        try {
          e = readEntry(unpack(m.data) as JournalEntry);
        } catch {
          continue;
        }
        if (e.kind === 'step') {
          if (seen.has(e.step)) continue;
          seen.add(e.step);
          if (opts.afterStep !== undefined && e.step <= opts.afterStep) continue;
        }
        yield e;
        if (
          e.kind === 'step' &&
          e.status !== 'running' &&
          e.status !== 'deferred' &&
          (await this.endsHere(type, id, e.step))
        )
          break;
      }
    } finally {
      opts.signal?.removeEventListener('abort', abort);
      await messages.close();
    }
  }

  /**
   * End notification `n` as the workflow's record states it (its output or error from the
   * record), or undefined when the record does not say the workflow ended that way. A workflow
   * whose record is gone (retention) ended: the notification is kept.
   */
  private async endAsRecorded(
    type: string,
    id: string,
    n: Notification,
  ): Promise<Notification | undefined> {
    let q: QueryReply;
    try {
      q = await this.query(type, id);
    } catch (err) {
      if (err instanceof JetflowError && err.code === ErrorCode.NotFound) return n;
      throw err;
    }
    if (q.status !== n.type || q.step < n.step) return undefined;
    if (n.type === 'completed') return { ...n, output: q.output };
    if (n.type === 'failed') return { ...n, error: q.error! };
    return n;
  }

  /**
   * True when the step that finished the workflow is still its last: an operator's reset may
   * have run it again since (the journal then goes on after this end). A workflow whose record
   * is gone (retention) ended here.
   */
  private async endsHere(type: string, id: string, step: number): Promise<boolean> {
    try {
      return (await this.query(type, id)).step <= step;
    } catch (err) {
      if (err instanceof JetflowError && err.code === ErrorCode.NotFound) return true;
      throw err;
    }
  }

  /** Await the workflow's end: its output, or `WorkflowFailedError` when it failed or was canceled. */
  async result<T = unknown>(
    type: string,
    id: string,
    opts: { timeoutMs?: number } = {},
  ): Promise<T> {
    const finished = (q: Pick<QueryReply, 'status' | 'output' | 'error'>): T => {
      if (q.status === 'completed') return q.output as T;
      throw new WorkflowFailedError(
        `workflow ${type}/${id} ${q.status}${q.error ? `: ${q.error.message}` : ''}`,
        {
          code: ErrorCode.MachineError,
          workflowId: id,
          workflowType: type,
          details: q.error,
        },
      );
    };
    const q = await this.query(type, id);
    if (q.status !== 'running' && q.status !== 'deferred') return finished(q);
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), opts.timeoutMs ?? 60_000);
    try {
      // A workflow reset after it ended has the end of its earlier run in its notifications.
      for await (const n of this.watch(type, id, { signal: ac.signal, fromStep: q.step })) {
        if (n.type === 'completed') return n.output as T;
        if (n.type === 'failed')
          return finished({ status: 'failed', output: undefined, error: n.error });
        if (n.type === 'canceled')
          return finished({ status: 'canceled', output: undefined, error: undefined });
      }
    } finally {
      clearTimeout(timer);
    }
    throw new JetflowError(`timed out waiting for ${type}/${id} to finish`, {
      code: ErrorCode.Timeout,
      workflowId: id,
      workflowType: type,
    });
  }

  async close(): Promise<void> {
    if (this.owned) await this.nc.drain().catch(() => undefined);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
