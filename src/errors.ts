/**
 * Every error jetflow raises. Each sets `name`, accepts `{ cause }`, and carries structured
 * fields (`code`, `workflowId`, `subject`) so that no caller parses messages.
 *
 * Retryability is in the type: {@link RetryableError} may be retried (optionally after
 * `retryAfterMs`), {@link TerminalError} never is.
 */

/** Stable machine-readable error codes (part of the wire contract: they appear in error replies). */
export const ErrorCode = {
  BadRequest: 'bad_request',
  MalformedBody: 'malformed_body',
  PayloadTooLarge: 'payload_too_large',
  UnknownType: 'unknown_type',
  UnknownVersion: 'unknown_version',
  NotFound: 'not_found',
  AlreadyFinished: 'already_finished',
  EventNotAccepted: 'event_not_accepted',
  GuardRejected: 'guard_rejected',
  MachineError: 'machine_error',
  Timeout: 'timeout',
  Unavailable: 'unavailable',
  Config: 'config',
  Topology: 'topology',
  Conflict: 'conflict',
  Internal: 'internal',
  /** Admin: the actor id names no activity parked for review. */
  NotParked: 'not_parked',
  /** Admin: the verb cannot be applied while the workflow is paused (resume first). */
  Paused: 'paused',
  /** Admin: `toStep` is not a step of this workflow, or its journal entry is gone. */
  StepOutOfRange: 'step_out_of_range',
  /** The request does not fit the workflow's current state (a full tree, a node verb's status). */
  InvalidState: 'invalid_state',
  /** A start refused by its concurrency key (`onLimit: 'cancel-newest'` and the key is full). */
  ConcurrencyLimit: 'concurrency_limit',
  /** The definition's `concurrency.key(input)` threw or returned no usable key. */
  ConcurrencyKey: 'concurrency_key',
  /** Admin: the verb needs a deferred workflow (promote, skip). */
  NotDeferred: 'not_deferred',
  /** Admin: the workflow is deferred; the verb needs it admitted (pause, resume, retry, …). */
  Deferred: 'deferred',
  /** Admin release: the holder still runs; cancel or terminate it (its slot is freed then). */
  HolderRunning: 'holder_running',
  /** A webhook request without a valid signature (missing, wrong, or a stale timestamp). */
  Unauthorized: 'unauthorized',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface JetflowErrorFields {
  code?: ErrorCode;
  workflowId?: string;
  workflowType?: string;
  subject?: string;
  details?: unknown;
  cause?: unknown;
}

/** Base of every jetflow error. */
export class JetflowError extends Error {
  override name = 'JetflowError';
  readonly code: ErrorCode;
  readonly workflowId: string | undefined;
  readonly workflowType: string | undefined;
  readonly subject: string | undefined;
  readonly details: unknown;

  constructor(message: string, fields: JetflowErrorFields = {}) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause });
    this.code = fields.code ?? ErrorCode.Internal;
    this.workflowId = fields.workflowId;
    this.workflowType = fields.workflowType;
    this.subject = fields.subject;
    this.details = fields.details;
  }
}

/** May succeed if tried again (optionally after `retryAfterMs`). */
export class RetryableError extends JetflowError {
  override name = 'RetryableError';
  readonly retryAfterMs: number | undefined;
  constructor(message: string, fields: JetflowErrorFields & { retryAfterMs?: number } = {}) {
    super(message, { code: ErrorCode.Unavailable, ...fields });
    this.retryAfterMs = fields.retryAfterMs;
  }
}

/** Will fail the same way every time: never retried. */
export class TerminalError extends JetflowError {
  override name = 'TerminalError';
}

/** The request itself is wrong (malformed, too large, unknown type, not accepted now). */
export class BadRequestError extends TerminalError {
  override name = 'BadRequestError';
  constructor(message: string, fields: JetflowErrorFields = {}) {
    super(message, { code: ErrorCode.BadRequest, ...fields });
  }
}

/** Invalid configuration; thrown before anything connects. */
export class ConfigError extends TerminalError {
  override name = 'ConfigError';
  constructor(message: string, fields: JetflowErrorFields = {}) {
    super(message, { code: ErrorCode.Config, ...fields });
  }
}

/** A compare-and-set lost against a newer record (a stale writer was fenced). */
export class ConflictError extends RetryableError {
  override name = 'ConflictError';
  constructor(message: string, fields: JetflowErrorFields = {}) {
    super(message, { code: ErrorCode.Conflict, ...fields });
  }
}

/**
 * Some effects of an outbox could not be performed. `failed` lists their outbox indexes (the
 * others were performed); `terminal` is set when one of them can never succeed.
 */
export class EffectsError extends JetflowError {
  override name = 'EffectsError';
  readonly failed: readonly number[];
  readonly terminal: TerminalError | undefined;
  constructor(
    message: string,
    fields: JetflowErrorFields & { failed: readonly number[]; terminal?: TerminalError },
  ) {
    super(message, { code: fields.terminal?.code ?? ErrorCode.Unavailable, ...fields });
    this.failed = fields.failed;
    this.terminal = fields.terminal;
  }
}

/** A failure stored as data: in records, notifications and error replies. */
export interface ErrorData {
  type: string;
  code: ErrorCode;
  message: string;
  retryable: boolean;
  details?: unknown;
}

/** Normalise any throwable into {@link ErrorData}. */
export function toErrorData(err: unknown): ErrorData {
  if (err instanceof JetflowError) {
    const out: ErrorData = {
      type: err.name,
      code: err.code,
      message: err.message,
      retryable: err instanceof RetryableError,
    };
    if (err.details !== undefined) out.details = err.details;
    return out;
  }
  if (err instanceof Error) {
    return { type: err.name, code: ErrorCode.Internal, message: err.message, retryable: true };
  }
  return { type: 'Error', code: ErrorCode.Internal, message: String(err), retryable: true };
}

/** Rebuild a throwable from {@link ErrorData} received on the wire. */
export function fromErrorData(data: ErrorData, fields: JetflowErrorFields = {}): JetflowError {
  const f = { ...fields, code: data.code, details: data.details };
  if (data.code === ErrorCode.Conflict) return new ConflictError(data.message, f);
  return data.retryable ? new RetryableError(data.message, f) : new TerminalError(data.message, f);
}
