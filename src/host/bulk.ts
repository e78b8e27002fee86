/**
 * The bulk runner, a part of the visibility role: it creates bulk jobs from its replica's index
 * and runs them, one per-workflow admin verb at a time, rate-limited.
 *
 * Why the visibility replicas: a job starts from a search, and a replica owns the index, so the
 * snapshot of matched workflows is read locally in one synchronous pass (no journal entry is
 * applied between its pages: a stable list, even though the actions change the very fields the
 * query matched). Running jobs there also keeps their work off the engines' event loops; the
 * engines only see one admin request per workflow, at the job's rate.
 *
 * Durability: the job and its snapshot live in the `<prefix>_bulk` bucket. The runner holds a
 * job by writing it (compare-and-set) every `checkpointMs` with its cursor and counters; a
 * runner that sees a job's revision unchanged for `leaseMs` (its own clock: no clock skew
 * between processes matters) claims it with a compare-and-set, and the former holder's next
 * write fails, so it stops. A resumed job repeats the workflows at and after the stored cursor
 * with the same request ids (`bulk-<jobId>-<type>-<id>`): each workflow applies the verb once.
 */
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import type { JetStreamManager } from '@nats-io/jetstream';
import { Client } from '../client/index.js';
import type { BatchJobSpec, BulkProgress, BulkReply } from '../contracts/bulk.js';
import type { BatchItem, BatchMeta } from '../contracts/batch.js';
import type { SearchReply } from '../contracts/search.js';
import type { AdminRequest } from '../contracts/wire.js';
import { bulkRequestId, needsActor, parseBulkRequest, type BulkOutcome } from '../engine/bulk.js';
import type { Logger } from '../engine/ports.js';
import {
  BadRequestError,
  ConfigError,
  ErrorCode,
  JetflowError,
  RetryableError,
} from '../errors.js';
import {
  openBulkStore,
  progressOf,
  publishProgress,
  startBulkResponder,
  type BulkJob,
  type BulkStore,
} from '../nats/bulk.js';
import type { TopologyNames } from '../nats/topology.js';
import { BulkJobRefSchema, compile, firstIssue } from '../contracts/schemas.js';
import { runItemJob } from './job-loop.js';

const jobRefCheck = compile(BulkJobRefSchema);

/**
 * What a runner needs to run jobs over a batch's ledger (the engines' `BatchService`): the walk,
 * the action on one ledger entry, and the bookkeeping after a page and at the end.
 */
export interface BatchJobRunner {
  meta(id: string): Promise<{ meta: BatchMeta } | undefined>;
  walkJob(
    spec: BatchJobSpec,
    fromSeq: number,
    onPage: (page: [number, BatchItem][], lastSeq: number) => Promise<boolean>,
  ): Promise<void>;
  jobAct(spec: BatchJobSpec, meta: BatchMeta, item: BatchItem, seq?: number): Promise<boolean>;
  jobPage(spec: BatchJobSpec, leftPending: number): Promise<void>;
  jobDone(spec: BatchJobSpec): Promise<void>;
}

export interface BulkRunnerOptions {
  nc: NatsConnection;
  jsm: JetStreamManager;
  names: TopologyNames;
  logger: Logger;
  /** This runner's name in job claims (unique per process). */
  owner: string;
  /**
   * One page of the local index (synchronous: the snapshot is taken in one pass). Absent (an
   * engine): the runner does not create or run search jobs, only batch jobs.
   */
  search?(query: Record<string, unknown>): SearchReply;
  /** Validate search filters as `<prefix>.search` does (with `search`). */
  checkQuery?(query: Record<string, unknown>): void;
  /** Run jobs over batch ledgers (engines); absent: such jobs are left to the engines. */
  batches?: BatchJobRunner;
  /** The jobs bucket, when the caller opened it already. */
  store?: BulkStore;
  /** Items a batch job acts on at once (default 128). */
  batchConcurrency?: number;
  /** A job whose record did not change for this long is claimed by another runner (default 5 s). */
  leaseMs?: number;
  /** How often a running job's cursor is stored and progress published (default 500 ms). */
  checkpointMs?: number;
  /** How often the bucket is scanned for jobs to claim (default 1 s). */
  scanMs?: number;
  /** Most workflows one job may match (default 1,000,000). */
  maxMatched?: number;
  /** Replicas of the jobs bucket when this runner creates it (default 1). */
  replicas?: number;
  /** Timeout of each per-workflow request (default 10 s). */
  requestTimeoutMs?: number;
}

export const BULK_DEFAULTS = Object.freeze({
  batchConcurrency: 128,
  leaseMs: 5_000,
  checkpointMs: 500,
  scanMs: 1_000,
  maxMatched: 1_000_000,
  requestTimeoutMs: 10_000,
});

const sleep = (ms: number) => new Promise<void>((ok) => setTimeout(ok, ms));
const iso = (t = Date.now()) => new Date(t).toISOString();

/** Attempts of one per-workflow request on a retryable error (timeout, no engine answering). */
const ATTEMPTS = 6;

function isRetryable(err: unknown): boolean {
  if (err instanceof JetflowError) return err instanceof RetryableError;
  return true; // NATS timeout, no responders, connection: the request id makes a repeat safe
}

interface Running {
  stop(): void;
  done: Promise<void>;
}

export class BulkRunner {
  private readonly running = new Map<string, Running>();
  /** Last revision seen of each job not held here, and when it was first seen (local clock). */
  private readonly seen = new Map<string, { revision: number; since: number }>();
  /** Jobs seen in an end state (a job never runs again once ended): not read again by scans. */
  private readonly ended = new Set<string>();
  private scanner: NodeJS.Timeout | undefined;
  private scanning: Promise<void> = Promise.resolve();
  private responder: { stop(): Promise<void> } | undefined;
  private stopped = false;
  private readonly client: Client;
  private readonly o: Required<
    Omit<BulkRunnerOptions, 'replicas' | 'search' | 'checkQuery' | 'batches' | 'store'>
  > &
    Pick<BulkRunnerOptions, 'search' | 'checkQuery' | 'batches'>;

  private constructor(
    o: BulkRunnerOptions,
    private readonly store: BulkStore,
  ) {
    this.o = { ...BULK_DEFAULTS, ...o };
    this.client = new Client(o.nc, {
      prefix: o.names.subjects.prefix,
      timeoutMs: this.o.requestTimeoutMs,
    });
  }

  /** Open the jobs bucket, answer the bulk subjects, and start claiming jobs. */
  static async start(o: BulkRunnerOptions): Promise<BulkRunner> {
    for (const k of [
      'leaseMs',
      'checkpointMs',
      'scanMs',
      'maxMatched',
      'requestTimeoutMs',
    ] as const) {
      const v = o[k];
      if (v !== undefined && !(Number.isFinite(v) && v > 0)) {
        throw new ConfigError(`bulk ${k} must be a number > 0 (got ${String(v)})`);
      }
    }
    const lease = o.leaseMs ?? BULK_DEFAULTS.leaseMs;
    if ((o.checkpointMs ?? BULK_DEFAULTS.checkpointMs) * 2 > lease) {
      throw new ConfigError('bulk checkpointMs must be at most half of leaseMs');
    }
    const store =
      o.store ?? (await openBulkStore(o.nc, o.jsm, o.names, { replicas: o.replicas ?? 1 }));
    const r = new BulkRunner(o, store);
    r.responder = startBulkResponder(
      o.nc,
      o.names,
      {
        ...(o.search ? { create: (b: unknown) => r.create(b) } : {}),
        status: (b) => r.status(b),
        cancel: (b) => r.cancel(b),
      },
      o.logger,
    );
    r.scanner = setInterval(() => {
      r.scanning = r.scanning.then(() => r.scan());
    }, r.o.scanMs);
    r.scanner.unref();
    r.scanning = r.scan();
    return r;
  }

  /** `<prefix>.admin.bulk`: validate, snapshot the matches, store the job, run it here. */
  async create(body: unknown): Promise<BulkReply> {
    const { search, checkQuery } = this.o;
    if (!search || !checkQuery) {
      throw new BadRequestError(
        'this runner has no search index: bulk jobs are created by visibility replicas',
      );
    }
    const req = parseBulkRequest(body, checkQuery);
    // One synchronous pass over the index: nothing changes it between pages.
    const ids: [string, string][] = [];
    let cursor: string | null | undefined;
    do {
      const page = search({
        ...req.query,
        limit: 1_000,
        ...(cursor ? { cursor } : {}),
      });
      for (const w of page.workflows) ids.push([w.type, w.id]);
      cursor = page.cursor;
      if (ids.length > this.o.maxMatched) {
        throw new BadRequestError(
          `the query matches more than ${this.o.maxMatched} workflows: narrow it (or split the job)`,
          { details: { field: 'query', limit: this.o.maxMatched } },
        );
      }
    } while (cursor);
    const jobId = nuid.next();
    const now = iso();
    const job: BulkJob = {
      v: 1,
      jobId,
      request: req,
      chunks: 0,
      state: req.dryRun ? 'completed' : 'running',
      counters: { matched: ids.length, processed: 0, done: 0, failed: 0, skipped: 0 },
      failures: [],
      runs: req.dryRun ? 0 : 1,
      createdAt: now,
      updatedAt: now,
      ...(req.dryRun ? { finishedAt: now } : { owner: this.o.owner }),
    };
    if (req.dryRun) {
      await this.store.create(job);
      publishProgress(this.o.nc, this.o.names, progressOf(job, []));
      return {
        jobId,
        matched: ids.length,
        dryRun: true,
        sample: ids.slice(0, 20).map(([type, id]) => ({ type, id })),
      };
    }
    job.chunks = await this.store.putIds(jobId, ids);
    const revision = await this.store.create(job);
    this.o.logger.info(
      { jobId, verb: req.verb, matched: ids.length, ratePerSec: req.ratePerSec },
      'bulk job created',
    );
    this.run(job, revision);
    return { jobId, matched: ids.length, dryRun: false };
  }

  private jobIdOf(body: unknown): string {
    const b = body ?? {};
    if (!jobRefCheck.Check(b)) {
      const i = firstIssue(jobRefCheck, b)!;
      throw new BadRequestError('the body must be {"jobId": "<id of a bulk job>"}', {
        details: { field: i.field || 'jobId', why: i.why },
      });
    }
    return b.jobId;
  }

  private async load(body: unknown) {
    const jobId = this.jobIdOf(body);
    const got = await this.store.get(jobId);
    if (!got) {
      throw new BadRequestError(`no bulk job ${jobId}`, { code: ErrorCode.NotFound });
    }
    return got;
  }

  /** `<prefix>.admin.bulk.status`: the job's counters and its first failures. */
  async status(body: unknown): Promise<BulkProgress> {
    return progressOf((await this.load(body)).job);
  }

  /** `<prefix>.admin.bulk.cancel`: stop a running job where it is (what was done stays done). */
  async cancel(body: unknown): Promise<BulkProgress> {
    for (;;) {
      const { job, revision } = await this.load(body);
      if (job.state !== 'running') return progressOf(job);
      const now = iso();
      const next: BulkJob = { ...job, state: 'canceled', updatedAt: now, finishedAt: now };
      delete next.owner;
      try {
        await this.store.update(next, revision);
      } catch {
        continue; // its runner wrote a checkpoint meanwhile: read again
      }
      publishProgress(this.o.nc, this.o.names, progressOf(next, []));
      await this.store.dropIds(job.jobId, job.chunks);
      return progressOf(next);
    }
  }

  /** Claim running jobs nobody holds: new, released, or unchanged for `leaseMs`. */
  private async scan(): Promise<void> {
    if (this.stopped) return;
    try {
      const now = Date.now();
      const ids = await this.store.jobIds();
      const listed = new Set(ids);
      for (const jobId of this.ended) if (!listed.has(jobId)) this.ended.delete(jobId);
      for (const jobId of ids) {
        if (this.stopped) return;
        if (this.running.has(jobId) || this.ended.has(jobId)) continue;
        const got = await this.store.get(jobId);
        if (got && got.job.state !== 'running') this.ended.add(jobId);
        // A migration job is run by the `jetflow migrate` command that holds it (it has the
        // definitions and the map): never claimed here.
        if (!got || got.job.state !== 'running' || got.job.request.migration) {
          this.seen.delete(jobId);
          continue;
        }
        // Batch jobs run where the batches are (engines), search jobs where the index is.
        if (got.job.batch ? !this.o.batches : !this.o.search) continue;
        const prev = this.seen.get(jobId);
        if (!prev || prev.revision !== got.revision) {
          this.seen.set(jobId, { revision: got.revision, since: now });
          if (got.job.owner !== undefined) continue;
        } else if (got.job.owner !== undefined && now - prev.since < this.o.leaseMs) {
          continue;
        }
        const claimed: BulkJob = {
          ...got.job,
          owner: this.o.owner,
          runs: got.job.runs + 1,
          updatedAt: iso(),
        };
        let revision: number;
        try {
          revision = await this.store.update(claimed, got.revision);
        } catch {
          continue; // another runner claimed it first
        }
        this.seen.delete(jobId);
        this.o.logger.info(
          { jobId, from: got.job.owner ?? null, cursor: got.job.counters.processed },
          'bulk job claimed',
        );
        this.run(claimed, revision);
      }
    } catch (err) {
      this.o.logger.warn({ err }, 'bulk scan failed');
    }
  }

  private run(job: BulkJob, revision: number): void {
    let stop = false;
    let wake: (() => void) | undefined;
    const done = (
      job.batch
        ? this.executeBatch(job, job.batch, revision, () => stop)
        : this.execute(
            job,
            revision,
            () => stop,
            (w) => (wake = w),
          )
    )
      .catch((err: unknown) => this.o.logger.error({ err, jobId: job.jobId }, 'bulk job failed'))
      .finally(() => this.running.delete(job.jobId));
    this.running.set(job.jobId, {
      stop: () => {
        stop = true;
        wake?.();
      },
      done,
    });
  }

  /** Act on the job's workflows from its cursor on; checkpoint; finish (`runItemJob`). */
  private async execute(
    job: BulkJob,
    startRevision: number,
    stopping: () => boolean,
    onWake: (w: () => void) => void,
  ): Promise<void> {
    const { end, counters } = await runItemJob({
      job,
      revision: startRevision,
      store: this.store,
      owner: this.o.owner,
      checkpointMs: this.o.checkpointMs,
      logger: this.o.logger,
      label: 'bulk job',
      act: (type, id) => this.act(job.jobId, job.request, type, id),
      stopping,
      onWake,
      onCheckpoint: (p) => publishProgress(this.o.nc, this.o.names, p),
    });
    if (end === 'completed')
      this.o.logger.info({ jobId: job.jobId, ...counters }, 'bulk job completed');
  }

  /** Look for jobs to claim now (a job was just stored here). */
  kick(): void {
    if (this.stopped) return;
    this.scanning = this.scanning.then(() => this.scan());
  }

  /**
   * A job over a batch's ledger: walk it from the stored sequence, act on each page's entries
   * (`batchConcurrency` at once), checkpoint the sequence after a page; finish with the batch's
   * bookkeeping. An action that keeps failing stops the run where the checkpoint is: the job
   * stays `running` and is claimed again after `leaseMs` (every action is idempotent).
   */
  private async executeBatch(
    job: BulkJob,
    spec: BatchJobSpec,
    startRevision: number,
    stopping: () => boolean,
  ): Promise<void> {
    const b = this.o.batches!;
    const { jobId } = job;
    let revision = startRevision;
    let fenced = false;
    const counters = { ...job.counters };
    let seq = spec.seq;
    const write = async (state: BulkJob['state']): Promise<boolean> => {
      if (fenced) return false;
      const now = iso();
      const next: BulkJob = {
        ...job,
        state,
        counters: { ...counters },
        batch: { ...spec, seq },
        owner: this.o.owner,
        updatedAt: now,
        ...(state !== 'running' ? { finishedAt: now } : {}),
      };
      if (state !== 'running') delete next.owner;
      try {
        revision = await this.store.update(next, revision);
      } catch (err) {
        const latest = await this.store.get(jobId).catch(() => undefined);
        if (latest && latest.revision !== revision) {
          fenced = true;
          this.o.logger.warn(
            { jobId, state: latest.job.state },
            'batch job taken over or canceled; stopping',
          );
        } else this.o.logger.warn({ err, jobId }, 'batch job checkpoint not stored');
        return false;
      }
      publishProgress(this.o.nc, this.o.names, progressOf(next, []));
      return true;
    };
    const got = await b.meta(spec.id);
    if (got) {
      const meta = got.meta;
      const width = this.o.batchConcurrency;
      let last = Date.now();
      await b.walkJob(spec, seq, async (page, lastSeq) => {
        if (stopping() || fenced) return false;
        let left = 0;
        for (let i = 0; i < page.length; i += width) {
          await Promise.all(
            page.slice(i, i + width).map(async ([itemSeq, it]) => {
              const did = await this.retrying(() => b.jobAct(spec, meta, it, itemSeq));
              if (did) counters.done++;
              else counters.skipped++;
              if (did && it.status === 'pending') left++;
            }),
          );
        }
        await this.retrying(() => b.jobPage(spec, left));
        counters.processed += page.length;
        seq = lastSeq;
        if (Date.now() - last >= this.o.checkpointMs) {
          last = Date.now();
          await write('running');
        }
        return !stopping() && !fenced;
      });
    }
    if (fenced) return;
    if (stopping()) {
      if (await write('running')) {
        const cur = await this.store.get(jobId);
        if (cur && cur.job.owner === this.o.owner) {
          const free: BulkJob = { ...cur.job };
          delete free.owner;
          await this.store.update(free, cur.revision).catch(() => undefined);
        }
      }
      return;
    }
    await this.retrying(() => b.jobDone(spec));
    for (let i = 0; i < 5 && !(await write('completed')); i++) {
      if (fenced) return;
      await sleep(200);
    }
    this.o.logger.info(
      { jobId, batch: spec.id, verb: spec.verb, ...counters },
      'batch job completed',
    );
  }

  /** Apply the job's verb to one workflow; never throws. */
  private async act(
    jobId: string,
    req: BulkJob['request'],
    type: string,
    id: string,
  ): Promise<BulkOutcome> {
    const body: AdminRequest = { reason: req.reason, by: req.by };
    if (req.attempts !== undefined) body.attempts = req.attempts;
    if ('output' in req) body.output = req.output;
    if (req.error !== undefined) body.error = req.error;
    if (req.toStep !== undefined) body.toStep = req.toStep;
    try {
      if (needsActor(req.verb) && req.actorId === undefined) {
        const q = await this.retrying(() => this.client.query(type, id));
        const parked = q.needsReview ?? [];
        if (parked.length === 0) return { kind: 'skipped' };
        for (const p of parked) {
          await this.retrying(() =>
            this.client.admin(req.verb, type, id, {
              ...body,
              actorId: p.actorId,
              requestId: bulkRequestId(jobId, type, id, p.actorId),
            }),
          );
        }
        return { kind: 'done' };
      }
      await this.retrying(() =>
        this.client.admin(req.verb, type, id, {
          ...body,
          ...(req.actorId !== undefined ? { actorId: req.actorId } : {}),
          requestId: bulkRequestId(jobId, type, id),
        }),
      );
      return { kind: 'done' };
    } catch (err) {
      const code = err instanceof JetflowError ? err.code : 'unavailable';
      return { kind: 'failed', code, message: String((err as Error)?.message ?? err) };
    }
  }

  /** A request repeated on a retryable error (its request id makes the repeat safe). */
  private async retrying<T>(f: () => Promise<T>): Promise<T> {
    for (let i = 1; ; i++) {
      try {
        return await f();
      } catch (err) {
        if (!isRetryable(err) || i >= ATTEMPTS || this.stopped) throw err;
        await sleep(Math.min(5_000, 200 * 2 ** (i - 1)));
      }
    }
  }

  /** Stop answering and claiming; running jobs store their cursor and are released. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.scanner);
    await this.responder?.stop();
    await this.scanning.catch(() => undefined);
    for (const r of this.running.values()) r.stop();
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }
}
