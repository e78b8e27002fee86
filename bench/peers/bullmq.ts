/**
 * BullMQ peer measurement for benchmark workload 1 ("sequential"): a flow of three chained jobs
 * (step3 ← step2 ← step1, each returning its input + 1), N workflows at a given concurrency,
 * latency measured from the client's `FlowProducer.add` to the client seeing the last job
 * complete (`job.waitUntilFinished` on a QueueEvents stream).
 *
 * `runBullmq(opts)` starts everything itself and tears it all down (processes killed, temp dir
 * deleted) on every path; it never throws — a peer that cannot be started or measured is reported
 * as `{ system: 'bullmq', notMeasured: reason }`.
 *
 * Topology (all on 127.0.0.1, two child processes so their CPU can be read from /proc):
 *   - redis-server (provisioned by bench/peers/provision-redis.sh, which installs Debian's package
 *     with apt-get when it is missing) on a free port, with a temp dir and durable-ish settings:
 *     `--appendonly yes --appendfsync everysec --save ''` (AOF, fsync once a second, no RDB).
 *   - the worker bench/peers/bullmq-worker.ts (concurrency `workerConcurrency`, default 64).
 *   - the client (this process): FlowProducer + QueueEvents.
 *
 * Completed jobs are kept (BullMQ's default), like the peers' retained execution history.
 *
 * Measured: throughput (workflows/s over the measured phase), p50/p99 latency, CPU seconds per
 * workflow of redis-server (server) and of the worker process (worker), and the redis-server RSS
 * at the end of the measured phase. A warm-up batch runs first and is not counted.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FlowProducer, QueueEvents } from 'bullmq';
import type { FlowJob } from 'bullmq';
import { Redis } from 'ioredis';
import type { StepData } from './bullmq-worker.js';
import {
  cpuSampler,
  errorMessage,
  freePort,
  invalidOpts,
  loadTimeoutMs,
  makeTempDir,
  percentile,
  readRssMb,
  round,
  runClosedLoop,
  settleWithin,
  spawnManaged,
  stopManaged,
  withTimeout,
  waitForOutput,
  warmupCount,
} from './common.js';
import type { Managed, PeerOpts, PeerResult } from './common.js';

export interface BullmqOpts extends PeerOpts {
  /** Worker concurrency (jobs processed at once by the worker process); default 64. */
  workerConcurrency?: number;
}

const HERE = fileURLToPath(new URL('.', import.meta.url));
const WORKER_FILE = join(HERE, 'bullmq-worker.ts');
const PROVISION_SCRIPT = join(HERE, 'provision-redis.sh');
/** tsx's ESM loader, by absolute URL so children need not resolve it from their cwd. */
const TSX_LOADER = import.meta.resolve('tsx');
const QUEUE = 'seq';
const WAIT_TIMEOUT_MS = 30_000;

/** Runs provision-redis.sh; returns the redis-server path or the reason it is unavailable. */
function provisionRedis(log: (s: string) => void): { bin: string } | { reason: string } {
  log('bullmq: provisioning redis-server');
  const r = spawnSync('bash', [PROVISION_SCRIPT], { encoding: 'utf8', timeout: 600_000 });
  const bin = r.stdout?.trim().split('\n').pop();
  if (r.status === 0 && bin) return { bin };
  const why = r.error
    ? r.error.message
    : (r.stderr ?? '').trim().split('\n').slice(-3).join(' | ') || `exit ${r.status}`;
  return { reason: `redis-server unavailable: ${why}` };
}

/** The three-step flow: BullMQ runs children before parents, so step1 runs first. */
function sequentialFlow(): FlowJob {
  const data = (step: StepData['step'], input?: number): StepData =>
    input === undefined ? { step } : { step, input };
  return {
    name: 'step3',
    queueName: QUEUE,
    data: data(3),
    children: [
      {
        name: 'step2',
        queueName: QUEUE,
        data: data(2),
        children: [{ name: 'step1', queueName: QUEUE, data: data(1, 0) }],
      },
    ],
  };
}

export async function runBullmq(opts: BullmqOpts): Promise<PeerResult> {
  const { workflows, concurrency, log } = opts;
  const invalid = invalidOpts(opts);
  if (invalid) return { system: 'bullmq', notMeasured: invalid };
  const found = provisionRedis(log);
  if ('reason' in found) return { system: 'bullmq', notMeasured: found.reason };

  let temp: Awaited<ReturnType<typeof makeTempDir>> | undefined;
  let redis: Managed | undefined;
  let worker: Managed | undefined;
  let producerConn: Redis | undefined;
  let eventsConn: Redis | undefined;
  let connError = '';
  let flow: FlowProducer | undefined;
  let events: QueueEvents | undefined;
  try {
    temp = await makeTempDir('jf-bullmq-');
    const dir = temp.path;
    const port = await freePort();
    redis = await spawnManaged('redis-server', found.bin, [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--dir',
      dir,
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
    log(`bullmq: redis-server pid ${redis.pid} on 127.0.0.1:${port}`);

    const workerConcurrency = opts.workerConcurrency ?? 64;
    worker = await spawnManaged(
      'bullmq-worker',
      process.execPath,
      ['--import', TSX_LOADER, WORKER_FILE],
      {
        env: {
          ...process.env,
          REDIS_PORT: String(port),
          QUEUE_NAME: QUEUE,
          WORKER_CONCURRENCY: String(workerConcurrency),
        },
      },
    );
    await waitForOutput(worker, /BULLMQ_WORKER_READY/, 30_000);
    log(`bullmq: worker pid ${worker.pid} (concurrency ${workerConcurrency})`);

    const redisOpts = {
      host: '127.0.0.1',
      port,
      maxRetriesPerRequest: null,
      connectTimeout: 10_000,
    };
    // Connection errors surface as failed or timed-out calls (the last one is added to the
    // reason); the listener also keeps ioredis from logging every reconnection attempt.
    const onConnError = (err: Error): void => {
      connError = err.message;
    };
    producerConn = new Redis(redisOpts).on('error', onConnError);
    flow = new FlowProducer({ connection: producerConn });
    // QueueEvents blocks on XREAD: it gets its own connection.
    eventsConn = new Redis(redisOpts).on('error', onConnError);
    events = new QueueEvents(QUEUE, { connection: eventsConn });
    // Each in-flight waitUntilFinished adds two listeners to QueueEvents and one ('closing') to
    // the FlowProducer its job came from.
    events.setMaxListeners(2 * concurrency + 16);
    flow.setMaxListeners(concurrency + 16);
    flow.on('error', onConnError);
    events.on('error', onConnError);
    await events.waitUntilReady();
    const flowProducer = flow;
    const queueEvents = events;

    const invoke = async (): Promise<void> => {
      // ioredis queues commands while reconnecting: bound the add as well as the wait.
      const node = await withTimeout(
        flowProducer.add(sequentialFlow()),
        WAIT_TIMEOUT_MS,
        'flow add',
      );
      const result: unknown = await node.job.waitUntilFinished(queueEvents, WAIT_TIMEOUT_MS);
      if (result !== 3) {
        throw new Error(`workflow ${node.job.id} returned ${JSON.stringify(result)}`);
      }
    };

    const warm = warmupCount(workflows, concurrency);
    log(`bullmq: warm-up ${warm} (concurrency ${concurrency})`);
    const children = [redis, worker];
    await runClosedLoop(warm, concurrency, invoke, loadTimeoutMs(warm, concurrency), children);

    log(`bullmq: measuring ${workflows} workflows at concurrency ${concurrency}`);
    const serverCpu = cpuSampler([redis.pid]);
    const workerCpu = cpuSampler([worker.pid]);
    const { latenciesMs, wallMs } = await runClosedLoop(
      workflows,
      concurrency,
      invoke,
      loadTimeoutMs(workflows, concurrency),
      children,
    );
    const serverCpuSec = serverCpu.delta();
    const workerCpuSec = workerCpu.delta();
    const serverRssMb = readRssMb(redis.pid);
    latenciesMs.sort((a, b) => a - b);
    return {
      system: 'bullmq',
      workload: 'sequential',
      concurrency,
      workflows,
      throughput: round(workflows / (wallMs / 1000), 1),
      p50Ms: round(percentile(latenciesMs, 50), 2),
      p99Ms: round(percentile(latenciesMs, 99), 2),
      ...(serverCpuSec === undefined
        ? {}
        : { serverCpuSecPerWf: round(serverCpuSec / workflows, 6) }),
      ...(workerCpuSec === undefined
        ? {}
        : { workerCpuSecPerWf: round(workerCpuSec / workflows, 6) }),
      serverRssMb: round(serverRssMb, 1),
    };
  } catch (err) {
    const tail = worker?.output().slice(-1500) || redis?.output().slice(-1500);
    if (tail) log(`bullmq: child output tail:\n${tail}`);
    const conn = connError ? ` (last redis connection error: ${connError})` : '';
    return { system: 'bullmq', notMeasured: `bullmq run failed: ${errorMessage(err)}${conn}` };
  } finally {
    await settleWithin(events?.close(), 3_000);
    await settleWithin(flow?.close(), 3_000);
    eventsConn?.disconnect();
    producerConn?.disconnect();
    await stopManaged(worker, 5_000).catch(() => undefined);
    await stopManaged(redis, 5_000).catch(() => undefined);
    await temp?.release().catch(() => undefined);
  }
}
