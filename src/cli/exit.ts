/**
 * Exit codes of every `jetflow` verb (documented in the README) and the one-line error message
 * printed on stderr. No verb prints a stack trace unless `JETFLOW_DEBUG=1`.
 */
import { ErrorCode, JetflowError } from '../errors.js';

export const ExitCode = {
  /** Done; for `result`/`watch`: the workflow completed. */
  Ok: 0,
  /** The workflow failed or was canceled, or any other error. */
  Failed: 1,
  /** Bad command line: unknown verb or flag, missing argument, an argument that is not JSON. */
  Usage: 2,
  /** No such workflow, or a workflow type no engine registers. */
  NotFound: 3,
  /** The engine refused the request: event not accepted now, bad request, already finished. */
  Rejected: 4,
  /** Timed out, no engine answering, or NATS unreachable: may succeed later. */
  Unavailable: 5,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** A mistake on the command line (exit 2). */
export class UsageError extends Error {
  override name = 'UsageError';
}

const BY_CODE: Partial<Record<ErrorCode, ExitCode>> = {
  [ErrorCode.NotFound]: ExitCode.NotFound,
  [ErrorCode.UnknownType]: ExitCode.NotFound,
  [ErrorCode.UnknownVersion]: ExitCode.NotFound,
  [ErrorCode.BadRequest]: ExitCode.Rejected,
  [ErrorCode.MalformedBody]: ExitCode.Rejected,
  [ErrorCode.PayloadTooLarge]: ExitCode.Rejected,
  [ErrorCode.EventNotAccepted]: ExitCode.Rejected,
  [ErrorCode.GuardRejected]: ExitCode.Rejected,
  [ErrorCode.AlreadyFinished]: ExitCode.Rejected,
  [ErrorCode.NotParked]: ExitCode.Rejected,
  [ErrorCode.StepOutOfRange]: ExitCode.Rejected,
  [ErrorCode.InvalidState]: ExitCode.Rejected,
  [ErrorCode.Paused]: ExitCode.Rejected,
  [ErrorCode.Timeout]: ExitCode.Unavailable,
  [ErrorCode.Unavailable]: ExitCode.Unavailable,
  [ErrorCode.Config]: ExitCode.Usage,
};

/** nats.js errors by name (a request's cause says why it failed). */
function natsKind(err: unknown): 'timeout' | 'no-responders' | 'connection' | undefined {
  for (let e = err as { name?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; i++) {
    if (e.name === 'TimeoutError') return 'timeout';
    if (e.name === 'NoResponders' || e.name === 'NoRespondersError') return 'no-responders';
    if (e.name === 'ConnectionError') return 'connection';
    e = e.cause as typeof e;
  }
  return undefined;
}

export function exitCodeOf(err: unknown): ExitCode {
  if (err instanceof UsageError) return ExitCode.Usage;
  if (err instanceof JetflowError) return BY_CODE[err.code] ?? ExitCode.Failed;
  return natsKind(err) ? ExitCode.Unavailable : ExitCode.Failed;
}

/** One line, no stack: `code: message` (the error's code when it has one). */
export function describeError(err: unknown): string {
  if (err instanceof UsageError) return err.message;
  if (err instanceof JetflowError) {
    const accepts = (err.details as { accepts?: unknown } | undefined)?.accepts;
    const hint = Array.isArray(accepts) ? ` (accepts now: ${accepts.join(', ') || 'nothing'})` : '';
    return `${err.code}: ${err.message}${hint}`.replace(/\s*\n\s*/g, ' ');
  }
  switch (natsKind(err)) {
    case 'no-responders':
      return 'unavailable: no engine is answering (is `jetflow engine` running with this --prefix?)';
    case 'timeout':
      return 'timeout: no reply in time (the request may still be applied)';
    case 'connection':
      return `unavailable: ${(err as Error).message}`;
  }
  const e = err as { message?: unknown } | undefined;
  return String(typeof e?.message === 'string' ? e.message : err).replace(/\s*\n\s*/g, ' ');
}

/** JSON form of an error for `--json` output. */
export function errorJson(err: unknown): { error: Record<string, unknown> } {
  const code =
    err instanceof JetflowError
      ? err.code
      : err instanceof UsageError
        ? 'usage'
        : (natsKind(err) ?? 'error');
  const details = err instanceof JetflowError ? err.details : undefined;
  return {
    error: {
      code,
      message: describeError(err),
      exitCode: exitCodeOf(err),
      ...(details === undefined ? {} : { details }),
    },
  };
}
