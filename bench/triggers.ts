/**
 * Trigger throughput: `npm run bench:triggers`. Stream messages → started workflows per second,
 * as a ratio to the start rate of workload 1's path (`client.start`, closed loop at concurrency
 * 64), same engine, same run. One engine process (the trigger fixture's `torder`, whose start
 * trigger `orders` reads a user stream), one nats-server. Per round: N starts through the client;
 * then N order messages published while the trigger's consumer is paused, the consumer resumed,
 * and the time until every message is acknowledged (each after its workflow's start step replied).
 *
 * Options: --messages N (per round and path; default 2000), --rounds R (default 3), --smoke.
 */
import { parseArgs } from 'node:util';
import { connect, headers } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import type { TriggerRow } from '../src/engine/triggers.js';
import { spawnTs, stopChild } from './processes.js';
import { round, runClosedLoop } from './peers/common.js';

const { values } = parseArgs({
  options: {
    messages: { type: 'string', default: '2000' },
    rounds: { type: 'string', default: '3' },
    smoke: { type: 'boolean', default: false },
  },
});
const N = values.smoke ? 200 : Number(values.messages);
const ROUNDS = values.smoke ? 1 : Number(values.rounds);
const prefix = 'bencht';
const STREAM = 'BENCH_ORDERS';
const log = (s: string) => process.stderr.write(`[bench:triggers] ${s}\n`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const server = await NatsServer.start({ mappings: shardMapping(16) });
  const nc = await connect({ servers: server.url });
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  await jsm.streams.add({ name: STREAM, subjects: ['bench.orders.>'] });
  process.env.JF_T_ORDERS_STREAM = STREAM;
  process.env.JF_T_ORDERS_SUBJECT = 'bench.orders.>';
  const engine = await spawnTs(
    'src/cli/main.ts',
    [
      'engine',
      '--nats-url',
      server.url,
      '--prefix',
      prefix,
      '--shards',
      '16',
      '--workflows',
      'test/fixtures/trigger-workflows.ts',
    ],
    '"engine started"',
  );
  const client = new Client(nc, { prefix, timeoutMs: 30_000 });
  const rows: { round: number; path: string; perSec: number }[] = [];
  try {
    // The trigger is held (its consumer exists) before anything is measured.
    for (;;) {
      const r = await client.triggers<{ triggers: TriggerRow[] }>('list').catch(() => undefined);
      if (r?.triggers.some((t) => t.name === 'orders' && t.holder)) break;
      await sleep(200);
    }
    const consumer = () => jsm.consumers.info(STREAM, 'jetflow-trigger-orders');
    for (let r = 1; r <= ROUNDS; r++) {
      const res = await runClosedLoop(
        N,
        64,
        (i) =>
          client.start('torder', `c${r}-${i}`, { orderId: `c${r}-${i}` }).then(() => undefined),
        600_000,
      );
      const viaClient = round(N / (res.wallMs / 1000), 1);
      rows.push({ round: r, path: 'client.start', perSec: viaClient });
      await client.triggers('pause', { name: 'orders' });
      const pubs: Promise<unknown>[] = [];
      for (let i = 0; i < N; i++) {
        const h = headers();
        h.set('Nats-Msg-Id', `t${r}-${i}`);
        pubs.push(
          js.publish(`bench.orders.t${r}-${i}`, JSON.stringify({ orderId: `t${r}-${i}` }), {
            headers: h,
          }),
        );
        if (pubs.length >= 256) await Promise.all(pubs.splice(0));
      }
      await Promise.all(pubs);
      const t0 = performance.now();
      await client.triggers('resume', { name: 'orders' });
      for (;;) {
        const ci = await consumer();
        if (ci.num_pending === 0 && ci.num_ack_pending === 0) break;
        await sleep(20);
      }
      const viaTrigger = round(N / ((performance.now() - t0) / 1000), 1);
      rows.push({ round: r, path: 'trigger', perSec: viaTrigger });
      log(JSON.stringify({ round: r, viaClient, viaTrigger }));
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const pick = (path: string) => median(rows.filter((x) => x.path === path).map((x) => x.perSec));
    console.log(
      JSON.stringify(
        {
          messagesPerRound: N,
          rounds: ROUNDS,
          smoke: values.smoke,
          clientStartsPerSec: pick('client.start'),
          triggerStartsPerSec: pick('trigger'),
          triggerOverClient: round(pick('trigger') / pick('client.start'), 2),
        },
        null,
        2,
      ),
    );
  } finally {
    await stopChild(engine);
    await nc.close();
    await server.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
