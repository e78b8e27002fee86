/**
 * BullMQ worker for the peer benchmark's workload 1 ("sequential"), run as its own child process
 * by bench/peers/bullmq.ts so its CPU can be measured separately from redis-server.
 *
 * A workflow is a BullMQ flow of three jobs on one queue, chained parent ← child:
 * step3 ← step2 ← step1. BullMQ runs a parent only after its child completed, so the steps run in
 * order; step1 returns `data.input + 1`, and each later step returns its child's return value + 1
 * (read with `job.getChildrenValues()`), so input 0 yields 3.
 *
 * Configuration comes from the environment: REDIS_PORT (on 127.0.0.1), QUEUE_NAME,
 * WORKER_CONCURRENCY. Prints `BULLMQ_WORKER_READY` once connected; SIGTERM/SIGINT close it.
 */
import { Worker } from 'bullmq';
import type { Job } from 'bullmq';
import { Redis } from 'ioredis';

/** Job payload: `input` is set on step 1 only. */
export interface StepData {
  step: 1 | 2 | 3;
  input?: number;
}

function requiredEnv(name: string): string {
  const v = process.env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
}

const port = Number(requiredEnv('REDIS_PORT'));
const queueName = requiredEnv('QUEUE_NAME');
const concurrency = Number(process.env.WORKER_CONCURRENCY ?? '64');

async function processStep(job: Job<StepData, number>): Promise<number> {
  if (job.data.step === 1) return (job.data.input ?? 0) + 1;
  const values = Object.values(await job.getChildrenValues<number>());
  const [prev] = values;
  if (values.length !== 1 || typeof prev !== 'number') {
    throw new Error(`step ${job.data.step} expected one numeric child value, got ${values.length}`);
  }
  return prev + 1;
}

// BullMQ needs maxRetriesPerRequest: null on connections used for blocking commands.
const connection = new Redis({ host: '127.0.0.1', port, maxRetriesPerRequest: null });
const worker = new Worker<StepData, number>(queueName, processStep, { connection, concurrency });
worker.on('error', (err) => process.stderr.write(`worker error: ${err.message}\n`));
await worker.waitUntilReady();
process.stdout.write('BULLMQ_WORKER_READY\n');

let closing = false;
const shutdown = (): void => {
  if (closing) return;
  closing = true;
  setTimeout(() => process.exit(1), 3_000).unref();
  void worker
    .close()
    .then(() => connection.quit())
    .finally(() => process.exit(0));
};
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);
