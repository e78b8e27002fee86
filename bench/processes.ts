/** Child processes of the benchmarks: TypeScript scripts run through tsx, killed on exit. */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

const root = resolve(import.meta.dirname, '..');
const children: ChildProcess[] = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

/** Every child spawned so far (for a last-resort kill). */
export function spawnedChildren(): readonly ChildProcess[] {
  return children;
}

/** Run `script` (repo-relative) with tsx; resolves once `ready` appears in its output. */
export function spawnTs(
  script: string,
  args: string[],
  ready: string,
  extraNode: string[] = [],
  env?: Record<string, string>,
): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    [...extraNode, '--import', 'tsx', resolve(root, script), ...args],
    {
      cwd: root,
      stdio: ['ignore', 'pipe', 'pipe'],
      ...(env ? { env: { ...process.env, ...env } } : {}),
    },
  );
  children.push(child);
  let out = '';
  return new Promise((ok, fail) => {
    const on = (b: Buffer) => {
      out = (out + b.toString()).slice(-20_000);
      if (out.includes(ready)) ok(child);
    };
    child.stdout.on('data', on);
    child.stderr.on('data', on);
    child.once('exit', (code) => fail(new Error(`${script} exited with ${code}:\n${out}`)));
  });
}

/** SIGTERM, then SIGKILL after 15 s; resolves when the child exited. */
export async function stopChild(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((r) => c.once('exit', r));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(t);
}

/**
 * An engine process (`jetflow engine` from the sources) for a benchmark: `workflows` is a
 * repo-relative module, `extra` more flags (e.g. `['--journal', 'on']`), `node` flags of node
 * itself (a CPU profile); resolves once it logged that it started.
 */
export function spawnEngine(o: {
  url: string;
  prefix: string;
  shards: number;
  workflows: string;
  name: string;
  extra?: string[];
  node?: string[];
}): Promise<ChildProcess> {
  return spawnTs(
    'src/cli/main.ts',
    [
      'engine',
      '--nats-url',
      o.url,
      '--prefix',
      o.prefix,
      '--shards',
      String(o.shards),
      '--workflows',
      resolve(root, o.workflows),
      '--name',
      o.name,
      ...(o.extra ?? []),
    ],
    '"engine started"',
    o.node,
  );
}
