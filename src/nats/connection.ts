/** Connecting to NATS with jetflow's defaults (reconnect forever, named connection). */
import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import {
  ErrorCode,
  JetflowError,
  RetryableError,
  TerminalError,
  type JetflowErrorFields,
} from '../errors.js';

export interface Connected {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
}

/** How to authenticate (besides `user:pass@` or a token in the server URL). */
export interface NatsAuth {
  /** A NATS credentials file (JWT + NKey seed), as `nsc` or `jetflow auth` writes them. */
  credsFile?: string;
}

export async function connectNats(
  servers: readonly string[],
  name: string,
  auth: NatsAuth = {},
): Promise<Connected> {
  let nc: NatsConnection;
  let authenticator;
  if (auth.credsFile) {
    try {
      authenticator = credsAuthenticator(readFileSync(auth.credsFile));
    } catch (cause) {
      throw new TerminalError(`cannot read the NATS credentials file ${auth.credsFile}`, {
        code: ErrorCode.Config,
        cause,
      });
    }
  }
  try {
    // noAsyncTraces: nats.js would otherwise build an Error (with a stack) for every request as
    // async context: measured at ~23% of the engine's CPU under load. Request errors still carry
    // their message and cause.
    nc = await connect({
      servers: [...servers],
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      noAsyncTraces: true,
      ...(authenticator ? { authenticator } : {}),
    });
  } catch (cause) {
    throw new RetryableError(
      `cannot connect to NATS at ${servers.join(', ')}: ${String((cause as Error)?.message ?? cause)}`,
      { code: ErrorCode.Unavailable, cause },
    );
  }
  try {
    const jsm = await jetstreamManager(nc, { timeout: 10_000 });
    return { nc, js: jetstream(nc, { timeout: 10_000 }), jsm };
  } catch (cause) {
    await nc.close();
    throw new RetryableError(`JetStream is not enabled on ${servers.join(', ')}`, {
      code: ErrorCode.Unavailable,
      cause,
    });
  }
}

/** JetStream API error codes that mean "this message is too large for the stream". */
const TOO_LARGE_API_CODES = new Set([10054]);

/**
 * Normalise a throwable from a NATS call into a jetflow error, so that the engine core can tell
 * what may succeed if tried again ({@link RetryableError}: timeouts, no responders, a lost
 * connection, 5xx, anything unknown) from what never will ({@link TerminalError}: a message over
 * `max_payload` or the stream's max message size, a request the server rejects as invalid).
 */
export function toJetflowError(err: unknown, fields: JetflowErrorFields = {}): JetflowError {
  if (err instanceof JetflowError) return err;
  const e = err as { name?: unknown; message?: unknown; code?: unknown; status?: unknown };
  const name = typeof e?.name === 'string' ? e.name : '';
  const message = String(typeof e?.message === 'string' ? e.message : err);
  const f = { ...fields, cause: err };
  if (
    /max_payload|maximum payload|message size exceeds maximum|maximum message size/i.test(
      message,
    ) ||
    (name === 'JetStreamApiError' && TOO_LARGE_API_CODES.has(Number(e.code)))
  ) {
    return new TerminalError(`message too large for the server: ${message}`, {
      ...f,
      code: ErrorCode.PayloadTooLarge,
    });
  }
  if (name === 'JetStreamApiError') {
    const status = Number(e.status);
    // The server refused this very request (400-class, not "not found" or "timeout"): sending
    // it again gets the same answer.
    if (status >= 400 && status < 500 && status !== 404 && status !== 408 && status !== 409) {
      return new TerminalError(`the server rejected the request: ${message}`, {
        ...f,
        code: ErrorCode.BadRequest,
        details: { status, apiCode: e.code },
      });
    }
  }
  const timeout = name === 'TimeoutError' || /timeout/i.test(message);
  return new RetryableError(message, {
    ...f,
    code: timeout ? ErrorCode.Timeout : ErrorCode.Unavailable,
  });
}

/** Whether a connection is up now, followed from its status events (for `/readyz`). */
export interface ConnectionState {
  readonly connected: boolean;
}

/** Follow `nc`'s status: down from a disconnect until a reconnect, and for good once closed. */
export function trackConnection(nc: NatsConnection): ConnectionState {
  let connected = !nc.isClosed();
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect' || s.type === 'close') connected = false;
      else if (s.type === 'reconnect') connected = true;
    }
  })().catch(() => undefined);
  void nc.closed().then(() => (connected = false));
  return {
    get connected() {
      return connected && !nc.isClosed();
    },
  };
}
