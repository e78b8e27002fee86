/**
 * The nats.js request shim (src/nats/request-shim.ts): a request answered costs no dead
 * `RequestError`, and every failure still reaches the caller as the library reports it.
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { connect, errors } from '@nats-io/transport-node';
import { installRequestShim } from '../../src/nats/request-shim.js';
import { useServer } from '../harness/jetflow.js';

const env = useServer();

/** Count `RequestError`s built by the nats-core copy the connection uses, while `f` runs. */
async function countRequestErrors(f: () => Promise<void>): Promise<number> {
  const req = createRequire(createRequire(import.meta.url).resolve('@nats-io/transport-node'));
  // Its `lib/errors.js` by file path: the package's exports do not list it.
  const lib = dirname(req.resolve('@nats-io/nats-core'));
  const mod = req(join(lib, 'errors.js')) as { RequestError: typeof Error };
  const Original = mod.RequestError;
  let n = 0;
  const holder = mod as unknown as Record<string, unknown>;
  holder.RequestError = class extends Original {
    constructor(...args: ConstructorParameters<typeof Error>) {
      super(...args);
      n++;
    }
  };
  try {
    await f();
  } finally {
    holder.RequestError = Original;
  }
  return n;
}

describe('request shim', () => {
  it('is installed; answered requests build no error; timeouts and no responders still fail', async () => {
    expect(installRequestShim()).toBe(true);
    // As jetflow's own connections are made (src/nats/connection.ts): no async trace per request.
    const nc = await connect({ servers: env.server.url, noAsyncTraces: true });
    const sub = env.nc.subscribe('shim.echo', { callback: (_e, m) => void m.respond(m.data) });
    // The responder's interest reaches the server before the other connection asks.
    await env.nc.flush();
    const built = await countRequestErrors(async () => {
      for (let i = 0; i < 50; i++) {
        const r = await nc.request('shim.echo', new Uint8Array([i]), { timeout: 5_000 });
        expect(r.data[0]).toBe(i);
      }
    });
    expect(built).toBe(0);
    sub.unsubscribe();
    // No responders: rejected as the library does (a RequestError caused by NoRespondersError).
    const err = await env.nc.request('shim.nobody', new Uint8Array(), { timeout: 2_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(errors.RequestError);
    expect((err as { isNoResponders(): boolean }).isNoResponders()).toBe(true);
    // A request nobody answers in time: a TimeoutError.
    const quiet = env.nc.subscribe('shim.quiet', { callback: () => undefined });
    await env.nc.flush();
    const late = await env.nc.request('shim.quiet', new Uint8Array(), { timeout: 200 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(late).toBeInstanceOf(errors.TimeoutError);
    quiet.unsubscribe();
    await nc.close();
  });
});
