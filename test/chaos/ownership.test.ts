/**
 * Shard ownership holds still when nothing happens: two idle engines at the minimum `failoverMs`
 * keep one assignment for a whole minute (H4: heartbeats used to wait behind shard releases, and
 * two idle engines handed shards back and forth forever), and an engine whose host clock is off
 * by seconds neither sees the others as dead nor is seen as dead (L4: liveness compared a host's
 * clock with the server's timestamps).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { NatsServer } from '../harness/nats-server.js';
import { EngineProcess, repoRoot, startServer, uniquePrefix } from '../harness/jetflow.js';
import { systemStatus, type SystemStatus } from '../../src/nats/status.js';
import { ENGINE_MIN_FAILOVER_MS } from '../../src/config.js';

const SHARDS = 16;

let server: NatsServer;
let nc: NatsConnection;
const engines: EngineProcess[] = [];

beforeAll(async () => {
  server = await startServer({ shards: SHARDS });
  nc = await connect({ servers: server.url });
});
afterAll(async () => {
  await Promise.all(engines.map((e) => e.kill()));
  await nc?.close();
  await server?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Shards per engine name, e.g. `e1:0,3,5|e2:1,2,4`; `pinned` when every pin is the holder's. */
function view(st: SystemStatus): { assignment: string; pinned: boolean; single: boolean } {
  return {
    assignment: st.engines.map((e) => `${e.id}:${e.shards.join(',')}`).join('|'),
    pinned: st.shards.every((s) => s.pinnedClientId && s.pinnedEngine === s.holder),
    single: st.shards.every((s) => s.claimedBy.length === 1),
  };
}

async function settle(prefix: string, n: number, failoverMs: number): Promise<SystemStatus> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const st = await systemStatus(nc, prefix, SHARDS, failoverMs / 2);
    const v = view(st);
    const counts = st.engines.map((e) => e.shards.length);
    if (
      st.engines.length === n &&
      v.pinned &&
      v.single &&
      Math.max(...counts) - Math.min(...counts) <= 1
    )
      return st;
    if (Date.now() > deadline)
      throw new Error(`not settled on ${n} engines: ${JSON.stringify(v)} ${counts.join('/')}`);
    await sleep(100);
  }
}

function engine(prefix: string, failoverMs: number, env?: Record<string, string>): EngineProcess {
  const e = new EngineProcess(server.url, prefix, { shards: SHARDS, failoverMs, env });
  engines.push(e);
  return e;
}

describe('shard ownership without load', () => {
  it(`two idle engines at the minimum failoverMs (${ENGINE_MIN_FAILOVER_MS} ms) keep one assignment for 60 s`, async () => {
    const prefix = uniquePrefix();
    const failoverMs = ENGINE_MIN_FAILOVER_MS;
    await engine(prefix, failoverMs).start();
    await engine(prefix, failoverMs).start();
    const first = view(await settle(prefix, 2, failoverMs));
    const changes: string[] = [];
    let samples = 0;
    const end = Date.now() + 60_000;
    while (Date.now() < end) {
      await sleep(250);
      const st = await systemStatus(nc, prefix, SHARDS, failoverMs / 2);
      samples++;
      const v = view(st);
      if (v.assignment !== first.assignment) changes.push(`${Date.now()}: ${v.assignment}`);
    }
    const last = view(await systemStatus(nc, prefix, SHARDS, failoverMs / 2));
    console.log('idle stability', JSON.stringify({ samples, changes: changes.length }));
    expect(changes).toEqual([]);
    expect(last.pinned).toBe(true);
    await Promise.all(engines.splice(0).map((e) => e.stop()));
  }, 120_000);

  it('an engine whose clock is 5 s ahead shares the shards with the others, and no shard moves', async () => {
    const prefix = uniquePrefix();
    const failoverMs = 4_000;
    const skew = {
      NODE_OPTIONS: `--import ${pathToFileURL(resolve(repoRoot, 'test/fixtures/clock-skew.mjs')).href}`,
      JETFLOW_TEST_CLOCK_OFFSET_MS: '5000',
    };
    await engine(prefix, failoverMs).start();
    await engine(prefix, failoverMs, skew).start();
    const first = view(await settle(prefix, 2, failoverMs));
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      await sleep(250);
      const v = view(await systemStatus(nc, prefix, SHARDS, failoverMs / 2));
      expect(v.single).toBe(true);
      expect(v.assignment).toBe(first.assignment);
    }
    await Promise.all(engines.splice(0).map((e) => e.stop()));
  }, 60_000);
});
