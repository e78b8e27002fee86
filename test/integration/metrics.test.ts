/**
 * Metrics and health endpoints (issue 16): an engine's and a worker's `/metrics` scraped around a
 * run, and `/readyz` / `/healthz` of engine processes as shards move and NATS goes away.
 */
import { afterAll, describe, expect, it } from 'vitest';
import {
  EngineProcess,
  quietLogger,
  startServer,
  TEST_SHARDS,
  uniquePrefix,
  useServer,
} from '../harness/jetflow.js';
import { freePort } from '../harness/nats-server.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry } from '../../src/engine/registry.js';
import { Observability } from '../../src/host/observability.js';
import { trackConnection } from '../../src/nats/connection.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import { workflows } from '../fixtures/workflows.js';
import { Visibility } from '../../src/host/visibility.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { resolve } from 'node:path';

const env = useServer();

/** The samples of a Prometheus text page: `name{labels}` → value. */
async function scrape(port: number): Promise<Map<string, number>> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`);
  expect(res.status).toBe(200);
  const out = new Map<string, number>();
  for (const line of (await res.text()).split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

const get = async (port: number, path: string) => {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, text: await res.text() };
};

async function until(what: string, f: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await f())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('metrics', () => {
  it('counts what a run dictates: steps applied, retries and ok, one rejected signal', async () => {
    const prefix = uniquePrefix();
    const engineObs = await Observability.start({ name: 'e', metricsPort: 0, logger: quietLogger });
    const workerObs = await Observability.start({ name: 'w', metricsPort: 0, logger: quietLogger });
    const metrics = engineObs.engineMetrics()!;
    const engine = await Engine.create(
      { servers: env.server.url, prefix, shards: TEST_SHARDS, failoverMs: 2_000 },
      { registry: createRegistry(workflows), logger: quietLogger, metrics },
    );
    engineObs.engine(engine);
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        flaky: (_input: unknown, ctx) => {
          if (ctx.attempt < 3) throw new Error(`transient ${ctx.attempt}`);
          return { attempt: ctx.attempt };
        },
      },
      metrics: workerObs.workerMetrics()!,
    });
    workerObs.worker(worker, trackConnection(env.nc));
    const visObs = await Observability.start({ name: 'v', metricsPort: 0, logger: quietLogger });
    const dataDir = mkdtempSync(resolve(tmpdir(), 'jf-metrics-'));
    const vis = await Visibility.create({
      servers: env.server.url,
      prefix,
      dataDir,
      logger: quietLogger,
      progress: () => undefined,
      bulk: false,
      metrics: visObs.visibilityMetrics()!,
    });
    visObs.visibility(vis);
    const client = new Client(env.nc, { prefix });
    const e = engineObs.server!.port;
    const w = workerObs.server!.port;
    try {
      const before = await scrape(e);
      expect(before.get('jetflow_steps_applied_total{workflow_type="flaky"}')).toBeUndefined();

      await client.start('flaky', 'f1');
      expect(await client.result('flaky', 'f1')).toEqual({ output: { attempt: 3 }, error: null });
      await client.start('counter', 'c1');
      await client.signal('counter', 'c1', { type: 'SIG' });
      await expect(client.signal('counter', 'c1', { type: 'NOT_AN_EVENT' })).rejects.toThrow();

      const history = await client.history('flaky', 'f1');
      const taken = history.entries.filter((x) => x.kind === 'step').length;
      expect(taken).toBe(2); // the start and the one result
      // A step acknowledges its message after it replied: the backlog gauges (read from the
      // server at scrape) reach 0 a moment after the last reply.
      const drained = (x: Map<string, number>, names: string[]) =>
        names.every((n) => x.get(n) === 0);
      const shards = Array.from(
        { length: TEST_SHARDS },
        (_, s) => `jetflow_inbox_pending_messages{shard="${s}"}`,
      );
      await until('the inbox gauges at 0', async () => drained(await scrape(e), shards));
      const m = await scrape(e);
      expect(m.get('jetflow_steps_applied_total{workflow_type="flaky"}')).toBe(taken);
      expect(m.get('jetflow_steps_applied_total{workflow_type="counter"}')).toBe(2);
      expect(m.get('jetflow_steps_rejected_total{workflow_type="counter"}')).toBe(1);
      expect(m.get('jetflow_steps_rejected_total{workflow_type="flaky"}')).toBeUndefined();
      expect(m.get('jetflow_workflows_started_total{workflow_type="flaky"}')).toBe(1);
      expect(m.get('jetflow_workflows_completed_total{workflow_type="flaky"}')).toBe(1);
      expect(m.get('jetflow_workflows_started_total{workflow_type="counter"}')).toBe(1);
      expect(m.get('jetflow_workflows_completed_total{workflow_type="counter"}')).toBeUndefined();
      expect(m.get('jetflow_tasks_published_total{queue="flaky"}')).toBe(1);
      expect(m.get('jetflow_shards_held')).toBe(TEST_SHARDS);
      // Every step loads, decides and persists once (no conflicts in this run).
      expect(m.get('jetflow_step_duration_seconds_count{phase="persist"}')).toBe(taken + 2);
      expect(m.get('jetflow_steps_cas_conflicts_total{workflow_type="flaky"}')).toBeUndefined();

      const queue = ['depth', 'in_flight'].map((g) => `jetflow_queue_${g}_messages{queue="flaky"}`);
      await until('the queue gauges at 0', async () => drained(await scrape(w), queue));
      const wm = await scrape(w);
      expect(wm.get('jetflow_activity_attempts_total{activity="flaky",outcome="retry"}')).toBe(2);
      expect(wm.get('jetflow_activity_attempts_total{activity="flaky",outcome="ok"}')).toBe(1);
      expect(wm.get('jetflow_activity_attempts_total{activity="flaky",outcome="error"}')).toBe(
        undefined,
      );
      expect(
        wm.get('jetflow_activity_attempt_duration_seconds_count{activity="flaky",outcome="ok"}'),
      ).toBe(1);
      expect((await get(w, '/readyz')).status).toBe(200);
      expect((await get(e, '/readyz')).status).toBe(200);

      // The replica projected every step of the run (2 of flaky, 2 of counter).
      const v = visObs.server!.port;
      await until('the replica caught up', async () => {
        const vm = await scrape(v);
        return (
          vm.get('jetflow_visibility_behind_messages') === 0 &&
          vm.get('jetflow_visibility_entries_applied_total') === taken + 2
        );
      });
      const vm = await scrape(v);
      expect(vm.get('jetflow_visibility_lag_seconds_count')).toBe(taken + 2);
      expect(vm.get('jetflow_journal_lag_seconds_count')).toBe(taken + 2);
      expect((await get(v, '/readyz')).status).toBe(200);
    } finally {
      await vis.close();
      await visObs.close();
      rmSync(dataDir, { recursive: true, force: true });
      await worker.close();
      await engine.close();
      await engineObs.close();
      await workerObs.close();
    }
  });
});

describe('readiness', () => {
  const procs: EngineProcess[] = [];
  afterAll(async () => {
    for (const p of procs) await p.kill();
  });

  it('an engine is ready only while it holds shards and NATS is up; /healthz stays up', async () => {
    // One shard for two engines: one of them holds nothing.
    const server = await startServer({ shards: 1 });
    try {
      const prefix = uniquePrefix();
      const ports = [await freePort(), await freePort()];
      const start = (port: number) => {
        const p = new EngineProcess(server.url, prefix, {
          shards: 1,
          env: { JETFLOW_METRICS_PORT: String(port) },
        });
        procs.push(p);
        return p.start();
      };
      const a = await start(ports[0]!);
      await until(
        'the first engine ready',
        async () => (await get(ports[0]!, '/readyz')).status === 200,
      );
      const b = await start(ports[1]!);
      const states = async () => Promise.all(ports.map((p) => get(p, '/readyz')));
      // Exactly one holds the shard; the other says why it is not ready.
      await until('one ready engine and one without shards', async () => {
        const [ra, rb] = await states();
        const idle = [ra!, rb!].filter((r) => r.status === 503);
        return idle.length === 1 && /holding no shard/.test(idle[0]!.text);
      });
      const [ra, rb] = await states();
      const idle = ra!.status === 200 ? 1 : 0;
      expect([ra, rb][idle]!.text).toMatch(/holding no shard/);
      // The holder leaves: the other takes the shard over and becomes ready.
      const holder = idle === 0 ? b : a;
      await holder.stop();
      await until(
        'the other engine ready after the take-over',
        async () => (await get(ports[idle]!, '/readyz')).status === 200,
      );
      // NATS goes away: not ready, still alive.
      await server.stop();
      await until('unready without NATS', async () => {
        const r = await get(ports[idle]!, '/readyz');
        return r.status === 503 && /NATS connection down/.test(r.text);
      });
      expect((await get(ports[idle]!, '/healthz')).status).toBe(200);
    } finally {
      await server.stop();
    }
  });
});
