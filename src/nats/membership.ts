/**
 * Engine liveness: each engine heartbeats a key in KV bucket `<prefix>_engines`. An entry older
 * than `failoverMs / 2` marks a dead engine; the bucket TTL (`failoverMs`) removes it later, so
 * that for a while the others still see which pins the dead engine held. The live set, sorted by id, decides the shard
 * assignment (see `assignShards`); the server's `pinned_client` priority group makes sure a shard
 * has at most one active consumer while the assignment changes hands.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { jetstreamManager } from '@nats-io/jetstream';
import type { TopologyNames } from './topology.js';

/** What an engine says about itself on every heartbeat. */
export interface EngineInfo {
  id: string;
  name: string;
  pid: number;
  startedAt: string;
  heartbeatAt: string;
  /** Shards it consumes now (including those it is releasing). */
  shards: number[];
  /** Shards it is handing over: no longer fetched, in-flight steps finishing. */
  releasing?: number[];
  /** Server pin id per shard, once the server pinned this engine (for the operator view). */
  pins: Record<number, string>;
  /**
   * Pin ids of shards this engine released lately: the new owner sees that the server's pin is
   * a former one and unpins it at once.
   */
  released?: Record<number, string>;
  draining: boolean;
  /** Triggers this engine can hold (its registry declares them). */
  triggers?: string[];
  /** Triggers it holds now. */
  heldTriggers?: string[];
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
  ttlMs: number,
  replicas: number,
): Promise<KV> {
  const kv = await new Kvm(nc).create(membershipBucket(names), {
    history: 1,
    replicas,
    ttl: ttlMs,
  });
  // An existing bucket keeps its old TTL otherwise (`create` does not update).
  const jsm = await jetstreamManager(nc);
  const stream = `KV_${membershipBucket(names)}`;
  const si = await jsm.streams.info(stream);
  if (si.config.max_age !== ttlMs * 1_000_000) {
    await jsm.streams.update(stream, { ...si.config, max_age: ttlMs * 1_000_000 });
  }
  return kv;
}

/** An engine's heartbeat entry and how old it is by the server's clock. */
export interface Member extends EngineInfo {
  /** Age of the entry, measured against the newest entry in the bucket (server timestamps). */
  heartbeatAgeMs: number;
  live: boolean;
}

/**
 * Every engine entry in the bucket, sorted by id, each marked live when its last heartbeat was
 * stored less than `maxAgeMs` before the newest one.
 *
 * Ages compare server timestamps with server timestamps (the `created` time of each KV entry,
 * set by the bucket's stream leader), never a host's own clock with the server's: liveness does
 * not depend on the clocks of the engine hosts agreeing. An engine calls this right after its own
 * heartbeat, so the newest entry is at most one heartbeat period old. The bucket TTL removes dead
 * entries in the end; the age check does not wait for the server's expiry sweep.
 */
export async function readMembers(kv: KV, maxAgeMs = Infinity): Promise<Member[]> {
  const entries: { info: EngineInfo; at: number }[] = [];
  // `keys()` may name a key twice when it is written while being listed.
  const keys = new Set<string>();
  for await (const k of await kv.keys()) keys.add(k);
  for (const k of keys) {
    const e = await kv.get(k);
    if (!e || e.operation !== 'PUT' || e.value.length === 0) continue;
    entries.push({ info: e.json<EngineInfo>(), at: e.created.getTime() });
  }
  return ageMembers(entries, maxAgeMs);
}

function ageMembers(entries: { info: EngineInfo; at: number }[], maxAgeMs: number): Member[] {
  const newest = Math.max(...entries.map((e) => e.at));
  return entries
    .map(({ info, at }) => ({
      ...info,
      heartbeatAgeMs: newest - at,
      live: newest - at <= maxAgeMs,
    }))
    .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/**
 * An engine's running view of the membership: one KV watch for the engine's lifetime (a
 * `keys()` + `get()` per tick would create a consumer every time), restarted if it ends.
 * {@link MembershipView.members} ages entries as {@link readMembers} does.
 */
export class MembershipView {
  private readonly entries = new Map<string, { info: EngineInfo; at: number }>();
  private iter: { stop(): void } | undefined;
  private stopped = false;

  private constructor(
    private readonly kv: KV,
    private readonly onError: (err: unknown) => void,
  ) {}

  /** Open the watch and wait for the current entries (the bucket must hold at least one). */
  static async open(kv: KV, onError: (err: unknown) => void): Promise<MembershipView> {
    const v = new MembershipView(kv, onError);
    await v.watch();
    return v;
  }

  private async watch(): Promise<void> {
    let ready!: () => void;
    const initialized = new Promise<void>((ok) => (ready = ok));
    const iter = await this.kv.watch();
    this.iter = iter;
    const t = setTimeout(() => ready(), 5_000);
    void (async () => {
      for await (const e of iter) {
        // `delta` counts the initial entries still to come.
        if (e.delta === 0 || e.isUpdate) ready();
        if (e.operation === 'PUT' && e.value.length > 0) {
          this.entries.set(e.key, { info: e.json<EngineInfo>(), at: e.created.getTime() });
        } else {
          this.entries.delete(e.key);
        }
      }
    })()
      .catch((err: unknown) => this.onError(err))
      .finally(() => {
        if (this.stopped) return;
        this.onError(new Error('membership watch ended; restarting it'));
        setTimeout(() => void this.watch().catch((err: unknown) => this.onError(err)), 500);
      });
    await initialized;
    clearTimeout(t);
  }

  /** Every engine entry seen, marked live or not (see {@link readMembers}). */
  members(maxAgeMs: number): Member[] {
    // Entries the bucket TTL removed are not announced by the watch: forget very old ones.
    const all = [...this.entries.values()];
    return ageMembers(all, maxAgeMs).filter((m) => m.heartbeatAgeMs <= 10 * maxAgeMs);
  }

  stop(): void {
    this.stopped = true;
    this.iter?.stop();
  }
}

/** Live engines, sorted by id (see {@link readMembers}). */
export async function liveEngines(kv: KV, maxAgeMs = Infinity): Promise<Member[]> {
  return (await readMembers(kv, maxAgeMs)).filter((e) => e.live);
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

/**
 * The engine that holds trigger `name`: among the live, non-draining engines that declare it,
 * the one ranking highest by rendezvous hashing of trigger name and engine id. Every engine
 * computes it alike from the same live set, so one engine holds a trigger (its consumer's pinned
 * priority group makes sure of it while the holder changes).
 */
export function triggerHolder(
  engines: { id: string; draining?: boolean; triggers?: string[] }[],
  name: string,
): string | undefined {
  let best: string | undefined;
  let bestRank = -1;
  for (const e of engines) {
    if (e.draining || !e.triggers?.includes(name)) continue;
    const r = fnv1a(`trigger/${name}/${e.id}`);
    if (r > bestRank || (r === bestRank && best !== undefined && e.id < best)) {
      best = e.id;
      bestRank = r;
    }
  }
  return best;
}
