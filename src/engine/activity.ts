/**
 * Activities: the units of work a workflow hands to workers. Declared in a machine's `setup({
 * actors })` with {@link activity}; started by `invoke` or `spawnChild`. The engine never runs
 * them: it publishes a task to the activity's queue and feeds the worker's result back to the
 * machine as XState's done/error event for that actor.
 */
import { fromPromise, type AnyActorLogic, type AnyStateMachine } from 'xstate';
import { ConfigError } from '../errors.js';
import { isToken } from '../contracts/subjects.js';
import { DEFAULT_RETRY, type RetryPolicy } from './retry.js';

export { backoffDelayMs, DEFAULT_RETRY, type RetryPolicy } from './retry.js';

/** Everything the engine and the worker need to know about one activity call. */
export interface ActivityOptions {
  /** Queue (work-queue subject token) the task is published to. Default: the activity name. */
  queue: string;
  /**
   * Max time of one attempt. The worker aborts the attempt (its `AbortSignal` fires) and
   * retries it per the policy. Default 60 s.
   */
  startToCloseMs: number;
  /**
   * When set, the activity must call `heartbeat()` at least this often; silence aborts the
   * attempt and retries it. Unset: no heartbeat required.
   */
  heartbeatMs: number | undefined;
  /** Overall deadline from scheduling to a result, across attempts. Unset: none. */
  scheduleToCloseMs: number | undefined;
  retry: RetryPolicy;
  /**
   * What a final failure (retries exhausted, or a non-retryable error) does: `'fail'` delivers
   * the activity's error event; `'review'` parks the activity for an operator (retry, resolve or
   * fail it). Unset: the workflow definition's `onExhausted`, else `'fail'`.
   */
  onExhausted?: 'fail' | 'review';
  /**
   * An HTTP activity: run by `jetflow worker --http` with no user code. The task is POSTed (or
   * `method`) as JSON to `url`; see {@link HttpActivitySpec}.
   */
  http?: HttpActivitySpec;
  /**
   * A global rate limit: at most `limit` attempts of this activity (per `key(input)`, default
   * one key) start in any window of `periodMs`, across all workers. Held by the server (a
   * record of recent grants per key in the `<prefix>_rates` bucket, updated by compare-and-set);
   * a task over the limit is postponed to its slot as a scheduled message, using no attempt.
   */
  rateLimit?: RateLimitSpec;
  /**
   * A global concurrency limit: at most `limit` attempts of this activity (per `key(input)`,
   * default one key) run at once, across all workers. Held by the server (bucket
   * `<prefix>_slots`, a record of the attempts holding a slot per key, with leases their
   * workers renew, updated by compare-and-set). A task over the limit waits (briefly in place,
   * then postponed as a scheduled message), using no attempt. A crashed worker's slots free when
   * their lease ends: the queue's `ackWaitMs`.
   */
  concurrency?: ActivityConcurrencySpec;
  /**
   * Priority level 1 to 5 (1 is served first; default 3, so unprioritized work is the middle
   * level), or a pure function of the input giving it (a result that is not an integer 1-5 is
   * 3). Between levels strict, with aging: a queue's workers serve a lower level first once its
   * oldest task has waited the queue's `maxWaitMs` (default 60 s). See README "Priority".
   */
  priority?: number | ((input: never) => number);
  /**
   * Fairness within a priority level: tasks with a key (a string, or a pure function of the
   * input, e.g. a tenant id; 1-256 characters, anything else is no key) are served round robin
   * across keys, `fairnessWeights[key]` tasks per turn (default 1), so a key with 100,000 tasks
   * does not delay one with 10. Tasks without a key are served as before. See README "Fairness".
   */
  fairnessKey?: string | ((input: never) => string);
  /** Tasks per turn of a fairness key (1-1000; default 1). */
  fairnessWeights?: Record<string, number>;
}

/** See {@link ActivityOptions.concurrency}. */
export interface ActivityConcurrencySpec {
  /** The key the limit applies to (e.g. a bank); pure. Default: one for all. */
  key?: (input: never) => string;
  /** Attempts running at once per key: 1 to 10,000. */
  limit: number;
}

/** See {@link ActivityOptions.rateLimit}. */
export interface RateLimitSpec {
  /** The key the limit applies to (e.g. a provider or tenant); pure. Default: one for all. */
  key?: (input: never) => string;
  /** Attempts per window: 1 to 10,000. */
  limit: number;
  /** Window length in ms: 10 ms to 24 h. */
  periodMs: number;
}

export const RATE_LIMIT_MAX = 10_000;

/** The task's rate-limit key: `key(input)`, `*` without a key function or when it fails. */
export function rateKeyOf(spec: { key?: (input: never) => string }, input: unknown): string {
  if (!spec.key) return '*';
  try {
    const k = (spec.key as (i: unknown) => unknown)(input);
    return typeof k === 'string' && k.length > 0 && k.length <= 256 ? k : '*';
  } catch {
    return '*';
  }
}

/**
 * The task's priority level: the option, or its function of the input; `inherited` (the
 * workflow's level, default 3) when absent; 3 when invalid.
 */
export function priorityOf(
  o: { priority?: ActivityOptions['priority'] },
  input: unknown,
  inherited = 3,
): number {
  if (o.priority === undefined) return inherited;
  let l: unknown = o.priority;
  if (typeof l === 'function') {
    try {
      l = (l as (i: unknown) => unknown)(input);
    } catch {
      l = undefined;
    }
  }
  return typeof l === 'number' && Number.isInteger(l) && l >= 1 && l <= 5 ? l : 3;
}

/** The task's fairness key and weight; undefined without a key (or a key function that fails). */
export function fairnessOf(
  o: Pick<ActivityOptions, 'fairnessKey' | 'fairnessWeights'>,
  input: unknown,
): { key: string; weight: number } | undefined {
  let k: unknown = o.fairnessKey;
  if (typeof k === 'function') {
    try {
      k = (k as (i: unknown) => unknown)(input);
    } catch {
      k = undefined;
    }
  }
  if (typeof k !== 'string' || k.length === 0 || k.length > 256) return undefined;
  const w = o.fairnessWeights && Object.hasOwn(o.fairnessWeights, k) ? o.fairnessWeights[k] : 1;
  return { key: k, weight: w ?? 1 };
}

/**
 * Check `priority`, `fairnessKey` and `fairnessWeights` (of an activity or a workflow
 * definition: `what` names it); throws {@link ConfigError}.
 */
export function checkPriorityOptions(
  what: string,
  o: Pick<ActivityOptions, 'priority' | 'fairnessKey' | 'fairnessWeights'>,
): void {
  if (
    o.priority !== undefined &&
    typeof o.priority !== 'function' &&
    !(Number.isInteger(o.priority) && o.priority >= 1 && o.priority <= 5)
  )
    throw new ConfigError(
      `invalid priority for ${what}: an integer from 1 (first) to 5, or a function (input) => 1..5 (got ${JSON.stringify(o.priority)})`,
    );
  if (
    o.fairnessKey !== undefined &&
    typeof o.fairnessKey !== 'function' &&
    !(typeof o.fairnessKey === 'string' && o.fairnessKey.length > 0 && o.fairnessKey.length <= 256)
  )
    throw new ConfigError(
      `invalid fairnessKey for ${what}: a string of 1-256 characters or a function (input) => string`,
    );
  if (
    o.fairnessWeights !== undefined &&
    (typeof o.fairnessWeights !== 'object' ||
      o.fairnessWeights === null ||
      !Object.values(o.fairnessWeights).every((w) => Number.isInteger(w) && w >= 1 && w <= 1000))
  )
    throw new ConfigError(
      `invalid fairnessWeights for ${what}: an object of integers from 1 to 1000 by key`,
    );
}

/** Where and how an HTTP activity calls its endpoint (carried on the task message). */
export interface HttpActivitySpec {
  /** http:// or https:// URL the task input is sent to. */
  url: string;
  /** Default `POST`. */
  method?: 'POST' | 'PUT' | 'PATCH' | 'DELETE' | 'GET';
  /** Extra request headers (e.g. an API key). */
  headers?: Record<string, string>;
  /** Max time of one request (default: the activity's `startToCloseMs`). */
  timeoutMs?: number;
}

export type ActivityOptionsInput = Partial<Omit<ActivityOptions, 'retry'>> & {
  retry?: Partial<RetryPolicy>;
};

const ACTIVITY = Symbol.for('jetflow.activity');

interface Marked {
  [ACTIVITY]?: { name: string; options: ActivityOptionsInput };
}

function positive(name: string, v: unknown, optional: boolean): void {
  if (v === undefined && optional) return;
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw new ConfigError(
      `invalid ${name}: must be a positive number of ms (got ${JSON.stringify(v)})`,
    );
  }
}

/** Merge options over the defaults and validate them. */
export function resolveActivityOptions(
  name: string,
  input: ActivityOptionsInput = {},
): ActivityOptions {
  const retry: RetryPolicy = { ...DEFAULT_RETRY, ...input.retry };
  const o: ActivityOptions = {
    queue: input.queue ?? name,
    startToCloseMs: input.startToCloseMs ?? 60_000,
    heartbeatMs: input.heartbeatMs,
    scheduleToCloseMs: input.scheduleToCloseMs,
    retry,
    ...(input.onExhausted !== undefined ? { onExhausted: input.onExhausted } : {}),
    ...(input.http !== undefined ? { http: input.http } : {}),
    ...(input.rateLimit !== undefined ? { rateLimit: input.rateLimit } : {}),
    ...(input.concurrency !== undefined ? { concurrency: input.concurrency } : {}),
    ...(input.priority !== undefined ? { priority: input.priority } : {}),
    ...(input.fairnessKey !== undefined ? { fairnessKey: input.fairnessKey } : {}),
    ...(input.fairnessWeights !== undefined ? { fairnessWeights: input.fairnessWeights } : {}),
  };
  if (o.http !== undefined) checkHttpSpec(name, o.http);
  if (o.rateLimit !== undefined) checkRateLimit(name, o.rateLimit);
  if (o.concurrency !== undefined) checkConcurrency(name, o.concurrency);
  checkPriorityOptions(`activity ${name}`, o);
  if (o.onExhausted !== undefined && o.onExhausted !== 'fail' && o.onExhausted !== 'review') {
    throw new ConfigError(
      `invalid onExhausted for activity ${name}: 'fail' or 'review' (got ${JSON.stringify(o.onExhausted)})`,
    );
  }
  if (!isToken(o.queue))
    throw new ConfigError(`invalid queue ${JSON.stringify(o.queue)} for activity ${name}`);
  positive('startToCloseMs', o.startToCloseMs, false);
  positive('heartbeatMs', o.heartbeatMs, true);
  positive('scheduleToCloseMs', o.scheduleToCloseMs, true);
  positive('retry.initialIntervalMs', retry.initialIntervalMs, false);
  positive('retry.maxIntervalMs', retry.maxIntervalMs, false);
  if (!Number.isInteger(retry.maxAttempts) || retry.maxAttempts < 1) {
    throw new ConfigError(
      `invalid retry.maxAttempts: must be an integer >= 1 (got ${retry.maxAttempts})`,
    );
  }
  if (!(retry.backoffCoefficient >= 1))
    throw new ConfigError('invalid retry.backoffCoefficient: must be >= 1');
  if (!(retry.jitter >= 0 && retry.jitter <= 1))
    throw new ConfigError('invalid retry.jitter: must be in 0..1');
  if (
    retry.delaysMs !== undefined &&
    (!Array.isArray(retry.delaysMs) ||
      retry.delaysMs.length < 1 ||
      retry.delaysMs.length > 100 ||
      !retry.delaysMs.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0))
  )
    throw new ConfigError('invalid retry.delaysMs: 1-100 numbers >= 0 (ms)');
  return o;
}

function checkRateLimit(name: string, r: RateLimitSpec): void {
  if (typeof r !== 'object' || r === null)
    throw new ConfigError(
      `invalid rateLimit for activity ${name}: an object {limit, periodMs, key?}`,
    );
  if (!Number.isInteger(r.limit) || r.limit < 1 || r.limit > RATE_LIMIT_MAX)
    throw new ConfigError(
      `invalid rateLimit.limit for activity ${name}: an integer from 1 to ${RATE_LIMIT_MAX} (got ${JSON.stringify(r.limit)})`,
    );
  if (!Number.isInteger(r.periodMs) || r.periodMs < 10 || r.periodMs > 86_400_000)
    throw new ConfigError(
      `invalid rateLimit.periodMs for activity ${name}: an integer from 10 to 86400000 ms (got ${JSON.stringify(r.periodMs)})`,
    );
  if (r.key !== undefined && typeof r.key !== 'function')
    throw new ConfigError(
      `invalid rateLimit.key for activity ${name}: a function (input) => string`,
    );
}

function checkConcurrency(name: string, c: ActivityConcurrencySpec): void {
  if (typeof c !== 'object' || c === null)
    throw new ConfigError(`invalid concurrency for activity ${name}: an object {limit, key?}`);
  if (!Number.isInteger(c.limit) || c.limit < 1 || c.limit > RATE_LIMIT_MAX)
    throw new ConfigError(
      `invalid concurrency.limit for activity ${name}: an integer from 1 to ${RATE_LIMIT_MAX} (got ${JSON.stringify(c.limit)})`,
    );
  if (c.key !== undefined && typeof c.key !== 'function')
    throw new ConfigError(
      `invalid concurrency.key for activity ${name}: a function (input) => string`,
    );
}

const HTTP_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE', 'GET']);

function checkHttpSpec(name: string, h: HttpActivitySpec): void {
  let url: URL | undefined;
  try {
    url = new URL(h.url);
  } catch {
    url = undefined;
  }
  if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:'))
    throw new ConfigError(
      `invalid http.url for activity ${name}: an http:// or https:// URL (got ${JSON.stringify(h.url)})`,
    );
  if (h.method !== undefined && !HTTP_METHODS.has(h.method))
    throw new ConfigError(
      `invalid http.method for activity ${name}: one of ${[...HTTP_METHODS].join(', ')}`,
    );
  if (
    h.headers !== undefined &&
    (typeof h.headers !== 'object' || !Object.values(h.headers).every((v) => typeof v === 'string'))
  )
    throw new ConfigError(`invalid http.headers for activity ${name}: an object of strings`);
  positive('http.timeoutMs', h.timeoutMs, true);
}

/**
 * Declare an activity for `setup({ actors: { name: activity('name', options) } })`. The returned
 * logic is a placeholder XState can type-check against; running it outside the engine throws.
 */
export function activity<TInput = unknown, TOutput = unknown>(
  name: string,
  options: ActivityOptionsInput = {},
): ReturnType<typeof fromPromise<TOutput, TInput>> {
  resolveActivityOptions(name, options); // fail at declaration time
  const logic = fromPromise<TOutput, TInput>(() =>
    Promise.reject(new Error(`activity ${name} runs on a jetflow worker, not inside the machine`)),
  );
  (logic as Marked)[ACTIVITY] = { name, options };
  return logic;
}

/** Per-call overrides: `invoke: { src: 'x', input: withActivityOptions(input, { retry: {...} }) }`. */
export const CALL_OPTIONS_KEY = '$activity';
export function withActivityOptions<T extends object>(input: T, options: ActivityOptionsInput): T {
  return { ...input, [CALL_OPTIONS_KEY]: options };
}

/**
 * Resolve the activity a `spawnChild` refers to. `src` is the key in `setup({ actors })`; logic
 * not declared with {@link activity} is an activity of that name with default options.
 */
export function resolveActivity(
  machine: AnyStateMachine,
  src: string,
  input: unknown,
): { name: string; options: ActivityOptions; input: unknown } {
  const actors =
    (machine.implementations as { actors?: Record<string, AnyActorLogic> }).actors ?? {};
  const logic = actors[src] as (AnyActorLogic & Marked) | undefined;
  const mark = logic?.[ACTIVITY];
  const name = mark?.name ?? src;
  let callOptions: ActivityOptionsInput | undefined;
  let taskInput = input;
  if (input && typeof input === 'object' && CALL_OPTIONS_KEY in input) {
    const { [CALL_OPTIONS_KEY]: opts, ...rest } = input as Record<string, unknown>;
    callOptions = opts as ActivityOptionsInput;
    taskInput = rest;
  }
  const base = mark?.options ?? {};
  const merged: ActivityOptionsInput = {
    ...base,
    ...callOptions,
    retry: { ...base.retry, ...callOptions?.retry },
  };
  return { name, options: resolveActivityOptions(name, merged), input: taskInput };
}
