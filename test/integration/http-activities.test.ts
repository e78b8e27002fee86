/**
 * HTTP activities (`jetflow worker --http`): a real HTTP endpoint answering 2xx, 429 with
 * Retry-After, 500 then 200, and 400; a real nats-server, engine and worker. Each ends as
 * specified: success with the JSON body, a retry no sooner than Retry-After, a retry then
 * success, a non-retryable failure carrying the body.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { assign, setup } from 'xstate';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client, WorkflowFailedError } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { activity, withActivityOptions } from '../../src/engine/activity.js';
import { retryAfterMs } from '../../src/worker/http.js';
import type { Engine } from '../../src/host/engine.js';

const env = useServer();

/** Calls the URL in its input once (with the activity's retries) and ends with the output. */
const httpCall = defineWorkflow({
  type: 'httpCall',
  version: 1,
  machine: setup({
    types: {
      input: {} as { url: string; order: string },
      context: {} as { url: string; order: string; output?: unknown; error?: unknown },
    },
    actors: {
      call: activity('call', {
        queue: 'httpq',
        retry: { maxAttempts: 4, initialIntervalMs: 50, backoffCoefficient: 1, jitter: 0 },
      }),
    },
  }).createMachine({
    context: ({ input }) => ({ url: input.url, order: input.order }),
    initial: 'calling',
    states: {
      calling: {
        invoke: {
          src: 'call',
          input: ({ context }: { context: { url: string; order: string } }) =>
            withActivityOptions({ order: context.order }, { http: { url: context.url } }),
          onDone: { target: 'done', actions: assign({ output: ({ event }) => event.output }) },
          onError: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
        },
      },
      done: { type: 'final' },
      failed: { type: 'final', tags: ['failed'] },
    },
    output: ({ context }) => (context.error ? { error: context.error } : context.output),
  }),
});

interface Seen {
  path: string;
  at: number;
  headers: IncomingMessage['headers'];
  body: string;
}
const seen: Seen[] = [];
const hits = new Map<string, number>();
let http: Server;
let base: string;
let engine: Engine;
let worker: Worker;
let client: Client;
const prefix = uniquePrefix();

beforeAll(async () => {
  http = createServer((req, res) => {
    let body = '';
    req.on('data', (b: Buffer) => (body += b.toString()));
    req.on('end', () => {
      const path = req.url ?? '';
      seen.push({ path, at: Date.now(), headers: req.headers, body });
      const n = (hits.get(path) ?? 0) + 1;
      hits.set(path, n);
      const json = (status: number, o: unknown, h: Record<string, string> = {}) => {
        res.writeHead(status, { 'content-type': 'application/json', ...h });
        res.end(JSON.stringify(o));
      };
      if (path === '/ok') return json(200, { paid: true, echo: JSON.parse(body) as unknown });
      if (path === '/busy')
        return n === 1 ? json(429, { slow: 'down' }, { 'retry-after': '1' }) : json(200, { n });
      if (path === '/flaky') return n === 1 ? json(500, { oops: 1 }) : json(200, { n });
      if (path === '/bad') return json(400, { reason: 'bad iban' });
      return json(404, {});
    });
  });
  await new Promise<void>((ok) => http.listen(0, '127.0.0.1', ok));
  base = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  engine = await startEngine(env.server.url, prefix, { workflows: [httpCall] });
  worker = await createWorker({
    connection: env.nc,
    prefix,
    activities: {},
    queues: ['httpq'],
    http: true,
  });
  void worker.run();
  client = new Client(env.nc, { prefix, timeoutMs: 10_000 });
});
afterAll(async () => {
  await worker?.close();
  await engine?.close();
  await new Promise((ok) => http?.close(ok));
});

const requestsTo = (path: string) => seen.filter((s) => s.path === path);

describe('HTTP activities', () => {
  it('2xx: success with the JSON body; the task id is the Idempotency-Key', async () => {
    await client.start('httpCall', 'h-ok', { url: `${base}/ok`, order: 'o-1' });
    const out = await client.result('httpCall', 'h-ok', { timeoutMs: 20_000 });
    expect(out).toEqual({ paid: true, echo: { order: 'o-1' } });
    const [r] = requestsTo('/ok');
    expect(r!.headers['idempotency-key']).toMatch(/^httpCall\.h-ok\./);
    expect(r!.headers['content-type']).toBe('application/json');
    expect(r!.headers['jetflow-attempt']).toBe('1');
  });

  it('429 with Retry-After: retried, not before Retry-After, then success', async () => {
    await client.start('httpCall', 'h-busy', { url: `${base}/busy`, order: 'o-2' });
    expect(await client.result('httpCall', 'h-busy', { timeoutMs: 20_000 })).toEqual({ n: 2 });
    const [a, b] = requestsTo('/busy');
    expect(b!.headers['jetflow-attempt']).toBe('2');
    // The policy alone would retry after 50 ms; Retry-After: 1 holds it for a second.
    expect(b!.at - a!.at).toBeGreaterThanOrEqual(1000);
    expect(b!.headers['idempotency-key']).toBe(a!.headers['idempotency-key']);
  });

  it('500 then 200: retried, then success', async () => {
    await client.start('httpCall', 'h-flaky', { url: `${base}/flaky`, order: 'o-3' });
    expect(await client.result('httpCall', 'h-flaky', { timeoutMs: 20_000 })).toEqual({ n: 2 });
    expect(requestsTo('/flaky')).toHaveLength(2);
  });

  it('400: not retried; the workflow gets the status and the body as the error', async () => {
    await client.start('httpCall', 'h-bad', { url: `${base}/bad`, order: 'o-4' });
    const err = await client
      .result('httpCall', 'h-bad', { timeoutMs: 20_000 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WorkflowFailedError);
    const q = await client.query('httpCall', 'h-bad');
    expect(q.status).toBe('failed');
    expect(q.error).toMatchObject({
      type: 'TerminalError',
      retryable: false,
      details: { status: 400, body: { reason: 'bad iban' } },
    });
    expect(requestsTo('/bad')).toHaveLength(1);
  });
});

describe('retryAfterMs', () => {
  it('reads seconds and HTTP dates', () => {
    expect(retryAfterMs(null)).toBeUndefined();
    expect(retryAfterMs('3')).toBe(3000);
    expect(retryAfterMs('Wed, 02 Dec 2026 10:00:05 GMT', Date.parse('2026-12-02T10:00:00Z'))).toBe(
      5000,
    );
    expect(retryAfterMs('soon')).toBeUndefined();
  });
});
