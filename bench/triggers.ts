/**
 * Trigger throughput: `npm run bench:triggers`. Stream messages → started workflows per second,
 * as a ratio to the start rate of workload 1's path (`client.start`, closed loop at concurrency
 * 64), same engine, same run. One engine process (the trigger fixture's `torder`, whose start
 * trigger `orders` reads a user stream), one nats-server. Per round: N starts through the client;
 * then N order messages published while the trigger's consumer is paused, the consumer resumed,
 * and the time until every message is acknowledged (each after its workflow's start step replied).
 *
 * `npm run bench` runs the same measurement ({@link runTriggerBench}) on its own server.
 * Options: --messages N (per round and path; default 2000), --rounds R (default 3), --smoke.
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { connect, headers } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import type { TriggerRow } from '../src/engine/triggers.js';
import { spawnTs, stopChild } from './processes.js';
import { round, runClosedLoop } from './peers/common.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface TriggerBenchOptions {
  /** A running nats-server (with `shardMapping(shards)`); the bench uses its own prefix on it. */
  serverUrl: string;
  shards: number;
  /** Messages per round and path. */
  messages: number;
  rounds: number;
  log?: (line: string) => void;
}

export interface TriggerBenchResult {
  messagesPerRound: number;
  rounds: number;
  /** Median over rounds: `client.start` of `torder` at concurrency 64 (workload 1's path). */
  clientStartsPerSec: number;
  /** Median over rounds: stream messages → started workflows, through the trigger. */
  triggerStartsPerSec: number;
  triggerOverClient: number;
}

/** Spawns its engine (prefix `bencht`, stream `BENCH_ORDERS`), measures, stops it. */
export async function runTriggerBench(o: TriggerBenchOptions): Promise<TriggerBenchResult> {
  const N = o.messages;
  const prefix = 'bencht';
  const STREAM = 'BENCH_ORDERS';
  const log = o.log ?? (() => undefined);
  const nc = await connect({ servers: o.serverUrl });
  const jsm = await jetstreamManager(nc);
  const js = jetstream(nc);
  await jsm.streams.add({ name: STREAM, subjects: ['bench.orders.>'] });
  const engine = await spawnTs(
    'src/cli/main.ts',
    [
      'engine',
      '--nats-url',
      o.serverUrl,
      '--prefix',
      prefix,
      '--shards',
      String(o.shards),
      '--workflows',
      'test/fixtures/trigger-workflows.ts',
    ],
    '"engine started"',
    [],
    { JF_T_ORDERS_STREAM: STREAM, JF_T_ORDERS_SUBJECT: 'bench.orders.>' },
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
    for (let r = 1; r <= o.rounds; r++) {
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
    return {
      messagesPerRound: N,
      rounds: o.rounds,
      clientStartsPerSec: pick('client.start'),
      triggerStartsPerSec: pick('trigger'),
      triggerOverClient: round(pick('trigger') / pick('client.start'), 2),
    };
  } finally {
    await stopChild(engine);
    await nc.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      messages: { type: 'string', default: '2000' },
      rounds: { type: 'string', default: '3' },
      smoke: { type: 'boolean', default: false },
    },
  });
  const server = await NatsServer.start({ mappings: shardMapping(16) });
  try {
    const r = await runTriggerBench({
      serverUrl: server.url,
      shards: 16,
      messages: values.smoke ? 200 : Number(values.messages),
      rounds: values.smoke ? 1 : Number(values.rounds),
      log: (s) => process.stderr.write(`[bench:triggers] ${s}\n`),
    });
    console.log(JSON.stringify({ ...r, smoke: values.smoke }, null, 2));
  } finally {
    await server.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
