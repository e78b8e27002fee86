/**
 * The quick start's demo: a worker with the merchant-payment activities, five payments run
 * through get vouchers → calculate → send to bank (throttled to 2 bank connections, the bank
 * failing now and then so retries show), then one `order` driven by signals, then an activity
 * tree (Backbeat's model): all three modes, a flag, a scheduled node, a retry, and a link to a
 * node of a second tree (started by the link).
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { Client } from '../client/index.js';
import { createWorker, withDecisions, type Worker } from '../worker/index.js';
import type { Voucher } from '../../actors/merchant-payment.js';
import type { JournalEntry } from '../contracts/wire.js';

/** Demo activity implementations (a real deployment runs these in its own worker processes). */
export function demoActivities(print: (line: string) => void) {
  let connections = 0;
  return {
    ...treeActivities(print),
    getSoldVouchers: ({ merchantId }: { merchantId: string }): Voucher[] =>
      Array.from({ length: 2 + (merchantId.charCodeAt(merchantId.length - 1) % 4) }, (_, i) => ({
        id: `${merchantId}-v${i}`,
        price: 10 * (i + 1),
      })),
    calculatePayment: ({ vouchers }: { vouchers: Voucher[] }): number =>
      Math.round(vouchers.reduce((s, v) => s + v.price, 0) * 0.9 * 100) / 100,
    sendToBank: async (
      { merchantId, amount }: { merchantId: string; amount: number },
      ctx: { attempt: number; taskId: string },
    ) => {
      connections++;
      try {
        await new Promise((r) => setTimeout(r, 150));
        if (ctx.attempt === 1 && merchantId.endsWith('2')) {
          print(
            `  bank: connection refused for ${merchantId} (attempt ${ctx.attempt}); retried on its own`,
          );
          throw new Error('bank connection refused');
        }
        print(
          `  bank: paid ${amount.toFixed(2)} to ${merchantId} (${connections} of at most 2 connections open)`,
        );
        return `bank-${merchantId}-${ctx.attempt}`;
      } finally {
        connections--;
      }
    },
  };
}

export async function startDemoWorker(
  nc: NatsConnection,
  prefix: string,
  print: (line: string) => void,
): Promise<Worker> {
  return createWorker({
    connection: nc,
    prefix,
    activities: demoActivities(print),
    concurrency: 8,
    queueSettings: { bank: { maxInFlight: 2 } },
  });
}

/** The tree demo's activities: each node's queue is its name. */
function treeActivities(print: (line: string) => void) {
  const node = (name: string) => () => {
    print(`  tree: ${name} ran`);
    return name;
  };
  return {
    importBatch: ({ audit }: { audit: string }) =>
      withDecisions({ batch: 7 }, [
        { name: 'fetchRows', queue: 'fetchRows', mode: 'non_blocking' },
        { name: 'validated', kind: 'flag', input: { rows: 3 } },
        {
          name: 'storeRows',
          queue: 'storeRows',
          mode: 'blocking',
          retry: { delaysMs: [300], jitter: 0 },
        },
        { name: 'reindex', queue: 'reindex', mode: 'non_blocking', delayMs: 1000 },
        { name: 'notifyTeam', queue: 'notifyTeam', mode: 'fire_and_forget' },
        // A link: node auditRows runs in tree `audit` (started by the link if absent); this
        // node completes with its output, and importBatch waits for it.
        {
          name: 'auditRows',
          queue: 'auditRows',
          mode: 'non_blocking',
          linkTo: { type: 'activityTree', id: audit, start: { input: { signalQueue: 'audit' } } },
        },
      ]),
    fetchRows: node('fetchRows'),
    storeRows: (_input: unknown, ctx: { attempt: number }) => {
      if (ctx.attempt === 1) {
        print('  tree: storeRows failed (attempt 1), retried 300 ms later');
        throw new Error('database busy');
      }
      return node('storeRows')();
    },
    reindex: node('reindex (scheduled 1 s after its turn)'),
    notifyTeam: node('notifyTeam (fire and forget)'),
    auditRows: node('auditRows (in the linked tree)'),
  };
}

/** One journal entry of the demo as a short line. */
function describe(e: JournalEntry): string {
  switch (e.kind) {
    case 'step': {
      const to = JSON.stringify(e.to.value);
      if (e.cause === 'start') return `started in ${to}`;
      if (e.status === 'completed') return `completed: ${JSON.stringify(e.output)}`;
      if (e.status !== 'running') return `${e.status}${e.error ? `: ${e.error.message}` : ''}`;
      return `${e.event.type.replace(/^xstate\.done\.actor\./, 'done: ')} -> ${to}`;
    }
    case 'rejected':
      return `rejected ${e.event.type}: ${e.error.message}`;
    case 'ignored':
      return `ignored ${e.cause}: ${e.reason}`;
    case 'operator':
      return `operator ${e.action}`;
    case 'admission':
      return `${e.stage} ${e.outcome}: ${e.what}`;
  }
}

export async function runDemo(
  url: string,
  prefix: string,
  print: (line: string) => void,
): Promise<void> {
  const client = await Client.connect(url, { prefix });
  const worker = await startDemoWorker(client.nc, prefix, print);
  try {
    const run = Date.now().toString(36);
    const merchants = Array.from({ length: 5 }, (_, i) => `m-${run}-${i + 1}`);
    print(
      `merchant payments: ${merchants.length} workflows (get vouchers -> calculate -> send to bank)`,
    );
    await Promise.all(
      merchants.map(async (id) => {
        const watching = (async () => {
          for await (const e of client.follow('merchantPayment', id))
            print(`${id}: ${describe(e)}`);
        })();
        await client.start('merchantPayment', id, { merchantId: id });
        await watching;
      }),
    );

    const id = `demo-${run}`;
    print(`order ${id}: driven by signals from other services`);
    await client.start('order', id, { total: 100 });
    try {
      await client.signal('order', id, { type: 'PAY', amount: 1 });
    } catch (err) {
      print(`order ${id}: PAY 1 rejected as expected: ${(err as Error).message}`);
    }
    for (const ev of [
      { type: 'PAY', amount: 100 },
      { type: 'PACK' },
      { type: 'SHIP', carrier: 'demo' },
      { type: 'DELIVER' },
    ]) {
      const r = await client.signal('order', id, ev);
      print(`order ${id}: ${ev.type} -> ${JSON.stringify(r.value)} (step ${r.step})`);
    }
    print(
      `order ${id}: completed with ${JSON.stringify(await client.result('order', id, { timeoutMs: 10_000 }))}`,
    );

    const tree = `import-${run}`;
    const audit = `audit-${run}`;
    print(
      `activity tree ${tree}: one signal deciding six children (all modes, a flag, a timer, a link to tree ${audit})`,
    );
    await client.start('activityTree', tree, { signalQueue: 'importBatch' });
    await client.signal('activityTree', tree, {
      type: 'signal',
      name: 'importBatch',
      input: { audit },
    });
    await client.signal('activityTree', tree, { type: 'close' });
    const out = await client.result('activityTree', tree, { timeoutMs: 20_000 });
    for (const id of [tree, audit]) {
      const view = await client.view<{ text: string }>('activityTree', id, {
        view: 'tree',
        format: 'text',
      });
      print(view.text);
    }
    print(`activity tree ${tree}: completed with ${JSON.stringify(out)}`);
    await client.signal('activityTree', audit, { type: 'close' });
    const audited = await client.result('activityTree', audit, { timeoutMs: 10_000 });
    print(`activity tree ${audit}: completed with ${JSON.stringify(audited)}`);
  } finally {
    await worker.close();
    await client.close();
  }
}
