/**
 * Traces (issue 16): one client request that starts a three-activity workflow is one trace: the
 * client span, each step span and each attempt span, each the child of the span that caused it.
 * The engine, the worker and the client run in this process with the OpenTelemetry SDK and an
 * in-memory exporter; the trace context crosses NATS in the messages' `traceparent` headers.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { context, trace, SpanKind } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  InMemorySpanExporter,
  SimpleSpanProcessor,
  TracerProvider,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';

const env = useServer();
const exporter = new InMemorySpanExporter();
const provider = new TracerProvider({
  spanProcessors: [new SimpleSpanProcessor({ exporter })],
});

beforeAll(() => {
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  trace.setGlobalTracerProvider(provider);
});
afterAll(async () => {
  await provider.shutdown();
  trace.disable();
  context.disable();
});

const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId;

/**
 * The finished spans once `done` holds. A step's span ends after the step acknowledged its
 * message, a moment after the notification `result()` waits for: wait for it (10 s at most).
 */
async function spansWhen(done: (spans: ReadableSpan[]) => boolean): Promise<ReadableSpan[]> {
  const end = Date.now() + 10_000;
  for (;;) {
    await provider.forceFlush();
    const spans = exporter.getFinishedSpans();
    if (done(spans) || Date.now() > end) return spans;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const stepsOf = (spans: ReadableSpan[], type: string, id: string) =>
  spans.filter((s) => s.name === `step ${type}` && s.attributes['jetflow.workflow.id'] === id);

describe('tracing', () => {
  it('a start of a three-activity workflow is one trace: client → step → attempt → step …', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: { inc: ({ x }: { x: number }) => x + 1 },
    });
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('chain', 't1', { x: 1 });
      expect(await client.result('chain', 't1')).toEqual({ x: 4 });
      // The start and one step per result.
      const spans = await spansWhen((all) => stepsOf(all, 'chain', 't1').length >= 4);
      const root = spans.find((s) => s.name === 'start chain');
      expect(root?.kind).toBe(SpanKind.CLIENT);
      const traceId = root!.spanContext().traceId;
      const mine = spans.filter((s) => s.spanContext().traceId === traceId);
      const steps = mine
        .filter((s) => s.name === 'step chain')
        .sort(
          (a, b) =>
            Number(a.attributes['jetflow.inbox.seq']) - Number(b.attributes['jetflow.inbox.seq']),
        );
      const attempts = mine
        .filter((s) => s.name === 'attempt inc')
        .sort((a, b) => a.startTime[0] - b.startTime[0] || a.startTime[1] - b.startTime[1]);
      // The start, then one step per result; three attempts; nothing else in the trace.
      expect(steps.map((s) => s.attributes['jetflow.inbox.kind'])).toEqual([
        'start',
        'result',
        'result',
        'result',
      ]);
      expect(attempts).toHaveLength(3);
      expect(mine).toHaveLength(1 + 4 + 3);
      expect(parentOf(root!)).toBeUndefined();
      expect(parentOf(steps[0]!)).toBe(root!.spanContext().spanId);
      for (let i = 0; i < 3; i++) {
        expect(parentOf(attempts[i]!)).toBe(steps[i]!.spanContext().spanId);
        expect(parentOf(steps[i + 1]!)).toBe(attempts[i]!.spanContext().spanId);
        expect(attempts[i]!.attributes['jetflow.attempt.outcome']).toBe('ok');
      }
      for (const s of steps) expect(s.attributes['jetflow.workflow.id']).toBe('t1');
    } finally {
      await worker.close();
      await engine.close();
    }
  });

  it('a send to another workflow continues the trace into its step', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('xsender', 's1');
      await client.start('xreceiver', 'r1');
      exporter.reset();
      const to = { type: 'xreceiver', id: 'r1' };
      await client.signal('xsender', 's1', { type: 'SEND', to, event: { type: 'PING', n: 1 } });
      const spans = await spansWhen((all) => stepsOf(all, 'xreceiver', 'r1').length >= 1);
      const root = spans.find((s) => s.name === 'signal xsender')!;
      const sent = stepsOf(spans, 'xsender', 's1')[0]!;
      const received = stepsOf(spans, 'xreceiver', 'r1')[0]!;
      expect(parentOf(sent)).toBe(root.spanContext().spanId);
      expect(received.spanContext().traceId).toBe(root.spanContext().traceId);
      expect(parentOf(received)).toBe(sent.spanContext().spanId);
    } finally {
      await engine.close();
    }
  });

  it('a timer continues the trace of the step that set it', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const client = new Client(env.nc, { prefix });
    try {
      exporter.reset();
      await client.start('sleeper', 'z1', { ms: 200 });
      await client.result('sleeper', 'z1');
      const spans = await spansWhen((all) => stepsOf(all, 'sleeper', 'z1').length >= 2);
      const root = spans.find((s) => s.name === 'start sleeper')!;
      const steps = stepsOf(spans, 'sleeper', 'z1');
      const start = steps.find((s) => s.attributes['jetflow.inbox.kind'] === 'start')!;
      const fired = steps.find((s) => s.attributes['jetflow.inbox.kind'] === 'timer')!;
      expect(parentOf(start)).toBe(root.spanContext().spanId);
      expect(fired.spanContext().traceId).toBe(root.spanContext().traceId);
      expect(parentOf(fired)).toBe(start.spanContext().spanId);
    } finally {
      await engine.close();
    }
  });
});
