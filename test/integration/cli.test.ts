/**
 * The process-level contract: `jetflow engine` drains on the first SIGTERM (exit 0) and is forced
 * by a second; `jetflow dev` (the README's run command) brings a nats-server up, runs the demo,
 * and shuts both down cleanly on Ctrl-C (SIGINT).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { connect } from '@nats-io/transport-node';
import { resolve } from 'node:path';
import type { NatsServer } from '../harness/nats-server.js';
import { EngineProcess, repoRoot, startServer, uniquePrefix } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';

let server: NatsServer;
beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server?.stop();
});

describe('jetflow engine process', () => {
  it('logs structured JSON, serves requests, and drains on SIGTERM with exit code 0', async () => {
    const prefix = uniquePrefix();
    const engine = await new EngineProcess(server.url, prefix).start();
    const line = engine.log.split('\n').find((l) => l.includes('engine started'))!;
    expect(JSON.parse(line)).toMatchObject({ level: 30, msg: 'engine started', shards: 4 });
    const nc = await connect({ servers: server.url });
    try {
      const client = new Client(nc, { prefix });
      await client.start('counter', 'cli1');
      expect((await client.signal('counter', 'cli1', { type: 'SIG', n: 1 })).step).toBe(1);
    } finally {
      await nc.close();
    }
    expect(await engine.stop()).toBe(0);
    expect(engine.log).toContain('engine stopped');
  });

  it('a second signal forces the exit', async () => {
    const engine = await new EngineProcess(server.url, uniquePrefix()).start();
    const exited = new Promise<number | null>((ok) =>
      engine.child!.once('exit', (code) => ok(code)),
    );
    engine.child!.kill('SIGTERM');
    engine.child!.kill('SIGTERM');
    const code = await exited;
    // Either the drain finished first (0) or the second signal forced exit (1): never a hang.
    expect([0, 1]).toContain(code);
  });

  it('fails fast with a clear message when NATS is unreachable', async () => {
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        resolve(repoRoot, 'src/cli/main.ts'),
        'engine',
        '--nats-url',
        'nats://127.0.0.1:1',
      ],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let err = '';
    child.stderr.on('data', (b: Buffer) => (err += b.toString()));
    const code = await new Promise<number | null>((ok) => child.once('exit', ok));
    expect(code).toBe(5); // unavailable: the documented exit code
    expect(err).toMatch(/cannot connect to NATS at nats:\/\/127\.0\.0\.1:1/);
    expect(err.trim().split('\n')).toHaveLength(1);
  });
});

describe('jetflow dev (the quick start run command)', () => {
  it('starts a local nats-server, runs the demo, and stops everything on Ctrl-C', async () => {
    const child = spawn(
      process.execPath,
      [
        resolve(repoRoot, 'bin/jetflow.js'),
        'dev',
        '--http-port',
        '0',
        '--metrics-port',
        '0',
        '--console-port',
        '0',
      ],
      {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, NATS_URL: '' },
        // Its own process group: a failed run kills the group, the nats-server `dev` started
        // included (a SIGKILL of `dev` alone left that server on port 4222 for later runs).
        detached: true,
      },
    );
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const exited = new Promise<number | null>((ok) => child.once('exit', ok));
    const deadline = Date.now() + 60_000;
    while (!out.includes('serving') && Date.now() < deadline && child.exitCode === null) {
      await new Promise((r) => setTimeout(r, 100));
    }
    try {
      expect(out).toContain('nats-server started at nats://127.0.0.1:4222');
      expect(out.match(/m-\S+: completed: \{"merchantId"/g)).toHaveLength(5);
      expect(out).toMatch(/order demo-\S+: completed with/);
      // The HTTP ingress answers, on a free port here.
      const http = /http listening on (http:\/\/\S+) /.exec(out)?.[1];
      expect(http, out).toBeDefined();
      const demo = /order (demo-\S+): completed with/.exec(out)![1]!;
      const q = await fetch(`${http}/v1/workflows/order/${demo}`);
      expect(q.status).toBe(200);
      expect(await q.json()).toMatchObject({ status: 'completed', value: 'delivered' });
      // The web console (default port 8233; any free port here) serves its page and its API.
      const consoleUrl = /console at (http:\/\/\S+)/.exec(out)?.[1];
      expect(consoleUrl, out).toBeDefined();
      expect(await (await fetch(`${consoleUrl}/`)).text()).toContain('jetflow console');
      const cq = await fetch(`${consoleUrl}/api/workflows/order/${demo}`);
      expect(await cq.json()).toMatchObject({
        query: { status: 'completed' },
        chart: { type: 'order', initial: expect.any(String) as unknown },
      });
      // The tree demo: seven nodes complete, one of them a link into the second tree.
      expect(out).toMatch(
        /activity tree import-\S+: completed with \{"nodes":7,"counts":\{"complete":7,"canceled":0\}\}/,
      );
      expect(out).toMatch(/auditRows \[n\d+\] complete \(non_blocking, link activityTree\/audit-/);
      expect(out).toMatch(/activity tree audit-\S+: completed with \{"nodes":1,/);
      // The console shows the tree's nodes with their modes and statuses.
      const tree = /activity tree (import-\S+): completed/.exec(out)![1]!;
      const ct = (await (
        await fetch(`${consoleUrl}/api/workflows/activityTree/${tree}`)
      ).json()) as {
        tree: { nodes: { id: string; status: string; mode: string; children?: unknown[] }[] };
      };
      expect(ct.tree.nodes[0]).toMatchObject({ id: 'n1', status: 'complete', mode: 'blocking' });
      expect(ct.tree.nodes[0]!.children).toHaveLength(6);
      // The metrics endpoint (default 9464; any free port here) counts the demo's steps.
      const metrics = /metrics at (http:\/\/\S+)\/metrics/.exec(out)?.[1];
      expect(metrics, out).toBeDefined();
      expect((await fetch(`${metrics}/readyz`)).status).toBe(200);
      const text = await (await fetch(`${metrics}/metrics`)).text();
      expect(text).toMatch(/^jetflow_workflows_completed_total\{workflow_type="order"\} [1-9]/m);
      expect(text).toMatch(/^jetflow_visibility_lag_seconds_count \d+/m);
      child.kill('SIGINT');
      expect(await exited).toBe(0);
      // The server is gone too.
      await expect(
        connect({ servers: 'nats://127.0.0.1:4222', reconnect: false, timeout: 500 }),
      ).rejects.toThrow();
    } finally {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // the group is gone already (the normal end)
      }
    }
  }, 90_000);
});
