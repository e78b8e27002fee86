/**
 * The pure part of priority with aging (activity tasks): which level a queue's worker takes from
 * next. Levels 1 to 5, 1 first; strict between levels, except that a level whose oldest waiting
 * task has waited `maxWaitMs` or longer is served before every level, oldest first.
 */

/** What a worker knows of one level's oldest waiting task. */
export interface LevelProbe {
  /** The level (2 to 5: nothing is above level 1, so it never ages). */
  level: number;
  /** Enqueue time (epoch ms) of its oldest task not yet delivered; undefined when none. */
  oldestAt: number | undefined;
}

/**
 * The order to try levels in: aged levels first (oldest task first), then 1 to 5. `aged` tells
 * which levels to take a single task from (an aged level is served one task per fill, and
 * probed again before the next, so that aging lets through exactly the tasks that waited).
 */
export function levelOrder(
  probes: readonly LevelProbe[],
  now: number,
  maxWaitMs: number,
): { order: number[]; aged: Set<number> } {
  const aged = probes
    .filter((p) => p.oldestAt !== undefined && now - p.oldestAt >= maxWaitMs)
    .sort((a, b) => a.oldestAt! - b.oldestAt!)
    .map((p) => p.level);
  const order = [...aged, ...[1, 2, 3, 4, 5].filter((l) => !aged.includes(l))];
  return { order, aged: new Set(aged) };
}

/**
 * When a level must be probed again: a level with nothing waiting at `now` cannot have a task
 * aged before `now + maxWaitMs`; one whose oldest task came at `t` (not aged) not before
 * `t + maxWaitMs`; an aged one at once.
 */
export function nextProbeAt(p: LevelProbe, now: number, maxWaitMs: number): number {
  if (p.oldestAt === undefined) return now + maxWaitMs;
  const due = p.oldestAt + maxWaitMs;
  return due <= now ? now : due;
}
