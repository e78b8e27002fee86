/**
 * Activity rate limits held by the server: bucket `<prefix>_rates`, one record per (activity,
 * key) with the times of its latest grants (msgpack `{grants: number[]}`), taken by
 * compare-and-set so that workers anywhere share one window. The slot arithmetic is pure
 * (`src/engine/ratelimit.ts`).
 */
import { createHash } from 'node:crypto';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { pack, unpack } from '../contracts/codec.js';
import { reserveSlot } from '../engine/ratelimit.js';
import type { TopologyNames } from './topology.js';

export interface RateLimiter {
  /**
   * Reserve the next slot of `(activity, key)` for one attempt: resolves its epoch ms (now, or
   * later when the window is full). Each call takes one slot.
   *
   * @throws when the record cannot be read or written (the caller keeps the task and retries).
   */
  reserve(
    activity: string,
    spec: { key: string; limit: number; periodMs: number },
    now?: number,
  ): Promise<number>;
}

/** Record key of `(activity, key)`: the activity (a token) and a hash of the user's key. */
export function rateRecordKey(activity: string, key: string): string {
  return `${activity}.${createHash('sha256').update(key).digest('base64url').slice(0, 27)}`;
}

function isConflict(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence ||
      err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

export function fromRatesBucket(kv: KV): RateLimiter {
  return {
    async reserve(activity, spec, now) {
      const k = rateRecordKey(activity, spec.key);
      for (let i = 0; ; i++) {
        const e = await kv.get(k);
        const live = e && e.operation === 'PUT' && e.value.length > 0;
        const grants = live ? ((unpack(e.value) as { grants?: number[] }).grants ?? []) : [];
        const slot = reserveSlot(grants, spec.limit, spec.periodMs, now ?? Date.now());
        try {
          // Compare-and-set on the revision read (a deleted record has one too), else create.
          if (e) await kv.update(k, pack({ grants: slot.grants }), e.revision);
          else await kv.create(k, pack({ grants: slot.grants }));
          return slot.at;
        } catch (err) {
          // Another worker took a slot meanwhile: read again and take the next one.
          if (!isConflict(err) || i >= 100) throw err;
        }
      }
    },
  };
}

/** Open the rates bucket (created by engines, `ensureTopology`). */
export async function openRateLimiter(
  nc: NatsConnection,
  names: TopologyNames,
): Promise<RateLimiter> {
  return fromRatesBucket(await new Kvm(nc).open(names.ratesBucket));
}
