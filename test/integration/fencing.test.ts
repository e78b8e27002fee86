/**
 * Fencing: two engines that both process the same shard (forced, as a stale owner would) never
 * lose or double an update. The KV compare-and-set rejects the stale write and the loser retries
 * from the stored record.
 */
import { describe, expect, it } from 'vitest';
import { jetstream, jetstreamManager, type JetStreamClient } from '@nats-io/jetstream';
import {
  quietLogger,
  startEngine,
  TEST_SHARDS,
  uniquePrefix,
  useServer,
} from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { pack } from '../../src/contracts/codec.js';
import { ensureTopology, topologyNames } from '../../src/nats/topology.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import { createInboxReader } from '../../src/nats/inbox.js';
import { createEffectSink } from '../../src/nats/effects.js';
import { createProcessor } from '../../src/engine/processor.js';
import { createRegistry } from '../../src/engine/registry.js';
import { parseShardInbox } from '../../src/contracts/subjects.js';
import type { InboxDelivery } from '../../src/engine/ports.js';
import { ENGINE_DEFAULTS } from '../../src/config.js';
import { workflows } from '../fixtures/workflows.js';

const env = useServer();

/** Publish one signal straight into the inbox (JetStream, ordered per publisher). */
async function publishSignal(
  js: JetStreamClient,
  prefix: string,
  id: string,
  n: number,
): Promise<number> {
  const ack = await js.publish(
    `${prefix}.inbox.signal.counter.${id}`,
    pack({ event: { type: 'SIG', n } }),
  );
  return ack.seq;
}

describe('fencing', () => {
  it('a stale cached record loses its compare-and-set and the step is retried from the store', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const { names, kv } = await ensureTopology(env.nc, jsm, {
      ...ENGINE_DEFAULTS,
      prefix,
      shards: TEST_SHARDS,
    });
    const js = jetstream(env.nc);
    const make = () =>
      createProcessor({
        registry: createRegistry(workflows),
        subjects: names.subjects,
        store: createKvRecordStore(kv),
        inbox: createInboxReader(jsm, names),
        effects: createEffectSink(env.nc, js, names, quietLogger),
        clock: { now: () => Date.now() },
        logger: quietLogger,
        cacheSize: 100,
      });
    const a = make();
    const b = make();
    const delivery = async (seq: number): Promise<InboxDelivery & { acked: boolean }> => {
      const m = (await jsm.streams.getMessage(names.inboxStream, { seq }))!;
      const p = parseShardInbox(m.subject)!;
      const d = {
        seq,
        ...p,
        data: m.data,
        replyTo: undefined,
        replyEncoding: 'json' as const,
        acked: false,
        ack: () => {
          d.acked = true;
          return Promise.resolve();
        },
        working: () => undefined,
      };
      return d;
    };

    const start = await js.publish(`${prefix}.inbox.start.counter.f1`, pack({ input: {} }));
    await a.handle(await delivery(start.seq)); // A creates and caches f1
    const s1 = await publishSignal(js, prefix, 'f1', 1);
    await b.handle(await delivery(s1)); // B (the other owner) applies SIG 1: A's cache is now stale
    const s2 = await publishSignal(js, prefix, 'f1', 2);
    const d2 = await delivery(s2);
    await a.handle(d2); // A's CAS on its stale revision fails; it retries from the store
    expect(a.stats.conflicts).toBe(1);
    expect(d2.acked).toBe(true);

    // The message B applied is redelivered to A: recognised as a repeat, not applied again.
    const again = await delivery(s1);
    await a.handle(again);
    expect(a.stats.repeats).toBe(1);

    const rec = await createKvRecordStore(kv).get('counter', 'f1');
    expect((rec!.record.snapshot as { context: { seq: number[] } }).context.seq).toEqual([1, 2]);
    expect(rec!.record.step).toBe(2);
    await a.close();
    await b.close();
  });

  it('two engines consuming the same shards never lose or double an update', async () => {
    const prefix = uniquePrefix();
    // Both engines are told to own every shard (a static assignment, as a stale owner would
    // believe). The server pins one engine per shard; unpinning every shard again and again
    // while the signals flow makes the pin flip, so both engines hold messages of the same
    // workflows at once.
    const all = `0-${TEST_SHARDS - 1}`;
    const e1 = await startEngine(env.server.url, prefix, { shardIds: all });
    const e2 = await startEngine(env.server.url, prefix, { shardIds: all });
    try {
      const client = new Client(env.nc, { prefix });
      const js = jetstream(env.nc);
      const jsm = await jetstreamManager(env.nc);
      const names = topologyNames(prefix);
      const ids = Array.from({ length: 20 }, (_, i) => `f${i}`);
      await Promise.all(ids.map((id) => client.start('counter', id)));
      let flipping = true;
      const flipper = (async () => {
        while (flipping) {
          for (let s = 0; s < TEST_SHARDS; s++) {
            await jsm.consumers
              .unpin(names.inboxStream, names.shardConsumer(s), 'engines')
              .catch(() => undefined);
          }
          await new Promise((r) => setTimeout(r, 5));
        }
      })();
      // 50 signals per workflow, interleaved across workflows.
      const acks: Promise<number>[] = [];
      for (let n = 0; n < 50; n++) {
        for (const id of ids) acks.push(publishSignal(js, prefix, id, n));
        await new Promise((r) => setTimeout(r, 2));
      }
      await Promise.all(acks);
      flipping = false;
      await flipper;
      await Promise.all(ids.map((id) => client.signal('counter', id, { type: 'FINISH' })));
      const expected = Array.from({ length: 50 }, (_, n) => n);
      for (const id of ids) {
        const out = await client.result<{ seq: number[] }>('counter', id, { timeoutMs: 30_000 });
        expect(out.seq).toEqual(expected);
      }
      const s1 = e1.processor.stats;
      const s2 = e2.processor.stats;
      // Both engines did work on the same workflows, and the stale writes were fenced.
      expect(s1.applied).toBeGreaterThan(0);
      expect(s2.applied).toBeGreaterThan(0);
      expect(s1.applied + s2.applied).toBe(20 + 20 * 50 + 20);
      expect(s1.conflicts + s2.conflicts + s1.repeats + s2.repeats).toBeGreaterThan(0);
      console.log('fencing stats', { e1: s1, e2: s2 });
    } finally {
      await e1.close();
      await e2.close();
    }
  });
});
