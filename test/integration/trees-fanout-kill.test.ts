/**
 * Acceptance (issue 15): a 1,000-child non-blocking fan-out with a join completes although its
 * engine — a spawned process — is SIGKILLed twice while the results are being applied. Every
 * leaf runs once (the worker counts each leaf's side effect) and every node completes exactly
 * once (read back from the events stream: one `running→complete` per node, each step told once).
 */
import { describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import { jetstream } from '@nats-io/jetstream';
import { EngineProcess, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker, withDecisions } from '../../src/worker/index.js';
import { unpack } from '../../src/contracts/codec.js';
import { topologyNames } from '../../src/nats/topology.js';

const env = useServer();
const T = 'activityTree';
const N = 1000;
const dec = new TextDecoder();

async function until<T>(f: () => Promise<T | undefined> | T | undefined, ms = 120_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Change {
  nodeId: string;
  name: string;
  from: string | null;
  to: string;
}

describe('activity trees: fan-out under engine SIGKILLs', () => {
  it('a 1,000-child non-blocking fan-out with join completes with its engine SIGKILLed twice during it; every leaf runs and completes once', async () => {
    const prefix = uniquePrefix();
    let engine = await new EngineProcess(env.server.url, prefix).start();
    const runs = new Map<number, number>();
    const order: string[] = [];
    // The fan decides only once the join and close signals are applied: otherwise a signal sent
    // after the fan's result waits in the inbox behind up to 1,000 leaf results (inbox order).
    let release = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        fan: async () => {
          await gate;
          return withDecisions(
            'fanned',
            Array.from({ length: N }, (_, i) => ({ name: 'leaf', mode: 'non_blocking', input: i })),
          );
        },
        leaf: (i: number) => {
          runs.set(i, (runs.get(i) ?? 0) + 1);
          return i * 2;
        },
        join: () => {
          order.push(`join after ${runs.size} leaves`);
          return 'joined';
        },
      },
    });
    const client = new Client(env.nc, { prefix });
    const kv = await new Kvm(env.nc).open(`${prefix}_workflows`);
    /** The step the stored record is at (read from the bucket: the engine may be down). */
    const step = async () => {
      const e = await kv.get(`${T}.big`);
      return e ? (unpack(e.value) as { step: number }).step : -1;
    };
    const kills: number[] = [];
    try {
      await client.start(T, 'big', { signalQueue: 'fan' });
      const t0 = Date.now();
      await client.signal(T, 'big', { type: 'signal', name: 'fan' });
      await client.signal(T, 'big', { type: 'signal', name: 'join', queue: 'join' });
      await client.signal(T, 'big', { type: 'close' });
      release();
      // Kill while results are being applied: after about 150, then 600 of the 1,000.
      for (const at of [150, 600]) {
        await until(async () => (await step()) >= at || undefined);
        await engine.kill();
        kills.push(await step());
        engine = await new EngineProcess(env.server.url, prefix).start();
      }
      const out = await client.result(T, 'big', { timeoutMs: 240_000 });
      const ms = Date.now() - t0;
      expect(out).toEqual({ nodes: N + 2, counts: { complete: N + 2, canceled: 0 } });
      const e = await kv.get(`${T}.big`);
      const bytes = e!.value.length;
      const rec = unpack(e!.value) as { step: number };
      console.log(
        `fan-out with 2 engine SIGKILLs (at steps ${kills.join(', ')}): ${N + 2} nodes, ${rec.step} steps, final record ${bytes} bytes, ${ms} ms`,
      );
      expect(kills[0]).toBeLessThan(N);
      expect(kills[1]).toBeLessThan(N);
      // Each leaf's side effect happened once; the join ran after all of them.
      expect(runs.size).toBe(N);
      expect([...runs.values()].every((n) => n === 1)).toBe(true);
      expect(order).toEqual([`join after ${N} leaves`]);

      // Each node completed exactly once, each step's changes told once (the events stream
      // dedups a re-performed notification by its msg id).
      const js = jetstream(env.nc);
      const c = await js.consumers.get(topologyNames(prefix).eventsStream, {
        filter_subjects: [`${prefix}.events.${T}.big`],
      });
      const steps = new Map<number, number>();
      const completes = new Map<string, number>();
      const pending = (await c.info()).num_pending;
      const it = await c.fetch({ max_messages: pending, expires: 10_000 });
      let read = 0;
      for await (const m of it) {
        read++;
        const n = JSON.parse(dec.decode(m.data)) as {
          step: number;
          type: string;
          emitted?: { type: string; changes?: Change[] }[];
        };
        for (const ev of n.emitted ?? []) {
          if (ev.type !== 'nodes') continue;
          steps.set(n.step, (steps.get(n.step) ?? 0) + 1);
          for (const ch of ev.changes!)
            if (ch.to === 'complete') completes.set(ch.nodeId, (completes.get(ch.nodeId) ?? 0) + 1);
        }
        if (read >= pending) break;
      }
      expect([...steps.values()].every((n) => n === 1)).toBe(true);
      expect(completes.size).toBe(N + 2);
      expect([...completes.values()].every((n) => n === 1)).toBe(true);
      const tree = await client.view<{ counts: Record<string, number> }>(T, 'big', {
        view: 'tree',
        maxNodes: 1,
      });
      expect(tree.counts).toMatchObject({ complete: N + 2, running: 0, errored: 0 });
    } finally {
      await worker.close();
      await engine.stop();
    }
  }, 300_000);
});
