/**
 * The OpenTelemetry SDK of jetflow's own processes (engine, worker, visibility, dev), set up from
 * the standard `OTEL_*` environment variables, and only when they ask for traces:
 *
 * - `OTEL_TRACES_EXPORTER=otlp` (or `console`), or an `OTEL_EXPORTER_OTLP_ENDPOINT` /
 *   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, turns it on; `OTEL_TRACES_EXPORTER=none` or
 *   `OTEL_SDK_DISABLED=true` keeps it off.
 * - The exporter is OTLP over HTTP with JSON bodies (`http/json`), configured by the
 *   exporter's own variables (endpoint, headers, timeout).
 * - `OTEL_TRACES_SAMPLER` (`always_on`, `always_off`, `traceidratio`, `parentbased_always_on`
 *   (default), `parentbased_always_off`, `parentbased_traceidratio`) with
 *   `OTEL_TRACES_SAMPLER_ARG`; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.
 *
 * The SDK packages are optional peer dependencies (`@opentelemetry/sdk-trace`,
 * `@opentelemetry/context-async-hooks`, `@opentelemetry/exporter-trace-otlp-http`,
 * `@opentelemetry/resources`), imported here lazily: a process without the variables never
 * loads them, and a process with the variables but without the packages says what to install.
 */
import { context, trace } from '@opentelemetry/api';
import type { Sampler } from '@opentelemetry/sdk-trace';
import type { Logger } from '../engine/ports.js';
import { markTracingActive } from './index.js';

export const SDK_PACKAGES = [
  '@opentelemetry/sdk-trace',
  '@opentelemetry/context-async-hooks',
  '@opentelemetry/exporter-trace-otlp-http',
  '@opentelemetry/resources',
] as const;

export interface TracingHandle {
  /** Flush and stop exporting (best effort, bounded by the exporter's timeout). */
  shutdown(): Promise<void>;
}

/** True when the environment asks for traces. */
export function tracesWanted(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? '').toLowerCase() === 'true') return false;
  const exporter = (env.OTEL_TRACES_EXPORTER ?? '').toLowerCase().trim();
  if (exporter === 'none') return false;
  if (exporter !== '') return true;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

/** `{ [key]: n }` when `env[name]` is a positive integer, else `{}`. */
function envInt(env: NodeJS.ProcessEnv, name: string, key: string): Record<string, number> {
  const n = Number(env[name]);
  return Number.isInteger(n) && n > 0 ? { [key]: n } : {};
}

function resourceAttributes(env: NodeJS.ProcessEnv, serviceName: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (env.OTEL_RESOURCE_ATTRIBUTES ?? '').split(',')) {
    const i = pair.indexOf('=');
    if (i <= 0) continue;
    out[decodeURIComponent(pair.slice(0, i).trim())] = decodeURIComponent(pair.slice(i + 1).trim());
  }
  out['service.name'] = env.OTEL_SERVICE_NAME || out['service.name'] || serviceName;
  return out;
}

/**
 * Register a tracer provider from the environment, or do nothing (resolves undefined) when the
 * environment does not ask for traces. Never throws: a missing SDK package or a bad setting is
 * logged and tracing stays off.
 */
export async function startTracingFromEnv(
  serviceName: string,
  logger: Logger,
  env: NodeJS.ProcessEnv = process.env,
): Promise<TracingHandle | undefined> {
  if (!tracesWanted(env)) return undefined;
  const protocol = env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL ?? env.OTEL_EXPORTER_OTLP_PROTOCOL;
  if (protocol && protocol !== 'http/json') {
    logger.warn(
      { protocol },
      'jetflow exports traces as OTLP http/json only; the protocol setting is ignored',
    );
  }
  try {
    const [sdk, hooks, otlp, resources] = await Promise.all([
      import('@opentelemetry/sdk-trace'),
      import('@opentelemetry/context-async-hooks'),
      import('@opentelemetry/exporter-trace-otlp-http'),
      import('@opentelemetry/resources'),
    ]);
    const exporterName = (env.OTEL_TRACES_EXPORTER ?? 'otlp').toLowerCase().trim();
    const exporter =
      exporterName === 'console' ? new sdk.ConsoleSpanExporter() : new otlp.OTLPTraceExporter();
    const arg = Number(env.OTEL_TRACES_SAMPLER_ARG ?? '1');
    const ratio = Number.isFinite(arg) && arg >= 0 && arg <= 1 ? arg : 1;
    const samplers: Record<string, () => Sampler> = {
      always_on: () => new sdk.AlwaysOnSampler(),
      always_off: () => new sdk.AlwaysOffSampler(),
      traceidratio: () => new sdk.TraceIdRatioBasedSampler(ratio),
      parentbased_always_on: () => new sdk.ParentBasedSampler({ root: new sdk.AlwaysOnSampler() }),
      parentbased_always_off: () =>
        new sdk.ParentBasedSampler({ root: new sdk.AlwaysOffSampler() }),
      parentbased_traceidratio: () =>
        new sdk.ParentBasedSampler({ root: new sdk.TraceIdRatioBasedSampler(ratio) }),
    };
    const samplerName = (env.OTEL_TRACES_SAMPLER ?? 'parentbased_always_on').toLowerCase();
    const sampler = (samplers[samplerName] ?? samplers.parentbased_always_on!)();
    const provider = new sdk.TracerProvider({
      resource: resources.resourceFromAttributes(resourceAttributes(env, serviceName)),
      sampler,
      spanProcessors: [
        new sdk.BatchSpanProcessor({
          exporter,
          ...envInt(env, 'OTEL_BSP_SCHEDULE_DELAY', 'scheduledDelayMillis'),
          ...envInt(env, 'OTEL_BSP_MAX_QUEUE_SIZE', 'maxQueueSize'),
          ...envInt(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 'maxExportBatchSize'),
          ...envInt(env, 'OTEL_BSP_EXPORT_TIMEOUT', 'exportTimeoutMillis'),
        }),
      ],
    });
    context.setGlobalContextManager(new hooks.AsyncLocalStorageContextManager().enable());
    trace.setGlobalTracerProvider(provider);
    markTracingActive();
    logger.info({ exporter: exporterName, sampler: samplerName }, 'tracing on');
    return { shutdown: () => provider.shutdown().catch(() => undefined) };
  } catch (err) {
    logger.warn(
      { err: String((err as Error)?.message ?? err), packages: SDK_PACKAGES },
      'OTEL_* asks for traces but the OpenTelemetry SDK could not be loaded: install the packages listed (tracing stays off)',
    );
    return undefined;
  }
}
