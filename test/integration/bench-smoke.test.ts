/** The benchmark in miniature (`bench/run.ts --smoke`), so that it never rots. */
import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { repoRoot } from '../harness/jetflow.js';
import { runRoot } from '../harness/nats-server.js';

describe('benchmark smoke run', () => {
  it('runs every workload, triggers, HTTP and the peers end to end and prints the table and targets', async () => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', resolve(repoRoot, 'bench/run.ts'), '--smoke'],
      {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, JETFLOW_TEST_ROOT: runRoot() },
      },
    );
    let out = '';
    let err = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const code = await new Promise<number | null>((ok) => child.once('exit', ok));
    expect(code, err.slice(-3000)).toBe(0);
    const rows = out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const workloads = rows.filter((r) => r.system === 'jetflow').map((r) => r.workload);
    expect(workloads).toEqual([
      'sequential',
      'sequential',
      'concurrency-key',
      'fanout',
      'signals',
      'head-of-line',
      'timers',
      'idle',
      'triggers',
      'http-start',
    ]);
    const keyed = rows.find((r) => r.workload === 'concurrency-key')!;
    expect(keyed.medianThroughputKeyed as number).toBeGreaterThan(0);
    expect((keyed.admission as { samples: number }).samples).toBeGreaterThan(0);
    // Head-of-line: the other workflows of the hot one's shard were measured during its flood.
    const hol = rows.find((r) => r.workload === 'head-of-line') as {
      duringFlood: { signals: number; p99Ms: number };
      quiet: { signals: number };
    };
    expect(hol.duringFlood.signals).toBeGreaterThan(0);
    expect(hol.quiet.signals).toBeGreaterThan(0);
    expect(out).toContain('no head-of-line blocking');
    // Trigger throughput as a ratio to the start rate, and HTTP start beside NATS start.
    const trig = rows.find((r) => r.workload === 'triggers')!;
    expect(trig.triggerStartsPerSec as number).toBeGreaterThan(0);
    expect(typeof trig.triggerOverClient).toBe('number');
    expect(typeof trig.triggerOverWorkload1).toBe('number');
    const hs = rows.find((r) => r.workload === 'http-start') as Record<
      string,
      { nats: { p50Ms: number; p99Ms: number }; http: { p50Ms: number; p99Ms: number } }
    >;
    for (const c of ['c1', 'c16'])
      for (const path of ['nats', 'http'] as const) {
        expect(hs[c]![path].p50Ms).toBeGreaterThan(0);
        expect(hs[c]![path].p99Ms).toBeGreaterThanOrEqual(hs[c]![path].p50Ms);
      }
    expect(out).toContain('Triggers and HTTP ingress (same run):');
    for (const r of rows.filter((x) => x.workload === 'sequential' && x.system === 'jetflow')) {
      expect(r.throughput as number).toBeGreaterThan(0);
      expect(r.writesPerWf as number).toBeGreaterThan(0);
    }
    expect(rows.some((r) => r.system === 'jetstream-raw')).toBe(true);
    // Each peer is either measured or reported as not measured with a reason; never missing.
    for (const system of ['restate', 'bullmq']) {
      const peer = rows.filter((r) => r.system === system);
      expect(peer).toHaveLength(2);
      for (const p of peer)
        expect(typeof p.throughput === 'number' || typeof p.notMeasured === 'string').toBe(true);
    }
    expect(out).toContain('| system | workload |');
    expect(out).toContain('Targets:');
  }, 300_000);
});
