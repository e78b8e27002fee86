/**
 * An engine process's core: connects, declares the topology, runs the gateway and one consumer
 * per owned shard, and stops in order (stop fetching → finish in-flight steps → drain).
 *
 * Failure semantics: see `src/engine/processor.ts`. A crash at any point loses nothing that was
 * acknowledged to a requester and applies no transition twice; effects are re-performed with the
 * same msg ids (JetStream drops the duplicates within the dedup window).
 */
import { ConfigError } from '../errors.js';
import { checkDefinitions } from '../engine/check.js';
import type { NatsConnection } from '@nats-io/transport-node';
import type { JetStreamManager } from '@nats-io/jetstream';
import { compileEngineConfig, type EngineConfig, type EngineOptions } from '../config.js';
import { createProcessor, type Processor } from '../engine/processor.js';
import type { Registry } from '../engine/registry.js';
import type { Clock, EngineMetrics, Logger, StepTracing } from '../engine/ports.js';
import { connectNats, trackConnection, type ConnectionState } from '../nats/connection.js';
import type { ConnectionOptions } from '@nats-io/transport-node';
import { createStepTracing, tracingActive } from '../tracing/index.js';
import {
  ensureShardConsumer,
  ensureTopology,
  topologyNames,
  verifyShardMapping,
  type TopologyNames,
} from '../nats/topology.js';
import { createKvRecordStore } from '../nats/store.js';
import { createKeyStore, keyEffectHandlers, openKeysBucket } from '../nats/keys.js';
import { createInboxReader } from '../nats/inbox.js';
import { createInboxIdentity } from '../nats/inbox-identity.js';
import { openMembership } from '../nats/membership.js';
import { ShardManager } from './shards.js';
import { createEffectSink } from '../nats/effects.js';
import { createHistoryReader, createJournalReader } from '../nats/history.js';
import { taskEffectHandlers } from '../nats/tasks.js';
import { timerEffectHandlers, type TimerHandlers } from '../nats/timers.js';
import { consumeScheduleTicks } from '../nats/schedules.js';
import { sweepTimerStrays } from '../nats/timer-strays.js';
import { startGateway, type Gateway, type GatewayStats } from '../nats/gateway.js';
import { createLogger } from './logger.js';
import {
  BatchService,
  batchEffectHandlers,
  openBatchesBucket,
  startBatchResponder,
} from '../nats/batches.js';
import { startTriggerAdmin, TriggerRole } from './triggers.js';
import { BulkRunner } from './bulk.js';
import { openBulkStore } from '../nats/bulk.js';
import { openTriggersBucket } from '../nats/triggers.js';

export interface EngineDeps {
  registry: Registry;
  logger?: Logger;
  clock?: Clock;
  /** Step counters and timings (`createEngineMetrics` of `src/metrics/`); absent: none. */
  metrics?: EngineMetrics & { lag?(shard: number, seconds: number): void };
  /**
   * Step spans. Default: on when a tracer provider is registered globally (`false`: off).
   */
  tracing?: StepTracing | false;
  /**
   * Credentials and TLS of the engine's NATS connection (issue 17). Default: from the
   * environment (`NATS_NKEY`, `NATS_CREDS`, `NATS_USER`/`NATS_PASSWORD`, `NATS_CA`, ...).
   */
  connection?: Partial<ConnectionOptions>;
}

export class Engine implements AsyncDisposable {
  private closing: Promise<void> | undefined;
  private readonly done: Promise<void>;
  private resolveDone!: () => void;

  private constructor(
    readonly config: EngineConfig,
    readonly names: TopologyNames,
    private readonly nc: NatsConnection,
    readonly processor: Processor,
    private readonly gateway: Gateway,
    private readonly shards: { stop(): Promise<void> }[],
    private readonly logger: Logger,
    private readonly timers: TimerHandlers,
    /** The shards this engine holds and the membership it keeps. */
    readonly shardManager: ShardManager,
    private readonly jsm: JetStreamManager,
    private readonly connection: ConnectionState,
    /** The triggers this engine holds (stopped before the shards: forwards await steps). */
    private readonly triggers: { stop(): Promise<void> },
  ) {
    this.done = new Promise((ok) => (this.resolveDone = ok));
  }

  /** Connect, verify/declare topology, start consuming. Fails fast with what is missing. */
  static async create(options: EngineOptions, deps: EngineDeps): Promise<Engine> {
    const config = compileEngineConfig(options);
    const logger = deps.logger ?? createLogger(config.name, config.logLevel);
    // The static check of the definitions (`jetflow check`): errors refuse to start, warnings
    // are logged.
    const findings = checkDefinitions(
      deps.registry.list().map((k) => {
        const at = k.lastIndexOf('@');
        return deps.registry.get(k.slice(0, at), Number(k.slice(at + 1)));
      }),
    );
    for (const f of findings)
      if (f.severity === 'warning')
        logger.warn({ check: f }, `definition check: ${f.type}@${f.version}: ${f.message}`);
    const errors = findings.filter((f) => f.severity === 'error');
    if (errors.length > 0)
      throw new ConfigError(
        `workflow definitions with errors (see \`jetflow check\`): ${errors.map((f) => `${f.type}@${f.version}: ${f.message} (${f.code})`).join('; ')}`,
      );
    const clock = deps.clock ?? { now: () => Date.now() };
    const { nc, js, jsm } = await connectNats(config.servers, config.name, deps.connection);
    const connection = trackConnection(nc);
    const tracing =
      deps.tracing === false
        ? undefined
        : (deps.tracing ?? (tracingActive() ? createStepTracing() : undefined));
    try {
      // Before anything is created: a wrong shard count must not leave a stream behind.
      await verifyShardMapping(nc, topologyNames(config.prefix), config.shards);
      const { names, kv } = await ensureTopology(nc, jsm, config);
      const store = createKvRecordStore(kv, {
        js,
        bucket: names.bucket,
        finishedRetentionMs: config.finishedRetentionMs,
      });
      const timers = timerEffectHandlers(js, jsm, names, logger);
      const keys = createKeyStore(await openKeysBucket(nc, names), js, names, logger);
      const bulkStore = await openBulkStore(nc, jsm, names, { replicas: config.replicas });
      const runnerRef: { r?: BulkRunner } = {};
      const batches = new BatchService(await openBatchesBucket(nc, names), {
        bulk: bulkStore,
        onJob: () => runnerRef.r?.kick(),
        nc,
        js,
        jsm,
        names,
        registry: deps.registry,
        store,
        logger,
        maxInputBytes: config.maxInputBytes,
        owner: `${config.name}-${Math.random().toString(36).slice(2, 10)}`,
      });
      const sink = createEffectSink(
        nc,
        js,
        names,
        logger,
        {
          ...taskEffectHandlers(nc, js, jsm, names, logger),
          ...keyEffectHandlers(keys, js, names),
          ...batchEffectHandlers(batches),
          timer: timers.timer,
          cancelTimer: timers.cancelTimer,
        },
        config.name,
      );
      const history = createHistoryReader(jsm, names);
      const processor = createProcessor({
        registry: deps.registry,
        subjects: names.subjects,
        store,
        inbox: createInboxReader(jsm, names),
        effects: sink,
        clock,
        logger,
        cacheSize: config.cacheSize,
        foldMax: config.foldMax,
        lazyMarkMs: config.lazyMarkMs,
        cacheMaxBytes: config.cacheMaxBytes,
        finishedRetentionMs: config.finishedRetentionMs,
        shards: config.shards,
        msgIdMemory: config.msgIdMemory,
        replyPrefixes: config.replyPrefixes,
        inboxIdentity: createInboxIdentity(jsm, names),
        engineName: config.name,
        ...(config.journal ? { journal: { payloadMaxBytes: config.journalPayloadMaxBytes } } : {}),
        journalReader: createJournalReader(history, jsm, names),
        keys,
        ...(deps.metrics ? { metrics: deps.metrics } : {}),
        ...(tracing ? { tracing } : {}),
      });
      const gateway = startGateway({
        nc,
        js,
        names,
        registry: deps.registry,
        store,
        sink,
        logger,
        maxInputBytes: config.maxInputBytes,
        replyPrefixes: config.replyPrefixes,
        maxInFlight: config.gatewayMaxInFlight,
        history,
        keys,
        ...(deps.metrics ? { metrics: deps.metrics } : {}),
      });
      const ticks = await consumeScheduleTicks(js, jsm, names, config.replicas, logger);
      const strays = await sweepTimerStrays(jsm, names, logger, config.timerStraySweepMs);
      const batch = Math.max(1, Math.min(256, config.maxAckPendingPerShard));
      const membership = await openMembership(nc, names, config.failoverMs, config.replicas);
      // The trigger role needs the membership, the membership advertises the triggers.
      const held: { role?: TriggerRole } = {};
      const shards = new ShardManager({
        nc,
        js,
        jsm,
        names,
        processor,
        logger,
        membership,
        name: config.name,
        shards: config.shards,
        staticShardIds: config.staticShards ? config.shardIds : undefined,
        failoverMs: config.failoverMs,
        batch,
        repairConsumer: (shard) => ensureShardConsumer(jsm, config, shard),
        // A record cached while the shard was last here may have been changed by another engine.
        onGained: (shard) => processor.forgetShard(shard),
        ...(deps.metrics?.lag ? { lag: deps.metrics.lag.bind(deps.metrics) } : {}),
        extraInfo: () =>
          held.role && held.role.specs.length > 0
            ? { triggers: held.role.declared, heldTriggers: held.role.heldNames }
            : {},
      });
      const statusKv = await openTriggersBucket(nc, names, config.replicas);
      const triggers = new TriggerRole({
        nc,
        js,
        jsm,
        names,
        registry: deps.registry,
        logger,
        engineName: config.name,
        engineId: shards.id,
        members: () => shards.liveMembers(),
        failoverMs: config.failoverMs,
        ackWaitMs: config.ackWaitMs,
        maxInputBytes: config.maxInputBytes,
        statusKv,
      });
      held.role = triggers;
      const triggerAdmin = startTriggerAdmin({
        nc,
        jsm,
        names,
        role: triggers,
        statusKv,
        members: () => shards.liveMembers(),
      });
      await triggers.publishWebhooks();
      await shards.start();
      const batchResponder = startBatchResponder(nc, names, batches, logger);
      const batchTracker = batches.startTracker();
      // The engines run the batches' background jobs (cancel, retry-failed, resume), through the
      // bulk job machinery of `<prefix>_bulk` (claims, checkpoints, takeover, status, cancel).
      const bulkRunner = await BulkRunner.start({
        nc,
        jsm,
        names,
        logger,
        owner: `${config.name}-${shards.id}`,
        store: bulkStore,
        batches,
      });
      runnerRef.r = bulkRunner;
      await nc.flush(); // the server has the responder's subscription before anyone is told we run
      triggers.start();
      logger.info(
        {
          engineId: shards.id,
          shards: shards.shards.length,
          of: config.shards,
          workflows: deps.registry.list(),
          servers: config.servers,
        },
        'engine started',
      );
      return new Engine(
        config,
        names,
        nc,
        processor,
        gateway,
        [shards, ticks, strays, batchResponder, batchTracker, bulkRunner],
        logger,
        timers,
        shards,
        jsm,
        connection,
        {
          async stop() {
            triggerAdmin.unsubscribe();
            await triggers.stop();
          },
        },
      );
    } catch (err) {
      await nc.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * Ready: connected to NATS and holding at least one shard (an engine beyond the shard count,
   * or one whose shards were all taken over, holds none and does no work). Not ready once
   * closing.
   */
  readiness(): { ready: boolean; reason: string } {
    if (this.closing) return { ready: false, reason: 'stopping' };
    if (!this.connection.connected) return { ready: false, reason: 'NATS connection down' };
    const held = this.shardManager.shards.length;
    if (held === 0) return { ready: false, reason: 'holding no shard' };
    return { ready: true, reason: `holding ${held} of ${this.config.shards} shards` };
  }

  /** Per held shard: inbox messages not yet acknowledged (one consumer info request each). */
  async inboxPending(): Promise<Map<number, number>> {
    const out = new Map<number, number>();
    await Promise.all(
      this.shardManager.shards.map(async (shard) => {
        const ci = await this.jsm.consumers.info(
          this.names.inboxStream,
          this.names.shardConsumer(shard),
        );
        out.set(shard, ci.num_pending + ci.num_ack_pending);
      }),
    );
    return out;
  }

  /** Counters and gauges of the public gateway (requests in flight, waiting, refused). */
  get gatewayStats(): Readonly<GatewayStats> {
    return this.gateway.stats;
  }

  /** Resolves when the engine has stopped (after `close()`). */
  run(): Promise<void> {
    return this.done;
  }

  /**
   * Stop in order: stop fetching and accepting → finish in-flight steps (up to the grace period)
   * → drain the connection. Idempotent; every stage runs even if an earlier one fails.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const errors: unknown[] = [];
      const stage = async (name: string, f: () => Promise<void>) => {
        try {
          await f();
        } catch (err) {
          errors.push(err);
          this.logger.warn({ err, stage: name }, 'shutdown stage failed');
        }
      };
      const grace = new Promise<void>((ok) => setTimeout(ok, this.config.shutdownGraceMs).unref());
      await stage('gateway', () => this.gateway.stop());
      await stage('triggers', () => Promise.race([this.triggers.stop(), grace]));
      await stage('shards', () =>
        Promise.race([Promise.all(this.shards.map((s) => s.stop())).then(() => undefined), grace]),
      );
      await stage('steps', () => Promise.race([this.processor.close(), grace]));
      this.timers.stop(); // local twins only: the durable schedules stay in JetStream
      await stage('drain', () => this.nc.drain());
      this.logger.info({ stats: this.processor.stats }, 'engine stopped');
      this.resolveDone();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
