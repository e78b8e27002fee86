/**
 * The console when the NATS server requires auth (the configuration `jetflow auth` writes): the
 * console acts with the credentials it is given, and only with them. Started with the read-only
 * `console` role it shows workflows but every action is refused by the server (403, nothing
 * changes); with the `operator` role and an access token it acts, and a request without the
 * token is refused (401) before any NATS call. Without credentials nothing reaches NATS at all.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, nkeyAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { NatsServer } from '../harness/nats-server.js';
import { quietLogger } from '../harness/jetflow.js';
import { authConfig, type Role } from '../../src/security/auth.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry } from '../../src/engine/registry.js';
import { Client } from '../../src/client/index.js';
import { startConsole, type ConsoleServer } from '../../src/host/console.js';
import { workflows } from '../fixtures/workflows.js';

const SHARDS = 4;
const A = authConfig({
  prefix: 'wf',
  shards: SHARDS,
  queues: ['inc'],
  maxFile: '1G',
  maxMem: '64M',
  account: 'TENANT_A',
  types: ['counter'],
});
const auth = (role: Role) => ({
  authenticator: nkeyAuthenticator(new TextEncoder().encode(A.users[role].seed)),
});

let server: NatsServer;
let engine: Engine;
const conns: NatsConnection[] = [];
const consoles: ConsoleServer[] = [];

async function consoleAs(role: Role, token?: string): Promise<ConsoleServer> {
  const nc = await connect({ servers: server.url, ...auth(role) });
  conns.push(nc);
  const ui = await startConsole({
    client: new Client(nc, { prefix: 'wf' }),
    registry: createRegistry(workflows),
    shards: SHARDS,
    port: 0,
    ...(token ? { token } : {}),
  });
  consoles.push(ui);
  return ui;
}

const post = (url: string, body: unknown, token?: string) =>
  fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(token ? { authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify(body),
  });

beforeAll(async () => {
  server = await NatsServer.start({
    extraConfig: `accounts {\n${A.account}\n}`,
    connect: auth('engine'),
  });
  engine = await Engine.create(
    {
      servers: server.url,
      prefix: 'wf',
      shards: SHARDS,
      failoverMs: 2_000,
      journalMaxBytes: 64 << 20,
      eventsMaxBytes: 16 << 20,
    },
    { registry: createRegistry(workflows), logger: quietLogger, connection: auth('engine') },
  );
  const svc = await connect({ servers: server.url, ...auth('service') });
  conns.push(svc);
  await new Client(svc, { prefix: 'wf' }).start('counter', 'c1');
}, 60_000);

afterAll(async () => {
  for (const c of consoles) await c.close();
  await engine?.close();
  for (const nc of conns) await nc.close().catch(() => undefined);
  await server?.stop();
});

describe('console with NATS auth', () => {
  it('no anonymous NATS connection: a console without credentials cannot even connect', async () => {
    await expect(connect({ servers: server.url, reconnect: false })).rejects.toThrow(
      /Authorization/i,
    );
  });

  it('read-only console credentials: the workflow page loads, every action is refused (403) and changes nothing', async () => {
    const ui = await consoleAs('console');
    const page = await fetch(`${ui.url}/api/workflows/counter/c1`);
    expect(page.status).toBe(200);
    expect(((await page.json()) as { query: { status: string } }).query.status).toBe('running');
    const pause = await post(`${ui.url}/api/workflows/counter/c1/pause`, {
      reason: 'try',
      by: 'viewer',
    });
    expect(pause.status).toBe(403);
    expect(((await pause.json()) as { code: string }).code).toBe('unauthorized');
    const signal = await post(`${ui.url}/api/workflows/counter/c1/signal`, {
      event: { type: 'SIG', n: 1 },
    });
    expect(signal.status).toBe(403);
    const op = new Client(conns[0]!, { prefix: 'wf' });
    const q = await op.query('counter', 'c1');
    expect(q.paused).toBeFalsy();
    expect(q.step).toBe(0);
  });

  it('operator credentials and an access token: acts with the token, refuses without it', async () => {
    const ui = await consoleAs('operator', 'ops-token');
    const body = { reason: 'checking', by: 'ops' };
    expect((await post(`${ui.url}/api/workflows/counter/c1/pause`, body)).status).toBe(401);
    expect((await post(`${ui.url}/api/workflows/counter/c1/pause`, body, 'wrong')).status).toBe(
      401,
    );
    const ok = await post(`${ui.url}/api/workflows/counter/c1/pause`, body, 'ops-token');
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { verb: string }).verb).toBe('pause');
    const q = await fetch(`${ui.url}/api/workflows/counter/c1`, {
      headers: { authorization: 'Bearer ops-token' },
    });
    expect(((await q.json()) as { query: { paused?: boolean } }).query.paused).toBe(true);
  });
});
