/**
 * Which shards this engine consumes, kept in step with the live engines. Every
 * `failoverMs / 10` it reads the membership, computes the balanced assignment, starts consuming
 * shards it gained (and publishes a claim so the server pins it at once) and releases shards it
 * lost: stop fetching, finish in-flight steps, then unpin so the new owner is pinned immediately.
 *
 * With `shardIds` configured explicitly, the assignment is static (those shards, always).
 */
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { Logger } from '../engine/ports.js';
import type { Processor } from '../engine/processor.js';
import { consumeShard, ENGINES_GROUP, type ShardHandle } from '../nats/inbox.js';
import { assignShards, liveEngines, pinnedClientOf, type EngineInfo } from '../nats/membership.js';
import type { TopologyNames } from '../nats/topology.js';

export interface ShardManagerOptions {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  names: TopologyNames;
  processor: Processor;
  logger: Logger;
  membership: KV;
  name: string;
  shards: number;
  /** Static assignment, or undefined for dynamic balancing. */
  staticShardIds: readonly number[] | undefined;
  failoverMs: number;
  batch: number;
}

export class ShardManager {
  readonly id = `${Date.now().toString(36)}-${nuid.next()}`;
  private readonly held = new Map<number, ShardHandle>();
  private readonly claimedAt = new Map<number, number>();
  private timer: NodeJS.Timeout | undefined;
  private busy: Promise<void> = Promise.resolve();
  private draining = false;
  private stopped = false;
  private readonly startedAt = new Date().toISOString();

  /** Pull expiry: well below the consumers' priority timeout, so an idle pin is kept. */
  private readonly expiresMs: number;

  constructor(private readonly o: ShardManagerOptions) {
    this.expiresMs = Math.max(1000, Math.floor(o.failoverMs / 6));
  }

  /** Join, take the first assignment, and keep it current. */
  async start(): Promise<void> {
    await this.heartbeat();
    await this.rebalance();
    const every = Math.max(200, Math.floor(this.o.failoverMs / 10));
    this.timer = setInterval(() => {
      this.busy = this.busy
        .then(() => this.tick())
        .catch((err: unknown) => this.o.logger.warn({ err }, 'rebalance failed'));
    }, every);
  }

  get shards(): number[] {
    return [...this.held.keys()].sort((a, b) => a - b);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    await this.heartbeat();
    await this.rebalance();
    // A shard held but not pinned to us (its pin was cleared by the previous owner's unpin
    // racing our claim, or lapsed while idle): claim it again so the server pins it now.
    const now = Date.now();
    for (const [s, h] of this.held) {
      if (h.pinId || now - (this.claimedAt.get(s) ?? 0) < this.o.failoverMs / 4) continue;
      this.claimedAt.set(s, now);
      await h.claim(this.id);
    }
  }

  private info(): EngineInfo {
    const pins: Record<number, string> = {};
    for (const [s, h] of this.held) if (h.pinId) pins[s] = h.pinId;
    return {
      id: this.id,
      name: this.o.name,
      pid: process.pid,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
      shards: this.shards,
      pins,
      draining: this.draining,
    };
  }

  private async heartbeat(): Promise<void> {
    await this.o.membership.put(this.id, JSON.stringify(this.info()));
  }

  private async rebalance(): Promise<void> {
    let want: number[];
    if (this.o.staticShardIds) {
      want = this.draining ? [] : [...this.o.staticShardIds];
    } else {
      const live = await liveEngines(this.o.membership, this.o.failoverMs / 2);
      if (!live.some((e) => e.id === this.id)) live.push(this.info());
      want = this.draining ? [] : assignShards(live, this.o.shards, this.id);
    }
    const wantSet = new Set(want);
    const lost = this.shards.filter((s) => !wantSet.has(s));
    const gained = want.filter((s) => !this.held.has(s));
    if (lost.length === 0 && gained.length === 0) return;
    // Gains first: a dead engine's shards are taken without waiting for our own releases (which
    // let our pull requests expire first). Pinning keeps one consumer per shard meanwhile.
    await Promise.all(
      gained.map(async (s) => {
        const h = await consumeShard({
          ...this.o,
          shard: s,
          group: ENGINES_GROUP,
          expiresMs: this.expiresMs,
        });
        this.held.set(s, h);
        this.claimedAt.set(s, Date.now());
        await h.claim(this.id);
      }),
    );
    if (gained.length > 0) await this.heartbeat();
    await Promise.all(lost.map((s) => this.release(s)));
    this.o.logger.info({ gained, lost, holding: this.held.size }, 'shard assignment changed');
    await this.heartbeat();
  }

  /** Stop consuming a shard, finish its in-flight steps, and let the server pin another engine. */
  private async release(shard: number): Promise<void> {
    const h = this.held.get(shard);
    if (!h) return;
    this.held.delete(shard);
    await h.stop();
    // Our last pull requests stay registered at the server until they expire; were we to unpin
    // now, the server could pin one of them and deliver to a subscription that is gone (the
    // message would wait for AckWait). Let them expire first.
    await new Promise((r) => setTimeout(r, this.expiresMs + 250));
    // Unpin only our own pin: the new owner may already have been pinned by its claim.
    const stream = this.o.names.inboxStream;
    const consumer = this.o.names.shardConsumer(shard);
    const info = await this.o.jsm.consumers.info(stream, consumer).catch(() => undefined);
    const pinned = pinnedClientOf(info);
    if (pinned && pinned === h.pinId) {
      await this.o.jsm.consumers.unpin(stream, consumer, ENGINES_GROUP).catch(() => undefined);
    }
  }

  /** Drain: announce it, hand every shard over, leave the membership. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.draining = true;
    clearInterval(this.timer);
    await this.busy.catch(() => undefined);
    this.stopped = true;
    await this.heartbeat().catch(() => undefined);
    await Promise.all(this.shards.map((s) => this.release(s)));
    await this.o.membership.delete(this.id).catch(() => undefined);
  }
}
