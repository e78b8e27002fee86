/**
 * The attempt ledger: bucket `<prefix>_attempts`, one key per task attempt a worker took. A
 * worker takes attempt N of a task with `kv.create` (the server's compare-and-set) before it
 * runs it; a second copy of the same attempt (a task queued twice, a retry scheduled twice)
 * finds the key and is not run. Entries expire after the bucket's max age
 * (`attemptRetentionMs`).
 */
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import { pack, unpack } from '../contracts/codec.js';
import { ErrorCode, TerminalError } from '../errors.js';
import type { TopologyNames } from './topology.js';

/** Who took an attempt: stored as the entry's value (msgpack). */
export interface AttemptTaker {
  /** The taking worker instance (random per `Worker`). */
  worker: string;
  /** Stream sequence and delivery count of the delivery that took it. */
  seq: number;
  delivery: number;
  /** Epoch ms of the take. */
  at: number;
}

/** How a take ended: `taken` (run it, with the entry's revision) or `duplicate` (do not). */
export type AttemptTake =
  { kind: 'taken'; revision: number } | { kind: 'duplicate'; by: AttemptTaker | undefined };

/**
 * The ledger key of attempt `attempt` of `task`: `<taskKey>.<scheduledAt>.<attempt>`. The time
 * the engine queued the task tells apart two workflows that had the same id one after the other
 * (a finished workflow's record removed, the id started again): their task ids are equal.
 */
export function attemptKey(
  task: { taskKey: string; scheduledAt?: number },
  attempt: number,
): string {
  const at =
    task.scheduledAt !== undefined && Number.isSafeInteger(task.scheduledAt) ? task.scheduledAt : 0;
  return `${task.taskKey}.${at}.${attempt}`;
}

export interface AttemptLedger {
  /**
   * Take an attempt. Resolves `duplicate` when another delivery took it; `taken` when this
   * call's create stored the entry, also when an earlier try of the same take was stored but
   * its reply was lost (the entry names this taker).
   *
   * @throws on anything else (a timeout, no responders, the bucket gone): the caller retries.
   */
  take(key: string, taker: AttemptTaker): Promise<AttemptTake>;
  /**
   * Give an attempt back (a forced shutdown hands the task back with the same attempt number):
   * deletes the entry if it is still at `revision`.
   *
   * @throws when the delete is not acknowledged.
   */
  giveBack(key: string, revision: number): Promise<void>;
  /**
   * Who took attempt `key`: undefined when nobody did, `null` when taken by an unreadable entry.
   * Used to tell a stale second copy of a task from the live one (see the worker's take).
   *
   * @throws on a read that fails.
   */
  takerOf(key: string): Promise<AttemptTaker | null | undefined>;
}

const sameTaker = (a: AttemptTaker | undefined, b: AttemptTaker) =>
  a !== undefined && a.worker === b.worker && a.seq === b.seq && a.delivery === b.delivery;

function isExists(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence ||
      err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

/** The ledger over an open bucket. */
export function fromAttemptsBucket(kv: KV): AttemptLedger {
  return {
    async take(key, taker) {
      try {
        return { kind: 'taken', revision: await kv.create(key, pack(taker)) };
      } catch (err) {
        if (!isExists(err)) throw err;
      }
      const e = await kv.get(key);
      if (!e || e.operation !== 'PUT') {
        // Deleted (given back) between the create and this read: take it again.
        return { kind: 'taken', revision: await kv.create(key, pack(taker)) };
      }
      let by: AttemptTaker | undefined;
      try {
        by = unpack(e.value) as AttemptTaker;
      } catch {
        by = undefined;
      }
      return sameTaker(by, taker)
        ? { kind: 'taken', revision: e.revision }
        : { kind: 'duplicate', by };
    },
    async giveBack(key, revision) {
      await kv.delete(key, { previousSeq: revision });
    },
    async takerOf(key) {
      const e = await kv.get(key);
      if (!e || e.operation !== 'PUT') return undefined;
      try {
        return unpack(e.value) as AttemptTaker;
      } catch {
        return null;
      }
    },
  };
}

/**
 * Open the ledger of `names` for a worker. The bucket is created by engines (`ensureTopology`);
 * a worker does not create it, because its retention and replicas are the engines' settings.
 *
 * @throws a `topology` error when the bucket does not exist (no current engine has started
 * against this server yet).
 */
export async function openAttemptLedger(
  nc: NatsConnection,
  names: TopologyNames,
): Promise<AttemptLedger> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(`KV_${names.attemptsBucket}`);
  } catch (err) {
    if (err instanceof Error && /not found/i.test(err.message))
      throw new TerminalError(
        `attempt ledger bucket ${names.attemptsBucket} does not exist: start a current jetflow ` +
          `engine once against this server (it creates the bucket), then the worker`,
        { code: ErrorCode.Topology, cause: err },
      );
    throw err;
  }
  return fromAttemptsBucket(await new Kvm(nc).open(names.attemptsBucket));
}
