/**
 * Proof that a result, an attempt notice or a timer message answers something this workflow's
 * engine issued (issue 17). Each record holds a random secret (`WorkflowRecord.secret`, made when
 * the record is created, never sent anywhere); every task message, child/watch reference and
 * timer message carries an HMAC of what it stands for under that secret (`token`). A message is
 * applied only with the right token: a forged one (no token, a guessed one, another task's, another
 * workflow's) is dropped, journaled and counted; a replayed genuine one is stale (its task or timer
 * setting is no longer current) and dropped as before.
 *
 * One secret per record instead of one random token per task keeps the record small (a tree's
 * fan-out of 1,000 tasks adds nothing) and the journal free of tokens (step entries list the task
 * table, and `history` is a service verb). Every task id and timer setting (id + step) is issued
 * once, so each token is still unique to one issuance.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

/** A new record secret: 128 random bits, base64url. */
export function newSecret(): string {
  return randomBytes(16).toString('base64url');
}

function mac(secret: string, what: string): string {
  return createHmac('sha256', secret).update(what).digest('base64url').slice(0, 22);
}

/** Token of task (or child/watch) `taskId`: results and attempt notices must carry it. */
export function taskToken(secret: string, taskId: string): string {
  return mac(secret, `task.${taskId}`);
}

/** Token of the setting of timer `timerId` at step `step`. */
export function timerToken(secret: string, timerId: string, step: number): string {
  return mac(secret, `timer.${timerId}.${step}`);
}

/** True when `got` equals `expected` (constant time). */
export function tokenMatches(expected: string, got: unknown): boolean {
  if (typeof got !== 'string' || got.length !== expected.length) return false;
  return timingSafeEqual(Buffer.from(expected), Buffer.from(got));
}
