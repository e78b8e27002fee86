/**
 * What a workflow record holds stays bounded and consistent with the inbox: finished children
 * leave the snapshot (core review M5, experiment E8), and a recreated inbox stream does not turn
 * every new message into a "repeat" (M9).
 */
import { describe, expect, it } from 'vitest';
import { assign, enqueueActions, setup } from 'xstate';
import { Kvm } from '@nats-io/kv';
import { jetstreamManager } from '@nats-io/jetstream';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { activity } from '../../src/engine/activity.js';
import { createWorker } from '../../src/worker/index.js';
import { topologyNames } from '../../src/nats/topology.js';
import { counter } from '../fixtures/workflows.js';
import { unpack } from '../../src/contracts/codec.js';
import type { WorkflowRecord } from '../../src/contracts/wire.js';

const env = useServer();

/** Spawns activity `sq<i>` one after the other, `n` times, then ends with the sum. */
const looper = defineWorkflow({
  type: 'looper',
  version: 1,
  machine: setup({
    types: {
      input: {} as { n: number },
      context: {} as { i: number; n: number; sum: number },
    },
    actors: { square: activity<{ x: number }, number>('square') },
  }).createMachine({
    id: 'looper',
    context: ({ input }) => ({ i: 0, n: input.n, sum: 0 }),
    initial: 'waiting',
    states: {
      waiting: {
        entry: enqueueActions(({ context, enqueue }) => {
          enqueue.spawnChild('square', { id: `sq${context.i}`, input: { x: context.i } });
        }),
        on: {
          'xstate.done.actor.*': {
            target: 'next',
            actions: assign({
              i: ({ context }) => context.i + 1,
              sum: ({ context, event }) =>
                context.sum + (event as unknown as { output: number }).output,
            }),
          },
        },
      },
      next: {
        always: [
          { guard: ({ context }) => context.i >= context.n, target: 'done' },
          { target: 'waiting' },
        ],
      },
      done: { type: 'final' },
    },
    output: ({ context }) => ({ sum: context.sum }),
  }),
});

describe('record bounds', () => {
  it('M5: a workflow that spawns activities in a loop keeps a bounded record (finished children pruned)', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, { workflows: [looper] });
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: { square: ({ x }: { x: number }) => Promise.resolve(x * x) },
    });
    const client = new Client(env.nc, { prefix });
    const kv = await new Kvm(env.nc).open(topologyNames(prefix).bucket);
    try {
      const sizes: number[] = [];
      for (const [id, n] of [
        ['short', 2],
        ['long', 30],
      ] as const) {
        await client.start('looper', id, { n });
        await client.result('looper', id, { timeoutMs: 20_000 });
        sizes.push((await kv.get(`looper.${id}`))!.value.length);
      }
      // 28 more spawns than the short run; each kept child would add ~100 bytes.
      expect(sizes[1]! - sizes[0]!).toBeLessThan(100);
      const rec = unpack((await kv.get('looper.long'))!.value) as WorkflowRecord;
      const children = (rec.snapshot as { children?: object }).children ?? {};
      expect(Object.keys(children)).toEqual([]);
    } finally {
      await worker.close();
      await engine.close();
    }
  });

  it('M9: after the inbox stream is deleted and recreated, new messages are applied, not taken for repeats', async () => {
    const prefix = uniquePrefix();
    const names = topologyNames(prefix);
    const client = new Client(env.nc, { prefix });
    let engine = await startEngine(env.server.url, prefix, { workflows: [counter] });
    await client.start('counter', 'w');
    for (let n = 1; n <= 12; n++) await client.signal('counter', 'w', { type: 'SIG', n });
    await engine.close();
    const jsm = await jetstreamManager(env.nc);
    await jsm.streams.delete(names.inboxStream); // disaster recovery, `stream rm`, a migration
    engine = await startEngine(env.server.url, prefix, { workflows: [counter] }); // recreates it
    try {
      const r = await client.signal('counter', 'w', { type: 'SIG', n: 13 });
      expect(r.duplicate).toBeUndefined();
      expect(r.step).toBe(13);
      const r2 = await client.signal('counter', 'w', { type: 'SIG', n: 14 });
      expect(r2.step).toBe(14);
      const q = await client.query('counter', 'w');
      expect((q.context as { seq: number[] }).seq).toEqual(
        Array.from({ length: 14 }, (_, i) => i + 1),
      );
    } finally {
      await engine.close();
    }
  });
});
