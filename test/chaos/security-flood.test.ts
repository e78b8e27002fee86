/**
 * Flood (issue 17 acceptance): 10,000 malformed messages on every subject a `service` and a
 * `worker` may publish to, sent with those roles' credentials (the server configured by
 * `jetflow auth`), while legitimate workflows run. The engine stays up, no stored record of an
 * idle workflow changes, and every legitimate workflow completes. `npm run soak:security`;
 * FLOOD_N overrides the count per subject.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { jetstreamManager } from '@nats-io/jetstream';
import { NatsServer } from '../harness/nats-server.js';
import { quietLogger } from '../harness/jetflow.js';
import { authConfig, type Role } from '../../src/security/auth.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry } from '../../src/engine/registry.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { pack } from '../../src/contracts/codec.js';
import { createKvRecordStore } from '../../src/nats/store.js';
import { topologyNames } from '../../src/nats/topology.js';
import { workflows } from '../fixtures/workflows.js';

const N = Number(process.env.FLOOD_N ?? 10_000);
const SHARDS = 4;
const LEGIT = 200;
const IDLE = 50;
const A = authConfig({
  account: 'FLOOD',
  prefix: 'wf',
  shards: SHARDS,
  types: ['chain', 'counter'],
  queues: ['inc'],
});
const auth = (role: Role) => ({
  authenticator: nkeyAuthenticator(new TextEncoder().encode(A.users[role].seed)),
});
const names = topologyNames('wf');

let server: NatsServer;
let engine: Engine;
let worker: Worker;
const conns: NatsConnection[] = [];

beforeAll(async () => {
  server = await NatsServer.start({
    extraConfig: `accounts {\n${A.account}\n}`,
    connect: auth('engine'),
  });
  engine = await Engine.create(
    {
      servers: server.url,
      prefix: 'wf',
      shards: SHARDS,
      failoverMs: 2_000,
      journalMaxBytes: 256 << 20,
      eventsMaxBytes: 64 << 20,
    },
    { registry: createRegistry(workflows), logger: quietLogger, connection: auth('engine') },
  );
  const wnc = await connect({ servers: server.url, ...auth('worker') });
  conns.push(wnc);
  worker = await createWorker({
    connection: wnc,
    prefix: 'wf',
    concurrency: 50,
    activities: { inc: (x: unknown) => (x as { x: number }).x + 1 },
  });
}, 60_000);

afterAll(async () => {
  await worker?.close();
  await engine?.close();
  for (const nc of conns) await nc.close().catch(() => undefined);
  await server?.stop();
});

/**
 * Malformed bodies of every kind: bytes, bad JSON, bad msgpack, wrong shapes, forged fields. With
 * `strict`, only bodies no verb accepts (an empty body or any JSON object is a valid cancel).
 */
function body(i: number, strict = false): Uint8Array | string {
  const k = strict ? [0, 1, 3, 5, 7][i % 5]! : i % 8;
  switch (k) {
    case 0:
      return crypto.getRandomValues(new Uint8Array(1 + (i % 300)));
    case 1:
      return '{"input":';
    case 2:
      return '';
    case 3:
      return pack({ taskId: `chain.l${i % LEGIT}.1.x`, actorId: 'x', ok: true, output: 666 });
    case 4:
      return JSON.stringify({ type: 'xstate.done.actor.0', output: 'forged' });
    case 5:
      return pack([1, 2, { deep: 'x'.repeat(i % 2000) }]);
    case 6:
      return JSON.stringify({ type: 'NOT_AN_EVENT', n: i });
    default:
      return new Uint8Array([0xc1]); // never valid msgpack
  }
}

async function flood(
  nc: NatsConnection,
  subject: (i: number) => string,
  strict: boolean,
): Promise<void> {
  for (let i = 0; i < N; i++) {
    nc.publish(subject(i), body(i, strict));
    if (i % 500 === 499) await nc.flush();
  }
  await nc.flush();
}

describe('security flood', () => {
  it(
    `${N} malformed messages per service and worker subject: engine up, idle records unchanged, legitimate workflows complete`,
    { timeout: 900_000 },
    async () => {
      const snc = await connect({ servers: server.url, ...auth('service') });
      conns.push(snc);
      const client = new Client(snc, { prefix: 'wf' });
      for (let i = 0; i < IDLE; i++) await client.start('counter', `idle${i}`);
      // The records, read as the engine can (the service role has no access to the bucket).
      const enc = await connect({ servers: server.url, ...auth('engine') });
      conns.push(enc);
      const store = createKvRecordStore(await new Kvm(enc).open(names.bucket));
      const revisions = new Map<string, number>();
      for (let i = 0; i < IDLE; i++)
        revisions.set(`idle${i}`, (await store.get('counter', `idle${i}`))!.revision);

      const wnc = await connect({ servers: server.url, ...auth('worker') });
      conns.push(wnc);
      const started = Date.now();
      // Legitimate workflows, started before and during the flood.
      const legit: Promise<unknown>[] = [];
      for (let i = 0; i < LEGIT / 2; i++) await client.start('chain', `l${i}`, { x: 0 });
      const idle = (i: number) => `idle${i % IDLE}`;
      const floods: [string, NatsConnection, (i: number) => string][] = [
        ['service start', snc, (i) => `wf.start.counter.f${i}`],
        ['service start (existing)', snc, (i) => `wf.start.counter.${idle(i)}`],
        ['service signal', snc, (i) => `wf.signal.counter.${idle(i)}`],
        ['service query', snc, (i) => `wf.query.counter.${idle(i)}`],
        ['service cancel', snc, (i) => `wf.cancel.counter.${idle(i)}`],
        ['service history', snc, (i) => `wf.history.counter.${idle(i)}`],
        ['service search', snc, () => 'wf.search'],
        ['worker result', wnc, (i) => `wf.inbox.result.counter.${idle(i)}`],
        ['worker result (running chains)', wnc, (i) => `wf.inbox.result.chain.l${i % LEGIT}`],
        ['worker task', wnc, (i) => `wf.task.inc.f${i}`],
        ['worker ledger', wnc, (i) => `$KV.wf_attempts.f${i}`],
      ];
      for (const [what, nc, subject] of floods) {
        const t0 = Date.now();
        await flood(nc, subject, /^service (start|cancel)/.test(what));
        console.log(`flood ${what}: ${N} in ${Date.now() - t0} ms`);
        if (what === 'service signal')
          for (let i = LEGIT / 2; i < LEGIT; i++) await client.start('chain', `l${i}`, { x: 0 });
      }
      for (let i = 0; i < LEGIT; i++)
        legit.push(client.result('chain', `l${i}`, { timeoutMs: 600_000 }));
      const results = await Promise.all(legit);
      expect(results).toEqual(Array.from({ length: LEGIT }, () => ({ x: 3 })));
      // Everything sent has been handled: the inbox is empty.
      const jsm = await jetstreamManager(enc);
      const end = Date.now() + 600_000;
      while ((await jsm.streams.info(names.inboxStream)).state.messages > 0) {
        if (Date.now() > end) throw new Error('inbox not drained');
        await new Promise((r) => setTimeout(r, 500));
      }
      console.log(`all ${LEGIT} legitimate workflows completed; ${Date.now() - started} ms`);
      for (let i = 0; i < IDLE; i++) {
        const r = (await store.get('counter', `idle${i}`))!;
        expect({ id: `idle${i}`, rev: r.revision, status: r.record.status }).toEqual({
          id: `idle${i}`,
          rev: revisions.get(`idle${i}`),
          status: 'running',
        });
      }
      // The engine still answers.
      expect((await client.query('counter', 'idle0')).status).toBe('running');
      console.log('steps', JSON.stringify(engine.processor.stats));
    },
  );
});
