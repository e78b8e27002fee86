/**
 * `jetflow dev`: a local nats-server (unless NATS_URL is set), an engine, a visibility replica
 * (so `jetflow ls` answers) and the demo.
 */
import { resolve } from 'node:path';
import type { EngineOptions } from '../config.js';
import type { WorkflowDefinition } from '../engine/registry.js';
import { createRegistry } from '../engine/registry.js';
import { Engine } from '../host/engine.js';
import type { Visibility } from '../host/visibility.js';
import type { HttpServer } from '../http/server.js';
import type { ConsoleServer } from '../host/console.js';
import type { Registry } from '../engine/registry.js';
import type { Client } from '../client/index.js';
import { repoRoot, startLocalServer } from '../host/nats-server.js';
import { runDemo } from './demo.js';
import { DEV_METRICS_PORT } from '../host/observability.js';
import { pickMetricsPort, startObservability } from './observe.js';

export interface DevDeps {
  loadWorkflows(): Promise<WorkflowDefinition[]>;
  engineOptions(
    v: Record<string, string | boolean | undefined>,
    env: NodeJS.ProcessEnv,
  ): EngineOptions;
  onSignals(first: () => void): void;
  print: (line: string) => void;
}

export async function runDev(
  v: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv,
  d: DevDeps,
): Promise<number> {
  const external = (v['nats-url'] as string | undefined) ?? (env.NATS_URL || undefined);
  const server = external ? undefined : await startLocalServer(resolve(repoRoot, 'nats.conf'));
  const url = external ?? server!.url;
  d.print(`jetflow: nats-server ${external ? 'at' : 'started at'} ${url}`);
  let engine: Engine | undefined;
  const obs = await startObservability(
    'jetflow-dev',
    pickMetricsPort(v['metrics-port'] as string | undefined, env, DEV_METRICS_PORT),
    (v['log-level'] as string | undefined) ?? 'warn',
    '127.0.0.1',
  ).catch(async (err: unknown) => {
    // A taken port is reported, not fatal (dev runs on without the endpoint).
    d.print(`jetflow: metrics endpoint not available: ${String((err as Error)?.message ?? err)}`);
    return startObservability('jetflow-dev', undefined, 'warn');
  });
  if (obs.server) {
    d.print(
      `jetflow: metrics at http://127.0.0.1:${obs.server.port}/metrics (health: /healthz, /readyz)`,
    );
  }
  let visibility: Promise<Visibility | undefined> | undefined;
  let http: { server: HttpServer; client: Client } | undefined;
  let consoleUi: { server: ConsoleServer; client: Client } | undefined;
  let stopping = false;
  const abort = new AbortController();
  const stop = async () => {
    stopping = true;
    abort.abort();
    await consoleUi?.server.close();
    await consoleUi?.client.close();
    await http?.server.close();
    await http?.client.close();
    await (await visibility)?.close();
    await engine?.close();
    await obs.close();
    await server?.stop();
  };
  d.onSignals(() => void stop());
  try {
    const registry = createRegistry(await d.loadWorkflows());
    const metrics = obs.engineMetrics();
    engine = await Engine.create(
      {
        ...d.engineOptions(v, env),
        servers: url,
        logLevel: (v['log-level'] as EngineOptions['logLevel']) ?? 'warn',
      },
      { registry, ...(metrics ? { metrics } : {}) },
    );
    obs.engine(engine);
    d.print(`jetflow: engine up (${registry.list().join(', ')})`);
    // The replica joins the search queue group once built; the demo does not wait for it.
    const dataDir =
      (v['data-dir'] as string | undefined) ?? (env.JETFLOW_DATA_DIR || resolve('.jetflow/dev'));
    // Loaded here, not at the top: dev runs without better-sqlite3's addon too (no search then).
    const { prefix, finishedRetentionMs } = engine.config;
    visibility = import('../host/visibility.js')
      .then(({ Visibility }) =>
        Visibility.create({
          servers: url,
          prefix,
          dataDir,
          finishedRetentionMs,
          logLevel: (v['log-level'] as string | undefined) ?? 'warn',
          name: 'jetflow-dev-visibility',
          signal: abort.signal,
          ...(obs.visibilityMetrics() ? { metrics: obs.visibilityMetrics() } : {}),
        }),
      )
      .then(
        (vis) => {
          d.print(`jetflow: visibility index at ${vis.file} (try \`jetflow ls\`)`);
          return vis;
        },
        (err: unknown) => {
          d.print(
            `jetflow: visibility index not available: ${String((err as Error)?.message ?? err)}`,
          );
          return undefined;
        },
      );
    if (v['no-http'] !== false) http = await startDevHttp(v, env, url, prefix, d.print);
    if (v['no-console'] !== false)
      consoleUi = await startDevConsole(
        v,
        env,
        url,
        prefix,
        engine.config.shards,
        registry,
        d.print,
      );
    await runDemo(url, engine.config.prefix, d.print);
    if (v.once || stopping) {
      await stop();
      return 0;
    }
    d.print('jetflow: serving; try `jetflow query order <id>` or any NATS client. Ctrl-C to stop.');
    await engine.run();
    await consoleUi?.server.close();
    await consoleUi?.client.close();
    await http?.server.close();
    await http?.client.close();
    await (await visibility)?.close();
    await obs.close();
    await server?.stop();
    return 0;
  } catch (err) {
    await stop();
    throw err;
  }
}

/** The HTTP ingress of dev; a port already taken is reported, not fatal (dev runs on). */
async function startDevHttp(
  v: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv,
  url: string,
  prefix: string,
  print: (line: string) => void,
): Promise<{ server: HttpServer; client: Client } | undefined> {
  const { Client } = await import('../client/index.js');
  const { startHttp } = await import('../http/server.js');
  const client = await Client.connect(url, { prefix });
  try {
    const port = Number((v['http-port'] as string | undefined) ?? (env.JETFLOW_HTTP_PORT || 8080));
    const server = await startHttp({ client, port, log: print });
    return { server, client };
  } catch (err) {
    await client.close();
    print(`jetflow: http ingress not available: ${String((err as Error)?.message ?? err)}`);
    return undefined;
  }
}

/** The web console of dev (`jetflow console`); a port already taken is reported, not fatal. */
async function startDevConsole(
  v: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv,
  url: string,
  prefix: string,
  shards: number,
  registry: Registry,
  print: (line: string) => void,
): Promise<{ server: ConsoleServer; client: Client } | undefined> {
  const { Client } = await import('../client/index.js');
  const { startConsole } = await import('../host/console.js');
  const client = await Client.connect(url, { prefix });
  try {
    const port = Number(
      (v['console-port'] as string | undefined) ?? (env.JETFLOW_CONSOLE_PORT || 8233),
    );
    const server = await startConsole({ client, registry, shards, port });
    print(`jetflow: console at ${server.url}`);
    return { server, client };
  } catch (err) {
    await client.close();
    print(`jetflow: console not available: ${String((err as Error)?.message ?? err)}`);
    return undefined;
  }
}
