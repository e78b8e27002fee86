/**
 * Prometheus metrics of jetflow's processes (prom-client), and the HTTP endpoint that serves
 * them with the health checks: `/metrics` (text format), `/healthz` (the process is alive: 200
 * while the event loop answers) and `/readyz` (200 when the role is ready, 503 with the reason
 * otherwise).
 *
 * The engine core reports through the `EngineMetrics` port (`src/engine/ports.ts`), the worker
 * through `WorkerMetrics` (`src/worker/index.ts`); the numbers the server already keeps (queue
 * depth, inbox backlog) are read from it at scrape time, not counted per message. Every metric is
 * listed in the README ("Metrics").
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  Registry,
  type LabelValues,
} from 'prom-client';
import type {
  AdmissionOutcome,
  AdmissionStage,
  EngineMetrics,
  LifecycleEvent,
  StepOutcome,
  StepPhase,
} from '../engine/ports.js';
import type { AttemptOutcome, WorkerMetrics } from '../worker/index.js';

export interface Readiness {
  ready: boolean;
  /** Why not ready (or what is ready). */
  reason: string;
}

/** Step phases are fast (sub-millisecond to a few hundred ms). */
const STEP_BUCKETS = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
];
/** Activities and lags: milliseconds to minutes. */
const LONG_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** A registry with the process's default metrics (`process_*`, `nodejs_*`). */
export function createMetricsRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

/** A labelled counter whose children are kept per label value (a Map lookup per increment). */
function perLabel(c: Counter<string>): (value: string) => { inc(): void } {
  const children = new Map<string, { inc(): void }>();
  const label = (c as unknown as { labelNames: string[] }).labelNames[0]!;
  return (value) => {
    let child = children.get(value);
    if (!child) {
      child = c.labels({ [label]: value } as LabelValues<string>);
      children.set(value, child);
    }
    return child;
  };
}

/** What the engine's scrape-time gauges read. */
export interface EngineView {
  /** Shards held now. */
  shards(): number[];
  /** Messages not yet delivered plus delivered and unacknowledged, per held shard. */
  inboxPending(): Promise<Map<number, number>>;
  cache(): { entries: number; bytes: number };
  gateway(): { inFlight: number; waiting: number };
}

/** The engine's metrics: counters fed by the step (`EngineMetrics`), gauges read at scrape. */
export interface EngineMetricsHandle extends EngineMetrics {
  /** Inbox lag of a delivered message (seconds from stored to delivered), per shard. */
  lag(shard: number, seconds: number): void;
  /** Attach the engine the scrape-time gauges read (before that they report nothing). */
  attach(view: EngineView): void;
}

/**
 * `jetflow_admission_total{stage, outcome}`: one counter for engines and workers (an engine and a
 * worker in one process share it).
 */
function admissionCounter(registry: Registry): (s: AdmissionStage, o: AdmissionOutcome) => void {
  const name = 'jetflow_admission_total';
  const c =
    (registry.getSingleMetric(name) as Counter<'stage' | 'outcome'> | undefined) ??
    new Counter({
      name,
      help: 'Items held, merged, deferred, dropped or admitted by each stage of the admission pipeline (dedup, debounce, rate-limit, concurrency-key, priority, dispatch)',
      labelNames: ['stage', 'outcome'],
      registers: [registry],
    });
  return (stage, outcome) => c.labels({ stage, outcome }).inc();
}

export function createEngineMetrics(registry: Registry): EngineMetricsHandle {
  const r = [registry];
  const admission = admissionCounter(registry);
  const byType = (name: string, help: string) =>
    perLabel(new Counter({ name, help, labelNames: ['workflow_type'], registers: r }));
  const steps: Record<StepOutcome, (t: string) => { inc(): void }> = {
    applied: byType(
      'jetflow_steps_applied_total',
      'Steps applied (records written), by workflow type',
    ),
    rejected: byType(
      'jetflow_steps_rejected_total',
      'Messages rejected (bad request, event not accepted now, ...), by workflow type',
    ),
    repeated: byType(
      'jetflow_steps_repeated_total',
      'Redelivered messages recognised as already applied, by workflow type',
    ),
    ignored: byType(
      'jetflow_steps_ignored_total',
      'Late or duplicate results and timers dropped, by workflow type',
    ),
    forged: byType(
      'jetflow_steps_forged_total',
      'Results, attempt notices and timer messages without the proof of the task or timer the engine issued (forged): dropped and journaled, by workflow type',
    ),
    conflict: byType(
      'jetflow_steps_cas_conflicts_total',
      'Record writes that lost the compare-and-set and were retried, by workflow type',
    ),
  };
  const lifecycle: Record<LifecycleEvent, (t: string) => { inc(): void }> = {
    started: byType('jetflow_workflows_started_total', 'Workflows started, by type'),
    completed: byType('jetflow_workflows_completed_total', 'Workflows completed, by type'),
    failed: byType('jetflow_workflows_failed_total', 'Workflows failed, by type'),
    canceled: byType('jetflow_workflows_canceled_total', 'Workflows canceled, by type'),
  };
  const phases = new Histogram({
    name: 'jetflow_step_duration_seconds',
    help: 'Time spent in each phase of a step: load (record from cache or KV), decide (pure transition), persist (compare-and-set write), effects (outbox performed)',
    labelNames: ['phase'],
    buckets: STEP_BUCKETS,
    registers: r,
  });
  const phase: Record<StepPhase, { observe(v: number): void }> = {
    load: phases.labels({ phase: 'load' }),
    decide: phases.labels({ phase: 'decide' }),
    persist: phases.labels({ phase: 'persist' }),
    effects: phases.labels({ phase: 'effects' }),
  };
  const hits = new Counter({
    name: 'jetflow_record_cache_hits_total',
    help: 'Record loads answered by the engine cache',
    registers: r,
  });
  const misses = new Counter({
    name: 'jetflow_record_cache_misses_total',
    help: 'Record loads that read KV',
    registers: r,
  });
  const tasks = perLabel(
    new Counter({
      name: 'jetflow_tasks_published_total',
      help: 'Activity tasks published, by queue',
      labelNames: ['queue'],
      registers: r,
    }),
  );
  const timersSet = new Counter({
    name: 'jetflow_timers_set_total',
    help: 'Durable timers scheduled',
    registers: r,
  });
  const timersFired = new Counter({
    name: 'jetflow_timers_fired_total',
    help: 'Timers applied to their workflow',
    registers: r,
  });
  const lateness = new Histogram({
    name: 'jetflow_timer_lateness_seconds',
    help: 'From a timer’s due time to the step that applied it',
    buckets: LONG_BUCKETS,
    registers: r,
  });
  const lagGauge = new Gauge({
    name: 'jetflow_inbox_lag_seconds',
    help: 'Age of the last message delivered from each held shard (stored in the inbox to delivered)',
    labelNames: ['shard'],
    registers: r,
  });
  const lagChildren = new Map<number, { set(v: number): void }>();
  let view: EngineView | undefined;
  new Gauge({
    name: 'jetflow_shards_held',
    help: 'Inbox shards this engine holds',
    registers: r,
    collect() {
      this.set(view ? view.shards().length : 0);
    },
  });
  new Gauge({
    name: 'jetflow_inbox_pending_messages',
    help: 'Messages of each held shard not yet acknowledged (waiting plus in progress), read from the server at scrape',
    labelNames: ['shard'],
    registers: r,
    async collect() {
      this.reset();
      if (!view) return;
      const pending = await view.inboxPending().catch(() => new Map<number, number>());
      for (const [shard, n] of pending) this.set({ shard: String(shard) }, n);
    },
  });
  new Gauge({
    name: 'jetflow_record_cache_entries',
    help: 'Records in the engine cache',
    registers: r,
    collect() {
      this.set(view?.cache().entries ?? 0);
    },
  });
  new Gauge({
    name: 'jetflow_record_cache_bytes',
    help: 'Estimated heap bytes of the engine cache',
    registers: r,
    collect() {
      this.set(view?.cache().bytes ?? 0);
    },
  });
  new Gauge({
    name: 'jetflow_gateway_requests_in_flight',
    help: 'Public requests (start, signal, cancel, query) being worked on',
    registers: r,
    collect() {
      this.set(view?.gateway().inFlight ?? 0);
    },
  });
  return {
    step: (t, outcome) => steps[outcome](t).inc(),
    phase: (p, seconds) => phase[p].observe(seconds),
    cache: (hit) => (hit ? hits.inc() : misses.inc()),
    lifecycle: (t, e) => lifecycle[e](t).inc(),
    taskPublished: (queue) => tasks(queue).inc(),
    timerSet: () => timersSet.inc(),
    timerFired(late) {
      timersFired.inc();
      if (late !== undefined) lateness.observe(Math.max(0, late));
    },
    admission,
    lag(shard, seconds) {
      let child = lagChildren.get(shard);
      if (!child) {
        child = lagGauge.labels({ shard: String(shard) });
        lagChildren.set(shard, child);
      }
      child.set(seconds);
    },
    attach(v) {
      view = v;
    },
  };
}

/** What the worker's scrape-time gauges read. */
export interface WorkerView {
  /** Per queue: messages waiting (`num_pending`) and delivered, not yet acknowledged. */
  queues(): Promise<{ queue: string; pending: number; inFlight: number }[]>;
}

export interface WorkerMetricsHandle extends WorkerMetrics {
  attach(view: WorkerView): void;
}

export function createWorkerMetrics(registry: Registry): WorkerMetricsHandle {
  const r = [registry];
  const admission = admissionCounter(registry);
  const attempts = new Counter({
    name: 'jetflow_activity_attempts_total',
    help: 'Activity attempts run by this worker, by activity and outcome (ok, retry, error, timeout, canceled)',
    labelNames: ['activity', 'outcome'],
    registers: r,
  });
  const duration = new Histogram({
    name: 'jetflow_activity_attempt_duration_seconds',
    help: 'Duration of activity attempts, by activity and outcome',
    labelNames: ['activity', 'outcome'],
    buckets: LONG_BUCKETS,
    registers: r,
  });
  const children = new Map<
    string,
    { count: { inc(): void }; time: { observe(v: number): void } }
  >();
  let view: WorkerView | undefined;
  let last: Promise<{ queue: string; pending: number; inFlight: number }[]> | undefined;
  // Both gauges read one consumer-info round per scrape.
  const read = () => {
    last ??= (view?.queues() ?? Promise.resolve([])).catch(() => []);
    const p = last;
    setImmediate(() => (last = undefined));
    return p;
  };
  new Gauge({
    name: 'jetflow_queue_depth_messages',
    help: 'Tasks waiting in each queue this worker pulls from (consumer num_pending, read at scrape)',
    labelNames: ['queue'],
    registers: r,
    async collect() {
      this.reset();
      for (const q of await read()) this.set({ queue: q.queue }, q.pending);
    },
  });
  new Gauge({
    name: 'jetflow_queue_in_flight_messages',
    help: 'Tasks of each queue delivered to workers and not yet acknowledged (consumer num_ack_pending, read at scrape)',
    labelNames: ['queue'],
    registers: r,
    async collect() {
      this.reset();
      for (const q of await read()) this.set({ queue: q.queue }, q.inFlight);
    },
  });
  return {
    admission,
    attempt(activity: string, outcome: AttemptOutcome, seconds: number) {
      const key = `${activity}\u0000${outcome}`;
      let c = children.get(key);
      if (!c) {
        c = {
          count: attempts.labels({ activity, outcome }),
          time: duration.labels({ activity, outcome }),
        };
        children.set(key, c);
      }
      c.count.inc();
      c.time.observe(seconds);
    },
    attach(v) {
      view = v;
    },
  };
}

/** The visibility replica's metrics. */
export interface VisibilityMetricsHandle {
  /** A step entry committed to the replica: seconds from the step to the journal, and to now. */
  projected(journalSeconds: number, visibilitySeconds: number): void;
  attach(view: { behind(): Promise<number> }): void;
}

export function createVisibilityMetrics(registry: Registry): VisibilityMetricsHandle {
  const r = [registry];
  const journal = new Histogram({
    name: 'jetflow_journal_lag_seconds',
    help: 'From a step (engine clock) to its journal entry stored in the history stream',
    buckets: LONG_BUCKETS,
    registers: r,
  });
  const visibility = new Histogram({
    name: 'jetflow_visibility_lag_seconds',
    help: 'From a step to its entry committed in this replica (searchable)',
    buckets: LONG_BUCKETS,
    registers: r,
  });
  const entries = new Counter({
    name: 'jetflow_visibility_entries_applied_total',
    help: 'Journal step entries committed to this replica',
    registers: r,
  });
  let view: { behind(): Promise<number> } | undefined;
  new Gauge({
    name: 'jetflow_visibility_behind_messages',
    help: 'Journal entries stored but not yet committed to this replica (read at scrape)',
    registers: r,
    async collect() {
      this.set(view ? await view.behind().catch(() => 0) : 0);
    },
  });
  return {
    projected(j, v) {
      entries.inc();
      journal.observe(Math.max(0, j));
      visibility.observe(Math.max(0, v));
    },
    attach(v) {
      view = v;
    },
  };
}

export interface MetricsServerOptions {
  /** TCP port (0: any free port). */
  port: number;
  /** Interface to listen on (default all interfaces). */
  host?: string;
  registry: Registry;
}

/** The HTTP endpoint of one process: `/metrics`, `/healthz`, `/readyz`. */
export class MetricsServer {
  /** Replaced by the role once it runs; until then the process is not ready. */
  readiness: () => Readiness = () => ({ ready: false, reason: 'starting' });

  private constructor(
    private readonly server: Server,
    readonly registry: Registry,
  ) {}

  static async start(o: MetricsServerOptions): Promise<MetricsServer> {
    const server = createServer((req, res) => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
        return;
      }
      if (path === '/readyz') {
        let r: Readiness;
        try {
          r = self.readiness();
        } catch (err) {
          r = { ready: false, reason: String((err as Error)?.message ?? err) };
        }
        res
          .writeHead(r.ready ? 200 : 503, { 'content-type': 'text/plain' })
          .end(`${r.ready ? 'ready' : 'not ready'}: ${r.reason}\n`);
        return;
      }
      if (path === '/metrics') {
        o.registry
          .metrics()
          .then((text) => res.writeHead(200, { 'content-type': o.registry.contentType }).end(text))
          .catch((err: unknown) =>
            res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err)),
          );
        return;
      }
      res
        .writeHead(404, { 'content-type': 'text/plain' })
        .end('not found: /metrics /healthz /readyz\n');
    });
    const self = new MetricsServer(server, o.registry);
    await new Promise<void>((ok, fail) => {
      server.once('error', fail);
      server.listen(o.port, o.host, () => {
        server.off('error', fail);
        ok();
      });
    });
    server.unref();
    return self;
  }

  /** The port listened on. */
  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Stop listening (idempotent). */
  async close(): Promise<void> {
    if (!this.server.listening) return;
    this.server.closeAllConnections?.();
    await new Promise<void>((ok) => this.server.close(() => ok()));
  }
}
