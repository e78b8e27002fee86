/**
 * jetflow test helpers: a server with the shard mapping, a unique namespace (prefix) per test,
 * in-process engines and engine child processes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { NatsServer, runRoot, type ServerOptions } from './nats-server.js';
import { shardMapping } from '../../src/contracts/subjects.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry, type WorkflowDefinition } from '../../src/engine/registry.js';
import type { EngineOptions } from '../../src/config.js';
import type { Logger } from '../../src/engine/ports.js';
import { workflows as fixtureWorkflows } from '../fixtures/workflows.js';

export const repoRoot = resolve(import.meta.dirname, '../..');
export const TEST_SHARDS = 4;

/** A fresh subject prefix (and so fresh streams and bucket) for one test. */
export function uniquePrefix(): string {
  return `t${randomBytes(4).toString('hex')}`;
}

/** A nats-server with the shard mapping for any prefix. */
export function startServer(opts: ServerOptions & { shards?: number } = {}): Promise<NatsServer> {
  return NatsServer.start({
    ...opts,
    mappings: { ...shardMapping(opts.shards ?? TEST_SHARDS), ...opts.mappings },
  });
}

/**
 * One nats-server (with the shard mapping) and one connection for a whole test file: started in
 * `beforeAll`, stopped in `afterAll`. Read `env.server` / `env.nc` inside tests.
 */
export function useServer(opts: ServerOptions & { shards?: number } = {}): {
  readonly server: NatsServer;
  readonly nc: NatsConnection;
} {
  const env = {} as { server: NatsServer; nc: NatsConnection };
  beforeAll(async () => {
    env.server = await startServer(opts);
    env.nc = await connect({ servers: env.server.url });
  });
  afterAll(async () => {
    await env.nc?.close();
    await env.server?.stop();
  });
  return env;
}

/** Logger that drops everything but errors (tests assert on behaviour, not logs). */
export const quietLogger: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: (o, m) => console.error(m, o),
  child: () => quietLogger,
};

/** An engine in this process. */
export function startEngine(
  url: string,
  prefix: string,
  opts: EngineOptions & { workflows?: WorkflowDefinition[] } = {},
): Promise<Engine> {
  const { workflows, ...rest } = opts;
  return Engine.create(
    {
      servers: url,
      prefix,
      shards: TEST_SHARDS,
      shutdownGraceMs: 5_000,
      failoverMs: 2_000,
      ...rest,
    },
    { registry: createRegistry(workflows ?? fixtureWorkflows), logger: quietLogger },
  );
}

/** An engine as a real child process (`jetflow engine`), killable with SIGKILL. */
export class EngineProcess {
  child: ChildProcess | undefined;
  log = '';
  private exited: Promise<void> = Promise.resolve();

  constructor(
    readonly url: string,
    readonly prefix: string,
    readonly opts: {
      shards?: number;
      shardIds?: string;
      env?: Record<string, string>;
      ackWaitMs?: number;
      failoverMs?: number;
      replicas?: number;
      /** Told apart in `jetflow status` (default: every engine of the run has one name). */
      name?: string;
      /** Module of workflow definitions (default test/fixtures/workflows.ts). */
      workflows?: string;
    } = {},
  ) {}

  /** Spawn and wait until the engine logs that it started. */
  async start(): Promise<this> {
    const args = [
      '--import',
      'tsx',
      resolve(repoRoot, 'src/cli/main.ts'),
      'engine',
      '--nats-url',
      this.url,
      '--prefix',
      this.prefix,
      '--shards',
      String(this.opts.shards ?? TEST_SHARDS),
      '--workflows',
      resolve(repoRoot, this.opts.workflows ?? 'test/fixtures/workflows.ts'),
      '--ack-wait-ms',
      String(this.opts.ackWaitMs ?? 3_000),
      '--failover-ms',
      String(this.opts.failoverMs ?? 2_000),
      '--replicas',
      String(this.opts.replicas ?? 1),
      // Names the run root so the global teardown can find a leaked engine.
      '--name',
      `engine:${runRoot()}${this.opts.name ? `:${this.opts.name}` : ''}`,
      ...(this.opts.shardIds ? ['--shard-ids', this.opts.shardIds] : []),
    ];
    const child = spawn(process.execPath, args, {
      cwd: repoRoot,
      env: { ...process.env, ...this.opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    this.exited = new Promise((ok) => child.once('exit', () => ok()));
    const ready = new Promise<void>((ok, fail) => {
      const onData = (b: Buffer) => {
        this.log = (this.log + b.toString()).slice(-50_000);
        if (this.log.includes('"engine started"')) ok();
      };
      child.stdout?.on('data', onData);
      child.stderr?.on('data', onData);
      child.once('exit', (code) =>
        fail(new Error(`engine exited with ${code} before it was ready:\n${this.log}`)),
      );
    });
    const timeout = setTimeout(() => child.kill('SIGKILL'), 30_000);
    try {
      await ready;
    } finally {
      clearTimeout(timeout);
    }
    return this;
  }

  async kill(): Promise<void> {
    if (!this.running) return;
    this.child!.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM (drain) and wait; SIGKILL after `graceMs`. Returns the exit code. */
  async stop(graceMs = 15_000): Promise<number | null> {
    if (!this.running) return this.child?.exitCode ?? null;
    this.child!.kill('SIGTERM');
    const t = setTimeout(() => this.child?.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
    return this.child!.exitCode;
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }
}
