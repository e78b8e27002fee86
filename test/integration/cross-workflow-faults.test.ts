/**
 * Cross-workflow effects under faults: a child workflow whose engine process is SIGKILLed
 * mid-way (while its activity runs, and again a random moment after the activity's result, when
 * the child's final step, its result message to the parent and the parent's step may be in
 * flight). The parent still gets the child's result exactly once.
 */
import { describe, expect, it } from 'vitest';
import { EngineProcess, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import type { JournalEntry } from '../../src/contracts/wire.js';

const env = useServer();

async function until<T>(what: string, f: () => Promise<T | undefined | false>, ms = 30_000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('child workflows: faults', () => {
  it('a child workflow whose engine is killed mid-way: the parent gets the result exactly once', async () => {
    const prefix = uniquePrefix();
    let engine = await new EngineProcess(env.server.url, prefix).start();
    const gates = new Map<string, () => void>();
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        slowStep: async ({ label }: { label: string }) => {
          await new Promise<void>((ok) => gates.set(label, ok));
          return `worked ${label}`;
        },
      },
    });
    const client = new Client(env.nc, { prefix });
    const pairs = ['a', 'b', 'c'];
    try {
      for (const p of pairs) {
        await client.start('xparent', `p-${p}`);
        await client.signal('xparent', `p-${p}`, { type: 'START', childId: `c-${p}`, label: p });
      }
      for (const p of pairs) {
        await until(`child c-${p}`, () => client.query('xchild', `c-${p}`).catch(() => undefined));
        await client.signal('xchild', `c-${p}`, { type: 'WORK' });
      }
      await until('every child works', () => Promise.resolve(pairs.every((p) => gates.has(p))));
      // Kill 1: while the children's activities run.
      await engine.kill();
      engine = await new EngineProcess(env.server.url, prefix).start();
      // Kill 2: a random moment after the results come in (child steps, result messages to the
      // parents and the parents' steps in flight).
      for (const p of pairs) gates.get(p)!();
      await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 60)));
      await engine.kill();
      engine = await new EngineProcess(env.server.url, prefix).start();
      for (const p of pairs) {
        expect(await client.result('xparent', `p-${p}`, { timeoutMs: 60_000 })).toEqual({
          output: { label: p, worked: `worked ${p}` },
          error: null,
        });
        // Exactly once: one step of the parent applied the child's done event; a repeated result
        // (if any was re-sent) is an ignored duplicate, never a second step.
        const journal: JournalEntry[] = [];
        for await (const e of client.historyAll('xparent', `p-${p}`)) journal.push(e);
        const applied = journal.filter(
          (e) => e.kind === 'step' && e.event.type === 'xstate.done.actor.kid',
        );
        expect(applied, `parent p-${p}`).toHaveLength(1);
        const steps = journal.filter((e) => e.kind === 'step').map((e) => e.step);
        expect(steps).toEqual(steps.map((_, i) => i)); // contiguous: nothing applied twice
        const child = await client.query('xchild', `c-${p}`);
        expect(child).toMatchObject({
          status: 'completed',
          parent: { type: 'xparent', id: `p-${p}` },
        });
      }
    } finally {
      for (const open of gates.values()) open();
      await worker.close();
      await engine.stop();
    }
  }, 120_000);
});
