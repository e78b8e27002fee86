/**
 * Activity trees under faults: a scheduled node (`delayMs`, a durable timer in JetStream) whose
 * engine process is SIGKILLed before the node is due still runs, once, at or after its time.
 */
import { describe, expect, it } from 'vitest';
import { EngineProcess, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';

const env = useServer();
const T = 'activityTree';

async function until<T>(f: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

type NodeView = { node: { status: string; fireAt?: string; history: { to: string }[] } };

describe('activity trees: faults', () => {
  it('a node scheduled 2 s ahead survives an engine SIGKILL before it is due, and runs once, then', async () => {
    const prefix = uniquePrefix();
    let engine = await new EngineProcess(env.server.url, prefix).start();
    const runs: number[] = [];
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        later: () => {
          runs.push(Date.now());
          return 'ran';
        },
      },
    });
    const client = new Client(env.nc, { prefix });
    try {
      await client.start(T, 'sch', { signalQueue: 'later' });
      const r = await client.signal(T, 'sch', { type: 'signal', name: 'later', delayMs: 2000 });
      expect(r.result).toEqual({ nodeId: 'n1', duplicate: false });
      const before = await client.view<NodeView>(T, 'sch', { view: 'node', nodeId: 'n1' });
      expect(before.node.status).toBe('scheduled');
      const fireAt = Date.parse(before.node.fireAt!);
      await engine.kill();
      expect(Date.now()).toBeLessThan(fireAt); // killed before the node was due
      expect(runs).toEqual([]);
      engine = await new EngineProcess(env.server.url, prefix).start();
      const done = await until(async () => {
        const v = await client.view<NodeView>(T, 'sch', { view: 'node', nodeId: 'n1' });
        return v.node.status === 'complete' ? v : undefined;
      });
      expect(done.node.history.map((h) => h.to)).toEqual([
        'ready',
        'scheduled',
        'running',
        'complete',
      ]);
      expect(runs).toHaveLength(1);
      expect(runs[0]).toBeGreaterThanOrEqual(fireAt);
      await client.signal(T, 'sch', { type: 'close' });
      expect(await client.result(T, 'sch')).toEqual({
        nodes: 1,
        counts: { complete: 1, canceled: 0 },
      });
      // Nothing ran twice after the dust settled.
      await new Promise((res) => setTimeout(res, 500));
      expect(runs).toHaveLength(1);
    } finally {
      await worker.close();
      await engine.stop();
    }
  }, 90_000);
});
