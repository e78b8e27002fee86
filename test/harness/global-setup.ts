/**
 * Vitest global setup: provision nats-server once, give the run one root folder for every
 * server's store, and on teardown assert that no server process or temp dir was left behind.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { natsServerBin } from './nats-server.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export default function setup(): () => void {
  const bin = natsServerBin();
  process.env.JETFLOW_NATS_SERVER_RESOLVED = bin;
  const root = mkdtempSync(join(tmpdir(), 'jetflow-test-'));
  process.env.JETFLOW_TEST_ROOT = root;

  return () => {
    const leaks: string[] = [];
    for (const entry of existsSync(root) ? readdirSync(root) : []) {
      const pidFile = join(root, entry, 'pid');
      if (existsSync(pidFile)) {
        const pid = Number(readFileSync(pidFile, 'utf8'));
        if (alive(pid)) {
          leaks.push(`nats-server pid ${pid} still running (${entry})`);
          process.kill(pid, 'SIGKILL');
        }
      }
      leaks.push(`temp dir left behind: ${join(root, entry)}`);
    }
    // Any process whose command line names this run's root is a leak too (engines, workers).
    const ps = execFileSync('ps', ['-eo', 'pid=,args='], { encoding: 'utf8' });
    for (const line of ps.split('\n')) {
      if (line.includes(root)) {
        const pid = Number(line.trim().split(/\s+/)[0]);
        if (pid !== process.pid) leaks.push(`process left behind: ${line.trim()}`);
      }
    }
    rmSync(root, { recursive: true, force: true });
    if (leaks.length > 0) {
      throw new Error(`test run left things behind:\n${leaks.join('\n')}`);
    }
  };
}
