/**
 * The concurrency-key acceptance scenario, shared by the full-size chaos test and the smaller
 * one in the fast suite: `keys` keys x `perKey` workflows of a keyed type (`keyed`: limit 1,
 * `keyed3`: limit 3), each waiting on a 50 ms timer and a 20 ms activity; two engine processes,
 * one SIGKILLed twice (restarted each time, so shards move away and back), one worker process.
 * The activities record (key, workflow, start, end) in a file.
 *
 * What it measures, for the test to assert: the most runs of one key at any instant, whether
 * each key's runs started in start order, how many workflows completed, and what the keys
 * bucket holds at the end.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { EngineProcess, repoRoot, uniquePrefix } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { JetflowError } from '../../src/errors.js';

export interface KeysScenario {
  url: string;
  nc: NatsConnection;
  type: 'keyed' | 'keyed3';
  keys: number;
  perKey: number;
  /** SIGKILLs of engine A (each followed by a restart). */
  kills: number;
  /** Delay before each kill, min and max ms (default 1,500-3,000). */
  killAfterMs?: [number, number];
  /** Give up waiting for the workflows to finish after this (default 240 s). */
  waitMs?: number;
  log?: (line: string) => void;
}

export interface KeysOutcome {
  /** Most activity runs of one key at once, over all keys (the workers' own records). */
  maxConcurrent: number;
  /** Most slots of one key held at once (admission to end, from the journal), over all keys. */
  maxHeld: number;
  /** Keys whose runs did not start in start order (with the two orders). */
  outOfOrder: { key: string; started: string[]; ran: string[] }[];
  completed: number;
  notCompleted: string[];
  /** Workflow ids whose activity ran more than once (at-least-once redelivery). */
  reruns: number;
  holders: number;
  waiters: number;
  kills: number;
  /** When each kill happened, and when the last run ended (ms from the start). */
  killedAt: number[];
  lastRunEndMs: number;
  ms: number;
}

type Run = { key: string; id: string; attempt: number; start: number; end: number };

/** Retry a request until an engine answers (one may be dead or restarting). */
async function untilAnswered<T>(f: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (err instanceof JetflowError && err.code !== 'unavailable' && err.code !== 'timeout')
        throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

function startWorker(url: string, prefix: string, file: string): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', resolve(repoRoot, 'test/fixtures/keyed-worker.ts'), url, prefix, file],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  return new Promise((ok, fail) => {
    let out = '';
    const onData = (b: Buffer) => {
      out += b.toString();
      if (out.includes('worker ready')) ok(child);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => fail(new Error(`worker exited (${code}):\n${out}`)));
  });
}

/** Most intervals of one key open at once (an end at the same instant as a start comes first). */
function maxOverlap(runs: Run[]): number {
  const points = runs.flatMap((r) => [
    { t: r.start, d: 1 },
    { t: r.end, d: -1 },
  ]);
  points.sort((a, b) => a.t - b.t || a.d - b.d);
  let open = 0;
  let max = 0;
  for (const p of points) {
    open += p.d;
    max = Math.max(max, open);
  }
  return max;
}

export async function runKeysScenario(o: KeysScenario): Promise<KeysOutcome> {
  const log = o.log ?? (() => undefined);
  const prefix = uniquePrefix();
  const dir = mkdtempSync(join(tmpdir(), 'jetflow-keys-'));
  const file = join(dir, 'runs.jsonl');
  const opts = { ackWaitMs: 2_000, failoverMs: 2_000 };
  let a = await new EngineProcess(o.url, prefix, opts).start();
  const b = await new EngineProcess(o.url, prefix, opts).start();
  const worker = await startWorker(o.url, prefix, file);
  const client = new Client(o.nc, { prefix, timeoutMs: 2_000 });
  const t0 = Date.now();
  const killedAt: number[] = [];
  try {
    // Start order per key: each key's starts one after another (the next once the previous
    // was answered), all keys at once.
    const startOrder = new Map<string, string[]>();
    let driving = true;
    const driveKey = async (k: number) => {
      const key = `k${k}`;
      const order: string[] = [];
      startOrder.set(key, order);
      for (let j = 0; j < o.perKey; j++) {
        const id = `${key}-w${j}`;
        await untilAnswered(() => client.start(o.type, id, { key }));
        order.push(id);
      }
    };
    const killer = (async () => {
      for (let i = 0; i < o.kills; i++) {
        const [lo, hi] = o.killAfterMs ?? [1_500, 3_000];
        await new Promise((r) => setTimeout(r, lo + Math.random() * (hi - lo)));
        await a.kill();
        killedAt.push(Date.now() - t0);
        log(`engine A SIGKILL ${i + 1} at +${Date.now() - t0} ms`);
        await new Promise((r) => setTimeout(r, 500));
        a = await new EngineProcess(o.url, prefix, opts).start();
        log(`engine A restarted at +${Date.now() - t0} ms (shards move back to it)`);
      }
    })();
    const lanes = Array.from({ length: o.keys }, (_, k) => k);
    let nextKey = 0;
    // At most 20 keys' starts in flight at once (each lane drives keys one after another): a
    // key's consecutive starts then follow each other closely, so with limit N the first N
    // runs overlap (the maximum is observable), while the queue of every key grows.
    await Promise.all(
      Array.from({ length: Math.min(20, o.keys) }, async () => {
        while (nextKey < lanes.length) await driveKey(lanes[nextKey++]!);
      }),
    );
    driving = false;
    await killer;
    log(`all ${o.keys * o.perKey} started at +${Date.now() - t0} ms (driving ${driving})`);

    // Wait until every workflow ran its activity and the keys bucket is empty.
    const total = o.keys * o.perKey;
    const read = (): Run[] => {
      try {
        return readFileSync(file, 'utf8')
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Run);
      } catch {
        return [];
      }
    };
    const deadline = Date.now() + (o.waitMs ?? 240_000);
    for (;;) {
      const ran = new Set(read().map((r) => r.id)).size;
      const keys = await untilAnswered(() => client.keys(o.type));
      if (ran >= total && keys.length === 0) break;
      if (Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    const runs = read();
    const byKey = new Map<string, Run[]>();
    for (const r of runs) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
    let maxConcurrent = 0;
    const outOfOrder: KeysOutcome['outOfOrder'] = [];
    for (const [key, started] of startOrder) {
      const rs = byKey.get(key) ?? [];
      maxConcurrent = Math.max(maxConcurrent, maxOverlap(rs));
      // First run of each workflow, in the order they started.
      const first = new Map<string, number>();
      for (const r of rs) first.set(r.id, Math.min(first.get(r.id) ?? Infinity, r.start));
      const ran = [...first.entries()].sort((x, y) => x[1] - y[1]).map(([id]) => id);
      // With limit 1 runs start in admission order; with limit N the N admitted together may
      // start their activities in any order, so compare admission order from the journal then.
      if (o.type === 'keyed' && ran.join() !== started.join())
        outOfOrder.push({ key, started, ran });
    }
    // From the journal: when each workflow was admitted (the key record's decision time, on
    // its `start` or `admit` entry) and when it ended. The slot
    // is held from the admitting step to the final step: the most slots of one key held at once
    // must be exactly the limit (the limit is reached, never passed), and admission order per
    // key must be start order (workflow j never admitted before an earlier start i < j; equal
    // times: one release handing over several slots at once).
    let maxHeld = 0;
    for (const [key, started] of startOrder) {
      const at: [string, number][] = [];
      const held: Run[] = [];
      await Promise.all(
        started.map(async (id, i) => {
          const h = await untilAnswered(() => client.history(o.type, id, { limit: 20 }));
          let admitted = Infinity;
          let from = Infinity;
          let to = Infinity;
          for (const x of h.entries) {
            if (x.kind !== 'step') continue;
            if ((x.cause === 'start' && x.status === 'running') || x.cause === 'admit') {
              admitted = x.admission?.admittedAt ?? Infinity;
              from = admitted;
            }
            if (x.status === 'completed') to = x.at;
          }
          at[i] = [id, admitted];
          held.push({ key, id, attempt: 1, start: from, end: to });
        }),
      );
      const m = maxOverlap(held);
      if (m > maxHeld && m > (o.type === 'keyed' ? 1 : 3))
        log(`key ${key} held ${m}: ${JSON.stringify(held.sort((x, y) => x.start - y.start))}`);
      maxHeld = Math.max(maxHeld, m);
      if (!sameUpToTies(at, started)) {
        const admitted = [...at].sort((x, y) => x[1] - y[1]).map(([id]) => id);
        outOfOrder.push({ key, started, ran: admitted });
      }
    }
    const notCompleted: string[] = [];
    let completed = 0;
    for (const ids of startOrder.values()) {
      await Promise.all(
        ids.map(async (id) => {
          const q = await untilAnswered(() => client.query(o.type, id));
          if (q.status === 'completed') completed++;
          else notCompleted.push(`${id}:${q.status}`);
        }),
      );
    }
    const counts = new Map<string, number>();
    for (const r of runs) counts.set(r.id, (counts.get(r.id) ?? 0) + 1);
    const left = await client.keys(o.type);
    return {
      maxConcurrent,
      maxHeld,
      outOfOrder,
      completed,
      notCompleted,
      reruns: [...counts.values()].filter((n) => n > 1).length,
      holders: left.reduce((n, r) => n + r.holders.length, 0),
      waiters: left.reduce((n, r) => n + r.waiters.length, 0),
      kills: o.kills,
      killedAt,
      lastRunEndMs: Math.round(Math.max(0, ...runs.map((r) => r.end)) - t0),
      ms: Date.now() - t0,
    };
  } finally {
    worker.kill('SIGKILL');
    await a.kill();
    await b.kill();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** True when sorting by time, with ties broken by start order, gives the start order. */
function sameUpToTies(at: [string, number][], started: string[]): boolean {
  const rank = new Map(started.map((id, i) => [id, i]));
  const sorted = [...at].sort((x, y) => x[1] - y[1] || rank.get(x[0])! - rank.get(y[0])!);
  return sorted.map(([id]) => id).join() === started.join();
}
