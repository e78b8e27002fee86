/**
 * Running the `jetflow` command as a user does: a child process of `bin/jetflow.js` (the build in
 * dist/), or of an installed package's bin. One-shot verbs return their exit code and output;
 * long-running roles (engine, worker) are started, awaited until ready, and stopped with SIGTERM.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';

export const repoBin = resolve(import.meta.dirname, '../../bin/jetflow.js');

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface CliOptions {
  /** The command and its leading args (default: this node running the checkout's bin). */
  command?: [string, ...string[]];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /**
   * Start in a process group of its own and signal the whole group. Needed for a command run
   * through `npx`: npm exits on SIGTERM itself without passing it on, so signalling npx alone
   * would orphan jetflow; the group gets it to jetflow, whose exit code npx then cannot report.
   */
  group?: boolean;
}

function commandOf(o: CliOptions): [string, string[]] {
  const [cmd, ...pre] = o.command ?? [process.execPath, repoBin];
  return [cmd, pre];
}

/** Run one verb to its end. */
export function runJetflow(args: string[], o: CliOptions = {}): Promise<CliRun> {
  const [cmd, pre] = commandOf(o);
  const child = spawn(cmd, [...pre, ...args], {
    cwd: o.cwd,
    env: { ...process.env, NO_COLOR: '', ...o.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 60_000);
  return new Promise((ok, fail) => {
    child.once('error', fail);
    child.once('close', (code) => {
      clearTimeout(timer);
      ok({ code, stdout, stderr });
    });
  });
}

/** A long-running `jetflow engine` / `jetflow worker`, ready once `readyText` was logged. */
export class JetflowProcess {
  child: ChildProcess | undefined;
  log = '';
  private exited: Promise<number | null> = Promise.resolve(null);

  constructor(
    readonly args: string[],
    readonly readyText: string,
    readonly o: CliOptions = {},
  ) {}

  async start(): Promise<this> {
    const [cmd, pre] = commandOf(this.o);
    const child = spawn(cmd, [...pre, ...this.args], {
      cwd: this.o.cwd,
      env: { ...process.env, ...this.o.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: this.o.group === true,
    });
    this.child = child;
    this.exited = new Promise((ok) => child.once('exit', (code) => ok(code)));
    const ready = new Promise<void>((ok, fail) => {
      const onData = (b: Buffer) => {
        this.log = (this.log + b.toString()).slice(-50_000);
        if (this.log.includes(this.readyText)) ok();
      };
      child.stdout?.on('data', onData);
      child.stderr?.on('data', onData);
      child.once('exit', (code) =>
        fail(new Error(`${this.args[0]} exited with ${code} before it was ready:\n${this.log}`)),
      );
    });
    const timeout = setTimeout(() => this.signal('SIGKILL'), this.o.timeoutMs ?? 60_000);
    try {
      await ready;
    } finally {
      clearTimeout(timeout);
    }
    return this;
  }

  get running(): boolean {
    return !!this.child && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Any process of its group still alive (always false without `group`). */
  private groupAlive(): boolean {
    if (!this.o.group || !this.child?.pid) return false;
    try {
      process.kill(-this.child.pid, 0);
      return true;
    } catch {
      return false;
    }
  }

  private signal(sig: NodeJS.Signals): void {
    if (this.o.group && this.child?.pid) {
      try {
        process.kill(-this.child.pid, sig);
      } catch {
        // the group is gone
      }
    } else this.child?.kill(sig);
  }

  /**
   * SIGTERM (drain) and wait; SIGKILL after `graceMs`. Returns the exit code (with `group`: the
   * code of the command started, e.g. npx's, once the whole group is gone).
   */
  async stop(graceMs = 15_000): Promise<number | null> {
    if (!this.running && !this.groupAlive()) return this.child?.exitCode ?? null;
    this.signal('SIGTERM');
    const t = setTimeout(() => this.signal('SIGKILL'), graceMs);
    const code = await this.exited;
    while (this.groupAlive()) await new Promise((r) => setTimeout(r, 50));
    clearTimeout(t);
    return code;
  }
}
