/**
 * `jetflow status` tells the truth about shard pins on a 3-node cluster (M1). The server drops a
 * shard's pin on its own in several ways — an operator's unpin, a consumer leader change, a
 * server restart — and an idle shard gets no message that would make the holder notice. Each
 * holder compares the server's pin with its own and re-claims, so after each of those the status
 * shows every shard pinned to the engine that holds it, with no traffic at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { NatsCluster } from '../harness/nats-server.js';
import { EngineProcess, uniquePrefix } from '../harness/jetflow.js';
import { shardMapping } from '../../src/contracts/subjects.js';
import { systemStatus, type SystemStatus } from '../../src/nats/status.js';
import { topologyNames } from '../../src/nats/topology.js';

const SHARDS = 8;
const FAILOVER_MS = 4_000;

let cluster: NatsCluster;
let nc: NatsConnection;
let jsm: JetStreamManager;
const engines: EngineProcess[] = [];
const prefix = uniquePrefix();
const names = topologyNames(prefix);

beforeAll(async () => {
  cluster = await NatsCluster.start({ mappings: shardMapping(SHARDS) });
  nc = await connect({ servers: cluster.urls, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
  jsm = await jetstreamManager(nc);
}, 120_000);
afterAll(async () => {
  await Promise.all(engines.map((e) => e.kill()));
  await nc?.close();
  await cluster?.stop();
});

async function status(): Promise<SystemStatus | undefined> {
  return systemStatus(nc, prefix, SHARDS, FAILOVER_MS / 2).catch(() => undefined);
}

/** Every shard held by one engine and pinned by the server to that engine. */
async function agrees(what: string, timeoutMs = 30_000): Promise<number> {
  const t0 = Date.now();
  let st: SystemStatus | undefined;
  for (;;) {
    st = await status();
    if (
      st?.engines.length === 2 &&
      st.shards.every(
        (s) => s.claimedBy.length === 1 && s.pinnedClientId && s.pinnedEngine === s.holder,
      )
    )
      return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(
        `after ${what}, status and the server's pins still disagree: ${JSON.stringify(
          st?.shards.map((s) => [s.shard, s.holder, s.pinnedClientId, s.pinnedEngine]),
        )}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function pinOf(shard: number): Promise<string | undefined> {
  const pins = (await status())?.shards;
  return pins?.find((s) => s.shard === shard)?.pinnedClientId;
}

describe('status agrees with the server pins on a 3-node cluster', () => {
  it('after an unpin, a consumer leader step-down and a node restart', async () => {
    for (let i = 0; i < 2; i++) {
      const e = new EngineProcess(cluster.urls.join(','), prefix, {
        shards: SHARDS,
        replicas: 3,
        failoverMs: FAILOVER_MS,
      });
      engines.push(e);
      await e.start();
    }
    const took: Record<string, number> = { start: await agrees('start') };

    const before = await pinOf(0);
    await jsm.consumers.unpin(names.inboxStream, names.shardConsumer(0), 'engines');
    expect(await pinOf(0)).not.toBe(before); // the unpin took effect
    took.unpin = await agrees('an unpin of shard 0');

    for (const s of [1, 2]) {
      const r = await nc.request(
        `$JS.API.CONSUMER.LEADER.STEPDOWN.${names.inboxStream}.${names.shardConsumer(s)}`,
        undefined,
        { timeout: 10_000 },
      );
      expect(r.json<{ success?: boolean }>().success).toBe(true);
    }
    took.stepdown = await agrees('a consumer leader step-down of shards 1 and 2');

    await cluster.servers[1]!.restart();
    took.restart = await agrees('a node restart', 60_000);
    console.log('pins agree again after (ms)', JSON.stringify(took));
  }, 240_000);
});
