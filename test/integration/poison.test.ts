/**
 * Steps that can never succeed (core review H3) on a server with a small `max_payload`: a public
 * request that would make the record too large gets an error reply (`payload_too_large`) and
 * stores nothing; a result that would is turned into a failed workflow; nothing is retried
 * forever and the engine keeps serving the workflow and its shard.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kvm } from '@nats-io/kv';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';

import { Client, WorkflowFailedError } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { topologyNames } from '../../src/nats/topology.js';
import type { ErrorReply } from '../../src/contracts/wire.js';

const MAX_PAYLOAD = 65_536;
const env = useServer({ maxPayload: MAX_PAYLOAD });
const prefix = uniquePrefix();
let engine: Engine;
let worker: Worker;
let client: Client;

beforeAll(async () => {
  engine = await startEngine(env.server.url, prefix);
  worker = await createWorker({
    connection: env.nc,
    prefix,
    activities: { addOne: () => 'z'.repeat(30_000) }, // fits a message, not the final record
  });
  client = new Client(env.nc, { prefix, timeoutMs: 10_000 });
});
afterAll(async () => {
  await worker?.close();
  await engine?.close();
});

async function revision(type: string, id: string): Promise<number | undefined> {
  const kv = await new Kvm(env.nc).open(topologyNames(prefix).bucket);
  return (await kv.get(`${type}.${id}`))?.revision;
}

describe('steps that can never succeed', () => {
  it('a start whose record would exceed max_payload gets a payload_too_large reply and stores nothing', async () => {
    // Body 40 KB < 64 KB; the record holds it twice (context and the `started` notification).
    await expect(
      client.start('counter', 'big-1', { label: 'x'.repeat(40_000) }),
    ).rejects.toMatchObject({ code: 'payload_too_large' });
    expect(await revision('counter', 'big-1')).toBeUndefined();
    // A tiny body that spawns 5000 activities: the record is what is too large.
    const r = await env.nc.request(
      `${prefix}.start.fanout.x`,
      JSON.stringify({ input: { n: 5000 } }),
      { timeout: 10_000 },
    );
    expect(r.json<ErrorReply>().error.code).toBe('payload_too_large');
    expect(r.headers?.get('Jf-Error')).toBe('payload_too_large');
    expect(await revision('fanout', 'x')).toBeUndefined();
    // The engine is not wedged.
    await client.start('counter', 'small-1');
    expect(engine.processor.stats.transientErrors).toBe(0);
  });

  it('a signal that would grow the record past max_payload is rejected; the record is unchanged and the workflow goes on', async () => {
    await client.start('counter', 'grow-1', { label: 'l'.repeat(25_000) });
    const before = await revision('counter', 'grow-1');
    await expect(
      client.signal('counter', 'grow-1', { type: 'SIG', n: 'n'.repeat(45_000) }),
    ).rejects.toMatchObject({ code: 'payload_too_large' });
    expect(await revision('counter', 'grow-1')).toBe(before);
    const q = await client.query('counter', 'grow-1');
    expect(q.status).toBe('running');
    expect((q.context as { seq: unknown[] }).seq).toEqual([]);
    await client.signal('counter', 'grow-1', { type: 'SIG', n: 1 });
    expect(((await client.query('counter', 'grow-1')).context as { seq: unknown[] }).seq).toEqual([
      1,
    ]);
    expect(engine.processor.stats.transientErrors).toBe(0);
  });

  it('an activity result that would make the record too large fails the workflow with the error', async () => {
    await client.start('foreign', 'huge-out', { x: 1 });
    const failed = await client.result('foreign', 'huge-out', { timeoutMs: 15_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(failed).toBeInstanceOf(WorkflowFailedError);
    expect(String(failed)).toMatch(/max_payload/);
    // The query of a failed workflow is an answer (with the workflow's error), not an error.
    const q = await client.query('foreign', 'huge-out');
    expect(q.status).toBe('failed');
    expect(q.error?.code).toBe('payload_too_large');
    expect(engine.processor.stats.poisoned).toBe(1);
    expect(engine.processor.stats.transientErrors).toBe(0);
  });
});
