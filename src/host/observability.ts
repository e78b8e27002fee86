/**
 * Metrics endpoint and tracing of one jetflow process (engine, worker, visibility, dev): started
 * before the role (so `/healthz` answers and `/readyz` says "starting" while it connects), told
 * about the role once it runs, closed after it.
 */
import type { Logger } from '../engine/ports.js';
import type { Engine } from './engine.js';
import type { Visibility } from './visibility.js';
import type { Worker } from '../worker/index.js';
import {
  createEngineMetrics,
  createMetricsRegistry,
  createVisibilityMetrics,
  createWorkerMetrics,
  MetricsServer,
  type EngineMetricsHandle,
  type VisibilityMetricsHandle,
  type WorkerMetricsHandle,
} from '../metrics/index.js';
import { startTracingFromEnv, type TracingHandle } from '../tracing/sdk.js';
import type { ConnectionState } from '../nats/connection.js';

/** Port of `jetflow dev`'s metrics endpoint (the port OpenTelemetry uses for Prometheus). */
export const DEV_METRICS_PORT = 9464;

export interface ObservabilityOptions {
  /** Service name of the traces (`OTEL_SERVICE_NAME` wins). */
  name: string;
  /** Serve `/metrics`, `/healthz`, `/readyz` on this port (undefined: no endpoint). */
  metricsPort?: number;
  /** Interface of the endpoint (default all). */
  metricsHost?: string;
  logger: Logger;
  env?: NodeJS.ProcessEnv;
}

export class Observability {
  private constructor(
    readonly server: MetricsServer | undefined,
    private readonly tracing: TracingHandle | undefined,
  ) {}

  static async start(o: ObservabilityOptions): Promise<Observability> {
    const tracing = await startTracingFromEnv(o.name, o.logger, o.env);
    let server: MetricsServer | undefined;
    if (o.metricsPort !== undefined) {
      try {
        server = await MetricsServer.start({
          port: o.metricsPort,
          registry: createMetricsRegistry(),
          ...(o.metricsHost ? { host: o.metricsHost } : {}),
        });
        o.logger.info({ port: server.port }, 'metrics at /metrics, health at /healthz, /readyz');
      } catch (err) {
        await tracing?.shutdown();
        throw err;
      }
    }
    return new Observability(server, tracing);
  }

  /** The engine's metrics, to pass to `Engine.create` (undefined without an endpoint). */
  engineMetrics(): EngineMetricsHandle | undefined {
    return this.server ? (this.engine$ ??= createEngineMetrics(this.server.registry)) : undefined;
  }
  private engine$: EngineMetricsHandle | undefined;

  /** The worker's metrics, to pass to `createWorker`. */
  workerMetrics(): WorkerMetricsHandle | undefined {
    return this.server ? (this.worker$ ??= createWorkerMetrics(this.server.registry)) : undefined;
  }
  private worker$: WorkerMetricsHandle | undefined;

  /** The visibility replica's metrics, to pass to `Visibility.create`. */
  visibilityMetrics(): VisibilityMetricsHandle | undefined {
    return this.server
      ? (this.visibility$ ??= createVisibilityMetrics(this.server.registry))
      : undefined;
  }
  private visibility$: VisibilityMetricsHandle | undefined;

  /** The engine runs: its gauges and readiness come from it. */
  engine(engine: Engine): void {
    if (!this.server) return;
    this.engine$?.attach({
      shards: () => engine.shardManager.shards,
      inboxPending: () => engine.inboxPending(),
      cache: () => engine.processor.cacheStats(),
      gateway: () => engine.gatewayStats,
    });
    this.server.readiness = () => engine.readiness();
  }

  /** The worker runs on `connection`. */
  worker(worker: Worker, connection: ConnectionState): void {
    if (!this.server) return;
    this.worker$?.attach({ queues: () => worker.queueStats() });
    this.server.readiness = () =>
      worker.stopping
        ? { ready: false, reason: 'stopping' }
        : connection.connected
          ? { ready: true, reason: 'pulling' }
          : { ready: false, reason: 'NATS connection down' };
  }

  /** The replica serves searches. */
  visibility(v: Visibility): void {
    if (!this.server) return;
    this.visibility$?.attach({ behind: () => v.behind() });
    this.server.readiness = () => v.readiness();
  }

  /** Stop serving and flush traces (idempotent). */
  async close(): Promise<void> {
    await this.server?.close();
    await this.tracing?.shutdown();
  }
}
