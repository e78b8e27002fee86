/**
 * The trigger fault scenarios, at any size: the fast suite runs them small
 * (test/integration/triggers.test.ts), `npm run soak:triggers` at the acceptance size
 * (test/chaos/triggers.test.ts).
 *
 * - `runStartScenario`: a user stream of `messages` order messages, `repeats` of them repeating
 *   an earlier order id under a new Nats-Msg-Id; two engine processes, the trigger's holder
 *   SIGKILLed `kills` times while the messages arrive (a new engine started after each); a real
 *   worker records the side effect of each order's activity; then `rewind --to-seq 1` through
 *   the CLI.
 * - `runSignalScenario`: `keys` workflows, `perKey` ordered messages each, interleaved; the
 *   holder SIGKILLed, then the nats-server restarted, then a rewind after the inbox's dedup
 *   window (1 s here).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { EngineProcess, uniquePrefix } from '../harness/jetflow.js';
import type { NatsServer } from '../harness/nats-server.js';
import { runJetflow } from '../harness/cli.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import type { RewindReply, TriggerRow } from '../../src/engine/triggers.js';
import { topologyNames } from '../../src/nats/topology.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface ScenarioEnv {
  server: NatsServer;
  nc: NatsConnection;
  /** Cleanups, run by the caller after the test (last first). */
  closers: (() => Promise<unknown>)[];
  log?: (line: string) => void;
}

export async function userStream(nc: NatsConnection, name: string, subjects: string[]) {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name, subjects });
}

/** Publish as a producer does: retried with the same Nats-Msg-Id until the stream has it. */
export async function publish(nc: NatsConnection, subject: string, body: unknown, msgId: string) {
  const js = jetstream(nc);
  const h = headers();
  h.set('Nats-Msg-Id', msgId);
  for (let i = 0; ; i++) {
    try {
      return await js.publish(subject, JSON.stringify(body), { headers: h });
    } catch (err) {
      if (i > 50) throw err;
      await sleep(200);
    }
  }
}

export async function until<T>(
  what: string,
  f: () => Promise<T | undefined>,
  ms = 60_000,
): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > end)
      throw new Error(`timed out waiting for ${what} ${last instanceof Error ? last.message : ''}`);
    await sleep(200);
  }
}

/** The trigger's consumer has nothing left to deliver or to be acknowledged. */
export async function drained(
  nc: NatsConnection,
  stream: string,
  name: string,
): Promise<true | undefined> {
  const jsm = await jetstreamManager(nc);
  const ci = await jsm.consumers.info(stream, `jetflow-trigger-${name}`);
  return ci.num_pending === 0 && ci.num_ack_pending === 0 ? true : undefined;
}

export async function seen(c: Client, id: string): Promise<number[]> {
  const q = await c.query('tpay', id);
  return (q.context as { seen: number[] }).seen;
}

/** An engine process running the trigger fixture with `vars`. */
export async function engine(
  e: ScenarioEnv,
  prefix: string,
  vars: Record<string, string>,
): Promise<EngineProcess> {
  const p = new EngineProcess(e.server.url, prefix, {
    workflows: 'test/fixtures/trigger-workflows.ts',
    env: vars,
    ackWaitMs: 3_000,
    failoverMs: 2_000,
  });
  e.closers.push(() => p.stop());
  return p.start();
}

export async function holderOf(
  c: Client,
  name: string,
  procs: EngineProcess[],
): Promise<EngineProcess> {
  return until(`a holder of ${name}`, async () => {
    const r = await c.triggers<{ triggers: TriggerRow[] }>('list');
    const pid = r.triggers.find((t) => t.name === name)?.holderPid;
    return procs.find((p) => p.running && p.child?.pid === pid);
  });
}

/** `started` notifications per workflow id of a type (the events stream). */
export async function startedCounts(
  nc: NatsConnection,
  prefix: string,
  type: string,
): Promise<Map<string, number>> {
  const names = topologyNames(prefix);
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const filter = `${prefix}.events.${type}.>`;
  const consumer = await js.consumers.get(names.eventsStream, { filter_subjects: [filter] });
  const subjects = (await jsm.streams.info(names.eventsStream, { subjects_filter: filter })).state
    .subjects;
  const want = Object.values(subjects ?? {}).reduce((a, b) => a + b, 0);
  const out = new Map<string, number>();
  let got = 0;
  while (got < want) {
    const batch = await consumer.fetch({ max_messages: 1000, expires: 2_000 });
    for await (const m of batch) {
      got++;
      const n = m.json<{ type: string; id: string }>();
      if (n.type === 'started') out.set(n.id, (out.get(n.id) ?? 0) + 1);
    }
  }
  return out;
}

export interface StartOutcome {
  kills: number;
  distinct: number;
  /** Workflow ids with a `started` notification, and how many ids had more than one. */
  started: number;
  startedTwice: number;
  /** Orders whose activity ran, and how many ran more than once. */
  effects: number;
  effectsTwice: number;
  rewind: RewindReply;
  /** After the rewind. */
  startedAfter: number;
  startedTwiceAfter: number;
  /** Seconds from the first publish until every workflow had started. */
  seconds: number;
}

export async function runStartScenario(
  e: ScenarioEnv,
  o: { messages: number; repeats: number; kills: number },
): Promise<StartOutcome> {
  const prefix = uniquePrefix();
  const stream = `ORDERS_${prefix}`;
  const subj = `${prefix}-orders`;
  await userStream(e.nc, stream, [`${subj}.>`]);
  const vars = { JF_T_ORDERS_STREAM: stream, JF_T_ORDERS_SUBJECT: `${subj}.created.>` };
  const procs = [await engine(e, prefix, vars), await engine(e, prefix, vars)];
  const c = await Client.connect(e.server.url, { prefix });
  e.closers.push(() => c.close());
  const effects = new Map<string, number>();
  const worker = await createWorker({
    connection: e.nc,
    prefix,
    activities: {
      recordOrder: ({ orderId }: { orderId: string }) => {
        effects.set(orderId, (effects.get(orderId) ?? 0) + 1);
        return Promise.resolve({ ok: true });
      },
    },
    queues: ['torders'],
    concurrency: 256,
  });
  e.closers.push(() => worker.close());
  // Messages from the second half on: every (half/repeats)-th repeats an earlier order id.
  const half = Math.floor(o.messages / 2);
  const every = Math.max(1, Math.floor(half / o.repeats));
  const ids: string[] = [];
  let repeated = 0;
  const killAt = Array.from({ length: o.kills }, (_, k) =>
    Math.floor(((k + 1) * o.messages) / (o.kills + 1)),
  );
  let kills = 0;
  const t0 = Date.now();
  for (let i = 0; i < o.messages; i++) {
    const repeat = i >= half && (i - half) % every === 0 && repeated < o.repeats;
    const orderId = repeat ? `o${i - half}` : `o${i}`;
    if (repeat) repeated++;
    ids.push(orderId);
    await publish(e.nc, `${subj}.created.${orderId}`, { orderId }, `m${i}`);
    if (killAt.includes(i)) {
      const h = await holderOf(c, 'orders', procs);
      await h.kill();
      kills++;
      e.log?.(`killed the holder (pid ${h.child?.pid}) at message ${i}`);
      procs.push(await engine(e, prefix, vars));
    }
    if (i % 50 === 0) await sleep(10);
  }
  const distinct = new Set(ids);
  await until('drained', () => drained(e.nc, stream, 'orders'), 600_000);
  const started = await until(
    'every order started',
    async () => {
      const m = await startedCounts(e.nc, prefix, 'torder');
      return m.size >= distinct.size ? m : undefined;
    },
    600_000,
  );
  const seconds = (Date.now() - t0) / 1000;
  await until(
    'every side effect',
    () => Promise.resolve(effects.size >= distinct.size ? true : undefined),
    600_000,
  );
  const run = await runJetflow(
    [
      'triggers',
      'rewind',
      'orders',
      '--to-seq',
      '1',
      '--json',
      '--nats-url',
      e.server.url,
      '--prefix',
      prefix,
    ],
    { timeoutMs: 900_000 },
  );
  if (run.code !== 0) throw new Error(`rewind failed (${run.code}): ${run.stderr}`);
  const rewind = JSON.parse(run.stdout) as RewindReply;
  const after = await startedCounts(e.nc, prefix, 'torder');
  const twice = (m: Map<string, number>) => [...m.values()].filter((n) => n > 1).length;
  const unknown = [...started.keys()].filter((k) => !distinct.has(k)).length;
  if (unknown > 0) throw new Error(`${unknown} workflows that no message asked for`);
  return {
    kills,
    distinct: distinct.size,
    started: started.size,
    startedTwice: twice(started),
    effects: effects.size,
    effectsTwice: twice(effects),
    rewind,
    startedAfter: after.size,
    startedTwiceAfter: twice(after),
    seconds,
  };
}

export interface SignalOutcome {
  /** Workflows whose `seen` is not exactly 1..perKey after the run, and after the rewind. */
  wrong: string[];
  wrongAfter: string[];
  rewind: RewindReply;
  dedupWindowNs: number;
  seconds: number;
}

export async function runSignalScenario(
  e: ScenarioEnv,
  o: { keys: number; perKey: number },
): Promise<SignalOutcome> {
  const prefix = uniquePrefix();
  const stream = `PAY_${prefix}`;
  const subj = `${prefix}-pay`;
  await userStream(e.nc, stream, [`${subj}.>`]);
  const dir = mkdtempSync(join(tmpdir(), 'jf-trig-'));
  const config = join(dir, 'engine.json');
  // A short inbox dedup window: the rewind comes after it, so only the records' watermarks can
  // tell the repeats.
  writeFileSync(config, JSON.stringify({ duplicateWindowMs: 1_000 }));
  const vars = { JF_T_PAY_STREAM: stream, JF_T_PAY_SUBJECT: `${subj}.>`, JETFLOW_CONFIG: config };
  const procs = [await engine(e, prefix, vars), await engine(e, prefix, vars)];
  const c = await Client.connect(e.server.url, { prefix });
  e.closers.push(() => c.close());
  const keys = Array.from({ length: o.keys }, (_, i) => `p${i}`);
  for (const k of keys) await c.start('tpay', k, {});
  const total = o.keys * o.perKey;
  let sent = 0;
  const t0 = Date.now();
  for (let n = 1; n <= o.perKey; n++) {
    for (const k of keys) {
      await publish(e.nc, `${subj}.${k}`, { orderId: k, n }, `${k}-${n}`);
      sent++;
      if (sent === Math.floor(total * 0.3)) {
        const h = await holderOf(c, 'payments', procs);
        await h.kill();
        e.log?.(`killed the holder (pid ${h.child?.pid}) at message ${sent}`);
      }
      if (sent === Math.floor(total * 0.6)) {
        await e.server.restart();
        e.log?.(`restarted the nats-server at message ${sent}`);
      }
    }
    await sleep(30);
  }
  const want = Array.from({ length: o.perKey }, (_, i) => i + 1).join(',');
  await until('drained', () => drained(e.nc, stream, 'payments'), 600_000);
  const check = async () => {
    const wrong: string[] = [];
    for (const k of keys) if ((await seen(c, k)).join(',') !== want) wrong.push(k);
    return wrong;
  };
  const wrong = await until(
    'every workflow saw its messages',
    async () => {
      const w = await check();
      return w.length === 0 ? w : undefined;
    },
    120_000,
  ).catch(() => check());
  const seconds = (Date.now() - t0) / 1000;
  const jsm = await jetstreamManager(e.nc);
  const inbox = await jsm.streams.info(topologyNames(prefix).inboxStream);
  await sleep(1_500);
  const rewind = await c.triggers<RewindReply>(
    'rewind',
    { name: 'payments', toSeq: 1, waitMs: 600_000 },
    { timeoutMs: 660_000 },
  );
  return {
    wrong,
    wrongAfter: await check(),
    rewind,
    dedupWindowNs: inbox.config.duplicate_window,
    seconds,
  };
}
