/**
 * A worker process outlives a graceful nats-server restart (found by the mixed chaos test): the
 * server ends pending pulls with a 409 "server shutdown", which used to escape the fetch loop as
 * an unhandled rejection and exit the worker, leaving its tasks to wait for AckWait and its queue
 * without a consumer.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { resolve } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { NatsServer } from '../harness/nats-server.js';
import { runRoot } from '../harness/nats-server.js';
import { repoRoot, startEngine, startServer, uniquePrefix } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';
import { Client } from '../../src/client/index.js';

let server: NatsServer;
let nc: NatsConnection;
let engine: Engine | undefined;
let worker: ChildProcess | undefined;
let out = '';
const prefix = uniquePrefix();

beforeAll(async () => {
  server = await startServer();
  nc = await connect({ servers: server.url, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
});
afterAll(async () => {
  if (worker && worker.exitCode === null) worker.kill('SIGKILL');
  await engine?.close();
  await nc?.close();
  await server?.stop();
});

describe('worker and a graceful server restart', () => {
  it('the worker process keeps running and runs the next tasks', async () => {
    engine = await startEngine(server.url, prefix);
    worker = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        resolve(repoRoot, 'test/fixtures/worker-main.ts'),
        server.url,
        prefix,
        runRoot(),
      ],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    worker.stdout!.on('data', (b: Buffer) => (out += b.toString()));
    worker.stderr!.on('data', (b: Buffer) => (out += b.toString()));
    const deadline = Date.now() + 30_000;
    while (!out.includes('worker ready') && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    const client = new Client(nc, { prefix, timeoutMs: 10_000 });
    await client.start('chain', 'before', { x: 1 });
    expect(await client.result<{ x: number }>('chain', 'before', { timeoutMs: 30_000 })).toEqual({
      x: 4,
    });

    await server.restart(); // graceful: SIGTERM, same store
    await new Promise((r) => setTimeout(r, 2_000));
    expect(worker.exitCode, out).toBeNull();

    await client.start('chain', 'after', { x: 10 });
    expect(await client.result<{ x: number }>('chain', 'after', { timeoutMs: 30_000 })).toEqual({
      x: 13,
    });
    expect(worker.exitCode, out).toBeNull();
  }, 90_000);
});
