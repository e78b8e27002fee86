/**
 * HTTP ingress (`jetflow http`): every route and every error code, through a real HTTP client
 * (fetch) against a real nats-server and engine. Also: a restart of the nats-server under a
 * running HTTP server (503 while it is down, the retry with the same Idempotency-Key applied once).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Validator } from '@seriousme/openapi-schema-validator';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { startEngine, startServer, uniquePrefix } from '../harness/jetflow.js';
import type { NatsServer } from '../harness/nats-server.js';
import { Client } from '../../src/client/index.js';
import { startHttp, type HttpServer, parseWait } from '../../src/http/server.js';
import { order } from '../../actors/order.js';
import type { Engine } from '../../src/host/engine.js';

let server: NatsServer;
let nc: NatsConnection;
let engine: Engine;
let http: HttpServer;
const prefix = uniquePrefix();

beforeAll(async () => {
  server = await startServer();
  nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
  engine = await startEngine(server.url, prefix, { workflows: [order] });
  http = await startHttp({ client: new Client(nc, { prefix, timeoutMs: 3_000 }), port: 0 });
});
afterAll(async () => {
  await http?.close();
  await engine?.close();
  await nc?.close();
  await server?.stop();
});

async function call(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; type: string | null; json: Record<string, unknown> }> {
  const res = await fetch(`${http.url}${path}`, {
    method,
    headers: {
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...headers,
    },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return {
    status: res.status,
    type: res.headers.get('content-type'),
    json: text ? (JSON.parse(text) as Record<string, unknown>) : {},
  };
}

const expectProblem = (
  r: Awaited<ReturnType<typeof call>>,
  status: number,
  code: string,
): Record<string, unknown> => {
  expect(r.status, JSON.stringify(r.json)).toBe(status);
  expect(r.type).toMatch(/^application\/problem\+json/);
  expect(r.json).toMatchObject({ status, code, type: `urn:jetflow:problem:${code}` });
  expect(typeof r.json.title).toBe('string');
  expect(typeof r.json.detail).toBe('string');
  return r.json;
};

describe('HTTP ingress routes', () => {
  it('start (201, then 200 for the same id), signal, query, result, history', async () => {
    const first = await call('POST', '/v1/workflows/order/o1', { input: { total: 10 } });
    expect(first.status).toBe(201);
    expect(first.json).toMatchObject({ type: 'order', id: 'o1', created: true });
    const again = await call('POST', '/v1/workflows/order/o1', { input: { total: 99 } });
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ created: false });
    // A start's own priority (1-5) is part of the body.
    const urgent = await call('POST', '/v1/workflows/order/o2', {
      input: { total: 1 },
      priority: 1,
    });
    expect(urgent.status).toBe(201);

    const paid = await call('POST', '/v1/workflows/order/o1/signals', { type: 'PAY', amount: 10 });
    expect(paid.status).toBe(200);
    const q = await call('GET', '/v1/workflows/order/o1');
    expect(q.status).toBe(200);
    expect(q.json).toMatchObject({ status: 'running', value: 'paid' });
    expect(q.json.accepts).toEqual(expect.arrayContaining(['PACK']) as unknown);

    const running = await call('GET', '/v1/workflows/order/o1/result');
    expect(running.status).toBe(202);
    expect(running.json).toEqual({ status: 'running' });

    // A result waited for: the signals that end the workflow arrive while the request waits.
    const waiting = call('GET', '/v1/workflows/order/o1/result?wait=20s');
    for (const type of ['PACK', 'SHIP', 'DELIVER']) {
      expect((await call('POST', '/v1/workflows/order/o1/signals', { type })).status).toBe(200);
    }
    const done = await waiting;
    expect(done.status).toBe(200);
    expect(done.json).toEqual({
      status: 'completed',
      output: { paid: 10, history: ['paid', 'packed', 'shipped', 'delivered'] },
    });

    const h = await call('GET', '/v1/workflows/order/o1/history?fromStep=0&limit=2');
    expect(h.status).toBe(200);
    const entries = h.json.entries as { step: number; event: { type: string } }[];
    expect(entries.map((e) => e.step)).toEqual([0, 1]);
    expect(entries[1]!.event.type).toBe('PAY');
    expect(h.json.next).toBe(2);
  });

  it('cancel, and the result of a canceled workflow', async () => {
    await call('POST', '/v1/workflows/order/c1', { input: { total: 5 } });
    const c = await call('POST', '/v1/workflows/order/c1/cancel', { reason: 'customer asked' });
    expect(c.status).toBe(200);
    const r = await call('GET', '/v1/workflows/order/c1/result?wait=5s');
    expect(r.status).toBe(200);
    expect(r.json).toMatchObject({ status: 'canceled' });
    // Canceling what is already finished is a conflict.
    expectProblem(await call('POST', '/v1/workflows/order/c1/cancel', {}), 409, 'already_finished');
  });

  it('Idempotency-Key: a repeated signal is applied once', async () => {
    await call('POST', '/v1/workflows/order/i1', { input: { total: 0 } });
    const key = { 'idempotency-key': 'pay-i1-once' };
    const a = await call('POST', '/v1/workflows/order/i1/signals', { type: 'PAY', amount: 0 }, key);
    expect(a.status).toBe(200);
    const b = await call('POST', '/v1/workflows/order/i1/signals', { type: 'PAY', amount: 0 }, key);
    // The repeat is recognised, not applied again (PAY is not accepted in `paid`).
    expect(b.status).toBe(200);
    expect(b.json).toMatchObject({ duplicate: true });
    const q = await call('GET', '/v1/workflows/order/i1');
    expect(q.json).toMatchObject({ value: 'paid', step: 1 });
  });

  it('the OpenAPI 3.1 document lists every route with the schemas it validates with', async () => {
    const r = await call('GET', '/v1/openapi.json');
    expect(r.status).toBe(200);
    expect(r.json.openapi).toBe('3.1.0');
    const paths = r.json.paths as Record<string, Record<string, { operationId: string }>>;
    expect(Object.keys(paths).sort()).toEqual([
      '/hooks/{trigger}',
      '/v1/workflows/{type}/{id}',
      '/v1/workflows/{type}/{id}/cancel',
      '/v1/workflows/{type}/{id}/history',
      '/v1/workflows/{type}/{id}/result',
      '/v1/workflows/{type}/{id}/signals',
    ]);
    expect(paths['/v1/workflows/{type}/{id}']!.post!.operationId).toBe('startWorkflow');
    expect(paths['/v1/workflows/{type}/{id}']!.get!.operationId).toBe('queryWorkflow');
    const body = (
      paths['/v1/workflows/{type}/{id}/signals']!.post as unknown as {
        requestBody: { content: { 'application/json': { schema: { required: string[] } } } };
      }
    ).requestBody.content['application/json'].schema;
    expect(body.required).toEqual(['type']);
    expect(paths['/hooks/{trigger}']!.post!.operationId).toBe('webhook');
    // Valid OpenAPI 3.1 (the specification's JSON schema).
    const v = await new Validator().validate(r.json);
    expect(v.errors).toBeUndefined();
    expect(v.valid).toBe(true);
  });
});

describe('HTTP errors as application/problem+json', () => {
  it('400: malformed JSON, a body of the wrong shape, a bad id, a bad wait', async () => {
    expectProblem(
      await call('POST', '/v1/workflows/order/b1', '{"input": '),
      400,
      'malformed_body',
    );
    const shape = expectProblem(
      await call('POST', '/v1/workflows/order/b1/signals', { amount: 3 }),
      400,
      'bad_request',
    );
    const details = shape.details as { field: string; why: string }[];
    expect(details).toHaveLength(1);
    expect(details[0]!.why).toContain('type');
    expectProblem(await call('POST', '/v1/workflows/order/b1', { inputt: 1 }), 400, 'bad_request');
    expectProblem(
      await call('POST', '/v1/workflows/order/b1', { input: {}, priority: 9 }),
      400,
      'bad_request',
    );
    expectProblem(await call('GET', '/v1/workflows/order/bad.id'), 400, 'bad_request');
    expectProblem(await call('GET', '/v1/workflows/order/b1/result?wait=soon'), 400, 'bad_request');
    expectProblem(
      await call('GET', '/v1/workflows/order/b1/history?limit=5000'),
      400,
      'bad_request',
    );
    // Nothing was created by any of them.
    expectProblem(await call('GET', '/v1/workflows/order/b1'), 404, 'not_found');
  });

  it('404: unknown type, unknown workflow, unknown route', async () => {
    expectProblem(
      await call('POST', '/v1/workflows/nosuchtype/x', { input: 1 }),
      404,
      'unknown_type',
    );
    expectProblem(await call('GET', '/v1/workflows/order/never-started'), 404, 'not_found');
    expectProblem(
      await call('POST', '/v1/workflows/order/never-started/signals', { type: 'PAY', amount: 1 }),
      404,
      'not_found',
    );
    expectProblem(await call('GET', '/v1/workflows/order/never-started/result'), 404, 'not_found');
    expectProblem(await call('GET', '/v2/nothing'), 404, 'not_found');
  });

  it('409: an event the workflow cannot take now, with what it accepts', async () => {
    await call('POST', '/v1/workflows/order/e1', { input: { total: 10 } });
    const p = expectProblem(
      await call('POST', '/v1/workflows/order/e1/signals', { type: 'SHIP' }),
      409,
      'event_not_accepted',
    );
    expect(p.accepts).toEqual(expect.arrayContaining(['PAY', 'CANCEL_ORDER']));
    // A guard that refuses (paying too little) is a conflict too.
    expectProblem(
      await call('POST', '/v1/workflows/order/e1/signals', { type: 'PAY', amount: 1 }),
      409,
      'guard_rejected',
    );
    const q = await call('GET', '/v1/workflows/order/e1');
    expect(q.json).toMatchObject({ value: 'awaitingPayment', status: 'running' });
  });

  it('413: a body over the server limit, and an event too large for the record', async () => {
    const huge = 'x'.repeat((nc.info?.max_payload ?? 1024 * 1024) + 10);
    expectProblem(
      await call('POST', '/v1/workflows/order/t1', { input: { blob: huge } }),
      413,
      'payload_too_large',
    );
    expectProblem(await call('GET', '/v1/workflows/order/t1'), 404, 'not_found');
  });

  it('415: a body that is not JSON', async () => {
    const r = await call('POST', '/v1/workflows/order/m1', 'total=3', {
      'content-type': 'application/x-www-form-urlencoded',
    });
    expectProblem(r, 415, 'bad_request');
  });

  it('503: no engine answering, then NATS down; after the restart the retry applies once', async () => {
    // No engine for this prefix: nothing answers the start subject.
    const lonely = await startHttp({
      client: new Client(nc, { prefix: uniquePrefix(), timeoutMs: 1_000 }),
      port: 0,
    });
    try {
      const r = await fetch(`${lonely.url}/v1/workflows/order/z1`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ input: {} }),
      });
      expect(r.status).toBe(503);
      expect(r.headers.get('retry-after')).toBe('1');
      expect(((await r.json()) as { code: string }).code).toBe('unavailable');
    } finally {
      await lonely.close();
    }

    await call('POST', '/v1/workflows/order/n1', { input: { total: 7 } });
    await server.restart({ ready: false, kill: true });
    const key = { 'idempotency-key': 'pay-n1' };
    // While the server is down (or still starting) the request fails with 503, not a hang.
    const down = await call(
      'POST',
      '/v1/workflows/order/n1/signals',
      { type: 'PAY', amount: 7 },
      key,
    );
    expect(down.status, JSON.stringify(down.json)).toBe(503);
    await server.waitReady();
    // The sender retries with the same key until it gets its 2xx: applied exactly once.
    let ok: Awaited<ReturnType<typeof call>> | undefined;
    for (let i = 0; i < 100 && ok?.status !== 200; i++) {
      ok = await call('POST', '/v1/workflows/order/n1/signals', { type: 'PAY', amount: 7 }, key);
      if (ok.status !== 200) {
        expect(ok.status, JSON.stringify(ok.json)).toBe(503);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    expect(ok!.status).toBe(200);
    const again = await call(
      'POST',
      '/v1/workflows/order/n1/signals',
      { type: 'PAY', amount: 7 },
      key,
    );
    expect(again.json).toMatchObject({ duplicate: true });
    const q = await call('GET', '/v1/workflows/order/n1');
    expect(q.json).toMatchObject({ value: 'paid', step: 1 });
  });
});

describe('parseWait', () => {
  it('reads ms, s, m and plain numbers; anything else is NaN', () => {
    expect(parseWait(undefined)).toBe(0);
    expect(parseWait('250')).toBe(250);
    expect(parseWait('500ms')).toBe(500);
    expect(parseWait('30s')).toBe(30_000);
    expect(parseWait('2m')).toBe(120_000);
    expect(parseWait('1h')).toBeNaN();
  });
});
