/**
 * Result authenticity (issue 17): a result is applied only with the proof of the task the engine
 * issued. Forged results for running workflows (no token, a wrong one, another workflow's task's
 * token, a token of another task of the same workflow) and a replay of a genuine old result are
 * all dropped, journaled and counted; the workflows are unchanged and then complete normally.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { pack, unpack } from '../../src/contracts/codec.js';
import { quietLogger, TEST_SHARDS, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry } from '../../src/engine/registry.js';
import { Observability } from '../../src/host/observability.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { topologyNames } from '../../src/nats/topology.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import { taskToken } from '../../src/engine/proof.js';
import type { TaskMessage, WorkflowRecord } from '../../src/contracts/wire.js';
import { workflows } from '../fixtures/workflows.js';

const env = useServer();
const prefix = uniquePrefix();
const names = topologyNames(prefix);
const N = 6;
let obs: Observability;
let engine: Engine;
let client: Client;
let worker: Worker | undefined;

beforeAll(async () => {
  obs = await Observability.start({ name: 'e', metricsPort: 0, logger: quietLogger });
  engine = await Engine.create(
    { servers: env.server.url, prefix, shards: TEST_SHARDS, failoverMs: 2_000 },
    {
      registry: createRegistry(workflows),
      logger: quietLogger,
      metrics: obs.engineMetrics()!,
    },
  );
  client = new Client(env.nc, { prefix });
});
afterAll(async () => {
  await worker?.close();
  await engine?.close();
  await obs?.close();
});

async function scrape(): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${obs.server!.port}/metrics`);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function until(what: string, f: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function record(
  typeOrId: string,
  maybeId?: string,
): Promise<{ record: WorkflowRecord; revision: number }> {
  const [type, id] = maybeId === undefined ? ['chain', typeOrId] : [typeOrId, maybeId];
  const store = createKvRecordStore(await new Kvm(env.nc).open(names.bucket));
  return (await store.get(type, id))!;
}

/** The task message the engine queued for `id`'s current activity (as a worker would get it). */
async function currentTask(id: string): Promise<TaskMessage> {
  const { record: r } = await record(id);
  const ref = Object.values(r.tasks)[0]!;
  const jsm = await jetstreamManager(env.nc);
  const m = await jsm.streams.getMessage(names.tasksStream, {
    last_by_subj: names.subjects.task(ref.queue, ref.taskKey),
  });
  return unpack(m!.data) as TaskMessage;
}

const inboxEmpty = async () => {
  const jsm = await jetstreamManager(env.nc);
  return (await jsm.streams.info(names.inboxStream)).state.messages === 0;
};

describe('result authenticity', () => {
  it('forged and replayed results change nothing; the workflows then complete', async () => {
    const ids = Array.from({ length: N }, (_, i) => `c${i}`);
    for (const id of ids) await client.start('chain', id, { x: 0 });
    const tasks = new Map<string, TaskMessage>();
    for (const id of ids) tasks.set(id, await currentTask(id));
    for (const t of tasks.values()) expect(typeof t.token).toBe('string');
    const before = new Map<string, number>();
    for (const id of ids) before.set(id, (await record(id)).revision);

    const js = jetstream(env.nc);
    const forge = (t: TaskMessage, extra: Record<string, unknown>) =>
      js.publish(
        t.resultSubject,
        pack({
          taskId: t.taskId,
          actorId: t.actorId,
          ok: true,
          output: 1000,
          attempt: 1,
          ...extra,
        }),
      );
    for (const [i, id] of ids.entries()) {
      const t = tasks.get(id)!;
      const other = tasks.get(ids[(i + 1) % N]!)!;
      await forge(t, {}); // no token
      await forge(t, { token: 'A'.repeat(22) }); // a wrong one
      await forge(t, { token: other.token }); // another workflow's task's token
      // The token of another task id of this workflow (the next step's), on this task.
      const { record: r } = await record(id);
      const guessed = `chain.${id}.${r.step + 1}.${t.actorId}`;
      await forge(t, { token: taskToken('not-the-secret', guessed) });
      // A wrong attempt notice too.
      await js.publish(
        t.resultSubject,
        pack({
          taskId: t.taskId,
          actorId: t.actorId,
          progress: 'retrying',
          attempt: 2,
          retryAt: Date.now(),
          error: { type: 'E', code: 'internal', message: 'forged', retryable: true },
        }),
      );
    }
    await until('the inbox drained', inboxEmpty);
    for (const id of ids) expect((await record(id)).revision).toBe(before.get(id));
    const m = await scrape();
    expect(m.get('jetflow_steps_forged_total{workflow_type="chain"}')).toBe(5 * N);
    const h = await client.history('chain', 'c0');
    const forged = h.entries.filter((e) => e.kind === 'ignored' && /forged/.test(e.reason));
    expect(forged.length).toBe(5);

    // Now a worker; its first activity's results are genuine. Each `inc` of step b waits until
    // the old (genuine, step a) result was replayed for its workflow.
    let release!: () => void;
    const gate = new Promise<void>((ok) => (release = ok));
    worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        inc: async (input: unknown) => {
          const x = (input as { x: number }).x;
          if (x === 1) await gate;
          return x + 1;
        },
      },
    });
    for (const id of ids)
      await until(`${id} at step b`, async () => (await record(id)).record.step === 1);
    const atB = new Map<string, number>();
    for (const id of ids) atB.set(id, (await record(id)).revision);
    for (const id of ids) {
      const t = tasks.get(id)!; // step a's task: its token is genuine, the task is done
      await forge(t, { token: t.token });
    }
    await until('the inbox drained', inboxEmpty);
    for (const id of ids) expect((await record(id)).revision).toBe(atB.get(id));
    release();
    for (const id of ids)
      expect(await client.result('chain', id, { timeoutMs: 10_000 })).toEqual({ x: 3 });
    const after = await scrape();
    expect(after.get('jetflow_steps_forged_total{workflow_type="chain"}')).toBe(5 * N);
    expect(after.get('jetflow_steps_ignored_total{workflow_type="chain"}')).toBe(N);
  });

  it('a worker runs no task whose fields are out of bounds or whose result goes to another workflow', async () => {
    let ran = 0;
    const w = await createWorker({
      connection: env.nc,
      prefix,
      activities: { probe: () => ++ran },
    });
    try {
      await client.start('counter', 'victim');
      const victim = await record('counter', 'victim');
      const js = jetstream(env.nc);
      const task = (id: string, over: Record<string, unknown>) => {
        const taskId = `chain.${id}.0.call`;
        const taskKey = createHash('sha256').update(taskId).digest('base64url').slice(0, 27);
        return {
          v: 1,
          taskId,
          taskKey,
          workflowType: 'chain',
          workflowId: id,
          actorId: 'call',
          activity: 'probe',
          queue: 'probe',
          input: {},
          maxAttempts: 3,
          retry: {
            initialIntervalMs: 100,
            backoffCoefficient: 2,
            maxIntervalMs: 1000,
            jitter: 0,
            nonRetryableErrorTypes: [],
          },
          startToCloseMs: 5000,
          resultSubject: names.subjects.inbox('result', 'chain', id),
          scheduledAt: Date.now(),
          ...over,
        };
      };
      const bad = [
        task('f1', { maxAttempts: 1e9, retry: { ...task('f1', {}).retry, initialIntervalMs: -5 } }),
        task('f2', { maxAttempts: 1e9 + 0.5 }),
        task('f3', { retry: { ...task('f3', {}).retry, backoffCoefficient: -1 } }),
        task('f4', { resultSubject: names.subjects.inbox('result', 'counter', 'victim') }),
        task('f5', { resultSubject: names.subjects.signal('counter', 'victim') }),
        task('f6', { queue: 'inc' }),
        task('f7', { taskKey: 'x' }),
        task('f8', { startToCloseMs: Infinity }),
      ];
      for (const t of bad) await js.publish(names.subjects.task('probe', t.taskKey), pack(t));
      // A valid one after them: when it has run, the queue has been worked through.
      const good = task('ok1', {});
      await js.publish(names.subjects.task('probe', good.taskKey), pack(good));
      await until('the valid task ran', () => Promise.resolve(ran === 1));
      const jsm = await jetstreamManager(env.nc);
      await until(
        'the queue is empty',
        async () =>
          (await jsm.consumers.info(names.tasksStream, names.queueConsumer('probe'))).num_pending +
            (await jsm.consumers.info(names.tasksStream, names.queueConsumer('probe')))
              .num_ack_pending ===
          0,
      );
      expect(ran).toBe(1);
      expect((await record('counter', 'victim')).revision).toBe(victim.revision);
    } finally {
      await w.close();
    }
  });

  it('result() and watch() believe an end only as the record tells it', async () => {
    await client.start('counter', 'w1');
    const waiting = client.result('counter', 'w1', { timeoutMs: 10_000 });
    const forged = {
      type: 'completed',
      workflowType: 'counter',
      id: 'w1',
      version: 1,
      step: 5,
      at: new Date().toISOString(),
      output: 'forged',
    };
    await new Promise((r) => setTimeout(r, 200));
    env.nc.publish(names.subjects.events('counter', 'w1'), JSON.stringify(forged));
    env.nc.publish(names.subjects.events('counter', 'w1'), 'not json');
    await jetstream(env.nc).publish(
      names.subjects.events('counter', 'w1'),
      JSON.stringify({ ...forged, step: 0 }),
    );
    await client.cancel('counter', 'w1', 'test');
    await expect(waiting).rejects.toThrow(/canceled/);
  });
});
