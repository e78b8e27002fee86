/**
 * Which shards this engine consumes, kept in step with the live engines.
 *
 * Three loops, each on its own timer so that none waits behind another:
 * - **heartbeat** (every `failoverMs / 10`): this engine's entry in the membership bucket, with
 *   the shards it holds and the server's pin id for each. Nothing else ever delays it, so a
 *   busy or releasing engine is never mistaken for a dead one.
 * - **rebalance** (same period): read the live engines, compute the balanced assignment, start
 *   consuming shards gained (and publish a claim so the server pins this engine) and start
 *   releasing shards lost. Releases run in the background, bounded in time.
 * - **pin check** (every `failoverMs / 4`): compare each held shard's server pin with this
 *   engine's own pin id and repair a difference (see {@link ShardManager.checkPins}).
 *
 * Hand-over: the old owner stops fetching, waits for its in-flight steps (at most
 * `failoverMs / 2`), lets its pull requests expire, and only then stops advertising the shard.
 * The new owner unpins the old owner's pin once the old owner no longer advertises the shard (or
 * is dead), and claims. The old owner never unpins, so it cannot clear the new owner's pin.
 *
 * With `shardIds` configured explicitly, the assignment is static (those shards, always).
 */
import { nuid, type NatsConnection } from '@nats-io/transport-node';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import type { Logger } from '../engine/ports.js';
import type { Processor } from '../engine/processor.js';
import { consumeShard, ENGINES_GROUP, serverPins, type ShardHandle } from '../nats/inbox.js';
import { assignShards, MembershipView, type EngineInfo, type Member } from '../nats/membership.js';
import { pullExpiryMs, type TopologyNames } from '../nats/topology.js';

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
  /** Re-create a shard's consumer from the topology table (after it was deleted or changed). */
  repairConsumer?: (shard: number) => Promise<void>;
  /** Called when a shard is gained, before its first message is handled. */
  onGained?: (shard: number) => void;
  /** Inbox lag of each delivered message (see `consumeShard`). */
  lag?: (shard: number, seconds: number) => void;
  /** More to advertise on every heartbeat (the triggers this engine can hold and holds). */
  extraInfo?: () => Partial<EngineInfo>;
}

/** What the pin check did, for tests and logs. */
export interface PinStats {
  claims: number;
  unpins: number;
  checks: number;
}

export class ShardManager {
  readonly id = `${Date.now().toString(36)}-${nuid.next()}`;
  private readonly held = new Map<number, ShardHandle>();
  private readonly releasing = new Set<number>();
  private readonly releases = new Set<Promise<void>>();
  private readonly claimedAt = new Map<number, number>();
  /** Shards whose server pin was unknown to every engine at the last check, with that pin id. */
  private readonly suspects = new Map<number, string>();
  /** Pins of shards released lately, and when: advertised so the new owner unpins at once. */
  private readonly released = new Map<number, { pin: string; at: number }>();
  private timers: NodeJS.Timeout[] = [];
  private busy: Promise<void> = Promise.resolve();
  private ticking = false;
  private beating: Promise<void> | undefined;
  private draining = false;
  private stopped = false;
  private readonly startedAt = new Date().toISOString();
  readonly pinStats: PinStats = { claims: 0, unpins: 0, checks: 0 };

  /** Pull expiry: at most a third of the consumers' priority timeout, so an idle pin is kept. */
  private readonly expiresMs: number;
  /** How long a release waits for in-flight steps before leaving them to redelivery. */
  private readonly releaseGraceMs: number;

  constructor(private readonly o: ShardManagerOptions) {
    this.expiresMs = pullExpiryMs(o.failoverMs);
    this.releaseGraceMs = Math.floor(o.failoverMs / 2);
  }

  /** Join, take the first assignment, and keep it current. */
  async start(): Promise<void> {
    await this.heartbeat();
    this.view = await MembershipView.open(this.o.membership, (err) =>
      this.o.logger.warn({ err }, 'membership watch failed'),
    );
    await this.rebalance();
    const every = Math.max(100, Math.floor(this.o.failoverMs / 10));
    this.timers.push(
      setInterval(() => void this.beat(), every),
      setInterval(() => this.serial(() => this.rebalance()), every),
      setInterval(
        () => this.serial(() => this.checkPins()),
        Math.max(250, Math.floor(this.o.failoverMs / 4)),
      ),
    );
  }

  get shards(): number[] {
    return [...this.held.keys()].sort((a, b) => a - b);
  }

  /** One rebalance or pin check at a time; a tick that finds the previous one running is skipped. */
  private serial(f: () => Promise<void>): void {
    if (this.ticking || this.stopped) return;
    this.ticking = true;
    this.busy = f()
      .catch((err: unknown) => this.o.logger.warn({ err }, 'shard tick failed'))
      .finally(() => (this.ticking = false));
  }

  /** A heartbeat on its own timer; skipped while the previous one is still in flight. */
  private beat(): void {
    if (this.beating || this.stopped) return;
    this.beating = this.heartbeat()
      .catch((err: unknown) => this.o.logger.warn({ err }, 'heartbeat failed'))
      .finally(() => (this.beating = undefined));
  }

  private info(): EngineInfo {
    const pins: Record<number, string> = {};
    for (const [s, h] of this.held) if (h.pinId) pins[s] = h.pinId;
    const released: Record<number, string> = {};
    const now = Date.now();
    for (const [s, r] of this.released) {
      if (now - r.at > this.o.failoverMs) this.released.delete(s);
      else if (!this.held.has(s)) released[s] = r.pin;
    }
    return {
      id: this.id,
      name: this.o.name,
      pid: process.pid,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
      shards: this.shards,
      releasing: [...this.releasing].sort((a, b) => a - b),
      pins,
      released,
      draining: this.draining,
      ...this.o.extraInfo?.(),
    };
  }

  /** The engines of the membership (live or lately seen), as of the last watch update. */
  liveMembers(): Member[] {
    const m = this.members();
    // Before our own first heartbeat is seen by the watch, count ourselves in.
    return m.some((e) => e.id === this.id)
      ? m
      : [...m, { ...this.info(), heartbeatAgeMs: 0, live: true }];
  }

  get isDraining(): boolean {
    return this.draining;
  }

  private async heartbeat(): Promise<void> {
    await this.o.membership.put(this.id, JSON.stringify(this.info()));
  }

  private view: MembershipView | undefined;

  private members(): Member[] {
    return this.view?.members(this.o.failoverMs / 2) ?? [];
  }

  private async rebalance(): Promise<void> {
    let want: number[];
    if (this.o.staticShardIds) {
      want = this.draining ? [] : [...this.o.staticShardIds];
    } else {
      const live = this.members().filter((e) => e.live);
      const me = live.find((e) => e.id === this.id);
      // Our own draining flag is the current one, not the one of our last heartbeat.
      const view = me ? live : [...live, this.info()];
      want = this.draining
        ? []
        : assignShards(
            view.map((e) => (e.id === this.id ? { id: e.id, draining: this.draining } : e)),
            this.o.shards,
            this.id,
          );
    }
    const wantSet = new Set(want);
    const lost = this.shards.filter((s) => !wantSet.has(s) && !this.releasing.has(s));
    const gained = want.filter((s) => !this.held.has(s));
    if (lost.length === 0 && gained.length === 0) return;
    // Gains first: a dead engine's shards are taken without waiting for our own releases.
    // Pinning keeps one consumer per shard meanwhile.
    await Promise.all(gained.map((s) => this.gain(s)));
    for (const s of lost) this.release(s);
    this.o.logger.info({ gained, lost, holding: this.held.size }, 'shard assignment changed');
    this.beat();
  }

  private async gain(shard: number): Promise<void> {
    this.o.onGained?.(shard);
    const h = await consumeShard({
      ...this.o,
      shard,
      group: ENGINES_GROUP,
      expiresMs: this.expiresMs,
      repair: this.o.repairConsumer ? () => this.o.repairConsumer!(shard) : undefined,
    });
    this.held.set(shard, h);
    await this.claim(shard, h);
  }

  private async claim(shard: number, h: ShardHandle): Promise<void> {
    this.claimedAt.set(shard, Date.now());
    this.pinStats.claims++;
    await h.claim(this.id);
  }

  /**
   * Make every held shard pinned to this engine. For each held shard (not being released) whose
   * server pin is not this engine's own:
   * - no pin (lapsed while idle, cleared by a consumer leader change or a server restart): claim,
   *   so the server pins this engine now;
   * - the pin of another live engine that still advertises the shard (it is releasing it, or a
   *   static assignment overlaps): wait;
   * - the pin of an engine that is dead or no longer advertises the shard: unpin and claim;
   * - a pin no engine advertises, seen twice in a row (its engine's entry already expired): unpin
   *   and claim. (Seen once, it may be our own pin of a claim still in flight.)
   */
  async checkPins(): Promise<void> {
    if (this.stopped || this.held.size === 0) return;
    this.pinStats.checks++;
    const pins = await serverPins(this.o.jsm, this.o.names);
    const members = this.members();
    const now = Date.now();
    const recently = (s: number) =>
      now - (this.claimedAt.get(s) ?? 0) < Math.floor(this.o.failoverMs / 4);
    for (const [s, h] of this.held) {
      if (this.releasing.has(s) || this.stopped) continue;
      const pin = pins.get(s);
      if (pin && pin === h.pinId) {
        this.suspects.delete(s);
        continue;
      }
      if (!pin) {
        this.suspects.delete(s);
        if (!recently(s)) await this.claim(s, h);
        continue;
      }
      const owner = members.find(
        (m) => m.id !== this.id && (m.pins[s] === pin || m.released?.[s] === pin),
      );
      if (owner?.live && owner.shards.includes(s)) continue;
      if (!owner && this.suspects.get(s) !== pin) {
        this.suspects.set(s, pin);
        continue;
      }
      this.suspects.delete(s);
      this.o.logger.info(
        { shard: s, pin, owner: owner?.name, live: owner?.live },
        'unpinning a shard held here but pinned to an engine that no longer holds it',
      );
      this.pinStats.unpins++;
      await this.o.jsm.consumers
        .unpin(this.o.names.inboxStream, this.o.names.shardConsumer(s), ENGINES_GROUP)
        .catch((err: unknown) => this.o.logger.warn({ err, shard: s }, 'unpin failed'));
      await this.claim(s, h);
    }
  }

  /**
   * Stop consuming a shard in the background: stop fetching, finish in-flight steps (bounded),
   * let our pull requests expire, then stop advertising it. Until then the heartbeat still lists
   * the shard, so the new owner does not unpin us while a pull of ours could still be served.
   */
  private release(shard: number): void {
    const h = this.held.get(shard);
    if (!h || this.releasing.has(shard)) return;
    this.releasing.add(shard);
    const pin = h.pinId;
    const p = (async () => {
      try {
        await h.stop(this.releaseGraceMs);
        // Our last pull requests stay registered at the server until they expire; were the
        // shard unpinned now, the server could pin one of them and deliver to a subscription
        // that is gone (the message would wait for AckWait). Let them expire first — unless
        // this engine is stopping with no other live engine to take the shard over: then no
        // one unpins it before our connection is drained and its requests die with it.
        if (!this.stopped || this.othersLive())
          await new Promise((r) => setTimeout(r, this.expiresMs + 250));
      } finally {
        if (pin) this.released.set(shard, { pin, at: Date.now() });
        this.held.delete(shard);
        this.releasing.delete(shard);
        this.suspects.delete(shard);
        this.beat();
      }
    })().catch((err: unknown) => this.o.logger.warn({ err, shard }, 'shard release failed'));
    this.releases.add(p);
    void p.finally(() => this.releases.delete(p));
  }

  /** Drain: announce it, hand every shard over, leave the membership. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.draining = true;
    await this.busy.catch(() => undefined);
    for (const t of this.timers) clearInterval(t);
    this.stopped = true;
    await this.beating;
    await this.heartbeat().catch(() => undefined);
    for (const s of this.shards) this.release(s);
    await Promise.allSettled([...this.releases]);
    await this.heartbeat().catch(() => undefined);
    await this.awaitHandOver().catch(() => undefined);
    await this.o.membership.delete(this.id).catch(() => undefined);
    this.view?.stop();
  }

  /** Whether another live engine, not itself draining, could take our shards over. */
  private othersLive(): boolean {
    return this.members().some((m) => m.live && !m.draining && m.id !== this.id);
  }

  /**
   * Before leaving the membership, wait (at most `failoverMs / 2`) until the server no longer
   * pins our former pins, when another engine is there to take them over: our entry, which
   * lists them as released, lets the new owners unpin them at once.
   */
  private async awaitHandOver(): Promise<void> {
    const mine = new Set([...this.released.values()].map((r) => r.pin));
    if (mine.size === 0) return;
    if (!this.othersLive()) return;
    const deadline = Date.now() + this.o.failoverMs / 2;
    while (Date.now() < deadline) {
      const pins = await serverPins(this.o.jsm, this.o.names);
      if (![...pins.values()].some((p) => p !== undefined && mine.has(p))) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
