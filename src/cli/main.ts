/**
 * `jetflow` command line.
 *
 *   jetflow engine [options]   run an engine (config: flags > env > --config file > defaults)
 *   jetflow dev [--once]       the quick start: local nats-server + engine + the demo workflow
 *   jetflow server             run the local nats-server with nats.conf (provisioned if needed)
 *
 * Signals: the first SIGINT/SIGTERM drains (finish in-flight steps, then exit 0); a second one
 * forces exit 1.
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Engine } from '../host/engine.js';
import { createRegistry, type WorkflowDefinition } from '../engine/registry.js';
import { compileEngineConfig, type EngineOptions } from '../config.js';
import { connectNats } from '../nats/connection.js';
import { formatStatus, systemStatus } from '../nats/status.js';
import { ConfigError, JetflowError } from '../errors.js';
import { repoRoot, startLocalServer } from '../host/nats-server.js';
import { runDemo } from './demo.js';

const USAGE = `usage: jetflow <engine|dev|server|status> [options]

engine options (env in brackets):
  --nats-url URL[,URL]     NATS servers [NATS_URL] (default nats://127.0.0.1:4222)
  --prefix P               subject prefix [JETFLOW_PREFIX] (default wf)
  --shards N               shard count, equal to nats.conf's partition() [JETFLOW_SHARDS] (default 16)
  --shard-ids LIST         shards this engine consumes, e.g. 0-7,12 [JETFLOW_SHARD_IDS] (default all)
  --replicas N             stream/bucket replicas [JETFLOW_REPLICAS] (default 1)
  --workflows MODULE       module exporting the workflow definitions [JETFLOW_WORKFLOWS] (default actors/index.ts)
  --cache-size N           records cached in memory [JETFLOW_CACHE_SIZE] (default 10000)
  --cache-max-bytes N      bytes of cached records (estimated) [JETFLOW_CACHE_MAX_BYTES] (default 268435456)
  --finished-retention-ms MS  keep finished workflows' records this long, 0 = forever [JETFLOW_FINISHED_RETENTION_MS] (default 604800000)
  --events-max-bytes N     size bound of the events stream [JETFLOW_EVENTS_MAX_BYTES] (default 268435456)
  --gateway-max-in-flight N  public requests worked on at once [JETFLOW_GATEWAY_MAX_IN_FLIGHT] (default 1000)
  --ack-wait-ms MS         inbox AckWait [JETFLOW_ACK_WAIT_MS] (default 30000)
  --failover-ms MS         how soon a dead engine's shards move [JETFLOW_FAILOVER_MS] (default 10000)
  --max-input-bytes N      max public request body [JETFLOW_MAX_INPUT_BYTES] (default 262144)
  --log-level L            debug|info|warn|error|silent [JETFLOW_LOG_LEVEL] (default info)
  --name NAME              engine name in logs [JETFLOW_NAME]
  --reply-prefixes LIST    reply subjects the engine answers on [JETFLOW_REPLY_PREFIXES] (default _INBOX.)
  --msg-id-memory N        client msg ids remembered per workflow [JETFLOW_MSG_ID_MEMORY] (default 64)
  --config FILE            JSON file with the same options in camelCase
status options: --nats-url, --prefix, --shards as for engine; --json for machine output
dev options:
  --once                   run the demo and exit instead of serving until Ctrl-C
`;

async function loadWorkflows(spec: string | undefined): Promise<WorkflowDefinition[]> {
  const path = resolve(spec ?? resolve(repoRoot, 'actors/index.ts'));
  const mod = (await import(pathToFileURL(path).href)) as {
    default?: unknown;
    workflows?: unknown;
  };
  const defs = mod.workflows ?? mod.default;
  if (!Array.isArray(defs)) {
    throw new ConfigError(
      `${path} must export \`workflows\` (or default): an array of workflow definitions`,
    );
  }
  return defs as WorkflowDefinition[];
}

/** Engine options from parsed flags, the environment and the `--config` file (in that order). */
export function engineOptions(
  v: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv,
): EngineOptions {
  const file = (v.config as string | undefined) ?? env.JETFLOW_CONFIG;
  const fromFile = file ? (JSON.parse(readFileSync(file, 'utf8')) as EngineOptions) : {};
  // An empty environment variable counts as unset.
  const pick = (flag: string, envName: string) =>
    (v[flag] as string | undefined) ?? (env[envName] || undefined);
  const num = (s: string | undefined) => (s === undefined ? undefined : Number(s));
  const o: EngineOptions = { ...fromFile };
  const set = <K extends keyof EngineOptions>(k: K, val: EngineOptions[K] | undefined) => {
    if (val !== undefined) o[k] = val;
  };
  set('servers', pick('nats-url', 'NATS_URL'));
  set('prefix', pick('prefix', 'JETFLOW_PREFIX'));
  set('shards', num(pick('shards', 'JETFLOW_SHARDS')));
  set('shardIds', pick('shard-ids', 'JETFLOW_SHARD_IDS'));
  set('replicas', num(pick('replicas', 'JETFLOW_REPLICAS')));
  set('cacheSize', num(pick('cache-size', 'JETFLOW_CACHE_SIZE')));
  set('cacheMaxBytes', num(pick('cache-max-bytes', 'JETFLOW_CACHE_MAX_BYTES')));
  set('finishedRetentionMs', num(pick('finished-retention-ms', 'JETFLOW_FINISHED_RETENTION_MS')));
  set('eventsMaxBytes', num(pick('events-max-bytes', 'JETFLOW_EVENTS_MAX_BYTES')));
  set('gatewayMaxInFlight', num(pick('gateway-max-in-flight', 'JETFLOW_GATEWAY_MAX_IN_FLIGHT')));
  set('ackWaitMs', num(pick('ack-wait-ms', 'JETFLOW_ACK_WAIT_MS')));
  set('failoverMs', num(pick('failover-ms', 'JETFLOW_FAILOVER_MS')));
  set('maxInputBytes', num(pick('max-input-bytes', 'JETFLOW_MAX_INPUT_BYTES')));
  set('logLevel', pick('log-level', 'JETFLOW_LOG_LEVEL') as EngineOptions['logLevel']);
  set('name', pick('name', 'JETFLOW_NAME'));
  set('replyPrefixes', pick('reply-prefixes', 'JETFLOW_REPLY_PREFIXES'));
  set('msgIdMemory', num(pick('msg-id-memory', 'JETFLOW_MSG_ID_MEMORY')));
  return o;
}

/** First signal: `onFirst()`; second: exit 1 at once. */
function onSignals(onFirst: () => void): void {
  let seen = 0;
  const handler = (sig: NodeJS.Signals) => {
    seen++;
    if (seen === 1) {
      process.stderr.write(`\njetflow: ${sig} received, draining (again to force)\n`);
      onFirst();
    } else {
      process.stderr.write(`jetflow: ${sig} again, forcing exit\n`);
      process.exit(1);
    }
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}

export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'nats-url': { type: 'string' },
      prefix: { type: 'string' },
      shards: { type: 'string' },
      'shard-ids': { type: 'string' },
      replicas: { type: 'string' },
      workflows: { type: 'string' },
      'cache-size': { type: 'string' },
      'cache-max-bytes': { type: 'string' },
      'finished-retention-ms': { type: 'string' },
      'events-max-bytes': { type: 'string' },
      'gateway-max-in-flight': { type: 'string' },
      'ack-wait-ms': { type: 'string' },
      'failover-ms': { type: 'string' },
      'max-input-bytes': { type: 'string' },
      'log-level': { type: 'string' },
      name: { type: 'string' },
      'reply-prefixes': { type: 'string' },
      'msg-id-memory': { type: 'string' },
      config: { type: 'string' },
      once: { type: 'boolean' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const cmd = positionals[0];
  if (values.help || !cmd) {
    process.stdout.write(USAGE);
    return cmd || values.help ? 0 : 2;
  }
  switch (cmd) {
    case 'engine': {
      const registry = createRegistry(
        await loadWorkflows(values.workflows ?? env.JETFLOW_WORKFLOWS),
      );
      // Handlers first, so a signal during start-up drains too instead of killing.
      const starting = Engine.create(engineOptions(values, env), { registry });
      onSignals(() => void starting.then((e) => e.close()).catch(() => undefined));
      const engine = await starting;
      await engine.run();
      return 0;
    }
    case 'status': {
      const o = compileEngineConfig(engineOptions(values, env));
      const { nc } = await connectNats(o.servers, 'jetflow-status');
      try {
        const st = await systemStatus(nc, o.prefix, o.shards, o.failoverMs / 2);
        process.stdout.write((values.json ? JSON.stringify(st, null, 2) : formatStatus(st)) + '\n');
      } finally {
        await nc.close();
      }
      return 0;
    }
    case 'server': {
      const server = await startLocalServer(resolve(repoRoot, 'nats.conf'));
      process.stdout.write(`jetflow: nats-server ready at ${server.url} (Ctrl-C to stop)\n`);
      await new Promise<void>((ok) => onSignals(ok));
      await server.stop();
      return 0;
    }
    case 'dev': {
      const external = values['nats-url'] ?? (env.NATS_URL || undefined);
      const server = external ? undefined : await startLocalServer(resolve(repoRoot, 'nats.conf'));
      const url = external ?? server!.url;
      process.stdout.write(`jetflow: nats-server ${external ? 'at' : 'started at'} ${url}\n`);
      const registry = createRegistry(
        await loadWorkflows(values.workflows ?? env.JETFLOW_WORKFLOWS),
      );
      let engine: Engine | undefined;
      let stopping = false;
      const stop = async () => {
        stopping = true;
        await engine?.close();
        await server?.stop();
      };
      onSignals(() => void stop());
      try {
        engine = await Engine.create(
          {
            ...engineOptions(values, env),
            servers: url,
            logLevel: (values['log-level'] as EngineOptions['logLevel']) ?? 'warn',
          },
          { registry },
        );
        process.stdout.write(`jetflow: engine up (${registry.list().join(', ')})\n`);
        await runDemo(url, engine.config.prefix, (line) => process.stdout.write(line + '\n'));
        if (values.once || stopping) {
          await stop();
          return 0;
        }
        process.stdout.write(
          'jetflow: serving; try `jetflow` subjects with any NATS client. Ctrl-C to stop.\n',
        );
        await engine.run();
        await server?.stop();
        return 0;
      } catch (err) {
        await stop();
        throw err;
      }
    }
    default:
      process.stderr.write(`jetflow: unknown command ${JSON.stringify(cmd)}\n${USAGE}`);
      return 2;
  }
}

/** Run `main` and exit with its code; errors print as one line (`name [code]: message`). */
export function runCli(argv: string[]): void {
  main(argv).then(
    (code) => process.exit(code),
    (err: unknown) => {
      const e =
        err instanceof JetflowError
          ? `${err.name} [${err.code}]: ${err.message}`
          : String((err as Error)?.stack ?? err);
      process.stderr.write(`jetflow: ${e}\n`);
      process.exit(1);
    },
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) runCli(process.argv.slice(2));
