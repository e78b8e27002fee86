/**
 * Engine configuration: raw options (flags, env, file) → defaults → validated, frozen config.
 * Durations end in `Ms`, sizes in `Bytes`. Every rejection uses one message format:
 * `invalid <option>: <why> (got <value>)`.
 */
import { ConfigError } from './errors.js';
import { DEFAULT_PREFIX, DEFAULT_REPLY_PREFIXES } from './contracts/subjects.js';
import { MSG_ID_MEMORY } from './contracts/wire.js';

export interface EngineConfig {
  /** NATS server URLs. Env `NATS_URL` (comma-separated). */
  readonly servers: readonly string[];
  /** Subject prefix (`wf`). Also names streams (`WF_INBOX`, `WF_EVENTS`) and the bucket. */
  readonly prefix: string;
  /** Number of inbox shards; must equal the `partition()` count in the server's mapping. */
  readonly shards: number;
  /** Shards this engine may consume (default: all). */
  readonly shardIds: readonly number[];
  /** True when `shardIds` was given: a static assignment instead of balancing with the others. */
  readonly staticShards: boolean;
  /** Stream/bucket replicas (1 single node, 3 on a cluster). */
  readonly replicas: number;
  /** Max size of a public request body. Keep it below the server's `max_payload`. */
  readonly maxInputBytes: number;
  /** Records cached in memory (LRU), at most this many. */
  readonly cacheSize: number;
  /**
   * Records cached in memory, at most this many bytes (estimated per entry: the packed record's
   * size times a factor for the decoded record and the live XState snapshot kept beside it; see
   * `CACHE_ENTRY_FACTOR` in `src/engine/processor.ts`).
   */
  readonly cacheMaxBytes: number;
  /** Inbox consumer AckWait: a message held longer by a dead engine is redelivered. */
  readonly ackWaitMs: number;
  /** Max unacknowledged inbox messages per shard (also bounds engine memory). */
  readonly maxAckPendingPerShard: number;
  /**
   * Most queued messages of one workflow applied in one record write (issue 18: signals,
   * activity results and timers delivered back to back); 1 turns folding off.
   */
  readonly foldMax: number;
  /**
   * With the journal on: how long after a step that queued activities or set timers its
   * `outboxDone` write waits; a workflow that steps again before then never needs it (a cold load
   * reads the step's journal entry instead). Journal off: marks are written at once.
   */
  readonly lazyMarkMs: number;
  /**
   * How often each engine looks for plain (non-schedule) messages on the timer subjects and
   * deletes them (reads only what was stored since its last look).
   */
  readonly timerStraySweepMs: number;
  /** Lifecycle notifications are kept this long in the events stream. */
  readonly eventsMaxAgeMs: number;
  /** The events stream keeps at most this many bytes; the oldest notifications go first. */
  readonly eventsMaxBytes: number;
  /**
   * Records of finished workflows (`completed`, `failed`, `canceled`) are removed by the server
   * this long after their last write (per-message TTL). 0 keeps them forever. After removal the
   * id is free again: a `start` creates a new workflow, a signal gets `not_found`.
   */
  readonly finishedRetentionMs: number;
  /**
   * Public requests (start, signal, cancel, query) the gateway of this engine works on at once.
   * Beyond it, further requests wait (bounded bytes), taking turns by workflow. Small enough that
   * a burst to one workflow cannot take every slot for long (64: issue 18's head-of-line bench),
   * large enough that it never limited a benchmark's throughput.
   */
  readonly gatewayMaxInFlight: number;
  /**
   * Journal every step, rejection and ignored message into the history stream. On by default;
   * off only to measure its cost (history, search and repair need it).
   */
  readonly journal: boolean;
  /** Journal entries are kept this long in the history stream. */
  readonly journalMaxAgeMs: number;
  /** The history stream keeps at most this many bytes; the oldest entries go first. */
  readonly journalMaxBytes: number;
  /** Stream compression of the history stream: `none` (default) or `s2` (half the disk). */
  readonly journalCompression: 'none' | 's2';
  /** Event payloads larger than this (encoded) are journaled without the payload, marked. */
  readonly journalPayloadMaxBytes: number;
  /** JetStream dedup window for the inbox and events streams. */
  readonly duplicateWindowMs: number;
  /**
   * How long an entry of the attempt ledger (bucket `<prefix>_attempts`, one key per task
   * attempt a worker took) is kept. It must outlive every copy of a task: a task queued twice
   * (an outbox performed again after the dedup window) is recognised as long as the entry of
   * the attempt it repeats exists. At least `duplicateWindowMs` (below it the server's dedup
   * covers more than the ledger); default 7 days.
   */
  readonly attemptRetentionMs: number;
  /**
   * How soon the shards of a dead engine move to the others, about: after `failoverMs / 2`
   * without a heartbeat an engine counts as gone; its shards are then taken, unpinned and
   * claimed within a pin check (`failoverMs / 4`). Also sets the heartbeat period
   * (`failoverMs / 10`) and the pull expiry of shard consumers (see `pullExpiryMs`).
   */
  readonly failoverMs: number;
  /** Grace period for a clean stop before it is forced. */
  readonly shutdownGraceMs: number;
  /** Engine name in logs and on its NATS connection. */
  readonly name: string;
  /**
   * Reply subjects (`Jf-Reply-To`) must start with one of these: the requesters' inbox prefixes.
   * Add yours when clients use a custom inbox prefix. Requests with another reply subject are
   * refused by the gateway; such a reply subject in the inbox is never published to.
   */
  readonly replyPrefixes: readonly string[];
  /** Client message ids (`Nats-Msg-Id` of signals and cancels) each workflow record remembers. */
  readonly msgIdMemory: number;
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error' | 'silent';
}

export type EngineOptions = Partial<
  Omit<EngineConfig, 'servers' | 'shardIds' | 'staticShards' | 'replyPrefixes' | 'journal'>
> & {
  journal?: boolean | string;
  servers?: string | readonly string[];
  shardIds?: readonly number[] | string;
  /** Comma-separated or a list. */
  replyPrefixes?: string | readonly string[];
};

/**
 * The smallest `failoverMs` accepted: heartbeats every `failoverMs / 10` (200 ms) against a
 * liveness age of `failoverMs / 2` (1 s), and a shard pin kept through 3 pull expiries of 1 s.
 */
export const ENGINE_MIN_FAILOVER_MS = 2_000;

export const ENGINE_DEFAULTS = Object.freeze({
  servers: ['nats://127.0.0.1:4222'],
  prefix: DEFAULT_PREFIX,
  shards: 16,
  replicas: 1,
  maxInputBytes: 256 * 1024,
  cacheSize: 10_000,
  cacheMaxBytes: 256 * 1024 * 1024,
  ackWaitMs: 30_000,
  maxAckPendingPerShard: 1_000,
  foldMax: 64,
  lazyMarkMs: 5_000,
  timerStraySweepMs: 60_000,
  eventsMaxAgeMs: 7 * 24 * 3600_000,
  eventsMaxBytes: 256 * 1024 * 1024,
  finishedRetentionMs: 7 * 24 * 3600_000,
  journal: true,
  journalMaxAgeMs: 30 * 24 * 3600_000,
  journalMaxBytes: 1024 * 1024 * 1024,
  journalCompression: 'none' as const,
  journalPayloadMaxBytes: 4096,
  gatewayMaxInFlight: 64,
  duplicateWindowMs: 120_000,
  attemptRetentionMs: 7 * 24 * 3600_000,
  shutdownGraceMs: 10_000,
  failoverMs: 10_000,
  logLevel: 'info' as const,
  replyPrefixes: DEFAULT_REPLY_PREFIXES,
  msgIdMemory: MSG_ID_MEMORY,
});

function bad(option: string, why: string, value: unknown): never {
  throw new ConfigError(`invalid ${option}: ${why} (got ${JSON.stringify(value)})`, {
    details: { option, value },
  });
}

function int(option: string, v: unknown, min: number, max: number): number {
  const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    bad(option, `must be an integer in ${min}..${max}`, v);
  }
  return n;
}

function bool(option: string, v: unknown): boolean {
  if (v === true || v === 'true' || v === '1') return true;
  if (v === false || v === 'false' || v === '0') return false;
  return bad(option, 'must be true or false', v);
}

/** 0 (keep forever) or 1 s .. ~4.4 years: the server's message TTL has a 1 s resolution. */
function retention(v: unknown): number {
  const n = int('finishedRetentionMs', v, 0, 2 ** 47);
  if (n > 0 && n < 1_000)
    bad('finishedRetentionMs', 'must be 0 (keep forever) or at least 1000', v);
  return n;
}

function parseShardIds(v: unknown, shards: number): number[] {
  if (v === undefined) return Array.from({ length: shards }, (_, i) => i);
  const list =
    typeof v === 'string'
      ? v.split(',').flatMap((part) => {
          const [a, b] = part.split('-').map((x) => x.trim());
          if (b === undefined) return [Number(a)];
          const lo = Number(a);
          const hi = Number(b);
          return Array.from({ length: Math.max(0, hi - lo + 1) }, (_, i) => lo + i);
        })
      : Array.isArray(v)
        ? (v as unknown[])
        : bad('shardIds', 'must be a list like "0-3,7"', v);
  for (const s of list) {
    if (typeof s !== 'number' || !Number.isInteger(s) || s < 0 || s >= shards) {
      bad('shardIds', `every shard must be an integer in 0..${shards - 1}`, v);
    }
  }
  return [...new Set(list as number[])].sort((a, b) => a - b);
}

function parseReplyPrefixes(v: unknown): string[] {
  if (v === undefined) return [...ENGINE_DEFAULTS.replyPrefixes];
  const list =
    typeof v === 'string'
      ? v
          .split(',')
          .map((x) => x.trim())
          .filter(Boolean)
      : Array.isArray(v)
        ? (v as unknown[])
        : bad('replyPrefixes', 'must be a list of subject prefixes like "_INBOX.,_R_."', v);
  if (list.length === 0) bad('replyPrefixes', 'at least one prefix is needed', v);
  for (const p of list) {
    if (typeof p !== 'string' || p.length < 2 || /[\s*>]/.test(p)) {
      bad('replyPrefixes', 'each prefix is a literal subject start without wildcards', v);
    }
  }
  return list as string[];
}

/** Validate and freeze. Never mutates `raw`. */
export function compileEngineConfig(raw: EngineOptions = {}): EngineConfig {
  const serversRaw = raw.servers ?? ENGINE_DEFAULTS.servers;
  const servers =
    typeof serversRaw === 'string'
      ? serversRaw
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : [...serversRaw];
  if (servers.length === 0) bad('servers', 'at least one NATS URL is needed', serversRaw);
  const prefix = raw.prefix ?? ENGINE_DEFAULTS.prefix;
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(prefix))
    bad('prefix', 'must be 1-32 of A-Z a-z 0-9 _ -', prefix);
  const shards = int('shards', raw.shards ?? ENGINE_DEFAULTS.shards, 1, 1024);
  const duplicateWindowMs = int(
    'duplicateWindowMs',
    raw.duplicateWindowMs ?? ENGINE_DEFAULTS.duplicateWindowMs,
    1_000,
    86_400_000,
  );
  const journalCompression = raw.journalCompression ?? ENGINE_DEFAULTS.journalCompression;
  if (journalCompression !== 'none' && journalCompression !== 's2') {
    bad('journalCompression', 'must be none or s2', journalCompression);
  }
  const logLevel = raw.logLevel ?? ENGINE_DEFAULTS.logLevel;
  if (!['debug', 'info', 'warn', 'error', 'silent'].includes(logLevel)) {
    bad('logLevel', 'must be debug, info, warn, error or silent', logLevel);
  }
  return Object.freeze({
    servers: Object.freeze(servers),
    prefix,
    shards,
    shardIds: Object.freeze(parseShardIds(raw.shardIds, shards)),
    staticShards: raw.shardIds !== undefined,
    replicas: int('replicas', raw.replicas ?? ENGINE_DEFAULTS.replicas, 1, 5),
    maxInputBytes: int(
      'maxInputBytes',
      raw.maxInputBytes ?? ENGINE_DEFAULTS.maxInputBytes,
      1,
      64 * 1024 * 1024,
    ),
    cacheSize: int('cacheSize', raw.cacheSize ?? ENGINE_DEFAULTS.cacheSize, 1, 10_000_000),
    cacheMaxBytes: int(
      'cacheMaxBytes',
      raw.cacheMaxBytes ?? ENGINE_DEFAULTS.cacheMaxBytes,
      1024,
      2 ** 45,
    ),
    ackWaitMs: int('ackWaitMs', raw.ackWaitMs ?? ENGINE_DEFAULTS.ackWaitMs, 1_000, 3_600_000),
    maxAckPendingPerShard: int(
      'maxAckPendingPerShard',
      raw.maxAckPendingPerShard ?? ENGINE_DEFAULTS.maxAckPendingPerShard,
      1,
      1_000_000,
    ),
    foldMax: int('foldMax', raw.foldMax ?? ENGINE_DEFAULTS.foldMax, 1, 1_000),
    lazyMarkMs: int('lazyMarkMs', raw.lazyMarkMs ?? ENGINE_DEFAULTS.lazyMarkMs, 0, 600_000),
    timerStraySweepMs: int(
      'timerStraySweepMs',
      raw.timerStraySweepMs ?? ENGINE_DEFAULTS.timerStraySweepMs,
      100,
      86_400_000,
    ),
    eventsMaxAgeMs: int(
      'eventsMaxAgeMs',
      raw.eventsMaxAgeMs ?? ENGINE_DEFAULTS.eventsMaxAgeMs,
      1_000,
      2 ** 47,
    ),
    eventsMaxBytes: int(
      'eventsMaxBytes',
      raw.eventsMaxBytes ?? ENGINE_DEFAULTS.eventsMaxBytes,
      1024 * 1024,
      2 ** 50,
    ),
    finishedRetentionMs: retention(raw.finishedRetentionMs ?? ENGINE_DEFAULTS.finishedRetentionMs),
    journal: bool('journal', raw.journal ?? ENGINE_DEFAULTS.journal),
    journalMaxAgeMs: int(
      'journalMaxAgeMs',
      raw.journalMaxAgeMs ?? ENGINE_DEFAULTS.journalMaxAgeMs,
      1_000,
      2 ** 47,
    ),
    journalMaxBytes: int(
      'journalMaxBytes',
      raw.journalMaxBytes ?? ENGINE_DEFAULTS.journalMaxBytes,
      1024 * 1024,
      2 ** 50,
    ),
    journalCompression,
    journalPayloadMaxBytes: int(
      'journalPayloadMaxBytes',
      raw.journalPayloadMaxBytes ?? ENGINE_DEFAULTS.journalPayloadMaxBytes,
      0,
      1024 * 1024,
    ),
    gatewayMaxInFlight: int(
      'gatewayMaxInFlight',
      raw.gatewayMaxInFlight ?? ENGINE_DEFAULTS.gatewayMaxInFlight,
      1,
      1_000_000,
    ),
    duplicateWindowMs,
    attemptRetentionMs: int(
      'attemptRetentionMs',
      raw.attemptRetentionMs ?? ENGINE_DEFAULTS.attemptRetentionMs,
      duplicateWindowMs,
      2 ** 47,
    ),
    failoverMs: int(
      'failoverMs',
      raw.failoverMs ?? ENGINE_DEFAULTS.failoverMs,
      ENGINE_MIN_FAILOVER_MS,
      600_000,
    ),
    shutdownGraceMs: int(
      'shutdownGraceMs',
      raw.shutdownGraceMs ?? ENGINE_DEFAULTS.shutdownGraceMs,
      0,
      3_600_000,
    ),
    name: raw.name ?? `jetflow-engine-${process.pid}`,
    logLevel,
    replyPrefixes: Object.freeze(parseReplyPrefixes(raw.replyPrefixes)),
    msgIdMemory: int('msgIdMemory', raw.msgIdMemory ?? ENGINE_DEFAULTS.msgIdMemory, 0, 10_000),
  });
}
