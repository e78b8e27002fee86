/** Internal entry for tests and tools: not covered by semver. */
export * from './index.js';
export {
  createProcessor,
  decodeInbox,
  type Processor,
  type ProcessorStats,
} from './engine/processor.js';
export { decide, type Decision } from './engine/step.js';
export * from './engine/ports.js';
export { ensureTopology, topology, topologyNames, type TopologyNames } from './nats/topology.js';
export { createKvRecordStore } from './nats/store.js';
export { createInboxReader, consumeShard } from './nats/inbox.js';
export { createEffectSink } from './nats/effects.js';
export { pack, unpack, encodeBody, decodeBody } from './contracts/codec.js';
// The visibility role loads better-sqlite3 (a native addon) when imported: not in the main entry,
// so that an install without the addon still runs engines, workers and clients.
export { Visibility, type VisibilityOptions, type VisibilityStats } from './host/visibility.js';
export { VisibilityIndex } from './visibility/projection.js';
export { parseSearch, parseCounts } from './visibility/query.js';
// Metrics (prom-client) and the process endpoint; tracing helpers (@opentelemetry/api).
export {
  createEngineMetrics,
  createMetricsRegistry,
  createVisibilityMetrics,
  createWorkerMetrics,
  MetricsServer,
  type EngineMetricsHandle,
  type Readiness,
  type VisibilityMetricsHandle,
  type WorkerMetricsHandle,
} from './metrics/index.js';
export { Observability, DEV_METRICS_PORT } from './host/observability.js';
export { createStepTracing, injectTrace, contextOf, traceHeaders } from './tracing/index.js';
export { startTracingFromEnv, tracesWanted } from './tracing/sdk.js';
