/**
 * Batches under faults (issue 23 acceptance), full size: BATCH_N items (default 100,000), each a
 * two-activity workflow (`batchTwo`, every 97th fails for good); two engine processes, one
 * SIGKILLed while items run (and restarted); the worker process SIGKILLed (and restarted); the
 * submitter process SIGKILLed once it passed 40% of the items, then run again with the same
 * batch id (it resumes) and sealing. Asserts: succeeded + failed = N exactly, with the expected
 * failures; every item's workflow ran its charge (and, when it succeeded, its email) — the
 * activities' own records; every item was started once (attempts 1 in the ledger, no item
 * workflow of a second generation); exactly one callback with those counts.
 * `npm run soak:batches` (BATCH_N=10000 for a shorter run).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EngineProcess, repoRoot, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import type { BatchStatus } from '../../src/contracts/batch.js';

const env = useServer();
const N = Number(process.env.BATCH_N ?? 100_000);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function spawnTs(args: string[], ready: string, onLine?: (l: string) => void) {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const started = new Promise<ChildProcess>((ok, fail) => {
    const onData = (b: Buffer) => {
      const text = b.toString();
      out = (out + text).slice(-20_000);
      for (const l of text.split('\n')) if (l) onLine?.(l);
      if (out.includes(ready)) ok(child);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code, sig) =>
      fail(new Error(`${args[0]} exited (${code ?? sig}):\n${out}`)),
    );
  });
  const exited = new Promise<number | null>((ok) => child.once('exit', (code) => ok(code)));
  return { child, started, exited, out: () => out };
}

describe('batches: engine, worker and submitter killed', () => {
  it(`${N} two-activity items, counted exactly, one callback`, { timeout: 3_600_000 }, async () => {
    const prefix = uniquePrefix();
    const dir = mkdtempSync(join(tmpdir(), 'jetflow-batch-'));
    const file = join(dir, 'effects.log');
    const opts = { ackWaitMs: 3_000, failoverMs: 2_000 };
    let a = await new EngineProcess(env.server.url, prefix, opts).start();
    const b = await new EngineProcess(env.server.url, prefix, opts).start();
    const workerArgs = [
      resolve(repoRoot, 'test/fixtures/batch-worker.ts'),
      env.server.url,
      prefix,
      file,
    ];
    let worker = spawnTs(workerArgs, 'worker ready');
    await worker.started;
    const client = new Client(env.nc, { prefix, timeoutMs: 10_000 });
    await client.start('batchWatcher', 'soak-w');
    const t0 = Date.now();
    const log = (l: string) => console.log(`+${((Date.now() - t0) / 1000).toFixed(1)}s ${l}`);
    const submitter = resolve(repoRoot, 'test/fixtures/batch-submitter.ts');
    try {
      // 1. The submitter, SIGKILLed past 40%.
      let next = 0;
      const first = spawnTs(
        [submitter, env.server.url, prefix, 'soak', String(N), 'soak-w'],
        'next',
        (l) => {
          const m = /^next (\d+)/.exec(l);
          if (m) next = Number(m[1]);
        },
      );
      await first.started;
      while (next < 0.4 * N) await sleep(20);
      first.child.kill('SIGKILL');
      await first.exited;
      log(`submitter SIGKILL at item ${next} of ${N}`);
      // 2. Engine A SIGKILLed while items run; the worker too.
      a.child!.kill('SIGKILL');
      log('engine A SIGKILL');
      const second = spawnTs(
        [submitter, env.server.url, prefix, 'soak', String(N), 'soak-w', 'seal'],
        'submitted',
      );
      await sleep(1_500);
      worker.child.kill('SIGKILL');
      await worker.exited;
      log('worker SIGKILL');
      a = await new EngineProcess(env.server.url, prefix, opts).start();
      log('engine A restarted');
      worker = spawnTs(workerArgs, 'worker ready');
      await worker.started;
      log('worker restarted');
      await second.started;
      await second.exited;
      const resumed = JSON.parse(/submitted (.*)/.exec(second.out())![1]!) as {
        resumedFrom: number;
        accepted: number;
        duplicates: number;
      };
      log(`submitter resumed at ${resumed.resumedFrom}, accepted ${resumed.accepted} more`);
      expect(resumed.duplicates).toBe(0);
      // 3. Until the batch is done and the callback sent.
      let s: BatchStatus;
      let lastLog = 0;
      for (;;) {
        s = await client.batches.status('soak').catch(() => s);
        if (s && Date.now() - lastLog > 5_000) {
          lastLog = Date.now();
          log(`${JSON.stringify(s.counts)} ${s.rate ?? 0}/s`);
        }
        if (s?.state === 'done' && s.notified) break;
        await sleep(500);
      }
      const ms = Date.now() - t0;
      log(
        `done: ${JSON.stringify(s.counts)} outcome ${s.outcome} in ${ms} ms (${Math.round(N / (ms / 1000))} items/s end to end)`,
      );
      const failures = Math.ceil(N / 97);
      expect(s.counts.total).toBe(N);
      expect(s.counts.succeeded + s.counts.failed).toBe(N);
      expect(s.counts.failed).toBe(failures);
      expect(s.outcome).toBe('completedWithErrors');
      // Exactly one callback, with those counts (a later tracker pass sends nothing more).
      await sleep(2_000);
      const events = (
        (await client.query('batchWatcher', 'soak-w')).context as {
          events: { counts: BatchStatus['counts']; outcome: string }[];
        }
      ).events;
      expect(events).toHaveLength(1);
      expect(events[0]!.counts).toEqual(s.counts);
      // The side effects, as the activities recorded them.
      const lines = readFileSync(file, 'utf8').split('\n').filter(Boolean);
      const charged = new Set<string>();
      const emailed = new Set<string>();
      for (const l of lines) {
        const [act, wf] = l.split(' ');
        (act === 'charge' ? charged : emailed).add(wf!);
      }
      log(
        `effects: ${lines.length} runs, ${charged.size} charged, ${emailed.size} emailed (${lines.length - charged.size - emailed.size} reruns)`,
      );
      expect(charged.size).toBe(N - failures);
      expect(emailed.size).toBe(N - failures);
      expect([...charged].every((w) => /^soak=u\d+$/.test(w))).toBe(true);
      // Every item started once: one workflow per item, attempts 1.
      let cursor: number | undefined;
      let seen = 0;
      do {
        const page = await client.batches.items('soak', {
          limit: 1000,
          ...(cursor ? { cursor } : {}),
        });
        for (const it of page.items) {
          seen++;
          expect(it.attempts).toBe(1);
          expect(it.wf).toBe(`soak=${it.key}`);
        }
        cursor = page.cursor;
      } while (cursor !== undefined);
      expect(seen).toBe(N);
    } finally {
      await a.kill();
      await b.kill();
      worker.child.kill('SIGKILL');
    }
  });
});
