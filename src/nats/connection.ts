/** Connecting to NATS with jetflow's defaults (reconnect forever, named connection). */
import { readFileSync } from 'node:fs';
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  type ConnectionOptions,
  type NatsConnection,
} from '@nats-io/transport-node';
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

/** Options to authenticate with a NATS credentials file (JWT + nkey seed), e.g. `--creds`. */
export function credsFileOptions(path: string): Partial<ConnectionOptions> {
  return { authenticator: credsAuthenticator(new Uint8Array(readFileSync(path))) };
}

/**
 * Credentials and TLS from the environment, as the `nats` CLI reads them (README, "Security"):
 * `NATS_NKEY` (a file holding a user's nkey seed, as `jetflow auth` writes it), `NATS_CREDS`
 * (a JWT credentials file), `NATS_USER` + `NATS_PASSWORD`, `NATS_TOKEN`; `NATS_CA` (a CA file:
 * TLS required, the server verified against it), `NATS_CERT` + `NATS_KEY` (a client certificate).
 */
export function connectionOptionsFromEnv(
  env: NodeJS.ProcessEnv = process.env,
): Partial<ConnectionOptions> {
  const o: Partial<ConnectionOptions> = {};
  const file = (path: string) => new Uint8Array(readFileSync(path));
  if (env.NATS_NKEY) {
    const seed = new TextDecoder().decode(file(env.NATS_NKEY)).trim();
    o.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed));
  } else if (env.NATS_CREDS) o.authenticator = credsAuthenticator(file(env.NATS_CREDS));
  else if (env.NATS_USER) {
    o.user = env.NATS_USER;
    if (env.NATS_PASSWORD !== undefined) o.pass = env.NATS_PASSWORD;
  } else if (env.NATS_TOKEN) o.token = env.NATS_TOKEN;
  if (env.NATS_CA || env.NATS_CERT) {
    o.tls = {
      ...(env.NATS_CA ? { caFile: env.NATS_CA } : {}),
      ...(env.NATS_CERT ? { certFile: env.NATS_CERT } : {}),
      ...(env.NATS_KEY ? { keyFile: env.NATS_KEY } : {}),
    };
  }
  return o;
}

export async function connectNats(
  servers: readonly string[],
  name: string,
  extra: Partial<ConnectionOptions> = connectionOptionsFromEnv(),
): Promise<Connected> {
  let nc: NatsConnection;
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
      ...extra,
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
  // The server refused the credential this (publish or subscription): the same credential gets
  // the same answer, so it is not retryable; the HTTP API and the console answer 403.
  if (name === 'PermissionViolationError' || /^Permissions Violation/i.test(message)) {
    return new TerminalError(`not permitted by the NATS credential: ${message}`, {
      ...f,
      code: ErrorCode.Unauthorized,
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
