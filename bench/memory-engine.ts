/**
 * The engine process of `bench:memory`: an engine in this process (so that it can report its own
 * heap), started with `--expose-gc`.
 *
 *   node --expose-gc --import tsx bench/memory-engine.ts <natsUrl> <prefix> <cacheMaxBytes> <cacheSize>
 *
 * Answers `bench.memory.<prefix>` with `{heapUsed, rss, cache}` measured after a full GC.
 */
import { connect } from '@nats-io/transport-node';
import { Engine } from '../src/host/engine.js';
import { createRegistry } from '../src/engine/registry.js';
import { workflows } from './workflows.js';

const [url, prefix, maxBytes, size] = process.argv.slice(2);
const engine = await Engine.create(
  {
    servers: url!,
    prefix: prefix!,
    shards: 16,
    cacheMaxBytes: Number(maxBytes),
    cacheSize: Number(size),
    maxInputBytes: 262144,
    logLevel: 'warn',
  },
  { registry: createRegistry(workflows) },
);
const gc = (globalThis as { gc?: () => void }).gc;
const nc = await connect({ servers: url!, noAsyncTraces: true });
nc.subscribe(`bench.memory.${prefix}`, {
  callback: (_err, m) => {
    gc?.();
    const mem = process.memoryUsage();
    m.respond(
      JSON.stringify({
        heapUsed: mem.heapUsed,
        rss: mem.rss,
        cache: engine.processor.cacheStats(),
        gc: gc !== undefined,
      }),
    );
  },
});
process.stdout.write('memory engine ready\n');
process.on('SIGTERM', () => {
  void nc
    .close()
    .then(() => engine.close())
    .then(() => process.exit(0));
});
