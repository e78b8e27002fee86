/**
 * Concurrency keys over JetStream KV: bucket `<prefix>_keys`, one record per (type, key) at
 * `<type>.<keyToken>`. Every change reads the record, applies a pure decision of
 * `src/engine/admission.ts` and writes with compare-and-set on the revision read; a lost race is
 * decided again on the newer record. So the decisions about one key form one sequence
 * (linearizable per key), whichever engine or shard takes them.
 *
 * Hand-over: a release moves the head waiters into the freed slots (marked `via` the releaser)
 * in the same write, then publishes an `admit` to each one's inbox with msg id
 * `admit.<type>.<id>.<startSeq>`. A crash after the write repeats the release (its outbox is
 * performed again before its message is acked), which finds the releaser gone and re-sends the
 * admits of its hand-over; the admitted workflow applies only the first (its record leaves
 * `deferred`).
 */
import type { KV, KvEntry } from '@nats-io/kv';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import type { JetStreamClient } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { KeyStore, Logger } from '../engine/ports.js';
import { acquire, promote, release, type Admit, type KeyChange } from '../engine/admission.js';
import { MSGPACK, pack, unpack } from '../contracts/codec.js';
import { Header, type KeyRecord, type WorkflowRecord, type Effect } from '../contracts/wire.js';
import type { EffectHandler } from './effects.js';
import type { TopologyNames } from './topology.js';
import { isCasFailure } from './store.js';
import { toJetflowError } from './connection.js';
import { RetryableError, TerminalError, ErrorCode } from '../errors.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Compare-and-set attempts before a change gives up (transient: the step retries it). */
const MAX_CAS_ATTEMPTS = 50;

/** The bucket key of a concurrency key's record. */
export function keyRecordKey(type: string, keyToken: string): string {
  return `${type}.${keyToken}`;
}

function recordOf(e: KvEntry | null): KeyRecord | undefined {
  if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
  return unpack(e.value) as KeyRecord;
}

/** Counters of the key store (the benchmark and `jetflow keys` read them). */
export interface KeyStoreStats {
  changes: number;
  /** Compare-and-set races lost (decided again on the newer record). */
  conflicts: number;
  admitsSent: number;
}

export function createKeyStore(
  kv: KV,
  js: JetStreamClient,
  names: TopologyNames,
  logger: Logger,
): KeyStore & { stats: KeyStoreStats } {
  const stats: KeyStoreStats = { changes: 0, conflicts: 0, admitsSent: 0 };
  const s = names.subjects;

  async function change<T>(
    type: string,
    keyToken: string,
    decide: (rec: KeyRecord | undefined) => KeyChange<T>,
  ): Promise<T> {
    const k = keyRecordKey(type, keyToken);
    const fields = { workflowType: type };
    for (let attempt = 1; ; attempt++) {
      let e: KvEntry | null;
      try {
        e = await kv.get(k);
      } catch (err) {
        throw toJetflowError(err, fields);
      }
      const c = decide(recordOf(e));
      if (!c.next) return c.result;
      try {
        if (c.empty && e) {
          // Nobody holds or waits: the record goes (keys are often per customer or order).
          await kv.delete(k, { previousSeq: e.revision });
        } else if (e) {
          await kv.update(k, pack(c.next), e.revision);
        } else {
          await kv.create(k, pack(c.next));
        }
        stats.changes++;
        return c.result;
      } catch (err) {
        if (!isCasFailure(err)) {
          const e = toJetflowError(err, fields);
          if (e.code !== ErrorCode.PayloadTooLarge || !c.next) throw e;
          // The whole key is one record: its waiters are bounded by the server's max_payload.
          throw new TerminalError(
            `concurrency key ${JSON.stringify(c.next.key)} of ${type} cannot take this change: its record (${c.next.holders.length} holders, ${c.next.waiters.length} waiters) would be over the server's max_payload`,
            {
              ...fields,
              code: ErrorCode.PayloadTooLarge,
              details: { key: c.next.key, waiters: c.next.waiters.length },
              cause: err,
            },
          );
        }
        stats.conflicts++;
        if (attempt >= MAX_CAS_ATTEMPTS) {
          throw new RetryableError(
            `concurrency key record ${k}: compare-and-set lost ${attempt} times in a row`,
            { ...fields, code: ErrorCode.Conflict, cause: err },
          );
        }
        // Jittered, growing a little: many starts of one key race for the same record.
        await sleep(Math.random() * Math.min(50, 2 ** Math.min(attempt, 6)));
      }
    }
  }

  async function sendAdmits(type: string, key: string, admits: Admit[]): Promise<void> {
    await Promise.all(
      admits.map(async (a) => {
        const h = headers();
        h.set(Header.ContentType, MSGPACK);
        await js.publish(
          s.inbox('admit', type, a.id),
          pack({ key, startSeq: a.startSeq, at: a.at }),
          {
            msgID: `admit.${type}.${a.id}.${a.startSeq}`,
            headers: h,
          },
        );
        stats.admitsSent++;
      }),
    );
  }

  return {
    stats,
    acquire(req) {
      // The decision's time is taken when it is made (after the read it decides on), so the
      // admission times of one key follow the order of its record's writes.
      return change(req.type, req.keyToken, (rec) => acquire(rec, { ...req, now: Date.now() }));
    },
    async release(type, keyToken, id) {
      let key = '';
      const out = await change(type, keyToken, (rec) => {
        key = rec?.key ?? key;
        return release(rec, id, Date.now());
      });
      if (out.admits.length > 0) {
        if (!key) {
          // Released from a record since deleted: read the key from an admitted holder's view.
          const rec = recordOf(await kv.get(keyRecordKey(type, keyToken)));
          key = rec?.key ?? '';
        }
        await sendAdmits(type, key, out.admits);
        logger.debug({ workflowType: type, key, from: id, admits: out.admits }, 'slot handed over');
      }
      return out;
    },
    promote(type, keyToken, id) {
      return change(type, keyToken, (rec) => promote(rec, id, Date.now()));
    },
    async get(type, keyToken) {
      try {
        return recordOf(await kv.get(keyRecordKey(type, keyToken)));
      } catch (err) {
        throw toJetflowError(err, { workflowType: type });
      }
    },
  };
}

/** Open the keys bucket (created by `ensureTopology`). */
export async function openKeysBucket(nc: NatsConnection, names: TopologyNames): Promise<KV> {
  return new Kvm(nc).open(names.keysBucket);
}

/** Every key record of `type` (or of every type), read from the bucket. */
export async function listKeyRecords(kv: KV, type?: string): Promise<KeyRecord[]> {
  const out: KeyRecord[] = [];
  const it = await kv.keys(type ? `${type}.*` : undefined);
  const keys: string[] = [];
  for await (const k of it) keys.push(k);
  for (const k of keys) {
    const rec = recordOf(await kv.get(k));
    if (rec) out.push(rec);
  }
  return out;
}

/**
 * Effect handlers of the concurrency keys: `keyRelease` (leave the key, hand the slot over),
 * `keyPromote` (operator), `keyCancel` (cancel another workflow of the same type through its
 * inbox; the msg id travels in the body too, so the target remembers it beyond the dedup
 * window).
 */
export function keyEffectHandlers(
  keys: KeyStore,
  js: JetStreamClient,
  names: TopologyNames,
): Partial<Record<Effect['kind'], EffectHandler>> {
  const s = names.subjects;
  return {
    keyRelease: async (record: WorkflowRecord, e: Effect) => {
      if (e.kind !== 'keyRelease') return;
      await keys.release(record.type, e.keyToken, record.id);
    },
    keyPromote: async (record: WorkflowRecord, e: Effect) => {
      if (e.kind !== 'keyPromote') return;
      await keys.promote(record.type, e.keyToken, record.id);
    },
    keyCancel: async (record: WorkflowRecord, e: Effect, msgId: string) => {
      if (e.kind !== 'keyCancel') return;
      const h = headers();
      h.set(Header.ContentType, MSGPACK);
      await js.publish(
        s.inbox('cancel', record.type, e.id),
        pack({ kind: 'cancel', reason: e.reason, msgId }),
        { msgID: msgId, headers: h },
      );
    },
  };
}
