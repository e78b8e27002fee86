/** The benchmark's worker process: `node --import tsx bench/worker.ts <natsUrl> <prefix>`. */
import { connect } from '@nats-io/transport-node';
import { createWorker } from '../src/worker/index.js';

const [url, prefix] = process.argv.slice(2);
const nc = await connect({ servers: url!, noAsyncTraces: true });
const worker = await createWorker({
  connection: nc,
  prefix: prefix!,
  concurrency: 256,
  activities: { inc: ({ x }: { x: number }) => x + 1 },
});
process.stdout.write('worker ready\n');
process.on('SIGTERM', () => {
  void worker.close().then(() => nc.close().then(() => process.exit(0)));
});
