/**
 * Vitest global setup: make sure the build (dist/) is current, since the CLI tests run what a
 * user installs; provision nats-server once; give the run one root folder for every server's
 * store; and on teardown assert that no server process or temp dir was left behind.
 */
import { execFileSync } from 'node:child_process';
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  existsSync,
  statSync,
  utimesSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { natsServerBin } from './nats-server.js';

const repoRoot = resolve(import.meta.dirname, '../..');

function newestMtime(path: string): number {
  const st = statSync(path);
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs;
  for (const e of readdirSync(path)) newest = Math.max(newest, newestMtime(join(path, e)));
  return newest;
}

/** Rebuild dist/ (`npm run build`) when a source is newer than the last build. */
export function ensureBuild(): void {
  const stamp = join(repoRoot, 'dist/.tsbuildinfo');
  const sources = ['src', 'actors', 'tsconfig.json', 'tsconfig.build.json', 'package.json'];
  const newest = Math.max(...sources.map((s) => newestMtime(join(repoRoot, s))));
  if (existsSync(stamp) && statSync(stamp).mtimeMs >= newest) return;
  process.stderr.write('global setup: dist/ is older than the sources, building (npm run build)\n');
  execFileSync(
    process.execPath,
    [join(repoRoot, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'],
    { cwd: repoRoot, stdio: 'inherit' },
  );
  const now = new Date();
  utimesSync(stamp, now, now);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export default function setup(): () => void {
  ensureBuild();
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
