/**
 * HTTP activities: a task whose activity was declared with `http: { url, … }` is run by a worker
 * with `http: true` (`jetflow worker --http`) with no user code, as one HTTP request per attempt.
 *
 * - The task input is sent as the JSON body (a `GET` sends none), with `Idempotency-Key: <taskId>`
 *   (stable across attempts: the endpoint can make a repeated call harmless) and the
 *   `Jetflow-Workflow-Type`, `Jetflow-Workflow-Id`, `Jetflow-Activity` and `Jetflow-Attempt`
 *   headers.
 * - 2xx: success; the output is the JSON body (`null` for an empty one, the text when it is not
 *   JSON).
 * - 408, 429 and 5xx, or no response (connection refused, timeout): retryable under the
 *   activity's retry policy; a `Retry-After` (seconds or an HTTP date) delays the next attempt
 *   to at least that time.
 * - Any other status (4xx, 3xx): non-retryable; the error carries the status and the body.
 * An attempt times out after `timeoutMs` (default: the activity's `startToCloseMs`).
 */
import { RetryableError, TerminalError } from '../errors.js';
import type { TaskMessage } from '../contracts/wire.js';
import type { ActivityContext } from './index.js';

type HttpSpec = NonNullable<TaskMessage['http']>;

/** Cap of the response body kept in an error (bytes of text). */
const ERROR_BODY_MAX = 4096;

/** `Retry-After` as milliseconds from now (undefined when absent or unreadable). */
export function retryAfterMs(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  const s = value.trim();
  if (/^\d+$/.test(s)) return Number(s) * 1000;
  const at = Date.parse(s);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

function parseBody(text: string): unknown {
  if (text === '') return null;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export async function runHttpActivity(
  spec: HttpSpec,
  input: unknown,
  ctx: ActivityContext,
  startToCloseMs: number,
): Promise<unknown> {
  const method = (spec.method ?? 'POST').toUpperCase();
  const timeout = AbortSignal.timeout(spec.timeoutMs ?? startToCloseMs);
  const signal = AbortSignal.any([ctx.signal, timeout]);
  let res: Response;
  try {
    res = await fetch(spec.url, {
      method,
      headers: {
        ...(method === 'GET' ? {} : { 'content-type': 'application/json' }),
        accept: 'application/json',
        ...spec.headers,
        'idempotency-key': ctx.taskId,
        'jetflow-workflow-type': ctx.workflowType,
        'jetflow-workflow-id': ctx.workflowId,
        'jetflow-activity': ctx.activity,
        'jetflow-attempt': String(ctx.attempt),
      },
      ...(method === 'GET' ? {} : { body: JSON.stringify(input ?? null) }),
      signal,
      redirect: 'manual',
    });
  } catch (err) {
    // Canceled or shut down: the worker knows why; let its abort win.
    if (ctx.signal.aborted) throw err;
    const why = timeout.aborted ? 'timed out' : String((err as Error)?.cause ?? err);
    throw new RetryableError(`${method} ${spec.url}: ${why}`, {
      details: { url: spec.url },
    });
  }
  const text = await res.text();
  if (res.status >= 200 && res.status < 300) return parseBody(text);
  const details = {
    url: spec.url,
    status: res.status,
    body: parseBody(text.length > ERROR_BODY_MAX ? text.slice(0, ERROR_BODY_MAX) : text),
  };
  const message = `${method} ${spec.url}: HTTP ${res.status}${text ? `: ${text.slice(0, 200)}` : ''}`;
  if (res.status === 408 || res.status === 429 || res.status >= 500) {
    const after = retryAfterMs(res.headers.get('retry-after'));
    throw new RetryableError(message, {
      details,
      ...(after !== undefined ? { retryAfterMs: after } : {}),
    });
  }
  throw new TerminalError(message, { details });
}
