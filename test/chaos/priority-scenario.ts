/**
 * Priority scenarios on a real nats-server with a real engine and worker (each on its own
 * connection): workflows of type `prioritized` each run one activity `job` (queue `prio`) at the
 * level their input names; the activity records when it starts. Shared by the fast tests
 * (test/integration/priority.test.ts, small sizes) and the soak (test/chaos/priority.test.ts,
 * the sizes).
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startEngine, uniquePrefix } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type ActivityContext, type Worker } from '../../src/worker/index.js';
import { fair, prioritized, type PrioInput } from '../fixtures/prio-workflows.js';

export interface Start {
  tenant?: string;
  level: number;
  i: number;
  /** When the test started the workflow. */
  enq: number;
  /** When the task message entered its queue (`ctx.enqueuedAt`). */
  queued: number;
  /** When the engine issued (for a fairness key: staged) the task (`ctx.scheduledAt`). */
  issued: number;
  at: number;
}

interface Rig {
  client: Client;
  starts: Start[];
  close(): Promise<void>;
}

async function rig(
  url: string,
  o: { workMs: number; concurrency: number; maxWaitMs: number; startWorker?: boolean },
): Promise<Rig & { worker: () => Promise<Worker> }> {
  const prefix = uniquePrefix();
  const closers: (() => Promise<unknown>)[] = [];
  const engine = await startEngine(url, prefix, { workflows: [prioritized, fair] });
  closers.push(() => engine.close());
  const cnc = await connect({ servers: url });
  closers.push(() => cnc.close());
  const starts: Start[] = [];
  const worker = async () => {
    const wnc: NatsConnection = await connect({ servers: url });
    const w = await createWorker({
      connection: wnc,
      prefix,
      queues: ['prio'],
      queueSettings: { prio: { maxWaitMs: o.maxWaitMs } },
      concurrency: o.concurrency,
      activities: {
        job: async (input: PrioInput, ctx: ActivityContext) => {
          starts.push({
            ...(input.tenant !== undefined ? { tenant: input.tenant } : {}),
            level: input.level,
            i: input.i,
            enq: input.enq,
            queued: ctx.enqueuedAt,
            issued: ctx.scheduledAt,
            at: Date.now(),
          });
          await new Promise((r) => setTimeout(r, o.workMs));
          return null;
        },
      },
    });
    closers.push(() => wnc.close());
    closers.push(() => w.close());
    return w;
  };
  return {
    client: new Client(cnc, { prefix }),
    starts,
    worker,
    close: async () => {
      for (const c of closers.reverse()) await c();
    },
  };
}

/** Start `n` workflows at `level` (ids `<level>-<i>`, or `<tenant>-<i>` of type `fair`), 100 at a time. */
async function startMany(
  client: Client,
  level: number,
  n: number,
  from = 0,
  tenant?: string,
): Promise<void> {
  for (let b = from; b < from + n; b += 100) {
    const batch: Promise<unknown>[] = [];
    for (let i = b; i < Math.min(from + n, b + 100); i++) {
      const input: PrioInput = { level, enq: Date.now(), i, ...(tenant ? { tenant } : {}) };
      batch.push(
        tenant
          ? client.start('fair', `${tenant}-${i}`, input)
          : client.start('prioritized', `${level}-${i}`, input),
      );
    }
    await Promise.all(batch);
  }
}

async function until(what: string, cond: () => boolean, timeoutMs: number): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface StrictOutcome {
  low: number;
  high: number;
  /** Level-5 tasks not started when the first level-1 workflow was started. */
  remaining: number;
  /** Level-5 tasks that started after that and before the last level-1 task started. */
  overtaking: number;
  /** Level-1 tasks that started after the last level-5 one (none should wait that long). */
  highAfterAllLow: number;
  ms: number;
}

/**
 * `low` tasks at level 5 (the worker already draining them), then `high` at level 1: how many
 * level-5 tasks start between the level-1 enqueue and the last level-1 start.
 */
export async function runStrict(
  url: string,
  o: { low: number; high: number; workMs: number; concurrency: number },
): Promise<StrictOutcome> {
  const r = await rig(url, { ...o, maxWaitMs: 3_600_000 });
  try {
    const t0 = Date.now();
    await r.worker();
    await startMany(r.client, 5, o.low);
    // Some level-5 tasks run, most still wait: now the level-1 ones come.
    await until('level-5 tasks to start', () => r.starts.length >= 10, 60_000);
    const startedBefore = r.starts.length;
    await startMany(r.client, 1, o.high);
    await until('every task to start', () => r.starts.length >= o.low + o.high, 600_000);
    const lastHigh = r.starts.findLastIndex((s) => s.level === 1);
    const lastLow = r.starts.findLastIndex((s) => s.level === 5);
    const overtaking = r.starts.slice(startedBefore, lastHigh).filter((s) => s.level === 5).length;
    return {
      low: o.low,
      high: o.high,
      remaining: o.low - startedBefore,
      overtaking,
      highAfterAllLow: r.starts.slice(lastLow + 1).filter((s) => s.level === 1).length,
      ms: Date.now() - t0,
    };
  } finally {
    await r.close();
  }
}

export interface AgingOutcome {
  /** Wait on the queue (start - enqueuedAt, ms) of each late level-5 task, in enqueue order. */
  waits: number[];
  /** The same from the workflow's start (includes the engine's step before the task exists). */
  fromStart: number[];
  /** For each late level-5 task: level-1 tasks that started after it (> 0: not starved). */
  highAfter: number[];
  maxWaitMs: number;
  workMs: number;
}

/**
 * A flood of `flood` level-1 tasks (more than the worker runs in `maxWaitMs`), and `late`
 * level-5 tasks started one every `everyMs` while it lasts: each waits about `maxWaitMs`, not
 * until the flood has drained.
 */
export async function runAging(
  url: string,
  o: {
    flood: number;
    late: number;
    everyMs: number;
    workMs: number;
    concurrency: number;
    maxWaitMs: number;
  },
): Promise<AgingOutcome> {
  const r = await rig(url, o);
  try {
    await startMany(r.client, 1, o.flood);
    await r.worker();
    await until('level-1 tasks to start', () => r.starts.length >= o.concurrency, 60_000);
    for (let i = 0; i < o.late; i++) {
      await startMany(r.client, 5, 1, i);
      await new Promise((res) => setTimeout(res, o.everyMs));
    }
    await until('every task to start', () => r.starts.length >= o.flood + o.late, 600_000);
    const late = r.starts.filter((s) => s.level === 5).sort((a, b) => a.i - b.i);
    return {
      waits: late.map((s) => s.at - s.queued),
      fromStart: late.map((s) => s.at - s.enq),
      highAfter: late.map((s) => r.starts.filter((x) => x.level === 1 && x.at > s.at).length),
      maxWaitMs: o.maxWaitMs,
      workMs: o.workMs,
    };
  } finally {
    await r.close();
  }
}

export interface FairOutcome {
  big: number;
  small: number;
  concurrency: number;
  /** For each of B's tasks: tasks that started after it was staged and before it started. */
  slotsWaited: number[];
  /** Tenant A's tasks not started when B's were enqueued. */
  bigWaiting: number;
  /**
   * Tenant A's tasks that started between consecutive starts of B's, when the second was already
   * staged (round robin: 1, or 2 when a fill and the mover move at once).
   */
  between: number[];
  ms: number;
}

/** Tenant A enqueues `big` tasks (the worker draining them), then tenant B `small`. */
export async function runFair(
  url: string,
  o: { big: number; small: number; workMs: number; concurrency: number },
): Promise<FairOutcome> {
  const r = await rig(url, { ...o, maxWaitMs: 3_600_000 });
  try {
    const t0 = Date.now();
    await r.worker();
    await startMany(r.client, 3, o.big, 0, 'A');
    await until('tenant A tasks to start', () => r.starts.length >= 10, 60_000);
    const bigWaiting = o.big - r.starts.length;
    await startMany(r.client, 3, o.small, 0, 'B');
    await until(
      'every B task to start',
      () => r.starts.filter((s) => s.tenant === 'B').length >= o.small,
      600_000,
    );
    const slotsWaited = r.starts
      .filter((s) => s.tenant === 'B')
      .map((b) => r.starts.filter((x) => x.at > b.issued && x.at < b.at).length);
    // Between two consecutive starts of B's, counted when the second was staged before the first
    // started (otherwise it was not there to take its turn yet).
    const bIdx = r.starts.flatMap((s, i) => (s.tenant === 'B' ? [i] : []));
    const between = bIdx
      .slice(1)
      .filter((i, k) => r.starts[i]!.issued < r.starts[bIdx[k]!]!.at)
      .map((i) => i - bIdx[bIdx.indexOf(i) - 1]! - 1);
    await until('every task to start', () => r.starts.length >= o.big + o.small, 600_000);
    return {
      between,
      big: o.big,
      small: o.small,
      concurrency: o.concurrency,
      slotsWaited,
      bigWaiting,
      ms: Date.now() - t0,
    };
  } finally {
    await r.close();
  }
}

/**
 * Weights: tenant `W` (weight 3) and tenant `X` (weight 1) each enqueue `n` tasks before the
 * worker starts: the start order, by tenant.
 */
export async function runWeights(url: string, n: number): Promise<string> {
  const r = await rig(url, { workMs: 5, concurrency: 1, maxWaitMs: 3_600_000 });
  try {
    await startMany(r.client, 3, n, 0, 'W');
    await startMany(r.client, 3, n, 0, 'X');
    await r.worker();
    await until('every task to start', () => r.starts.length >= 2 * n, 120_000);
    return r.starts.map((s) => s.tenant).join('');
  } finally {
    await r.close();
  }
}
