/**
 * `npm run demo:month-close [-- --users 10000]`: the billing talk's month close on jetflow.
 *
 * A nats-server (temp store), an engine and a worker in this process. Every customer is an item
 * of batch `close-<month>` (workflow `monthCloseUser`): invoice → charge → email, or an account
 * hold when the card is declined. The payment provider is throttled (at most 4 charges in
 * flight, the `payments` queue's `maxInFlight`) and flaky (about 1 call in 8 fails and is
 * retried), and the world changes between enqueue and run: some customers pay part of their
 * balance after the invoice, so the charge re-reads the balance and charges what is due now
 * (nothing, if they paid it all). When the batch completes, its callback starts `monthReport`,
 * which builds the report. Progress is printed every second; then the final table.
 */
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { NatsServer } from '../../test/harness/nats-server.js';
import { shardMapping } from '../../src/contracts/subjects.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry } from '../../src/engine/registry.js';
import { createWorker } from '../../src/worker/index.js';
import { Client } from '../../src/client/index.js';
import { RetryableError, TerminalError } from '../../src/errors.js';
import type { Logger } from '../../src/engine/ports.js';
import { monthCloseWorkflows } from './workflows.js';

const { values } = parseArgs({
  options: {
    users: { type: 'string', default: '1000' },
    month: { type: 'string', default: '2026-11' },
  },
});
const USERS = Number(values.users);
const MONTH = values.month;
const SHARDS = 8;
const prefix = 'mc';
const print = (s: string) => process.stdout.write(s + '\n');
const quiet: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: (o, m) => console.error(m, o),
  child: () => quiet,
};

// The fake world: balances, cards, payments, emails, holds (what the activities change).
const balance = new Map<string, number>();
const world = {
  charged: 0,
  chargedAmount: 0,
  emails: 0,
  holds: 0,
  providerErrors: 0,
  changed: 0,
  nothingDue: 0,
};
const declines = (u: number) => u % 50 === 7; // 2% of the cards are declined
const paysMidway = (u: number) => u % 20 === 3; // 5% pay (part of) their balance after the invoice
let inFlight = 0;
let maxInFlight = 0;

const activities = {
  generateInvoice: ({ userId }: { userId: string }) => {
    const u = Number(userId.slice(1));
    const amount = 10 + (u % 90);
    balance.set(userId, amount);
    // The world changes after the invoice: some customers pay before the charge runs.
    if (paysMidway(u)) {
      setTimeout(() => {
        balance.set(userId, u % 40 === 3 ? 0 : Math.round(amount / 2));
        world.changed++;
      }, 5);
    }
    return { invoiceId: `inv-${MONTH}-${userId}`, amount };
  },
  charge: async ({ userId, invoice }: { userId: string; invoice: { amount: number } }) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    try {
      await new Promise((r) => setTimeout(r, 10 + Math.random() * 20)); // the provider's latency
      if (Math.random() < 0.125) {
        world.providerErrors++;
        throw new RetryableError('payment provider: 503');
      }
      const u = Number(userId.slice(1));
      if (declines(u)) throw new TerminalError('card declined', { details: { userId } });
      // Re-read the balance: the invoice's amount may be stale.
      const due = balance.get(userId) ?? invoice.amount;
      if (due !== invoice.amount && due === 0) {
        world.nothingDue++;
        return { charged: 0 };
      }
      world.charged++;
      world.chargedAmount += due;
      balance.set(userId, 0);
      return { charged: due };
    } finally {
      inFlight--;
    }
  },
  sendEmail: () => {
    world.emails++;
    return { sent: true };
  },
  placeHold: ({ userId }: { userId: string }) => {
    world.holds++;
    return { hold: `hold-${userId}` };
  },
  buildReport: (b: { id: string; outcome: string; counts: Record<string, number> }) => ({
    batch: b.id,
    outcome: b.outcome,
    users: b.counts.total,
    succeeded: b.counts.succeeded,
    failed: b.counts.failed,
    charged: world.charged,
    chargedAmount: world.chargedAmount,
    nothingDue: world.nothingDue,
    held: world.holds,
    emails: world.emails,
    balanceChangedAfterInvoice: world.changed,
    providerErrorsRetried: world.providerErrors,
    maxChargesInFlight: maxInFlight,
  }),
};

async function main(): Promise<void> {
  const t0 = Date.now();
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const nc = await connect({ servers: server.url });
  const engine = await Engine.create(
    { servers: server.url, prefix, shards: SHARDS, logLevel: 'warn' },
    { registry: createRegistry(monthCloseWorkflows), logger: quiet },
  );
  const worker = await createWorker({
    connection: nc,
    prefix,
    activities,
    queues: ['billing', 'payments', 'email'],
    concurrency: 64,
    queueSettings: { payments: { maxInFlight: 4 } },
  });
  const client = new Client(nc, { prefix, timeoutMs: 30_000 });
  const id = `close-${MONTH}`;
  try {
    print(`month close ${MONTH}: ${USERS} customers, batch ${id}`);
    function* users() {
      for (let u = 0; u < USERS; u++) yield { userId: `u${u}`, month: MONTH };
    }
    let last = 0;
    const progress = async () => {
      const s = await client.batches.status(id);
      const c = s.counts;
      print(
        `  ${((Date.now() - t0) / 1000).toFixed(1)}s submitted ${s.next} running ${c.running} succeeded ${c.succeeded} failed ${c.failed}  ${s.rate ?? 0}/s${s.etaMs !== undefined ? ` eta ${Math.round(s.etaMs / 1000)}s` : ''}`,
      );
      return s;
    };
    await client.batches.create(
      {
        id,
        type: 'monthCloseUser',
        items: users(),
        itemKey: (x) => x.userId,
        onComplete: { start: { type: 'monthReport', id: `report-${MONTH}` } },
      },
      {
        seal: true,
        onProgress: () => {
          if (Date.now() - last > 1_000) {
            last = Date.now();
            void progress();
          }
        },
      },
    );
    for (;;) {
      const s = await progress();
      if (s.state === 'done' && s.notified) break;
      await new Promise((r) => setTimeout(r, 1_000));
    }
    const report = await client.result('monthReport', `report-${MONTH}`, { timeoutMs: 60_000 });
    const r = report as Record<string, unknown>;
    print('');
    print(
      `month report ${MONTH} (built by workflow monthReport/report-${MONTH}, started by the batch's callback)`,
    );
    const rows: [string, unknown][] = [
      ['users', r.users],
      ['charged', `${String(r.charged)} (${String(r.chargedAmount)} in total)`],
      ['nothing due (paid after the invoice)', r.nothingDue],
      ['held (card declined)', r.held],
      ['failed workflows', r.failed],
      ['receipts emailed', r.emails],
      ['balance changed after invoice', r.balanceChangedAfterInvoice],
      ['provider errors retried', r.providerErrorsRetried],
      ['max charges in flight (limit 4)', r.maxChargesInFlight],
      ['batch outcome', r.outcome],
      ['wall time', `${((Date.now() - t0) / 1000).toFixed(1)} s`],
    ];
    const w = Math.max(...rows.map(([k]) => k.length));
    for (const [k, v] of rows) print(`  ${k.padEnd(w)}  ${String(v)}`);
  } finally {
    await worker.close();
    await engine.close();
    await nc.close();
    await server.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
