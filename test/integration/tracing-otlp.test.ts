/**
 * Traces across processes (issue 16): an engine process and a worker process, each tracing
 * because `OTEL_EXPORTER_OTLP_ENDPOINT` points at an OTLP/HTTP receiver this test runs (JSON
 * bodies, `http/json`). A start request published with a raw `traceparent` header (any NATS
 * client can) yields one trace: every step span and attempt span of the workflow in it, each the
 * child of its cause; the worker's log line about the retry carries the workflow's fields and
 * the trace id.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headers } from '@nats-io/transport-node';
import { EngineProcess, repoRoot, uniquePrefix, useServer } from '../harness/jetflow.js';
import { JetflowProcess } from '../harness/cli.js';
import { runRoot } from '../harness/nats-server.js';
import { Client } from '../../src/client/index.js';

const env = useServer();

interface Span {
  name: string;
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  attributes: Record<string, unknown>;
}

/** OTLP JSON ids are hex (the spec); accept base64 too. */
const hex = (v: unknown) =>
  typeof v !== 'string' || v === ''
    ? undefined
    : /^[0-9a-f]+$/i.test(v)
      ? v.toLowerCase()
      : Buffer.from(v, 'base64').toString('hex');

const received: Span[] = [];
let receiver: Server;
let endpoint = '';

beforeAll(async () => {
  receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      if (req.url === '/v1/traces') {
        const doc = JSON.parse(body) as {
          resourceSpans?: { scopeSpans?: { spans?: Record<string, unknown>[] }[] }[];
        };
        for (const rs of doc.resourceSpans ?? [])
          for (const ss of rs.scopeSpans ?? [])
            for (const s of ss.spans ?? []) {
              const attributes: Record<string, unknown> = {};
              for (const a of (s.attributes ?? []) as { key: string; value: object }[])
                attributes[a.key] = Object.values(a.value)[0];
              received.push({
                name: s.name as string,
                traceId: hex(s.traceId)!,
                spanId: hex(s.spanId)!,
                parentSpanId: hex(s.parentSpanId),
                attributes,
              });
            }
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((ok) => receiver.listen(0, '127.0.0.1', ok));
  endpoint = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise<void>((ok) => receiver.close(() => ok()));
});

describe('tracing across processes (OTLP http/json)', () => {
  it('one trace from a raw traceparent through engine and worker processes', async () => {
    const prefix = uniquePrefix();
    const otel = {
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_BSP_SCHEDULE_DELAY: '100',
    };
    const engine = await new EngineProcess(env.server.url, prefix, {
      env: { ...otel, OTEL_SERVICE_NAME: 'test-engine' },
    }).start();
    const worker = await new JetflowProcess(
      [
        'worker',
        '--activities',
        resolve(repoRoot, 'test/fixtures/traced-activities.ts'),
        '--nats-url',
        env.server.url,
        '--prefix',
        prefix,
        '--name',
        `worker:${runRoot()}`,
      ],
      '"worker started"',
      { env: { ...otel, OTEL_SERVICE_NAME: 'test-worker' } },
    ).start();
    try {
      const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
      const parent = '00f067aa0ba902b7';
      const h = headers();
      h.set('traceparent', `00-${traceId}-${parent}-01`);
      await env.nc.request(
        `${prefix}.start.chain.o1`,
        new TextEncoder().encode(JSON.stringify({ input: { x: 1 } })),
        { headers: h, timeout: 10_000 },
      );
      const client = new Client(env.nc, { prefix });
      expect(await client.result('chain', 'o1')).toEqual({ x: 4 });
      await engine.stop(); // flushes its spans
      await worker.stop();
      const mine = received.filter((s) => s.traceId === traceId);
      const steps = mine
        .filter((s) => s.name === 'step chain')
        .sort(
          (a, b) =>
            Number(a.attributes['jetflow.inbox.seq']) - Number(b.attributes['jetflow.inbox.seq']),
        );
      const attempts = mine.filter((s) => s.name === 'attempt inc');
      expect(steps.map((s) => s.attributes['jetflow.inbox.kind'])).toEqual([
        'start',
        'result',
        'result',
        'result',
      ]);
      expect(attempts.map((s) => s.attributes['jetflow.attempt.outcome']).sort()).toEqual([
        'ok',
        'ok',
        'ok',
        'retry',
      ]);
      expect(steps[0]!.parentSpanId).toBe(parent);
      const byId = new Map(mine.map((s) => [s.spanId, s]));
      // Each attempt is a child of the step that published its task (a retry too); each result's
      // step is a child of the attempt that produced the result.
      for (const a of attempts) expect(byId.get(a.parentSpanId!)?.name).toBe('step chain');
      for (const s of steps.slice(1)) {
        const cause = byId.get(s.parentSpanId!);
        expect(cause?.name).toBe('attempt inc');
        expect(cause?.attributes['jetflow.attempt.outcome']).toBe('ok');
      }
      const retryLine = worker.log.split('\n').find((l) => l.includes('attempt failed; retrying'));
      expect(JSON.parse(retryLine!)).toMatchObject({
        workflowType: 'chain',
        workflowId: 'o1',
        step: 1,
        traceId,
      });
    } finally {
      await engine.kill();
      await worker.stop();
    }
  });
});
