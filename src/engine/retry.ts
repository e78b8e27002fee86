/**
 * Retry policies and their backoff: shared by the engine (which stores the policy in a task) and
 * the worker (which applies it). No XState here, so the worker entry does not load it.
 */

/** Retry policy of one activity. Attempts are counted from 1. */
export interface RetryPolicy {
  /** Total attempts including the first (1 = no retry). Default 5. */
  maxAttempts: number;
  /** Delay before the 2nd attempt. Default 1000 ms. */
  initialIntervalMs: number;
  /** Each further delay is the previous one times this. Default 2. */
  backoffCoefficient: number;
  /** Cap on one delay. Default 60 s. */
  maxIntervalMs: number;
  /** Random spread, 0..1: a delay d becomes d * (1 ± jitter/2). Default 0.2. */
  jitter: number;
  /** Error `type`s (names) that fail at once, never retried. `TerminalError` always is. */
  nonRetryableErrorTypes: string[];
  /**
   * Exact schedule (Backbeat's issue #9): the delay before attempt `a+1` is
   * `delaysMs[min(a-1, len-1)]`, spread by `jitter`; the exponential fields are then unused.
   */
  delaysMs?: number[];
}

export const DEFAULT_RETRY: Readonly<RetryPolicy> = Object.freeze({
  maxAttempts: 5,
  initialIntervalMs: 1_000,
  backoffCoefficient: 2,
  maxIntervalMs: 60_000,
  jitter: 0.2,
  nonRetryableErrorTypes: [],
});

/**
 * Delay before attempt `attempt + 1` after attempt `attempt` failed (attempt counts from 1).
 * `random` in [0, 1) makes the jitter; 0.5 gives the exact schedule.
 */
export function backoffDelayMs(
  policy: RetryPolicy,
  attempt: number,
  random = Math.random(),
): number {
  const d = policy.delaysMs;
  const base =
    d && d.length > 0
      ? d[Math.min(Math.max(0, attempt - 1), d.length - 1)]!
      : Math.min(
          policy.maxIntervalMs,
          policy.initialIntervalMs * policy.backoffCoefficient ** Math.max(0, attempt - 1),
        );
  const spread = 1 + policy.jitter * (random - 0.5);
  return Math.max(0, Math.round(base * spread));
}
