/**
 * The embedded default: provision (scripts/provision-nats.sh) and run a local nats-server with
 * the repository's nats.conf, for `jetflow dev` / `npm start`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { connect } from '@nats-io/transport-node';
import { resolve } from 'node:path';
import { ConfigError, ErrorCode, RetryableError } from '../errors.js';
import { repoRoot } from './package-root.js';

export { repoRoot };

/** Path of a nats-server >= 2.12 (provisioned into .nats/ when needed). */
export function provisionNatsServer(): string {
  try {
    return execFileSync('bash', [resolve(repoRoot, 'scripts/provision-nats.sh')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
    }).trim();
  } catch (cause) {
    throw new ConfigError('no nats-server >= 2.12 could be provisioned (see the message above)', {
      cause,
    });
  }
}

export interface LocalServer {
  url: string;
  stop(): Promise<void>;
}

/** Start nats-server with `configFile` and wait until it accepts connections. */
export async function startLocalServer(
  configFile: string,
  url = 'nats://127.0.0.1:4222',
): Promise<LocalServer> {
  const bin = provisionNatsServer();
  // nats.conf stores under ./.data/: the checkout's, or the project's that installed jetflow.
  const cwd = repoRoot.split(/[\\/]/).includes('node_modules') ? process.cwd() : repoRoot;
  const child: ChildProcess = spawn(bin, ['-c', configFile], {
    cwd,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  child.stderr?.on('data', (b: Buffer) => (log = (log + b.toString()).slice(-4000)));
  const exited = new Promise<void>((ok) => child.once('exit', () => ok()));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) {
      throw new RetryableError(
        `nats-server exited at start (is port 4222 in use? set NATS_URL to use a running server):\n${log}`,
        {
          code: ErrorCode.Unavailable,
        },
      );
    }
    try {
      const nc = await connect({ servers: url, reconnect: false, timeout: 500 });
      await nc.close();
      break;
    } catch (err) {
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new RetryableError(`nats-server did not come up: ${String(err)}\n${log}`, {
          code: ErrorCode.Unavailable,
        });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    url,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const force = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(force);
    },
  };
}
