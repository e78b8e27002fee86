/**
 * The pure part of an activity's global rate limit: a sliding window kept as the times of the
 * most recent grants (at most `limit`, oldest first). A new attempt gets the earliest time at or
 * after `now` such that no window of `periodMs` holds more than `limit` grants: `now` while fewer
 * than `limit` grants are on record, else the `limit`-th latest grant plus `periodMs`. A grant may
 * lie in the future (a reservation): the worker postpones the task to it. Grants never go back in
 * time, so the list stays sorted even when callers' clocks differ a little.
 */

export interface RateGrant {
  /** Epoch ms the attempt may start (≥ now). */
  at: number;
  /** The record's grants after this one (at most `limit`, oldest first). */
  grants: number[];
}

/** Reserve the next slot of a window of `limit` per `periodMs`, given the recorded grants. */
export function reserveSlot(
  grants: readonly number[],
  limit: number,
  periodMs: number,
  now: number,
): RateGrant {
  const kept = grants.slice(-limit);
  let at = now;
  if (kept.length >= limit) at = Math.max(at, kept[kept.length - limit]! + periodMs);
  if (kept.length > 0) at = Math.max(at, kept[kept.length - 1]!);
  return { at, grants: [...kept, at].slice(-limit) };
}
