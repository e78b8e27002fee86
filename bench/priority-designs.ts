/**
 * Priority and fairness for activity tasks: a measurement of two candidate designs on a real
 * nats-server, before one is built (`npx tsx bench/priority-designs.ts [--n 10000]`). No jetflow
 * engine: a simulated worker with `C` slots runs each task for `TASK_MS` and acks it, so only the
 * dispatch order and its cost are measured.
 *
 * A. Subjects per level, one work-queue consumer per level (`t.p<L>.<key>`, filter `t.p<L>.>`):
 *    the worker fills free slots from the highest level that has messages, with pull requests
 *    that do not wait (`no_wait`: an empty level answers at once with 404). Aging: before each
 *    fill, the oldest message of each lower level (`next_by_subj`, one direct get per level) is
 *    read; a level whose oldest waits longer than `maxWaitMs` is served first.
 * B. A dispatcher: one consumer on all levels reads every task into memory, in a queue per (level,
 *    fairness key); the worker asks it for the next task (request/reply), the dispatcher answers
 *    with the highest level (aged as in A), round robin across the keys of that level, and acks the
 *    task message when the worker reports it done.
 *
 * Scenarios: (1) throughput draining N tasks at one level, vs a plain single consumer fetch;
 * (2) N tasks at level 5, then 100 at level 1: how many level-5 tasks start between the level-1
 * publish and the last level-1 start (acceptance: fewer than 10% of those still waiting);
 * (3) tenant A enqueues N, then tenant B 10: how many tasks start before all of B's have (B:
 * fairness by key; A has none and serves A's backlog first).
 */
import { parseArgs } from 'node:util';
import { connect, createInbox, type Msg, type NatsConnection } from '@nats-io/transport-node';
import { AckPolicy, jetstream, jetstreamManager, RetentionPolicy } from '@nats-io/jetstream';
import { NatsServer } from '../test/harness/nats-server.js';
import { round } from './peers/common.js';

const { values } = parseArgs({ options: { n: { type: 'string', default: '10000' } } });
const N = Number(values.n);
const C = 10;
const TASK_MS = 1;
const STREAM = 'PRIO';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const log = (s: string) => process.stderr.write(`[priority] ${s}\n`);

interface Task {
  pubAt?: number;
  startAt?: number;
  level: number;
  key: string;
  i: number;
  ack(): void;
}

/** Pull up to `batch` messages without waiting (404/408 ends it). */
function pullNoWait(nc: NatsConnection, consumer: string, batch: number): Promise<Msg[]> {
  return new Promise((resolve) => {
    const inbox = createInbox();
    const got: Msg[] = [];
    const sub = nc.subscribe(inbox, {
      callback: (_e, m) => {
        const code = m.headers?.code ?? 0;
        if (code >= 400 || (code === 0 && m.data.length === 0 && m.headers)) {
          sub.unsubscribe();
          return resolve(got);
        }
        got.push(m);
        if (got.length >= batch) {
          sub.unsubscribe();
          resolve(got);
        }
      },
    });
    nc.publish(
      `$JS.API.CONSUMER.MSG.NEXT.${STREAM}.${consumer}`,
      JSON.stringify({ batch, no_wait: true }),
      { reply: inbox },
    );
  });
}

async function fresh(nc: NatsConnection, consumers: [string, string][]) {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.delete(STREAM).catch(() => undefined);
  await jsm.streams.add({
    name: STREAM,
    subjects: ['t.>'],
    retention: RetentionPolicy.Workqueue,
  });
  for (const [name, filter] of consumers)
    await jsm.consumers.add(STREAM, {
      durable_name: name,
      filter_subject: filter,
      ack_policy: AckPolicy.Explicit,
      max_ack_pending: 10_000,
    });
  return jsm;
}

async function publish(nc: NatsConnection, level: number, key: string, from: number, n: number) {
  const js = jetstream(nc);
  let pending: Promise<unknown>[] = [];
  for (let i = from; i < from + n; i++) {
    pending.push(
      js.publish(`t.p${level}.${key}`, JSON.stringify({ level, key, i, pubAt: Date.now() })),
    );
    if (pending.length >= 500) {
      await Promise.all(pending);
      pending = [];
    }
  }
  await Promise.all(pending);
}

/** Runs tasks as `next()` hands them out, C at a time; records the start order. */
async function runWorker(
  next: () => Promise<Task | undefined>,
  total: number,
  started: Task[],
): Promise<number> {
  const t0 = performance.now();
  let done = 0;
  const slot = async () => {
    while (done + C - 1 < total + C - 1 && started.length < total) {
      const t = await next();
      if (!t) {
        await sleep(1);
        continue;
      }
      t.startAt = Date.now();
      started.push(t);
      await sleep(TASK_MS);
      t.ack();
      done++;
    }
  };
  await Promise.all(Array.from({ length: C }, slot));
  return performance.now() - t0;
}

/** Design A: per-level consumers, no_wait pulls high to low, aging by the oldest's age. */
function designA(nc: NatsConnection, maxWaitMs: number, probe: { gets: number }) {
  const jsmP = jetstreamManager(nc);
  const buffer: Task[] = [];
  let lastAging = 0;
  return async (): Promise<Task | undefined> => {
    if (buffer.length > 0) return buffer.shift();
    const levels = [1, 2, 3, 4, 5];
    // Aging: at most every 100 ms, the oldest message of each level (one direct get each).
    if (Date.now() - lastAging > 100) {
      lastAging = Date.now();
      const jsm = await jsmP;
      for (const l of [5, 4, 3, 2]) {
        probe.gets++;
        // The oldest message of the level (work queue: acked ones are gone).
        const m = await jsm.streams
          .getMessage(STREAM, { next_by_subj: `t.p${l}.>`, seq: 0 } as never)
          .catch(() => undefined);
        if (m && Date.now() - m.time.getTime() > maxWaitMs) {
          levels.splice(levels.indexOf(l), 1);
          levels.unshift(l);
          break;
        }
      }
    }
    for (const l of levels) {
      const got = await pullNoWait(nc, `p${l}`, C);
      if (got.length === 0) continue;
      for (const m of got) {
        const b = JSON.parse(new TextDecoder().decode(m.data)) as Task;
        buffer.push({ ...b, ack: () => m.respond() });
      }
      return buffer.shift();
    }
    return undefined;
  };
}

/**
 * Design A2 (A with fairness): one consumer per (level, key) subject, created when the key first
 * shows up in the stream's subject counts (read at most every 50 ms); a fill serves the highest
 * level (aged as in A, from the same counts and one direct get per waiting level), round robin
 * across that level's keys, one task per key per turn.
 */
function designA2(
  nc: NatsConnection,
  maxWaitMs: number,
  cost: { infos: number; consumers: number },
) {
  const jsmP = jetstreamManager(nc);
  const known = new Set<string>();
  let counts: Record<string, number> = {};
  let readAt = 0;
  const turn = new Map<number, number>();
  return async (): Promise<Task | undefined> => {
    const jsm = await jsmP;
    if (Date.now() - readAt > 50) {
      readAt = Date.now();
      cost.infos++;
      const info = await jsm.streams.info(STREAM, { subjects_filter: 't.>' });
      counts = info.state.subjects ?? {};
      for (const subj of Object.keys(counts)) {
        if (known.has(subj)) continue;
        known.add(subj);
        cost.consumers++;
        await jsm.consumers.add(STREAM, {
          durable_name: subj.replaceAll('.', '_'),
          filter_subject: subj,
          ack_policy: AckPolicy.Explicit,
          max_ack_pending: 10_000,
        });
      }
    }
    const byLevel = new Map<number, string[]>();
    for (const [subj, n] of Object.entries(counts)) {
      if (n <= 0) continue;
      const l = Number(subj.split('.')[1]!.slice(1));
      (byLevel.get(l) ?? byLevel.set(l, []).get(l)!).push(subj);
    }
    const levels = [...byLevel.keys()].sort((a, b) => a - b);
    for (const l of [...levels].reverse()) {
      if (l === levels[0]) break;
      const m = await jsm.streams
        .getMessage(STREAM, { next_by_subj: `t.p${l}.>`, seq: 0 } as never)
        .catch(() => undefined);
      if (m && Date.now() - m.time.getTime() > maxWaitMs) {
        levels.splice(levels.indexOf(l), 1);
        levels.unshift(l);
        break;
      }
    }
    for (const l of levels) {
      const subjects = byLevel.get(l)!.sort();
      for (let k = 0; k < subjects.length; k++) {
        const i = ((turn.get(l) ?? 0) + k) % subjects.length;
        const got = await pullNoWait(nc, subjects[i]!.replaceAll('.', '_'), 1);
        if (got.length === 0) {
          counts[subjects[i]!] = 0;
          continue;
        }
        turn.set(l, i + 1);
        const m = got[0]!;
        const b = JSON.parse(new TextDecoder().decode(m.data)) as Task;
        return { ...b, ack: () => m.respond() };
      }
    }
    return undefined;
  };
}

/** Design B: a dispatcher holding every task in memory per (level, key), round robin by key. */
async function designB(nc: NatsConnection, maxWaitMs: number) {
  const js = jetstream(nc);
  const consumer = await js.consumers.get(STREAM, 'all');
  const queues = new Map<number, Map<string, { t: Task; at: number }[]>>();
  const rr = new Map<number, string[]>();
  let stopped = false;
  void (async () => {
    const it = await consumer.consume({ max_messages: 10_000 });
    for await (const m of it) {
      if (stopped) break;
      const b = JSON.parse(new TextDecoder().decode(m.data)) as Task;
      const lvl = queues.get(b.level) ?? new Map<string, { t: Task; at: number }[]>();
      queues.set(b.level, lvl);
      let q = lvl.get(b.key);
      if (!q) {
        q = [];
        lvl.set(b.key, q);
        (rr.get(b.level) ?? rr.set(b.level, []).get(b.level)!).push(b.key);
      }
      q.push({ t: { ...b, ack: () => m.ack() }, at: m.info.timestampNanos / 1e6 });
    }
  })();
  const take = (level: number): Task | undefined => {
    const keys = rr.get(level);
    if (!keys || keys.length === 0) return undefined;
    const key = keys.shift()!;
    const q = queues.get(level)!.get(key)!;
    const e = q.shift()!;
    if (q.length > 0) keys.push(key);
    else queues.get(level)!.delete(key);
    return e.t;
  };
  const oldest = (level: number) => {
    let min = Infinity;
    for (const q of queues.get(level)?.values() ?? []) min = Math.min(min, q[0]?.at ?? Infinity);
    return min;
  };
  return {
    next: (): Promise<Task | undefined> => {
      const now = Date.now();
      for (const l of [5, 4, 3, 2])
        if (now - oldest(l) > maxWaitMs) return Promise.resolve(take(l));
      for (const l of [1, 2, 3, 4, 5]) {
        const t = take(l);
        if (t) return Promise.resolve(t);
      }
      return Promise.resolve(undefined);
    },
    stop: () => (stopped = true),
  };
}

async function main() {
  const server = await NatsServer.start();
  const nc = await connect({ servers: server.url });
  const perLevel: [string, string][] = [1, 2, 3, 4, 5].map((l) => [`p${l}`, `t.p${l}.>`]);
  const out: Record<string, unknown> = { n: N, slots: C, taskMs: TASK_MS };
  try {
    // (1) Throughput: plain single consumer (fetch), A (no_wait pulls), B (dispatcher).
    {
      await fresh(nc, [['all', 't.>']]);
      await publish(nc, 3, 'x', 0, N);
      const c = await jetstream(nc).consumers.get(STREAM, 'all');
      const buf: Task[] = [];
      const started: Task[] = [];
      const ms = await runWorker(
        async () => {
          if (buf.length === 0) {
            const b = await c.fetch({ max_messages: C, expires: 1000 });
            for await (const m of b) buf.push({ level: 3, key: 'x', i: 0, ack: () => m.ack() });
          }
          return buf.shift();
        },
        N,
        started,
      );
      out.plainTasksPerSec = round(N / (ms / 1000), 0);
    }
    {
      await fresh(nc, perLevel);
      await publish(nc, 3, 'x', 0, N);
      const probe = { gets: 0 };
      const ms = await runWorker(designA(nc, 60_000, probe), N, []);
      out.aTasksPerSec = round(N / (ms / 1000), 0);
      out.aAgingGets = probe.gets;
    }
    {
      await fresh(nc, [['all', 't.>']]);
      await publish(nc, 3, 'x', 0, N);
      const b = await designB(nc, 60_000);
      const ms = await runWorker(b.next, N, []);
      b.stop();
      out.bTasksPerSec = round(N / (ms / 1000), 0);
    }
    log(JSON.stringify(out));
    // (2) Priority: N at level 5, then 100 at level 1 once the worker runs.
    for (const design of ['A', 'B'] as const) {
      await fresh(nc, design === 'A' ? perLevel : [['all', 't.>']]);
      await publish(nc, 5, 'x', 0, N);
      const started: Task[] = [];
      const b = design === 'B' ? await designB(nc, 60_000) : undefined;
      const next = b ? b.next : designA(nc, 60_000, { gets: 0 });
      const run = runWorker(next, N + 100, started);
      while (started.length < 500) await sleep(5);
      const at = started.length;
      await publish(nc, 1, 'x', 0, 100);
      await run;
      b?.stop();
      const lastL1 = started.findLastIndex((t) => t.level === 1);
      const l5Between = started.slice(at, lastL1).filter((t) => t.level === 5).length;
      const l5Remaining = N - started.slice(0, at).filter((t) => t.level === 5).length;
      out[`priority${design}`] = {
        level5StartedBeforeLastLevel1: l5Between,
        level5RemainingAtPublish: l5Remaining,
        pct: round((100 * l5Between) / l5Remaining, 2),
      };
      log(JSON.stringify(out[`priority${design}`]));
    }
    // (3) Fairness: tenant A enqueues N, then tenant B 10 (B's starts, in task slots).
    for (const design of ['A', 'B'] as const) {
      await fresh(nc, design === 'A' ? perLevel : [['all', 't.>']]);
      await publish(nc, 3, 'A', 0, N);
      const started: Task[] = [];
      const b = design === 'B' ? await designB(nc, 60_000) : undefined;
      const next = b ? b.next : designA(nc, 60_000, { gets: 0 });
      const run = runWorker(next, N + 10, started);
      while (started.length < 200) await sleep(5);
      const at = started.length;
      await publish(nc, 3, 'B', 0, 10);
      await run;
      b?.stop();
      const lastB = started.findLastIndex((t) => t.key === 'B');
      out[`fairness${design}`] = {
        tasksStartedUntilAllOfB: lastB - at + 1,
        bound: 2 * C,
      };
      log(JSON.stringify(out[`fairness${design}`]));
    }
    // (3b) Fairness and priority with A2 (consumers per level and key).
    {
      await fresh(nc, []);
      await publish(nc, 3, 'A', 0, N);
      const started: Task[] = [];
      const cost = { infos: 0, consumers: 0 };
      const run = runWorker(designA2(nc, 60_000, cost), N + 10 + 100, started);
      while (started.length < 200) await sleep(5);
      const at = started.length;
      await publish(nc, 3, 'B', 0, 10);
      while (started.filter((t) => t.key === 'B').length < 10) await sleep(5);
      const lastB = started.findLastIndex((t) => t.key === 'B');
      const at1 = started.length;
      await publish(nc, 1, 'A', 0, 100);
      await run;
      const lastL1 = started.findLastIndex((t) => t.level === 1);
      const l5Between = started.slice(at1, lastL1).filter((t) => t.level === 3).length;
      out.fairnessA2 = { tasksStartedUntilAllOfB: lastB - at + 1, bound: 2 * C };
      out.priorityA2 = { lowerStartedBeforeLastLevel1: l5Between, ...cost };
      log(JSON.stringify([out.fairnessA2, out.priorityA2]));
    }
    {
      const started: Task[] = [];
      await fresh(nc, []);
      await publish(nc, 3, 'x', 0, N);
      const ms = await runWorker(designA2(nc, 60_000, { infos: 0, consumers: 0 }), N, started);
      out.a2TasksPerSec = round(N / (ms / 1000), 0);
    }
    // (4) Aging, maxWaitMs 200: 20 level-5 tasks arrive while level 1 floods the worker.
    for (const design of ['A', 'B'] as const) {
      const maxWaitMs = 200;
      await fresh(nc, design === 'A' ? perLevel : [['all', 't.>']]);
      const flood = Math.min(N, 3000);
      await publish(nc, 1, 'x', 0, flood);
      const started: Task[] = [];
      const b = design === 'B' ? await designB(nc, maxWaitMs) : undefined;
      const next = b ? b.next : designA(nc, maxWaitMs, { gets: 0 });
      const run = runWorker(next, 2 * flood + 20, started);
      while (started.length < 300) await sleep(5);
      await Promise.all([publish(nc, 5, 'x', 0, 20), publish(nc, 1, 'x', flood, flood)]);
      await run;
      b?.stop();
      const waits = started.filter((t) => t.level === 5).map((t) => t.startAt! - t.pubAt!);
      out[`aging${design}`] = { maxWaitMs, level5MaxWaitMs: Math.max(...waits), taskMs: TASK_MS };
      log(JSON.stringify(out[`aging${design}`]));
    }
    console.log(JSON.stringify(out));
  } finally {
    await nc.close();
    await server.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
