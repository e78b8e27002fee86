/**
 * Folding (issue 18): queued messages of one workflow applied in one record write. A batch of N
 * signals is N steps (N journal entries with consecutive step numbers, N replies) stored by one
 * compare-and-set; a crash between that write and its outbox still performs every effect once;
 * a message that cannot fold ends the batch and is applied alone; deliveries of different
 * delivery runs never fold.
 */
import { describe, expect, it } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { quietLogger, TEST_SHARDS, uniquePrefix, useServer } from '../harness/jetflow.js';
import { pack, unpack } from '../../src/contracts/codec.js';
import { ensureTopology } from '../../src/nats/topology.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import { createInboxReader } from '../../src/nats/inbox.js';
import { createEffectSink } from '../../src/nats/effects.js';
import { createProcessor } from '../../src/engine/processor.js';
import { createRegistry } from '../../src/engine/registry.js';
import { parseShardInbox } from '../../src/contracts/subjects.js';
import type { EffectSink, InboxDelivery, RecordStore } from '../../src/engine/ports.js';
import { ENGINE_DEFAULTS } from '../../src/config.js';
import { workflows } from '../fixtures/workflows.js';
import { verifyJournal } from '../../src/engine/verify.js';
import { readEntry } from '../../src/engine/journal.js';
import type { JournalEntry } from '../../src/contracts/wire.js';

const env = useServer();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function rig(prefix: string) {
  const jsm = await jetstreamManager(env.nc);
  const { names, kv } = await ensureTopology(env.nc, jsm, {
    ...ENGINE_DEFAULTS,
    prefix,
    shards: TEST_SHARDS,
  });
  const js = jetstream(env.nc);
  const store = createKvRecordStore(kv);
  const counts = { writes: 0 };
  /** The real store, counting record writes. */
  const counted: RecordStore = {
    ...store,
    create: (r) => (counts.writes++, store.create(r)),
    update: (r, rev) => (counts.writes++, store.update(r, rev)),
  };
  const make = (wrap: (sink: EffectSink) => EffectSink = (s) => s, foldSnapshotMaxBytes?: number) =>
    createProcessor({
      ...(foldSnapshotMaxBytes !== undefined ? { foldSnapshotMaxBytes } : {}),
      registry: createRegistry(workflows),
      subjects: names.subjects,
      store: counted,
      inbox: createInboxReader(jsm, names),
      effects: wrap(createEffectSink(env.nc, js, names, quietLogger, {}, 'fold-test')),
      clock: { now: () => Date.now() },
      logger: quietLogger,
      cacheSize: 100,
      journal: { payloadMaxBytes: 4096 },
      engineName: 'fold-test',
    });
  /** The stored message `seq` as a delivery of run `run` (absent: a redelivery). */
  const delivery = async (seq: number, run?: string, replyTo?: string): Promise<InboxDelivery> => {
    const m = (await jsm.streams.getMessage(names.inboxStream, { seq }))!;
    const p = parseShardInbox(m.subject)!;
    return {
      seq,
      ...p,
      data: m.data,
      replyTo,
      replyEncoding: 'json' as const,
      ...(run !== undefined ? { run } : {}),
      ack: async () => {
        await jsm.streams.deleteMessage(names.inboxStream, seq, false);
      },
      working: () => undefined,
    };
  };
  const publish = async (kind: string, id: string, body: unknown) =>
    (await js.publish(`${prefix}.inbox.${kind}.counter.${id}`, pack(body))).seq;
  /** The workflow's journal entries of steps, in stream order. */
  const journal = async (id: string) => {
    type Entry = {
      kind: string;
      step: number;
      seq: number;
      event: { type: string; payload?: unknown };
      to?: { value: unknown };
      snapshotOmitted?: { bytes: number; folded?: true };
    };
    const out: (Entry & { snapshot: unknown })[] = [];
    let seq = 1;
    for (;;) {
      const m = await jsm.streams.getMessage(names.historyStream, {
        seq,
        next_by_subj: names.subjects.journal('counter', id),
      } as unknown as { seq: number });
      if (!m) return out;
      const e = unpack(m.data) as (typeof out)[number];
      if (e.kind === 'step') out.push(e);
      seq = m.seq + 1;
    }
  };
  return { names, store, counts, make, delivery, publish, journal };
}

/** Replies published on `_INBOX.<tag>.<n>`, by `n`. */
function replies(tag: string) {
  const got = new Map<number, unknown>();
  const sub = env.nc.subscribe(`_INBOX.${tag}.*`, {
    callback: (_e, m) => {
      got.set(Number(m.subject.split('.').pop()), m.json());
    },
  });
  return { got, sub };
}

const contextSeq = (snapshot: unknown) => (snapshot as { context: { seq: number[] } }).context.seq;

describe('folding queued messages of one workflow (issue 18)', () => {
  it('N signals of one delivery run: one record write, N journal entries with consecutive steps, N replies', async () => {
    const prefix = uniquePrefix();
    const r = await rig(prefix);
    const p = r.make();
    await p.handle(await r.delivery(await r.publish('start', 'f1', { input: {} })));
    const N = 12;
    const seqs: number[] = [];
    for (let i = 1; i <= N; i++)
      seqs.push(await r.publish('signal', 'f1', { event: { type: 'SIG', n: i } }));
    const ds = await Promise.all(seqs.map((s, i) => r.delivery(s, 'run-1', `_INBOX.f1.${i + 1}`)));
    const { got, sub } = replies('f1');
    const writes = r.counts.writes;
    await Promise.all(ds.map((d) => p.handle(d)));
    expect(r.counts.writes - writes).toBe(1);
    expect(p.stats.applied).toBe(N + 1);
    const rec = (await r.store.get('counter', 'f1'))!.record;
    expect(rec.step).toBe(N);
    expect(rec.lastSeq).toBe(seqs[N - 1]);
    expect(contextSeq(rec.snapshot)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    const entries = await r.journal('f1');
    expect(entries.map((e) => e.step)).toEqual(Array.from({ length: N + 1 }, (_, i) => i));
    for (const [i, e] of entries.slice(1).entries()) {
      // Each entry is its own step's: its message, its event and the state after it.
      expect(e.seq).toBe(seqs[i]);
      expect(e.event.type).toBe('SIG');
      expect(contextSeq(e.snapshot)).toEqual(Array.from({ length: i + 1 }, (_, k) => k + 1));
    }
    for (let t = 0; got.size < N && t < 100; t++) await sleep(20);
    sub.unsubscribe();
    expect([...got.keys()].sort((a, b) => a - b)).toEqual(
      Array.from({ length: N }, (_, i) => i + 1),
    );
    for (const [n, reply] of got) expect((reply as { step: number }).step).toBe(n);
    // Every message of the batch is a repeat when delivered again (its own reply again too).
    const again = replies('f1again');
    await Promise.all(
      ds.map((d, i) =>
        p.handle({
          ...d,
          run: undefined,
          replyTo: `_INBOX.f1again.${i + 1}`,
          ack: () => Promise.resolve(),
        }),
      ),
    );
    expect(p.stats.repeats).toBe(N);
    expect(r.counts.writes - writes).toBe(1);
    for (let t = 0; again.got.size < N && t < 100; t++) await sleep(20);
    again.sub.unsubscribe();
    for (const [n, reply] of again.got) expect((reply as { step: number }).step).toBe(n);
    expect(again.got.size).toBe(N);
    await p.close();
  });

  it("a folded step whose snapshot is over foldSnapshotMaxBytes is journaled without it; the write's last step has it in full", async () => {
    const prefix = uniquePrefix();
    const r = await rig(prefix);
    // A bound below this workflow's snapshot: every folded step's entry is thin.
    const p = r.make(undefined, 64);
    await p.handle(await r.delivery(await r.publish('start', 'thin', { input: {} })));
    const N = 6;
    const seqs: number[] = [];
    for (let i = 1; i <= N; i++)
      seqs.push(await r.publish('signal', 'thin', { event: { type: 'SIG', n: i } }));
    const ds = await Promise.all(seqs.map((s) => r.delivery(s, 'run-thin')));
    const writes = r.counts.writes;
    await Promise.all(ds.map((d) => p.handle(d)));
    expect(r.counts.writes - writes).toBe(1);
    const entries = await r.journal('thin');
    expect(entries.map((e) => e.step)).toEqual(Array.from({ length: N + 1 }, (_, i) => i));
    // The start was a write of its own: whole.
    expect(contextSeq(entries[0]!.snapshot)).toEqual([]);
    for (const [i, e] of entries.slice(1, N).entries()) {
      // Its own message, event and state, without the snapshot.
      expect(e.seq).toBe(seqs[i]);
      expect(e.event).toEqual({ type: 'SIG', payload: { n: i + 1 } });
      expect(e.to?.value).toBeDefined();
      expect(e.snapshot).toBeUndefined();
      expect(e.snapshotOmitted).toEqual({ bytes: -1, folded: true });
    }
    const last = entries[N]!;
    expect(last.snapshotOmitted).toBeUndefined();
    expect(contextSeq(last.snapshot)).toEqual(Array.from({ length: N }, (_, i) => i + 1));
    // `verify` re-runs every step: a thin one from what the re-run of the step before it left.
    const verdict = verifyJournal(
      workflows,
      entries.map((e) => readEntry(e as unknown as JournalEntry)),
    );
    expect(verdict?.skipped).toEqual({});
    expect(verdict?.steps).toBe(N + 1);
    expect(verdict?.identical).toBe(N + 1);
    await p.close();
  });

  it('a crash between the write and its outbox: the next engine performs every folded effect, once', async () => {
    const prefix = uniquePrefix();
    const r = await rig(prefix);
    // A performs half of the time: with `performed`, it publishes the outbox and then hangs (a
    // crash before the ack); without, it hangs before publishing anything (a crash after the write).
    for (const performed of [false, true]) {
      const id = performed ? 'c2' : 'c1';
      let hung = false;
      const a = r.make((sink) => ({
        ...sink,
        perform: async (record, only) => {
          if (!record.outbox.some((e) => e.kind === 'steps')) return sink.perform(record, only);
          if (performed) await sink.perform(record, only);
          hung = true;
          return new Promise<void>(() => undefined);
        },
      }));
      await a.handle(await r.delivery(await r.publish('start', id, { input: {} })));
      const N = 8;
      const seqs: number[] = [];
      for (let i = 1; i <= N; i++)
        seqs.push(await r.publish('signal', id, { event: { type: 'SIG', n: i } }));
      const ds = await Promise.all(seqs.map((s) => r.delivery(s, 'run-a')));
      for (const d of ds) void a.handle(d); // never settles: A "crashed"
      for (let t = 0; !hung && t < 250; t++) await sleep(20);
      expect(hung).toBe(true);
      expect((await r.store.get('counter', id))!.record.step).toBe(N);
      expect((await r.journal(id)).length).toBe(performed ? N + 1 : 1);
      // B gets the messages again (redeliveries: no run), loads the record from the store.
      const b = r.make();
      for (const d of await Promise.all(seqs.map((s) => r.delivery(s)))) await b.handle(d);
      expect(b.stats.repeats).toBe(N);
      expect(b.stats.applied).toBe(0);
      const entries = await r.journal(id);
      expect(entries.map((e) => e.step)).toEqual(Array.from({ length: N + 1 }, (_, i) => i));
      expect(entries.slice(1).map((e) => e.seq)).toEqual(seqs);
      await b.close();
    }
  });

  it('a stale owner folding messages another engine has begun to apply loses its write and applies the rest once', async () => {
    const prefix = uniquePrefix();
    const r = await rig(prefix);
    const a = r.make(); // held the shard, lost it, got it back (its cached record is stale)
    const b = r.make(); // held the shard in between
    await a.handle(await r.delivery(await r.publish('start', 'f4', { input: {} })));
    const seqs: number[] = [];
    for (let i = 1; i <= 4; i++)
      seqs.push(await r.publish('signal', 'f4', { event: { type: 'SIG', n: i } }));
    const ds = await Promise.all(seqs.map((s) => r.delivery(s, 'run-a')));
    await b.handle({ ...ds[0]!, run: undefined, ack: () => Promise.resolve() });
    const writes = r.counts.writes;
    await Promise.all(ds.map((d) => a.handle(d)));
    expect(a.stats.conflicts).toBeGreaterThanOrEqual(1);
    expect(a.stats.repeats).toBe(1);
    const rec = (await r.store.get('counter', 'f4'))!.record;
    expect(contextSeq(rec.snapshot)).toEqual([1, 2, 3, 4]);
    expect(rec.step).toBe(4);
    // Two write attempts: the fold of four, refused (compare-and-set on a stale revision), and,
    // after the first message turned out a repeat, one write for the three after it.
    expect(r.counts.writes - writes).toBe(2);
    expect((await r.journal('f4')).map((e) => e.step)).toEqual([0, 1, 2, 3, 4]);
    await a.close();
    await b.close();
  });

  it('a message that cannot fold ends the batch and is applied alone; other runs never fold', async () => {
    const prefix = uniquePrefix();
    const r = await rig(prefix);
    const p = r.make();
    await p.handle(await r.delivery(await r.publish('start', 'f3', { input: {} })));
    const sig = (n: number) => r.publish('signal', 'f3', { event: { type: 'SIG', n } });
    // SIG 1, SIG 2 | BOOM (the step throws: rejected, no write) | SIG 3, SIG 4
    const seqs = [
      await sig(1),
      await sig(2),
      await r.publish('signal', 'f3', { event: { type: 'BOOM' } }),
      await sig(3),
      await sig(4),
    ];
    let writes = r.counts.writes;
    const ds = await Promise.all(seqs.map((s) => r.delivery(s, 'run-b')));
    await Promise.all(ds.map((d) => p.handle(d)));
    expect(r.counts.writes - writes).toBe(2);
    expect(p.stats.rejected).toBe(1);
    let rec = (await r.store.get('counter', 'f3'))!.record;
    expect(contextSeq(rec.snapshot)).toEqual([1, 2, 3, 4]);
    expect(rec.step).toBe(4);
    // Two delivery runs, and a redelivery in between: each message a write of its own.
    const more = [await sig(5), await sig(6), await sig(7)];
    writes = r.counts.writes;
    const ds2 = [
      await r.delivery(more[0]!, 'run-c'),
      await r.delivery(more[1]!),
      await r.delivery(more[2]!, 'run-d'),
    ];
    await Promise.all(ds2.map((d) => p.handle(d)));
    expect(r.counts.writes - writes).toBe(3);
    rec = (await r.store.get('counter', 'f3'))!.record;
    expect(contextSeq(rec.snapshot)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    const entries = await r.journal('f3');
    expect(entries.map((e) => e.step)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    await p.close();
  });
});
