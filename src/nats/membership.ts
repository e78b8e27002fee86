/**
 * Engine liveness: each engine heartbeats a key in KV bucket `<prefix>_engines`, whose entries
 * age out after `failoverMs` (bucket TTL). The live set, sorted by id, decides the shard
 * assignment (see `assignShards`); the server's `pinned_client` priority group makes sure a shard
 * has at most one active consumer while the assignment changes hands.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import type { TopologyNames } from './topology.js';

/** What an engine says about itself on every heartbeat. */
export interface EngineInfo {
  id: string;
  name: string;
  pid: number;
  startedAt: string;
  heartbeatAt: string;
  /** Shards it consumes now. */
  shards: number[];
  /** Server pin id per shard, once the server pinned this engine (for the operator view). */
  pins: Record<number, string>;
  draining: boolean;
}

/**
 * The server's pinned client id of a shard consumer (`ConsumerInfo` of nats.js does not type
 * `priority_groups` yet).
 */
export function pinnedClientOf(info: unknown): string | undefined {
  return (info as { priority_groups?: { pinned_client_id?: string }[] } | undefined)
    ?.priority_groups?.[0]?.pinned_client_id;
}

export function membershipBucket(names: TopologyNames): string {
  return `${names.subjects.prefix}_engines`;
}

export async function openMembership(
  nc: NatsConnection,
  names: TopologyNames,
  failoverMs: number,
  replicas: number,
): Promise<KV> {
  return new Kvm(nc).create(membershipBucket(names), { history: 1, replicas, ttl: failoverMs });
}

/**
 * Live engines, sorted by id: those whose last heartbeat was stored (server time) less than
 * `maxAgeMs` ago. The bucket TTL removes dead entries eventually; the age check does not wait for
 * the server's expiry sweep.
 */
export async function liveEngines(kv: KV, maxAgeMs = Infinity): Promise<EngineInfo[]> {
  const out: EngineInfo[] = [];
  for await (const k of await kv.keys()) {
    const e = await kv.get(k);
    if (!e || e.operation !== 'PUT' || e.value.length === 0) continue;
    if (Date.now() - e.created.getTime() > maxAgeMs) continue;
    out.push(e.json<EngineInfo>());
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** 32-bit FNV-1a: a stable hash for rendezvous ranking. */
function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/**
 * Balanced, sticky assignment, computed alike by every engine from the same live set. Capacity:
 * with E engines and S shards, the first (S mod E) engines in id order may hold ceil(S/E)
 * shards, the others floor(S/E). Each shard goes to the engine that ranks highest for it
 * (rendezvous hashing of shard and engine id) among those with room left, so a joining or
 * leaving engine moves few shards besides its own. Draining engines get none.
 */
export function assignShards(
  engines: { id: string; draining?: boolean }[],
  shards: number,
  me: string,
): number[] {
  const active = engines
    .filter((e) => !e.draining)
    .map((e) => e.id)
    .sort();
  if (!active.includes(me)) return [];
  const n = active.length;
  const room = new Map(
    active.map((id, i) => [id, Math.floor(shards / n) + (i < shards % n ? 1 : 0)]),
  );
  const out: number[] = [];
  for (let s = 0; s < shards; s++) {
    const ranked = [...active].sort(
      (a, b) => fnv1a(`${s}/${b}`) - fnv1a(`${s}/${a}`) || (a < b ? -1 : 1),
    );
    const owner = ranked.find((id) => room.get(id)! > 0)!;
    room.set(owner, room.get(owner)! - 1);
    if (owner === me) out.push(s);
  }
  return out;
}
