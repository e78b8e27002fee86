/** `--metrics-port` and the OTEL_* tracing set-up of the long-running roles. */
import type { Observability } from '../host/observability.js';
import { UsageError } from './exit.js';

/** `--metrics-port` (or JETFLOW_METRICS_PORT): a port, `off`, or `fallback` when unset. */
export function pickMetricsPort(
  flag: string | undefined,
  env: NodeJS.ProcessEnv,
  fallback?: number,
): number | undefined {
  const text = flag ?? (env.JETFLOW_METRICS_PORT || undefined);
  if (text === undefined) return fallback;
  if (text === 'off') return undefined;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 65535)
    throw new UsageError(`--metrics-port must be 0-65535 or off, got ${text}`);
  return n;
}

/** Start the metrics endpoint (when a port is given) and tracing (when OTEL_* asks for it). */
export async function startObservability(
  name: string,
  metricsPort: number | undefined,
  logLevel: string | undefined,
  metricsHost?: string,
): Promise<Observability> {
  const [{ Observability }, { createLogger }] = await Promise.all([
    import('../host/observability.js'),
    import('../host/logger.js'),
  ]);
  return Observability.start({
    name,
    logger: createLogger(name, logLevel ?? process.env.JETFLOW_LOG_LEVEL ?? 'info'),
    ...(metricsPort !== undefined ? { metricsPort } : {}),
    ...(metricsHost ? { metricsHost } : {}),
  });
}
