/**
 * Delivery runs (issue 18, `InboxDelivery.run`): what makes deliveries after the head of a
 * workflow's queue safe to fold. First deliveries of a shard consumer to one subscription in an
 * unbroken delivery sequence share a run; a redelivery has none and ends the run; a second
 * subscription (a restarted iterator, another engine) starts its own.
 */
import { describe, expect, it } from 'vitest';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { quietLogger, TEST_SHARDS, uniquePrefix, useServer } from '../harness/jetflow.js';
import { pack } from '../../src/contracts/codec.js';
import { ensureTopology } from '../../src/nats/topology.js';
import { consumeShard, ENGINES_GROUP } from '../../src/nats/inbox.js';
import type { Processor } from '../../src/engine/processor.js';
import type { InboxDelivery } from '../../src/engine/ports.js';
import { ENGINE_DEFAULTS } from '../../src/config.js';
import { shardOf } from '../../src/contracts/subjects.js';

const env = useServer();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A processor that only records what it is handed; `settle` decides ack or nak per delivery. */
function recorder(settle: (d: InboxDelivery) => 'ack' | 'nak') {
  const got: InboxDelivery[] = [];
  const p: Processor = {
    handle(d) {
      got.push(d);
      if (settle(d) === 'ack') return d.ack();
      d.nak?.(0);
      return Promise.resolve();
    },
    busy: 0,
    stats: {} as Processor['stats'],
    cacheStats: () => ({ entries: 0, bytes: 0, maxBytes: 0 }),
    close: () => Promise.resolve(),
    forgetShard: () => undefined,
  };
  return { got, p };
}

describe('delivery runs of a shard consumer', () => {
  it('first deliveries in one unbroken sequence share a run; a redelivery has none and ends it', async () => {
    const prefix = uniquePrefix();
    const jsm = await jetstreamManager(env.nc);
    const { names } = await ensureTopology(env.nc, jsm, {
      ...ENGINE_DEFAULTS,
      prefix,
      shards: TEST_SHARDS,
    });
    const js = jetstream(env.nc);
    const id = 'r1';
    const shard = shardOf('counter', id, TEST_SHARDS);
    const publish = async (n: number) =>
      js.publish(
        names.subjects.shardInbox(shard, 'signal', 'counter', id),
        pack({ event: { type: 'SIG', n } }),
      );
    for (let n = 0; n < 5; n++) await publish(n);
    // The third message is given back once: its redelivery comes after the others.
    let nakked = false;
    const r = recorder((d) => {
      if (d.seq === 3 && !nakked) {
        nakked = true;
        return 'nak';
      }
      return 'ack';
    });
    const h = await consumeShard({
      js,
      names,
      shard,
      processor: r.p,
      logger: quietLogger,
      batch: 16,
      group: ENGINES_GROUP,
      expiresMs: 1_000,
    });
    await h.claim('test');
    for (let t = 0; r.got.length < 6 && t < 250; t++) await sleep(20);
    expect(r.got.map((d) => d.seq)).toEqual([1, 2, 3, 4, 5, 3]);
    const [a, b, c, d, e, again] = r.got;
    // One run for the five first deliveries (the claim between them is a delivery too).
    expect(a!.run).toBeDefined();
    for (const x of [b, c, d, e]) expect(x!.run).toBe(a!.run);
    expect(again!.run).toBeUndefined();
    // After the redelivery, a new run.
    await publish(5);
    for (let t = 0; r.got.length < 7 && t < 250; t++) await sleep(20);
    const after = r.got[6]!;
    expect(after.seq).toBeGreaterThan(5);
    expect(after.run).toBeDefined();
    expect(after.run).not.toBe(a!.run);
    await h.stop();
    await jsm.consumers.unpin(names.inboxStream, names.shardConsumer(shard), ENGINES_GROUP);
    // Another subscription of the same consumer (in this process) starts its own runs.
    const r2 = recorder(() => 'ack');
    const h2 = await consumeShard({
      js,
      names,
      shard,
      processor: r2.p,
      logger: quietLogger,
      batch: 16,
      group: ENGINES_GROUP,
      expiresMs: 1_000,
    });
    await h2.claim('test-2');
    await publish(6);
    for (let t = 0; r2.got.length < 1 && t < 250; t++) await sleep(20);
    expect(r2.got[0]!.run).toBeDefined();
    expect([a!.run, after.run]).not.toContain(r2.got[0]!.run);
    await h2.stop();
  });
});
