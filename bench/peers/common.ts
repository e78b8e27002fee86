/**
 * Shared plumbing for the in-process-orchestrated peer benchmarks (bench/peers/restate.ts,
 * bench/peers/bullmq.ts): result types, the closed-loop load generator, latency percentiles,
 * /proc-based CPU and RSS sampling, free loopback ports, and child-process management with
 * bounded waits and guaranteed teardown.
 *
 * Linux-only (reads /proc). Nothing here throws past a runner: the runners catch everything and
 * report `{ system, notMeasured }`.
 */
import { spawn, spawnSync } from 'node:child_process';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';

/** Options every peer runner accepts. */
export interface PeerOpts {
  /** Number of measured workflows (a small warm-up batch is run before and not counted). */
  workflows: number;
  /** Number of workflows in flight at once (closed loop: each slot starts the next on completion). */
  concurrency: number;
  /** Progress/diagnostic sink. */
  log: (s: string) => void;
}

export type PeerSystem = 'restate' | 'bullmq';

/** A successful measurement of workload 1 ("sequential": 3 sequential trivial steps). */
export interface PeerMeasured {
  system: PeerSystem;
  workload: 'sequential';
  concurrency: number;
  workflows: number;
  /** Completed workflows per second over the measured phase. */
  throughput: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU seconds (user+system) of the peer's server process(es) per workflow. */
  serverCpuSecPerWf?: number;
  /** CPU seconds (user+system) of the peer's worker/service process per workflow. */
  workerCpuSecPerWf?: number;
  /** Resident set size of the peer's server process at the end of the measured phase. */
  serverRssMb?: number;
}

/** A peer that could not be measured, with the precise reason. */
export interface PeerNotMeasured {
  system: PeerSystem;
  notMeasured: string;
}

export type PeerResult = PeerMeasured | PeerNotMeasured;

/** A reason why `opts` cannot be run, or undefined when they are valid. */
export function invalidOpts(opts: PeerOpts): string | undefined {
  const ok = (n: number): boolean => Number.isInteger(n) && n >= 1;
  if (!ok(opts.workflows) || !ok(opts.concurrency)) {
    return `invalid options: workflows (${opts.workflows}) and concurrency (${opts.concurrency}) must be positive integers`;
  }
  return undefined;
}

/** Turns anything thrown into a one-line reason. */
export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Rejects with `<what> timed out after <ms> ms` if `p` does not settle in time. */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits for `p` to settle (ignoring its outcome) for at most `ms`. Never rejects. */
export async function settleWithin(p: Promise<unknown> | undefined, ms: number): Promise<void> {
  if (!p) return;
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    p.catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, ms);
    }),
  ]);
  clearTimeout(timer);
}

/**
 * Polls `probe` until it returns true (exceptions count as "not yet"), every `intervalMs`, for at
 * most `timeoutMs`. The last probe error is included in the timeout message.
 */
export async function waitUntil(
  probe: () => Promise<boolean>,
  timeoutMs: number,
  what: string,
  intervalMs = 100,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      if (await probe()) return;
    } catch (err) {
      last = errorMessage(err);
    }
    if (Date.now() >= deadline) {
      throw new Error(
        `${what} not ready after ${timeoutMs} ms${last ? ` (last error: ${last})` : ''}`,
      );
    }
    await sleep(intervalMs);
  }
}

/** A free TCP port on 127.0.0.1 (bound then released; a tiny race is accepted). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr !== null && typeof addr === 'object') resolve(addr.port);
        else reject(new Error('could not determine a free port'));
      });
    });
  });
}

let clockTicks: number | undefined;

/** Kernel clock ticks per second (USER_HZ) used by /proc/<pid>/stat. */
function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    const out = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number.parseInt(out.stdout ?? '', 10);
    clockTicks = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return clockTicks;
}

/** User+system CPU seconds consumed so far by process `pid` (all its threads). */
export function readCpuSec(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may contain spaces: split after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // Fields after the name start at field 3 (state), so utime (14) is index 11, stime (15) index 12.
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) {
    throw new Error(`unparseable /proc/${pid}/stat`);
  }
  return (utime + stime) / ticksPerSecond();
}

/** Current resident set size of process `pid`, in MiB. */
export function readRssMb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
  if (!m?.[1]) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(m[1]) / 1024;
}

/** Like readCpuSec, but undefined when /proc is not readable (e.g. the process is gone). */
export function tryCpuSec(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    return readCpuSec(pid);
  } catch {
    return undefined;
  }
}

/** Nearest-rank percentile of an ascending-sorted array. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1] ?? Number.NaN;
}

export interface LoadResult {
  latenciesMs: number[];
  wallMs: number;
}

/**
 * Closed-loop load: `concurrency` slots each run `one(i)` back to back until `count` workflows
 * have been started; each workflow's latency is start → resolved promise as seen by the caller.
 * The first failure aborts the whole run (remaining slots stop picking up work) and is rethrown.
 * The whole run is bounded by `timeoutMs`, and aborted as soon as one of the `watch`ed child
 * processes exits.
 */
export async function runClosedLoop(
  count: number,
  concurrency: number,
  one: (i: number) => Promise<void>,
  timeoutMs: number,
  watch: readonly Managed[] = [],
): Promise<LoadResult> {
  const latenciesMs: number[] = [];
  let next = 0;
  let failed: Error | undefined;
  const slot = async (): Promise<void> => {
    while (failed === undefined && next < count) {
      const i = next++;
      const t0 = performance.now();
      try {
        await one(i);
      } catch (err) {
        failed ??= err instanceof Error ? err : new Error(String(err));
        return;
      }
      latenciesMs.push(performance.now() - t0);
    }
  };
  const start = performance.now();
  const slots = Array.from({ length: Math.max(1, Math.min(concurrency, count)) }, slot);
  const died = diedWhile(watch);
  try {
    await withTimeout(
      Promise.race([Promise.all(slots), died.promise]),
      timeoutMs,
      `load of ${count} workflows`,
    );
  } catch (err) {
    // Stop the slots from starting more work after a timeout.
    failed ??= err instanceof Error ? err : new Error(String(err));
  }
  died.dispose();
  const wallMs = performance.now() - start;
  if (failed !== undefined) throw failed;
  return { latenciesMs, wallMs };
}

/** A promise that rejects when any of `children` exits, until `dispose()` is called. */
function diedWhile(children: readonly Managed[]): { promise: Promise<never>; dispose: () => void } {
  let disposed = false;
  const promise = new Promise<never>((_, reject) => {
    for (const m of children) {
      void m.exited.then(() => {
        if (!disposed) reject(new Error(`${m.name} (pid ${m.pid}) exited during the run`));
      });
    }
  });
  promise.catch(() => undefined);
  return {
    promise,
    dispose: () => {
      disposed = true;
    },
  };
}

/** Default warm-up size for a run of `workflows` at `concurrency` (not counted in results). */
export function warmupCount(workflows: number, concurrency: number): number {
  return Math.min(200, Math.max(concurrency * 2, Math.ceil(workflows / 20)));
}

/** A generous bound for a load phase: 30 s plus 200 ms per workflow per slot. */
export function loadTimeoutMs(workflows: number, concurrency: number): number {
  return 30_000 + Math.ceil((workflows * 200) / Math.max(1, concurrency));
}

/**
 * Last-resort teardown: synchronous cleanups (kill a child, delete a temp dir) that run if this
 * process exits or is interrupted (SIGINT/SIGTERM/SIGHUP) while a runner still owns resources.
 * Signal handlers are installed only while something is registered, and re-raise the signal.
 */
const emergencyCleanups = new Set<() => void>();
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

function runEmergencyCleanups(): void {
  for (const fn of emergencyCleanups) {
    try {
      fn();
    } catch {
      // best effort
    }
  }
  emergencyCleanups.clear();
  uninstallHandlers();
}

function onSignal(signal: NodeJS.Signals): void {
  runEmergencyCleanups();
  process.kill(process.pid, signal);
}

function uninstallHandlers(): void {
  process.off('exit', runEmergencyCleanups);
  for (const sig of SIGNALS) process.off(sig, onSignal);
}

/** Registers a synchronous emergency cleanup; returns its unregister function. */
function registerCleanup(fn: () => void): () => void {
  if (emergencyCleanups.size === 0) {
    process.on('exit', runEmergencyCleanups);
    for (const sig of SIGNALS) process.on(sig, onSignal);
  }
  emergencyCleanups.add(fn);
  return () => {
    emergencyCleanups.delete(fn);
    if (emergencyCleanups.size === 0) uninstallHandlers();
  };
}

/** A fresh temp dir, deleted by `release()` (and on abnormal exit). */
export async function makeTempDir(
  prefix: string,
): Promise<{ path: string; release: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix));
  const unregister = registerCleanup(() => rmSync(path, { recursive: true, force: true }));
  return {
    path,
    release: async () => {
      await rm(path, { recursive: true, force: true });
      unregister();
    },
  };
}

/** A child process whose recent output is kept for error messages. */
export interface Managed {
  name: string;
  child: ChildProcess;
  pid: number;
  /** Last ~64 KiB of combined stdout/stderr. */
  output: () => string;
  /** Resolves when the process has exited. */
  exited: Promise<void>;
  hasExited: () => boolean;
}

/**
 * Spawns `cmd args` with piped output (kept in a bounded tail buffer) and no stdin. Rejects if
 * the process cannot be spawned.
 */
export async function spawnManaged(
  name: string,
  cmd: string,
  args: readonly string[],
  options: SpawnOptions = {},
): Promise<Managed> {
  const child = spawn(cmd, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let tail = '';
  const append = (chunk: Buffer): void => {
    tail = (tail + chunk.toString('utf8')).slice(-65_536);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  let done = false;
  // If this process exits or is interrupted before tearing down, do not leave orphans.
  const unregister = registerCleanup(() => {
    if (!done) child.kill('SIGKILL');
  });
  const exited = new Promise<void>((resolve) => {
    child.once('exit', () => {
      done = true;
      unregister();
      resolve();
    });
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (err) => {
      done = true;
      unregister();
      reject(new Error(`cannot start ${name} (${cmd}): ${err.message}`));
    });
  });
  if (child.pid === undefined) throw new Error(`cannot start ${name}: no pid`);
  return {
    name,
    child,
    pid: child.pid,
    output: () => tail,
    exited,
    hasExited: () => done || child.exitCode !== null || child.signalCode !== null,
  };
}

/**
 * Resolves with the first regex match in the child's output (stdout or stderr), rejects if the
 * child exits first or `timeoutMs` elapses; either way the tail of its output is in the message.
 */
export function waitForOutput(m: Managed, re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const cleanup = (): void => {
      clearTimeout(timer);
      m.child.stdout?.off('data', check);
      m.child.stderr?.off('data', check);
      m.child.off('exit', onExit);
    };
    const check = (): void => {
      const hit = re.exec(m.output());
      if (hit) {
        cleanup();
        resolve(hit);
      }
    };
    const onExit = (): void => {
      cleanup();
      reject(new Error(`${m.name} exited before ready; output tail:\n${m.output().slice(-2000)}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(
        new Error(
          `${m.name} not ready after ${timeoutMs} ms; output tail:\n${m.output().slice(-2000)}`,
        ),
      );
    }, timeoutMs);
    m.child.stdout?.on('data', check);
    m.child.stderr?.on('data', check);
    m.child.on('exit', onExit);
    if (m.hasExited()) onExit();
    else check();
  });
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone (bounded). */
export async function stopManaged(m: Managed | undefined, graceMs = 5_000): Promise<void> {
  if (!m || m.hasExited()) return;
  m.child.kill('SIGTERM');
  await settleWithin(m.exited, graceMs);
  if (!m.hasExited()) {
    m.child.kill('SIGKILL');
    await settleWithin(m.exited, 2_000);
  }
}

/** Rounds to `digits` decimals (results are printed as JSON). */
export function round(n: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

/** CPU sampler for a set of pids: call `delta()` after the measured phase. */
export function cpuSampler(pids: readonly number[]): { delta: () => number | undefined } {
  const before = pids.map(tryCpuSec);
  return {
    delta: () => {
      let total = 0;
      for (const [i, pid] of pids.entries()) {
        const b = before[i];
        const a = tryCpuSec(pid);
        if (a === undefined || b === undefined) return undefined;
        total += a - b;
      }
      return total;
    },
  };
}
