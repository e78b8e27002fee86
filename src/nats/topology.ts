/**
 * Every stream, consumer and bucket jetflow uses, declared in one table, and the code that
 * creates or verifies them.
 */
// Every role loads this table: the request shim (a per-request cost of nats.js) comes with it.
import './request-shim.js';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  StoreCompression,
  type ConsumerConfig,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import { createSubjects, parseShardInbox, shardOf, type Subjects } from '../contracts/subjects.js';
import { ErrorCode, TerminalError } from '../errors.js';

const ms = (n: number) => n * 1_000_000; // JetStream durations are nanoseconds

/**
 * Expiry of an engine's pull requests on its shard consumers: a sixth of `failoverMs`, within
 * 1 s (the client's minimum) .. 5 s.
 */
export function pullExpiryMs(failoverMs: number): number {
  return Math.min(5_000, Math.max(1_000, Math.floor(failoverMs / 6)));
}

/**
 * Priority timeout of the shard consumers: how long the server keeps a pin without a pull from
 * the pinned engine. Half of `failoverMs`, and at least three pull expiries, so that an idle but
 * live engine (which pulls again every expiry) never loses its pin to a slow pull.
 */
export function pinTimeoutMs(failoverMs: number): number {
  return Math.max(Math.floor(failoverMs / 2), 3 * pullExpiryMs(failoverMs));
}

export interface TopologyOptions {
  prefix: string;
  shards: number;
  replicas: number;
  ackWaitMs: number;
  maxAckPendingPerShard: number;
  eventsMaxAgeMs: number;
  /** Size bound of the events stream; the oldest notifications are discarded first. */
  eventsMaxBytes: number;
  duplicateWindowMs: number;
  /** Max age of journal entries in the history stream. */
  journalMaxAgeMs: number;
  /** Size bound of the history stream; the oldest entries are discarded first. */
  journalMaxBytes: number;
  /** Stream compression of the history stream (default `none`). */
  journalCompression?: 'none' | 's2';
  /** Max age of the attempt ledger's entries (bucket `<prefix>_attempts`). */
  attemptRetentionMs: number;
  /** Priority timeout of the shard consumers: how soon a dead engine's pin moves. */
  failoverMs: number;
}

/** Names derived from the prefix. */
export interface TopologyNames {
  subjects: Subjects;
  inboxStream: string;
  eventsStream: string;
  /** The journal: every step of every workflow (`<prefix>.journal.<type>.<id>`). */
  historyStream: string;
  tasksStream: string;
  schedulesStream: string;
  bucket: string;
  schedulesBucket: string;
  /**
   * The attempt ledger: one key per task attempt a worker took (`kv.create`), so that a second
   * copy of the same attempt is never run.
   */
  attemptsBucket: string;
  /** Bulk operator jobs: the job record (claim, cursor, counters) and its snapshot of ids. */
  bulkBucket: string;
  /**
   * Concurrency keys: one record per (type, key), `<type>.<keyToken>`, holders and FIFO
   * waiters, written only with compare-and-set.
   */
  keysBucket: string;
  /** Activity rate limits: one record of recent grants per (activity, key). */
  ratesBucket: string;
  /** Activity concurrency slots per key (`src/nats/slots.ts`). */
  slotsBucket: string;
  /** Batches (issue 23): `<id>.meta`, `<id>.counts` and one ledger key per item, `<id>.i.<key>`. */
  batchesBucket: string;
  /** Trigger messages that could not be applied (`<prefix>.parked.<trigger>.<seq>`). */
  parkedStream: string;
  /** The triggers' ledger: what each message did (`<prefix>.tledger.<trigger>.<seq>`). */
  ledgerStream: string;
  /** Trigger status reports of their holders (key = trigger name). */
  triggersBucket: string;
  /** Webhook requests accepted by `jetflow http` (`<prefix>.hook.<trigger>`). */
  hooksStream: string;
  hookSubject(trigger: string): string;
  queueConsumer(queue: string): string;
  /**
   * The consumer of one priority level of a queue: `queue-<queue>` for level 3 (the queue's
   * consumer, which unprioritized work has always used), `queue<level>-<queue>` for the others.
   */
  levelConsumer(queue: string, level: number): string;
  shardConsumer(shard: number): string;
}

export function topologyNames(prefix: string): TopologyNames {
  const up = prefix.toUpperCase().replace(/-/g, '_');
  return {
    subjects: createSubjects(prefix),
    inboxStream: `${up}_INBOX`,
    eventsStream: `${up}_EVENTS`,
    historyStream: `${up}_HISTORY`,
    tasksStream: `${up}_TASKS`,
    schedulesStream: `${up}_SCHEDULES`,
    schedulesBucket: `${prefix}_schedules`,
    queueConsumer: (q) => `queue-${q}`,
    levelConsumer: (q, l) => (l === 3 ? `queue-${q}` : `queue${l}-${q}`),
    bucket: `${prefix}_workflows`,
    attemptsBucket: `${prefix}_attempts`,
    bulkBucket: `${prefix}_bulk`,
    keysBucket: `${prefix}_keys`,
    ratesBucket: `${prefix}_rates`,
    slotsBucket: `${prefix}_slots`,
    batchesBucket: `${prefix}_batches`,
    parkedStream: `${up}_PARKED`,
    ledgerStream: `${up}_TRIGGERS`,
    triggersBucket: `${prefix}_triggers`,
    hooksStream: `${up}_HOOKS`,
    hookSubject: (t) => `${prefix}.hook.${t}`,
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
    subjects: [s.eventsWildcard, s.alertsWildcard],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: ms(o.eventsMaxAgeMs),
    // Notifications are a feed, not state: at the bound the oldest go, publishers never block.
    max_bytes: o.eventsMaxBytes,
    discard: DiscardPolicy.Old,
    duplicate_window: ms(o.duplicateWindowMs),
    allow_direct: true,
  };
  const history: Partial<StreamConfig> = {
    name: names.historyStream,
    description: 'jetflow journal: every step of every workflow (wf.journal.<type>.<id>)',
    subjects: [s.journalWildcard],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: ms(o.journalMaxAgeMs),
    max_bytes: o.journalMaxBytes,
    // History is a record of the past: at the bound the oldest entries go, steps never block.
    discard: DiscardPolicy.Old,
    duplicate_window: ms(o.duplicateWindowMs),
    // History reads (one subject at a time) may be served by any replica.
    allow_direct: true,
    // s2 halves the disk the journal takes and costs the server CPU on every sealed block: off
    // unless asked for (README, journal retention).
    compression: o.journalCompression === 's2' ? StoreCompression.S2 : StoreCompression.None,
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
      // A dead engine's pin lapses by itself after this; live engines unpin it sooner (see
      // `ShardManager.checkPins`).
      priority_timeout: ms(pinTimeoutMs(o.failoverMs)),
    } satisfies Partial<ConsumerConfig>,
  }));
  const parked: Partial<StreamConfig> = {
    name: names.parkedStream,
    description:
      'jetflow parked trigger messages (wf.parked.<trigger>.<seq>), kept until replayed or skipped',
    subjects: [`${s.prefix}.parked.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    allow_direct: false,
  };
  const ledger: Partial<StreamConfig> = {
    name: names.ledgerStream,
    description:
      'jetflow trigger ledger: what each trigger message did (wf.tledger.<trigger>.<seq>)',
    subjects: [`${s.prefix}.tledger.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: ms(o.journalMaxAgeMs),
    max_bytes: o.journalMaxBytes,
    max_msgs_per_subject: 32,
    discard: DiscardPolicy.Old,
    allow_direct: true,
  };
  const hooks: Partial<StreamConfig> = {
    name: names.hooksStream,
    description: 'jetflow webhook requests accepted by jetflow http (wf.hook.<trigger>)',
    subjects: [`${s.prefix}.hook.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    num_replicas: o.replicas,
    max_age: ms(o.journalMaxAgeMs),
    duplicate_window: ms(o.duplicateWindowMs),
    discard: DiscardPolicy.Old,
    allow_direct: false,
  };
  return {
    names,
    streams: [inbox, events, history, tasks, parked, ledger, hooks],
    consumers,
  };
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
      const existing = await jsm.streams.info(cfg.name!);
      if (cfg.name === t.names.inboxStream) checkShardCount(existing.config.subjects, o.shards);
      await jsm.streams.update(cfg.name!, cfg);
    } catch (err) {
      if (!isNotFound(err)) throw topologyError(`stream ${cfg.name}`, err);
      await jsm.streams.add({ ...cfg, name: cfg.name! }).catch((e: unknown) => {
        throw topologyError(`stream ${cfg.name}`, e);
      });
    }
  }
  for (const c of t.consumers) await ensureConsumer(jsm, c);
  // Records are read from the stream leader, never by direct get: on R3 a follower may answer a
  // direct get and lag, and a stale record must never decide to drop a message. A bucket made
  // by an earlier jetflow (direct gets on) is switched over before it is opened.
  // Finished records carry a per-message TTL (`finishedRetentionMs`), which needs
  // `allow_msg_ttl` on the bucket's stream (nats-server 2.11+; it cannot be turned off again).
  // `Kvm.create` never updates an existing bucket, so both are set here.
  const bucketStream = `KV_${t.names.bucket}`;
  const bucketInfo = () =>
    jsm.streams.info(bucketStream).catch((e: unknown) => {
      if (isNotFound(e)) return undefined;
      throw topologyError(`bucket ${t.names.bucket}`, e);
    });
  const fixBucket = async (config: StreamConfig | undefined) => {
    if (!config || (config.allow_direct === false && config.allow_msg_ttl === true)) return;
    await jsm.streams
      .update(bucketStream, { ...config, allow_direct: false, allow_msg_ttl: true })
      .catch((e: unknown) => {
        throw topologyError(`bucket ${t.names.bucket}`, e);
      });
  };
  const existing = await bucketInfo();
  await fixBucket(existing?.config);
  const kv = await new Kvm(nc)
    .create(t.names.bucket, {
      history: 1,
      replicas: o.replicas,
      storage: StorageType.File,
      allow_direct: false,
    })
    .catch((e: unknown) => {
      throw topologyError(`bucket ${t.names.bucket}`, e);
    });
  if (!existing) await fixBucket((await bucketInfo())?.config);
  await ensureAttemptsBucket(nc, jsm, t.names, o);
  // Compare-and-set buckets: the concurrency keys', the activity rate limits' and concurrency
  // slots', the batches'.
  await ensureBucket(nc, jsm, t.names.keysBucket, o);
  await ensureBucket(nc, jsm, t.names.ratesBucket, o);
  await ensureBucket(nc, jsm, t.names.slotsBucket, o);
  await ensureBucket(nc, jsm, t.names.batchesBucket, o);
  return { names: t.names, kv };
}

/**
 * The attempt ledger: keys expire after `attemptRetentionMs` (the bucket's max age, brought in
 * line on an existing bucket); read from the stream leader, like the records, because a worker
 * reads an entry to tell its own take (whose reply was lost) from another delivery's.
 */
async function ensureAttemptsBucket(
  nc: NatsConnection,
  jsm: JetStreamManager,
  names: TopologyNames,
  o: TopologyOptions,
): Promise<void> {
  const stream = `KV_${names.attemptsBucket}`;
  const fail = (e: unknown) => {
    throw topologyError(`bucket ${names.attemptsBucket}`, e);
  };
  const existing = await jsm.streams.info(stream).catch((e: unknown) => {
    if (isNotFound(e)) return undefined;
    return fail(e);
  });
  if (!existing) {
    await new Kvm(nc)
      .create(names.attemptsBucket, {
        history: 1,
        replicas: o.replicas,
        storage: StorageType.File,
        allow_direct: false,
        ttl: o.attemptRetentionMs,
      })
      .catch(fail);
    return;
  }
  const c = existing.config;
  if (c.max_age !== ms(o.attemptRetentionMs) || c.allow_direct !== false)
    await jsm.streams
      .update(stream, { ...c, max_age: ms(o.attemptRetentionMs), allow_direct: false })
      .catch(fail);
}

/** A plain bucket (no history, read from the leader), created when missing. */
async function ensureBucket(
  nc: NatsConnection,
  jsm: JetStreamManager,
  bucket: string,
  o: TopologyOptions,
): Promise<void> {
  const existing = await jsm.streams.info(`KV_${bucket}`).catch((e: unknown) => {
    if (isNotFound(e)) return undefined;
    throw topologyError(`bucket ${bucket}`, e);
  });
  if (existing) return;
  await new Kvm(nc)
    .create(bucket, {
      history: 1,
      replicas: o.replicas,
      storage: StorageType.File,
      allow_direct: false,
    })
    .catch((e: unknown) => {
      throw topologyError(`bucket ${bucket}`, e);
    });
}

/**
 * Refuse to start with a shard count other than the one the inbox stream was created with:
 * updating its subjects would strand the messages of the shards left out and split the
 * assignment between engines that disagree.
 */
function checkShardCount(subjects: string[] | undefined, shards: number): void {
  const existing = (subjects ?? []).filter((x) => /\.in\.\d+\.>$/.test(x)).length;
  if (existing > 0 && existing !== shards) {
    throw new TerminalError(
      `the inbox stream has ${existing} shards but this engine is configured with ${shards}: ` +
        `start it with --shards ${existing} (changing the shard count of a running system is ` +
        `not supported)`,
      { code: ErrorCode.Topology, details: { existing, configured: shards } },
    );
  }
}

type ConsumerEntry = { stream: string; config: Partial<ConsumerConfig> };

/** Create one consumer of the table, or bring an existing one in line with it. */
async function ensureConsumer(jsm: JetStreamManager, c: ConsumerEntry): Promise<void> {
  const name = c.config.durable_name!;
  const existing = await jsm.consumers.info(c.stream, name).catch(() => undefined);
  if (!existing) {
    await jsm.consumers.add(c.stream, c.config).catch((e: unknown) => {
      throw topologyError(`consumer ${c.stream}/${name}`, e);
    });
    return;
  }
  const groups = (existing.config as { priority_groups?: string[] }).priority_groups ?? [];
  if (c.config.priority_groups && groups.join() !== c.config.priority_groups.join()) {
    // Created without pinned shard ownership (an older jetflow, or by hand): the priority
    // policy cannot be updated in place, so the consumer is recreated. Messages stay in the
    // work-queue stream; any that were in flight are redelivered and recognised by the records'
    // lastSeq.
    await jsm.consumers.delete(c.stream, name);
    await jsm.consumers.add(c.stream, c.config).catch((e: unknown) => {
      throw topologyError(`consumer ${c.stream}/${name}`, e);
    });
    return;
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

/**
 * Re-create or repair one shard's consumer from the table (a shard consumer whose iterator
 * ended because the consumer was deleted or changed).
 */
export async function ensureShardConsumer(
  jsm: JetStreamManager,
  o: TopologyOptions,
  shard: number,
): Promise<void> {
  const t = topology(o);
  const name = t.names.shardConsumer(shard);
  const c = t.consumers.find((x) => x.config.durable_name === name);
  if (c) await ensureConsumer(jsm, c);
}

const PROBE_TYPE = 'jetflow-probe';

/**
 * Check that the server maps the inbox onto the configured number of shards: publish a few no-op
 * claims through the public mapping (core NATS) and compare the shard each one lands on with
 * {@link shardOf}. Throws a `topology` error naming the server's count when they disagree, or
 * when the server has no mapping for this prefix at all.
 */
export async function verifyShardMapping(
  nc: NatsConnection,
  names: TopologyNames,
  shards: number,
  timeoutMs = 5_000,
): Promise<void> {
  const s = names.subjects;
  const probes = Array.from({ length: 16 }, (_, i) => `${nuid.next()}-${i}`);
  const seen = new Map<string, number>();
  const sub = nc.subscribe(`${s.prefix}.in.*.claim.${PROBE_TYPE}.*`);
  const got = (async () => {
    for await (const m of sub) {
      const p = parseShardInbox(m.subject);
      if (p && probes.includes(p.id)) seen.set(p.id, p.shard);
      if (seen.size === probes.length) return;
    }
  })();
  try {
    await nc.flush();
    for (const id of probes) nc.publish(s.inbox('claim', PROBE_TYPE, id), new Uint8Array());
    let t: NodeJS.Timeout | undefined;
    await Promise.race([got, new Promise((ok) => (t = setTimeout(ok, timeoutMs)))]);
    clearTimeout(t);
  } finally {
    sub.unsubscribe();
  }
  if (seen.size === 0) {
    throw new TerminalError(
      `the server does not map ${s.prefix}.inbox.*.*.* onto shards: add ` +
        `shardMapping(${shards}) (see nats.conf) to the server's configuration`,
      { code: ErrorCode.Topology, details: { configured: shards } },
    );
  }
  const agrees = (n: number) => [...seen].every(([id, k]) => shardOf(PROBE_TYPE, id, n) === k);
  if (!agrees(shards)) {
    const server = Array.from({ length: 1024 }, (_, i) => i + 1).find(agrees);
    throw new TerminalError(
      `the server partitions the inbox into ${server ?? 'an unknown number of'} shards but this ` +
        `engine is configured with ${shards}: make --shards and the server's partition() agree`,
      { code: ErrorCode.Topology, details: { configured: shards, server } },
    );
  }
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
