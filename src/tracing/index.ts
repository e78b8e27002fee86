/**
 * Traces with `@opentelemetry/api`: spans around client requests, steps and worker attempts, and
 * the W3C Trace Context (`traceparent`, `tracestate`) carried on the messages between them.
 *
 * The API alone records nothing: without a registered tracer provider every span is a no-op.
 * jetflow's processes register one only when the standard `OTEL_*` variables ask for it (see
 * `src/tracing/sdk.ts`); an application that embeds an engine or a worker registers its own.
 * Where nothing is registered, the engine and the worker skip tracing entirely (`tracingActive`),
 * so it costs nothing measurable.
 *
 * The header format is W3C Trace Context, written and read here directly (not through the
 * globally registered propagator): it is part of jetflow's wire contract, whatever propagator an
 * application configured for its own HTTP traffic.
 */
import {
  context,
  createTraceState,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import type { InboxEntry, StepTracing, TraceCarrier } from '../engine/ports.js';

export type { TraceCarrier };

const TRACER = 'jetflow';
let forced = false;

/** Mark tracing as configured (called by the SDK loader once it registered a provider). */
export function markTracingActive(): void {
  forced = true;
}

/**
 * True when a tracer provider is registered globally (by jetflow's SDK loader or by the
 * application). Checked when an engine or a worker is created.
 */
export function tracingActive(): boolean {
  if (forced) return true;
  const p = trace.getTracerProvider() as { getDelegate?: () => unknown };
  const delegate = p.getDelegate ? p.getDelegate() : p;
  return (delegate as object)?.constructor?.name !== 'NoopTracerProvider';
}

export function tracer(): Tracer {
  return trace.getTracer(TRACER);
}

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;

/** The W3C trace context of `ctx`'s span (default: the active one), or undefined when none. */
export function traceHeaders(ctx: Context = context.active()): TraceCarrier | undefined {
  const sc = trace.getSpanContext(ctx);
  if (!sc || !trace.isSpanContextValid(sc)) return undefined;
  const flags = (sc.traceFlags & TraceFlags.SAMPLED).toString(16).padStart(2, '0');
  const ts = sc.traceState?.serialize();
  return {
    traceparent: `00-${sc.traceId}-${sc.spanId}-${flags}`,
    ...(ts ? { tracestate: ts } : {}),
  };
}

/** Set `traceparent`/`tracestate` from the active span on headers (anything with `set`). */
export function injectTrace(h: { set(k: string, v: string): void }, ctx?: Context): void {
  const t = traceHeaders(ctx);
  if (!t?.traceparent) return;
  h.set('traceparent', t.traceparent);
  if (t.tracestate) h.set('tracestate', t.tracestate);
}

/** The context a message's trace carrier continues (the root context when it has none). */
export function contextOf(carrier: TraceCarrier | undefined): Context {
  const m = carrier?.traceparent ? TRACEPARENT.exec(carrier.traceparent.trim()) : null;
  if (!m || /^0+$/.test(m[1]!) || /^0+$/.test(m[2]!)) return ROOT_CONTEXT;
  return trace.setSpanContext(ROOT_CONTEXT, {
    traceId: m[1]!,
    spanId: m[2]!,
    traceFlags: parseInt(m[3]!, 16) & TraceFlags.SAMPLED,
    isRemote: true,
    ...(carrier?.tracestate ? { traceState: createTraceState(carrier.tracestate) } : {}),
  });
}

/** The trace id of the active span, if one is recording. */
export function activeTraceId(): string | undefined {
  const sc = trace.getSpanContext(context.active());
  return sc && trace.isSpanContextValid(sc) ? sc.traceId : undefined;
}

/**
 * Run `f` in a span `name` (child of `parent`), active while `f` runs; the span ends when `f`
 * settles, with an error status when it throws.
 */
export async function inSpan<T>(
  name: string,
  kind: SpanKind,
  parent: Context,
  attributes: Attributes,
  f: (span: Span) => Promise<T>,
): Promise<T> {
  const span = tracer().startSpan(name, { kind, attributes }, parent);
  try {
    return await context.with(trace.setSpan(parent, span), () => f(span));
  } catch (err) {
    span.recordException(err as Error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: String((err as Error)?.message ?? err) });
    throw err;
  } finally {
    span.end();
  }
}

/** The engine's step spans: `step <type>`, children of the message's trace context. */
export function createStepTracing(): StepTracing {
  return {
    step<T>(e: InboxEntry, f: () => Promise<T>): Promise<T> {
      return inSpan(
        `step ${e.type}`,
        SpanKind.CONSUMER,
        contextOf(e.trace),
        {
          'messaging.system': 'nats',
          'jetflow.workflow.type': e.type,
          'jetflow.workflow.id': e.id,
          'jetflow.inbox.kind': e.kind,
          'jetflow.inbox.seq': e.seq,
          'jetflow.shard': e.shard,
        },
        () => f(),
      );
    },
    traceId: activeTraceId,
  };
}

export { SpanKind };
