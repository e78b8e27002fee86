/** HTTP status of a jetflow error, shared by the HTTP API and the console's JSON API. */
import { ErrorCode, type JetflowError } from '../errors.js';

const STATUS_OF: Partial<Record<string, number>> = {
  [ErrorCode.BadRequest]: 400,
  [ErrorCode.MalformedBody]: 400,
  [ErrorCode.UnknownType]: 404,
  [ErrorCode.UnknownVersion]: 404,
  [ErrorCode.NotFound]: 404,
  [ErrorCode.EventNotAccepted]: 409,
  [ErrorCode.GuardRejected]: 409,
  [ErrorCode.AlreadyFinished]: 409,
  [ErrorCode.InvalidState]: 409,
  [ErrorCode.Conflict]: 409,
  [ErrorCode.Paused]: 409,
  // Operator verbs refused by the workflow's state (repair, concurrency keys): as the CLI's exit 4.
  [ErrorCode.NotParked]: 409,
  [ErrorCode.StepOutOfRange]: 409,
  [ErrorCode.Deferred]: 409,
  [ErrorCode.NotDeferred]: 409,
  [ErrorCode.HolderRunning]: 409,
  [ErrorCode.ConcurrencyLimit]: 409,
  [ErrorCode.PayloadTooLarge]: 413,
  // A NATS permissions violation (the credential may not do this); a missing or unknown bearer
  // token is answered 401 before any call.
  [ErrorCode.Unauthorized]: 403,
  [ErrorCode.Timeout]: 503,
  [ErrorCode.Unavailable]: 503,
};

/**
 * The status its code maps to (`known`), else 503 for anything retryable not classified (a closed
 * or reconnecting connection) and 500 for the rest.
 */
export function httpStatusOf(j: JetflowError): { status: number; known: boolean } {
  const known = STATUS_OF[j.code];
  return { status: known ?? (j.name === 'RetryableError' ? 503 : 500), known: known !== undefined };
}
