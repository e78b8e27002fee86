/**
 * The migration runner of `jetflow migrate --apply` and `--revert <job>`: a bulk job (stored in
 * the `<prefix>_bulk` bucket with its cursor and counters, like the operator bulk jobs of
 * `src/host/bulk.ts`) that the migrate command runs itself, because it holds what the job needs:
 * the definitions and the map (a function cannot be stored in a job).
 *
 * Per workflow: read its record, plan its new snapshot (`src/engine/migrate.ts`), and send the
 * admin verb `migrate` with the step the plan was made from. The workflow's own step applies it,
 * in inbox order with its signals, only if nothing came first (else `conflict`: read and plan
 * again), and marks the record with the job id, so a repeat (a retry after a timeout, an engine
 * that died after writing, a resumed job) is recognised: each workflow is moved once per job.
 *
 * Durability: the runner holds its job by writing it (compare-and-set) every `checkpointMs`; a
 * runner that dies leaves it `running` with its cursor, and `jetflow migrate --resume <job>`
 * claims it once its revision stayed unchanged for `leaseMs`, then goes on from the cursor. The
 * workflows at and after the cursor are planned again from their records: those the job moved
 * already carry its mark and count as done.
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { Client } from '../client/index.js';
import type { BulkFailure, BulkProgress, MigrationJobSpec } from '../contracts/bulk.js';
import type { AdminRequest, WorkflowRecord } from '../contracts/wire.js';
import type { BulkOutcome } from '../engine/bulk.js';
import {
  checkSnapshot,
  invertStates,
  planMigration,
  type MigrationMap,
} from '../engine/migrate.js';
import type { Logger } from '../engine/ports.js';
import type { WorkflowDefinition } from '../engine/registry.js';
import { BadRequestError, ConfigError, ErrorCode, JetflowError } from '../errors.js';
import { publishProgress, type BulkJob } from '../nats/bulk.js';
import { connectNats } from '../nats/connection.js';
import { runItemJob } from './job-loop.js';
import { openMigrationPorts, type MigrationPorts } from '../nats/migrate.js';
import { topologyNames, type TopologyNames } from '../nats/topology.js';

export interface MigrationRunnerOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  names: TopologyNames;
  logger: Logger;
  /** This runner's name in job claims (unique per process). */
  owner: string;
  /** The definitions (the versions moved to and, for a revert, from). */
  defs: readonly WorkflowDefinition[];
  map?: MigrationMap;
  /** A job whose record did not change for this long may be resumed by another runner (5 s). */
  leaseMs?: number;
  /** How often the cursor is stored and progress published (default 500 ms). */
  checkpointMs?: number;
  /** Timeout of each per-workflow request (default 10 s). */
  requestTimeoutMs?: number;
  /** Give up on one workflow after this long without an answer (default 120 s). */
  itemBudgetMs?: number;
  /** Called with each stored checkpoint and the failures since the previous one. */
  onProgress?: (p: BulkProgress, fresh: BulkFailure[]) => void;
}

const DEFAULTS = Object.freeze({
  leaseMs: 5_000,
  checkpointMs: 500,
  requestTimeoutMs: 10_000,
  itemBudgetMs: 120_000,
});

/** What the runner counts beyond the job's counters (this run only). */
export interface MigrationRunStats {
  /** Sends refused with `conflict` (a message came first) and planned again. */
  replanned: number;
  /** Requests repeated after a timeout or with no engine answering. */
  retried: number;
}

const sleep = (ms: number) => new Promise<void>((ok) => setTimeout(ok, ms));
const iso = (t = Date.now()) => new Date(t).toISOString();

/** What to do with one workflow, from its record. */
type Target =
  | { kind: 'skip' }
  | { kind: 'fail'; code: string; message: string }
  | { kind: 'send'; version: number; snapshot: unknown };

export class MigrationRunner {
  readonly stats: MigrationRunStats = { replanned: 0, retried: 0 };
  private readonly client: Client;
  private readonly o: Required<Omit<MigrationRunnerOptions, 'map' | 'onProgress'>> &
    Pick<MigrationRunnerOptions, 'map' | 'onProgress'>;
  private stopped = false;
  private wake: (() => void) | undefined;

  private constructor(
    o: MigrationRunnerOptions,
    private readonly ports: MigrationPorts,
  ) {
    this.o = { ...DEFAULTS, ...o };
    this.client = new Client(o.nc, {
      prefix: o.names.subjects.prefix,
      timeoutMs: this.o.requestTimeoutMs,
    });
  }

  static async open(o: MigrationRunnerOptions): Promise<MigrationRunner> {
    for (const k of ['leaseMs', 'checkpointMs', 'requestTimeoutMs', 'itemBudgetMs'] as const) {
      const v = o[k];
      if (v !== undefined && !(Number.isFinite(v) && v > 0)) {
        throw new ConfigError(`migrate ${k} must be a number > 0 (got ${String(v)})`);
      }
    }
    return new MigrationRunner(o, await openMigrationPorts(o.nc, o.js, o.jsm, o.names));
  }

  /** Connect to `servers` and open a runner for `prefix`; `close()` stops it and disconnects. */
  static async connect(
    servers: readonly string[],
    prefix: string,
    o: Omit<MigrationRunnerOptions, 'nc' | 'js' | 'jsm' | 'names'>,
  ): Promise<{ runner: MigrationRunner; close: () => Promise<void> }> {
    const { nc, js, jsm } = await connectNats(servers, `jetflow-migrate-${o.owner}`);
    try {
      const runner = await MigrationRunner.open({
        ...o,
        nc,
        js,
        jsm,
        names: topologyNames(prefix),
      });
      return {
        runner,
        close: async () => {
          runner.stop();
          await nc.drain().catch(() => nc.close());
        },
      };
    } catch (err) {
      await nc.close();
      throw err;
    }
  }

  private def(type: string, version: number): WorkflowDefinition | undefined {
    return this.o.defs.find((d) => d.type === type && d.version === version);
  }

  /** The workflows a job acts on: every running record that `keep` takes, in key order. */
  private async select(keep: (r: WorkflowRecord) => boolean): Promise<[string, string][]> {
    // A record written while the scan runs can be read twice (its old and new revision): the
    // last one read decides.
    const byKey = new Map<string, WorkflowRecord>();
    await this.ports.scan((r) => byKey.set(`${r.type}.${r.id}`, r));
    const ids: [string, string][] = [];
    for (const r of byKey.values()) if (keep(r)) ids.push([r.type, r.id]);
    return ids.sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  }

  /** Store a new job over `ids`, held by this runner. */
  private async store(
    spec: MigrationJobSpec,
    who: { reason: string; by: string; ratePerSec: number },
    ids: [string, string][],
  ): Promise<{ job: BulkJob; revision: number }> {
    const jobId = nuid.next();
    const now = iso();
    const job: BulkJob = {
      v: 1,
      jobId,
      request: {
        verb: 'migrate',
        query: { type: spec.type },
        reason: who.reason,
        by: who.by,
        dryRun: false,
        ratePerSec: who.ratePerSec,
        migration: spec,
      },
      chunks: 0,
      state: 'running',
      counters: { matched: ids.length, processed: 0, done: 0, failed: 0, skipped: 0 },
      failures: [],
      owner: this.o.owner,
      runs: 1,
      createdAt: now,
      updatedAt: now,
    };
    job.chunks = await this.ports.jobs.putIds(jobId, ids);
    const revision = await this.ports.jobs.create(job);
    this.o.logger.info(
      { jobId, type: spec.type, to: spec.to, matched: ids.length, revertOf: spec.revertOf },
      'migration job created',
    );
    return { job, revision };
  }

  /** `--apply`: a job over the running workflows of `spec.type` not on `spec.to`. */
  async create(
    spec: MigrationJobSpec,
    who: { reason: string; by: string; ratePerSec: number },
  ): Promise<{ job: BulkJob; revision: number }> {
    if (!this.def(spec.type, spec.to)) {
      throw new BadRequestError(`the workflows module has no ${spec.type}@${spec.to}`, {
        code: ErrorCode.UnknownVersion,
      });
    }
    const ids = await this.select(
      (r) =>
        r.type === spec.type &&
        r.status === 'running' &&
        r.version !== spec.to &&
        (spec.from === undefined || r.version === spec.from) &&
        Object.entries(spec.where ?? {}).every(([k, v]) => String(r.attributes?.[k]) === v),
    );
    return await this.store(spec, who, ids);
  }

  /** `--revert <job>`: a job over the workflows that job moved (their records carry its id). */
  async createRevert(
    jobId: string,
    who: { reason: string; by: string; ratePerSec: number },
  ): Promise<{ job: BulkJob; revision: number }> {
    const got = await this.ports.jobs.get(jobId);
    const spec = got?.job.request.migration;
    if (!got || !spec) {
      throw new BadRequestError(`no migration job ${jobId}`, { code: ErrorCode.NotFound });
    }
    if (spec.revertOf !== undefined) {
      throw new BadRequestError(`job ${jobId} is itself a revert (of ${spec.revertOf})`, {
        code: ErrorCode.BadRequest,
      });
    }
    if (got.job.state === 'running') {
      throw new BadRequestError(
        `migration job ${jobId} is still running: cancel it first (jetflow bulk ${jobId} --cancel)`,
        { code: ErrorCode.Conflict },
      );
    }
    const ids = await this.select(
      (r) => r.type === spec.type && r.status === 'running' && r.migration?.jobId === jobId,
    );
    return await this.store({ ...spec, revertOf: jobId }, who, ids);
  }

  /**
   * `--resume <job>`: claim a running job whose runner stopped (no owner) or died (its record
   * unchanged for `leaseMs`, watched here), to go on from its cursor.
   */
  async claim(jobId: string): Promise<{ job: BulkJob; revision: number }> {
    for (;;) {
      const got = await this.ports.jobs.get(jobId);
      if (!got || !got.job.request.migration) {
        throw new BadRequestError(`no migration job ${jobId}`, { code: ErrorCode.NotFound });
      }
      if (got.job.state !== 'running') {
        throw new BadRequestError(`migration job ${jobId} is ${got.job.state}: nothing to resume`, {
          code: ErrorCode.Conflict,
        });
      }
      if (got.job.owner !== undefined) {
        await sleep(this.o.leaseMs);
        const again = await this.ports.jobs.get(jobId);
        if (again && again.revision !== got.revision) {
          throw new BadRequestError(
            `migration job ${jobId} is held by ${again.job.owner ?? '?'}, which is still running it`,
            { code: ErrorCode.Conflict },
          );
        }
      }
      const claimed: BulkJob = {
        ...got.job,
        owner: this.o.owner,
        runs: got.job.runs + 1,
        updatedAt: iso(),
      };
      try {
        const revision = await this.ports.jobs.update(claimed, got.revision);
        this.o.logger.info(
          { jobId, from: got.job.owner ?? null, cursor: got.job.counters.processed },
          'migration job claimed',
        );
        return { job: claimed, revision };
      } catch {
        continue; // it changed meanwhile: look again
      }
    }
  }

  /** Stop: the running job stores its cursor and is released (resume it later). */
  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  /** Run a held job from its cursor to its end (or a stop); resolves with its last progress. */
  async run(job: BulkJob, startRevision: number): Promise<BulkProgress> {
    const spec = job.request.migration!;
    const { end, last, counters } = await runItemJob({
      job,
      revision: startRevision,
      store: this.ports.jobs,
      owner: this.o.owner,
      checkpointMs: this.o.checkpointMs,
      logger: this.o.logger,
      label: 'migration job',
      act: (type, id) => this.moveOne(job.jobId, job.request, spec, type, id),
      stopping: () => this.stopped,
      onWake: (w) => (this.wake = w),
      onCheckpoint: (p, fresh) => {
        publishProgress(this.o.nc, this.o.names, p);
        this.o.onProgress?.(p, fresh);
      },
    });
    if (end === 'completed') {
      this.o.logger.info(
        { jobId: job.jobId, ...counters, ...this.stats },
        'migration job completed',
      );
    }
    return last;
  }

  /** What the job does with this record now. */
  private async target(
    jobId: string,
    spec: MigrationJobSpec,
    rec: WorkflowRecord,
  ): Promise<Target> {
    if (rec.status !== 'running') return { kind: 'skip' };
    const blocked = (problems: string[]): Target => ({
      kind: 'fail',
      code: ErrorCode.InvalidState,
      message: problems.join('; '),
    });
    if (spec.revertOf === undefined) {
      if (rec.version === spec.to) return { kind: 'skip' };
      if (spec.from !== undefined && rec.version !== spec.from) return { kind: 'skip' };
      const plan = planMigration(rec, this.def(rec.type, spec.to)!, this.o.map ?? {});
      if (plan.snapshot === undefined) return blocked(plan.problems);
      return { kind: 'send', version: spec.to, snapshot: plan.snapshot };
    }
    // A revert: only what the job reverted moved, back to the version it came from.
    const mark = rec.migration;
    if (!mark || mark.jobId !== spec.revertOf) return { kind: 'skip' };
    const def = this.def(rec.type, mark.from);
    if (!def) {
      return {
        kind: 'fail',
        code: ErrorCode.UnknownVersion,
        message: `the workflows module has no ${rec.type}@${mark.from} to revert to`,
      };
    }
    if (rec.step === mark.step) {
      // Nothing happened since the move: the journaled snapshot from before it, as it was.
      const entry = await this.ports.stepEntry(rec.type, rec.id, mark.step - 1);
      if (
        entry?.kind === 'step' &&
        entry.version === mark.from &&
        entry.snapshot !== undefined &&
        !entry.snapshotOmitted
      ) {
        const checked = checkSnapshot(rec, def, entry.snapshot);
        if (checked.snapshot === undefined) return blocked(checked.problems);
        return { kind: 'send', version: mark.from, snapshot: checked.snapshot };
      }
    }
    // It took steps on the new version (or the journal lost the entry): map back what it is now.
    const states = invertStates(spec.states);
    if (!states) {
      return blocked(['the map renames two states to one: it cannot be inverted']);
    }
    const revertContext = this.o.map?.revert?.context;
    if (spec.contextMapped && !revertContext) {
      return blocked([
        `it took steps on v${mark.to} since the migration and the map changed its context: --map with revert.context is needed`,
      ]);
    }
    const plan = planMigration(rec, def, {
      states,
      ...(revertContext ? { context: revertContext } : {}),
    });
    if (plan.snapshot === undefined) return blocked(plan.problems);
    return { kind: 'send', version: mark.from, snapshot: plan.snapshot };
  }

  /** Move one workflow (read, plan, send; again on a conflict or no answer); never throws. */
  private async moveOne(
    jobId: string,
    req: BulkJob['request'],
    spec: MigrationJobSpec,
    type: string,
    id: string,
  ): Promise<BulkOutcome> {
    const deadline = Date.now() + this.o.itemBudgetMs;
    let lastError = 'no answer';
    for (let attempt = 0; ; attempt++) {
      if (Date.now() > deadline) {
        return { kind: 'failed', code: ErrorCode.Unavailable, message: lastError };
      }
      let rec: WorkflowRecord;
      let target: Target;
      try {
        const got = await this.ports.record(type, id);
        if (!got) return { kind: 'skipped' };
        rec = got.record;
        if (rec.migration?.jobId === jobId) return { kind: 'done' };
        target = await this.target(jobId, spec, rec);
      } catch (err) {
        lastError = String((err as Error)?.message ?? err);
        await sleep(Math.min(2_000, 100 * 2 ** Math.min(attempt, 5)));
        continue;
      }
      if (target.kind === 'skip') return { kind: 'skipped' };
      if (target.kind === 'fail')
        return { kind: 'failed', code: target.code, message: target.message };
      const body: AdminRequest = {
        reason: req.reason,
        by: req.by,
        // One id per (job, step planned from): a repeat of the same plan is deduplicated, a plan
        // made again after a conflict is a new request.
        requestId: `migrate-${jobId}-${rec.step}`,
        version: target.version,
        snapshot: target.snapshot,
        expectStep: rec.step,
        jobId,
        ...(spec.revertOf !== undefined ? { revertOf: spec.revertOf } : {}),
      };
      try {
        const reply = await this.client.admin('migrate', type, id, body);
        if (!reply.duplicate) return { kind: 'done' };
        // The same request is in the inbox already (sent before a timeout): read until it is
        // applied (the mark) or refused (the step moved on without it: plan again).
        await sleep(Math.min(1_000, 50 * 2 ** Math.min(attempt, 5)));
      } catch (err) {
        if (err instanceof JetflowError && err.code === ErrorCode.Conflict) {
          this.stats.replanned++;
          continue;
        }
        if (err instanceof JetflowError && err.code === ErrorCode.AlreadyFinished) {
          return { kind: 'skipped' };
        }
        if (
          err instanceof JetflowError &&
          err.code !== ErrorCode.Timeout &&
          err.code !== ErrorCode.Unavailable
        ) {
          return { kind: 'failed', code: err.code, message: err.message };
        }
        // A timeout or no engine answering (one died, shards are moving): the request id makes
        // a repeat safe, and the record tells whether the first one was applied.
        this.stats.retried++;
        lastError = String((err as Error)?.message ?? err);
        await sleep(Math.min(2_000, 100 * 2 ** Math.min(attempt, 5)));
      }
    }
  }
}
