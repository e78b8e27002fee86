/**
 * Activities under faults and limits: a SIGKILLed worker process, heartbeats, a global
 * concurrency limit across 10 workers, cancellation, and a worker written with another client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import type { NatsServer } from '../harness/nats-server.js';
import { runRoot } from '../harness/nats-server.js';
import { repoRoot, startEngine, startServer, uniquePrefix } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { pack } from '../../src/contracts/codec.js';
import type { Engine } from '../../src/host/engine.js';

let server: NatsServer;
let nc: NatsConnection;
const children: ChildProcess[] = [];
beforeAll(async () => {
  server = await startServer();
  nc = await connect({ servers: server.url });
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await nc?.close();
  await server?.stop();
});

/** Spawn a node script as a child; resolves once `ready` appears on its stdout. */
async function spawnScript(
  args: string[],
  ready: string,
): Promise<{ child: ChildProcess; out: () => string }> {
  const child = spawn(process.execPath, [...args, runRoot()], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout?.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr?.on('data', (b: Buffer) => (out += b.toString()));
  const deadline = Date.now() + 30_000;
  while (!out.includes(ready)) {
    if (child.exitCode !== null || Date.now() > deadline)
      throw new Error(`script did not get ready:\n${out}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { child, out: () => out };
}

async function until(f: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await f())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('activities under faults', () => {
  let engine: Engine;
  let client: Client;
  const prefix = uniquePrefix();
  beforeAll(async () => {
    engine = await startEngine(server.url, prefix);
    client = new Client(nc, { prefix });
  });
  afterAll(async () => {
    await engine?.close();
  });

  it('a worker process SIGKILLed mid-activity: the task is redelivered to another worker and completes once', async () => {
    const a = await spawnScript(
      ['--import', 'tsx', resolve(repoRoot, 'test/fixtures/worker-main.ts'), server.url, prefix],
      'worker ready',
    );
    await client.start('crashy', 'k1');
    await until(() => a.out().includes('started 1'));
    a.child.kill('SIGKILL');
    const pid = a.child.pid;
    // Another worker (this process) takes the task over once the dead worker's lease expires.
    const b = await createWorker({
      connection: nc,
      prefix,
      queueSettings: { crashable: { ackWaitMs: 2_000 } },
      activities: { crashable: (_i: unknown, ctx) => ({ attempt: ctx.attempt, pid: process.pid }) },
    });
    try {
      const out = await client.result<{ output: { attempt: number; pid: number } }>(
        'crashy',
        'k1',
        { timeoutMs: 20_000 },
      );
      expect(out.output.attempt).toBe(2);
      expect(out.output.pid).not.toBe(pid);
      expect((await client.query('crashy', 'k1')).step).toBe(1); // one result applied
    } finally {
      await b.close();
    }
  });

  it('a heartbeating activity outlives AckWait; one that stops heartbeating is retried', async () => {
    const attempts: Record<string, number[]> = { longBeat: [], goesSilent: [] };
    const w = await createWorker({
      connection: nc,
      prefix,
      queueSettings: { longBeat: { ackWaitMs: 1_000 }, goesSilent: { ackWaitMs: 1_000 } },
      activities: {
        longBeat: async (_i: unknown, ctx) => {
          attempts.longBeat!.push(ctx.attempt);
          for (let i = 0; i < 15; i++) {
            await new Promise((r) => setTimeout(r, 200));
            ctx.heartbeat();
          }
          return 'finished after 3 s';
        },
        goesSilent: async (_i: unknown, ctx) => {
          attempts.goesSilent!.push(ctx.attempt);
          if (ctx.attempt > 1) return 'second attempt';
          ctx.heartbeat();
          await new Promise((r, fail) => {
            setTimeout(r, 5_000);
            ctx.signal.addEventListener('abort', () => fail(ctx.signal.reason as Error));
          });
          return 'never';
        },
      },
    });
    try {
      await client.start('beating', 'hb1');
      await client.start('silent', 'hb2');
      expect(await client.result('beating', 'hb1', { timeoutMs: 20_000 })).toEqual({
        output: 'finished after 3 s',
        error: null,
      });
      expect(await client.result('silent', 'hb2', { timeoutMs: 20_000 })).toEqual({
        output: 'second attempt',
        error: null,
      });
      expect(attempts.longBeat).toEqual([1]);
      expect(attempts.goesSilent).toEqual([1, 2]);
    } finally {
      await w.close();
    }
  });

  it('global limit 2 with 10 workers of concurrency 5: never more than 2 running at once', async () => {
    let running = 0;
    let max = 0;
    let done = 0;
    const conns: NatsConnection[] = [];
    const workers: Worker[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await connect({ servers: server.url });
      conns.push(c);
      workers.push(
        await createWorker({
          connection: c,
          prefix,
          concurrency: 5,
          queueSettings: { bank: { maxInFlight: 2 } },
          activities: {
            sendToBank: async () => {
              running++;
              max = Math.max(max, running);
              await new Promise((r) => setTimeout(r, 30));
              running--;
              done++;
              return 'sent';
            },
          },
        }),
      );
    }
    try {
      const ids = Array.from({ length: 40 }, (_, i) => `bank-${i}`);
      await Promise.all(ids.map((id) => client.start('bank', id)));
      for (const id of ids)
        expect(await client.result('bank', id, { timeoutMs: 30_000 })).toEqual({
          output: 'sent',
          error: null,
        });
      expect(done).toBe(40);
      expect(max).toBe(2);
    } finally {
      await Promise.all(workers.map((w) => w.close()));
      await Promise.all(conns.map((c) => c.close()));
    }
  });

  it('leaving the state cancels the running activity (AbortSignal fires) and its late result changes nothing', async () => {
    let started = false;
    let abortedWith: unknown;
    const w = await createWorker({
      connection: nc,
      prefix,
      activities: {
        slow: async (_i: unknown, ctx) => {
          started = true;
          await new Promise((r) => {
            setTimeout(r, 2_000);
            ctx.signal.addEventListener('abort', () => {
              abortedWith = ctx.signal.reason;
              r(undefined);
            });
          });
          return 'late';
        },
      },
    });
    try {
      await client.start('cancellable', 'x1');
      await until(() => started);
      const r = await client.signal('cancellable', 'x1', { type: 'STOP' });
      expect(r.value).toBe('stopped');
      await until(() => abortedWith !== undefined, 5_000);
      expect(String((abortedWith as Error).message)).toMatch(/canceled/);
      const before = await client.query('cancellable', 'x1');
      // A late result for the canceled task, as a slow worker would send it: ignored.
      const ignored = engine.processor.stats.ignored;
      await jetstream(nc).publish(
        `${prefix}.inbox.result.cancellable.x1`,
        pack({
          taskId: 'cancellable.x1.0.call',
          actorId: 'call',
          ok: true,
          output: 'late',
          attempt: 1,
        }),
      );
      await until(() => engine.processor.stats.ignored > ignored, 5_000);
      const after = await client.query('cancellable', 'x1');
      expect(after).toEqual(before);
      expect(after.output).toEqual({ output: null, error: null });
    } finally {
      await w.close();
    }
  });

  it('a worker written with another NATS client library completes tasks from the wire contract alone', async () => {
    const f = await spawnScript(
      [resolve(repoRoot, 'test/fixtures/foreign-worker.mjs'), server.url, prefix],
      'foreign worker ready',
    );
    await client.start('foreign', 'fw1', { x: 41 });
    expect(await client.result('foreign', 'fw1', { timeoutMs: 20_000 })).toEqual({
      output: 42,
      error: null,
    });
    await until(() => f.out().includes('done foreign.fw1.0.call'), 5_000);
    f.child.kill('SIGTERM');
  });
});
