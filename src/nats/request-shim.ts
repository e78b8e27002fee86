/**
 * A cost in nats.js 3.4 that jetflow pays on every JetStream publish and KV write: a request
 * that got its reply still builds `new RequestError("cancelled")` (an `Error`, with its stack
 * captured) in `RequestOne.cancel()`, only to reject a promise that is already resolved. Measured
 * at 5 % of the engine's CPU in workload 1 (`npm run bench:journal -- --profile DIR`).
 *
 * The shim marks a request settled in `resolver()` and then skips that dead error; every other
 * path (a timeout, a cancel with an error, a closed connection) runs the library's own code. It
 * patches the class of the nats-core copy the connection really uses (through
 * `@nats-io/transport-node`), once, and only when that class has the shape it expects:
 * otherwise nothing changes.
 */
import { RequestOne } from '@nats-io/transport-node/lib/nats-base-client.js';

interface Patchable {
  resolver: (this: Patchable, err: Error | null, msg: unknown) => void;
  cancel: (this: Patchable, err?: Error) => void;
  timer?: { cancel(): void };
  mux: { cancel(r: unknown): void };
  jetflowSettled?: boolean;
}

const MARK = Symbol.for('jetflow.requestShim');

/** Install the shim (idempotent). Returns whether the library's class is patched. */
export function installRequestShim(): boolean {
  const proto = (RequestOne as unknown as { prototype: Patchable & { [MARK]?: true } }).prototype;
  if (proto[MARK]) return true;
  if (typeof proto.resolver !== 'function' || typeof proto.cancel !== 'function') return false;
  const resolver = proto.resolver;
  const cancel = proto.cancel;
  proto.resolver = function (err, msg) {
    this.jetflowSettled = true;
    resolver.call(this, err, msg);
  };
  proto.cancel = function (err) {
    if (this.jetflowSettled && err === undefined) {
      // What the library does, minus rejecting an already settled promise with a new Error.
      this.timer?.cancel();
      this.mux.cancel(this);
      return;
    }
    cancel.call(this, err);
  };
  proto[MARK] = true;
  return true;
}

installRequestShim();
