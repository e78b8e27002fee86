/**
 * `jetflow worker`: a worker process for the user's activities module. The module exports
 * `activities` (name → function; or a default export of that shape) and may export
 * `queueSettings`, `rateLimitPerSecond`, `queues` and `concurrency` (the `createWorker` options
 * of the same names); flags override the module.
 */
import { ConfigError } from '../errors.js';
import { connectNats, trackConnection } from '../nats/connection.js';
import { createLogger } from '../host/logger.js';
import { createWorker, type ActivityFn, type WorkerOptions } from '../worker/index.js';
import type { QueueSettingsInput } from '../nats/tasks.js';
import { UsageError } from './exit.js';
import { importUserModule } from './modules.js';
import { pickMetricsPort, startObservability } from './observe.js';

export interface WorkerFlags {
  activities?: string;
  http?: boolean;
  queues?: string;
  concurrency?: string;
  natsUrl?: string;
  prefix?: string;
  maxInFlight?: string;
  ackWaitMs?: string;
  rateLimit?: string;
  forceQueueSettings?: boolean;
  shutdownGraceMs?: string;
  logLevel?: string;
  name?: string;
  metricsPort?: string;
}

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0)
    throw new UsageError(`${flag} must be a positive integer (got ${text})`);
  return n;
}

/** `N` (every queue of this worker) or `queue=N,queue2=M`. */
export function perQueue(
  text: string | undefined,
  flag: string,
  queues: string[],
): Record<string, number> {
  if (text === undefined) return {};
  if (/^\d+$/.test(text.trim()))
    return Object.fromEntries(queues.map((q) => [q, positiveInt(text.trim(), flag)]));
  const out: Record<string, number> = {};
  for (const part of text.split(',')) {
    const [q, n, ...rest] = part.split('=');
    if (!q || n === undefined || rest.length)
      throw new UsageError(`${flag} takes N or queue=N[,queue=N] (got ${text})`);
    out[q.trim()] = positiveInt(n.trim(), flag);
  }
  return out;
}

/** Worker options from the module's exports and the flags (flags win). */
export async function workerOptions(
  f: WorkerFlags,
): Promise<Omit<WorkerOptions, 'connection' | 'logger'>> {
  if (f.activities === undefined && !f.http)
    throw new UsageError('give --activities <module>, or --http with --queues (or both)');
  if (f.activities === undefined && f.queues === undefined)
    throw new UsageError(
      '--http without --activities needs --queues: the queues of the HTTP activities',
    );
  const mod: Record<string, unknown> =
    f.activities !== undefined ? await importUserModule(f.activities, 'activities') : {};
  const activities = (f.activities !== undefined ? (mod.activities ?? mod.default) : {}) as
    Record<string, ActivityFn> | undefined;
  if (
    !activities ||
    typeof activities !== 'object' ||
    !Object.values(activities).every((fn) => typeof fn === 'function')
  ) {
    throw new ConfigError(
      `${f.activities} must export \`activities\` (or default): an object of activity functions by name`,
    );
  }
  const queues =
    f.queues !== undefined
      ? f.queues
          .split(',')
          .map((q) => q.trim())
          .filter(Boolean)
      : ((mod.queues as string[] | undefined) ?? Object.keys(activities));
  const settings: Record<string, QueueSettingsInput> = {
    ...(mod.queueSettings as Record<string, QueueSettingsInput> | undefined),
  };
  const set = (values: Record<string, number>, key: 'maxInFlight' | 'ackWaitMs') => {
    for (const [q, n] of Object.entries(values)) settings[q] = { ...settings[q], [key]: n };
  };
  set(perQueue(f.maxInFlight, '--max-in-flight', queues), 'maxInFlight');
  set(perQueue(f.ackWaitMs, '--ack-wait-ms', queues), 'ackWaitMs');
  if (f.forceQueueSettings) for (const q of Object.keys(settings)) settings[q]!.force = true;
  return {
    activities,
    ...(f.http ? { http: true } : {}),
    queues,
    concurrency:
      f.concurrency !== undefined
        ? positiveInt(f.concurrency, '--concurrency')
        : (mod.concurrency as number | undefined),
    queueSettings: settings,
    rateLimitPerSecond: {
      ...(mod.rateLimitPerSecond as Record<string, number> | undefined),
      ...perQueue(f.rateLimit, '--rate-limit', queues),
    },
    ...(f.prefix !== undefined ? { prefix: f.prefix } : {}),
    ...(f.shutdownGraceMs !== undefined
      ? { shutdownGraceMs: positiveInt(f.shutdownGraceMs, '--shutdown-grace-ms') }
      : {}),
  };
}

/**
 * Run a worker until the first SIGTERM/SIGINT, which drains it (stop fetching, let running
 * attempts finish within the grace, release the rest, drain the connection) and exits 0.
 */
export async function runWorker(
  f: WorkerFlags,
  env: NodeJS.ProcessEnv,
  onSignals: (first: () => void) => void,
): Promise<number> {
  const opts = await workerOptions(f);
  const servers = (f.natsUrl ?? (env.NATS_URL || 'nats://127.0.0.1:4222')).split(',');
  const logger = createLogger(
    f.name ?? env.JETFLOW_NAME ?? 'jetflow-worker',
    f.logLevel ?? (env.JETFLOW_LOG_LEVEL || 'info'),
  );
  const prefix = opts.prefix ?? (env.JETFLOW_PREFIX || undefined);
  let stop: (() => void) | undefined;
  let stopped = false;
  onSignals(() => {
    stopped = true;
    stop?.();
  });
  const obs = await startObservability(
    f.name ?? (env.JETFLOW_NAME || 'jetflow-worker'),
    pickMetricsPort(f.metricsPort, env),
    f.logLevel ?? (env.JETFLOW_LOG_LEVEL || undefined),
  );
  const metrics = obs.workerMetrics();
  const { nc } = await connectNats(servers, 'jetflow-worker').catch(async (err: unknown) => {
    await obs.close();
    throw err;
  });
  const connection = trackConnection(nc);
  try {
    const worker = await createWorker({
      ...opts,
      ...(prefix ? { prefix } : {}),
      ...(metrics ? { metrics } : {}),
      connection: nc,
      logger,
    });
    obs.worker(worker, connection);
    stop = () => void worker.close();
    if (stopped) stop();
    logger.info(
      { queues: opts.queues, activities: Object.keys(opts.activities), pid: process.pid },
      'worker started',
    );
    await worker.run();
    logger.info({ stats: worker.stats }, 'worker stopped');
  } finally {
    await nc.drain().catch(() => undefined);
    await obs.close();
  }
  return 0;
}
