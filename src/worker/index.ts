/**
 * jetflow worker: runs activities. Pulls tasks from one durable consumer per queue, runs the
 * matching function, publishes the result into the workflow's inbox, then acks.
 *
 * Failure semantics (per task):
 * - An activity runs **at least once**; design it idempotent (the task id is stable across
 *   attempts: use it as an idempotency key towards external systems).
 * - A retryable failure with attempts left is acked and its next attempt is stored as a NATS
 *   scheduled message due after the policy's backoff, so a waiting retry holds no `maxInFlight`
 *   slot. attempt = the task message's `Jf-Attempt` header (absent = 1) + delivery count - 1, so
 *   retries and redeliveries after a dead worker both count. Retries exhausted, a
 *   `TerminalError`, or an error whose `name` is in `nonRetryableErrorTypes`: the workflow
 *   receives `xstate.error.actor.<id>` with the error data.
 * - A worker that dies mid-attempt stops extending the task's AckWait; the task is redelivered to
 *   another worker after the queue's `ackWaitMs` (and that counts as an attempt).
 * - A result (success or final error) is published with JetStream (msg id `result.<taskId>`)
 *   *before* the ack. A publish that fails is retried with backoff, with the same msg id and the
 *   lease kept, until it is acknowledged: it is never an activity failure, never an attempt, never
 *   a nak. Only a forced shutdown gives up; the task is then redelivered after AckWait and runs
 *   again (the engine applies one result).
 * - Cancellation (the workflow left the state): a running attempt's `signal` aborts and its result
 *   is dropped; a queued task and its pending retry were already removed by the engine. Cancels
 *   are received until the last attempt ended, also during `close()`.
 * - Forced shutdown (grace expired) releases a running task without using up its attempt.
 * - An attempt number runs at most once: before running attempt N of a task, the worker takes it
 *   in the attempt ledger (KV bucket `<prefix>_attempts`, `kv.create` of
 *   `<taskKey>.<scheduledAt>.<N>`). A delivery whose attempt another delivery already took (a
 *   task queued twice, a retry stored twice) is terminated without running (`stats.duplicates`);
 *   the same message delivered again under a delivery count already used is not run either, but
 *   kept (`nak` after AckWait, so it comes back as the next attempt unless it is acked first).
 *   A ledger that cannot be written is retried with backoff while the lease is kept: the attempt
 *   neither runs without its entry nor fails because of the ledger. A forced release gives the
 *   entry back (delete at its revision) before it hands the task back with the same number.
 */
import { setMaxListeners } from 'node:events';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { headers, nuid } from '@nats-io/transport-node';
import {
  jetstream,
  jetstreamManager,
  type JsMsg,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { LRUCache } from 'lru-cache';
import { backoffDelayMs } from '../engine/retry.js';
import type { AdmissionOutcome, AdmissionStage, Logger } from '../engine/ports.js';
import { MSGPACK, pack } from '../contracts/codec.js';
import { decodeTask, decodeTaskControl } from '../contracts/schemas.js';
import { DEFAULT_PREFIX, DEFAULT_PRIORITY } from '../contracts/subjects.js';
import { levelOrder, nextProbeAt, type LevelProbe } from '../engine/priority.js';
import {
  Header,
  WIRE_VERSION,
  type JournalEntry,
  type ProgressMessage,
  type ResultMessage,
  type TaskMessage,
} from '../contracts/wire.js';
import {
  ErrorCode,
  JetflowError,
  RetryableError,
  TerminalError,
  toErrorData,
  type ErrorData,
} from '../errors.js';
import { runHttpActivity } from './http.js';
import { invalidTask } from './validate.js';
import {
  contextOf,
  inSpan,
  injectTrace,
  SpanKind,
  tracingActive,
  type TraceCarrier,
} from '../tracing/index.js';
import { topologyNames, type TopologyNames } from '../nats/topology.js';
import { attemptKey, openAttemptLedger, type AttemptLedger } from '../nats/attempts.js';
import { openRateLimiter, type RateLimiter as GlobalRateLimiter } from '../nats/rates.js';
import { openSlots, slotRecordKey, type Slots } from '../nats/slots.js';
import { liveHolders, liveWaiters, waiterPosition, type SlotWait } from '../engine/slots.js';

/** A rate-limit slot less than this far ahead is waited for in place, not postponed. */
const RATE_WAIT_IN_PLACE_MS = 1_000;
/**
 * A task whose concurrency key is full waits this long in place before it is postponed, unless
 * its turn is near (see {@link slotTurnNear}): then it waits in place until it gets its slot.
 */
const SLOT_WAIT_IN_PLACE_MS = 1_000;
/** A task postponed for its concurrency key comes back after this (plus up to half of it). */
const SLOT_POSTPONE_MS = 1_000;
/**
 * A waiter's lease in a key's queue, renewed each time its task asks again (in place, at least
 * every {@link SLOT_WAIT_IN_PLACE_MS}; postponed, when it comes back after at most 1.5 ×
 * {@link SLOT_POSTPONE_MS}). A waiter whose task vanished holds the queue up this long at most.
 */
const SLOT_WAITER_LEASE_MS = 5_000;
/**
 * A task whose turn is near waits in place at most this long: a long-running holder would
 * otherwise keep it (a worker slot and a `maxInFlight` place) for the holder's whole run. Then it
 * is postponed for {@link SLOT_NEAR_POSTPONE_MS}, its waiter lease stretched to cover that, and
 * its worker brings it back as soon as a slot is free for it.
 */
const SLOT_NEAR_WAIT_MAX_MS = 5_000;
/**
 * How long a task postponed while its turn was near stays away unless its worker brings it back
 * (a slot freed): the bound on a slot left idle when that worker died meanwhile.
 */
const SLOT_NEAR_POSTPONE_MS = 30_000;
/** A task waiting in place with its turn near asks again at least this often. */
const SLOT_TURN_POLL_MS = 100;
/** A worker reads the queue of a key it postponed tasks of this often, to bring them back. */
const SLOT_WAKE_POLL_MS = 100;

/**
 * Whether a waiter at `position` (0: next) of a key with `limit` slots is near its turn: among the
 * next two rounds of holders. It waits in place (a postponed one is brought back) so that a freed
 * slot is taken at once rather than after a postponement.
 */
function slotTurnNear(position: number, limit: number): boolean {
  return position < 2 * limit;
}
import {
  DEFAULT_QUEUE_SETTINGS,
  ensureQueueConsumer,
  firePostponedNow,
  fireRetryNow,
  moveStaged,
  oldestWaiting,
  pullLevel,
  stagedKeys,
  postponeForSlot,
  postponeTask,
  releaseTask,
  scheduleRetry,
  settingsOf,
  taskAttempt,
  type QueueSettings,
  type QueueSettingsInput,
} from '../nats/tasks.js';

const DECISIONS = Symbol.for('jetflow.decisions');

/**
 * Return this from a tree node's activity to complete it with children: `output` is the node's
 * output, `decisions` the child nodes (ACTIVITY-TREES §2.9.6), applied with the completion.
 */
export function withDecisions(output: unknown, decisions: unknown[]): unknown {
  return { [DECISIONS]: true, output, decisions };
}

/** `{output}`, or `{output, decisions}` for a {@link withDecisions} value. */
function splitDecisions(v: unknown): { output: unknown; decisions?: unknown } {
  if (v !== null && typeof v === 'object' && (v as Record<symbol, unknown>)[DECISIONS] === true) {
    const o = v as { output: unknown; decisions: unknown };
    return { output: o.output, decisions: o.decisions };
  }
  return { output: v };
}

/** What an activity function gets besides its input. */
export interface ActivityContext {
  /** 1 for the first attempt. */
  attempt: number;
  maxAttempts: number;
  workflowType: string;
  workflowId: string;
  activity: string;
  /** Stable across attempts: use it as an idempotency key. */
  taskId: string;
  /** Fires on cancellation, start-to-close or heartbeat timeout, and forced shutdown. */
  signal: AbortSignal;
  /** Report progress: extends the task's lease (JetStream `working()`). */
  heartbeat(): void;
  /**
   * When this delivery's task message entered its queue (epoch ms, the server's clock): the
   * engine's publish, or the retry or postponement that put it back. Start minus this is the
   * time the attempt waited on the queue (behind other tasks, higher priority levels, workers).
   */
  enqueuedAt: number;
  /**
   * When the engine issued the task (epoch ms, the engine's clock): for a task with a fairness
   * key, when it was staged. Start minus this is its whole wait, retries included.
   */
  scheduledAt: number;
  /** For a tree node: its identity (`id`, `parentId`, `rootId`, `name`, `mode`, `run`, …). */
  node?: Record<string, unknown>;
  /**
   * With a `rateLimit`: the slot (epoch ms) this attempt was granted. It starts at or after it;
   * no window of the limit's period holds more than `limit` slots of one key.
   */
  rateSlot?: number;
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type ActivityFn = (input: any, ctx: ActivityContext) => unknown;

export interface WorkerOptions {
  connection: NatsConnection;
  /** Subject prefix of the engines (default `wf`). */
  prefix?: string;
  /** Activity implementations by name. */
  activities: Record<string, ActivityFn>;
  /**
   * Run HTTP activities (declared with `http: { url }`) that have no function here: one HTTP
   * request per attempt (see `src/worker/http.ts` for the status-code rules). Default false.
   */
  http?: boolean;
  /** Queues to pull from (default: one per activity name, plus every queue in `queueSettings`). */
  queues?: string[];
  /** Max tasks this worker runs at once, per queue (default 10). */
  concurrency?: number;
  /**
   * Server-enforced settings of each queue's consumer (global in-flight limit, AckWait). They
   * apply when this worker creates the consumer; an existing consumer keeps its settings (a
   * disagreeing value is logged as a warning) unless the queue's entry has `force: true`. The
   * worker then uses the consumer's actual AckWait for lease renewal.
   */
  queueSettings?: Record<string, QueueSettingsInput>;
  /** Max tasks started per second by this worker, per queue. */
  rateLimitPerSecond?: Record<string, number>;
  /**
   * Serve priority levels (default true): each fill takes from the highest level with tasks
   * (levels 1 to 5, aged by the queue's `maxWaitMs`). `false`: this worker pulls level 3 only
   * (unprioritized work), as before levels existed, saving the scan of the other levels on each
   * fill; tasks of other levels wait for a worker that serves them.
   */
  priorityLevels?: boolean;
  /**
   * Grace for in-flight tasks on `close()` before they are aborted and released (default 10 s).
   * Result publishes still being retried at that point are given up.
   */
  shutdownGraceMs?: number;
  logger?: Logger;
  /** Attempt counts and durations (e.g. `createWorkerMetrics` of `jetflow/internal`). */
  metrics?: WorkerMetrics;
  /**
   * Trace attempts (a span per attempt, child of the step that published the task; its context
   * goes back with the result). Default: on when a tracer provider is registered globally.
   */
  tracing?: boolean;
}

/**
 * How an attempt ended, as counted by {@link WorkerMetrics}: `ok`; `timeout` (start-to-close,
 * heartbeat or schedule-to-close timeout, retried or not); `retry` (failed otherwise, another
 * attempt follows); `error` (failed for good); `canceled` (its workflow canceled it). An attempt
 * released on a forced shutdown is not counted (it runs again as the same attempt).
 */
export type AttemptOutcome = 'ok' | 'retry' | 'error' | 'timeout' | 'canceled';

/** What a worker reports to a metrics backend (`src/metrics/` implements it with prom-client). */
export interface WorkerMetrics {
  attempt(activity: string, outcome: AttemptOutcome, seconds: number): void;
  /** A task held (waiting in place) or deferred (postponed) by its rate limit or concurrency key. */
  admission?(stage: AdmissionStage, outcome: AdmissionOutcome): void;
}

export interface WorkerStats {
  started: number;
  succeeded: number;
  retried: number;
  failed: number;
  canceled: number;
  /** Deliveries not run because another delivery had taken the same attempt (ledger). */
  duplicates: number;
  /** Tasks postponed to a later slot by their activity's rate limit (no attempt used). */
  postponed: number;
  /** Tasks postponed because their activity's concurrency key had no free slot (no attempt used). */
  slotWaits: number;
}

const silent: Logger = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  child: () => silent,
};

class AbortReason extends JetflowError {}
/** The abort reason of a forced shutdown: the attempt is released, not failed. */
class ShutdownReason extends AbortReason {}

/**
 * A retry's schedule fires this long after its due time, so that while the worker that stored it
 * lives, its own timer publishes the retry on time (the server's schedule tick is coarse) and
 * cancels the schedule first.
 */
const RETRY_SCHEDULE_SLACK_MS = 1_000;

/** How often a worker re-reads its queues' consumer settings (AckWait for lease renewal). */
const SETTINGS_REFRESH_MS = 5_000;
/**
 * An idle worker waits for tasks on one level's consumer (the level it served last): up to this
 * long, or this short while tasks of levels other than 3 came within the last minute (the other
 * levels are polled between waits, so a task there waits at most this long on an idle worker).
 */
const IDLE_WAIT_MS = 1_000;
const IDLE_WAIT_SHORT_MS = 100;
const IDLE_OTHER_LEVELS_MS = 60_000;
/** The fairness mover looks for staged tasks this often while it moves some, else this. */
const FAIR_BUSY_MS = 5;
const FAIR_IDLE_MS = 100;
/**
 * Undelivered tasks the fairness mover keeps on a level's consumer: two, so that a fill finds a
 * task while the next is moved; a new key's first task waits behind at most these.
 */
const FAIR_BUFFER = 2;

/** See `Worker.fairState`. */
interface FairState {
  /** Level → key token → staged tasks left (as last listed, counted down by moves). */
  staged: Map<number, Map<string, number>>;
  /** Level → the key served last. */
  cursors: Map<number, string>;
  /** Level → tasks left in the turn of the key served last (0: the next key's turn). */
  turns: Map<number, number>;
  /** The moves in progress (the mover's and fills'), one after another. */
  moving: Promise<unknown>;
}

/**
 * Tasks one worker postponed for one concurrency key, watched so that each is brought back as
 * soon as its turn is near (its schedule, the durable copy, brings it back otherwise).
 */
interface ParkedKey {
  activity: string;
  spec: { key: string; limit: number };
  tasks: Map<string, ParkedTask>;
  timer?: NodeJS.Timeout;
}

interface ParkedTask {
  task: TaskMessage;
  body: Uint8Array;
  attempt: number;
  fireAt: number;
  since: number;
  seq: number;
  trace: TraceCarrier | undefined;
  /** It waited in place its longest (its turn was near): back as soon as a slot is free for it. */
  near: boolean;
}

/** A concurrency slot this worker holds for an attempt. */
interface SlotHold {
  release(): Promise<void>;
}

/** How one attempt ended. */
type Outcome =
  | { kind: 'ok'; output: unknown }
  | { kind: 'fail'; error: ErrorData }
  | { kind: 'retry'; delayMs: number; error: ErrorData }
  | { kind: 'canceled' }
  | { kind: 'release' };

/** How taking an attempt in the ledger ended. */
type Take =
  | { kind: 'run'; revision: number }
  | { kind: 'duplicate' }
  | { kind: 'superseded' }
  | { kind: 'repeated' }
  | { kind: 'canceled' }
  | { kind: 'forced' };

/** Every task waiting (for a ledger write, a rate slot, a concurrency slot) listens on it. */
function withoutListenerCap(ac: AbortController): AbortController {
  setMaxListeners(0, ac.signal);
  return ac;
}

/** Resolves after `ms`, or at once when `signal` aborts. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((done) => {
    if (signal.aborted) return done();
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      done();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      done();
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** A simple token bucket (per worker, per queue). */
class RateLimiter {
  private tokens: number;
  private last = Date.now();
  constructor(private readonly perSecond: number) {
    this.tokens = perSecond;
  }
  async take(stop: AbortSignal): Promise<void> {
    for (;;) {
      const now = Date.now();
      this.tokens = Math.min(
        this.perSecond,
        this.tokens + ((now - this.last) / 1000) * this.perSecond,
      );
      this.last = now;
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return;
      }
      if (stop.aborted) return;
      await new Promise((r) =>
        setTimeout(r, Math.ceil(((1 - this.tokens) / this.perSecond) * 1000)),
      );
    }
  }
}

export class Worker implements AsyncDisposable {
  readonly stats: WorkerStats = {
    started: 0,
    succeeded: 0,
    retried: 0,
    failed: 0,
    canceled: 0,
    duplicates: 0,
    postponed: 0,
    slotWaits: 0,
  };
  /** The rate limits' bucket, opened at the first rate-limited task. */
  private rates: Promise<GlobalRateLimiter> | undefined;
  private slots: Promise<Slots> | undefined;
  /** This worker instance in the attempt ledger's entries. */
  private readonly id = nuid.next();
  /** Aborted by `close()`: stop fetching. */
  private readonly stop = new AbortController();
  /** Aborted when the shutdown grace has passed: abort attempts, give up result publishes. */
  private readonly forced = withoutListenerCap(new AbortController());
  private readonly running = new Map<string, AbortController>();
  private readonly canceled = new LRUCache<string, true>({ max: 10_000 });
  private readonly inflight = new Set<Promise<void>>();
  /** Local timers that publish scheduled retries on time (the schedules are the durable copy). */
  private readonly retryTimers = new Set<NodeJS.Timeout>();
  /** Tasks waiting in place for a concurrency key, by slot record key: woken by a local release. */
  private readonly slotWakers = new Map<string, Set<() => void>>();
  /** Tasks this worker postponed for a concurrency key, by slot record key (see `watchParked`). */
  private readonly parked = new Map<string, ParkedKey>();
  private readonly controls: Subscription[] = [];
  /** Fairness keys per queue: the staged keys last listed, round-robin cursors, key weights. */
  private readonly fair = new Map<string, FairState>();
  private loops: Promise<void>[] = [];
  private closing: Promise<void> | undefined;
  private readonly logger: Logger;
  private readonly tracing: boolean;

  private constructor(
    private readonly o: WorkerOptions,
    private readonly js: JetStreamClient,
    private readonly names: TopologyNames,
    private readonly queues: string[],
    private readonly settings: Map<string, QueueSettings>,
    /** False on a tasks stream without `allow_msg_schedules` (older topology): retries nak. */
    private readonly scheduledRetries: boolean,
    private readonly ledger: AttemptLedger,
    private readonly jsm: JetStreamManager,
  ) {
    this.logger = o.logger ?? silent;
    this.tracing = o.tracing ?? tracingActive();
  }

  /**
   * Ensure the queues' consumers exist (see {@link WorkerOptions.queueSettings} for whose
   * settings apply), read their actual settings, and start pulling.
   *
   * @throws when the tasks stream or the attempt ledger bucket is missing (no current engine
   * created the topology yet) or a consumer can be neither read nor created.
   */
  static async create(o: WorkerOptions): Promise<Worker> {
    const names = topologyNames(o.prefix ?? DEFAULT_PREFIX);
    const logger = o.logger ?? silent;
    const queues = o.queues ?? [
      ...new Set([...Object.keys(o.activities), ...Object.keys(o.queueSettings ?? {})]),
    ];
    const jsm = await jetstreamManager(o.connection);
    const settings = new Map<string, QueueSettings>();
    for (const q of queues)
      settings.set(q, await ensureQueueConsumer(jsm, names, q, o.queueSettings?.[q], logger));
    const stream = await jsm.streams.info(names.tasksStream);
    const scheduledRetries = stream.config.allow_msg_schedules === true;
    if (!scheduledRetries)
      logger.warn(
        { stream: names.tasksStream },
        'tasks stream without allow_msg_schedules (start a current engine to update it): retries wait by nak and hold a maxInFlight slot',
      );
    const ledger = await openAttemptLedger(o.connection, names);
    const w = new Worker(
      o,
      jetstream(o.connection),
      names,
      queues,
      settings,
      scheduledRetries,
      ledger,
      jsm,
    );
    w.start();
    return w;
  }

  private start(): void {
    for (const q of this.queues) {
      // Kept until the last attempt has ended (also through close()'s grace period).
      this.controls.push(
        this.o.connection.subscribe(this.names.subjects.taskControl(q), {
          callback: (_err, m) => {
            try {
              const cancel = decodeTaskControl(m.data);
              if (cancel === undefined) return;
              this.canceled.set(cancel, true);
              this.running.get(cancel)?.abort(
                new AbortReason('activity canceled by its workflow', {
                  code: ErrorCode.Internal,
                }),
              );
            } catch {
              /* not a control message */
            }
          },
        }),
      );
      this.loops.push(
        this.pull(q).catch((err: unknown) =>
          this.logger.error({ err, queue: q }, 'queue loop ended unexpectedly'),
        ),
      );
      if (this.o.priorityLevels !== false)
        this.loops.push(
          this.moveFair(q).catch((err: unknown) =>
            this.logger.error({ err, queue: q }, 'fairness loop ended unexpectedly'),
          ),
        );
    }
  }

  /**
   * Fetch and run tasks of one queue until the worker stops. Nothing ends this loop but `close()`:
   * a failed fetch, or a fetch the server ends with an error (a 409 "server shutdown" when the
   * server restarts gracefully, missed heartbeats while it is away), is logged and retried.
   */
  private async pull(queue: string): Promise<void> {
    if (this.o.priorityLevels === false) return this.pullDefaultLevel(queue);
    const limit = this.o.concurrency ?? 10;
    const rate = this.o.rateLimitPerSecond?.[queue];
    const limiter = rate ? new RateLimiter(rate) : undefined;
    const mine = new Set<Promise<void>>();
    const nc = this.o.connection;
    const aging = new Map<number, number>(); // level -> when to probe its oldest task again
    // The level an idle worker waits on, and when a task of a level other than 3 last came.
    let lastLevel = DEFAULT_PRIORITY;
    let otherLevelAt = 0;
    // The level the last fill took from in strict order: only lower levels can wait behind it.
    let servedLevel = 5;
    let refreshedAt = Date.now();
    while (!this.stop.signal.aborted) {
      if (Date.now() - refreshedAt >= SETTINGS_REFRESH_MS) {
        // The consumer is the source of truth: follow an operator's forced change.
        refreshedAt = Date.now();
        await this.jsm.consumers
          .info(this.names.tasksStream, this.names.queueConsumer(queue))
          .then((info) => this.settings.set(queue, settingsOf(info)))
          .catch((err: unknown) => this.logger.debug({ err, queue }, 'queue settings not re-read'));
      }
      if (mine.size >= limit) {
        await Promise.race(mine);
        continue;
      }
      if (limiter) await limiter.take(this.stop.signal);
      if (this.stop.signal.aborted) break;
      const free = limiter ? 1 : limit - mine.size;
      try {
        // Aged levels first, one task each; then the rest of the free slots strictly by level.
        const { order, aged } = await this.levelOrder(queue, aging, servedLevel);
        let got: JsMsg[] = [];
        let strict: number | undefined; // the level the strict scan took from
        let scanned = false; // the strict scan ran (some slots were left after aged levels)
        for (const l of order) {
          const want = aged.has(l) ? 1 : free - got.length;
          if (want <= 0) break;
          if (!aged.has(l)) {
            scanned = true;
            // Staged tasks of fairness keys at this level: move this fill's share first, so
            // that the level is not taken for empty while the mover catches up, and from a
            // fresh list of keys, so that a key that just came gets its turn in this fill.
            if (this.fair.get(queue)?.staged.get(l)?.size) {
              try {
                this.fairState(queue).staged = await stagedKeys(this.jsm, this.names, queue);
                // A few at a time (fills follow each other while slots are free): a key that
                // comes meanwhile gets its turn in the next fill, not after this fill's moves.
                await this.moveTurns(queue, l, Math.min(want, FAIR_BUFFER));
              } catch (err) {
                this.logger.debug({ err, queue, level: l }, 'fairness: fill moved nothing');
              }
            }
          }
          const some = await pullLevel(nc, this.names, queue, l, want, 0, this.stop.signal);
          if (some.length === 0) continue;
          got.push(...some);
          if (l !== DEFAULT_PRIORITY) otherLevelAt = Date.now();
          lastLevel = l;
          if (aged.has(l)) {
            for (let i = 0; i < some.length; i++)
              this.o.metrics?.admission?.('priority', 'admitted');
            continue;
          }
          strict = l;
          break;
        }
        if (strict !== undefined) servedLevel = strict;
        else if (scanned) servedLevel = 5; // every level it tried was empty
        if (got.length === 0 && !this.stop.signal.aborted) {
          // Nothing waits at any level: wait on the level served last, briefly while levels
          // other than 3 are in use (they are polled between waits), else up to a second.
          const recent = Date.now() - otherLevelAt < IDLE_OTHER_LEVELS_MS;
          // One task ends the wait, so that the next fill looks at every level again.
          got = await pullLevel(
            nc,
            this.names,
            queue,
            lastLevel,
            1,
            recent ? IDLE_WAIT_SHORT_MS : IDLE_WAIT_MS,
            this.stop.signal,
          );
          if (got.length > 0) servedLevel = lastLevel;
        }
        for (const m of got) {
          const p = this.handle(queue, m).catch((err: unknown) =>
            this.logger.error({ err, queue }, 'task handler failed'),
          );
          mine.add(p);
          this.inflight.add(p);
          void p.finally(() => {
            mine.delete(p);
            this.inflight.delete(p);
          });
        }
      } catch (err) {
        if (this.stop.signal.aborted) break;
        this.logger.warn({ err, queue }, 'fetch failed; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /**
   * Fairness keys: move staged tasks of `queue` onto their levels' subjects, round robin across
   * the keys of each level (a key's weight in tasks per turn), while the level consumer has fewer
   * than this worker's `concurrency` tasks undelivered: so a key's backlog waits in its staging
   * subject, not ahead of other keys in the queue. Every worker of the queue moves; a task two
   * workers move at once is stored once (msg id).
   */
  private async moveFair(queue: string): Promise<void> {
    const fair = this.fairState(queue);
    while (!this.stop.signal.aborted) {
      let moved = 0;
      try {
        const staged = await stagedKeys(this.jsm, this.names, queue);
        fair.staged = staged;
        for (const level of [...staged.keys()].sort((a, b) => a - b)) {
          const ci = await this.jsm.consumers.info(
            this.names.tasksStream,
            this.names.levelConsumer(queue, level),
          );
          moved += await this.moveTurns(queue, level, FAIR_BUFFER - ci.num_pending);
        }
      } catch (err) {
        if (this.stop.signal.aborted) break;
        this.logger.warn({ err, queue }, 'fairness: staged tasks not moved; retrying');
      }
      // Staged tasks move as the queue drains; nothing staged: look again a little later.
      await pause(moved > 0 ? FAIR_BUSY_MS : FAIR_IDLE_MS, this.stop.signal);
    }
  }

  /** The fairness mover's state of a queue, shared by its loop and the fills. */
  private fairState(queue: string): FairState {
    let f = this.fair.get(queue);
    if (!f) {
      f = { staged: new Map(), cursors: new Map(), turns: new Map(), moving: Promise.resolve() };
      this.fair.set(queue, f);
    }
    return f;
  }

  /**
   * Move up to `room` staged tasks of `level` onto its subject, round robin across its keys
   * (as last listed) from where the previous round stopped, a key's weight per turn. Returns
   * how many moved.
   */
  private moveTurns(queue: string, level: number, room: number): Promise<number> {
    // One at a time per queue: the mover and a fill moving at once would both start from the
    // same cursor and give one key two turns in a row.
    const fair = this.fairState(queue);
    const run = fair.moving.then(() => this.moveTurnsNow(queue, level, room));
    fair.moving = run.catch(() => undefined);
    return run;
  }

  private async moveTurnsNow(queue: string, level: number, room: number): Promise<number> {
    const fair = this.fairState(queue);
    const left = fair.staged.get(level);
    if (!left || room <= 0) return 0;
    const keys = [...left.keys()].sort();
    // The key served last and what is left of its turn (a turn is its weight in tasks, learned
    // from its first task moved), kept across rounds so that small rounds do not cut turns. The
    // next turn goes to the next key after it in key order: a key that just came is served as
    // soon as its place in the order comes, whatever keys came and went before.
    let last = fair.cursors.get(level);
    let turn = fair.turns.get(level) ?? 0;
    const has = (k: string) => (left.get(k) ?? 0) > 0;
    const pick = (): string | undefined => {
      if (last !== undefined && turn > 0 && has(last)) return last;
      return keys.find((k) => (last === undefined || k > last) && has(k)) ?? keys.find(has);
    };
    let moved = 0;
    while (room > 0 && !this.stop.signal.aborted) {
      const token = pick();
      if (token === undefined) break;
      const w = await moveStaged(this.js, this.jsm, this.names, queue, level, token);
      if (w === undefined) {
        left.set(token, 0);
        continue;
      }
      this.o.metrics?.admission?.('priority', 'admitted');
      left.set(token, (left.get(token) ?? 1) - 1);
      room--;
      moved++;
      turn = (token === last && turn > 0 ? turn : w) - 1;
      last = token;
    }
    if (last !== undefined) fair.cursors.set(level, last);
    fair.turns.set(level, turn);
    return moved;
  }

  /**
   * `priorityLevels: false`: only level 3 (the queue's own consumer), pulled as before priority
   * levels existed (nats.js fetch, batches of the free slots, no scan of other levels).
   */
  private async pullDefaultLevel(queue: string): Promise<void> {
    let consumer;
    for (;;) {
      try {
        consumer = await this.js.consumers.get(
          this.names.tasksStream,
          this.names.queueConsumer(queue),
        );
        break;
      } catch (err) {
        if (this.stop.signal.aborted) return;
        this.logger.warn({ err, queue }, 'queue consumer not reachable; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    const limit = this.o.concurrency ?? 10;
    const rate = this.o.rateLimitPerSecond?.[queue];
    const limiter = rate ? new RateLimiter(rate) : undefined;
    const mine = new Set<Promise<void>>();
    let refreshedAt = Date.now();
    while (!this.stop.signal.aborted) {
      if (Date.now() - refreshedAt >= SETTINGS_REFRESH_MS) {
        // The consumer is the source of truth: follow an operator's forced change.
        refreshedAt = Date.now();
        await consumer
          .info(false)
          .then((info) => this.settings.set(queue, settingsOf(info)))
          .catch((err: unknown) => this.logger.debug({ err, queue }, 'queue settings not re-read'));
      }
      if (mine.size >= limit) {
        await Promise.race(mine);
        continue;
      }
      if (limiter) await limiter.take(this.stop.signal);
      if (this.stop.signal.aborted) break;
      try {
        const batch = await consumer.fetch({
          max_messages: limiter ? 1 : limit - mine.size,
          expires: 1000,
        });
        // close() ends the pull at once rather than after `expires`: the messages already
        // received are still handled, and the server drops a pull request whose subscription
        // is gone, so it delivers nothing more to it.
        const end = () => batch.stop();
        this.stop.signal.addEventListener('abort', end, { once: true });
        if (this.stop.signal.aborted) end();
        try {
          for await (const m of batch) {
            const p = this.handle(queue, m).catch((err: unknown) =>
              this.logger.error({ err, queue }, 'task handler failed'),
            );
            mine.add(p);
            this.inflight.add(p);
            void p.finally(() => {
              mine.delete(p);
              this.inflight.delete(p);
            });
          }
        } finally {
          this.stop.signal.removeEventListener('abort', end);
        }
      } catch (err) {
        if (this.stop.signal.aborted) break;
        this.logger.warn({ err, queue }, 'fetch failed; retrying');
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /**
   * The order of priority levels for the next fill of `queue` (aging, `src/engine/priority.ts`):
   * each level below 1 whose probe is due has its oldest undelivered task read (a level is probed
   * again only when a task of it could have aged meanwhile, or at once while it is aged).
   */
  private async levelOrder(
    queue: string,
    aging: Map<number, number>,
    servedLevel: number,
  ): Promise<{ order: number[]; aged: Set<number> }> {
    const { maxWaitMs } = this.settings.get(queue) ?? DEFAULT_QUEUE_SETTINGS;
    const now = Date.now();
    const probes: LevelProbe[] = [];
    // A level at or above the one served last is served anyway: only those below can wait.
    for (const level of [2, 3, 4, 5]) {
      if (level <= servedLevel || (aging.get(level) ?? 0) > now) continue;
      const oldestAt = await oldestWaiting(this.jsm, this.names, queue, level).catch(
        (err: unknown) => {
          this.logger.debug({ err, queue, level }, 'priority level not probed');
          return undefined;
        },
      );
      const probe = { level, oldestAt };
      aging.set(level, nextProbeAt(probe, now, maxWaitMs));
      probes.push(probe);
    }
    return levelOrder(probes, now, maxWaitMs);
  }

  /** Publish an attempt notice (msg id `progress.<taskId>.<attempt>`); best effort. */
  private async notice(
    task: TaskMessage,
    attempt: number,
    outcome: Extract<Outcome, { kind: 'retry' }>,
    log: object,
  ): Promise<void> {
    const notice: ProgressMessage = {
      taskId: task.taskId,
      actorId: task.actorId,
      progress: 'retrying',
      attempt,
      retryAt: Date.now() + outcome.delayMs,
      error: { ...outcome.error, retryable: true, attempt },
      ...(task.token !== undefined ? { token: task.token } : {}),
    };
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    if (this.tracing) injectTrace(h);
    try {
      await this.js.publish(task.resultSubject, pack(notice), {
        msgID: `progress.${task.taskId}.${attempt}`,
        headers: h,
      });
    } catch (err) {
      this.logger.warn({ ...log, err }, 'attempt notice not published (the retry goes ahead)');
    }
  }

  /** One publish of a result (JetStream, msg id `result.<taskId>`). */
  private async publishResult(task: TaskMessage, result: ResultMessage): Promise<void> {
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    if (this.tracing) injectTrace(h);
    const body = task.token !== undefined ? { ...result, token: task.token } : result;
    await this.js.publish(task.resultSubject, pack(body), {
      msgID: `result.${task.taskId}`,
      headers: h,
    });
  }

  /**
   * Publish a result until JetStream acknowledges it: same msg id, backoff up to 5 s. Returns
   * `published`; `canceled` when the task was canceled meanwhile (the result would be ignored);
   * `abandoned` when the worker was force-stopped first.
   */
  private async deliverResult(
    task: TaskMessage,
    result: ResultMessage,
    log: object,
  ): Promise<'published' | 'canceled' | 'abandoned'> {
    const max = this.o.connection.info?.max_payload;
    if (result.ok && max !== undefined && pack(result).length + 1024 > max) {
      // Never publishable: report it as the activity's (non-retryable) failure instead.
      result = {
        taskId: result.taskId,
        actorId: result.actorId,
        ok: false,
        attempt: result.attempt,
        error: {
          type: 'PayloadTooLarge',
          code: ErrorCode.PayloadTooLarge,
          message: `output of activity ${task.activity} is larger than the server's max_payload (${max} bytes)`,
          retryable: false,
          attempt: result.attempt,
        },
      };
    }
    for (let i = 0; ; i++) {
      try {
        await this.publishResult(task, result);
        return 'published';
      } catch (err) {
        if (this.canceled.has(task.taskId)) return 'canceled';
        if (this.forced.signal.aborted) {
          this.logger.warn({ ...log, err }, 'result not published before forced shutdown');
          return 'abandoned';
        }
        const delayMs = Math.min(5_000, 100 * 2 ** Math.min(i, 6));
        this.logger.warn(
          { ...log, err, publishAttempt: i + 1, delayMs },
          'result publish failed; retrying the publish (the activity is not run again)',
        );
        await pause(delayMs, this.forced.signal);
      }
    }
  }

  private async handle(queue: string, m: JsMsg): Promise<void> {
    let task: TaskMessage;
    try {
      // Checked against the task schema: a bad field can never run, so it is terminated.
      task = decodeTask(m.data);
    } catch (err) {
      this.logger.error({ err, subject: m.subject }, 'malformed task message; terminated');
      m.term('malformed task');
      return;
    }
    const invalid = invalidTask(task, queue, this.names.subjects);
    if (invalid) {
      // Not a task an engine issued (issue 17): never run, never retried.
      this.logger.error({ subject: m.subject, reason: invalid }, 'invalid task; terminated');
      m.term('invalid task');
      return;
    }
    const attempt = taskAttempt(m);
    const log = {
      workflowType: task.workflowType,
      workflowId: task.workflowId,
      step: stepOfTask(task.taskId),
      taskId: task.taskId,
      activity: task.activity,
      attempt,
    };
    if (this.canceled.has(task.taskId)) {
      this.stats.canceled++;
      m.term('canceled');
      return;
    }
    const { ackWaitMs } = this.settings.get(queue) ?? DEFAULT_QUEUE_SETTINGS;
    // The lease: extended every AckWait/3 while this worker holds the task. While the attempt
    // runs with `heartbeatMs`, only as long as the activity's last heartbeat is recent.
    // Until the attempt runs (while its ledger entry is taken), the lease is renewed regardless.
    const beat = { last: Date.now(), attemptRunning: false };
    const hb = task.heartbeatMs;
    // Re-armed each time, so that an AckWait changed by an operator (read by the refresh) applies.
    let lease: NodeJS.Timeout | undefined;
    const renew = () => {
      const now = this.settings.get(queue)?.ackWaitMs ?? ackWaitMs;
      lease = setTimeout(
        () => {
          if (!beat.attemptRunning || !hb || Date.now() - beat.last <= hb) m.working();
          renew();
        },
        Math.max(100, Math.floor(now / 3)),
      );
    };
    renew();
    let slot: SlotHold | undefined;
    try {
      const took = await this.takeAttempt(task, m, attempt, log);
      switch (took.kind) {
        case 'duplicate':
          this.stats.duplicates++;
          m.term('attempt taken by another delivery');
          return;
        case 'superseded':
          // A later delivery of this very message holds it: settling this one would settle that.
          this.stats.duplicates++;
          return;
        case 'repeated':
          // The only copy of the task: never terminated. An earlier delivery of it that took this
          // attempt acks it meanwhile, or it comes back as the next attempt.
          this.stats.duplicates++;
          m.nak(ackWaitMs);
          return;
        case 'canceled':
          this.stats.canceled++;
          m.term('canceled');
          return;
        case 'forced':
          // Not run, possibly taken (a create whose reply was lost): the redelivery is the next
          // attempt, which no delivery can have taken.
          this.logger.warn(log, 'attempt not taken before forced shutdown; nak');
          m.nak(0);
          return;
      }
      // The rate limit's slot is reserved once the attempt is taken, so that the attempt starts
      // right at its slot (not a ledger round trip later).
      let rateSlot: number | undefined;
      if (task.rateLimit) {
        const gate = await this.rateGate(task, m, attempt, log, took.revision);
        if (gate === 'postponed') return;
        rateSlot = gate;
      }
      // Then the concurrency key: a slot held until the attempt is settled.
      if (task.concurrency) {
        const gate = await this.slotGate(queue, task, m, attempt, log, took.revision);
        if (gate === 'postponed') return;
        slot = gate;
      }
      const attemptAndSettle = async (): Promise<AttemptOutcome | undefined> => {
        beat.last = Date.now();
        beat.attemptRunning = true;
        const t0 = performance.now();
        // Forced to stop while taking it: hand it back unrun (the release gives the entry back).
        const outcome: Outcome = this.forced.signal.aborted
          ? { kind: 'release' }
          : await this.runAttempt(queue, task, m, attempt, ackWaitMs, beat, rateSlot);
        beat.attemptRunning = false;
        const counted = countedOutcome(outcome);
        if (counted && this.o.metrics)
          this.o.metrics.attempt(task.activity, counted, (performance.now() - t0) / 1000);
        await this.settle(task, m, attempt, outcome, log, took.revision);
        return counted;
      };
      if (!this.tracing) {
        await attemptAndSettle();
        return;
      }
      await inSpan(
        `attempt ${task.activity}`,
        SpanKind.CONSUMER,
        contextOf(traceOf(m)),
        {
          'messaging.system': 'nats',
          'jetflow.activity': task.activity,
          'jetflow.attempt': attempt,
          'jetflow.task.id': task.taskId,
          'jetflow.workflow.type': task.workflowType,
          'jetflow.workflow.id': task.workflowId,
        },
        async (span) => {
          const outcome = await attemptAndSettle();
          if (outcome) span.setAttribute('jetflow.attempt.outcome', outcome);
        },
      );
    } finally {
      clearTimeout(lease);
      await slot?.release();
    }
  }

  /**
   * The activity's concurrency key, once the attempt is taken: take a slot of `(activity, key)`
   * (a compare-and-set on its record in the slots bucket), or queue for one: the record's waiters
   * are served first come first. Not granted: wait in place (keeping the lease), asking again; a
   * task whose turn is near (`slotTurnNear`) waits until it is granted (unless the worker is
   * closing), any other for up to a second, then gives the attempt back, is postponed as a
   * scheduled message (brought back early once its turn is near, see `watchParked`) and this
   * delivery is acked. Resolves the slot held (renewed while the attempt runs, released by its
   * caller), or `postponed` when the task left this worker.
   */
  private async slotGate(
    queue: string,
    task: TaskMessage,
    m: JsMsg,
    attempt: number,
    log: Record<string, unknown>,
    revision: number,
  ): Promise<SlotHold | 'postponed'> {
    const spec = task.concurrency!;
    const id = `${task.taskId}#${attempt}`;
    const recordKey = slotRecordKey(task.activity, spec.key);
    // The lease is the queue's AckWait: a dead worker's slot frees when its task is redelivered.
    const leaseMs = () => (this.settings.get(queue) ?? DEFAULT_QUEUE_SETTINGS).ackWaitMs;
    const header = Number(m.headers?.get(Header.SlotWait) || NaN);
    const since = Number.isSafeInteger(header) ? header : Date.now();
    // A postponed task that lost its place (its waiter lease passed) queues again where it was.
    const wait: SlotWait = {
      leaseMs: SLOT_WAITER_LEASE_MS,
      ...(Number.isSafeInteger(header) ? { queuedAt: header } : {}),
    };
    let deadline = Date.now() + SLOT_WAIT_IN_PLACE_MS;
    const nearUntil = Date.now() + SLOT_NEAR_WAIT_MAX_MS;
    let near = false;
    for (let i = 0; ; i++) {
      let granted = false;
      let position = Infinity;
      try {
        const slots = await (this.slots ??= openSlots(this.o.connection, this.names));
        const t = await slots.take(task.activity, spec, id, this.id, leaseMs(), wait);
        granted = t.granted;
        position = t.position;
      } catch (err) {
        this.slots = undefined;
        this.logger.warn({ ...log, err }, 'concurrency slots not readable; retrying');
      }
      if (granted) return this.holdSlot(task, spec, id, leaseMs, log);
      if (this.forced.signal.aborted) return { release: () => Promise.resolve() };
      if (this.canceled.has(task.taskId)) {
        this.stats.canceled++;
        await this.leaveSlotQueue(task, spec, id, log);
        m.term('canceled');
        return 'postponed';
      }
      if (i === 0) {
        this.o.metrics?.admission?.('concurrency-key', 'held');
        // Journaled once per wait: not again when the task comes back postponed.
        if (!Number.isSafeInteger(header))
          this.journalAdmission(
            task,
            attempt,
            'concurrency-key',
            'held',
            spec.key,
            undefined,
            since,
            `attempt ${attempt} waits for a slot of concurrency key ${JSON.stringify(spec.key)} (limit ${spec.limit}, all held)`,
          );
      }
      near = slotTurnNear(position, spec.limit) && !this.stop.signal.aborted;
      const inPlace = near && Date.now() < nearUntil;
      if (inPlace || Date.now() < deadline) {
        const ms = inPlace
          ? Math.min(SLOT_TURN_POLL_MS, 25 * 2 ** Math.min(i, 2))
          : Math.min(250, 25 * 2 ** Math.min(i, 4));
        await this.slotPause(recordKey, ms);
        continue;
      }
      if (near) {
        // Its place is kept while it is away: the waiter lease covers the postponement.
        try {
          const slots = await (this.slots ??= openSlots(this.o.connection, this.names));
          const t = await slots.take(task.activity, spec, id, this.id, leaseMs(), {
            ...wait,
            leaseMs: SLOT_NEAR_POSTPONE_MS + SLOT_WAITER_LEASE_MS,
          });
          if (t.granted) return this.holdSlot(task, spec, id, leaseMs, log);
        } catch (err) {
          this.slots = undefined;
          this.logger.warn({ ...log, err }, 'concurrency slots not readable; retrying');
          continue;
        }
      }
      // Postponed: the attempt is given back first (the postponed copy takes it again). When
      // it cannot be, the postponed copy could not take it: go on waiting in place.
      try {
        await this.ledger.giveBack(attemptKey(task, attempt), revision);
      } catch (err) {
        this.logger.warn({ ...log, err }, 'attempt not given back; waiting for a slot in place');
        deadline = Date.now() + SLOT_WAIT_IN_PLACE_MS;
        continue;
      }
      const fireAt = near
        ? Date.now() + SLOT_NEAR_POSTPONE_MS
        : Date.now() + SLOT_POSTPONE_MS + Math.floor(Math.random() * SLOT_POSTPONE_MS);
      const body = m.data.slice();
      const trace = traceOf(m);
      let seq: number;
      try {
        seq = await postponeForSlot(this.js, this.names, task, body, attempt, fireAt, since, trace);
      } catch (err) {
        this.logger.warn({ ...log, err }, 'task waiting for a slot not postponed; nak');
        m.nak(SLOT_POSTPONE_MS);
        return 'postponed';
      }
      this.stats.slotWaits++;
      this.o.metrics?.admission?.('concurrency-key', 'deferred');
      if (!Number.isSafeInteger(header))
        this.journalAdmission(
          task,
          attempt,
          'concurrency-key',
          'deferred',
          spec.key,
          fireAt,
          since,
          `attempt ${attempt} postponed until ${new Date(fireAt).toISOString()}: concurrency key ${JSON.stringify(spec.key)} (limit ${spec.limit}) has no free slot; it asks again then`,
        );
      this.logger.debug(
        { ...log, key: spec.key, limit: spec.limit, position },
        'postponed: its concurrency key has no free slot',
      );
      m.ack();
      this.watchParked(recordKey, task.activity, spec, id, {
        task,
        body,
        attempt,
        fireAt,
        since,
        seq,
        trace,
        near,
      });
      return 'postponed';
    }
  }

  /** Take a task that ends without a slot out of its key's waiters (best effort: else it expires). */
  private async leaveSlotQueue(
    task: TaskMessage,
    spec: { key: string; limit: number },
    id: string,
    log: Record<string, unknown>,
  ): Promise<void> {
    try {
      const slots = await (this.slots ??= openSlots(this.o.connection, this.names));
      await slots.leave(task.activity, spec, id);
    } catch (err) {
      this.logger.debug({ ...log, err }, 'left the waiters of its concurrency key by expiry');
    }
  }

  /** Resolves after `ms`, when a slot of `recordKey` is released on this worker, or when forced. */
  private slotPause(recordKey: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (this.forced.signal.aborted) return resolve();
      let set = this.slotWakers.get(recordKey);
      if (!set) this.slotWakers.set(recordKey, (set = new Set()));
      const wakers = set;
      const done = () => {
        clearTimeout(timer);
        wakers.delete(done);
        if (wakers.size === 0 && this.slotWakers.get(recordKey) === wakers)
          this.slotWakers.delete(recordKey);
        this.forced.signal.removeEventListener('abort', done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      wakers.add(done);
      this.forced.signal.addEventListener('abort', done, { once: true });
    });
  }

  /** A slot of `recordKey` was released here: its waiters in place and parked ask at once. */
  private slotFreed(recordKey: string): void {
    for (const wake of [...(this.slotWakers.get(recordKey) ?? [])]) wake();
    const parked = this.parked.get(recordKey);
    if (parked?.timer) {
      clearTimeout(parked.timer);
      parked.timer = undefined;
      this.scheduleWake(recordKey, parked, 0);
    }
  }

  /**
   * Watch a task this worker postponed for its concurrency key: every {@link SLOT_WAKE_POLL_MS}
   * (one read of the key's record for all of them), a task whose turn is near is published again
   * now and its schedule canceled (`firePostponedNow`), so it is back in place before the slot
   * frees. A task whose schedule is due, that left the queue or was canceled is no longer
   * watched; a worker that closes stops watching (the schedules fire).
   */
  private watchParked(
    recordKey: string,
    activity: string,
    spec: { key: string; limit: number },
    id: string,
    p: ParkedTask,
  ): void {
    if (this.stop.signal.aborted) return;
    let key = this.parked.get(recordKey);
    if (!key) this.parked.set(recordKey, (key = { activity, spec, tasks: new Map() }));
    key.tasks.set(id, p);
    if (!key.timer) this.scheduleWake(recordKey, key, SLOT_WAKE_POLL_MS);
  }

  private scheduleWake(recordKey: string, key: ParkedKey, ms: number): void {
    key.timer = setTimeout(() => {
      void this.wakeParked(key).finally(() => {
        if (key.tasks.size > 0 && !this.stop.signal.aborted) {
          if (!key.timer) this.scheduleWake(recordKey, key, SLOT_WAKE_POLL_MS);
        } else if (this.parked.get(recordKey) === key) this.parked.delete(recordKey);
      });
      key.timer = undefined;
    }, ms);
  }

  private async wakeParked(key: ParkedKey): Promise<void> {
    let rec;
    try {
      const slots = await (this.slots ??= openSlots(this.o.connection, this.names));
      rec = await slots.read(key.activity, key.spec.key);
    } catch (err) {
      this.logger.debug({ err, key: key.spec.key }, 'concurrency key queue not read');
      return;
    }
    const now = Date.now();
    const waiting = rec ? liveWaiters(rec, now).length : 0;
    for (const [id, p] of key.tasks) {
      // Due soon (its schedule brings it back), canceled, or out of the queue: not watched.
      const position = rec && waiting > 0 ? waiterPosition(rec, id, now) : -1;
      if (p.fireAt - now < SLOT_WAKE_POLL_MS || this.canceled.has(p.task.taskId) || position < 0) {
        key.tasks.delete(id);
        continue;
      }
      // One that waited in place its longest comes back when a slot is free for it; any other
      // once its turn is near.
      const free = rec ? Math.max(0, key.spec.limit - liveHolders(rec, now).length) : 0;
      if (p.near ? position >= free : !slotTurnNear(position, key.spec.limit)) continue;
      key.tasks.delete(id);
      try {
        const fired = await firePostponedNow(
          this.js,
          this.names,
          p.task,
          p.body,
          p.attempt,
          p.fireAt,
          p.since,
          p.seq,
          p.trace,
        );
        this.logger.debug(
          { taskId: p.task.taskId, attempt: p.attempt, key: key.spec.key, position, fired },
          'postponed task brought back: its turn is near',
        );
      } catch (err) {
        this.logger.debug(
          { err, taskId: p.task.taskId, attempt: p.attempt },
          'postponed task not brought back early; its schedule fires it',
        );
      }
    }
  }

  /**
   * Journal that a stage held or deferred a task (entry kind `admission`, on the workflow's
   * journal subject). Best effort and not awaited: a journal that cannot be written (no history
   * stream, a permission) never holds the task.
   */
  private journalAdmission(
    task: TaskMessage,
    attempt: number,
    stage: 'rate-limit' | 'concurrency-key',
    outcome: 'held' | 'deferred',
    key: string,
    until: number | undefined,
    since: number,
    what: string,
  ): void {
    const entry: JournalEntry = {
      v: WIRE_VERSION,
      kind: 'admission',
      workflowType: task.workflowType,
      id: task.workflowId,
      version: 0,
      step: stepOfTask(task.taskId) ?? 0,
      at: Date.now(),
      engine: `worker ${this.id}`,
      stage,
      outcome,
      actorId: task.actorId,
      taskId: task.taskId,
      activity: task.activity,
      attempt,
      key,
      ...(until !== undefined ? { until } : {}),
      what: `activity ${task.activity} (${task.actorId}): ${what}`,
    };
    // Journal bodies are always msgpack: no Content-Type header.
    this.js
      .publish(this.names.subjects.journal(task.workflowType, task.workflowId), pack(entry), {
        msgID: `${task.taskId}.adm.${stage}.${outcome}.${attempt}.${since}`,
      })
      .catch((err: unknown) =>
        this.logger.debug({ err, taskId: task.taskId }, 'admission not journaled'),
      );
  }

  /** Renew a slot's lease every third of it until released; the release is retried briefly. */
  private holdSlot(
    task: TaskMessage,
    spec: { key: string; limit: number },
    id: string,
    leaseMs: () => number,
    log: Record<string, unknown>,
  ): SlotHold {
    const at = Date.now();
    let timer: NodeJS.Timeout | undefined;
    let renewing: Promise<void> | undefined;
    const renew = () => {
      timer = setTimeout(
        () => {
          renewing = (async () => {
            try {
              const slots = await (this.slots ??= openSlots(this.o.connection, this.names));
              const r = await slots.renew(task.activity, spec, id, this.id, leaseMs(), at);
              if (r.lost)
                this.logger.warn(
                  { ...log, key: spec.key },
                  'concurrency slot lease had ended (server not reached in time); taken again',
                );
            } catch (err) {
              this.logger.debug({ ...log, err }, 'concurrency slot lease not renewed');
            }
          })().finally(() => {
            renewing = undefined;
            if (timer !== undefined) renew();
          });
        },
        Math.max(100, Math.floor(leaseMs() / 3)),
      );
    };
    renew();
    return {
      release: async () => {
        clearTimeout(timer);
        timer = undefined;
        // A renewal under way would put the holder back after the release.
        await renewing;
        for (let i = 0; i < 5; i++) {
          try {
            const slots = await (this.slots ??= openSlots(this.o.connection, this.names));
            await slots.release(task.activity, spec, id);
            this.slotFreed(slotRecordKey(task.activity, spec.key));
            return;
          } catch (err) {
            this.slots = undefined;
            this.logger.warn({ ...log, err }, 'concurrency slot not released; retrying');
            await new Promise((r) => setTimeout(r, 100 * 2 ** i));
          }
        }
        this.logger.warn(log, 'concurrency slot not released: it frees when its lease ends');
      },
    };
  }

  /**
   * The activity's rate limit, once the attempt is taken: reserve a slot (or use the one a
   * postponed task carries); run now when it is due, wait in place (keeping the lease) when it is
   * under a second away, else give the attempt back, postpone the task to its slot as a scheduled
   * message and ack this delivery. Resolves the slot to run in, or `postponed` when the task was postponed (or the
   * worker is stopping and the task went back to the queue).
   */
  private async rateGate(
    task: TaskMessage,
    m: JsMsg,
    attempt: number,
    log: Record<string, unknown>,
    revision: number,
  ): Promise<number | 'postponed'> {
    const spec = task.rateLimit!;
    const slotHeader = m.headers?.get(Header.RateSlot) ?? '';
    const held = slotHeader === '' ? NaN : Number(slotHeader);
    let at: number;
    // A postponed task's first delivery holds its slot; a redelivery (its worker died) takes a new one.
    if (Number.isSafeInteger(held) && m.info.deliveryCount === 1) at = held;
    else {
      for (let i = 0; ; i++) {
        try {
          const rates = (this.rates ??= openRateLimiter(this.o.connection, this.names));
          at = await (await rates).reserve(task.activity, spec);
          break;
        } catch (err) {
          this.rates = undefined;
          if (this.canceled.has(task.taskId) || this.forced.signal.aborted) {
            m.nak(0);
            return 'postponed';
          }
          const delayMs = Math.min(5_000, 100 * 2 ** Math.min(i, 6));
          this.logger.warn(
            { ...log, err, delayMs },
            'rate limit not readable; retrying before the attempt runs',
          );
          await pause(delayMs, this.forced.signal);
        }
      }
    }
    const wait = at - Date.now();
    if (wait <= 0) return at;
    if (wait <= RATE_WAIT_IN_PLACE_MS) {
      this.o.metrics?.admission?.('rate-limit', 'held');
      // A timer may fire a millisecond early: never start before the slot.
      for (let left = wait; left > 0 && !this.forced.signal.aborted; left = at - Date.now())
        await pause(left, this.forced.signal);
      return at;
    }
    // Postponed: the attempt is given back first (the postponed copy takes it again). When the
    // entry cannot be given back, the postponed copy could not take it: wait in place instead.
    try {
      await this.ledger.giveBack(attemptKey(task, attempt), revision);
    } catch (err) {
      this.logger.warn(
        { ...log, err },
        'attempt not given back; waiting for the rate-limit slot in place',
      );
      for (
        let left = at - Date.now();
        left > 0 && !this.forced.signal.aborted;
        left = at - Date.now()
      )
        await pause(left, this.forced.signal);
      return at;
    }
    try {
      // Fired a little ahead of its slot (the server's schedules may fire late), then waited for
      // in place: the attempt starts at its slot, not at whenever the schedule fired.
      await postponeTask(
        this.js,
        this.names,
        task,
        m.data.slice(),
        attempt,
        at,
        at - RATE_WAIT_IN_PLACE_MS,
        traceOf(m),
      );
    } catch (err) {
      // Not postponed: the task comes back (a new delivery, a new slot).
      this.logger.warn({ ...log, err }, 'rate-limited task not postponed; nak');
      m.nak(1_000);
      return 'postponed';
    }
    this.stats.postponed++;
    this.o.metrics?.admission?.('rate-limit', 'deferred');
    this.journalAdmission(
      task,
      attempt,
      'rate-limit',
      'deferred',
      spec.key,
      at,
      Date.now(),
      `attempt ${attempt} postponed to its rate-limit slot at ${new Date(at).toISOString()} (${spec.limit} per ${spec.periodMs} ms of key ${JSON.stringify(spec.key)})`,
    );
    this.logger.debug({ ...log, at: new Date(at).toISOString() }, 'postponed by its rate limit');
    m.ack();
    return 'postponed';
  }

  /**
   * Take `attempt` of `task` in the attempt ledger. A ledger that cannot be written (timeout,
   * server restart, leader election) is retried with backoff up to 5 s while the caller keeps
   * the lease; it gives up only when the task is canceled or the worker is forced to stop.
   */
  private async takeAttempt(
    task: TaskMessage,
    m: JsMsg,
    attempt: number,
    log: object,
  ): Promise<Take> {
    const key = attemptKey(task, attempt);
    const nextKey = attemptKey(task, attempt + 1);
    const taker = { worker: this.id, seq: m.seq, delivery: m.info.deliveryCount, at: Date.now() };
    for (let i = 0; ; i++) {
      try {
        // Read beside the take (no added latency): is the next attempt taken already?
        const [took, next] = await Promise.all([
          this.ledger.take(key, taker),
          this.ledger.takerOf(nextKey),
        ]);
        if (next !== undefined) {
          // Attempts only go up: a later attempt of this task was taken, so this delivery is not
          // to run. Of the same message (this delivery outlived its lease and the message went
          // to another worker): leave it to that delivery, touch nothing. Of another message: a
          // stale copy of the task (queued again after the server's dedup window forgot it, e.g.
          // by an outbox re-performed after a timeout): terminated like any duplicate.
          const same = next?.seq === m.seq;
          this.logger.info(
            { ...log, next: attempt + 1, takenBy: next },
            same
              ? 'a later delivery of this message took the next attempt; not run'
              : 'a later attempt of this task is already taken (stale copy); not run',
          );
          return { kind: same ? 'superseded' : 'duplicate' };
        }
        if (took.kind === 'taken') return { kind: 'run', revision: took.revision };
        if (took.by?.seq === m.seq) {
          // The same message delivered again with a delivery count already used (the server's
          // consumer state went back, e.g. an unclean restart): not a second copy of the task.
          this.logger.warn(
            { ...log, takenBy: took.by },
            'attempt already taken by an earlier delivery of this message; not run, redelivered as the next attempt',
          );
          return { kind: 'repeated' };
        }
        this.logger.info(
          { ...log, takenBy: took.by },
          'attempt already taken by another delivery (task queued twice); not run',
        );
        return { kind: 'duplicate' };
      } catch (err) {
        if (this.canceled.has(task.taskId)) return { kind: 'canceled' };
        if (this.forced.signal.aborted) return { kind: 'forced' };
        const delayMs = Math.min(5_000, 100 * 2 ** Math.min(i, 6));
        this.logger.warn(
          { ...log, err, ledgerAttempt: i + 1, delayMs },
          'attempt ledger not written; retrying before the attempt runs',
        );
        await pause(delayMs, this.forced.signal);
      }
    }
  }

  /** Run one attempt and classify how it ended. Never throws. */
  private async runAttempt(
    queue: string,
    task: TaskMessage,
    m: JsMsg,
    attempt: number,
    ackWaitMs: number,
    beat: { last: number },
    rateSlot?: number,
  ): Promise<Outcome> {
    const log = {
      workflowType: task.workflowType,
      workflowId: task.workflowId,
      step: stepOfTask(task.taskId),
      taskId: task.taskId,
      activity: task.activity,
      attempt,
    };
    if (task.deadline !== undefined && Date.now() > task.deadline) {
      return {
        kind: 'fail',
        error: {
          type: 'ScheduleToCloseTimeout',
          code: ErrorCode.Timeout,
          message: `activity ${task.activity} did not complete before its schedule-to-close deadline`,
          retryable: false,
        },
      };
    }
    if (task.heartbeatMs !== undefined && task.heartbeatMs >= ackWaitMs) {
      this.logger.error({ ...log, queue, ackWaitMs }, 'heartbeatMs not below the queue AckWait');
      return {
        kind: 'fail',
        error: {
          type: 'ConfigError',
          code: ErrorCode.Config,
          message:
            `heartbeatMs of activity ${task.activity} (${task.heartbeatMs} ms) must be below the ` +
            `AckWait of queue ${queue} (${ackWaitMs} ms): lower heartbeatMs or raise the queue's ackWaitMs`,
          retryable: false,
        },
      };
    }
    const http = task.http;
    const fn =
      this.o.activities[task.activity] ??
      (http && this.o.http
        ? (input: unknown, c: ActivityContext) =>
            runHttpActivity(http, input, c, task.startToCloseMs)
        : undefined);
    const ac = new AbortController();
    this.running.set(task.taskId, ac);
    this.stats.started++;
    const timers: NodeJS.Timeout[] = [];
    timers.push(
      setTimeout(
        () =>
          ac.abort(
            new AbortReason(`start-to-close timeout of ${task.startToCloseMs} ms`, {
              code: ErrorCode.Timeout,
            }),
          ),
        task.startToCloseMs,
      ),
    );
    const hb = task.heartbeatMs;
    if (hb) {
      timers.push(
        setInterval(
          () => {
            if (Date.now() - beat.last > hb)
              ac.abort(new AbortReason(`no heartbeat for ${hb} ms`, { code: ErrorCode.Timeout }));
          },
          Math.max(50, Math.floor(hb / 4)),
        ),
      );
    }
    const heartbeat = () => {
      beat.last = Date.now();
      m.working();
    };
    const aborted = new Promise<never>((_, fail) =>
      ac.signal.addEventListener('abort', () => fail(ac.signal.reason as Error), { once: true }),
    );
    aborted.catch(() => undefined);
    try {
      if (!fn)
        throw new JetflowError(
          `no activity ${JSON.stringify(task.activity)} on this worker` +
            (http ? ' (an HTTP activity: run a worker with --http)' : ''),
          {
            code: ErrorCode.UnknownType,
          },
        );
      const ctx: ActivityContext = {
        attempt,
        maxAttempts: task.maxAttempts,
        workflowType: task.workflowType,
        workflowId: task.workflowId,
        activity: task.activity,
        taskId: task.taskId,
        signal: ac.signal,
        heartbeat,
        enqueuedAt: m.time.getTime(),
        scheduledAt: task.scheduledAt,
        ...(task.node ? { node: task.node } : {}),
        ...(rateSlot !== undefined ? { rateSlot } : {}),
      };
      const output = await Promise.race([
        Promise.resolve().then(() => fn(task.input, ctx)),
        aborted,
      ]);
      return { kind: 'ok', output };
    } catch (err) {
      if (this.canceled.has(task.taskId)) return { kind: 'canceled' };
      if (ac.signal.aborted && ac.signal.reason instanceof ShutdownReason)
        return { kind: 'release' };
      const data = errorData(err);
      const nonRetryable =
        err instanceof TerminalError || task.retry.nonRetryableErrorTypes.includes(data.type);
      if (!nonRetryable && attempt < task.maxAttempts) {
        // A `retryAfterMs` (an HTTP 429's Retry-After) is a floor under the policy's delay.
        const delayMs = Math.max(
          backoffDelayMs({ ...task.retry, maxAttempts: task.maxAttempts }, attempt),
          err instanceof RetryableError ? (err.retryAfterMs ?? 0) : 0,
        );
        if (task.deadline === undefined || Date.now() + delayMs < task.deadline) {
          this.logger.info({ ...log, delayMs, error: data.message }, 'attempt failed; retrying');
          return { kind: 'retry', delayMs, error: data };
        }
      }
      this.logger.info({ ...log, error: data.message, nonRetryable }, 'activity failed');
      return { kind: 'fail', error: { ...data, retryable: false } };
    } finally {
      clearTimers(timers);
      this.running.delete(task.taskId);
    }
  }

  /** Report an attempt's outcome: result, retry, cancel or release; then ack, term or leave. */
  private async settle(
    task: TaskMessage,
    m: JsMsg,
    attempt: number,
    outcome: Outcome,
    log: object,
    revision: number,
  ): Promise<void> {
    switch (outcome.kind) {
      case 'ok':
      case 'fail': {
        const result: ResultMessage =
          outcome.kind === 'ok'
            ? {
                taskId: task.taskId,
                actorId: task.actorId,
                ok: true,
                ...splitDecisions(outcome.output),
                attempt,
              }
            : {
                taskId: task.taskId,
                actorId: task.actorId,
                ok: false,
                error: { ...outcome.error, attempt },
                attempt,
              };
        const sent = await this.deliverResult(task, result, log);
        if (sent === 'canceled') {
          this.stats.canceled++;
          m.term('canceled');
        } else if (sent === 'published') {
          m.ack();
          if (outcome.kind === 'ok') this.stats.succeeded++;
          else this.stats.failed++;
        }
        // 'abandoned': neither ack nor nak; the task is redelivered after AckWait.
        return;
      }
      case 'canceled':
        this.stats.canceled++;
        this.logger.info(log, 'attempt aborted: activity canceled');
        m.term('canceled');
        return;
      case 'retry':
        this.stats.retried++;
        // The attempt notice goes first: it is in the workflow's inbox before any message of
        // the next attempt. Informational, so a failed publish does not hold the retry. Sent for
        // tree nodes (tasks with `node`): an invoked activity's engine would only ignore it.
        if (task.node) await this.notice(task, attempt, outcome, log);
        await this.retryLater(task, m, attempt + 1, outcome.delayMs, log);
        return;
      case 'release':
        await this.release(task, m, attempt, log, revision);
        return;
    }
  }

  /**
   * Store attempt `next` as a scheduled message due in `delayMs` and ack this one, so the wait
   * holds no `maxInFlight` slot. If the schedule cannot be stored (or the stream has no
   * schedules), fall back to `nak(delayMs)`: the delivery count then makes the next attempt.
   */
  private async retryLater(
    task: TaskMessage,
    m: JsMsg,
    next: number,
    delayMs: number,
    log: object,
  ): Promise<void> {
    if (this.scheduledRetries) {
      const body = m.data.slice();
      const dueAt = Date.now() + delayMs;
      try {
        const trace = traceOf(m);
        const seq = await scheduleRetry(
          this.js,
          this.names,
          task,
          body,
          next,
          dueAt + RETRY_SCHEDULE_SLACK_MS,
          trace,
        );
        m.ack();
        this.fireOnTime(task, body, next, seq, delayMs, trace);
        return;
      } catch (err) {
        this.logger.warn({ ...log, err }, 'retry schedule not stored; waiting by nak instead');
      }
    }
    m.nak(delayMs);
  }

  /** Publish a scheduled retry at its due time from here (precise) and cancel its schedule. */
  private fireOnTime(
    task: TaskMessage,
    body: Uint8Array,
    attempt: number,
    seq: number,
    delayMs: number,
    trace: TraceCarrier | undefined,
  ): void {
    if (this.stop.signal.aborted) return; // closing: the schedule fires
    const t = setTimeout(() => {
      this.retryTimers.delete(t);
      if (this.canceled.has(task.taskId)) return;
      fireRetryNow(this.js, this.names, task, body, attempt, seq, trace).catch((err: unknown) =>
        this.logger.debug(
          { err, taskId: task.taskId, attempt },
          'retry not published early; its schedule fires it',
        ),
      );
    }, delayMs);
    this.retryTimers.add(t);
  }

  /**
   * Forced shutdown: give the attempt back in the ledger (delete its entry at the revision this
   * worker took), hand the task back with the same attempt number (it does not use up an
   * attempt), then ack this delivery. If the ledger delete or the publish fails, `nak(0)`: the
   * task is not lost, but the delivery counts as an attempt.
   */
  private async release(
    task: TaskMessage,
    m: JsMsg,
    attempt: number,
    log: object,
    revision: number,
  ): Promise<void> {
    try {
      await this.ledger.giveBack(attemptKey(task, attempt), revision);
    } catch (err) {
      this.logger.warn({ ...log, err }, 'attempt not given back in the ledger; nak instead');
      m.nak(0);
      return;
    }
    try {
      await releaseTask(this.js, this.names, task, m.data.slice(), attempt, m.seq, traceOf(m));
      m.ack();
      this.logger.info(log, 'attempt released on forced shutdown');
    } catch (err) {
      this.logger.warn({ ...log, err }, 'release publish failed; nak instead');
      m.nak(0);
    }
  }

  /**
   * The settings of `queue`'s consumer as this worker last read them (at start, then every few
   * seconds): the global `maxInFlight` and the `ackWaitMs` it renews leases by.
   */
  queueSettings(queue: string): Readonly<QueueSettings> | undefined {
    return this.settings.get(queue);
  }

  /**
   * Per queue of this worker: tasks waiting (`num_pending`) and delivered but not acknowledged
   * (`num_ack_pending`), read from the queue consumers now (one request per queue).
   */
  async queueStats(): Promise<{ queue: string; pending: number; inFlight: number }[]> {
    return await Promise.all(
      this.queues.map(async (queue) => {
        const c = await this.js.consumers.get(
          this.names.tasksStream,
          this.names.queueConsumer(queue),
        );
        const info = await c.info(true);
        return { queue, pending: info.num_pending, inFlight: info.num_ack_pending };
      }),
    );
  }

  /** True once `close()` was called. */
  get stopping(): boolean {
    return this.closing !== undefined;
  }

  /** Resolves when the worker stopped (after `close()`). */
  async run(): Promise<void> {
    await this.closing;
    await Promise.all(this.loops);
  }

  /**
   * Stop fetching, let in-flight attempts finish within the grace period (they can still be
   * canceled by their workflows, and results still being published keep being retried), then
   * abort the rest and release them for another worker without using up their attempt. Pending
   * retries stay scheduled in JetStream. Idempotent; never rejects.
   */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stop.abort();
      for (const t of this.retryTimers) clearTimeout(t);
      this.retryTimers.clear();
      // Tasks postponed for a concurrency key: their schedules bring them back.
      for (const key of this.parked.values()) clearTimeout(key.timer);
      this.parked.clear();
      await Promise.allSettled(this.loops);
      let graceTimer: NodeJS.Timeout | undefined;
      const grace = new Promise((r) => {
        graceTimer = setTimeout(r, this.o.shutdownGraceMs ?? 10_000);
      });
      await Promise.race([Promise.allSettled([...this.inflight]), grace]);
      clearTimeout(graceTimer);
      this.forced.abort();
      for (const ac of this.running.values())
        ac.abort(new ShutdownReason('worker shutting down', { code: ErrorCode.Unavailable }));
      await Promise.allSettled([...this.inflight]);
      for (const sub of this.controls) sub.unsubscribe();
    })();
    return this.closing;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** The step that scheduled a task: its id is `<type>.<id>.<step>.<actorId>`. */
function stepOfTask(taskId: string): number | undefined {
  const n = Number(taskId.split('.')[2]);
  return Number.isInteger(n) ? n : undefined;
}

/** The W3C trace context a task message carries (kept on its retries). */
function traceOf(m: JsMsg): TraceCarrier | undefined {
  const traceparent = m.headers?.get(Header.TraceParent);
  if (!traceparent) return undefined;
  return { traceparent, tracestate: m.headers?.get(Header.TraceState) || undefined };
}

/** The outcome an attempt is counted under (undefined: released, not counted). */
function countedOutcome(o: Outcome): AttemptOutcome | undefined {
  switch (o.kind) {
    case 'ok':
      return 'ok';
    case 'canceled':
      return 'canceled';
    case 'release':
      return undefined;
    case 'retry':
    case 'fail':
      if (o.error.code === ErrorCode.Timeout) return 'timeout';
      return o.kind === 'retry' ? 'retry' : 'error';
  }
}

function clearTimers(timers: NodeJS.Timeout[]): void {
  for (const t of timers) clearTimeout(t);
}

/** Error data of an activity failure (an `Error`'s own `name` is its type). */
function errorData(err: unknown): ErrorData {
  const d = toErrorData(err);
  if (err instanceof Error && !(err instanceof JetflowError)) {
    const details = (err as { details?: unknown }).details;
    return { ...d, type: err.name, ...(details !== undefined ? { details } : {}) };
  }
  return d;
}

/** Create a worker and start pulling. */
export function createWorker(o: WorkerOptions): Promise<Worker> {
  return Worker.create(o);
}
