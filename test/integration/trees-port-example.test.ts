/**
 * The README's worked Backbeat port example, run as written (test/fixtures/merchant-tree.ts): a
 * merchant payment as an activity tree; the bank down → sendToBank parks with an alert that
 * counts the nodes it holds → an operator's `retry` once the bank is back → the tree completes.
 */
import { describe, expect, it } from 'vitest';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import { merchantPaymentActivities } from '../fixtures/merchant-tree.js';

const env = useServer();
const dec = new TextDecoder();
const T = 'activityTree';

async function until<T>(what: string, f: () => Promise<T | undefined> | T | undefined) {
  const end = Date.now() + 20_000;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('README: porting a Backbeat merchant payment to an activity tree', () => {
  it('bank down → sendToBank parked with an alert (2 held behind it) → operator retry → paid, notified, complete', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const bank = { up: false, transfers: [] as string[] };
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      queues: ['payments', 'vouchers', 'bank', 'mail', 'ledger'],
      activities: merchantPaymentActivities({
        bankDelaysMs: [20, 20],
        vouchers: {
          sold: (m) =>
            Promise.resolve([
              { id: `${m}-v1`, price: 10 },
              { id: `${m}-v2`, price: 20 },
            ]),
        },
        bank: {
          transfer: (m, amount) => {
            if (!bank.up) return Promise.reject(new Error('bank connection refused'));
            bank.transfers.push(`${m}:${amount}`);
            return Promise.resolve(`ref-${m}`);
          },
        },
      }),
    });
    const client = new Client(env.nc, { prefix });
    const alerts: Record<string, unknown>[] = [];
    const sub = env.nc.subscribe(`${prefix}.alerts.bank.>`, {
      callback: (_e, m) => {
        alerts.push(JSON.parse(dec.decode(m.data)) as Record<string, unknown>);
      },
    });
    const node = async (nodeId: string) =>
      (await client.view<{ node: { status: string } }>(T, 'pay-m-1', { view: 'node', nodeId }))
        .node;
    try {
      // README: start (idempotent), signal with a key (exactly once), close.
      await client.start(T, 'pay-m-1', { subject: { merchantId: 'm-1' }, signalQueue: 'payments' });
      await client.signal(T, 'pay-m-1', {
        type: 'signal',
        name: 'payMerchant',
        input: { merchantId: 'm-1' },
        key: 'pay-m-1-2026-11',
      });
      await client.signal(T, 'pay-m-1', { type: 'close' });

      const alert = await until('alert', () => alerts.find((a) => a.nodeId === 'n4'));
      expect(alert).toMatchObject({
        type: 'nodeErrored',
        name: 'sendToBank',
        queue: 'bank',
        attempt: 3,
        maxAttempts: 3,
        blocked: 2,
      });
      expect(await node('n4')).toMatchObject({
        status: 'errored',
        metadata: { merchantId: 'm-1' },
      });
      expect((await node('n5')).status).toBe('ready'); // `paid` waits behind the parked node

      bank.up = true;
      const r = await client.node('retry', T, 'pay-m-1', 'n4', {
        by: 'alice',
        reason: 'bank back',
        requestId: 'INC-9-pay-m-1',
      });
      expect(r.result!.changed).toEqual([{ nodeId: 'n4', from: 'errored', to: 'running' }]);
      expect(await client.result(T, 'pay-m-1', { timeoutMs: 20_000 })).toEqual({
        nodes: 6,
        counts: { complete: 6, canceled: 0 },
      });
      expect(bank.transfers).toEqual(['m-1:27']);
      expect(await node('n5')).toMatchObject({ status: 'complete', output: { amount: 27 } });
      const text = (
        await client.view<{ text: string }>(T, 'pay-m-1', { view: 'tree', format: 'text' })
      ).text;
      for (const line of [
        'payMerchant [n1] complete (blocking)',
        'getSoldVouchers [n2] complete (blocking)',
        'auditPayment [n3] complete (fire_and_forget)',
        'paid [n5] complete (blocking)',
        'notifyMerchant [n6] complete (non_blocking)',
      ])
        expect(text).toContain(line);
      expect(text).toMatch(/sendToBank \[n4\] complete \(blocking/);
    } finally {
      sub.unsubscribe();
      await worker.close();
      await engine.close();
    }
  });
});
