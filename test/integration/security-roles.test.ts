/**
 * Roles with least privilege and tenants as NATS accounts (issue 17), on a real nats-server with
 * the configuration `jetflow auth` writes: two accounts (tenants A and B, both with prefix `wf`),
 * each with its engine, worker, service, operator and console users. Every role does its job, and
 * gets a permissions violation for each thing it must not do; neither tenant sees the other.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  connect,
  nkeyAuthenticator,
  PermissionViolationError,
  type NatsConnection,
} from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { natsServerBin, NatsServer } from '../harness/nats-server.js';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { quietLogger, repoRoot } from '../harness/jetflow.js';
import { authConfig, type AuthConfig, type Role } from '../../src/security/auth.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry } from '../../src/engine/registry.js';
import { Client } from '../../src/client/index.js';
import { startHttp } from '../../src/http/server.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { pack } from '../../src/contracts/codec.js';
import { JetflowError } from '../../src/errors.js';
import { workflows } from '../fixtures/workflows.js';

const SHARDS = 4;
const common = { prefix: 'wf', shards: SHARDS, queues: ['inc'], maxFile: '1G', maxMem: '64M' };
const A = authConfig({ ...common, account: 'TENANT_A', types: ['chain', 'counter'] });
const B = authConfig({ ...common, account: 'TENANT_B', types: [] });
const auth = (c: AuthConfig, role: Role) => ({
  authenticator: nkeyAuthenticator(new TextEncoder().encode(c.users[role].seed)),
});

let server: NatsServer;
const conns: NatsConnection[] = [];
const engines: Engine[] = [];
let worker: Worker | undefined;
/** Permission errors each connection was told of. */
const violations = new Map<NatsConnection, PermissionViolationError[]>();

async function as(c: AuthConfig, role: Role): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url, ...auth(c, role) });
  const seen: PermissionViolationError[] = [];
  violations.set(nc, seen);
  void (async () => {
    for await (const s of nc.status())
      if (s.type === 'error' && s.error instanceof PermissionViolationError) seen.push(s.error);
  })();
  conns.push(nc);
  return nc;
}

/** `f` makes the server refuse `subject` to `nc` with a permissions violation. */
async function refused(
  nc: NatsConnection,
  operation: 'publish' | 'subscription',
  subject: string,
): Promise<void> {
  if (operation === 'publish') nc.publish(subject, pack({ forged: true }));
  else nc.subscribe(subject, { callback: () => undefined });
  const seen = violations.get(nc)!;
  const end = Date.now() + 5_000;
  // The server checks a publish on the subject after its mappings: `wf.inbox.…` is checked (and
  // refused) as the shard subject `wf.in.<shard>.…` it maps to.
  const mapped = subject.startsWith('wf.inbox.') ? `wf.in.${subject.slice(9)}` : subject;
  const match = (e: PermissionViolationError) =>
    e.subject === subject || e.subject.replace(/^wf\.in\.\d+\./, 'wf.in.') === mapped;
  while (!seen.some((e) => e.operation === operation && match(e))) {
    if (Date.now() > end)
      throw new Error(
        `no permissions violation for ${operation} ${subject} (got: ${seen.map((e) => e.subject).join(', ')})`,
      );
    await new Promise((r) => setTimeout(r, 20));
  }
}

beforeAll(async () => {
  server = await NatsServer.start({
    extraConfig: `accounts {\n${A.account}\n${B.account}\n}`,
    connect: auth(A, 'engine'),
  });
  for (const c of [A, B]) {
    engines.push(
      await Engine.create(
        {
          servers: server.url,
          prefix: 'wf',
          shards: SHARDS,
          failoverMs: 2_000,
          journalMaxBytes: 64 << 20,
          eventsMaxBytes: 16 << 20,
        },
        { registry: createRegistry(workflows), logger: quietLogger, connection: auth(c, 'engine') },
      ),
    );
  }
  worker = await createWorker({
    connection: await as(A, 'worker'),
    prefix: 'wf',
    activities: { inc: (x: unknown) => (x as { x: number }).x + 1 },
  });
}, 60_000);

afterAll(async () => {
  await worker?.close();
  for (const e of engines) await e.close();
  for (const nc of conns) await nc.close().catch(() => undefined);
  await server?.stop();
});

describe('roles', () => {
  it('service: starts, signals, queries, awaits and reads history of its types; nothing internal', async () => {
    const nc = await as(A, 'service');
    const client = new Client(nc, { prefix: 'wf' });
    await client.start('chain', 's1', { x: 0 });
    expect(await client.result('chain', 's1', { timeoutMs: 10_000 })).toEqual({ x: 3 });
    await client.start('counter', 's2');
    await client.signal('counter', 's2', { type: 'SIG', n: 1 });
    expect((await client.query('counter', 's2')).status).toBe('running');
    expect((await client.history('chain', 's1')).entries.length).toBeGreaterThan(0);
    await client.cancel('counter', 's2', 'done');

    await refused(nc, 'publish', 'wf.inbox.result.chain.s1'); // forge a result
    await refused(nc, 'publish', 'wf.inbox.signal.counter.s2'); // the internal signal subject
    await refused(nc, 'publish', 'wf.in.0.result.chain.s1'); // a shard inbox
    await refused(nc, 'publish', 'wf.task.inc.k'); // a task
    await refused(nc, 'publish', 'wf.timer.counter.s2.k'); // a timer
    await refused(nc, 'publish', 'wf.events.chain.s1'); // a notification
    await refused(nc, 'publish', 'wf.admin.pause.counter.s2'); // an operator verb
    await refused(nc, 'publish', 'wf.start.other.x'); // a type not its own
    await refused(nc, 'publish', '$JS.API.CONSUMER.MSG.NEXT.WF_TASKS.queue-inc'); // pull a queue
    await refused(nc, 'publish', '$JS.API.STREAM.PURGE.WF_INBOX');
    // Follow the notifications of a type not its own, or of every type: refused.
    await refused(nc, 'publish', '$JS.API.CONSUMER.CREATE.WF_EVENTS.x.wf.events.other.x');
    await refused(nc, 'publish', '$JS.API.CONSUMER.CREATE.WF_EVENTS');
    await refused(nc, 'subscription', 'wf.>');
  });

  it('worker: runs its queue; cannot signal, start, pull another queue or touch the inbox', async () => {
    const nc = await as(A, 'worker');
    await refused(nc, 'publish', 'wf.signal.counter.x');
    await refused(nc, 'publish', 'wf.start.chain.x');
    await refused(nc, 'publish', 'wf.inbox.signal.counter.x');
    await refused(nc, 'publish', '$JS.API.CONSUMER.MSG.NEXT.WF_TASKS.queue-other');
    await refused(nc, 'publish', 'wf.task.other.k');
    await refused(nc, 'publish', 'wf.timer.counter.x.k');
    await refused(nc, 'subscription', 'wf.taskctl.other');
    // Reading or deleting any task message by sequence (other queues' tokens) needs the
    // account's opt-in (`jetflow auth --priority-workers`).
    await refused(nc, 'publish', '$JS.API.STREAM.MSG.GET.WF_TASKS');
    await refused(nc, 'publish', '$JS.API.STREAM.MSG.DELETE.WF_TASKS');
    const opted = authConfig({ ...common, account: 'P', types: [], priorityWorkers: true });
    expect(opted.config).toContain('$JS.API.STREAM.MSG.GET.WF_TASKS');
    expect(A.config).not.toContain('$JS.API.STREAM.MSG.GET.WF_TASKS');
  });

  it('operator: pauses and resumes (admin verbs); forges nothing', async () => {
    const svc = new Client(await as(A, 'service'), { prefix: 'wf' });
    await svc.start('counter', 'o1');
    const nc = await as(A, 'operator');
    const op = new Client(nc, { prefix: 'wf' });
    await op.pause('counter', 'o1', { reason: 'test', by: 'ops' });
    expect((await op.query('counter', 'o1')).paused).toBeTruthy();
    await op.resume('counter', 'o1', { reason: 'test', by: 'ops' });
    await refused(nc, 'publish', 'wf.inbox.result.counter.o1');
    await refused(nc, 'publish', 'wf.in.1.timer.counter.o1');
    await refused(nc, 'publish', 'wf.task.inc.k');
    await refused(nc, 'publish', '$JS.API.STREAM.DELETE.WF_INBOX');
    // An operator verb from a service credential: refused by the server.
    const svcNc = await as(A, 'service');
    await refused(svcNc, 'publish', 'wf.admin.resume.counter.o1');
  });

  it('console: reads (query, history); starts and admin verbs are refused', async () => {
    const nc = await as(A, 'console');
    const con = new Client(nc, { prefix: 'wf' });
    expect((await con.query('chain', 's1')).status).toBe('completed');
    expect((await con.history('chain', 's1')).entries.length).toBeGreaterThan(0);
    await refused(nc, 'publish', 'wf.start.chain.c1');
    await refused(nc, 'publish', 'wf.signal.counter.s2');
    await refused(nc, 'publish', 'wf.admin.pause.counter.s2');
  });
});

describe('tenants are NATS accounts', () => {
  it("tenant A neither reads nor signals tenant B's workflows, streams or records", async () => {
    const b = new Client(await as(B, 'service'), { prefix: 'wf' });
    await b.start('counter', 'b1');
    await b.signal('counter', 'b1', { type: 'SIG', n: 1 });
    const before = await b.query('counter', 'b1');

    const a = new Client(await as(A, 'service'), { prefix: 'wf' });
    // Same prefix, same subjects: A's engine answers, and it has no such workflow.
    await expect(a.query('counter', 'b1')).rejects.toThrow(JetflowError);
    await expect(a.signal('counter', 'b1', { type: 'SIG', n: 1 })).rejects.toThrow(
      /does not exist/,
    );
    expect(await b.query('counter', 'b1')).toEqual(before);

    // A's most privileged user sees only A's streams and records.
    const ncA = await as(A, 'engine');
    const seen: string[] = [];
    ncA.subscribe('wf.events.>', { callback: (_e, m) => void seen.push(m.subject) });
    await b.signal('counter', 'b1', { type: 'SIG', n: 1 });
    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toEqual([]); // B's notifications are not in A's account
    const kvA = await jetstreamManager(ncA);
    const got = await kvA.streams.getMessage('KV_wf_workflows', {
      last_by_subj: '$KV.wf_workflows.counter.b1',
    });
    expect(got).toBeNull();
    // Even A's engine user, publishing on the internal inbox, reaches only A's engine.
    await jetstream(ncA).publish(
      'wf.inbox.signal.counter.b1',
      pack({ event: { type: 'SIG', n: 1 } }),
    );
    await new Promise((r) => setTimeout(r, 300));
    const after = await b.query('counter', 'b1');
    expect(after.step).toBe(before.step + 1); // B's own second signal only
  });

  it('the shipped multi-tenant config (config/tenants.conf, two accounts) is valid', () => {
    const r = spawnSync(natsServerBin(), ['-t', '-c', 'tenants.conf'], {
      cwd: resolve(repoRoot, 'config'),
      encoding: 'utf8',
    });
    expect(r.status).toBe(0);
    expect(r.stdout + r.stderr).toMatch(/is valid/);
    for (const t of ['ACME', 'GLOBEX']) {
      const text = readFileSync(resolve(repoRoot, 'config/tenants', `${t}.conf`), 'utf8');
      expect(text).toMatch(new RegExp(`^${t}: \\{`, 'm'));
      expect(text.match(/\{ nkey: U[A-Z0-9]{55}, permissions/g)?.length).toBe(5);
    }
  });
});

describe('HTTP bearer tokens (issue 21 with auth on)', () => {
  it('a route needs a valid token; a service token is limited to its types', async () => {
    const client = new Client(await as(A, 'service'), { prefix: 'wf' });
    const http = await startHttp({
      client,
      port: 0,
      tokens: {
        'svc-secret': { role: 'service', types: ['counter'] },
        'ops-secret': { role: 'operator' },
      },
    });
    try {
      const post = (path: string, token?: string) =>
        fetch(`${http.url}${path}`, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            ...(token ? { authorization: `Bearer ${token}` } : {}),
          },
          body: JSON.stringify({ input: { x: 0 } }),
        });
      expect((await post('/v1/workflows/counter/h1')).status).toBe(401);
      expect((await post('/v1/workflows/counter/h1', 'wrong')).status).toBe(401);
      const forbidden = await post('/v1/workflows/chain/h2', 'svc-secret');
      expect(forbidden.status).toBe(403);
      expect(forbidden.headers.get('content-type')).toMatch(/problem\+json/);
      expect((await post('/v1/workflows/counter/h1', 'svc-secret')).status).toBe(201);
      expect((await post('/v1/workflows/chain/h2', 'ops-secret')).status).toBe(201);
      expect((await fetch(`${http.url}/healthz`)).status).toBe(200);
    } finally {
      await http.close();
    }
  });
});
