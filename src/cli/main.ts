/**
 * `jetflow` command line (commander). Roles: `engine`, `worker`, `visibility`, `dev`, `server`,
 * `status`; service verbs: `start`, `signal`, `query`, `cancel`, `result`, `watch`, `ls`. `jetflow --help` and
 * `jetflow <verb> --help` list the options; the README documents them and the exit codes.
 *
 * The service verbs load only the client (no XState, no engine), so they start fast; the roles
 * load what they run on demand.
 *
 * Signals (engine, worker, dev, server): the first SIGINT/SIGTERM drains (finish in-flight work,
 * then exit 0); a second one forces exit 1.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Command, CommanderError, Option } from 'commander';
import type { EngineOptions } from '../config.js';
import type { WorkflowDefinition } from '../engine/registry.js';
import { ConfigError } from '../errors.js';
import { packageVersion, repoRoot } from '../host/package-root.js';
import { describeError, errorJson, ExitCode, exitCodeOf, UsageError } from './exit.js';
import { importUserModule } from './modules.js';
import { createOut } from './output.js';
import { pickMetricsPort, startObservability } from './observe.js';
import {
  cancelVerb,
  keysVerb,
  queryVerb,
  whyVerb,
  historyVerb,
  resultVerb,
  signalVerb,
  startVerb,
  watchVerb,
  adminVerb,
  type AdminOptions,
  type Io,
  type ServiceOptions,
} from './service.js';
import type { AdminVerb } from '../contracts/wire.js';
import type { AuthFlags } from './auth.js';
import type { HttpOptions } from '../http/server.js';
import type { WorkerFlags } from './worker-host.js';
import type { LsOptions } from './ls.js';
import type { BulkOptions } from './bulk.js';
import type { BatchCreateFlags, BatchVerbFlags } from './batch.js';
import type { TriggersOptions } from './triggers.js';
import type { TestGenFlags, VerifyFlags } from './verify.js';
import type { CheckFlags } from './check.js';
import type { MigrateFlags } from './migrate.js';

type HttpTokens = NonNullable<HttpOptions['tokens']>;

/** The demo workflows, next to this file's tree: `dist/actors/index.js` or `actors/index.ts`. */
const DEFAULT_WORKFLOWS = resolve(
  import.meta.dirname,
  '../../actors',
  import.meta.url.endsWith('.ts') ? 'index.ts' : 'index.js',
);

async function loadWorkflows(spec: string | undefined): Promise<WorkflowDefinition[]> {
  const path = spec ?? DEFAULT_WORKFLOWS;
  const mod = await importUserModule(path, 'workflows');
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
  let fromFile: EngineOptions = {};
  if (file) {
    try {
      fromFile = JSON.parse(readFileSync(file, 'utf8')) as EngineOptions;
    } catch (cause) {
      throw new ConfigError(`cannot read --config ${file}: ${(cause as Error).message}`, { cause });
    }
  }
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
  set('foldMax', num(pick('fold-max', 'JETFLOW_FOLD_MAX')));
  set('lazyMarkMs', num(pick('lazy-mark-ms', 'JETFLOW_LAZY_MARK_MS')));
  set('timerStraySweepMs', num(pick('timer-stray-sweep-ms', 'JETFLOW_TIMER_STRAY_SWEEP_MS')));
  set('finishedRetentionMs', num(pick('finished-retention-ms', 'JETFLOW_FINISHED_RETENTION_MS')));
  set('attemptRetentionMs', num(pick('attempt-retention-ms', 'JETFLOW_ATTEMPT_RETENTION_MS')));
  set('eventsMaxBytes', num(pick('events-max-bytes', 'JETFLOW_EVENTS_MAX_BYTES')));
  const journal = pick('journal', 'JETFLOW_JOURNAL');
  set('journal', journal === 'on' ? true : journal === 'off' ? false : journal);
  set('journalMaxAgeMs', num(pick('journal-max-age-ms', 'JETFLOW_JOURNAL_MAX_AGE_MS')));
  set('journalMaxBytes', num(pick('journal-max-bytes', 'JETFLOW_JOURNAL_MAX_BYTES')));
  set(
    'journalCompression',
    pick('journal-compression', 'JETFLOW_JOURNAL_COMPRESSION') as 'none' | 's2' | undefined,
  );
  set(
    'journalPayloadMaxBytes',
    num(pick('journal-payload-max-bytes', 'JETFLOW_JOURNAL_PAYLOAD_MAX_BYTES')),
  );
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

/** The option values of `cmd` keyed by their long flag without dashes (`nats-url`). */
function flagValues(cmd: Command): Record<string, string | boolean | undefined> {
  const v: Record<string, string | boolean | undefined> = {};
  for (const o of cmd.options) {
    if (o.long) v[o.long.slice(2)] = cmd.getOptionValue(o.attributeName()) as string | undefined;
  }
  return v;
}

// [flag, value name, description, env]
const ENGINE_FLAGS: [string, string, string, string | undefined][] = [
  ['nats-url', 'url[,url]', 'NATS servers (default nats://127.0.0.1:4222)', 'NATS_URL'],
  ['prefix', 'p', 'subject prefix (default wf)', 'JETFLOW_PREFIX'],
  ['shards', 'n', "shard count, equal to nats.conf's partition() (default 16)", 'JETFLOW_SHARDS'],
  [
    'shard-ids',
    'list',
    'shards this engine consumes, e.g. 0-7,12 (default all)',
    'JETFLOW_SHARD_IDS',
  ],
  ['replicas', 'n', 'stream/bucket replicas (default 1)', 'JETFLOW_REPLICAS'],
  [
    'workflows',
    'module',
    'module exporting `workflows` (.js/.mjs; .ts through tsx) (default: the demo)',
    'JETFLOW_WORKFLOWS',
  ],
  ['cache-size', 'n', 'records cached in memory (default 10000)', 'JETFLOW_CACHE_SIZE'],
  [
    'cache-max-bytes',
    'n',
    'bytes of cached records, estimated (default 268435456)',
    'JETFLOW_CACHE_MAX_BYTES',
  ],
  [
    'fold-max',
    'n',
    'queued messages of one workflow applied in one record write, 1 = off (default 64)',
    'JETFLOW_FOLD_MAX',
  ],
  [
    'lazy-mark-ms',
    'ms',
    "journal on: a step's outboxDone write waits this long, skipped if the workflow steps first; 0 = at once (default 5000)",
    'JETFLOW_LAZY_MARK_MS',
  ],
  [
    'timer-stray-sweep-ms',
    'ms',
    'how often plain messages on the timer subjects are looked for and deleted (default 60000)',
    'JETFLOW_TIMER_STRAY_SWEEP_MS',
  ],
  [
    'finished-retention-ms',
    'ms',
    "keep finished workflows' records this long, 0 = forever (default 604800000)",
    'JETFLOW_FINISHED_RETENTION_MS',
  ],
  [
    'attempt-retention-ms',
    'ms',
    "keep the attempt ledger's entries this long (default 604800000)",
    'JETFLOW_ATTEMPT_RETENTION_MS',
  ],
  [
    'events-max-bytes',
    'n',
    'size bound of the events stream (default 268435456)',
    'JETFLOW_EVENTS_MAX_BYTES',
  ],
  [
    'journal',
    'on|off',
    'journal every step into the history stream (default on)',
    'JETFLOW_JOURNAL',
  ],
  [
    'journal-max-age-ms',
    'ms',
    'keep journal entries this long (default 2592000000, 30 days)',
    'JETFLOW_JOURNAL_MAX_AGE_MS',
  ],
  [
    'journal-max-bytes',
    'n',
    'size bound of the history stream (default 1073741824)',
    'JETFLOW_JOURNAL_MAX_BYTES',
  ],
  [
    'journal-compression',
    'none|s2',
    'stream compression of the history stream (default none)',
    'JETFLOW_JOURNAL_COMPRESSION',
  ],
  [
    'journal-payload-max-bytes',
    'n',
    'event payloads above this are journaled without payload (default 4096)',
    'JETFLOW_JOURNAL_PAYLOAD_MAX_BYTES',
  ],
  [
    'gateway-max-in-flight',
    'n',
    'public requests worked on at once, the rest taking turns by workflow (default 64)',
    'JETFLOW_GATEWAY_MAX_IN_FLIGHT',
  ],
  ['ack-wait-ms', 'ms', 'inbox AckWait (default 30000)', 'JETFLOW_ACK_WAIT_MS'],
  [
    'failover-ms',
    'ms',
    "how soon a dead engine's shards move (default 10000)",
    'JETFLOW_FAILOVER_MS',
  ],
  ['max-input-bytes', 'n', 'max public request body (default 262144)', 'JETFLOW_MAX_INPUT_BYTES'],
  ['log-level', 'level', 'debug|info|warn|error|silent (default info)', 'JETFLOW_LOG_LEVEL'],
  ['name', 'name', 'engine name in logs', 'JETFLOW_NAME'],
  [
    'reply-prefixes',
    'list',
    'reply subjects the engine answers on (default _INBOX.)',
    'JETFLOW_REPLY_PREFIXES',
  ],
  [
    'msg-id-memory',
    'n',
    'client msg ids remembered per workflow (default 64)',
    'JETFLOW_MSG_ID_MEMORY',
  ],
  ['config', 'file', 'JSON file with the same options in camelCase', 'JETFLOW_CONFIG'],
  [
    'metrics-port',
    'port|off',
    'serve /metrics, /healthz, /readyz on this port (default off; dev: 9464)',
    'JETFLOW_METRICS_PORT',
  ],
];

function engineFlags(cmd: Command, only?: string[]): Command {
  for (const [flag, arg, desc, env] of ENGINE_FLAGS) {
    if (only && !only.includes(flag)) continue;
    cmd.addOption(new Option(`--${flag} <${arg}>`, env ? `${desc} [${env}]` : desc));
  }
  return cmd;
}

function serviceFlags(cmd: Command): Command {
  return cmd
    .option('--nats-url <url[,url]>', 'NATS servers (default nats://127.0.0.1:4222) [NATS_URL]')
    .option('--prefix <p>', 'subject prefix of the engines (default wf) [JETFLOW_PREFIX]')
    .option('--json', 'machine-readable output (JSON on stdout)');
}

const EXIT_CODES = `
Exit codes (every verb): 0 ok, 1 failed/error (result, watch: the workflow failed or was
canceled), 2 usage, 3 not found (workflow, or a type no engine has), 4 rejected (event not
accepted now, bad request, already finished), 5 timeout or no engine answering (or NATS
unreachable).`;

function buildProgram(io: Io, env: NodeJS.ProcessEnv, done: (code: number) => void): Command {
  const program = new Command('jetflow')
    .description('Durable workflows as XState actors on NATS JetStream')
    .version(packageVersion())
    // Program options only before the verb: `verify --version 2` is verify's own option.
    .enablePositionalOptions()
    .showSuggestionAfterError()
    .addHelpText('after', EXIT_CODES)
    .configureOutput({
      writeOut: (s) => void process.stdout.write(s),
      writeErr: (s) => void process.stderr.write(s),
      outputError: (s, write) => write(`jetflow: ${s.replace(/^error: /, '')}`),
    })
    .exitOverride();

  /** A service verb: its errors also print as JSON on stdout with --json. */
  const service =
    <A extends unknown[]>(run: (...a: A) => Promise<number>) =>
    async (...a: A) => {
      const o = a[a.length - 2] as ServiceOptions;
      try {
        done(await run(...a));
      } catch (err) {
        if (o.json) io.out.line(JSON.stringify(errorJson(err)));
        throw err;
      }
    };

  engineFlags(
    program
      .command('engine')
      .description('run an engine (config: flags > env > --config > defaults)'),
  ).action(async (_o: unknown, cmd: Command) => {
    const v = flagValues(cmd);
    const [{ Engine }, { createRegistry }] = await Promise.all([
      import('../host/engine.js'),
      import('../engine/registry.js'),
    ]);
    const registry = createRegistry(
      await loadWorkflows(
        (v.workflows as string | undefined) ?? (env.JETFLOW_WORKFLOWS || undefined),
      ),
    );
    const options = engineOptions(v, env);
    const obs = await startObservability(
      options.name ?? 'jetflow-engine',
      pickMetricsPort(v['metrics-port'] as string | undefined, env),
      options.logLevel,
    );
    // Handlers first, so a signal during start-up drains too instead of killing.
    const metrics = obs.engineMetrics();
    const starting = Engine.create(options, { registry, ...(metrics ? { metrics } : {}) });
    onSignals(() => void starting.then((e) => e.close()).catch(() => undefined));
    const engine = await starting.catch(async (err: unknown) => {
      await obs.close();
      throw err;
    });
    obs.engine(engine);
    await engine.run();
    await obs.close();
    done(0);
  });

  program
    .command('worker')
    .description('run a worker for an activities module (drains on SIGTERM)')
    .option('--activities <module>', 'module exporting `activities` (name -> function)')
    .option(
      '--http',
      'also run HTTP activities (declared with `http: { url }`) with no code; needs --queues without --activities',
    )
    .option('--queues <a,b>', 'queues to pull from (default: one per activity)')
    .option('--concurrency <n>', 'tasks run at once, per queue (default 10)')
    .option('--nats-url <url[,url]>', 'NATS servers (default nats://127.0.0.1:4222) [NATS_URL]')
    .option('--prefix <p>', 'subject prefix of the engines (default wf) [JETFLOW_PREFIX]')
    .option('--max-in-flight <n|q=n,…>', 'global in-flight limit per queue (queue consumer)')
    .option('--ack-wait-ms <n|q=n,…>', 'task lease per queue (queue consumer)')
    .option('--rate-limit <n|q=n,…>', 'tasks started per second by this worker, per queue')
    .option('--force-queue-settings', 'apply --max-in-flight/--ack-wait-ms to existing queues too')
    .option('--shutdown-grace-ms <ms>', 'grace for running attempts on SIGTERM (default 10000)')
    .option(
      '--log-level <level>',
      'debug|info|warn|error|silent (default info) [JETFLOW_LOG_LEVEL]',
    )
    .option('--name <name>', 'worker name in logs [JETFLOW_NAME]')
    .option(
      '--metrics-port <port|off>',
      'serve /metrics, /healthz, /readyz on this port (default off) [JETFLOW_METRICS_PORT]',
    )
    .action(async (o: WorkerFlags) => {
      const { runWorker } = await import('./worker-host.js');
      done(await runWorker(o, env, onSignals));
    });

  engineFlags(program.command('status').description('live engines and shard holders'), [
    'nats-url',
    'prefix',
    'shards',
  ])
    .option('--json', 'machine-readable output')
    .action(async (_o: unknown, cmd: Command) => {
      const v = flagValues(cmd);
      const [{ compileEngineConfig }, { connectNats }, { formatStatus, systemStatus }] =
        await Promise.all([
          import('../config.js'),
          import('../nats/connection.js'),
          import('../nats/status.js'),
        ]);
      const o = compileEngineConfig(engineOptions(v, env));
      const { nc } = await connectNats(o.servers, 'jetflow-status');
      try {
        const st = await systemStatus(nc, o.prefix, o.shards, o.failoverMs / 2);
        io.out.line(v.json ? JSON.stringify(st, null, 2) : formatStatus(st));
      } finally {
        await nc.close();
      }
      done(0);
    });

  program
    .command('auth')
    .description(
      'write a nats-server account with one nkey user per role (engine, worker, service, operator, console)',
    )
    .requiredOption('--account <name>', 'the account (a tenant)')
    .requiredOption('--queues <q[,q]>', 'queues the worker role may pull')
    .option('--types <t[,t]>', 'workflow types the service role may use (default: all)')
    .option('--prefix <p>', 'subject prefix (default wf)')
    .option('--shards <n>', "the engines' shard count (default 16)")
    .option('--out <dir>', 'where the config and the seeds go', '.')
    .option('--max-file <size>', "the account's JetStream file limit (e.g. 10G)")
    .option('--max-mem <size>', "the account's JetStream memory limit (e.g. 256M)")
    .option('--max-payload <bytes>', "max payload of the account's connections")
    .option(
      '--priority-workers',
      'let workers age priority levels and move fairness keys (a message get and delete on the tasks stream: not limited to their queues)',
    )
    .action(async (o: AuthFlags) => {
      const { authVerb } = await import('./auth.js');
      done(authVerb(o, io));
    });

  program
    .command('server')
    .description("run the local nats-server with jetflow's nats.conf (provisioned if needed)")
    .action(async () => {
      const { startLocalServer } = await import('../host/nats-server.js');
      const server = await startLocalServer(resolve(repoRoot, 'nats.conf'));
      io.out.line(`jetflow: nats-server ready at ${server.url} (Ctrl-C to stop)`);
      await new Promise<void>((ok) => onSignals(ok));
      await server.stop();
      done(0);
    });

  engineFlags(
    program
      .command('dev')
      .description('the quick start: local nats-server + engine + the demo workflows'),
  )
    .option('--once', 'run the demo and exit instead of serving until Ctrl-C')
    .option(
      '--data-dir <dir>',
      "folder of dev's visibility replica (default ./.jetflow/dev) [JETFLOW_DATA_DIR]",
    )
    .option(
      '--http-port <port>',
      'port of the HTTP ingress on 127.0.0.1 (default 8080; 0 = any free port) [JETFLOW_HTTP_PORT]',
    )
    .option('--no-http', 'do not serve the HTTP ingress')
    .option(
      '--console-port <port>',
      'port of the web console on 127.0.0.1 (default 8233; 0 = any free port) [JETFLOW_CONSOLE_PORT]',
    )
    .option('--no-console', 'do not serve the web console')
    .action(async (_o: unknown, cmd: Command) => {
      const v = flagValues(cmd);
      const { runDev } = await import('./dev.js');
      done(
        await runDev(v, env, {
          loadWorkflows: () =>
            loadWorkflows(
              (v.workflows as string | undefined) ?? (env.JETFLOW_WORKFLOWS || undefined),
            ),
          engineOptions,
          onSignals,
          print: (line) => io.out.line(line),
        }),
      );
    });

  program
    .command('visibility')
    .description('run a visibility replica: index the journal in SQLite, answer searches')
    .option('--nats-url <url[,url]>', 'NATS servers (default nats://127.0.0.1:4222) [NATS_URL]')
    .option('--prefix <p>', 'subject prefix of the engines (default wf) [JETFLOW_PREFIX]')
    .option(
      '--data-dir <dir>',
      'folder of the replica file visibility-<prefix>.db (default ./.jetflow) [JETFLOW_DATA_DIR]',
    )
    .option('--file <path>', 'the replica file itself (overrides --data-dir)')
    .option(
      '--finished-retention-ms <ms>',
      "drop finished workflows this long after their last step; match the engines' (default 604800000, 0 = never) [JETFLOW_FINISHED_RETENTION_MS]",
    )
    .option(
      '--log-level <level>',
      'debug|info|warn|error|silent (default info) [JETFLOW_LOG_LEVEL]',
    )
    .option('--name <name>', 'replica name in logs [JETFLOW_NAME]')
    .option(
      '--metrics-port <port|off>',
      'serve /metrics, /healthz, /readyz on this port (default off) [JETFLOW_METRICS_PORT]',
    )
    .option('--no-bulk', 'do not create or run bulk operator jobs (<prefix>.admin.bulk)')
    .option(
      '--bulk-lease-ms <ms>',
      'take over a bulk job whose runner has not checkpointed for this long (default 5000)',
    )
    .option('--bulk-checkpoint-ms <ms>', 'how often a bulk job stores its cursor (default 500)')
    .option(
      '--replicas <n>',
      'replicas of the bulk jobs bucket, as the engines use for theirs (default 1) [JETFLOW_REPLICAS]',
    )
    .action(
      async (o: {
        replicas?: string;
        bulk?: boolean;
        bulkLeaseMs?: string;
        bulkCheckpointMs?: string;
        natsUrl?: string;
        prefix?: string;
        dataDir?: string;
        file?: string;
        finishedRetentionMs?: string;
        logLevel?: string;
        name?: string;
        metricsPort?: string;
      }) => {
        const { Visibility } = await import('../host/visibility.js');
        const obs = await startObservability(
          o.name ?? (env.JETFLOW_NAME || 'jetflow-visibility'),
          pickMetricsPort(o.metricsPort, env),
          o.logLevel ?? (env.JETFLOW_LOG_LEVEL || undefined),
        );
        const metrics = obs.visibilityMetrics();
        const starting = Visibility.create({
          ...(metrics ? { metrics } : {}),
          servers: o.natsUrl ?? (env.NATS_URL || undefined),
          prefix: o.prefix ?? (env.JETFLOW_PREFIX || undefined),
          dataDir: o.dataDir ?? (env.JETFLOW_DATA_DIR || undefined),
          file: o.file,
          finishedRetentionMs: ((x) => (x === undefined ? undefined : Number(x)))(
            o.finishedRetentionMs ?? (env.JETFLOW_FINISHED_RETENTION_MS || undefined),
          ),
          logLevel: o.logLevel ?? (env.JETFLOW_LOG_LEVEL || undefined),
          name: o.name ?? (env.JETFLOW_NAME || undefined),
          bulk:
            o.bulk === false
              ? false
              : {
                  ...(o.bulkLeaseMs ? { leaseMs: Number(o.bulkLeaseMs) } : {}),
                  ...(o.bulkCheckpointMs ? { checkpointMs: Number(o.bulkCheckpointMs) } : {}),
                  ...((o.replicas ?? env.JETFLOW_REPLICAS)
                    ? { replicas: Number(o.replicas ?? env.JETFLOW_REPLICAS) }
                    : {}),
                },
        });
        onSignals(() => void starting.then((v) => v.close()).catch(() => undefined));
        const v = await starting.catch(async (err: unknown) => {
          await obs.close();
          throw err;
        });
        obs.visibility(v);
        await v.run();
        await obs.close();
        done(0);
      },
    );

  program
    .command('http')
    .description('HTTP ingress: start, signal, query, result, cancel and history over HTTP')
    .option('--nats-url <url[,url]>', 'NATS servers (default nats://127.0.0.1:4222) [NATS_URL]')
    .option('--prefix <p>', 'subject prefix of the engines (default wf) [JETFLOW_PREFIX]')
    .option('--port <port>', 'port to listen on (default 8080) [JETFLOW_HTTP_PORT]')
    .option(
      '--host <host>',
      'interface to listen on (default 127.0.0.1; 0.0.0.0 for every interface) [JETFLOW_HTTP_HOST]',
    )
    .option('--max-wait <ms>', "upper bound of the result route's ?wait= (default 300000)")
    .option(
      '--tokens <file>',
      'JSON {"<token>": {"role": "service"|"operator", "types"?: [...]}}: bearer tokens required [JETFLOW_HTTP_TOKENS]',
    )
    .action(
      async (o: {
        natsUrl?: string;
        prefix?: string;
        port?: string;
        host?: string;
        maxWait?: string;
        tokens?: string;
      }) => {
        const port = Number(o.port ?? (env.JETFLOW_HTTP_PORT || 8080));
        if (!Number.isInteger(port) || port < 0 || port > 65535) {
          throw new UsageError(`--port must be 0-65535, got ${String(o.port)}`);
        }
        const { Client } = await import('../client/index.js');
        const { startHttp } = await import('../http/server.js');
        const url = o.natsUrl ?? (env.NATS_URL || 'nats://127.0.0.1:4222');
        const client = await Client.connect(url, {
          prefix: o.prefix ?? (env.JETFLOW_PREFIX || undefined),
        });
        const http = await startHttp({
          client,
          port,
          host: o.host ?? (env.JETFLOW_HTTP_HOST || undefined),
          ...(o.maxWait ? { maxWaitMs: Number(o.maxWait) } : {}),
          ...((o.tokens ?? env.JETFLOW_HTTP_TOKENS)
            ? {
                tokens: JSON.parse(
                  readFileSync(o.tokens ?? env.JETFLOW_HTTP_TOKENS!, 'utf8'),
                ) as HttpTokens,
              }
            : {}),
          log: (line) => io.err.line(line),
        });
        await new Promise<void>((stopped) =>
          onSignals(() => {
            void http
              .close()
              .then(() => client.close())
              .finally(stopped);
          }),
        );
        done(0);
      },
    );

  program
    .command('console')
    .description('the web console: find, see and repair workflows in a browser')
    .option('--nats-url <url[,url]>', 'NATS servers (default nats://127.0.0.1:4222) [NATS_URL]')
    .option('--prefix <p>', 'subject prefix of the engines (default wf) [JETFLOW_PREFIX]')
    .option('--port <port>', 'port to listen on (default 8233) [JETFLOW_CONSOLE_PORT]')
    .option(
      '--host <host>',
      'interface to listen on (default 127.0.0.1: this machine only) [JETFLOW_CONSOLE_HOST]',
    )
    .option(
      '--creds <file>',
      "NATS credentials the console acts with (an operator's) [JETFLOW_CONSOLE_CREDS]",
    )
    .option(
      '--workflows <module>',
      'module exporting `workflows`: their statecharts are drawn (default: the demo workflows)',
    )
    .option('--shards <n>', 'inbox shards of the engines (default 16) [JETFLOW_SHARDS]')
    .option(
      '--failover-ms <ms>',
      "the engines' failoverMs: an engine silent for half of it is shown as gone (default 10000) [JETFLOW_FAILOVER_MS]",
    )
    .option(
      '--token <token>',
      "the console's access token (required off 127.0.0.1) [JETFLOW_CONSOLE_TOKEN]",
    )
    .action(
      async (o: {
        token?: string;
        natsUrl?: string;
        prefix?: string;
        port?: string;
        host?: string;
        creds?: string;
        workflows?: string;
        shards?: string;
        failoverMs?: string;
      }) => {
        const port = Number(o.port ?? (env.JETFLOW_CONSOLE_PORT || 8233));
        if (!Number.isInteger(port) || port < 0 || port > 65535) {
          throw new UsageError(`--port must be 0-65535, got ${String(o.port)}`);
        }
        const shards = Number(o.shards ?? (env.JETFLOW_SHARDS || 16));
        if (!Number.isInteger(shards) || shards < 1) {
          throw new UsageError(`--shards must be a positive integer, got ${String(o.shards)}`);
        }
        const failoverMs = Number(o.failoverMs ?? (env.JETFLOW_FAILOVER_MS || 10_000));
        if (!Number.isInteger(failoverMs) || failoverMs < 1) {
          throw new UsageError(
            `--failover-ms must be a positive integer, got ${String(o.failoverMs)}`,
          );
        }
        const [{ Client }, { startConsole }, { createRegistry }] = await Promise.all([
          import('../client/index.js'),
          import('../host/console.js'),
          import('../engine/registry.js'),
        ]);
        const registry = createRegistry(
          await loadWorkflows(o.workflows ?? (env.JETFLOW_WORKFLOWS || undefined)),
        );
        const creds = o.creds ?? (env.JETFLOW_CONSOLE_CREDS || undefined);
        const client = await Client.connect(
          o.natsUrl ?? (env.NATS_URL || 'nats://127.0.0.1:4222'),
          {
            prefix: o.prefix ?? (env.JETFLOW_PREFIX || undefined),
            ...(creds ? { credsFile: creds } : {}),
          },
        );
        let server;
        try {
          server = await startConsole({
            client,
            registry,
            shards,
            failoverMs,
            port,
            host: o.host ?? (env.JETFLOW_CONSOLE_HOST || undefined),
            ...((o.token ?? env.JETFLOW_CONSOLE_TOKEN)
              ? { token: o.token ?? env.JETFLOW_CONSOLE_TOKEN }
              : {}),
            log: (line) => io.err.line(line),
          });
        } catch (err) {
          await client.close();
          throw err;
        }
        io.out.line(`jetflow: console at ${server.url}`);
        await new Promise<void>((stopped) =>
          onSignals(() => {
            void server
              .close()
              .then(() => client.close())
              .finally(stopped);
          }),
        );
        done(0);
      },
    );

  serviceFlags(program.command('ls'))
    .description('search workflows in the visibility index (a table; --json for scripts)')
    .option('--type <type>', 'workflow type')
    .option('--status <status>', 'running|completed|failed|canceled')
    .option('--state <path>', 'active state path, or a prefix such as shipping.*')
    .option('--in-state-longer-than <duration>', 'in the current state for more than, e.g. 1h')
    .option(
      '--where <key=value>',
      'search attribute equal to value (repeatable; numbers, true/false/null as JSON)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--id-prefix <prefix>', 'ids starting with')
    .option('--error-type <type>', 'failed with this error type')
    .option('--error-code <code>', 'failed with this error code')
    .option('--needs-review', 'only workflows flagged for review')
    .option('--sort <key>', 'updatedAt (default) or inStateSince')
    .option('--order <dir>', 'asc or desc')
    .option('--limit <n>', 'rows per page (default 100, max 1000)')
    .option('--cursor <cursor>', 'the next page of a previous ls')
    .option('--counts', 'counts by type, status and state instead of rows')
    .option(
      '--nodes',
      'activity-tree nodes instead of workflows: --status/--past-status are node statuses (a,b: any of), --where is node metadata',
    )
    .option('--id <id>', '--nodes: of this workflow id')
    .option('--past-status <s>', '--nodes: entered this status (in [--since, --until) if given)')
    .option('--name <name>', '--nodes: node name')
    .option('--queue <queue>', '--nodes: node queue (a,b: any of)')
    .option(
      '--since <time>',
      '--nodes: ISO-8601 or epoch ms (entered --past-status, or status since)',
    )
    .option('--until <time>', '--nodes: ISO-8601 or epoch ms, exclusive')
    .action(
      service(async (o: LsOptions) => {
        const { lsVerb } = await import('./ls.js');
        return lsVerb(o, io);
      }),
    );

  serviceFlags(program.command('start <type> <id>'))
    .description('start a workflow (idempotent on type/id)')
    .option('--input <json|@file>', 'the workflow input')
    .action(
      service((type: string, id: string, o: ServiceOptions & { input?: string }) =>
        startVerb(type, id, o, io),
      ),
    );

  serviceFlags(program.command('signal <type> <id> <event>'))
    .description('send an event, e.g. \'{"type":"PAY","amount":10}\' (or @file)')
    .option('--msg-id <id>', 'Nats-Msg-Id: a retry with the same id is applied once')
    .action(
      service((type: string, id: string, event: string, o: ServiceOptions & { msgId?: string }) =>
        signalVerb(type, id, event, o, io),
      ),
    );

  serviceFlags(program.command('keys <type>'))
    .description('concurrency keys of a type: holders and waiters with positions and wait times')
    .option('--key <key>', 'one key')
    .action(service((type: string, o: ServiceOptions & { key?: string }) => keysVerb(type, o, io)));

  serviceFlags(program.command('query <type> <id>'))
    .description("a workflow's status, state, context and the events it accepts now")
    .action(service((type: string, id: string, o: ServiceOptions) => queryVerb(type, id, o, io)));

  serviceFlags(program.command('why <type> <id>'))
    .description(
      'why a workflow has not moved on: the stage that holds it (pause, concurrency key, review, dispatch, backoff, attempt, child, timer, event) and all it awaits',
    )
    .action(service((type: string, id: string, o: ServiceOptions) => whyVerb(type, id, o, io)));

  serviceFlags(program.command('verify'))
    .description(
      'Re-run journaled steps with a new definition (no engine, nothing published); exit 1 on a divergence',
    )
    .requiredOption('--workflows <module>', 'the new definitions (exports `workflows`)')
    .option('--type <type>', 'only workflows of this type')
    .option('--version <n>', 'only workflows recorded on this version')
    .option('--since <age>', 'only steps journaled in the last, e.g. 7d, 12h')
    .option('--ids <a,b>', 'only these workflows (with --type)')
    .option(
      '--where <key=value>',
      'only workflows whose search attribute matches (visibility; repeatable)',
      (v: string, prev: string[] = []) => [...prev, v],
    )
    .option('--sample <n>', 'at most n workflows')
    .option('--allow <kinds>', 'not counted: state,context,status,effects,outcome')
    .action(
      service(async (o: VerifyFlags) => {
        const { verifyVerb } = await import('./verify.js');
        return verifyVerb(await loadWorkflows(o.workflows), o, io);
      }),
    );

  serviceFlags(program.command('test-gen <type> <id>'))
    .description(
      "write a vitest file from a workflow's journal: each step re-run with the definition, no server",
    )
    .option('--workflows <module>', 'module exporting `workflows` (default: the demo workflows)')
    .option('--out <dir>', 'directory of the test file (default test/recorded)')
    .option('--helper-import <spec>', 'import of the test helper (default jetflow/testing)')
    .action(
      service(async (type: string, id: string, o: TestGenFlags) => {
        const { testGenVerb } = await import('./verify.js');
        const path = o.workflows ?? DEFAULT_WORKFLOWS;
        return testGenVerb(type, id, await loadWorkflows(path), path, o, io);
      }),
    );

  serviceFlags(program.command('check'))
    .description(
      'static check of definitions; with --against-live, states in flight the new version lacks (exit 1 on an error)',
    )
    .option('--workflows <module>', 'module exporting `workflows` (default: the demo workflows)')
    .option('--against-live', 'compare with the states of running workflows (visibility counts)')
    .action(
      service(async (o: CheckFlags) => {
        const { checkVerb } = await import('./check.js');
        return checkVerb(await loadWorkflows(o.workflows), o, io);
      }),
    );

  serviceFlags(program.command('migrate [type]'))
    .description(
      'move the workflows in flight to --to <version>: --dry-run (writes nothing), --apply (a resumable job through each inbox), --revert <job>, --resume <job>',
    )
    .option('--to <version>', 'the new version (in --workflows)')
    .option('--from <version>', 'only workflows on this version')
    .option('--workflows <module>', 'module exporting `workflows` (default: the demo workflows)')
    .option(
      '--map <module>',
      'exports `states` (old path -> new path), `context(ctx)`, `revert.context(ctx)`',
    )
    .option(
      '--where <key=value>',
      'only workflows with this search attribute value (repeatable)',
      (v: string, acc: string[] = []) => [...acc, v],
    )
    .option('--dry-run', 'print what would change, write nothing')
    .option('--apply', 'migrate them, each through its own inbox (a resumable job)')
    .option('--revert <job>', 'move back what the migration job <job> moved')
    .option('--resume <job>', 'go on with a migration job whose runner stopped or died')
    .option('--reason <text>', 'why (journaled; --apply, --revert)')
    .option('--by <who>', 'who (journaled; --apply, --revert)')
    .option('--rate <n>', 'workflows per second (default 100)')
    .action(
      service(async (type: string | undefined, o: MigrateFlags) => {
        const { migrateVerb } = await import('./migrate.js');
        return migrateVerb(type, await loadWorkflows(o.workflows), o, io);
      }),
    );

  serviceFlags(program.command('history <type> <id>'))
    .description("a workflow's journal: step, time, event, from -> to, effects, errors")
    .option('--from-step <n>', 'first step to show (default 0)')
    .option('--limit <n>', 'one page of at most n entries (default: every page)')
    .action(
      service(
        (type: string, id: string, o: ServiceOptions & { fromStep?: string; limit?: string }) =>
          historyVerb(type, id, o, io),
      ),
    );

  serviceFlags(program.command('cancel <type> <id>'))
    .description(
      'cancel a workflow (stops its activities and timers); with --node: operator cancel of a tree node and its subtree',
    )
    .option('--reason <text>', 'why (stored and notified; journaled)')
    .option('--node <nodeId>', 'a tree node: the admin verb cancel (needs --by, --reason)')
    .option('--by <who>', 'with --node: who (required, journaled)')
    .option('--request-id <id>', 'with --node: a repeat with the same id is applied once')
    .action(
      service((type: string, id: string, o: ServiceOptions & AdminOptions) =>
        o.node !== undefined ? adminVerb('cancel', type, id, o, io) : cancelVerb(type, id, o, io),
      ),
    );

  const verbs: [AdminVerb, string][] = [
    ['pause', "hold the workflow's messages in order, apply none, until resume"],
    ['resume', 'apply the held messages in order, then continue'],
    ['retry', 'dispatch a parked activity again with a fresh attempt budget'],
    ['resolve', "deliver a parked activity's done event with --output"],
    ['fail', "deliver a parked activity's error event"],
    ['reset', 'restore the state after step --to-step (from the journal) and continue'],
    ['terminate', 'end the workflow as canceled (also while paused)'],
    ['shutdown', 'a tree node: complete it as shut down, canceling later siblings (--node)'],
    ['prune', 'a tree node: cancel its open descendants and re-evaluate it (--node)'],
    ['promote', 'move a deferred workflow to the head of its concurrency key queue'],
    ['skip', 'cancel a deferred workflow (it leaves its concurrency key queue)'],
    ['release', 'free the concurrency slot of a holder that has ended (or whose record is gone)'],
  ];
  for (const [verb, description] of verbs) {
    if (verb === 'shutdown' || verb === 'prune') {
      serviceFlags(program.command(`${verb} <type> <id>`))
        .description(`operator: ${description}`)
        .option('--node <nodeId>', 'the tree node (required)')
        .option('--reason <text>', 'why (required, journaled)')
        .option('--by <who>', 'who (required, journaled)')
        .option('--request-id <id>', 'a repeat with the same id is applied once')
        .option('--output <json|@file>', 'shutdown: the node output (default null)')
        .action(
          service((type: string, id: string, o: AdminOptions) => adminVerb(verb, type, id, o, io)),
        );
      continue;
    }
    const cmd = serviceFlags(program.command(`${verb} [type] [id]`))
      .description(
        `operator: ${description}; with search filters instead of <type> <id>: a bulk job over every match`,
      )
      .option('--reason <text>', 'why (required, journaled)')
      .option('--by <who>', 'who (required, journaled)')
      .option('--request-id <id>', 'a repeat with the same id is applied once');
    if (verb === 'retry' || verb === 'resolve' || verb === 'fail')
      cmd.option('--actor-id <id>', 'the parked activity (see query; bulk: default every parked)');
    if (verb === 'retry' || verb === 'resolve')
      cmd.option('--node <nodeId>', 'a tree node instead of a parked activity (one workflow)');
    if (verb === 'resolve')
      cmd.option('--decisions <json|@file>', 'with --node: children, a JSON array of decisions');
    if (verb === 'pause' || verb === 'resume')
      cmd.option('--scope <scope>', 'workflow (default) or dispatch (a tree: new dispatches)');
    if (verb === 'retry') cmd.option('--attempts <n>', 'attempt budget (default: its own)');
    if (verb === 'resolve')
      cmd.option('--output <json|@file>', 'the activity output (the node output with --node)');
    if (verb === 'reset') cmd.option('--to-step <n>', 'the step whose state is restored');
    if (verb === 'release')
      cmd.option('--key <key>', 'the concurrency key (needed when the record is gone)');
    cmd
      .option(
        '--where <filter>',
        'bulk: search attribute key=value (repeatable), or a JSON object of search filters',
        (v: string, prev: string[] = []) => [...prev, v],
      )
      .option('--type <type>', 'bulk: workflow type')
      .option('--status <status>', 'bulk: running|completed|failed|canceled')
      .option('--state <path>', 'bulk: active state path, or a prefix such as shipping.*')
      .option('--in-state-longer-than <duration>', 'bulk: in the current state for more than')
      .option('--id-prefix <prefix>', 'bulk: ids starting with')
      .option('--error-type <type>', 'bulk: failed with this error type')
      .option('--error-code <code>', 'bulk: failed with this error code')
      .option('--needs-review', 'bulk: only workflows with an activity parked for review')
      .option('--dry-run', 'bulk: count the matches, change nothing')
      .option('--rate <n>', 'bulk: workflows per second (default 100)');
    cmd.action(
      service(async (type: string | undefined, id: string | undefined, o: BulkOptions) => {
        const { bulkVerb, isBulk } = await import('./bulk.js');
        if (isBulk(o)) {
          if (type !== undefined) {
            throw new UsageError(
              `${verb}: give either <type> <id> (one workflow) or search filters (a bulk job), not both`,
            );
          }
          return bulkVerb(verb, o, io);
        }
        if (o.dryRun || o.rate !== undefined) {
          throw new UsageError(`${verb}: --dry-run and --rate go with search filters (a bulk job)`);
        }
        if (type === undefined || id === undefined) {
          throw new UsageError(
            `${verb} needs <type> <id>, or search filters (--where, --type, --status, --state, --needs-review, …) for a bulk job`,
          );
        }
        return adminVerb(verb, type, id, o, io);
      }),
    );
  }

  serviceFlags(program.command('triggers [verb] [name]'))
    .description(
      'triggers: list (default) | parked <name> | replay <name> | skip <name> | pause <name> | resume <name> | rewind <name> | trace <name>',
    )
    .option('--seq <n>', 'replay, skip, trace: the stream sequence of one message')
    .option('--key <key>', 'replay: every parked message of this key (workflow id)')
    .option('--all', 'replay: every parked message')
    .option('--reason <text>', 'skip: why (required; in the ledger)')
    .option('--by <who>', 'skip: who (default $USER)')
    .option('--to-seq <n>', 'rewind: deliver again from this stream sequence')
    .option('--since <duration>', 'rewind: deliver again the messages of the last 1h, 30m, …')
    .option('--timeout <duration>', 'rewind: how long to wait for it to finish (default 10m)')
    .action(
      service(async (verb: string | undefined, name: string | undefined, o: TriggersOptions) => {
        const { triggersVerb } = await import('./triggers.js');
        return triggersVerb(verb, name, o, io);
      }),
    );

  serviceFlags(program.command('bulk <jobId>'))
    .description('a bulk job: its progress and first failures (--follow to the end, --cancel)')
    .option('--follow', 'follow its progress until it ends')
    .option('--cancel', 'stop it where it is (what was applied stays applied)')
    .action(
      service(async (jobId: string, o: BulkOptions & { follow?: boolean; cancel?: boolean }) => {
        const { bulkJobVerb } = await import('./bulk.js');
        return bulkJobVerb(jobId, o, io);
      }),
    );

  const batch = program
    .command('batch')
    .description('batches of workflows with one callback (create, status, items, retry-failed…)');
  serviceFlags(batch.command('create'))
    .description('create (or resume) a batch, stream its items from an NDJSON file, seal it')
    .option('--id <id>', 'batch id (run again with the same id to resume; default generated)')
    .option('--type <type>', 'workflow type of every item')
    .option('--items <file>', 'items, one JSON value a line (- for stdin)')
    .option('--key-field <field>', "an item's key field (default: its line position)")
    .option('--on-complete-signal <type/id[/EVENT]>', 'signal this workflow when done')
    .option('--on-complete-start <type[/id]>', 'start this workflow when done')
    .option(
      '--policy <policy>',
      'complete-with-errors (default), all-must-succeed or fail-if-more-than:<fraction>',
    )
    .option('--cancel-rest', 'all-must-succeed: cancel the running items when it fails')
    .option('--no-seal', 'leave the batch open for more items (it cannot complete until sealed)')
    .option('--chunk-size <n>', 'items per request (default 500)')
    .option('--watch', 'after submitting, follow it to its end')
    .action(
      service(async (o: BatchCreateFlags) => {
        const { batchCreateVerb } = await import('./batch.js');
        return batchCreateVerb(o, io);
      }),
    );
  for (const [verb, description] of [
    ['status', 'counts, rate and ETA (--watch to follow it to its end)'],
    ['items', 'a page of items (--status failed, --cursor, --limit)'],
    ['seal', 'close it to new items: it completes once every item ended'],
    ['retry-failed', 'run the failed items again (fresh attempts); the callback fires again'],
    ['cancel', 'cancel the items not ended; no more items'],
    ['pause', 'stop starting items (new ones wait as pending)'],
    ['resume', 'start the pending items and new ones again'],
  ] as const) {
    const cmd = serviceFlags(batch.command(`${verb} <id>`)).description(description);
    if (verb === 'status') cmd.option('--watch', 'follow it to its end');
    if (verb === 'items') {
      cmd
        .option('--status <status>', 'pending|running|succeeded|failed|canceled')
        .option('--cursor <n>', 'the page after a previous one')
        .option('--limit <n>', 'items per page (default 100, at most 1000)');
    }
    if (['retry-failed', 'cancel', 'pause', 'resume'].includes(verb)) {
      cmd.option('--reason <text>', 'why (kept with the batch)').option('--by <who>', 'who');
    }
    cmd.action(
      service(async (id: string, o: BatchVerbFlags) => {
        const { batchVerb } = await import('./batch.js');
        return batchVerb(verb, id, o, io);
      }),
    );
  }

  serviceFlags(program.command('result <type> <id>'))
    .description("wait for a workflow's end and print its output")
    .option('--timeout <duration>', 'how long to wait: 500ms, 30s, 2m (default 60s)')
    .action(
      service((type: string, id: string, o: ServiceOptions & { timeout?: string }) =>
        resultVerb(type, id, o, io),
      ),
    );

  serviceFlags(program.command('watch <type> <id>'))
    .description("one line per notification, from the workflow's start to its end")
    .action(service((type: string, id: string, o: ServiceOptions) => watchVerb(type, id, o, io)));

  return program;
}

/** Parse `argv` (without node and script) and run the verb; resolves to the exit code. */
export async function main(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const io: Io = {
    out: createOut(process.stdout, env),
    err: createOut(process.stderr, env),
    env,
  };
  let code: number = ExitCode.Ok;
  const program = buildProgram(io, env, (c) => (code = c));
  if (argv.length === 0) {
    process.stderr.write(program.helpInformation());
    return ExitCode.Usage;
  }
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? ExitCode.Ok : ExitCode.Usage;
    }
    throw err;
  }
  return code;
}

/** Run `main` and exit with its code; an error prints as one line on stderr (no stack trace). */
export function runCli(argv: string[]): void {
  // Exit once stdout is flushed: writes to a pipe are asynchronous, and `process.exit` would cut
  // a long output (a dry run over 10,000 workflows) at the pipe's buffer.
  const exit = (code: number) => process.stdout.write('', () => process.exit(code));
  main(argv).then(
    (code) => exit(code),
    (err: unknown) => {
      process.stderr.write(`jetflow: ${describeError(err)}\n`);
      if (process.env.JETFLOW_DEBUG === '1') process.stderr.write(`${(err as Error)?.stack}\n`);
      process.exit(exitCodeOf(err));
    },
  );
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) runCli(process.argv.slice(2));
