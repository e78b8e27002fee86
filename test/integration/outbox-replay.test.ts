/**
 * Regression tests for the core review (issue 10, part A): a stale record never drops a message
 * (C1), re-performing an outbox never loses a timer (C2) and an old owner's twin never purges the
 * live schedule (M6), an outbox performed and marked is never performed again (H1), a failed
 * effect neither overlaps its retry nor is retried with the others (M7), an effect without a
 * handler is never marked done (L6), and the workflows bucket is read from the stream leader.
 */
import { describe, expect, it } from 'vitest';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { assign, setup } from 'xstate';
import {
  quietLogger,
  startEngine,
  TEST_SHARDS,
  uniquePrefix,
  useServer,
} from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { pack } from '../../src/contracts/codec.js';
import { ensureTopology, topologyNames, type TopologyNames } from '../../src/nats/topology.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import { createInboxReader } from '../../src/nats/inbox.js';
import { createEffectSink } from '../../src/nats/effects.js';
import { timerEffectHandlers } from '../../src/nats/timers.js';
import { createProcessor } from '../../src/engine/processor.js';
import { createRegistry, defineWorkflow } from '../../src/engine/registry.js';
import { parseShardInbox } from '../../src/contracts/subjects.js';
import type { InboxDelivery } from '../../src/engine/ports.js';
import { ENGINE_DEFAULTS } from '../../src/config.js';
import { workflows } from '../fixtures/workflows.js';
import { createWorker } from '../../src/worker/index.js';
import { EffectsError } from '../../src/errors.js';
import { WIRE_VERSION, type Notification, type WorkflowRecord } from '../../src/contracts/wire.js';

const env = useServer();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits 1 s the first time, 60 s after each PING (which re-sets the timer). */
const resetterWf = defineWorkflow({
  type: 'resetter',
  version: 1,
  machine: setup({
    types: { context: {} as { pings: number }, events: {} as { type: 'PING' } },
    delays: { wait: ({ context }) => (context.pings === 0 ? 1_000 : 60_000) },
  }).createMachine({
    id: 'resetter',
    context: { pings: 0 },
    initial: 'waiting',
    states: {
      waiting: {
        after: { wait: 'woke' },
        on: {
          PING: {
            target: 'waiting',
            reenter: true,
            actions: assign({ pings: ({ context }) => context.pings + 1 }),
          },
        },
      },
      woke: { type: 'final' },
    },
  }),
});

async function timerSchedules(prefix: string, type: string, id: string): Promise<number> {
  const jsm = await jetstreamManager(env.nc);
  const info = await jsm.streams.info(topologyNames(prefix).inboxStream, {
    subjects_filter: `${prefix}.timer.${type}.${id}.*`,
  });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

/** Processors sharing one namespace; deliveries whose ack deletes the message (work queue). */
async function processorRig(prefix: string, topo: { duplicateWindowMs?: number } = {}) {
  const jsm = await jetstreamManager(env.nc);
  const { names, kv } = await ensureTopology(env.nc, jsm, {
    ...ENGINE_DEFAULTS,
    ...topo,
    prefix,
    shards: TEST_SHARDS,
  });
  const js = jetstream(env.nc);
  const make = (
    opts: {
      jsm?: JetStreamManager;
      localHorizonMs?: number;
      /** While `on`, every timer publish of this processor fails (a timeout, say). */
      failTimers?: { on: boolean };
      /** More processor options (the journal, a journal reader). */
      extra?: Partial<Parameters<typeof createProcessor>[0]>;
    } = {},
  ) => {
    const t = timerEffectHandlers(js, opts.jsm ?? jsm, names, quietLogger, {
      localHorizonMs: opts.localHorizonMs,
    });
    const fail = opts.failTimers;
    const timer: typeof t.timer = (...args) =>
      fail?.on ? Promise.reject(new Error('timeout (test)')) : t.timer(...args);
    const p = createProcessor({
      registry: createRegistry([...workflows, resetterWf]),
      subjects: names.subjects,
      store: createKvRecordStore(kv),
      inbox: createInboxReader(jsm, names),
      effects: createEffectSink(env.nc, js, names, quietLogger, {
        timer,
        cancelTimer: t.cancelTimer,
      }),
      clock: { now: () => Date.now() },
      logger: quietLogger,
      cacheSize: 100,
      ...opts.extra,
    });
    return { p, timers: t };
  };
  const delivery = async (seq: number): Promise<InboxDelivery> => {
    const m = (await jsm.streams.getMessage(names.inboxStream, { seq }))!;
    const p = parseShardInbox(m.subject)!;
    return {
      seq,
      ...p,
      data: m.data,
      replyTo: undefined,
      replyEncoding: 'json' as const,
      ack: async () => {
        await jsm.streams.deleteMessage(names.inboxStream, seq, false);
      },
      working: () => undefined,
    };
  };
  return { jsm, js, names, kv, store: createKvRecordStore(kv), make, delivery };
}

/** Simulate the server firing the live schedule of `type/id` (store its body on the target). */
async function fireSchedule(
  rig: Awaited<ReturnType<typeof processorRig>>,
  names: TopologyNames,
  prefix: string,
  rec: WorkflowRecord,
): Promise<number> {
  const subj = `${prefix}.timer.${rec.type}.${rec.id}.*`;
  const sched = await rig.jsm.streams.getMessage(names.inboxStream, { last_by_subj: subj });
  expect(sched).toBeTruthy();
  const fired = await rig.js.publish(
    names.subjects.shardInbox(rec.shard, 'timer', rec.type, rec.id),
    sched!.data,
  );
  await rig.jsm.streams.purge(names.inboxStream, { filter: subj });
  return fired.seq;
}

describe('stale records never drop a message (C1)', () => {
  it('a fired timer reaching an engine with a stale cached record is applied, not ignored', async () => {
    const prefix = uniquePrefix();
    const rig = await processorRig(prefix);
    const a = rig.make().p; // held the shard, lost it, got it back (cache not invalidated)
    const b = rig.make().p; // held the shard in between
    const start = await rig.js.publish(
      `${prefix}.inbox.start.sleeper.s1`,
      pack({ input: { ms: 90_000 } }),
    );
    await a.handle(await rig.delivery(start.seq)); // A caches step 0
    const ping = await rig.js.publish(
      `${prefix}.inbox.signal.sleeper.s1`,
      pack({ event: { type: 'PING' } }),
    );
    await b.handle(await rig.delivery(ping.seq)); // B: step 1 re-sets the timer
    const rec1 = (await rig.store.get('sleeper', 's1'))!.record;
    expect(rec1.step).toBe(1);
    const fired = await fireSchedule(rig, rig.names, prefix, rec1);
    await a.handle(await rig.delivery(fired));
    expect(a.stats.ignored).toBe(0);
    expect(a.stats.staleRereads).toBe(1);
    const after = (await rig.store.get('sleeper', 's1'))!.record;
    expect(after.step).toBe(2);
    expect(after.status).toBe('completed');
    expect(after.timers).toEqual({});
    await a.close();
    await b.close();
  });

  it('processor.forgetShard drops the cached records of a gained shard', async () => {
    const prefix = uniquePrefix();
    const rig = await processorRig(prefix);
    const a = rig.make().p;
    const b = rig.make().p;
    const start = await rig.js.publish(
      `${prefix}.inbox.start.sleeper.s2`,
      pack({ input: { ms: 90_000 } }),
    );
    await a.handle(await rig.delivery(start.seq));
    const ping = await rig.js.publish(
      `${prefix}.inbox.signal.sleeper.s2`,
      pack({ event: { type: 'PING' } }),
    );
    await b.handle(await rig.delivery(ping.seq));
    const rec1 = (await rig.store.get('sleeper', 's2'))!.record;
    a.forgetShard(rec1.shard); // A gains the shard back
    const fired = await fireSchedule(rig, rig.names, prefix, rec1);
    await a.handle(await rig.delivery(fired));
    expect(a.stats.staleRereads).toBe(0); // read from the store, nothing stale to overturn
    expect(a.stats.ignored).toBe(0);
    expect((await rig.store.get('sleeper', 's2'))!.record.status).toBe('completed');
    await a.close();
    await b.close();
  });

  it('the workflows bucket is read from the stream leader (allow_direct off, also on an existing bucket)', async () => {
    const prefix = uniquePrefix();
    const names = topologyNames(prefix);
    await new Kvm(env.nc).create(names.bucket, { history: 1, allow_direct: true });
    const jsm = await jetstreamManager(env.nc);
    expect((await jsm.streams.info(`KV_${names.bucket}`)).config.allow_direct).toBe(true);
    await ensureTopology(env.nc, jsm, { ...ENGINE_DEFAULTS, prefix, shards: TEST_SHARDS });
    expect((await jsm.streams.info(`KV_${names.bucket}`)).config.allow_direct).toBe(false);
  });
});

describe('timers survive re-performance and old owners (C2, M6)', () => {
  it('re-performing an outbox that re-set a timer, inside the dedup window, keeps the live schedule', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('sleeper', 'r1', { ms: 90_000 }); // > 60 s: no local twin
      await client.signal('sleeper', 'r1', { type: 'PING' }); // step 1: cancel + set the timer
      expect(await timerSchedules(prefix, 'sleeper', 'r1')).toBe(1);
      // Perform step 1's outbox again, as a crash-recovery or a retry after a failure does.
      const names = topologyNames(prefix);
      const kv = await new Kvm(env.nc).open(names.bucket);
      const rec = (await createKvRecordStore(kv).get('sleeper', 'r1'))!.record;
      expect(rec.step).toBe(1);
      const js = jetstream(env.nc);
      const jsm = await jetstreamManager(env.nc);
      const t = timerEffectHandlers(js, jsm, names, quietLogger);
      const sink = createEffectSink(env.nc, js, names, quietLogger, {
        timer: t.timer,
        cancelTimer: t.cancelTimer,
      });
      await sink.perform(rec);
      await sink.perform(rec);
      expect(await timerSchedules(prefix, 'sleeper', 'r1')).toBe(1);
      t.stop();
    } finally {
      await engine.close();
    }
  });

  it('a cold load (cache evicted) neither re-performs nor loses a re-set timer', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { cacheSize: 1 });
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('sleeper', 'r2', { ms: 90_000 });
      await client.signal('sleeper', 'r2', { type: 'PING' });
      await client.start('counter', 'evict-2'); // LRU of 1: sleeper/r2 is evicted
      await expect(client.signal('sleeper', 'r2', { type: 'NOPE' })).rejects.toThrow(
        /cannot take event/,
      );
      expect((await client.query('sleeper', 'r2')).value).toBe('waiting');
      expect(await timerSchedules(prefix, 'sleeper', 'r2')).toBe(1);
    } finally {
      await engine.close();
    }
  });

  it("an old owner's local twin purges only its own setting, not the new owner's schedule", async () => {
    const prefix = uniquePrefix();
    const rig = await processorRig(prefix);
    // A's purges are observed (the calls still go to the real server).
    let twinPurged!: () => void;
    const purged = new Promise<void>((ok) => (twinPurged = ok));
    const streams = new Proxy(rig.jsm.streams, {
      get(target, prop, recv) {
        const v = Reflect.get(target, prop, recv) as unknown;
        if (prop !== 'purge' || typeof v !== 'function') {
          return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        }
        return async (...args: unknown[]) => {
          const out = await (v as (...a: unknown[]) => Promise<unknown>).apply(target, args);
          twinPurged();
          return out;
        };
      },
    });
    const jsmA = new Proxy(rig.jsm, {
      get: (target, prop, recv) =>
        prop === 'streams' ? streams : (Reflect.get(target, prop, recv) as unknown),
    });
    const a = rig.make({ jsm: jsmA }); // sets a 1 s timer with a local twin
    const b = rig.make({ localHorizonMs: 0 }); // the new owner: server schedules only
    const start = await rig.js.publish(`${prefix}.inbox.start.resetter.m1`, pack({}));
    await a.p.handle(await rig.delivery(start.seq));
    expect(a.timers.localPending).toBe(1);
    const ping = await rig.js.publish(
      `${prefix}.inbox.signal.resetter.m1`,
      pack({ event: { type: 'PING' } }),
    );
    await b.p.handle(await rig.delivery(ping.seq)); // step 1: the timer re-set (60 s)
    expect(await timerSchedules(prefix, 'resetter', 'm1')).toBe(1);
    await purged; // A's twin fired and purged
    expect(await timerSchedules(prefix, 'resetter', 'm1')).toBe(1);
    await a.p.close();
    await b.p.close();
    a.timers.stop();
  });
});

describe('effects retried after another engine moved the workflow on', () => {
  it('an engine retrying the failed effects of a step that another engine has since superseded does not re-publish the canceled timer', async () => {
    const prefix = uniquePrefix();
    const rig = await processorRig(prefix, { duplicateWindowMs: 1_000 });
    const failing = { on: false };
    const a = rig.make({ localHorizonMs: 0, failTimers: failing }); // the old owner
    const b = rig.make({ localHorizonMs: 0 }); // the new owner
    const start = await rig.js.publish(`${prefix}.inbox.start.resetter.e1`, pack({}));
    await a.p.handle(await rig.delivery(start.seq));
    const ping = (n: number) =>
      rig.js.publish(`${prefix}.inbox.signal.resetter.e1`, pack({ event: { type: 'PING' }, n }));
    // A applies PING 1 (step 1: cancel the first timer, set it again) but its timer publish
    // fails: A keeps retrying the step's effects in place.
    failing.on = true;
    const p1 = await ping(1);
    const stuck = a.p.handle(await rig.delivery(p1.seq));
    await sleep(300);
    // Meanwhile the shard moved: B loads the record, performs its outbox (the timer of step 1)
    // and applies PING 2 (step 2: cancels step 1's timer, sets it again).
    const p2 = await ping(2);
    await b.p.handle(await rig.delivery(p2.seq));
    expect((await rig.store.get('resetter', 'e1'))!.record.step).toBe(2);
    expect(await timerSchedules(prefix, 'resetter', 'e1')).toBe(1);
    // A's publish works again after the dedup window: its retry must not bring back the timer
    // of step 1, which B canceled (it would sit in the stream until due, then be ignored).
    await sleep(1_500);
    failing.on = false;
    await stuck;
    expect(await timerSchedules(prefix, 'resetter', 'e1')).toBe(1);
    await a.p.close();
    await b.p.close();
    a.timers.stop();
    b.timers.stop();
  });
});

describe('an outbox performed and marked is never performed again (H1)', () => {
  it('a finished activity is not queued again by a cold load after the dedup window', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, {
      cacheSize: 1,
      duplicateWindowMs: 1_000,
    });
    const calls: number[] = [];
    const w = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        addOne: async (input: { x: number }) => {
          calls.push(Date.now());
          if (calls.length === 1) await sleep(2_500); // longer than the dedup window
          return input.x + 1;
        },
      },
    });
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('foreign', 'd1', { x: 1 });
      while (calls.length === 0) await sleep(50);
      await client.start('counter', 'evict-1'); // LRU of 1: foreign/d1 is evicted
      const out = await client.result('foreign', 'd1', { timeoutMs: 20_000 });
      expect(out).toEqual({ output: 2, error: null });
      // A re-queued task would have been published by the cold load before the result applied.
      const jsm = await jetstreamManager(env.nc);
      const tasks = await jsm.streams.info(topologyNames(prefix).tasksStream);
      expect(tasks.state.last_seq).toBe(1);
      expect(calls.length).toBe(1);
      const seen: string[] = [];
      for await (const n of client.watch('foreign', 'd1')) seen.push(n.type);
      expect(seen.filter((t) => t === 'started')).toHaveLength(1);
      // Journal on (the default): the step's journal entry told the cold load, no mark was due
      // yet (the activity took 2.5 s, the mark waits 5 s) and none was needed after it.
      expect(engine.processor.stats.journaledOutboxes).toBeGreaterThan(0);
      expect(engine.processor.stats.outboxMarks).toBe(0);
    } finally {
      await w.close();
      await engine.close();
    }
  });

  it('journal off: the outbox is marked at once, and the cold load reads the mark', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, {
      cacheSize: 1,
      duplicateWindowMs: 1_000,
      journal: false,
    });
    const calls: number[] = [];
    const w = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        addOne: async (input: { x: number }) => {
          calls.push(Date.now());
          if (calls.length === 1) await sleep(2_500);
          return input.x + 1;
        },
      },
    });
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('foreign', 'd1', { x: 1 });
      while (calls.length === 0) await sleep(50);
      await client.start('counter', 'evict-1');
      expect(await client.result('foreign', 'd1', { timeoutMs: 20_000 })).toEqual({
        output: 2,
        error: null,
      });
      const jsm = await jetstreamManager(env.nc);
      expect((await jsm.streams.info(topologyNames(prefix).tasksStream)).state.last_seq).toBe(1);
      expect(calls.length).toBe(1);
      expect(engine.processor.stats.outboxMarks).toBeGreaterThan(0);
      expect(engine.processor.stats.journaledOutboxes).toBe(0);
    } finally {
      await w.close();
      await engine.close();
    }
  });

  it('journal on: a workflow that waits longer than lazyMarkMs gets its mark written', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { lazyMarkMs: 300 });
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const w = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        addOne: async (input: { x: number }) => {
          await gate;
          return input.x + 1;
        },
      },
    });
    const client = new Client(env.nc, { prefix });
    const store = createKvRecordStore(await new Kvm(env.nc).open(topologyNames(prefix).bucket));
    try {
      await client.start('foreign', 'm1', { x: 1 });
      const t0 = Date.now();
      let rec = (await store.get('foreign', 'm1'))!.record;
      while (rec.outboxDone !== rec.step && Date.now() - t0 < 10_000) {
        await sleep(50);
        rec = (await store.get('foreign', 'm1'))!.record;
      }
      expect(rec.outboxDone).toBe(rec.step);
      expect(engine.processor.stats.outboxMarks).toBe(1);
      release();
      expect(await client.result('foreign', 'm1', { timeoutMs: 20_000 })).toEqual({
        output: 2,
        error: null,
      });
    } finally {
      release();
      await w.close();
      await engine.close();
    }
  });

  it('a cold load trusts the journal only for this step of this incarnation of the id', async () => {
    const prefix = uniquePrefix();
    const rig = await processorRig(prefix, { duplicateWindowMs: 1_000 });
    const journal = { payloadMaxBytes: 4096 };
    const reader = (last?: { step: number; createdAt?: number }) => ({
      stepEntry: () => Promise.resolve(undefined),
      lastStep: () => Promise.resolve(last),
    });
    // P1 writes step 0 (a 90 s timer) of four workflows with the journal on: no mark yet, each
    // entry journaled. One workflow per cold load below (a closed processor writes its marks).
    const p1 = rig.make({ extra: { journal, journalReader: reader(undefined) } }).p;
    const ids = ['s1', 's2', 's3', 's4'];
    const created = new Map<string, number>();
    for (const id of ids) {
      const start = await rig.js.publish(
        `${prefix}.inbox.start.sleeper.${id}`,
        pack({ input: { ms: 90_000 } }),
      );
      await p1.handle(await rig.delivery(start.seq));
      const rec = (await rig.store.get('sleeper', id))!.record;
      expect(rec.step).toBe(0);
      expect(rec.outboxDone).toBeUndefined();
      created.set(id, rec.createdAt);
    }
    await sleep(1_100); // past the dedup window: a re-performed timer is stored again
    const inboxSeq = async () => (await rig.jsm.streams.info(rig.names.inboxStream)).state.last_seq;
    /** A repeat start on a fresh processor (cold load): did it perform the outbox again? */
    const coldLoad = async (id: string, extra: Partial<Parameters<typeof createProcessor>[0]>) => {
      const p = rig.make({ extra: { journal, ...extra } }).p;
      const again = await rig.js.publish(
        `${prefix}.inbox.start.sleeper.${id}`,
        pack({ input: { ms: 90_000 } }),
      );
      const before = await inboxSeq();
      await p.handle(await rig.delivery(again.seq));
      const grew = (await inboxSeq()) - before;
      await p.close();
      return { grew, journaled: p.stats.journaledOutboxes };
    };
    // The journal's entry of step 0, this incarnation: not performed again.
    expect(
      await coldLoad('s1', { journalReader: reader({ step: 0, createdAt: created.get('s1') }) }),
    ).toEqual({ grew: 0, journaled: 1 });
    // The real reader, from the history stream P1 wrote to.
    const { createJournalReader, createHistoryReader } = await import('../../src/nats/history.js');
    const real = createJournalReader(createHistoryReader(rig.jsm, rig.names), rig.jsm, rig.names);
    expect(await coldLoad('s2', { journalReader: real })).toEqual({ grew: 0, journaled: 1 });
    // An entry of an earlier incarnation of the id (another createdAt): performed again (the
    // timer is scheduled anew); so is an outbox the journal has no entry of.
    const other = await coldLoad('s3', {
      journalReader: reader({ step: 5, createdAt: created.get('s3')! - 1 }),
    });
    expect(other).toEqual({ grew: 1, journaled: 0 });
    expect(await coldLoad('s4', { journalReader: reader(undefined) })).toEqual({
      grew: 1,
      journaled: 0,
    });
    await p1.close();
  });
});

describe('failed effects (M7, L6)', () => {
  const notification = (step: number, prefix: string): Notification => ({
    type: 'transitioned',
    workflowType: 'counter',
    id: `${prefix}-m7`,
    version: 1,
    step,
    at: new Date(0).toISOString(),
    event: 'X',
    value: 'x',
  });

  it('perform settles every chain before it throws, names what failed, and retries only that', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const { names } = await ensureTopology(env.nc, jsm, {
      ...ENGINE_DEFAULTS,
      prefix,
      shards: TEST_SHARDS,
    });
    const js = jetstream(env.nc);
    let taskCalls = 0;
    let slowDone = false;
    const sink = createEffectSink(env.nc, js, names, quietLogger, {
      task: () => {
        taskCalls++;
        return taskCalls === 1 ? Promise.reject(new Error('boom')) : Promise.resolve();
      },
      cancelTimer: async () => {
        await sleep(300);
        slowDone = true;
      },
    });
    const rec: WorkflowRecord = {
      v: WIRE_VERSION,
      type: 'counter',
      id: `${prefix}-m7`,
      version: 1,
      status: 'running',
      snapshot: {},
      step: 3,
      lastSeq: 1,
      timers: {},
      tasks: {},
      shard: 0,
      createdAt: 0,
      updatedAt: 0,
      outbox: [
        { kind: 'notify', notification: notification(3, prefix) },
        { kind: 'task', task: { taskKey: 'k1' } as never },
        { kind: 'cancelTimer', timerId: 't', timerKey: 'tk' },
      ],
    };
    const err = await sink.perform(rec).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EffectsError);
    expect((err as EffectsError).failed).toEqual([1]);
    expect((err as EffectsError).terminal).toBeUndefined();
    expect(slowDone).toBe(true); // the slow chain finished before perform() returned
    await sink.perform(rec, (err as EffectsError).failed);
    expect(taskCalls).toBe(2);
  });

  it('the journal entry goes out last, only once every other effect of the step is performed', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const { names } = await ensureTopology(env.nc, jsm, {
      ...ENGINE_DEFAULTS,
      prefix,
      shards: TEST_SHARDS,
    });
    let fail = true;
    let taskDone = false;
    const sink = createEffectSink(env.nc, jetstream(env.nc), names, quietLogger, {
      task: async () => {
        await sleep(200);
        if (fail) throw new Error('boom');
        taskDone = true;
      },
    });
    const id = `${prefix}-jl`;
    const rec: WorkflowRecord = {
      v: WIRE_VERSION,
      type: 'counter',
      id,
      version: 1,
      status: 'running',
      snapshot: { status: 'active', value: 'a', context: {}, children: {} },
      step: 2,
      lastSeq: 1,
      timers: {},
      tasks: {},
      shard: 0,
      createdAt: 0,
      updatedAt: 0,
      outbox: [
        { kind: 'task', task: { taskKey: 'k1' } as never },
        { kind: 'journal', cause: 'signal', seq: 1, event: { type: 'X' } },
      ],
    };
    const entries = async () =>
      (
        await jsm.streams.info(names.historyStream, {
          subjects_filter: names.subjects.journal('counter', id),
        })
      ).state.messages;
    const err = await sink.perform(rec).catch((e: unknown) => e);
    expect((err as EffectsError).failed).toEqual([0, 1]);
    expect(await entries()).toBe(0);
    fail = false;
    await sink.perform(rec, (err as EffectsError).failed);
    expect(taskDone).toBe(true);
    expect(await entries()).toBe(1);
  });

  it('a journal entry that cannot be built is logged and left out; the step is not stuck', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const { names } = await ensureTopology(env.nc, jsm, {
      ...ENGINE_DEFAULTS,
      prefix,
      shards: TEST_SHARDS,
    });
    const errors: string[] = [];
    const logger = { ...quietLogger, error: (_o: unknown, m?: string) => errors.push(m ?? '') };
    const sink = createEffectSink(env.nc, jetstream(env.nc), names, logger);
    // A null task: building the entry throws (a jetflow bug, never the workflow's).
    const rec = {
      v: WIRE_VERSION,
      type: 'counter',
      id: `${prefix}-jb`,
      version: 1,
      status: 'running',
      snapshot: {},
      step: 1,
      lastSeq: 1,
      timers: {},
      tasks: { a: null },
      shard: 0,
      createdAt: 0,
      updatedAt: 0,
      outbox: [
        { kind: 'notify', notification: notification(1, prefix) },
        { kind: 'journal', cause: 'signal', seq: 1, event: { type: 'X' } },
      ],
    } as unknown as WorkflowRecord;
    await sink.perform(rec);
    expect(errors).toEqual(['journal entry not built: the step goes on without it']);
  });

  it('an effect kind without a handler is not done: it stays owed', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const { names } = await ensureTopology(env.nc, jsm, {
      ...ENGINE_DEFAULTS,
      prefix,
      shards: TEST_SHARDS,
    });
    const sink = createEffectSink(env.nc, jetstream(env.nc), names, quietLogger);
    const rec = {
      v: WIRE_VERSION,
      type: 'counter',
      id: `${prefix}-l6`,
      outbox: [{ kind: 'stopTask', actorId: 'a', taskId: 'x', queue: 'q', taskKey: 'k' }],
      step: 1,
    } as unknown as WorkflowRecord;
    const err = await sink.perform(rec).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(EffectsError);
    expect((err as EffectsError).failed).toEqual([0]);
  });
});
