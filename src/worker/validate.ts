/**
 * What a worker checks in a task before it runs it (issue 17): anyone able to publish on a task
 * subject could otherwise make it run user code for another workflow, send the result elsewhere,
 * or spin in a retry loop (`maxAttempts: 1e9` with a negative backoff). A genuine task always
 * passes: the bounds are the ones the engine enforces on activity options.
 */
import { createHash } from 'node:crypto';
import { isToken, type Subjects } from '../contracts/subjects.js';
import type { TaskMessage } from '../contracts/wire.js';

/** Longest delay a task may ask for (a year): beyond it a number is not a plausible setting. */
const MAX_MS = 24 * 3600_000 * 365;

const finiteIn = (v: unknown, min: number, max: number): boolean =>
  typeof v === 'number' && Number.isFinite(v) && v >= min && v <= max;

/** Why `task`, pulled from `queue`, must not run; undefined when it may. */
export function invalidTask(task: TaskMessage, queue: string, s: Subjects): string | undefined {
  if (!isToken(task.workflowType) || !isToken(task.workflowId))
    return 'workflowType and workflowId must be subject tokens';
  if (
    typeof task.taskId !== 'string' ||
    !task.taskId.startsWith(`${task.workflowType}.${task.workflowId}.`)
  )
    return 'taskId must be <workflowType>.<workflowId>.<step>.<actorId>';
  if (task.taskKey !== createHash('sha256').update(task.taskId).digest('base64url').slice(0, 27))
    return 'taskKey does not belong to taskId';
  if (task.queue !== queue) return `task of queue ${String(task.queue)} on queue ${queue}`;
  if (task.resultSubject !== s.inbox('result', task.workflowType, task.workflowId))
    return "resultSubject is not the task's workflow's result subject";
  if (typeof task.actorId !== 'string' || typeof task.activity !== 'string')
    return 'actorId and activity must be strings';
  if (task.token !== undefined && typeof task.token !== 'string') return 'token must be a string';
  if (!Number.isSafeInteger(task.maxAttempts) || task.maxAttempts < 1)
    return 'maxAttempts must be an integer >= 1';
  if (!finiteIn(task.startToCloseMs, 1, MAX_MS)) return 'startToCloseMs out of bounds';
  if (task.heartbeatMs !== undefined && !finiteIn(task.heartbeatMs, 1, MAX_MS))
    return 'heartbeatMs out of bounds';
  if (task.deadline !== undefined && !finiteIn(task.deadline, 0, Number.MAX_SAFE_INTEGER))
    return 'deadline out of bounds';
  const r = task.retry as Partial<TaskMessage['retry']> | undefined;
  if (!r || typeof r !== 'object') return 'retry policy missing';
  if (!finiteIn(r.initialIntervalMs, 1, MAX_MS)) return 'retry.initialIntervalMs out of bounds';
  if (!finiteIn(r.maxIntervalMs, 1, MAX_MS)) return 'retry.maxIntervalMs out of bounds';
  if (!finiteIn(r.backoffCoefficient, 1, 1000)) return 'retry.backoffCoefficient out of bounds';
  if (!finiteIn(r.jitter, 0, 1)) return 'retry.jitter out of bounds';
  if (!Array.isArray(r.nonRetryableErrorTypes)) return 'retry.nonRetryableErrorTypes missing';
  if (
    r.delaysMs !== undefined &&
    (!Array.isArray(r.delaysMs) ||
      r.delaysMs.length < 1 ||
      r.delaysMs.length > 100 ||
      !r.delaysMs.every((x) => finiteIn(x, 0, MAX_MS)))
  )
    return 'retry.delaysMs out of bounds';
  return undefined;
}
