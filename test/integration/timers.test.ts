/** Durable timers as NATS scheduled messages, with real engine processes. */
import { describe, expect, it } from 'vitest';
import { EngineProcess, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import type { Notification } from '../../src/contracts/wire.js';

const env = useServer();

async function history(client: Client, type: string, id: string): Promise<Notification[]> {
  const out: Notification[] = [];
  for await (const n of client.watch(type, id)) out.push(n);
  return out;
}

describe('durable timers', () => {
  it('`after: 2s` fires although the engine was SIGKILLed after setting it and restarted after it was due', async () => {
    const prefix = uniquePrefix();
    const client = new Client(env.nc, { prefix });
    let engine = await new EngineProcess(env.server.url, prefix).start();
    try {
      const t0 = Date.now();
      await client.start('sleeper', 's1', { ms: 2000 });
      await engine.kill();
      await new Promise((r) => setTimeout(r, 3000)); // past the due time, no engine running
      engine = await new EngineProcess(env.server.url, prefix).start();
      const h = await history(client, 'sleeper', 's1');
      expect(h.map((n) => n.type)).toEqual(['started', 'completed']);
      expect(h[1]!.type === 'completed' && h[1]!.value).toBe('woke');
      expect(Date.parse(h[1]!.at) - t0).toBeGreaterThanOrEqual(2000);
    } finally {
      await engine.kill();
    }
  });

  it('with the engine up, `after: 2s` moves on about 2 s later; sub-second delays and delayed raise work', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('sleeper', 's2', { ms: 2000 });
      await client.start('ticker', 't1');
      const h = await history(client, 'sleeper', 's2');
      const late = Date.parse(h[1]!.at) - Date.parse(h[0]!.at) - 2000;
      expect(late).toBeGreaterThanOrEqual(0);
      // Every transition, from the journal.
      const t: { value: unknown; at: number }[] = [];
      for await (const e of client.follow('ticker', 't1'))
        if (e.kind === 'step') t.push({ value: e.to.value, at: e.at });
      expect(t.map((e) => e.value)).toEqual(['a', 'b', 'done']);
      const tick = t[1]!.at - t[0]!.at;
      const after = t[2]!.at - t[1]!.at;
      expect(tick).toBeGreaterThanOrEqual(500);
      expect(after).toBeGreaterThanOrEqual(300);
      console.log(
        `timer lateness: 2 s timer +${late} ms, 500 ms raise +${tick - 500} ms, 300 ms after +${after - 300} ms`,
      );
    } finally {
      await engine.close();
    }
  });

  it('a timer whose state was left before it was due never delivers its event', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('sleeper', 'gone', { ms: 1000 });
      await client.signal('sleeper', 'gone', { type: 'LEAVE' });
      // Re-entering resets: three PINGs re-set the same timer id; only the last may fire.
      await client.start('sleeper', 'reset', { ms: 1000 });
      for (let i = 0; i < 3; i++) await client.signal('sleeper', 'reset', { type: 'PING' });
      await new Promise((r) => setTimeout(r, 2500)); // well past every due time
      expect((await client.query('sleeper', 'gone')).value).toBe('left');
      expect((await history(client, 'sleeper', 'gone')).map((n) => n.type)).toEqual([
        'started',
        'completed',
      ]);
      const reset = await history(client, 'sleeper', 'reset');
      expect(reset.filter((n) => n.type === 'completed')).toHaveLength(1);
      expect((await client.query('sleeper', 'reset')).step).toBe(4); // 3 PINGs + 1 timer
      expect(engine.processor.stats.ignored).toBe(0); // canceled timers were purged, not delivered
    } finally {
      await engine.close();
    }
  });
});
