/**
 * `jetflow why` against a real nats-server, an in-process engine and worker: each stage that can
 * hold a workflow is produced for real and read back (event, timer, dispatch with and without a
 * worker, a running attempt, a retry's backoff, a concurrency key, a pause, finished), and the
 * CLI prints the same.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { setup } from 'xstate';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runJetflow } from '../harness/cli.js';
import { Client } from '../../src/client/index.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { activity } from '../../src/engine/activity.js';
import { createWorker } from '../../src/worker/index.js';
import { workflows } from '../fixtures/workflows.js';
import type { WhyReply } from '../../src/engine/why.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

/** One activity on queue `why`, retried after a minute: long enough to be seen in backoff. */
const whyAct = defineWorkflow({
  type: 'whyact',
  version: 1,
  machine: setup({
    types: { input: {} as { mode: string }, context: {} as { mode: string } },
    actors: {
      whyWork: activity('whyWork', {
        queue: 'why',
        retry: { maxAttempts: 3, initialIntervalMs: 60_000, jitter: 0 },
      }),
    },
  }).createMachine({
    id: 'whyact',
    context: ({ input }) => ({ mode: input.mode }),
    initial: 'working',
    states: {
      working: {
        invoke: {
          id: 'work',
          src: 'whyWork',
          input: ({ context }: { context: { mode: string } }) => ({ mode: context.mode }),
          onDone: 'done',
          onError: 'failed',
        },
      },
      done: { type: 'final' },
      failed: { type: 'final' },
    },
  }),
});

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function setupAll() {
  const prefix = uniquePrefix();
  const engine = await startEngine(env.server.url, prefix, { workflows: [...workflows, whyAct] });
  open.push(engine);
  const client = new Client(env.nc, { prefix });
  const whyIs = (type: string, id: string, stage: WhyReply['stage']) =>
    until(`${type}/${id} held by ${stage}`, async () => {
      const w = await client.why(type, id);
      return w.stage === stage ? w : undefined;
    });
  return { prefix, engine, client, whyIs };
}

describe('jetflow why', () => {
  it('names the stage that holds a workflow: event, timer, dispatch, attempt, backoff, key, pause, finished', async () => {
    const { prefix, client, whyIs } = await setupAll();

    // Waiting for an event from outside.
    await client.start('counter', 'c1', {});
    const ev = await whyIs('counter', 'c1', 'event');
    expect(ev.waits).toHaveLength(1);
    expect(ev.waits[0]!.what).toContain('SIG');

    // A timer, with its due time.
    const t0 = Date.now();
    await client.start('sleeper', 's1', { ms: 120_000 });
    const tm = await whyIs('sleeper', 's1', 'timer');
    const due = Date.parse(tm.waits[0]!.until!);
    expect(due).toBeGreaterThanOrEqual(t0 + 120_000 - 1_000);
    expect(due).toBeLessThanOrEqual(Date.now() + 120_000 + 1_000);

    // An activity on a queue no worker has pulled yet.
    await client.start('whyact', 'a1', { mode: 'block' });
    const d1 = await whyIs('whyact', 'a1', 'dispatch');
    expect(d1.summary).toContain('no consumer');

    // A worker takes it: the attempt runs, on that worker.
    let release!: () => void;
    const blocked = new Promise<void>((r) => (release = r));
    let failures = 0;
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      queues: ['why'],
      activities: {
        whyWork: async (input: { mode: string }) => {
          if (input.mode === 'block') await blocked;
          if (input.mode === 'fail') {
            failures++;
            throw new Error('provider down');
          }
          return { ok: true };
        },
      },
    });
    open.push(worker);
    const at = await whyIs('whyact', 'a1', 'attempt');
    expect(at.summary).toMatch(/attempt 1 runs on worker \S+/);
    expect(at.waits[0]!.data).toMatchObject({ taken: { attempt: 1 } });

    // A failed attempt waits out its one-minute backoff.
    const f0 = Date.now();
    await client.start('whyact', 'a2', { mode: 'fail' });
    const bo = await whyIs('whyact', 'a2', 'backoff');
    expect(failures).toBe(1);
    expect(bo.summary).toContain('attempt 2 is due at');
    const retryAt = Date.parse(bo.waits[0]!.until!);
    expect(retryAt).toBeGreaterThanOrEqual(f0 + 60_000 - 1_000);
    expect(retryAt).toBeLessThanOrEqual(Date.now() + 60_000 + 1_000);

    // A concurrency key: the second start waits behind the first.
    await client.start('keyq', 'k1', { key: 'merchant-7' });
    await whyIs('keyq', 'k1', 'event');
    const r = await client.start('keyq', 'k2', { key: 'merchant-7' });
    expect(r).toMatchObject({ deferred: true, position: 1 });
    const kw = await whyIs('keyq', 'k2', 'concurrency-key');
    expect(kw.summary).toContain('position 1 of 1 waiting');
    expect(kw.summary).toContain('held by k1');

    // An operator's pause comes before everything else it awaits.
    await client.pause('counter', 'c1', { by: 'ops@test', reason: 'why test' });
    await client.signal('counter', 'c1', { type: 'SIG', n: 1 });
    const pz = await whyIs('counter', 'c1', 'paused');
    expect(pz.summary).toContain('1 message(s) held');
    expect(pz.waits.map((w) => w.stage)).toEqual(['paused', 'event']);

    // Finished: nothing to wait for.
    release();
    await client.result('whyact', 'a1', { timeoutMs: 15_000 });
    const fin = await client.why('whyact', 'a1');
    expect(fin).toMatchObject({ status: 'completed', stage: null, waits: [] });

    // The CLI prints the same reading.
    const cli = await runJetflow([
      'why',
      'keyq',
      'k2',
      '--nats-url',
      env.server.url,
      '--prefix',
      prefix,
    ]);
    expect(cli.code).toBe(0);
    expect(cli.stdout).toContain('held by concurrency-key');
    expect(cli.stdout).toContain('position 1 of 1 waiting');
    const js = await runJetflow([
      'why',
      'sleeper',
      's1',
      '--json',
      '--nats-url',
      env.server.url,
      '--prefix',
      prefix,
    ]);
    expect((JSON.parse(js.stdout) as WhyReply).stage).toBe('timer');
  });
});
