/**
 * Messages on the internal subjects are checked, not trusted: reserved events, fired timers,
 * reply subjects, workflow names, shards, stray timer-subject publishes (core review H7 and the
 * fault-probe findings).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headers, type Msg } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { pack } from '../../src/contracts/codec.js';
import { shardOf } from '../../src/contracts/subjects.js';
import { startEngine, TEST_SHARDS, uniquePrefix, useServer } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';
import { Client } from '../../src/client/index.js';
import { topologyNames } from '../../src/nats/topology.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import { timerToken } from '../../src/engine/proof.js';
import type { ErrorReply, Notification } from '../../src/contracts/wire.js';

const env = useServer();
const prefix = uniquePrefix();
const names = topologyNames(prefix);
let engine: Engine;
let client: Client;

beforeAll(async () => {
  // Sweeps for stray timer-subject publishes every 200 ms (default 60 s).
  engine = await startEngine(env.server.url, prefix, { timerStraySweepMs: 200 });
  client = new Client(env.nc, { prefix });
});
afterAll(async () => {
  await engine?.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function inboxMessages(filter?: string): Promise<number> {
  const jsm = await jetstreamManager(env.nc);
  if (!filter) return (await jsm.streams.info(names.inboxStream)).state.messages;
  const info = await jsm.streams.info(names.inboxStream, { subjects_filter: filter });
  return Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
}

/** Resolves when `cond()` holds; fails after `ms` (awaits an asynchronous outcome, no retry). */
async function until(what: string, cond: () => Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await sleep(50);
  }
}

function nextRejection(
  type: string,
  id: string,
): Promise<Extract<Notification, { type: 'rejected' }>> {
  return new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error('no rejected notification')), 5_000);
    const sub = env.nc.subscribe(`${prefix}.events.${type}.${id}`, {
      callback: (_e, m) => {
        const n = m.json<Notification>();
        if (n.type === 'rejected') {
          clearTimeout(t);
          sub.unsubscribe();
          ok(n);
        }
      },
    });
  });
}

async function record(type: string, id: string) {
  const store = createKvRecordStore(await new Kvm(env.nc).open(names.bucket));
  return (await store.get(type, id))!.record;
}

describe('internal subjects are checked', () => {
  it('H7: a forged xstate.done event written straight into the inbox is rejected (E7)', async () => {
    await client.start('cancellable', 'f1'); // waits for activity `call`; no worker runs
    const rej = nextRejection('cancellable', 'f1');
    await jetstream(env.nc).publish(
      `${prefix}.inbox.signal.cancellable.f1`,
      pack({ event: { type: 'xstate.done.actor.call', output: 'forged' } }),
    );
    const n = await rej;
    expect(n.error.code).toBe('bad_request');
    expect(n.error.message).toMatch(/reserved/);
    const q = await client.query('cancellable', 'f1');
    expect(q.status).toBe('running');
    expect(q.step).toBe(0);
  });

  it('H7: a fired timer applies the event the record stored, not the one in the message; a timer without its proof is dropped', async () => {
    await client.start('sleeper', 't1', { ms: 600_000 });
    const rec = await record('sleeper', 't1');
    const [timerId, step] = Object.entries(rec.timers)[0]!;
    const js = jetstream(env.nc);
    const subject = `${prefix}.in.${rec.shard}.timer.sleeper.t1`;
    // Right timer id and step, no proof (issue 17): dropped, the workflow still sleeps.
    await js.publish(subject, pack({ timerId, step, event: { type: 'LEAVE' } }));
    await js.publish(
      subject,
      pack({ timerId, step, event: { type: 'LEAVE' }, token: 'x'.repeat(22) }),
    );
    await until('two timer messages consumed', async () => (await inboxMessages(subject)) === 0);
    await sleep(200);
    expect((await record('sleeper', 't1')).step).toBe(0);
    // With the proof (read from the record, as only an engine can): the stored event, not LEAVE.
    const token = timerToken(rec.secret!, timerId, step);
    await js.publish(subject, pack({ timerId, step, event: { type: 'LEAVE' }, token }));
    await client.result('sleeper', 't1', { timeoutMs: 5_000 });
    const q = await client.query('sleeper', 't1');
    expect(q.value).toBe('woke');
  });

  it('H7: Jf-Reply-To is only used when it is a request inbox; the gateway refuses other reply subjects', async () => {
    await client.start('counter', 'r1');
    const js = jetstream(env.nc);
    const seen: string[] = [];
    const sub = env.nc.subscribe('victim.>', {
      callback: (_e, m: Msg) => {
        seen.push(m.subject);
      },
    });
    const h = headers();
    h.set('Jf-Reply-To', 'victim.orders');
    await js.publish(`${prefix}.inbox.signal.counter.r1`, pack({ event: { type: 'SIG', n: 7 } }), {
      headers: h,
    });
    await until('signal applied', async () => (await client.query('counter', 'r1')).step === 1);
    // A core request whose reply subject is not an inbox: refused, and nothing is applied.
    const reply = new Promise<ErrorReply>((ok) => {
      const s2 = env.nc.subscribe('victim2.reply', {
        max: 1,
        callback: (_e, m) => ok(m.json<ErrorReply>()),
      });
      void s2;
    });
    env.nc.publish(`${prefix}.signal.counter.r1`, '{"type":"SIG","n":8}', {
      reply: 'victim2.reply',
    });
    expect((await reply).error.code).toBe('bad_request');
    await env.nc.flush();
    sub.unsubscribe();
    expect(seen).toEqual([]);
    const q = await client.query('counter', 'r1');
    expect(q.context).toMatchObject({ seq: [7] });
  });

  it('a message whose workflow type or id is not a token is terminated at once, not retried forever', async () => {
    const js = jetstream(env.nc);
    for (const id of ['ü', 'a%b', 'x+y']) {
      await js.publish(`${prefix}.inbox.signal.counter.${id}`, pack({ event: { type: 'SIG' } }));
    }
    await until('inbox empty', async () => (await inboxMessages(`${prefix}.in.>`)) === 0);
    // Not stuck behind them: every shard still applies signals.
    for (let i = 0; i < 8; i++) await client.start('counter', `tok${i}`);
    expect(engine.processor.stats.transientErrors).toBe(0);
  });

  it("a message on a shard other than the workflow's is rejected and does not count in exactly-once", async () => {
    await client.start('counter', 's1');
    const own = shardOf('counter', 's1', TEST_SHARDS);
    expect((await record('counter', 's1')).shard).toBe(own); // the mapping, as the server computes it
    const other = (own + 1) % TEST_SHARDS;
    const rej = nextRejection('counter', 's1');
    await jetstream(env.nc).publish(
      `${prefix}.in.${other}.signal.counter.s1`,
      pack({ event: { type: 'SIG', n: 666 } }),
    );
    expect((await rej).error.message).toMatch(/arrived on shard/);
    const ok = await client.signal('counter', 's1', { type: 'SIG', n: 1 });
    expect(ok.duplicate).toBeUndefined();
    expect(ok.step).toBe(1);
    expect((await client.query('counter', 's1')).context).toMatchObject({ seq: [1] });
    // A start forged onto the wrong shard creates nothing.
    const rej2 = nextRejection('counter', 's2');
    const wrong = (shardOf('counter', 's2', TEST_SHARDS) + 1) % TEST_SHARDS;
    await jetstream(env.nc).publish(`${prefix}.in.${wrong}.start.counter.s2`, pack({ input: {} }));
    expect((await rej2).error.message).toMatch(/arrived on shard/);
    await expect(client.query('counter', 's2')).rejects.toThrow(/does not exist/);
  });

  it("shardOf agrees with the server's partition() mapping", async () => {
    const p = uniquePrefix(); // no stream captures it: core NATS only
    for (let i = 0; i < 40; i++) {
      const id = `m${i}x${i * 7}`;
      const got = new Promise<number>((ok) => {
        env.nc.subscribe(`${p}.in.*.start.probe.${id}`, {
          max: 1,
          callback: (_e, m) => ok(Number(m.subject.split('.')[2])),
        });
      });
      await env.nc.flush();
      env.nc.publish(`${p}.inbox.start.probe.${id}`, pack({}));
      expect(await got).toBe(shardOf('probe', id, TEST_SHARDS));
    }
  });

  it('a query with a type or id that is not a token is a bad_request, not unavailable', async () => {
    const r = await env.nc.request(`${prefix}.query.counter.a%b`, '', { timeout: 5_000 });
    expect(r.json<ErrorReply>().error.code).toBe('bad_request');
  });

  it('a plain publish on a timer subject is removed; timer schedules are left alone', async () => {
    await client.start('sleeper', 'keep', { ms: 600_000 });
    expect(await inboxMessages(`${prefix}.timer.sleeper.keep.*`)).toBe(1);
    await jetstream(env.nc).publish(`${prefix}.timer.x.y.z`, pack({ junk: true }));
    await until('stray removed', async () => (await inboxMessages(`${prefix}.timer.x.>`)) === 0);
    expect(await inboxMessages(`${prefix}.timer.sleeper.keep.*`)).toBe(1);
    const q = await client.query('sleeper', 'keep');
    expect(q.status).toBe('running');
    // No consumer holds the pending timers (the server's cost per message grew with them).
    const jsm = await jetstreamManager(env.nc);
    const consumers: string[] = [];
    for await (const c of jsm.consumers.list(topologyNames(prefix).inboxStream))
      consumers.push(c.name);
    expect(consumers.filter((c) => !c.startsWith('shard-'))).toEqual([]);
  });
});
