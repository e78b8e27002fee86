/**
 * The item loop shared by the resumable jobs that act on a stored list of workflows: the
 * operator bulk jobs (`src/host/bulk.ts`) and the migration jobs (`src/host/migrate.ts`). The
 * two differ only in what they do to one workflow (`act`), so everything about holding and
 * checkpointing the job is here, once:
 *
 * - items are read in chunks from the job's id list, from the stored cursor on;
 * - at most `concurrency` items are in flight (from the job's rate: `ratePerSec / 2`, 1–64),
 *   and starts are paced by the job's rate limit;
 * - every `checkpointMs` the cursor, counters and kept failures are written with compare-and-set
 *   on the last revision: a write that finds another revision means the job was canceled or
 *   claimed by another runner (fenced), and the loop stops without writing again;
 * - a stop stores the cursor and releases the job (no owner), so any runner can go on at once;
 * - the end writes `completed` and drops the id list.
 *
 * `act` must never throw (it reports a failure as an outcome) and must be safe to repeat: the
 * items at and after the stored cursor run again after a crash or a takeover.
 */
import type { BulkFailure, BulkProgress } from '../contracts/bulk.js';
import { BulkCursor, RateLimiter, type BulkOutcome } from '../engine/bulk.js';
import type { Logger } from '../engine/ports.js';
import { BULK_CHUNK, progressOf, type BulkJob, type BulkStore } from '../nats/bulk.js';

export interface ItemJobOptions {
  job: BulkJob;
  /** The revision this runner holds the job at (its claim). */
  revision: number;
  store: BulkStore;
  /** This runner's name in the job's `owner`. */
  owner: string;
  checkpointMs: number;
  logger: Logger;
  /** How the job is named in logs ("bulk job", "migration job"). */
  label: string;
  /** Do the job's verb to one workflow; never throws. */
  act: (type: string, id: string) => Promise<BulkOutcome>;
  /** True once the runner is told to stop (shutdown). */
  stopping: () => boolean;
  /** Receives the function that wakes the loop from a wait for a free slot (call it on stop). */
  onWake: (wake: () => void) => void;
  /** Each stored checkpoint, with the failures recorded since the previous one. */
  onCheckpoint: (p: BulkProgress, fresh: BulkFailure[]) => void;
}

export interface ItemJobEnd {
  /** `completed`; `released` (stopped, cursor stored); `fenced` (canceled or taken over). */
  end: 'completed' | 'released' | 'fenced';
  /** The last progress stored (or, when fenced, the job as the other writer left it). */
  last: BulkProgress;
  counters: BulkJob['counters'];
}

const sleep = (ms: number) => new Promise<void>((ok) => setTimeout(ok, ms));
const iso = (t = Date.now()) => new Date(t).toISOString();

/** Run a held job from its cursor to its end, a stop, or a fence. */
export async function runItemJob(o: ItemJobOptions): Promise<ItemJobEnd> {
  const { job, store } = o;
  const { jobId } = job;
  const req = job.request;
  let revision = o.revision;
  let fenced = false;
  let last = progressOf(job, []);
  const cur = new BulkCursor({ ...job.counters }, [...job.failures]);
  const limiter = new RateLimiter(req.ratePerSec, Date.now);
  const concurrency = Math.max(1, Math.min(64, Math.ceil(req.ratePerSec / 2)));
  const chunks = new Map<number, Promise<[string, string][]>>();
  const itemAt = async (i: number) => {
    const n = Math.floor(i / BULK_CHUNK);
    let c = chunks.get(n);
    if (!c) {
      c = store.chunk(jobId, n);
      chunks.set(n, c);
      chunks.delete(n - 2);
    }
    return (await c)[i % BULK_CHUNK]!;
  };

  // Checkpoints are written one at a time, each a compare-and-set on the last revision.
  const write = async (state: BulkJob['state']): Promise<boolean> => {
    if (fenced) return false;
    const failures = cur.takeFailures();
    const now = iso();
    const next: BulkJob = {
      ...job,
      state,
      counters: { ...cur.counters },
      failures: [...cur.kept],
      owner: o.owner,
      updatedAt: now,
      ...(state !== 'running' ? { finishedAt: now } : {}),
    };
    if (state !== 'running') delete next.owner;
    try {
      revision = await store.update(next, revision);
    } catch (err) {
      cur.restoreFailures(failures);
      const latest = await store.get(jobId).catch(() => undefined);
      if (latest && latest.revision !== revision) {
        fenced = true; // canceled, or claimed by another runner: stop here
        o.logger.warn(
          { jobId, state: latest.job.state, owner: latest.job.owner ?? null },
          `${o.label} taken over or canceled; stopping`,
        );
        last = progressOf(latest.job, []);
        return false;
      }
      o.logger.warn({ err, jobId }, `${o.label} checkpoint not stored; retrying`);
      return false;
    }
    last = progressOf(next, failures);
    o.onCheckpoint(last, failures);
    return true;
  };
  let writing: Promise<unknown> = Promise.resolve();
  const ticker = setInterval(() => {
    writing = writing.then(() => write('running'));
  }, o.checkpointMs);

  let inflight = 0;
  let slot: (() => void) | undefined;
  const free = () => {
    const s = slot;
    slot = undefined;
    s?.();
  };
  o.onWake(free);
  const halted = () => o.stopping() || fenced;
  const tasks = new Set<Promise<void>>();
  try {
    for (let i = cur.cursor; i < cur.counters.matched; i++) {
      while (inflight >= concurrency && !halted()) {
        await new Promise<void>((ok) => (slot = ok));
      }
      for (let wait = limiter.take(); wait > 0 && !halted(); wait = limiter.take()) {
        await sleep(wait);
      }
      if (halted()) break;
      const [type, id] = await itemAt(i);
      inflight++;
      const index = i;
      const t = o.act(type, id).then((outcome) => {
        cur.finish(index, type, id, outcome);
        inflight--;
        free();
      });
      tasks.add(t);
      void t.finally(() => tasks.delete(t));
    }
    await Promise.allSettled([...tasks]);
  } finally {
    clearInterval(ticker);
  }
  await writing;
  const counters = { ...cur.counters };
  if (fenced) return { end: 'fenced', last, counters };
  if (cur.cursor < cur.counters.matched) {
    // Stopped here: store the cursor and release the job, for any runner to go on from it.
    if (await write('running')) {
      const got = await store.get(jobId);
      if (got && got.job.owner === o.owner) {
        const released: BulkJob = { ...got.job };
        delete released.owner;
        await store.update(released, got.revision).catch(() => undefined);
      }
    }
    return { end: 'released', last, counters };
  }
  for (let i = 0; i < 5 && !(await write('completed')); i++) {
    if (fenced) return { end: 'fenced', last, counters };
    await sleep(200);
  }
  await store.dropIds(jobId, job.chunks);
  return { end: 'completed', last, counters };
}
