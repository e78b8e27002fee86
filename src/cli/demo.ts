/** The quick start's demo: a few `order` workflows driven through their life by signals. */
import { Client } from '../client/index.js';

export async function runDemo(
  url: string,
  prefix: string,
  print: (line: string) => void,
): Promise<void> {
  const client = await Client.connect(url, { prefix });
  try {
    const run = Date.now().toString(36);
    for (let i = 1; i <= 3; i++) {
      const id = `demo-${run}-${i}`;
      const started = await client.start('order', id, { total: 100 * i });
      print(`order ${id}: started (v${started.version}, created=${started.created})`);
      try {
        await client.signal('order', id, { type: 'PAY', amount: 1 });
      } catch (err) {
        print(`order ${id}: PAY 1 rejected as expected: ${(err as Error).message}`);
      }
      for (const ev of [
        { type: 'PAY', amount: 100 * i },
        { type: 'PACK' },
        { type: 'SHIP', carrier: 'demo' },
        { type: 'DELIVER' },
      ]) {
        const r = await client.signal('order', id, ev);
        print(`order ${id}: ${ev.type} -> ${JSON.stringify(r.value)} (step ${r.step})`);
      }
      const out = await client.result('order', id, { timeoutMs: 10_000 });
      print(`order ${id}: completed with ${JSON.stringify(out)}`);
    }
  } finally {
    await client.close();
  }
}
