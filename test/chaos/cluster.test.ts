/**
 * Horizontal scaling on a real 3-node NATS cluster (R3 streams and buckets) with engines and
 * workers as real processes: balanced shard assignment with one active holder per shard,
 * failover after an engine is SIGKILLed, a joining and a draining engine, and a NATS node
 * SIGKILLed, all under a steady load of workflows with 3 activities each. Every workflow must
 * complete with each activity result applied exactly once.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { NatsCluster, runRoot } from '../harness/nats-server.js';
import { EngineProcess, repoRoot, uniquePrefix } from '../harness/jetflow.js';
import { shardMapping } from '../../src/contracts/subjects.js';
import { Client } from '../../src/client/index.js';
import { systemStatus, type SystemStatus } from '../../src/nats/status.js';
import { JetflowError } from '../../src/errors.js';

const SHARDS = 64;
// The tests' value; `JETFLOW_TEST_FAILOVER_MS=2000` runs it at the documented minimum.
const FAILOVER_MS = Number(process.env.JETFLOW_TEST_FAILOVER_MS ?? 4_000);

let cluster: NatsCluster;
let nc: NatsConnection;
const engines: EngineProcess[] = [];
const workers: ChildProcess[] = [];
const workerLogs: string[] = [];
const prefix = uniquePrefix();

beforeAll(async () => {
  cluster = await NatsCluster.start({ mappings: shardMapping(SHARDS) });
  nc = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
}, 120_000);
/** On failure, keep every engine's and worker's log for the post-mortem. */
function keepLogs(): string {
  const dir = `/tmp/jetflow-cluster-${prefix}`;
  mkdirSync(dir, { recursive: true });
  engines.forEach((e, i) => writeFileSync(`${dir}/engine-${i}.log`, e.log));
  workerLogs.forEach((l, i) => writeFileSync(`${dir}/worker-${i}.log`, l));
  return dir;
}

afterAll(async () => {
  await Promise.all(engines.map((e) => e.kill()));
  for (const w of workers) if (w.exitCode === null && w.signalCode === null) w.kill('SIGKILL');
  await nc?.close();
  await cluster?.stop();
});

function engine(): EngineProcess {
  const e = new EngineProcess(cluster.urls.join(','), prefix, {
    shards: SHARDS,
    replicas: 3,
    failoverMs: FAILOVER_MS,
    ackWaitMs: 5_000,
  });
  engines.push(e);
  return e;
}

async function startWorker(): Promise<void> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      resolve(repoRoot, 'test/fixtures/worker-main.ts'),
      cluster.urls.join(','),
      prefix,
      runRoot(),
    ],
    { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  workers.push(child);
  let out = '';
  const i = workerLogs.push('') - 1;
  const onData = (b: Buffer) => {
    out += b.toString();
    workerLogs[i] = out.slice(-200_000);
  };
  child.stdout.on('data', onData);
  child.stderr.on('data', onData);
  const deadline = Date.now() + 30_000;
  while (!out.includes('worker ready')) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`worker did not start:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function status(): Promise<SystemStatus> {
  return systemStatus(nc, prefix, SHARDS, FAILOVER_MS / 2);
}

/** Balanced among `n` live engines, each shard claimed by exactly one and pinned to it. */
async function settled(n: number, timeoutMs = 30_000): Promise<{ st: SystemStatus; ms: number }> {
  const t0 = Date.now();
  for (;;) {
    const st = await status().catch(() => undefined);
    if (st && st.engines.length === n) {
      const counts = st.engines.map((e) => e.shards.length).sort((a, b) => a - b);
      const balanced =
        counts[0]! >= Math.floor(SHARDS / n) && counts.at(-1)! <= Math.ceil(SHARDS / n);
      const single = st.shards.every(
        (s) => s.claimedBy.length === 1 && s.pinnedEngine === s.holder,
      );
      if (balanced && single) return { st, ms: Date.now() - t0 };
    }
    if (Date.now() - t0 > timeoutMs)
      throw new Error(
        `not settled on ${n} engines: ${JSON.stringify(st?.engines.map((e) => [e.name, e.shards.length]))}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Retry while no engine answers (a failover, a node restart), for at most two minutes. */
async function untilAnswered<T>(f: () => Promise<T>): Promise<T> {
  const giveUpAt = Date.now() + 120_000;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (err instanceof JetflowError && err.code !== 'unavailable' && err.code !== 'timeout')
        throw err;
      if (Date.now() > giveUpAt) throw err;
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

describe('3 engines on a 3-node cluster', () => {
  it('stable assignment is balanced (21/21/22) with exactly one active holder per shard', async () => {
    for (let i = 0; i < 3; i++) await engine().start();
    await startWorker();
    await startWorker();
    const { st } = await settled(3);
    expect(st.engines.map((e) => e.shards.length).sort()).toEqual([21, 21, 22]);
    const all = st.engines.flatMap((e) => e.shards).sort((a, b) => a - b);
    expect(all).toEqual(Array.from({ length: SHARDS }, (_, i) => i)); // disjoint and complete
    expect(st.shards.every((s) => s.pinnedClientId && s.pinnedEngine === s.holder)).toBe(true);
  }, 120_000);

  it('under load: engine SIGKILL, a 4th engine joins, one drains, a NATS node is SIGKILLed; nothing lost or doubled', async () => {
    const client = new Client(nc, { prefix, timeoutMs: 5_000 });
    const total = 600;
    let next = 0;
    const done: string[] = [];
    const load = Promise.all(
      Array.from({ length: 12 }, async () => {
        while (next < total) {
          const i = next++;
          const id = `load-${i}`;
          await untilAnswered(() => client.start('chain', id, { x: i }));
          done.push(id);
          await new Promise((r) => setTimeout(r, 20));
        }
      }),
    );
    const report: Record<string, number> = {};
    const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

    await wait(2_000);
    const victim = engines[0]!;
    const t0 = Date.now();
    await victim.kill();
    // Failover: kill -> every shard held and pinned again by the survivors.
    await settled(2);
    report.failoverMs = Date.now() - t0;
    // Measured from the kill until the survivors' heartbeats show every shard held and pinned.
    // Timing belongs to the benchmark (bench/scaling.ts reports it); here only a sanity bound
    // that a loaded 2-core machine still meets.
    expect(report.failoverMs).toBeLessThan(3 * FAILOVER_MS);

    const fourth = engine();
    await fourth.start();
    await settled(3);
    const st = await status();
    expect(st.engines.some((e) => e.shards.length > 0 && e.pid === fourth.child!.pid)).toBe(true);

    const leaving = engines[1]!;
    expect(await leaving.stop()).toBe(0);
    await settled(2);

    await cluster.servers[2]!.kill();
    await wait(3_000);
    await load;
    expect(done).toHaveLength(total);

    // Every workflow must finish; one that does not within a minute of the load's end is
    // reported with its stored state (and the logs kept), not waited for forever.
    const wrong: string[] = [];
    const deadline = Date.now() + 60_000;
    for (let i = 0; i < total; i++) {
      const id = `load-${i}`;
      let out: { x: number } | Error;
      for (;;) {
        out = await client
          .result<{ x: number }>('chain', id, { timeoutMs: Math.max(1_000, deadline - Date.now()) })
          .catch((err: unknown) => err as Error);
        // No engine answering (a request timed out while the client reconnected after the
        // node kill) is retried; a workflow that does not finish runs out the deadline.
        // (As in `untilAnswered`: anything but a jetflow error with another code, e.g. the NATS
        // client's own request timeout, means "not answered yet".)
        const retry =
          out instanceof Error &&
          !(out instanceof JetflowError && out.code !== 'unavailable' && out.code !== 'timeout') &&
          Date.now() < deadline;
        if (!retry) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      const q = await untilAnswered(() => client.query('chain', id));
      if (out instanceof Error)
        wrong.push(`${id}: not finished (${out.message}): ${JSON.stringify(q)}`);
      else if (out.x !== i + 3 || q.step !== 3) wrong.push(`${id}: x=${out.x} step=${q.step}`);
    }
    if (wrong.length > 0) console.log('cluster run failed; logs in', keepLogs());
    expect(wrong).toEqual([]);
    console.log('cluster run', JSON.stringify(report));
  }, 300_000);
});
