/**
 * Structured JSON logs (pino) to stderr. A line logged inside a traced step or attempt carries
 * the trace's `traceId`, so logs and traces of one causal chain can be joined.
 */
import { pino } from 'pino';
import type { Logger } from '../engine/ports.js';
import { activeTraceId, tracingActive } from '../tracing/index.js';

/** `{ traceId }` of the active span when tracing is on (called only for lines emitted). */
function traceMixin(): object {
  if (!tracingActive()) return {};
  const traceId = activeTraceId();
  return traceId ? { traceId } : {};
}

export function createLogger(name: string, level: string): Logger {
  return pino({ name, level, base: { pid: process.pid }, mixin: traceMixin }, pino.destination(2));
}
