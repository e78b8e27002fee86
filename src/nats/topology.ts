/**
 * Every stream, consumer and bucket jetflow uses, declared in one table, and the code that
 * creates or verifies them.
 */
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { createSubjects, type Subjects } from '../contracts/subjects.js';
import { ErrorCode, TerminalError } from '../errors.js';

const ms = (n: number) => n * 1_000_000; // JetStream durations are nanoseconds

export interface TopologyOptions {
  prefix: string;
  shards: number;
  replicas: number;
  ackWaitMs: number;
  maxAckPendingPerShard: number;
  eventsMaxAgeMs: number;
  duplicateWindowMs: number;
  /** Priority timeout of the shard consumers: how soon a dead engine's pin moves. */
  failoverMs: number;
}

/** Names derived from the prefix. */
export interface TopologyNames {
  subjects: Subjects;
  inboxStream: string;
  eventsStream: string;
  tasksStream: string;
  schedulesStream: string;
  bucket: string;
  schedulesBucket: string;
  queueConsumer(queue: string): string;
  shardConsumer(shard: number): string;
}

export function topologyNames(prefix: string): TopologyNames {
  const up = prefix.toUpperCase().replace(/-/g, '_');
  return {
    subjects: createSubjects(prefix),
    inboxStream: `${up}_INBOX`,
    eventsStream: `${up}_EVENTS`,
    tasksStream: `${up}_TASKS`,
    schedulesStream: `${up}_SCHEDULES`,
    schedulesBucket: `${prefix}_schedules`,
    queueConsumer: (q) => `queue-${q}`,
    bucket: `${prefix}_workflows`,
    shardConsumer: (s) => `shard-${s}`,
  };
}

/** The table: stream and consumer configs for the options. */
export function topology(o: TopologyOptions): {
  names: TopologyNames;
  streams: Partial<StreamConfig>[];
  consumers: { stream: string; config: Partial<ConsumerConfig> }[];
} {
  const names = topologyNames(o.prefix);
  const s = names.subjects;
  const inbox: Partial<StreamConfig> = {
    name: names.inboxStream,
    description: 'jetflow inbox: every workflow input, partitioned into shards',
    // Shard subjects, plus the schedules of durable timers (which fire into the shard subjects).
    subjects: [...Array.from({ length: o.shards }, (_, i) => s.shardFilter(i)), s.timersWildcard],
    allow_msg_schedules: true,
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    num_replicas: o.replicas,
    duplicate_window: ms(o.duplicateWindowMs),
    // No limits are set, so discard never applies; message scheduling requires DiscardOld.
    discard: DiscardPolicy.Old,
    // Reads for the gap check must see the leader's view, not a lagging replica's.
    allow_direct: false,
  };
  const events: Partial<StreamConfig> = {
    name: names.eventsStream,
    description: 'jetflow lifecycle notifications (wf.events.<type>.<id>)',
    subjects: [s.eventsWildcard],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: ms(o.eventsMaxAgeMs),
    duplicate_window: ms(o.duplicateWindowMs),
    allow_direct: true,
  };
  const tasks: Partial<StreamConfig> = {
    name: names.tasksStream,
    description: 'jetflow activity tasks (wf.task.<queue>.<taskKey>), one consumer per queue',
    // Tasks, plus the schedules of retries waiting out their backoff (wf.task.<q>.<key>.<attempt>,
    // outside every queue consumer's filter, so a waiting retry holds no MaxAckPending slot).
    subjects: [s.tasksWildcard],
    allow_msg_schedules: true,
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    num_replicas: o.replicas,
    duplicate_window: ms(o.duplicateWindowMs),
    // No limits are set, so discard never applies; message scheduling requires DiscardOld.
    discard: DiscardPolicy.Old,
  };
  const consumers = Array.from({ length: o.shards }, (_, i) => ({
    stream: names.inboxStream,
    config: {
      durable_name: names.shardConsumer(i),
      description: `jetflow shard ${i}`,
      filter_subject: s.shardFilter(i),
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: ms(o.ackWaitMs),
      max_ack_pending: o.maxAckPendingPerShard,
      max_deliver: -1,
      num_replicas: 0,
      // One engine at a time per shard, chosen and moved by the server.
      priority_groups: ['engines'],
      priority_policy: 'pinned_client',
      // Half the failover budget; the membership TTL is the other half.
      priority_timeout: ms(Math.floor(o.failoverMs / 2)),
    } satisfies Partial<ConsumerConfig>,
  }));
  return { names, streams: [inbox, events, tasks], consumers };
}

/**
 * Create or update every stream, consumer and the bucket. Idempotent; retried on timeouts (on a
 * cluster, several engines starting at once race to create R3 assets and elections take time).
 */
export async function ensureTopology(
  nc: NatsConnection,
  jsm: JetStreamManager,
  o: TopologyOptions,
  attempts = 6,
): Promise<{ names: TopologyNames; kv: KV }> {
  for (let i = 1; ; i++) {
    try {
      return await ensureTopologyOnce(nc, jsm, o);
    } catch (err) {
      const transient =
        /timeout|no responders|leader|no suitable peers|insufficient resources/i.test(
          String((err as Error)?.message ?? err),
        );
      if (!transient || i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, 500 * i));
    }
  }
}

async function ensureTopologyOnce(
  nc: NatsConnection,
  jsm: JetStreamManager,
  o: TopologyOptions,
): Promise<{ names: TopologyNames; kv: KV }> {
  const t = topology(o);
  for (const cfg of t.streams) {
    try {
      await jsm.streams.info(cfg.name!);
      await jsm.streams.update(cfg.name!, cfg);
    } catch (err) {
      if (!isNotFound(err)) throw topologyError(`stream ${cfg.name}`, err);
      await jsm.streams.add({ ...cfg, name: cfg.name! }).catch((e: unknown) => {
        throw topologyError(`stream ${cfg.name}`, e);
      });
    }
  }
  for (const c of t.consumers) {
    const name = c.config.durable_name!;
    const existing = await jsm.consumers.info(c.stream, name).catch(() => undefined);
    if (!existing) {
      await jsm.consumers.add(c.stream, c.config).catch((e: unknown) => {
        throw topologyError(`consumer ${c.stream}/${name}`, e);
      });
      continue;
    }
    const groups = (existing.config as { priority_groups?: string[] }).priority_groups ?? [];
    if (c.config.priority_groups && groups.join() !== c.config.priority_groups.join()) {
      // Created by a jetflow without pinned shard ownership: the priority policy cannot be
      // updated in place, so the consumer is recreated. Messages stay in the work-queue stream;
      // any that were in flight are redelivered and recognised by the records' lastSeq.
      await jsm.consumers.delete(c.stream, name);
      await jsm.consumers.add(c.stream, c.config).catch((e: unknown) => {
        throw topologyError(`consumer ${c.stream}/${name}`, e);
      });
      continue;
    }
    await jsm.consumers
      .update(c.stream, name, {
        ack_wait: c.config.ack_wait,
        max_ack_pending: c.config.max_ack_pending,
        description: c.config.description,
        priority_timeout: c.config.priority_timeout,
      })
      .catch((e: unknown) => {
        throw topologyError(`consumer ${c.stream}/${name}`, e);
      });
  }
  const kv = await new Kvm(nc)
    .create(t.names.bucket, {
      history: 1,
      replicas: o.replicas,
      storage: StorageType.File,
    })
    .catch((e: unknown) => {
      throw topologyError(`bucket ${t.names.bucket}`, e);
    });
  return { names: t.names, kv };
}

function isNotFound(err: unknown): boolean {
  return err instanceof Error && /not found/i.test(err.message);
}

function topologyError(what: string, cause: unknown): TerminalError {
  return new TerminalError(
    `cannot create or update ${what}: ${String((cause as Error)?.message ?? cause)}`,
    {
      code: ErrorCode.Topology,
      cause,
    },
  );
}
