/**
 * Real nats-server launcher for tests: single servers and 3-node clusters on random loopback
 * ports with temp store dirs. Every server lives under the run root (see `runRoot()`), so the
 * global teardown can prove that nothing was left behind.
 */
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, type ConnectionOptions, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';

const repoRoot = resolve(import.meta.dirname, '../..');

/** Folder that holds every server dir of this test run; set by the global setup. */
export function runRoot(): string {
  const root = process.env.JETFLOW_TEST_ROOT ?? join(tmpdir(), `jetflow-test-${process.pid}`);
  mkdirSync(root, { recursive: true });
  return root;
}

/** Path of a nats-server >= 2.12, provisioned by scripts/provision-nats.sh when needed. */
export function natsServerBin(): string {
  if (process.env.JETFLOW_NATS_SERVER_RESOLVED) return process.env.JETFLOW_NATS_SERVER_RESOLVED;
  try {
    const bin = execFileSync('bash', [join(repoRoot, 'scripts/provision-nats.sh')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    }).trim();
    process.env.JETFLOW_NATS_SERVER_RESOLVED = bin;
    return bin;
  } catch (cause) {
    throw new Error(
      'No nats-server >= 2.12 available. Run `bash scripts/provision-nats.sh`, put one on PATH, or set NATS_SERVER_BIN.',
      { cause },
    );
  }
}

/** A free TCP port on 127.0.0.1 (asked from the kernel, then released). */
export async function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => ok(port));
    });
  });
}

export interface ServerOptions {
  /** Extra config text appended to the generated config (e.g. `mappings { … }`). */
  extraConfig?: string;
  /** Subject mappings, written as a `mappings` block. */
  mappings?: Record<string, string>;
  /** Server name; defaults to a generated one. */
  name?: string;
  /** Max payload in bytes. */
  maxPayload?: number;
  /** How the readiness check connects (credentials, TLS) when the server requires it. */
  connect?: Partial<ConnectionOptions>;
}

interface ClusterSpec {
  name: string;
  port: number;
  routes: number[];
}

const live = new Set<NatsServer>();
process.once('exit', () => {
  for (const s of live) s.child?.kill('SIGKILL');
});

/** One nats-server process with its own store dir; restartable on the same ports and store. */
export class NatsServer {
  child: ChildProcess | undefined;
  readonly dir: string;
  readonly port: number;
  readonly name: string;
  private readonly confPath: string;
  private exited: Promise<void> = Promise.resolve();
  private log = '';

  private connectOptions: Partial<ConnectionOptions> = {};

  private constructor(dir: string, port: number, name: string, confPath: string) {
    this.dir = dir;
    this.port = port;
    this.name = name;
    this.confPath = confPath;
  }

  /** Start a single server (or a cluster member when `cluster` is given) and wait until JetStream answers. */
  static async start(opts: ServerOptions = {}, cluster?: ClusterSpec): Promise<NatsServer> {
    const port = await freePort();
    const dir = mkdtempSync(join(runRoot(), 'srv-'));
    const name = opts.name ?? `n-${port}`;
    const conf: string[] = [
      `server_name: ${JSON.stringify(name)}`,
      `listen: "127.0.0.1:${port}"`,
      // max_file_store only bounds what streams may reserve (max_bytes), not disk use: tests create
      // many namespaces per server, each reserving its events and history bounds.
      `jetstream { store_dir: ${JSON.stringify(join(dir, 'store'))}, max_memory_store: 256MB, max_file_store: 1TB }`,
    ];
    if (opts.maxPayload) conf.push(`max_payload: ${opts.maxPayload}`);
    if (opts.mappings) {
      conf.push('mappings {');
      for (const [from, to] of Object.entries(opts.mappings)) {
        conf.push(`  ${JSON.stringify(from)}: ${JSON.stringify(to)}`);
      }
      conf.push('}');
    }
    if (cluster) {
      const routes = cluster.routes.map((p) => `"nats-route://127.0.0.1:${p}"`).join(', ');
      conf.push(
        `cluster { name: ${JSON.stringify(cluster.name)}, listen: "127.0.0.1:${cluster.port}", routes: [${routes}] }`,
      );
    }
    if (opts.extraConfig) conf.push(opts.extraConfig);
    const confPath = join(dir, 'nats.conf');
    writeFileSync(confPath, conf.join('\n') + '\n');
    const server = new NatsServer(dir, port, name, confPath);
    server.connectOptions = opts.connect ?? {};
    live.add(server);
    try {
      server.spawn();
      if (!cluster) await server.waitReady();
    } catch (err) {
      await server.stop();
      throw err;
    }
    return server;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  private spawn(): void {
    const child = spawn(natsServerBin(), ['-c', this.confPath], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    writeFileSync(join(this.dir, 'pid'), String(child.pid));
    const keep = (b: Buffer) => {
      this.log = (this.log + b.toString()).slice(-20_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((ok) => child.once('exit', () => ok()));
  }

  /** Ready = a JetStream API call succeeds. */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < deadline) {
      if (this.child?.exitCode !== null && this.child?.exitCode !== undefined) {
        throw new Error(
          `nats-server ${this.name} exited with ${this.child.exitCode}:\n${this.log}`,
        );
      }
      let nc: NatsConnection | undefined;
      try {
        nc = await connect({
          servers: this.url,
          reconnect: false,
          timeout: 1000,
          ...this.connectOptions,
        });
        const jsm = await jetstreamManager(nc, { timeout: 1000 });
        await jsm.getAccountInfo();
        return;
      } catch (err) {
        last = err;
        await sleep(100);
      } finally {
        await nc?.close().catch(() => undefined);
      }
    }
    throw new Error(
      `nats-server ${this.name} not ready after ${timeoutMs} ms: ${String(last)}\n${this.log}`,
    );
  }

  /** SIGKILL the process (the store stays for `restart()`). */
  async kill(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** Graceful stop of the process only (SIGTERM, SIGKILL after 10 s). */
  async shutdown(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child?.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
  }

  /** Stop (if running) and start again on the same port and store. */
  async restart(opts: { kill?: boolean; ready?: boolean } = {}): Promise<void> {
    if (opts.kill) await this.kill();
    else await this.shutdown();
    this.spawn();
    if (opts.ready !== false) await this.waitReady();
  }

  /** Stop the process and delete its store. Idempotent. */
  async stop(): Promise<void> {
    await this.shutdown();
    live.delete(this);
    if (existsSync(this.dir)) rmSync(this.dir, { recursive: true, force: true });
  }

  /** The tail of the server's log, for failure messages. */
  logTail(): string {
    return this.log;
  }
}

/** Ready = an R<size> stream can be created (every peer joined the meta group). */
async function waitClusterFormed(urls: string[], size: number, timeoutMs = 60_000): Promise<void> {
  const nc = await connect({ servers: urls });
  try {
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await jsm.streams.add({
          name: '__HARNESS_READY',
          subjects: ['__harness.ready'],
          num_replicas: size,
        });
        await jsm.streams.delete('__HARNESS_READY');
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`cluster did not form: ${String(err)}`);
        await sleep(250);
      }
    }
  } finally {
    await nc.close();
  }
}

/** Three clustered servers (R3 streams possible) on random ports. */
export class NatsCluster {
  private constructor(readonly servers: NatsServer[]) {}

  static async start(opts: ServerOptions = {}, size = 3): Promise<NatsCluster> {
    const clusterPorts = await Promise.all(Array.from({ length: size }, () => freePort()));
    const name = `jf-${clusterPorts[0]}`;
    const servers: NatsServer[] = [];
    try {
      for (let i = 0; i < size; i++) {
        servers.push(
          await NatsServer.start(
            { ...opts, name: `${name}-n${i + 1}` },
            { name, port: clusterPorts[i]!, routes: clusterPorts.filter((_, j) => j !== i) },
          ),
        );
      }
      await Promise.all(servers.map((s) => s.waitReady(60_000)));
      await waitClusterFormed(
        servers.map((s) => s.url),
        size,
      );
    } catch (err) {
      await Promise.all(servers.map((s) => s.stop()));
      throw err;
    }
    return new NatsCluster(servers);
  }

  /** Comma-separated URLs of every node. */
  get urls(): string[] {
    return this.servers.map((s) => s.url);
  }

  async stop(): Promise<void> {
    await Promise.all(this.servers.map((s) => s.stop()));
  }
}
