/**
 * Pause and resume across an engine SIGKILL: messages that arrive while paused (a signal, an
 * activity result, a timer) are held in inbox order and not applied; after the engine is killed
 * and another one takes over, resume applies each exactly once, in that order.
 */
import { describe, expect, it } from 'vitest';
import { EngineProcess, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import type { JournalEntry } from '../../src/contracts/wire.js';

const env = useServer();
const who = { by: 'ops@test', reason: 'investigating' };

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('pause / resume', () => {
  it('holds a signal, a result and a timer while paused, survives SIGKILL, and applies all three once in inbox order on resume', async () => {
    const prefix = uniquePrefix();
    let engine = await new EngineProcess(env.server.url, prefix).start();
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let calls = 0;
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        echo: async (input: unknown) => {
          calls++;
          await gate;
          return input;
        },
      },
    });
    const client = new Client(env.nc, { prefix, timeoutMs: 20_000 });
    try {
      await client.start('rlogger', 'p1');
      const paused = await client.pause('rlogger', 'p1', { ...who, requestId: 'pause-1' });
      expect(paused).toMatchObject({ action: 'pause', paused: true, changed: { paused: true } });
      const q0 = await client.query('rlogger', 'p1');
      expect(q0).toMatchObject({ paused: true, held: 0, context: { log: [] } });

      // 1: a signal (its reply says it is held), 2: the activity's result, 3: the timer (3 s).
      const sig = await client.signal('rlogger', 'p1', { type: 'SIG', n: 1 });
      expect(sig).toMatchObject({ held: true, paused: true });
      await until('the signal held', async () =>
        (await client.query('rlogger', 'p1')).held === 1 ? true : undefined,
      );
      open();
      await until('the result held', async () =>
        (await client.query('rlogger', 'p1')).held === 2 ? true : undefined,
      );
      const q3 = await until('the timer held', async () => {
        const q = await client.query('rlogger', 'p1');
        return q.held === 3 ? q : undefined;
      });
      expect(q3.context).toEqual({ log: [] }); // nothing applied
      expect(q3.value).toBe('running');

      await engine.kill(); // SIGKILL
      engine = await new EngineProcess(env.server.url, prefix).start();

      const still = await client.query('rlogger', 'p1');
      expect(still).toMatchObject({ paused: true, held: 3, context: { log: [] } });
      // A repeat of the pause changes nothing.
      expect(
        (await client.pause('rlogger', 'p1', { ...who, requestId: 'pause-1' })).duplicate,
      ).toBe(true);

      const resumed = await client.resume('rlogger', 'p1', { ...who, requestId: 'resume-1' });
      expect(resumed).toMatchObject({ paused: false, changed: { released: 3 } });
      const after = await until('the held messages applied', async () => {
        const q = await client.query('rlogger', 'p1');
        return (q.context as { log: string[] }).log.length >= 3 ? q : undefined;
      });
      expect(after.context).toEqual({ log: ['sig1', 'result', 'timer'] });
      expect(after.paused).toBeUndefined();
      expect(
        (await client.resume('rlogger', 'p1', { ...who, requestId: 'resume-1' })).duplicate,
      ).toBe(true);
      await client.signal('rlogger', 'p1', { type: 'FINISH' });
      expect(await client.result('rlogger', 'p1')).toEqual({ log: ['sig1', 'result', 'timer'] });
      expect(calls).toBe(1);

      // The journal: contiguous steps; three held, then three released in the same order.
      const entries: JournalEntry[] = [];
      for await (const e of client.historyAll('rlogger', 'p1')) entries.push(e);
      const steps = entries.filter(
        (e): e is Extract<JournalEntry, { kind: 'step' }> => e.kind === 'step',
      );
      expect(steps.map((e) => e.step)).toEqual(steps.map((_, i) => i));
      const held = steps.filter((e) => e.held);
      const released = steps.filter((e) => e.released);
      expect(held.map((e) => e.cause)).toEqual(['signal', 'result', 'timer']);
      expect(released.map((e) => e.cause)).toEqual(['signal', 'result', 'timer']);
      expect(released.map((e) => e.seq)).toEqual(held.map((e) => e.seq));
      expect(held.every((e) => e.paused === true)).toBe(true);
      expect(steps.filter((e) => e.cause === 'operator').map((e) => e.operator!.action)).toEqual([
        'pause',
        'resume',
      ]);
    } finally {
      await worker.close();
      await engine.stop();
    }
  });
});
