/**
 * Restate SDK endpoint for the peer benchmark's workload 1 ("sequential"), run as its own child
 * process by bench/peers/restate.ts so its CPU can be measured separately from restate-server.
 *
 * It serves two equivalent definitions, each running three journaled `ctx.run` steps that return
 * their input + 1 (so input 0 yields 3):
 *   - service `Seq`, handler `run` (stateless durable handler; the default benchmark target);
 *   - workflow `SeqWf`, handler `run` (keyed, run-once workflow).
 *
 * It listens with HTTP/2 cleartext on 127.0.0.1 (port from $PORT, 0 = any free port) and prints
 * `RESTATE_SERVICE_LISTENING <port>` once bound. SIGTERM/SIGINT close it.
 *
 * The SDK uses `Promise.withResolvers` (ES2024), which Node 20 lacks: it is polyfilled below
 * before the SDK is loaded (hence the dynamic import).
 */
import { createServer } from 'node:http2';
import type * as Sdk from '@restatedev/restate-sdk';

interface Resolvers<T> {
  promise: Promise<T>;
  resolve: (value: T | PromiseLike<T>) => void;
  reject: (reason?: unknown) => void;
}
const promiseCtor = Promise as PromiseConstructor & { withResolvers?: <T>() => Resolvers<T> };
promiseCtor.withResolvers ??= <T>(): Resolvers<T> => {
  const r: Partial<Resolvers<T>> = {};
  r.promise = new Promise<T>((resolve, reject) => Object.assign(r, { resolve, reject }));
  return r as Resolvers<T>;
};

const restate = await import('@restatedev/restate-sdk');

/** Three sequential journaled steps, each returning its input + 1. */
async function threeSteps(ctx: Sdk.Context, input: number): Promise<number> {
  const a = await ctx.run('step1', () => input + 1);
  const b = await ctx.run('step2', () => a + 1);
  return ctx.run('step3', () => b + 1);
}

const seq = restate.service({
  name: 'Seq',
  handlers: { run: (ctx: Sdk.Context, input: number) => threeSteps(ctx, input) },
});

const seqWf = restate.workflow({
  name: 'SeqWf',
  handlers: { run: (ctx: Sdk.WorkflowContext, input: number) => threeSteps(ctx, input) },
});

const handler = restate.endpoint().bind(seq).bind(seqWf).http2Handler();
const server = createServer(handler);
server.listen(Number(process.env.PORT ?? '0'), '127.0.0.1', () => {
  const addr = server.address();
  const port = addr !== null && typeof addr === 'object' ? addr.port : -1;
  process.stdout.write(`RESTATE_SERVICE_LISTENING ${port}\n`);
});

const shutdown = (): void => {
  server.close();
  // Open HTTP/2 sessions from restate-server would keep close() pending: do not wait for them.
  setTimeout(() => process.exit(0), 200).unref();
};
process.once('SIGTERM', shutdown);
process.once('SIGINT', shutdown);
