/**
 * Triggers on a real nats-server, the points the fault tests do not cover:
 *
 * - `deliverFrom` `'new'`, `{ seq }` and `{ time }`: messages before the point are not applied,
 *   those after are, each once (also after the engine restarts: the consumer keeps its place).
 * - One slow key does not stall the others: a workflow paused by an operator holds 100 signals,
 *   then refuses more (retryable `paused`), so its key's lane waits; the other keys' messages
 *   keep completing meanwhile, and the slow key's messages are applied in stream order once it
 *   is resumed. With a serial consumer (a window of 1) the other keys would wait behind it.
 * - Poison at the acceptance size: 20 bad messages (a mapping that throws, an unknown event, a
 *   reserved event type, a body over `maxInputBytes`) parked with their errors; `park-key` parks
 *   their keys' later messages behind them (also ones published while parked); a replay with the
 *   head still bad changes nothing; `skip` is in the ledger; after it, `replay --all` applies
 *   the rest in stream order; every message is accounted for.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { jetstreamManager } from '@nats-io/jetstream';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { triggerWorkflows } from '../fixtures/trigger-workflows.js';
import type { RewindReply, TriggerLedgerEntry, TriggerRow } from '../../src/engine/triggers.js';
import {
  drained,
  publish,
  seen,
  sleep,
  startedCounts,
  until,
  userStream,
} from '../chaos/triggers-scenario.js';

const env = useServer();
const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
});

const outcomes = (c: Client, name: string, seq: number) =>
  c
    .triggers<{ entries: TriggerLedgerEntry[] }>('trace', { name, seq })
    .then((r) => r.entries.map((e) => e.outcome));

describe('triggers: deliverFrom', () => {
  /**
   * Orders o1..o4 are in the stream before the engine first runs (o1, o2 before `at`); the
   * trigger starts where `from` says; o5 comes after, and once more after an engine restart.
   */
  async function scenario(
    from: (seqs: number[], at: Date) => string,
    want: string[],
    after?: (c: Client, at: Date) => Promise<void>,
  ) {
    const prefix = uniquePrefix();
    const stream = `ORD_${prefix}`;
    const subj = `${prefix}-ord`;
    await userStream(env.nc, stream, [`${subj}.>`]);
    const seqs: number[] = [];
    for (const n of [1, 2])
      seqs.push((await publish(env.nc, `${subj}.o${n}`, { orderId: `o${n}` }, `o${n}`)).seq);
    await sleep(50);
    const at = new Date();
    await sleep(50);
    for (const n of [3, 4])
      seqs.push((await publish(env.nc, `${subj}.o${n}`, { orderId: `o${n}` }, `o${n}`)).seq);
    const vars = {
      JF_T_ORDERS_STREAM: stream,
      JF_T_ORDERS_SUBJECT: `${subj}.>`,
      JF_T_ORDERS_FROM: from(seqs, at),
    };
    const c = await Client.connect(env.server.url, { prefix });
    closers.push(() => c.close());
    let engine = await startEngine(env.server.url, prefix, { workflows: triggerWorkflows(vars) });
    closers.push(() => engine.close());
    const jsm = await jetstreamManager(env.nc);
    // 'new' starts after the last message at the consumer's creation: publish only after it.
    await until('the consumer', () =>
      jsm.consumers.info(stream, 'jetflow-trigger-orders').then(() => true),
    );
    seqs.push((await publish(env.nc, `${subj}.o5`, { orderId: 'o5' }, 'o5')).seq);
    const startedIds = async (n: number) => {
      await until('drained', () => drained(env.nc, stream, 'orders'));
      return until(`${n} started`, async () => {
        const m = await startedCounts(env.nc, prefix, 'torder');
        return m.size >= n ? m : undefined;
      });
    };
    const first = await startedIds(want.length + 1);
    expect([...first.keys()].sort()).toEqual([...want, 'o5']);
    // The engine restarts: the consumer keeps its place (deliverFrom applies to a new one only).
    await engine.close();
    engine = await startEngine(env.server.url, prefix, { workflows: triggerWorkflows(vars) });
    seqs.push((await publish(env.nc, `${subj}.o6`, { orderId: 'o6' }, 'o6')).seq);
    const all = await startedIds(want.length + 2);
    expect([...all.keys()].sort()).toEqual([...want, 'o5', 'o6']);
    expect([...all.values()].every((n) => n === 1)).toBe(true);
    // The ledger: nothing for the messages before the point, one `started` for each after.
    for (const [i, seq] of seqs.entries()) {
      const id = `o${i + 1}`;
      expect(await outcomes(c, 'orders', seq), id).toEqual(
        want.includes(id) || id === 'o5' || id === 'o6' ? ['started'] : [],
      );
    }
    await after?.(c, at);
  }

  it("'new': only messages published after the consumer exists", () => scenario(() => 'new', []));
  it('{ seq }: from that stream sequence on', () =>
    scenario((seqs) => `seq:${seqs[1]}`, ['o2', 'o3', 'o4']));
  it('{ time }: messages stored at or after that time; a rewind --since that time re-reads them, 0 new', () =>
    scenario(
      (_, at) => `time:${at.toISOString()}`,
      ['o3', 'o4'],
      async (c, at) => {
        // Through the CLI's own path: `--since <duration>` is sent as epoch ms.
        const r = await c.triggers<RewindReply>('rewind', { name: 'orders', since: at.getTime() });
        expect(r).toMatchObject({ reread: 4, new: 0, duplicates: 4, done: true });
      },
    ));
});

describe('triggers: one slow key', () => {
  it(
    'a key whose workflow refuses (paused, holding 100) waits in its lane while 20 other keys complete; resumed, it gets its messages in stream order',
    { timeout: 90_000 },
    async () => {
      const prefix = uniquePrefix();
      const stream = `PAY_${prefix}`;
      const subj = `${prefix}-pay`;
      await userStream(env.nc, stream, [`${subj}.>`]);
      const wf = triggerWorkflows({ JF_T_PAY_STREAM: stream, JF_T_PAY_SUBJECT: `${subj}.>` });
      const engine = await startEngine(env.server.url, prefix, { workflows: wf });
      closers.push(() => engine.close());
      const c = await Client.connect(env.server.url, { prefix });
      closers.push(() => c.close());
      const fast = Array.from({ length: 20 }, (_, i) => `f${i}`);
      for (const k of ['slow', ...fast]) await c.start('tpay', k, {});
      await c.pause('tpay', 'slow', { reason: 'slow key test', by: 'test' });
      // 100 signals are held by the paused workflow; the 101st is refused (retryable) and its
      // lane retries it with a backoff, so 101..103 stay unacknowledged, in order.
      const slowSeqs: number[] = [];
      for (let n = 1; n <= 101; n++)
        slowSeqs.push(
          (await publish(env.nc, `${subj}.slow`, { orderId: 'slow', n }, `slow-${n}`)).seq,
        );
      await until('the slow key refused', async () => {
        const r = await c.triggers<{ triggers: TriggerRow[] }>('list');
        const row = r.triggers.find((t) => t.name === 'payments');
        return row?.lastError?.code === 'paused' && row.lastError.seq === slowSeqs[100]
          ? true
          : undefined;
      });
      for (let n = 1; n <= 3; n++) {
        for (const k of fast) await publish(env.nc, `${subj}.${k}`, { orderId: k, n }, `${k}-${n}`);
        slowSeqs.push(
          (await publish(env.nc, `${subj}.slow`, { orderId: 'slow', n: 101 + n }, `slow-x${n}`))
            .seq,
        );
      }
      for (const k of fast)
        expect(
          await until(
            `${k} applied`,
            async () => {
              const s = await seen(c, k);
              return s.length >= 3 ? s : undefined;
            },
            30_000,
          ),
        ).toEqual([1, 2, 3]);
      // Still stuck: the slow key's refused message and the three behind it are not acknowledged
      // and not decided (no ledger entry).
      const jsm = await jetstreamManager(env.nc);
      const ci = await jsm.consumers.info(stream, 'jetflow-trigger-payments');
      expect(ci.num_ack_pending).toBe(4);
      for (const seq of slowSeqs.slice(100)) expect(await outcomes(c, 'payments', seq)).toEqual([]);
      expect(await seen(c, 'slow')).toEqual([]);
      await c.resume('tpay', 'slow', { reason: 'slow key test', by: 'test' });
      const all = await until('the slow key applied', async () => {
        const s = await seen(c, 'slow');
        return s.length >= 104 ? s : undefined;
      });
      expect(all).toEqual(Array.from({ length: 104 }, (_, i) => i + 1));
      await until('drained', () => drained(env.nc, stream, 'payments'));
      expect(await outcomes(c, 'payments', slowSeqs[100]!)).toEqual(['signaled']);
    },
  );
});

describe('triggers: poison at size', () => {
  it(
    '20 bad messages (4 kinds) parked with their errors; park-key holds 80 later ones in order; skip journaled; replay --all applies them in order; nothing lost',
    { timeout: 90_000 },
    async () => {
      const prefix = uniquePrefix();
      const stream = `PAY_${prefix}`;
      const subj = `${prefix}-pay`;
      await userStream(env.nc, stream, [`${subj}.>`]);
      const wf = triggerWorkflows({ JF_T_PAY_STREAM: stream, JF_T_PAY_SUBJECT: `${subj}.>` });
      const engine = await startEngine(env.server.url, prefix, {
        workflows: wf,
        maxInputBytes: 4_096,
      });
      closers.push(() => engine.close());
      const c = await Client.connect(env.server.url, { prefix });
      closers.push(() => c.close());
      const bad = Array.from({ length: 20 }, (_, i) => `b${i}`);
      // Four kinds of poison, five keys each: the mapping throws, an event the machine does not
      // know, a reserved event type, a body over maxInputBytes.
      const kinds = [
        { body: { bad: true }, code: 'mapping_failed', message: 'event: bad payment 2' },
        {
          body: { type: 'REFUND' },
          code: 'unknown_event',
          message: 'workflow tpay has no transition on REFUND',
        },
        {
          body: { type: 'xstate.stop' },
          code: 'bad_event',
          message: 'event type xstate.stop is reserved for the engine',
        },
        {
          body: { pad: 'x'.repeat(5_000) },
          code: 'payload_too_large',
          message: 'larger than 4096',
        },
      ];
      const kindOf = (k: string) => kinds[Number(k.slice(1)) % 4]!;
      const good = Array.from({ length: 5 }, (_, i) => `g${i}`);
      for (const k of [...bad, ...good]) await c.start('tpay', k, {});
      const seqOf = new Map<string, number>();
      const send = async (k: string, n: number) =>
        seqOf.set(
          `${k}-${n}`,
          (
            await publish(
              env.nc,
              `${subj}.${k}`,
              { orderId: k, n, ...(bad.includes(k) && n === 2 ? kindOf(k).body : {}) },
              `${k}-${n}`,
            )
          ).seq,
        );
      // Interleaved: for n = 1..5, every key; n = 2 of each b-key is bad.
      for (let n = 1; n <= 5; n++) for (const k of [...bad, ...good]) await send(k, n);
      await until('drained', () => drained(env.nc, stream, 'payments'));
      type Parked = { seq: number; key?: string; error: { code: string; message: string } };
      const parked = async () =>
        (await c.triggers<{ parked: Parked[] }>('parked', { name: 'payments' })).parked;
      let p = await parked();
      expect(p.length).toBe(80);
      const bySeq = new Map(p.map((x) => [x.seq, x]));
      for (const k of bad) {
        const head = seqOf.get(`${k}-2`)!;
        expect(bySeq.get(head)).toMatchObject({ key: k, error: { code: kindOf(k).code } });
        expect(bySeq.get(head)!.error.message).toContain(kindOf(k).message);
        for (const n of [3, 4, 5])
          expect(bySeq.get(seqOf.get(`${k}-${n}`)!)).toMatchObject({
            key: k,
            error: { code: 'parked_key', message: `behind parked message ${head} of key ${k}` },
          });
        expect(await seen(c, k)).toEqual([1]);
      }
      for (const k of good) expect(await seen(c, k)).toEqual([1, 2, 3, 4, 5]);
      // A key's message published while it is parked waits behind its head too.
      for (const k of bad) await send(k, 6);
      await until('drained', () => drained(env.nc, stream, 'payments'));
      expect((await parked()).length).toBe(100);
      // Replay with the heads still bad: nothing moves, nothing is applied.
      const r0 = await c.triggers<{ replayed: { outcome: string }[]; remaining: number }>(
        'replay',
        { name: 'payments', all: true },
      );
      expect(r0.remaining).toBe(100);
      expect(r0.replayed.every((x) => x.outcome === 'parked')).toBe(true);
      for (const k of bad) expect(await seen(c, k)).toEqual([1]);
      // The operator skips every bad head (journaled), then replays everything.
      for (const k of bad)
        await c.triggers('skip', {
          name: 'payments',
          seq: seqOf.get(`${k}-2`),
          reason: `bad payment of ${k}`,
          by: 'ops',
        });
      const r1 = await c.triggers<{ replayed: { outcome: string }[]; remaining: number }>(
        'replay',
        { name: 'payments', all: true },
        { timeoutMs: 60_000 },
      );
      expect(r1.remaining).toBe(0);
      expect(r1.replayed.length).toBe(80);
      expect(r1.replayed.every((x) => x.outcome === 'signaled')).toBe(true);
      p = await parked();
      expect(p).toEqual([]);
      for (const k of bad) expect(await seen(c, k)).toEqual([1, 3, 4, 5, 6]);
      // Nothing lost: every message of the stream ends applied once or skipped by the operator.
      let applied = 0;
      for (const k of [...bad, ...good]) applied += (await seen(c, k)).length;
      expect(applied + bad.length).toBe(seqOf.size);
      for (const [name, seq] of seqOf) {
        const o = await outcomes(c, 'payments', seq);
        const [k, n] = name.split('-');
        if (bad.includes(k!) && n === '2') {
          expect(o).toEqual(['parked', 'skipped']);
          const e = (
            await c.triggers<{ entries: TriggerLedgerEntry[] }>('trace', {
              name: 'payments',
              seq,
            })
          ).entries[1]!;
          expect({ by: e.by, reason: e.reason }).toEqual({
            by: 'ops',
            reason: `bad payment of ${k}`,
          });
        } else if (bad.includes(k!) && n !== '1') expect(o, name).toEqual(['parked', 'signaled']);
        else expect(o, name).toEqual(['signaled']);
      }
    },
  );
});
