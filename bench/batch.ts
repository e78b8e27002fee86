/**
 * Batches (issue 23): `npm run bench:batch` (`-- --smoke` for a tiny run that proves it works).
 *
 * jetflow (nats-server and one engine as separate processes, this process submits):
 * 1. Submission rate: `--submit N` items (default 1,000,000) into a **paused** batch, so what is
 *    measured is the submission itself (ledger key created, chunk accepted) and not the items
 *    running beside it; the engine's RSS is sampled every second meanwhile (flat = nothing per
 *    item held in memory).
 *    The engine's RSS (from /proc) and V8 heap in use (its `/metrics`) are sampled every second
 *    and printed (`memory` lines); then the batch is canceled: the reply (at once) and the cancel
 *    job over the million items (the engines walk the ledger in the background) are timed.
 * 2. End to end: `--e2e N` trivial items (default 100,000; `batchItem`, which completes in its
 *    first step) from `create` to the `batch.completed` callback.
 *
 * BullMQ, same machine, same run (redis-server with `appendonly yes`, as `npm run bench`'s peer;
 * the worker in this process, concurrency 64): `Queue.addBulk` of the submission count (in
 * chunks of 1,000) — its rate; and a flow parent with the end-to-end count of trivial children,
 * from `FlowProducer.add` to the parent's completion (the parent runs once its children did).
 *
 * Prints one JSON line per measurement and a summary table.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { FlowProducer, Queue, QueueEvents, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { spawnEngine, stopChild } from './processes.js';
import {
  freePort,
  makeTempDir,
  readRssMb,
  round,
  spawnManaged,
  stopManaged,
  waitForOutput,
  type Managed,
} from './peers/common.js';

const { values } = parseArgs({
  options: {
    submit: { type: 'string', default: '1000000' },
    e2e: { type: 'string', default: '100000' },
    smoke: { type: 'boolean', default: false },
    'skip-peers': { type: 'boolean', default: false },
    /** Write a heap snapshot of the engine at the end of the submission (and at its start). */
    'heap-snapshots': { type: 'boolean', default: false },
  },
});
const smoke = values.smoke;
const SUBMIT = smoke ? 2_000 : Number(values.submit);
const E2E = smoke ? 500 : Number(values.e2e);
const SHARDS = 16;
const prefix = 'benchb';
const root = resolve(import.meta.dirname, '..');
const log = (s: string) => process.stderr.write(`[bench:batch] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const results: Record<string, unknown>[] = [];
const report = (r: Record<string, unknown>) => {
  results.push(r);
  process.stdout.write(JSON.stringify(r) + '\n');
};

/** Every second: the engine's RSS and heap in use (MB), to see it stay flat. */
function memorySampler(pid: number, metricsPort: number) {
  const samples: { s: number; rssMb: number; heapMb?: number }[] = [];
  const t0 = Date.now();
  let busy = false;
  const take = async () => {
    if (busy) return;
    busy = true;
    try {
      let heapMb: number | undefined;
      try {
        const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
        const m = /^nodejs_heap_size_used_bytes (\S+)$/m.exec(text);
        if (m) heapMb = round(Number(m[1]) / 2 ** 20, 1);
      } catch {
        // the endpoint is busy or gone: RSS only
      }
      samples.push({
        s: Math.round((Date.now() - t0) / 1000),
        rssMb: round(readRssMb(pid), 1),
        ...(heapMb !== undefined ? { heapMb } : {}),
      });
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void take(), 1_000);
  return {
    samples,
    async stop(what: string) {
      clearInterval(timer);
      await take();
      const rss = samples.map((x) => x.rssMb);
      const heap = samples.flatMap((x) => (x.heapMb !== undefined ? [x.heapMb] : []));
      // At most ~30 samples printed, evenly spaced, plus first, max and last.
      const every = Math.max(1, Math.ceil(samples.length / 30));
      const summary = {
        system: 'jetflow',
        memory: what,
        engineRssMb: { first: rss[0], max: Math.max(...rss), last: rss[rss.length - 1] },
        engineHeapMb: heap.length
          ? { first: heap[0], max: Math.max(...heap), last: heap[heap.length - 1] }
          : 'no /metrics',
        samples: samples.filter((_, i) => i % every === 0 || i === samples.length - 1),
      };
      process.stdout.write(JSON.stringify(summary) + '\n');
      return summary;
    },
  };
}

async function jetflow(): Promise<void> {
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const metricsPort = await freePort();
  const nc = await connect({ servers: server.url });
  const client = new Client(nc, { prefix, timeoutMs: 60_000 });
  const engine = await spawnEngine({
    url: server.url,
    prefix,
    shards: SHARDS,
    workflows: 'test/fixtures/batch-workflows.ts',
    name: 'bench-batch-engine',
    extra: ['--metrics-port', String(metricsPort)],
    node: values['heap-snapshots'] ? ['--heapsnapshot-signal=SIGUSR2'] : [],
  });
  try {
    // 1. Submission into a paused batch.
    await client.batches.create({ id: 'sub', type: 'batchItem' });
    await client.batches.pause('sub', { by: 'bench', reason: 'measure submission alone' });
    const mem = memorySampler(engine.pid!, metricsPort);
    if (values['heap-snapshots']) engine.kill('SIGUSR2');
    function* items() {
      for (let i = 0; i < SUBMIT; i++) yield { n: i };
    }
    let t0 = Date.now();
    let lastLog = t0;
    await client.batches.create(
      { id: 'sub', type: 'batchItem', items: items() },
      {
        onProgress: (p) => {
          if (Date.now() - lastLog > 5_000) {
            lastLog = Date.now();
            log(`submitted ${p.next} (${Math.round(p.next / ((Date.now() - t0) / 1000))}/s)`);
          }
        },
      },
    );
    const subMs = Date.now() - t0;
    if (values['heap-snapshots']) engine.kill('SIGUSR2');
    const memSub = await mem.stop('during the submission');
    report({
      system: 'jetflow',
      measure: 'submission (paused batch)',
      items: SUBMIT,
      ms: subMs,
      itemsPerSec: Math.round(SUBMIT / (subMs / 1000)),
      engineRssMb: memSub.engineRssMb,
      engineHeapMb: memSub.engineHeapMb,
    });
    // Cancel of every (pending) item: the reply is at once, a job of the engines does the work.
    const memCancel = memorySampler(engine.pid!, metricsPort);
    t0 = Date.now();
    const canceled = await client.batches.cancel('sub', { by: 'bench', reason: 'measured' });
    const replyMs = Date.now() - t0;
    const jobId = canceled.changed?.jobId as string;
    let lastJobLog = Date.now();
    for (;;) {
      const p = await client.batches.job(jobId);
      if (p.state !== 'running') {
        if (p.done !== SUBMIT) throw new Error(`cancel job: ${JSON.stringify(p)}`);
        break;
      }
      if (Date.now() - lastJobLog > 5_000) {
        lastJobLog = Date.now();
        log(`cancel job: ${p.processed}/${p.matched}`);
      }
      await sleep(500);
    }
    const cancelMs = Date.now() - t0;
    const memC = await memCancel.stop('during the cancel job');
    report({
      system: 'jetflow',
      measure: 'cancel (background job over the ledger)',
      items: SUBMIT,
      replyMs,
      ms: cancelMs,
      itemsPerSec: Math.round(SUBMIT / (cancelMs / 1000)),
      engineRssMb: memC.engineRssMb,
    });

    // 2. End to end.
    t0 = Date.now();
    await client.batches.create(
      { id: 'e2e', type: 'batchItem', items: Array.from({ length: E2E }, (_, n) => ({ n })) },
      { seal: true },
    );
    const submittedMs = Date.now() - t0;
    for (;;) {
      const s = await client.batches.status('e2e');
      if (s.state === 'done' && s.notified) {
        if (s.counts.succeeded !== E2E) throw new Error(`e2e: ${JSON.stringify(s.counts)}`);
        break;
      }
      await sleep(200);
    }
    const e2eMs = Date.now() - t0;
    report({
      system: 'jetflow',
      measure: 'end to end (trivial items, create to callback)',
      items: E2E,
      ms: e2eMs,
      submittedMs,
      itemsPerSec: Math.round(E2E / (e2eMs / 1000)),
    });
  } finally {
    await stopChild(engine);
    await nc.close();
    await server.stop();
  }
}

async function bullmq(): Promise<void> {
  const prov = spawnSync('bash', [resolve(root, 'bench/peers/provision-redis.sh')], {
    encoding: 'utf8',
    timeout: 600_000,
  });
  const bin = prov.stdout?.trim().split('\n').pop();
  if (prov.status !== 0 || !bin) {
    report({ system: 'bullmq', notMeasured: (prov.stderr ?? '').trim() || 'no redis-server' });
    return;
  }
  const temp = await makeTempDir('jf-bullmq-batch-');
  const port = await freePort();
  let redis: Managed | undefined;
  const conns: Redis[] = [];
  const closers: { close(): Promise<void> }[] = [];
  try {
    redis = await spawnManaged('redis-server', bin, [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--dir',
      temp.path,
      '--appendonly',
      'yes',
      '--appendfsync',
      'everysec',
      '--save',
      '',
      '--daemonize',
      'no',
      '--logfile',
      '',
    ]);
    await waitForOutput(redis, /Ready to accept connections/, 20_000);
    const conn = () => {
      const c = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: null });
      conns.push(c);
      return c;
    };
    // 1. addBulk.
    const queue = new Queue('bulk', { connection: conn() });
    closers.push(queue);
    let t0 = Date.now();
    for (let i = 0; i < SUBMIT; i += 1_000) {
      const n = Math.min(1_000, SUBMIT - i);
      await queue.addBulk(
        Array.from({ length: n }, (_, j) => ({ name: 'item', data: { n: i + j } })),
      );
    }
    const subMs = Date.now() - t0;
    report({
      system: 'bullmq',
      measure: 'Queue.addBulk (chunks of 1,000)',
      items: SUBMIT,
      ms: subMs,
      itemsPerSec: Math.round(SUBMIT / (subMs / 1000)),
      redisRssMb: round(readRssMb(redis.pid), 1),
    });
    await queue.obliterate({ force: true });

    // 2. A flow parent with E2E trivial children.
    const worker = new Worker('flow', () => Promise.resolve({ ok: true }), {
      connection: conn(),
      concurrency: 64,
    });
    closers.push(worker);
    const events = new QueueEvents('flow', { connection: conn() });
    closers.push(events);
    await events.waitUntilReady();
    const flow = new FlowProducer({ connection: conn() });
    closers.push(flow);
    t0 = Date.now();
    const node = await flow.add({
      name: 'parent',
      queueName: 'flow',
      children: Array.from({ length: E2E }, (_, n) => ({
        name: 'child',
        queueName: 'flow',
        data: { n },
      })),
    });
    const submittedMs = Date.now() - t0;
    await node.job.waitUntilFinished(events, 3_600_000);
    const e2eMs = Date.now() - t0;
    report({
      system: 'bullmq',
      measure: 'flow parent with trivial children (add to parent done)',
      items: E2E,
      ms: e2eMs,
      submittedMs,
      itemsPerSec: Math.round(E2E / (e2eMs / 1000)),
    });
  } catch (err) {
    report({ system: 'bullmq', notMeasured: String((err as Error)?.message ?? err) });
  } finally {
    for (const c of closers.reverse()) await c.close().catch(() => undefined);
    for (const c of conns) c.disconnect();
    await stopManaged(redis);
    await temp.release();
  }
}

async function main(): Promise<void> {
  log(`submission ${SUBMIT} items, end to end ${E2E} items${smoke ? ' (smoke)' : ''}`);
  await jetflow();
  if (!values['skip-peers']) await bullmq();
  log('results:');
  for (const r of results) {
    log(
      `  ${String(r.system).padEnd(8)} ${String(r.measure ?? 'not measured').padEnd(56)} ${r.itemsPerSec ?? r.notMeasured} items/s`,
    );
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    log(`failed: ${String((err as Error)?.stack ?? err)}`);
    process.exit(1);
  },
);
