/**
 * The public subjects of jetflow (wire contract v1). Every subject is built here and nowhere else.
 *
 * `<prefix>` defaults to `wf`. `<type>` and `<id>` are single NATS tokens: no `.`, `*`, `>` or
 * whitespace (checked by {@link checkToken}).
 */

/** Default subject prefix. */
export const DEFAULT_PREFIX = 'wf';

/** Kinds of message that enter a workflow's inbox. */
/** Kinds of message in the inbox; `claim` is a no-op an engine publishes to get a shard pinned. */
export type InboxKind =
  | 'start'
  | 'signal'
  | 'cancel'
  | 'timer'
  | 'result'
  | 'claim'
  | 'admin'
  /** A concurrency key's slot handed to a deferred workflow (engine to engine). */
  | 'admit'
  /** A workflow awaiting this one's end (E8). */
  | 'watch';

const TOKEN = /^[A-Za-z0-9_=-]{1,256}$/;
const PREFIX = /^[A-Za-z0-9_-]{1,32}$/;

/** True when `s` can be used as one subject token (type, id, prefix). */
export function isToken(s: unknown): s is string {
  return typeof s === 'string' && TOKEN.test(s);
}

/** Subjects for one prefix. */
export interface Subjects {
  readonly prefix: string;
  /** Public: `wf.start.<type>.<id>` etc. */
  start(type: string, id: string): string;
  signal(type: string, id: string): string;
  query(type: string, id: string): string;
  cancel(type: string, id: string): string;
  events(type: string, id: string): string;
  /** Alerts of a queue's team: `<prefix>.alerts.<queue>.<type>.<id>` (stream of events). */
  alerts(queue: string, type: string, id: string): string;
  /** Internal: where the gateway publishes, mapped by the server onto a shard. */
  inbox(kind: InboxKind, type: string, id: string): string;
  /** Internal: the shard-partitioned inbox subject the server maps `inbox()` onto. */
  shardInbox(shard: number, kind: InboxKind, type: string, id: string): string;
  /** Filter of one shard's consumer. */
  shardFilter(shard: number): string;
  /** Filter for one workflow's messages inside its shard. */
  workflowFilter(shard: number, type: string, id: string): string;
  /**
   * Activity task of one invocation: `<prefix>.task.<queue>.<taskKey>` (stream `*_TASKS`) at
   * priority 3 (the default), `<prefix>.task.<queue>.p<level>.<taskKey>` at levels 1, 2, 4 and 5
   * (a task key is 27 characters, so `p1` is never one).
   */
  task(queue: string, taskKey: string, level?: number): string;
  /**
   * Schedule subject of one task's retry: `<task subject>.<attempt>` (in the tasks stream,
   * outside every queue consumer's filter); the schedule targets `task()`.
   */
  taskRetry(queue: string, taskKey: string, attempt: number, level?: number): string;
  /** Every pending retry schedule of one task (purged on cancel). */
  taskRetries(queue: string, taskKey: string, level?: number): string;
  /** Filter of one queue's consumer of one priority level (default 3: `<prefix>.task.<queue>.*`). */
  taskFilter(queue: string, level?: number): string;
  /**
   * Where a task with a fairness key waits for its turn: `<prefix>.task.<queue>.fair.<level>.<keyToken>`
   * (outside every queue consumer's filter); workers move it onto `task()` round robin by key.
   */
  taskStaging(queue: string, level: number, keyToken: string): string;
  /** Every staged task of a queue. */
  taskStagingFilter(queue: string): string;
  /** Core-NATS subject where the engine tells a queue's workers to abort a task. */
  taskControl(queue: string): string;
  /** Wildcard of every task subject (the tasks stream). */
  readonly tasksWildcard: string;
  /** Schedule subject of one durable timer: `<prefix>.timer.<type>.<id>.<timerKey>`. */
  timer(type: string, id: string, timerKey: string): string;
  /** Wildcard of every timer schedule (in the inbox stream). */
  readonly timersWildcard: string;
  /** Wildcards the gateway subscribes to. */
  readonly publicWildcards: { start: string; signal: string; cancel: string; query: string };
  /** Wildcard of every notification. */
  readonly eventsWildcard: string;
  readonly alertsWildcard: string;
  /** Journal of one workflow: `<prefix>.journal.<type>.<id>` (stream `<PREFIX>_HISTORY`). */
  journal(type: string, id: string): string;
  /** Wildcard of every journal subject (the history stream). */
  readonly journalWildcard: string;
  /** Public request/reply: one workflow's journal, `<prefix>.history.<type>.<id>`. */
  history(type: string, id: string): string;
  /** Wildcard the history responders subscribe to. */
  readonly historyWildcard: string;
  /** Operator request/reply: `<prefix>.admin.<verb>.<type>.<id>` (apart from service subjects). */
  admin(verb: string, type: string, id: string): string;
  /** Wildcard the engines' admin responders subscribe to: `<prefix>.admin.*.*.*`. */
  readonly adminWildcard: string;
  /** Operator request/reply: create a bulk job, `<prefix>.admin.bulk`. */
  readonly bulk: string;
  /** Operator request/reply: a bulk job's status, `<prefix>.admin.bulk.status` (`{"jobId"}`). */
  readonly bulkStatus: string;
  /** Operator request/reply: cancel a bulk job, `<prefix>.admin.bulk.cancel` (`{"jobId"}`). */
  readonly bulkCancel: string;
  /** Progress notifications of one bulk job: `<prefix>.admin.bulk.<jobId>`. */
  bulkProgress(jobId: string): string;
  /**
   * Operator request/reply of batches (issue 23): `<prefix>.admin.batch.<verb>` with verb
   * `create`, `add`, `seal`, `status`, `items`, `retry-failed`, `cancel`, `pause`, `resume`.
   */
  batch(verb: string): string;
  /** Wildcard the engines' batch responders subscribe to: `<prefix>.admin.batch.*`. */
  readonly batchWildcard: string;
  /** Core-NATS notice of a batch's completion (each generation): `<prefix>.batch.<id>`. */
  batchEvents(id: string): string;
  /** Operator request/reply on triggers, any engine: `<prefix>.admin.triggers.<verb>`. */
  triggerAdmin(verb: string): string;
  /**
   * Operator request/reply answered by the engine holding trigger `name` (replay, skip,
   * rewind): `<prefix>.admin.triggers.held.<verb>.<name>`.
   */
  triggerHeld(verb: string, name: string): string;
  /** Public request/reply: search the visibility index, `<prefix>.search`. */
  readonly search: string;
  /** Public request/reply: counts by type, status and state, `<prefix>.search.counts`. */
  readonly searchCounts: string;
  /** Public request/reply: search activity-tree nodes, `<prefix>.search.nodes`. */
  readonly searchNodes: string;
}

/** Build the subject table for `prefix`. */
/** Priority levels of activity tasks: 1 is served first; unprioritized work is level 3. */
export const PRIORITY_LEVELS = [1, 2, 3, 4, 5] as const;
export const DEFAULT_PRIORITY = 3;

/** The subject token of a priority level before the task key: none for level 3. */
function lvl(level: number): string {
  return level === DEFAULT_PRIORITY ? '' : `p${level}.`;
}

export function createSubjects(prefix: string = DEFAULT_PREFIX): Subjects {
  if (!PREFIX.test(prefix)) {
    throw new TypeError(
      `subject prefix must be 1-32 of A-Z a-z 0-9 _ -, got ${JSON.stringify(prefix)}`,
    );
  }
  const p = prefix;
  return Object.freeze({
    prefix: p,
    start: (t: string, i: string) => `${p}.start.${t}.${i}`,
    signal: (t: string, i: string) => `${p}.signal.${t}.${i}`,
    query: (t: string, i: string) => `${p}.query.${t}.${i}`,
    cancel: (t: string, i: string) => `${p}.cancel.${t}.${i}`,
    events: (t: string, i: string) => `${p}.events.${t}.${i}`,
    alerts: (q: string, t: string, i: string) => `${p}.alerts.${q}.${t}.${i}`,
    inbox: (k: InboxKind, t: string, i: string) => `${p}.inbox.${k}.${t}.${i}`,
    shardInbox: (s: number, k: InboxKind, t: string, i: string) => `${p}.in.${s}.${k}.${t}.${i}`,
    shardFilter: (s: number) => `${p}.in.${s}.>`,
    workflowFilter: (s: number, t: string, i: string) => `${p}.in.${s}.*.${t}.${i}`,
    task: (q: string, k: string, l = 3) => `${p}.task.${q}.${lvl(l)}${k}`,
    taskRetry: (q: string, k: string, a: number, l = 3) => `${p}.task.${q}.${lvl(l)}${k}.${a}`,
    taskRetries: (q: string, k: string, l = 3) => `${p}.task.${q}.${lvl(l)}${k}.*`,
    taskFilter: (q: string, l = 3) => `${p}.task.${q}.${lvl(l)}*`,
    taskStaging: (q: string, l: number, k: string) => `${p}.task.${q}.fair.${l}.${k}`,
    taskStagingFilter: (q: string) => `${p}.task.${q}.fair.>`,
    taskControl: (q: string) => `${p}.taskctl.${q}`,
    tasksWildcard: `${p}.task.>`,
    timer: (t: string, i: string, k: string) => `${p}.timer.${t}.${i}.${k}`,
    timersWildcard: `${p}.timer.>`,
    publicWildcards: Object.freeze({
      start: `${p}.start.*.*`,
      signal: `${p}.signal.*.*`,
      cancel: `${p}.cancel.*.*`,
      query: `${p}.query.*.*`,
    }),
    eventsWildcard: `${p}.events.>`,
    alertsWildcard: `${p}.alerts.>`,
    journal: (t: string, i: string) => `${p}.journal.${t}.${i}`,
    journalWildcard: `${p}.journal.>`,
    history: (t: string, i: string) => `${p}.history.${t}.${i}`,
    historyWildcard: `${p}.history.*.*`,
    admin: (v: string, t: string, i: string) => `${p}.admin.${v}.${t}.${i}`,
    adminWildcard: `${p}.admin.*.*.*`,
    bulk: `${p}.admin.bulk`,
    bulkStatus: `${p}.admin.bulk.status`,
    bulkCancel: `${p}.admin.bulk.cancel`,
    bulkProgress: (j: string) => `${p}.admin.bulk.${j}`,
    batch: (v: string) => `${p}.admin.batch.${v}`,
    batchWildcard: `${p}.admin.batch.*`,
    batchEvents: (id: string) => `${p}.batch.${id}`,
    triggerAdmin: (v: string) => `${p}.admin.triggers.${v}`,
    triggerHeld: (v: string, n: string) => `${p}.admin.triggers.held.${v}.${n}`,
    search: `${p}.search`,
    searchCounts: `${p}.search.counts`,
    searchNodes: `${p}.search.nodes`,
  });
}

/**
 * The server-side subject mapping that partitions the inbox into shards by a hash of type and id
 * (`partition()` over tokens 4 and 5). The key may be a literal prefix or `*` (any prefix).
 * `nats.conf` must contain exactly this mapping for the engine's shard count.
 */
export function shardMapping(shards: number, prefix = '*'): Record<string, string> {
  if (!Number.isInteger(shards) || shards < 1 || shards > 1024) {
    throw new RangeError(`shards must be an integer in 1..1024, got ${shards}`);
  }
  // With a literal prefix, the kind, type and id are wildcards 1-3 (with `*`, 2-4).
  const lead = prefix === '*' ? '{{wildcard(1)}}' : prefix;
  const k = prefix === '*' ? 2 : 1;
  return {
    [`${prefix}.inbox.*.*.*`]: `${lead}.in.{{partition(${shards},${k + 1},${k + 2})}}.{{wildcard(${k})}}.{{wildcard(${k + 1})}}.{{wildcard(${k + 2})}}`,
  };
}

/**
 * The shard the server's mapping puts workflow `type`/`id` on: `partition(shards, 3, 4)` is the
 * 32-bit FNV-1a hash of the two tokens concatenated, modulo the shard count (nats-server's
 * subject transform; checked against a real server in `test/integration/shard-check.test.ts`).
 * Engines also use it at start to verify that the server's mapping and their shard count agree.
 */
export function shardOf(type: string, id: string, shards: number): number {
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(type + id)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h % shards;
}

/** Default reply-subject prefixes an engine answers on (`Jf-Reply-To`): NATS request inboxes. */
export const DEFAULT_REPLY_PREFIXES: readonly string[] = Object.freeze(['_INBOX.']);

/** True when `subject` may be used as a reply subject: it starts with one of `prefixes`. */
export function isReplySubject(
  subject: string,
  prefixes: readonly string[] = DEFAULT_REPLY_PREFIXES,
): boolean {
  return prefixes.some((p) => subject.startsWith(p)) && !/[\s*>]/.test(subject);
}

/** Parse `<prefix>.<verb>.<type>.<id>` (public) — returns undefined for anything else. */
export function parsePublic(
  subject: string,
): { prefix: string; verb: string; type: string; id: string } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 4) return undefined;
  const [prefix, verb, type, id] = parts as [string, string, string, string];
  return { prefix, verb, type, id };
}

/** Parse `<prefix>.admin.<verb>.<type>.<id>` — returns undefined for anything else. */
export function parseAdmin(
  subject: string,
): { prefix: string; verb: string; type: string; id: string } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 5 || parts[1] !== 'admin') return undefined;
  const [prefix, , verb, type, id] = parts as [string, string, string, string, string];
  return { prefix, verb, type, id };
}

/** Parse `<prefix>.in.<shard>.<kind>.<type>.<id>` (internal inbox). */
export function parseShardInbox(
  subject: string,
): { shard: number; kind: InboxKind; type: string; id: string } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 6 || parts[1] !== 'in') return undefined;
  const shard = Number(parts[2]);
  const kind = parts[3] as InboxKind;
  if (!Number.isInteger(shard)) return undefined;
  return { shard, kind, type: parts[4]!, id: parts[5]! };
}
