/** Connecting to NATS with jetflow's defaults (reconnect forever, named connection). */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  jetstream,
  jetstreamManager,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { ErrorCode, RetryableError } from '../errors.js';

export interface Connected {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
}

export async function connectNats(servers: readonly string[], name: string): Promise<Connected> {
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
