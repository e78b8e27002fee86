/**
 * The benchmark's worker process: `node --import tsx bench/worker.ts <natsUrl> <prefix>`. With
 * JETFLOW_METRICS_PORT it serves metrics, with OTEL_* it traces, as `jetflow worker` does.
 */
import { connect } from '@nats-io/transport-node';
import { createWorker } from '../src/worker/index.js';
import { Observability } from '../src/host/observability.js';
import { trackConnection } from '../src/nats/connection.js';
import { createLogger } from '../src/host/logger.js';
import { pickMetricsPort } from '../src/cli/observe.js';

const [url, prefix] = process.argv.slice(2);
const port = pickMetricsPort(undefined, process.env);
const obs = await Observability.start({
  name: 'bench-worker',
  logger: createLogger('bench-worker', 'warn'),
  ...(port !== undefined ? { metricsPort: port } : {}),
});
const nc = await connect({ servers: url!, noAsyncTraces: true });
const metrics = obs.workerMetrics();
const worker = await createWorker({
  connection: nc,
  prefix: prefix!,
  concurrency: 256,
  // bench:priority's baseline: BENCH_PRIORITY_LEVELS=off pulls level 3 only, as before levels.
  priorityLevels: process.env.BENCH_PRIORITY_LEVELS !== 'off',
  activities: { inc: ({ x }: { x: number }) => x + 1 },
  ...(metrics ? { metrics } : {}),
});
obs.worker(worker, trackConnection(nc));
process.stdout.write('worker ready\n');
process.on('SIGTERM', () => {
  void worker.close().then(() => nc.close().then(() => obs.close().then(() => process.exit(0))));
});
