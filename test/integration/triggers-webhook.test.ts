/**
 * Webhook triggers end to end: `jetflow http`'s `POST /hooks/{trigger}` with a real HTTP client,
 * a real engine and nats-server. A valid signature is stored (202) and starts the workflow once;
 * a wrong, a missing and a stale signature get 401 and store nothing; a replayed request is a
 * duplicate; with NATS down the request gets 503, and its retry after the restart starts the
 * workflow once. A webhook `signal` trigger applies each request's event once, also when the
 * sender delivers it again after the hooks stream's dedup window (a second engine with a 1 s
 * window).
 */
import { createHmac } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Validator } from '@seriousme/openapi-schema-validator';
import { jetstreamManager } from '@nats-io/jetstream';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import type { TriggerLedgerEntry } from '../../src/engine/triggers.js';
import { Client } from '../../src/client/index.js';
import { startHttp, type HttpServer } from '../../src/http/server.js';
import { triggerWorkflows } from '../fixtures/trigger-workflows.js';
import type { Engine } from '../../src/host/engine.js';
import { topologyNames } from '../../src/nats/topology.js';
import { seen, sleep, startedCounts, until } from '../chaos/triggers-scenario.js';

const env = useServer();
const SECRET_ENV = 'JF_TEST_HOOK_SECRET';
const secret = 'hook-secret-1';
const prefix = uniquePrefix();
let engine: Engine;
let client: Client;
let http: HttpServer;

beforeAll(async () => {
  process.env[SECRET_ENV] = secret;
  engine = await startEngine(env.server.url, prefix, {
    workflows: triggerWorkflows({
      JF_T_HOOK_SECRET_ENV: SECRET_ENV,
      JF_T_PAYHOOK_SECRET_ENV: SECRET_ENV,
    }),
  });
  client = await Client.connect(env.server.url, { prefix, timeoutMs: 2_000 });
  http = await startHttp({ client, port: 0 });
});
afterAll(async () => {
  await http?.close();
  await client?.close();
  await engine?.close();
});

const sign = (body: string, ts: number, key = secret) =>
  `sha256=${createHmac('sha256', key).update(`${ts}.${body}`).digest('hex')}`;

async function post(body: string, h: Record<string, string>) {
  const r = await fetch(`${http.url}/hooks/order-hook`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...h },
    body,
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

async function stored(): Promise<number> {
  const jsm = await jetstreamManager(env.nc);
  return (await jsm.streams.info(topologyNames(prefix).hooksStream)).state.messages;
}

describe('webhook triggers', () => {
  it('valid, wrong, missing, stale and replayed signatures', async () => {
    const now = Math.floor(Date.now() / 1000);
    const body = JSON.stringify({ orderId: 'w1' });
    const ok = await post(body, { 'x-signature': sign(body, now), 'x-timestamp': String(now) });
    expect(ok).toMatchObject({ status: 202, body: { trigger: 'order-hook', duplicate: false } });
    const before = await stored();
    expect(before).toBe(1);
    const wrong = await post(body, {
      'x-signature': sign(body, now, 'other'),
      'x-timestamp': String(now),
    });
    expect(wrong.status).toBe(401);
    expect(wrong.body.code).toBe('unauthorized');
    expect((await post(body, { 'x-timestamp': String(now) })).status).toBe(401);
    // A captured request replayed after the tolerance: refused.
    const old = now - 1_000;
    expect(
      (await post(body, { 'x-signature': sign(body, old), 'x-timestamp': String(old) })).status,
    ).toBe(401);
    expect(await stored()).toBe(before);
    // The same signed request again (a sender's retry): a harmless duplicate.
    const again = await post(body, { 'x-signature': sign(body, now), 'x-timestamp': String(now) });
    expect(again).toMatchObject({ status: 202, body: { duplicate: true } });
    const counts = await until('w1 started', async () => {
      const m = await startedCounts(env.nc, prefix, 'torder');
      return m.has('w1') ? m : undefined;
    });
    expect(counts.get('w1')).toBe(1);
    // Unknown trigger: 404.
    const r = await fetch(`${http.url}/hooks/nope`, { method: 'POST', body: '{}' });
    expect(r.status).toBe(404);
  });

  it('the OpenAPI document lists the webhook routes with their signature headers, valid 3.1', async () => {
    const r = await fetch(`${http.url}/v1/openapi.json`);
    const doc = (await r.json()) as {
      paths: Record<
        string,
        {
          post?: {
            parameters: { name: string; in: string; required: boolean }[];
            responses: Record<string, unknown>;
          };
        }
      >;
    };
    const generic = doc.paths['/hooks/{trigger}']!.post!;
    expect(generic.parameters).toEqual([
      expect.objectContaining({ name: 'trigger', in: 'path', required: true }),
    ]);
    expect(Object.keys(generic.responses).sort()).toEqual([
      '202',
      '400',
      '401',
      '404',
      '413',
      '503',
    ]);
    const mine = doc.paths['/hooks/order-hook']!.post!;
    expect(mine.parameters.map((p) => [p.name, p.in, p.required])).toEqual([
      ['x-signature', 'header', true],
      ['x-timestamp', 'header', true],
    ]);
    const v = await new Validator().validate(doc);
    expect(v.errors).toBeUndefined();
    expect(v.valid).toBe(true);
    // A trigger name that is not a subject token: 400 from the same schema.
    const bad = await fetch(`${http.url}/hooks/a.b`, { method: 'POST', body: '{}' });
    expect(bad.status).toBe(400);
  });

  it('signal mapping: a valid request is applied once; a replay is a duplicate; a bad signature applies nothing', async () => {
    await client.start('tpay', 'h1', {});
    const hook = (body: string, sig: string) =>
      fetch(`${http.url}/hooks/pay-hook`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-hub-signature-256': sig },
        body,
      }).then(async (r) => ({
        status: r.status,
        body: (await r.json()) as Record<string, unknown>,
      }));
    const hsign = (body: string, key = secret) =>
      `sha256=${createHmac('sha256', key).update(body).digest('hex')}`;
    const b1 = JSON.stringify({ orderId: 'h1', n: 1 });
    const b2 = JSON.stringify({ orderId: 'h1', n: 2 });
    const first = await hook(b1, hsign(b1));
    expect(first).toMatchObject({ status: 202, body: { trigger: 'pay-hook', duplicate: false } });
    expect((await hook(b1, hsign(b1))).body).toMatchObject({
      duplicate: true,
      seq: first.body.seq,
    });
    expect((await hook(b2, hsign(b2, 'wrong'))).status).toBe(401);
    expect((await hook(b2, 'sha256=')).status).toBe(401);
    const second = await hook(b2, hsign(b2));
    expect(second).toMatchObject({ status: 202, body: { duplicate: false } });
    expect(
      await until('both applied', async () => {
        const s = await seen(client, 'h1');
        return s.length >= 2 ? s : undefined;
      }),
    ).toEqual([1, 2]);
    const trace = (seq: unknown) =>
      client
        .triggers<{ entries: TriggerLedgerEntry[] }>('trace', { name: 'pay-hook', seq })
        .then((r) => r.entries.map((e) => [e.outcome, e.id]));
    await until('the ledger', async () =>
      (await trace(second.body.seq)).length > 0 ? true : undefined,
    );
    expect(await trace(first.body.seq)).toEqual([['signaled', 'h1']]);
    expect(await trace(second.body.seq)).toEqual([['signaled', 'h1']]);
    await sleep(500);
    expect(await seen(client, 'h1')).toEqual([1, 2]);
  });

  it('NATS down: 503; the retry after the restart starts the workflow once', async () => {
    const now = Math.floor(Date.now() / 1000);
    const body = JSON.stringify({ orderId: 'w2' });
    const h = { 'x-signature': sign(body, now), 'x-timestamp': String(now) };
    await env.server.kill();
    const down = await post(body, h);
    expect(down.status).toBe(503);
    await env.server.restart();
    const retry = await until('stored after the restart', async () => {
      const r = await post(body, h);
      return r.status === 202 ? r : undefined;
    });
    expect(retry.status).toBe(202);
    const counts = await until('w2 started', async () => {
      const m = await startedCounts(env.nc, prefix, 'torder');
      return m.has('w2') ? m : undefined;
    });
    expect(counts.get('w2')).toBe(1);
  });
});

describe('webhook signal trigger after the dedup window', () => {
  it('the sender delivers a request again after the window: stored again, applied once (duplicate in the ledger)', async () => {
    const p2 = uniquePrefix();
    const e2 = await startEngine(env.server.url, p2, {
      workflows: triggerWorkflows({ JF_T_PAYHOOK_SECRET_ENV: SECRET_ENV }),
      duplicateWindowMs: 1_000,
    });
    const c2 = await Client.connect(env.server.url, { prefix: p2, timeoutMs: 2_000 });
    const h2 = await startHttp({ client: c2, port: 0 });
    try {
      await c2.start('tpay', 'h9', {});
      const body = JSON.stringify({ orderId: 'h9', n: 7 });
      const sig = `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`;
      const send = () =>
        fetch(`${h2.url}/hooks/pay-hook`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-hub-signature-256': sig },
          body,
        }).then(async (r) => ({ status: r.status, body: (await r.json()) as { seq: number } }));
      const a = await send();
      expect(a.status).toBe(202);
      await until('applied', async () => ((await seen(c2, 'h9')).length > 0 ? true : undefined));
      await sleep(1_500);
      const b = await send();
      // The server forgot the id: a second stream message ...
      expect(b.status).toBe(202);
      expect(b.body.seq).toBeGreaterThan(a.body.seq);
      const trace = (seq: number) =>
        c2
          .triggers<{ entries: TriggerLedgerEntry[] }>('trace', { name: 'pay-hook', seq })
          .then((r) => r.entries.map((e) => e.outcome));
      // ... that the record knows: a duplicate, not applied twice.
      expect(
        await until('the second decided', async () => {
          const o = await trace(b.body.seq);
          return o.length > 0 ? o : undefined;
        }),
      ).toEqual(['duplicate']);
      expect(await trace(a.body.seq)).toEqual(['signaled']);
      expect(await seen(c2, 'h9')).toEqual([7]);
    } finally {
      await h2.close();
      await c2.close();
      await e2.close();
    }
  });
});
