/**
 * The visibility role: keeps one SQLite replica of the index up to date from the journal and
 * answers searches in the `<prefix>-visibility` queue group. Any number of replicas may run;
 * each has its own file.
 *
 * Start-up: open the file; when it is new, half-built, from another journal stream, or behind
 * the journal's retention (the next entry it needs was dropped), rebuild it: note the journal's
 * last sequence, load every workflow record from KV, then follow the journal from the noted
 * sequence (entries the records already reflect are skipped by their step numbers). The replica
 * joins the queue group once it has caught up with the journal as it was at start, so a
 * rebuilding replica never answers with a partial index.
 *
 * Failure semantics: the sequence applied is stored in the same transaction as the rows, so a
 * crash at any point resumes from the last committed batch; re-applied entries change nothing.
 */
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import type { Logger } from '../engine/ports.js';
import { ConfigError } from '../errors.js';
import { connectNats, trackConnection, type ConnectionState } from '../nats/connection.js';
import { topologyNames, type TopologyNames } from '../nats/topology.js';
import {
  journalStreamInfo,
  scanRecords,
  startSearchResponder,
  tailJournal,
  type JournalStreamInfo,
  type JournalTail,
  type SearchResponder,
} from '../nats/visibility.js';
import { stateOfRecord, VisibilityIndex, type WorkflowState } from '../visibility/projection.js';
import { parseCounts, parseNodeSearch, parseSearch } from '../visibility/query.js';
import { createLogger } from './logger.js';
import { BulkRunner, type BulkRunnerOptions } from './bulk.js';

export interface VisibilityOptions {
  /** NATS servers (default `nats://127.0.0.1:4222`). */
  servers?: string | readonly string[];
  /** Subject prefix of the engines (default `wf`). */
  prefix?: string;
  /** Folder of the replica's file (default `./.jetflow`). */
  dataDir?: string;
  /** The replica's file; default `<dataDir>/visibility-<prefix>.db`. */
  file?: string;
  /** Journal entries applied per transaction at most (default 1,000). */
  maxBatch?: number;
  /** How long the first entry of a batch waits for more (default 10 ms). */
  maxDelayMs?: number;
  name?: string;
  logLevel?: string;
  logger?: Logger;
  /** Lag histograms of the projection (`createVisibilityMetrics` of `src/metrics/`). */
  metrics?: { projected(journalSeconds: number, visibilitySeconds: number): void };
  /** Where progress lines go (default stderr). */
  progress?: (line: string) => void;
  /**
   * Finished workflows leave the replica this long after their last step, as their records leave
   * KV (set it to the engines' `finishedRetentionMs`; default 7 days, 0 = keep forever).
   */
  finishedRetentionMs?: number;
  /** Aborts `create()` while it waits for the journal stream or rebuilds. */
  signal?: AbortSignal;
  /**
   * Bulk operator jobs (`<prefix>.admin.bulk`): this replica creates and runs them (default on;
   * `false` = never; an object tunes the runner: lease, checkpoint and scan intervals).
   */
  bulk?:
    | boolean
    | Pick<
        BulkRunnerOptions,
        'leaseMs' | 'checkpointMs' | 'scanMs' | 'maxMatched' | 'replicas' | 'requestTimeoutMs'
      >;
}

export interface VisibilityStats {
  /** Step entries that changed the index. */
  applied: number;
  /** Step entries already reflected (redelivered, duplicated, or covered by a rebuild). */
  stale: number;
  /** Other entries (rejected, ignored, operator) and undecodable ones. */
  other: number;
  /** Rebuilds done by this process. */
  rebuilds: number;
}

/** How many recent index lags (step time → committed in the replica) are kept for `lag()`. */
const LAG_SAMPLES = 100_000;

export const VISIBILITY_DEFAULTS = Object.freeze({
  dataDir: '.jetflow',
  finishedRetentionMs: 7 * 24 * 3_600_000,
  maxBatch: 1_000,
  maxDelayMs: 10,
});

/**
 * Open the replica file. better-sqlite3 loads its native addon here; npm builds it only when the
 * project allows its install script, so a missing addon is explained, not just reported.
 */
function openIndex(file: string): VisibilityIndex {
  try {
    return VisibilityIndex.open(file);
  } catch (cause) {
    const text = String((cause as Error)?.message ?? cause);
    if (!/better_sqlite3\.node|bindings|NODE_MODULE_VERSION/i.test(text)) throw cause;
    throw new ConfigError(
      "the visibility index needs better-sqlite3's native addon, which is not built here: allow " +
        'its install script (`npm install-scripts approve better-sqlite3`, or "allowScripts" in ' +
        `package.json) and run \`npm rebuild better-sqlite3\` (${text.split('\n')[0]})`,
      { cause },
    );
  }
}

const sleep = (ms: number) => new Promise<void>((ok) => setTimeout(ok, ms));

export class Visibility implements AsyncDisposable {
  readonly stats: VisibilityStats = { applied: 0, stale: 0, other: 0, rebuilds: 0 };
  private lags: number[] = [];
  private journalLags: number[] = [];
  private pruner: NodeJS.Timeout | undefined;
  private tail: JournalTail | undefined;
  private responder: SearchResponder | undefined;
  /** The bulk job runner of this replica (absent with `bulk: false`). */
  bulk: BulkRunner | undefined;
  private closing: Promise<void> | undefined;
  private stopped = false;
  private following: Promise<void> = Promise.resolve();
  private readonly done: Promise<void>;
  private resolveDone!: () => void;
  private readonly connection: ConnectionState;

  private constructor(
    readonly file: string,
    readonly names: TopologyNames,
    readonly index: VisibilityIndex,
    private readonly nc: NatsConnection,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly logger: Logger,
    private readonly progress: (line: string) => void,
    private readonly o: { maxBatch: number; maxDelayMs: number; finishedRetentionMs: number },
    private readonly signal?: AbortSignal,
    private readonly bulkOptions: VisibilityOptions['bulk'] = true,
    private readonly name = 'jetflow-visibility',
    private readonly metrics?: VisibilityOptions['metrics'],
  ) {
    this.connection = trackConnection(nc);
    this.done = new Promise((ok) => (this.resolveDone = ok));
  }

  /**
   * Connect, open the replica (rebuilding it when needed, with progress lines), catch up with
   * the journal, then answer searches. Resolves once the replica serves.
   */
  static async create(o: VisibilityOptions = {}): Promise<Visibility> {
    const prefix = o.prefix ?? DEFAULT_PREFIX;
    const names = topologyNames(prefix);
    const name = o.name ?? 'jetflow-visibility';
    const logger = o.logger ?? createLogger(name, o.logLevel ?? 'info');
    const servers =
      typeof o.servers === 'string'
        ? o.servers.split(',')
        : [...(o.servers ?? ['nats://127.0.0.1:4222'])];
    const maxBatch = o.maxBatch ?? VISIBILITY_DEFAULTS.maxBatch;
    const maxDelayMs = o.maxDelayMs ?? VISIBILITY_DEFAULTS.maxDelayMs;
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new ConfigError('maxBatch must be ≥ 1');
    if (!(maxDelayMs >= 0)) throw new ConfigError('maxDelayMs must be ≥ 0');
    const finishedRetentionMs = o.finishedRetentionMs ?? VISIBILITY_DEFAULTS.finishedRetentionMs;
    if (!Number.isFinite(finishedRetentionMs) || finishedRetentionMs < 0) {
      throw new ConfigError('finishedRetentionMs must be ≥ 0 (0 = keep forever)');
    }
    const file = resolve(
      o.file ?? resolve(o.dataDir ?? VISIBILITY_DEFAULTS.dataDir, `visibility-${prefix}.db`),
    );
    mkdirSync(dirname(file), { recursive: true });
    const { nc, js, jsm } = await connectNats(servers, name);
    let index: VisibilityIndex | undefined;
    try {
      index = openIndex(file);
      const v = new Visibility(
        file,
        names,
        index,
        nc,
        js,
        jsm,
        logger,
        o.progress ?? ((line) => void process.stderr.write(`${line}\n`)),
        { maxBatch, maxDelayMs, finishedRetentionMs },
        o.signal,
        o.bulk ?? true,
        name,
        o.metrics,
      );
      await v.start();
      return v;
    } catch (err) {
      index?.close();
      await nc.close().catch(() => undefined);
      throw err;
    }
  }

  private async start(): Promise<void> {
    const info = await this.waitForJournal();
    await this.rebuildIfNeeded(info);
    // Catch up with the journal as it is now before answering.
    const target = (await journalStreamInfo(this.jsm, this.names))?.lastSeq ?? 0;
    await this.follow();
    while (this.index.position().seq < target) {
      if (this.signal?.aborted) throw new Error('visibility stopped while catching up');
      await sleep(20);
    }
    this.responder = startSearchResponder(
      this.nc,
      this.names,
      {
        search: (body) => this.index.search(parseSearch(body)),
        counts: (body) => this.index.counts(parseCounts(body)),
        nodes: (body) => this.index.searchNodes(parseNodeSearch(body)),
      },
      this.logger,
    );
    if (this.bulkOptions !== false) {
      this.bulk = await BulkRunner.start({
        ...(typeof this.bulkOptions === 'object' ? this.bulkOptions : {}),
        nc: this.nc,
        jsm: this.jsm,
        names: this.names,
        logger: this.logger,
        owner: `${this.name}-${nuid.next()}`,
        search: (q) => this.index.search(parseSearch(q)),
        checkQuery: (q) => void parseSearch({ ...q, limit: 1 }),
      });
    }
    await this.nc.flush(); // the server knows the subscriptions before anyone is told
    if (this.o.finishedRetentionMs > 0) {
      this.prune();
      const every = Math.min(600_000, Math.max(1_000, this.o.finishedRetentionMs / 10));
      this.pruner = setInterval(() => this.prune(), every);
      this.pruner.unref();
    }
    this.logger.info(
      { file: this.file, workflows: this.index.size(), seq: this.index.position().seq },
      'visibility ready',
    );
  }

  /** The journal stream's info, waiting (and saying so) while no engine has created it yet. */
  private async waitForJournal(): Promise<JournalStreamInfo> {
    let said = false;
    for (;;) {
      const info = await journalStreamInfo(this.jsm, this.names);
      if (info) return info;
      if (!said) {
        this.progress(
          `jetflow visibility: waiting for the journal stream ${this.names.historyStream} (start an engine with --prefix ${this.names.subjects.prefix})`,
        );
        said = true;
      }
      await sleep(1_000);
      if (this.stopped || this.signal?.aborted) {
        throw new Error('visibility stopped while waiting for the journal');
      }
    }
  }

  /** Remove finished workflows past the retention, a bounded number per transaction. */
  private prune(): void {
    try {
      const before = Date.now() - this.o.finishedRetentionMs;
      let n = 0;
      for (let k = this.index.prune(before); k > 0; k = this.index.prune(before)) n += k;
      if (n > 0) this.logger.info({ removed: n }, 'finished workflows past retention removed');
    } catch (err) {
      this.logger.warn({ err }, 'pruning finished workflows failed');
    }
  }

  /** Why the replica must be rebuilt, or undefined when it can follow the journal as it is. */
  private rebuildReason(info: JournalStreamInfo): string | undefined {
    const pos = this.index.position();
    if (this.index.rebuilding) return 'the last rebuild did not finish';
    if (pos.stream === undefined) return 'new replica';
    if (pos.stream !== info.created) return 'the journal stream was recreated';
    if (pos.seq > info.lastSeq) return 'the replica is ahead of the journal (stream purged?)';
    if (pos.seq + 1 < info.firstSeq) {
      return `entries ${pos.seq + 1}..${info.firstSeq - 1} left the journal (retention)`;
    }
    return undefined;
  }

  private async rebuildIfNeeded(info: JournalStreamInfo): Promise<void> {
    const reason = this.rebuildReason(info);
    if (!reason) return;
    this.stats.rebuilds++;
    const say = (s: string) => this.progress(`jetflow visibility: ${s}`);
    say(`rebuilding ${this.file} (${reason}) from the records in ${this.names.bucket}`);
    // Entries after this sequence are read after the scan; those the scan saw are skipped.
    this.index.reset({ seq: info.lastSeq, stream: info.created });
    const t0 = Date.now();
    let lastSay = t0;
    let loaded = 0;
    const { scanned, undecodable } = await scanRecords(
      this.js,
      this.jsm,
      this.names,
      (records, p) => {
        const states: WorkflowState[] = [];
        for (const r of records) {
          try {
            states.push(stateOfRecord(r));
          } catch {
            // a record without the expected shape: left out of the index
          }
        }
        loaded += this.index.load(states);
        const now = Date.now();
        if (now - lastSay >= 1_000) {
          lastSay = now;
          const rate = p.scanned / Math.max(0.001, (now - t0) / 1000);
          const left = Math.max(0, p.total - p.scanned);
          say(
            `rebuild: ${p.scanned}/~${p.total} records scanned, ${Math.round(rate)}/s, ~${Math.ceil(left / Math.max(1, rate))} s left`,
          );
        }
      },
    );
    this.index.finishRebuild();
    const s = (Date.now() - t0) / 1000;
    say(
      `rebuilt: ${loaded} workflows from ${scanned} records in ${s.toFixed(1)} s` +
        (undecodable ? ` (${undecodable} undecodable records skipped)` : '') +
        `; following the journal from sequence ${info.lastSeq + 1}`,
    );
  }

  /** Follow the journal from the replica's position; on a failure, retry (rebuilding if due). */
  private async follow(): Promise<void> {
    this.tail = await tailJournal(
      this.js,
      this.names,
      this.index.position().seq + 1,
      (items) => {
        const r = this.index.apply(items);
        // Searchable from here on: the lag of each step is now minus the step's time.
        const now = Date.now();
        for (const { entry, storedAt } of items) {
          if (entry?.kind === 'step' && this.metrics)
            this.metrics.projected((storedAt - entry.at) / 1000, (now - entry.at) / 1000);
          if (entry?.kind !== 'step' || this.lags.length >= LAG_SAMPLES) continue;
          this.lags.push(now - entry.at);
          this.journalLags.push(storedAt - entry.at);
        }
        this.stats.applied += r.applied;
        this.stats.stale += r.stale;
        this.stats.other += r.other;
      },
      this.o,
    );
    const tail = this.tail;
    this.following = tail.failed.then(async (err) => {
      if (this.stopped) return;
      this.logger.warn({ err }, 'journal tail failed; resuming in 1 s');
      await tail.stop().catch(() => undefined);
      for (;;) {
        await sleep(1_000);
        if (this.stopped) return;
        try {
          const info = await this.waitForJournal();
          await this.rebuildIfNeeded(info);
          await this.follow();
          return;
        } catch (e) {
          this.logger.warn({ err: e }, 'journal not readable; retrying in 1 s');
        }
      }
    });
  }

  /**
   * Index lag of the step entries applied since the last call: milliseconds from the step (its
   * time in the journal entry, taken by the engine's clock) to its commit in this replica, after
   * which searches see it. Sorted; at most the last 100,000 steps.
   */
  takeLags(): { index: number[]; journal: number[] } {
    const out = {
      index: this.lags.sort((a, b) => a - b),
      // The part before the replica: step time to the entry stored in the journal stream.
      journal: this.journalLags.sort((a, b) => a - b),
    };
    this.lags = [];
    this.journalLags = [];
    return out;
  }

  /** Journal entries stored but not yet committed to this replica (one stream info request). */
  async behind(): Promise<number> {
    const info = await journalStreamInfo(this.jsm, this.names);
    return Math.max(0, (info?.lastSeq ?? 0) - this.index.position().seq);
  }

  /** Ready while connected and answering searches (it answers once caught up at start). */
  readiness(): { ready: boolean; reason: string } {
    if (this.closing) return { ready: false, reason: 'stopping' };
    if (!this.connection.connected) return { ready: false, reason: 'NATS connection down' };
    if (!this.responder) return { ready: false, reason: 'catching up with the journal' };
    return { ready: true, reason: 'answering searches' };
  }

  /** Resolves when the role has stopped (after `close()`). */
  run(): Promise<void> {
    return this.done;
  }

  /** Stop answering, stop following, close the file and the connection. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stopped = true;
      clearInterval(this.pruner);
      const stage = async (name: string, f: () => Promise<void> | void) => {
        try {
          await f();
        } catch (err) {
          this.logger.warn({ err, stage: name }, 'visibility shutdown stage failed');
        }
      };
      await stage('bulk', () => this.bulk?.stop());
      await stage('responder', () => this.responder?.stop());
      await stage('tail', () => this.tail?.stop());
      await stage('index', () => this.index.close());
      await stage('drain', () => this.nc.drain());
      this.logger.info({ stats: this.stats }, 'visibility stopped');
      this.resolveDone();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
