/**
 * NATS side of bulk operator jobs: the jobs bucket (`<prefix>_bulk`) and the responders of
 * `<prefix>.admin.bulk`, `<prefix>.admin.bulk.status` and `<prefix>.admin.bulk.cancel`.
 *
 * Keys: `jobs.<jobId>` — the job (request, claim, cursor, counters), every change a
 * compare-and-set on the revision read, so a runner that lost its claim cannot write; and
 * `ids.<jobId>.<n>` — the snapshot of matched workflows, chunks of {@link BULK_CHUNK} `[type, id]`.
 */
import { StorageType, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { headers, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import {
  decodeRequestBody,
  encodeBody,
  encodingOf,
  JSON_TYPE,
  MSGPACK,
  pack,
  unpack,
  type BodyEncoding,
} from '../contracts/codec.js';
import type {
  BatchJobSpec,
  BulkCounters,
  BulkFailure,
  BulkJobState,
  BulkProgress,
  BulkRequest,
} from '../contracts/bulk.js';
import { Header } from '../contracts/wire.js';
import {
  BadRequestError,
  ErrorCode,
  JetflowError,
  RetryableError,
  toErrorData,
} from '../errors.js';
import type { Logger } from '../engine/ports.js';
import type { TopologyNames } from './topology.js';

/** Workflows per chunk of a job's snapshot. */
export const BULK_CHUNK = 1_000;
/** Jobs and their snapshots leave the bucket this long after their last write. */
export const BULK_RETENTION_MS = 30 * 24 * 3_600_000;

/** A job as stored under `jobs.<jobId>`. */
export interface BulkJob {
  v: 1;
  jobId: string;
  request: BulkRequest & { ratePerSec: number; dryRun: boolean };
  chunks: number;
  state: BulkJobState;
  counters: BulkCounters;
  /** The first failures (all of them went out in notifications). */
  failures: BulkFailure[];
  /** The runner that holds the job; absent: free to claim. */
  owner?: string;
  runs: number;
  createdAt: string;
  updatedAt: string;
  finishedAt?: string;
  /** A job over a batch's ledger (run by the engines), not over a search snapshot. */
  batch?: BatchJobSpec;
}

export function progressOf(job: BulkJob, failures: BulkFailure[] = job.failures): BulkProgress {
  return {
    jobId: job.jobId,
    verb: job.request.verb,
    state: job.state,
    dryRun: job.request.dryRun,
    ratePerSec: job.request.ratePerSec,
    ...job.counters,
    createdAt: job.createdAt,
    updatedAt: job.updatedAt,
    ...(job.finishedAt ? { finishedAt: job.finishedAt } : {}),
    failures,
    runs: job.runs,
    ...(job.owner !== undefined ? { owner: job.owner } : {}),
    ...(job.batch ? { batch: { id: job.batch.id, verb: job.batch.verb } } : {}),
  };
}

export interface BulkStore {
  create(job: BulkJob): Promise<number>;
  get(jobId: string): Promise<{ job: BulkJob; revision: number } | undefined>;
  /** Compare-and-set on `revision`; throws when the job changed since (another runner, a cancel). */
  update(job: BulkJob, revision: number): Promise<number>;
  jobIds(): Promise<string[]>;
  putIds(jobId: string, ids: readonly (readonly [string, string])[]): Promise<number>;
  chunk(jobId: string, n: number): Promise<[string, string][]>;
  dropIds(jobId: string, chunks: number): Promise<void>;
}

/** Open (creating it when missing) the jobs bucket. */
export async function openBulkStore(
  nc: NatsConnection,
  jsm: JetStreamManager,
  names: TopologyNames,
  o: { replicas?: number } = {},
): Promise<BulkStore> {
  const stream = `KV_${names.bulkBucket}`;
  const exists = await jsm.streams.info(stream).then(
    () => true,
    () => false,
  );
  const kvm = new Kvm(nc);
  // Read from the stream leader: a claim decided on a lagging replica's copy could be stale.
  const kv: KV = exists
    ? await kvm.open(names.bulkBucket)
    : await kvm.create(names.bulkBucket, {
        history: 1,
        replicas: o.replicas ?? 1,
        storage: StorageType.File,
        allow_direct: false,
        ttl: BULK_RETENTION_MS,
      });
  const jobKey = (j: string) => `jobs.${j}`;
  return {
    async create(job) {
      return await kv.create(jobKey(job.jobId), pack(job));
    },
    async get(jobId) {
      const e = await kv.get(jobKey(jobId));
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      return { job: unpack(e.value) as BulkJob, revision: e.revision };
    },
    async update(job, revision) {
      return await kv.update(jobKey(job.jobId), pack(job), revision);
    },
    async jobIds() {
      const out: string[] = [];
      for await (const k of await kv.keys('jobs.*')) out.push(k.slice('jobs.'.length));
      return out;
    },
    async putIds(jobId, ids) {
      let n = 0;
      for (let i = 0; i < ids.length; i += BULK_CHUNK, n++) {
        await kv.put(`ids.${jobId}.${n}`, pack(ids.slice(i, i + BULK_CHUNK)));
      }
      return n;
    },
    async chunk(jobId, n) {
      const e = await kv.get(`ids.${jobId}.${n}`);
      if (!e || e.operation !== 'PUT') {
        throw new RetryableError(`bulk job ${jobId}: chunk ${n} of its workflow list is missing`, {
          code: ErrorCode.Internal,
        });
      }
      return unpack(e.value) as [string, string][];
    },
    async dropIds(jobId, chunks) {
      for (let n = 0; n < chunks; n++) await kv.purge(`ids.${jobId}.${n}`).catch(() => undefined);
    },
  };
}

/** Publish a progress notification (core NATS; `status` is the durable view). */
export function publishProgress(nc: NatsConnection, names: TopologyNames, p: BulkProgress): void {
  const h = headers();
  h.set(Header.ContentType, JSON_TYPE);
  nc.publish(names.subjects.bulkProgress(p.jobId), encodeBody(p), { headers: h });
}

export interface BulkHandlers {
  /** Absent on a runner without a search index (an engine): it answers status and cancel only. */
  create?(body: unknown): Promise<unknown>;
  status(body: unknown): Promise<unknown>;
  cancel(body: unknown): Promise<unknown>;
}

/** Queue group of the bulk responders of a prefix. */
export function bulkQueue(names: TopologyNames): string {
  return `${names.subjects.prefix}-bulk`;
}

/** One subject of a {@link startResponder}: `answer` gets the decoded body and the subject. */
export interface ResponderRoute {
  subject: string;
  answer(body: unknown, subject: string): Promise<unknown>;
}

/**
 * Answer request subjects in a queue group: decode the body (JSON, or msgpack by
 * `Content-Type`), reply in the same encoding; errors are replies (`Jf-Error` header, `{error}`
 * body) and nothing a requester sends stops the responder. `stop()` drains the subscriptions and
 * waits for the answers in flight. Shared by the bulk and the batch subjects.
 */
export function startResponder(
  nc: NatsConnection,
  o: { queue: string; routes: ResponderRoute[]; what: string },
  logger: Logger,
): { stop(): Promise<void> } {
  const inflight = new Set<Promise<void>>();
  const reply = (m: Msg, enc: BodyEncoding, body: unknown, errorCode?: string) => {
    const h = headers();
    h.set(Header.ContentType, enc === 'msgpack' ? MSGPACK : JSON_TYPE);
    if (errorCode) h.set(Header.ErrorCode, errorCode);
    try {
      m.respond(encodeBody(body, enc), { headers: h });
    } catch (err) {
      logger.warn({ err, subject: m.subject }, `${o.what} reply not sent`);
    }
  };
  const handle = (route: ResponderRoute) => (err: Error | null, m: Msg) => {
    if (err) return logger.error({ err }, `${o.what} subscription error`);
    if (!m.reply) return;
    const enc = encodingOf(m.headers?.get(Header.ContentType));
    const p = (async () => {
      try {
        const body = decodeRequestBody(m.data, enc, { subject: m.subject });
        reply(m, enc, await route.answer(body, m.subject));
      } catch (e) {
        const je =
          e instanceof JetflowError
            ? e
            : new RetryableError(
                `${o.what} request failed: ${String((e as Error)?.message ?? e)}`,
                { code: ErrorCode.Internal, cause: e },
              );
        if (!(je instanceof BadRequestError))
          logger.warn({ err: e, subject: m.subject }, `${o.what} request failed`);
        reply(m, enc, { error: toErrorData(je) }, je.code);
      }
    })();
    inflight.add(p);
    void p.finally(() => inflight.delete(p));
  };
  const subs: Subscription[] = o.routes.map((r) =>
    nc.subscribe(r.subject, { queue: o.queue, callback: handle(r) }),
  );
  return {
    async stop() {
      await Promise.all(subs.map((x) => x.drain().catch(() => undefined)));
      await Promise.allSettled([...inflight]);
    },
  };
}

/** Answer the bulk subjects in the queue group `<prefix>-bulk`. */
export function startBulkResponder(
  nc: NatsConnection,
  names: TopologyNames,
  handlers: BulkHandlers,
  logger: Logger,
): { stop(): Promise<void> } {
  const s = names.subjects;
  const routes: ResponderRoute[] = [
    { subject: s.bulkStatus, answer: (b) => handlers.status(b) },
    { subject: s.bulkCancel, answer: (b) => handlers.cancel(b) },
  ];
  const create = handlers.create?.bind(handlers);
  if (create) routes.push({ subject: s.bulk, answer: (b) => create(b) });
  return startResponder(nc, { queue: bulkQueue(names), routes, what: 'bulk' }, logger);
}
