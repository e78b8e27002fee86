/**
 * Visibility index benchmark (`npm run bench:visibility [-- --workflows N --runs R]`): feeds N
 * synthetic workflows (default 1,000,000; 5 types, 20 states, 3 search attributes, a mix of
 * statuses, 1-4 steps each, entries of many workflows interleaved and in time order as in a real
 * journal) through
 * the projection module in batches, then times the searches an operator runs, R times each with
 * varying parameters. Reports load rate (steps/s), DB size and p50/p99 per query, and the plan
 * SQLite chose for each. No NATS involved: this measures the SQLite layer the role runs.
 *
 * `--db file --keep` keeps the loaded file; a later run with the same `--db` skips the load and
 * only times the queries.
 */
import { mkdtempSync, rmSync, statSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { JournalEntry, WorkflowStatus } from '../src/contracts/wire.js';
import { VisibilityIndex, type JournalItem } from '../src/visibility/projection.js';
import { parseSearch } from '../src/visibility/query.js';
import { percentile, round } from './peers/common.js';

const { values } = parseArgs({
  options: {
    workflows: { type: 'string', default: '1000000' },
    runs: { type: 'string', default: '200' },
    batch: { type: 'string', default: '1000' },
    keep: { type: 'boolean', default: false },
    /** Use (and keep) this file; when it already holds workflows, skip the load. */
    db: { type: 'string' },
  },
});
const N = Number(values.workflows);
const RUNS = Number(values.runs);
const BATCH = Number(values.batch);
const TYPES = ['order', 'payment', 'shipment', 'refund', 'signup'];
const STATES = Array.from({ length: 20 }, (_, i) => `stage${i % 4}.s${i}`);
const NOW = Date.now();
const HOUR = 3_600_000;

/** Deterministic pseudo-random numbers (mulberry32), so runs are comparable. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(42);
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const idOf = (n: number) => `w${String(n).padStart(7, '0')}`;

interface Plan {
  type: string;
  id: string;
  steps: number;
  createdAt: number;
  final: WorkflowStatus;
  attributes: Record<string, string | number>;
}

function plan(n: number): Plan {
  const r = rand();
  const final: WorkflowStatus =
    r < 0.6 ? 'running' : r < 0.9 ? 'completed' : r < 0.97 ? 'failed' : 'canceled';
  return {
    type: TYPES[n % TYPES.length]!,
    id: idOf(n),
    steps: 1 + Math.floor(rand() * 4),
    createdAt: 0, // the time of its first step
    final,
    attributes: {
      merchantId: `m${Math.floor(rand() * 1000)}`,
      region: pick(['eu', 'us', 'apac', 'latam', 'mea']),
      priority: 1 + Math.floor(rand() * 5),
    },
  };
}

/**
 * A live journal arrives in time order: the feed spans the last 7 days, each entry a little
 * later than the one before (about 2.5 steps per workflow).
 */
const SPAN = 7 * 24 * HOUR;
const timeOf = (seq: number) => Math.min(NOW - 1000, NOW - SPAN + (seq * SPAN) / (N * 2.5));

function entry(p: Plan, step: number, seq: number): JournalEntry {
  const last = step === p.steps - 1;
  const status: WorkflowStatus = last ? p.final : 'running';
  const at = Math.floor(timeOf(seq));
  if (step === 0) p.createdAt = at;
  const path = pick(STATES);
  return {
    v: 1,
    kind: 'step',
    workflowType: p.type,
    id: p.id,
    version: 1,
    step,
    at,
    engine: 'bench',
    seq: 0,
    cause: step === 0 ? 'start' : 'signal',
    event: { type: step === 0 ? 'xstate.init' : 'NEXT' },
    to: { value: path, paths: [path] },
    status,
    stateSince: at,
    snapshot: {},
    effects: [],
    attributes: p.attributes,
    createdAt: p.createdAt,
    ...(status === 'failed'
      ? {
          error: {
            type: pick(['PaymentDeclined', 'Timeout', 'MachineError']),
            code: pick(['machine_error', 'timeout']),
            message: 'failed in the bench',
            retryable: false,
          },
        }
      : {}),
  };
}

function load(index: VisibilityIndex): { steps: number; ms: number } {
  const CHUNK = 10_000; // workflows in flight at once: their entries interleave
  let seq = 0;
  let steps = 0;
  let batch: JournalItem[] = [];
  const t0 = performance.now();
  let lastReport = t0;
  for (let base = 0; base < N; base += CHUNK) {
    const plans = Array.from({ length: Math.min(CHUNK, N - base) }, (_, i) => plan(base + i));
    for (let step = 0; step < 4; step++) {
      for (const p of plans) {
        if (step >= p.steps) continue;
        seq++;
        batch.push({ seq, entry: entry(p, step, seq) });
        if (batch.length >= BATCH) {
          index.apply(batch);
          steps += batch.length;
          batch = [];
        }
      }
    }
    const now = performance.now();
    if (now - lastReport > 5_000) {
      lastReport = now;
      const rate = steps / ((now - t0) / 1000);
      process.stderr.write(
        `  loaded ${base + plans.length}/${N} workflows, ${steps} steps, ${Math.round(rate)} steps/s\n`,
      );
    }
  }
  index.apply(batch);
  steps += batch.length;
  return { steps, ms: performance.now() - t0 };
}

type Query = { name: string; run: (i: number) => unknown; plan?: () => string };

function main(): void {
  const dir = mkdtempSync(join(tmpdir(), 'jetflow-bench-vis-'));
  const file = values.db ?? join(dir, 'visibility.db');
  const index = VisibilityIndex.open(file);
  try {
    let steps = 0;
    let ms = Number.NaN;
    if (index.size() === 0) {
      process.stderr.write(`bench:visibility: loading ${N} workflows into ${file}\n`);
      ({ steps, ms } = load(index));
    } else {
      process.stderr.write(`bench:visibility: reusing ${file} (${index.size()} workflows)\n`);
    }
    index.checkpoint();
    index.analyze();
    const bytes = ['', '-wal', '-shm']
      .map((s) => (existsSync(file + s) ? statSync(file + s).size : 0))
      .reduce((a, b) => a + b, 0);
    const search = (body: unknown) => index.search(parseSearch(body));
    const hourAgo = () => new Date(Date.now() - HOUR).toISOString();
    const queries: Query[] = [
      { name: 'by status (failed)', run: () => search({ status: 'failed' }) },
      { name: 'by status (running)', run: () => search({ status: 'running' }) },
      { name: 'by state', run: (i) => search({ state: STATES[i % 20] }) },
      { name: 'by state prefix (stage2.*)', run: () => search({ state: 'stage2.*' }) },
      {
        name: 'state + in state > 1 h, by age, top 50',
        run: (i) =>
          search({
            state: STATES[i % 20],
            inStateSince: { before: hourAgo() },
            sort: 'inStateSince',
            order: 'asc',
            limit: 50,
          }),
      },
      {
        name: 'type + status + state, page 2',
        run: (i) => {
          const f = { type: TYPES[i % 5], status: 'running', state: STATES[i % 20] };
          const first = search(f) as { cursor: string | null };
          return first.cursor ? search({ ...f, cursor: first.cursor }) : first;
        },
      },
      { name: 'counts by state', run: () => index.counts() },
      {
        name: 'one search attribute equal',
        run: (i) => search({ attributes: { merchantId: `m${i % 1000}` } }),
      },
      {
        name: 'attribute with 5 values (region), page 2',
        run: () => {
          const f = { attributes: { region: pick(['eu', 'us', 'apac', 'latam', 'mea']) } };
          const first = search(f) as { cursor: string | null };
          return first.cursor ? search({ ...f, cursor: first.cursor }) : first;
        },
      },
      {
        name: 'two attributes + status',
        run: (i) =>
          search({
            attributes: { merchantId: `m${i % 1000}`, priority: 1 + (i % 5) },
            status: 'running',
          }),
      },
      {
        name: 'id prefix (1,000 ids)',
        run: (i) => search({ idPrefix: idOf((i * 1000) % N).slice(0, 5) }),
      },
      {
        name: 'errorCode + updatedAt range',
        run: () =>
          search({ errorCode: 'timeout', updatedAt: { after: NOW - 24 * HOUR }, limit: 100 }),
      },
    ];
    const results: Record<string, unknown>[] = [];
    for (const q of queries) {
      for (let i = 0; i < 5; i++) q.run(i); // warm the page cache and statement cache
      const times: number[] = [];
      for (let i = 0; i < RUNS; i++) {
        const t = performance.now();
        q.run(i);
        times.push(performance.now() - t);
      }
      times.sort((a, b) => a - b);
      results.push({
        query: q.name,
        p50_ms: round(percentile(times, 50), 2),
        p99_ms: round(percentile(times, 99), 2),
        max_ms: round(times[times.length - 1]!, 2),
      });
    }
    const report = {
      workflows: N,
      steps,
      load_s: round(ms / 1000, 1),
      load_steps_per_s: Math.round(steps / (ms / 1000)),
      db_bytes: bytes,
      db_mib: round(bytes / 1048576, 1),
      runs_per_query: RUNS,
      queries: results,
      plans: {
        state_in_state_1h: index.explain(
          parseSearch({
            state: STATES[3],
            inStateSince: { before: NOW - HOUR },
            sort: 'inStateSince',
            limit: 50,
          }),
        ),
        attribute: index.explain(parseSearch({ attributes: { merchantId: 'm1' } })),
        state_prefix: index.explain(parseSearch({ state: 'stage2.*' })),
        error_code: index.explain(
          parseSearch({ errorCode: 'timeout', updatedAt: { after: NOW - 24 * HOUR } }),
        ),
        id_prefix: index.explain(parseSearch({ idPrefix: 'w0001' })),
      },
    };
    console.table(results);
    console.log(JSON.stringify(report, null, 2));
  } finally {
    index.close();
    rmSync(dir, { recursive: true, force: true });
    if (values.db && !values.keep) {
      for (const x of ['', '-wal', '-shm']) rmSync(values.db + x, { force: true });
    }
  }
}

main();
