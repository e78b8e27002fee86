/**
 * TLS between every component and the server (issue 17): a CA, a server certificate and a client
 * certificate made with `openssl` at test time; the server requires TLS and verifies client
 * certificates. An engine, a worker and a client run a workflow over TLS; a plain connection and
 * one without a client certificate are refused.
 *
 * Needs the `openssl` command (Debian: `apt-get install openssl`; not in every minimal image).
 * Without it the test FAILS with that message: it is never skipped silently.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { NatsServer, runRoot } from '../harness/nats-server.js';
import { quietLogger, TEST_SHARDS } from '../harness/jetflow.js';
import { shardMapping } from '../../src/contracts/subjects.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry } from '../../src/engine/registry.js';
import { Client } from '../../src/client/index.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import { connectionOptionsFromEnv } from '../../src/nats/connection.js';
import { workflows } from '../fixtures/workflows.js';

const dir = mkdtempSync(join(runRoot(), 'tls-'));
const f = (n: string) => join(dir, n);

function openssl(...args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new Error(
        'the TLS test needs the `openssl` command to make its certificates (Debian: apt-get install openssl)',
      );
    throw err;
  }
}

/** A CA, and a certificate signed by it for `cn` (server: with subjectAltName IP 127.0.0.1). */
function makeCerts(): void {
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=jetflow test CA', '-keyout', 'ca.key', '-out', 'ca.pem'); // prettier-ignore
  for (const [name, ext] of [
    ['server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth'],
    ['client', 'extendedKeyUsage=clientAuth'],
  ] as const) {
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.csr`); // prettier-ignore
    execFileSync('sh', ['-c', `printf '${ext}\\n' > ${name}.ext`], { cwd: dir });
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-extfile', `${name}.ext`, '-out', `${name}.pem`); // prettier-ignore
  }
}

let server: NatsServer;
let engine: Engine | undefined;
let worker: Worker | undefined;
let workerNc: NatsConnection | undefined;
let client: Client | undefined;
// As a process would read them (`jetflow engine` with these variables set).
const env = { NATS_CA: f('ca.pem'), NATS_CERT: f('client.pem'), NATS_KEY: f('client.key') };

beforeAll(async () => {
  makeCerts();
  const mappings = Object.entries(shardMapping(TEST_SHARDS))
    .map(([a, b]) => `  ${JSON.stringify(a)}: ${JSON.stringify(b)}`)
    .join('\n');
  server = await NatsServer.start({
    extraConfig: [
      `tls { cert_file: ${JSON.stringify(f('server.pem'))}, key_file: ${JSON.stringify(f('server.key'))}, ca_file: ${JSON.stringify(f('ca.pem'))}, verify: true }`,
      `mappings {\n${mappings}\n}`,
    ].join('\n'),
    connect: connectionOptionsFromEnv(env),
  });
}, 60_000);

afterAll(async () => {
  await client?.close();
  await worker?.close();
  await workerNc?.close();
  await engine?.close();
  await server?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('TLS', () => {
  it('engine, worker and client run a workflow over TLS; plain and certificate-less connections are refused', async () => {
    const tls = connectionOptionsFromEnv(env);
    expect(tls.tls).toEqual({
      caFile: env.NATS_CA,
      certFile: env.NATS_CERT,
      keyFile: env.NATS_KEY,
    });
    engine = await Engine.create(
      { servers: server.url, prefix: 'wf', shards: TEST_SHARDS, failoverMs: 2_000 },
      { registry: createRegistry(workflows), logger: quietLogger, connection: tls },
    );
    workerNc = await connect({ servers: server.url, ...tls });
    worker = await createWorker({
      connection: workerNc,
      prefix: 'wf',
      activities: { inc: (x: unknown) => (x as { x: number }).x + 1 },
    });
    client = await Client.connect(server.url, { prefix: 'wf', connection: tls });
    await client.start('chain', 't1', { x: 1 });
    expect(await client.result('chain', 't1', { timeoutMs: 10_000 })).toEqual({ x: 4 });
    expect(workerNc.info?.tls_required).toBe(true);

    await expect(
      connect({ servers: server.url, reconnect: false, timeout: 2_000 }),
    ).rejects.toThrow();
    await expect(
      connect({
        servers: server.url,
        reconnect: false,
        timeout: 2_000,
        tls: { caFile: env.NATS_CA },
      }),
    ).rejects.toThrow();
  });
});
