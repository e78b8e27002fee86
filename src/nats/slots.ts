/**
 * Activity concurrency per key, held by the server: bucket `<prefix>_slots`, one record per
 * (activity, key) at `<activity>.<hash of key>` listing the attempts that hold its slots, each
 * with a lease, and the attempts waiting for one, first come first, each with a waiter lease
 * (msgpack {@link SlotRecord}). Every change reads the record, applies a pure
 * function of `src/engine/slots.ts` and writes it back by compare-and-set on the revision read
 * (a lost race is decided again on the newer record), so the takes of one key form one sequence
 * whichever worker makes them. A worker renews its holders' leases while their attempts run; a
 * dead worker's holder is dropped by the first change after its lease (the queue's AckWait). A
 * record left with no holder and no waiter is deleted.
 */
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { pack, unpack } from '../contracts/codec.js';
import {
  EMPTY_SLOTS,
  leaveSlotQueue,
  releaseSlot,
  renewSlot,
  takeSlot,
  type SlotRecord,
  type SlotTake,
  type SlotWait,
} from '../engine/slots.js';
import { rateRecordKey } from './rates.js';
import { isCasFailure } from './store.js';
import type { TopologyNames } from './topology.js';

/** Compare-and-set attempts before a change gives up (the caller retries it with backoff). */
const MAX_CAS_ATTEMPTS = 100;

export interface SlotSpec {
  key: string;
  limit: number;
}

export interface Slots {
  /**
   * Take a slot of `(activity, key)` for attempt `id` (see `takeSlot`); `granted: false`: none is
   * free for it, and it is (or stays) queued as a waiter at `position`.
   */
  take(
    activity: string,
    spec: SlotSpec,
    id: string,
    worker: string,
    leaseMs: number,
    wait: SlotWait,
    now?: number,
  ): Promise<SlotTake>;
  /** Renew `id`'s lease (putting it back if it was dropped): `lost` tells it had been. */
  renew(
    activity: string,
    spec: SlotSpec,
    id: string,
    worker: string,
    leaseMs: number,
    at: number,
  ): Promise<{ lost: boolean }>;
  /** Give `id`'s slot back. */
  release(activity: string, spec: SlotSpec, id: string): Promise<void>;
  /** Take `id`'s task out of the waiters (it ends without a slot). */
  leave(activity: string, spec: SlotSpec, id: string): Promise<void>;
  /** The record of `(activity, key)` as stored (holders not yet dropped included). */
  read(activity: string, key: string): Promise<SlotRecord | undefined>;
}

/** Record key of `(activity, key)`: the activity (a token) and a hash of the user's key. */
export const slotRecordKey = rateRecordKey;

/** Whether a change dropped a holder or a waiter (else there is nothing to write). */
function sizeChanged(a: SlotRecord, b: SlotRecord): boolean {
  return (
    a.holders.length !== b.holders.length || (a.waiters ?? []).length !== (b.waiters ?? []).length
  );
}

function recordOf(e: KvEntry | null): SlotRecord | undefined {
  if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
  return unpack(e.value) as SlotRecord;
}

export function fromSlotsBucket(kv: KV): Slots {
  /** Read, change, write by compare-and-set; `undefined` from `change`: nothing to write. */
  async function change<T>(
    k: string,
    f: (rec: SlotRecord) => { write?: SlotRecord; out: T },
  ): Promise<T> {
    for (let i = 0; ; i++) {
      const e = await kv.get(k);
      const { write, out } = f(recordOf(e) ?? EMPTY_SLOTS);
      if (!write) return out;
      try {
        // A record left with no holder and no waiter is deleted (at its revision), so keys do
        // not accumulate.
        const empty = write.holders.length === 0 && (write.waiters ?? []).length === 0;
        if (e && empty) await kv.delete(k, { previousSeq: e.revision });
        else if (e) await kv.update(k, pack(write), e.revision);
        else if (!empty) await kv.create(k, pack(write));
        return out;
      } catch (err) {
        if (!isCasFailure(err) || i >= MAX_CAS_ATTEMPTS) throw err;
      }
    }
  }
  return {
    take(activity, spec, id, worker, leaseMs, wait, now) {
      return change(slotRecordKey(activity, spec.key), (rec) => {
        const t = takeSlot(rec, id, worker, spec.limit, now ?? Date.now(), leaseMs, wait);
        // Not granted: written only when it queued, renewed its waiter lease or dropped expired
        // entries, so a task asking again in place mostly reads.
        return { ...(t.changed ? { write: t.record } : {}), out: t };
      });
    },
    renew(activity, spec, id, worker, leaseMs, at) {
      return change(slotRecordKey(activity, spec.key), (rec) => {
        const r = renewSlot({ ...rec, limit: spec.limit }, id, worker, Date.now(), leaseMs, at);
        return { write: r.record, out: { lost: r.lost } };
      });
    },
    release(activity, spec, id) {
      return change(slotRecordKey(activity, spec.key), (rec) => {
        const next = releaseSlot(rec, id, Date.now());
        return { ...(sizeChanged(rec, next) ? { write: next } : {}), out: undefined };
      });
    },
    leave(activity, spec, id) {
      return change(slotRecordKey(activity, spec.key), (rec) => {
        const next = leaveSlotQueue(rec, id, Date.now());
        return { ...(sizeChanged(rec, next) ? { write: next } : {}), out: undefined };
      });
    },
    async read(activity, key) {
      return recordOf(await kv.get(slotRecordKey(activity, key)));
    },
  };
}

/** Open the slots bucket (created by engines, `ensureTopology`). */
export async function openSlots(nc: NatsConnection, names: TopologyNames): Promise<Slots> {
  return fromSlotsBucket(await new Kvm(nc).open(names.slotsBucket));
}
