/** The operator view: engines, their liveness, which engine holds which shard, lag per shard. */
import type { NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager, type ConsumerInfo } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { liveEngines, membershipBucket, pinnedClientOf, type Member } from './membership.js';
import { topologyNames } from './topology.js';

export interface ShardStatus {
  shard: number;
  /** Engine that consumes the shard (by its heartbeat), if any. */
  holder: string | undefined;
  /** Engines that claim the shard: more than one means a hand-over is in progress. */
  claimedBy: string[];
  /** The server's pin for the shard's consumer, and whose it is. */
  pinnedClientId: string | undefined;
  pinnedEngine: string | undefined;
  /** Messages not yet delivered plus delivered and not yet acknowledged. */
  lag: number;
  pending: number;
  ackPending: number;
}

export interface SystemStatus {
  /** Live engines; `heartbeatAgeMs` is measured by the server's clock (see `readMembers`). */
  engines: Member[];
  shards: ShardStatus[];
}

/**
 * Collect the view. Engines whose heartbeat is older than `staleAfterMs` (half the engines'
 * `failoverMs`) are left out: the other engines no longer count them either.
 */
export async function systemStatus(
  nc: NatsConnection,
  prefix: string,
  shards: number,
  staleAfterMs = 5_000,
): Promise<SystemStatus> {
  const names = topologyNames(prefix);
  const jsm = await jetstreamManager(nc);
  const kv = await new Kvm(nc).open(membershipBucket(names));
  const engines = await liveEngines(kv, staleAfterMs).catch(() => [] as Member[]);
  const infos = new Map<string, ConsumerInfo>();
  for await (const ci of jsm.consumers.list(names.inboxStream)) infos.set(ci.name, ci);
  const out: ShardStatus[] = [];
  for (let s = 0; s < shards; s++) {
    const info = infos.get(names.shardConsumer(s));
    const pin = pinnedClientOf(info);
    const claiming = engines.filter((e) => e.shards.includes(s));
    const claimedBy = claiming.map((e) => e.name);
    // During a hand-over the old owner still lists the shard as releasing.
    const holder = claiming.find((e) => !e.releasing?.includes(s)) ?? claiming[0];
    out.push({
      shard: s,
      holder: holder?.name,
      claimedBy,
      pinnedClientId: pin,
      pinnedEngine: pin ? engines.find((e) => e.pins[s] === pin)?.name : undefined,
      pending: info?.num_pending ?? 0,
      ackPending: info?.num_ack_pending ?? 0,
      lag: (info?.num_pending ?? 0) + (info?.num_ack_pending ?? 0),
    });
  }
  return { engines, shards: out };
}

/** Plain-text rendering for `jetflow status`. */
export function formatStatus(st: SystemStatus): string {
  const lines: string[] = [];
  lines.push(`engines (${st.engines.length} live):`);
  lines.push(
    '  NAME                          ID                          PID      HEARTBEAT  SHARDS  STATE',
  );
  for (const e of st.engines) {
    lines.push(
      `  ${e.name.padEnd(30).slice(0, 30)}${e.id.padEnd(28)}${String(e.pid).padEnd(9)}${`${e.heartbeatAgeMs} ms`.padEnd(11)}${String(e.shards.length).padEnd(8)}${e.draining ? 'draining' : 'live'}`,
    );
  }
  lines.push('shards:');
  lines.push('  SHARD  HOLDER                          PINNED TO                       LAG');
  for (const s of st.shards) {
    const holder = s.claimedBy.length > 1 ? `${s.claimedBy.join(',')} (moving)` : (s.holder ?? '-');
    lines.push(
      `  ${String(s.shard).padEnd(7)}${holder.padEnd(32).slice(0, 32)}${(s.pinnedEngine ?? (s.pinnedClientId ? '(unknown)' : '-')).padEnd(32).slice(0, 32)}${s.lag}`,
    );
  }
  return lines.join('\n');
}

/** One activity queue: its consumer's counts and in-flight limit (the console's overview). */
export interface QueueStatus {
  queue: string;
  /** Tasks waiting to be delivered. */
  pending: number;
  /** Delivered to a worker, not yet acknowledged. */
  inFlight: number;
  /** The queue's global in-flight limit (`max_ack_pending`; -1: none). */
  limit: number;
}

/** Every activity queue of `prefix` (consumers `queue-<name>` on the tasks stream). */
export async function queueStatus(nc: NatsConnection, prefix: string): Promise<QueueStatus[]> {
  const names = topologyNames(prefix);
  const jsm = await jetstreamManager(nc);
  const out: QueueStatus[] = [];
  const mark = names.queueConsumer('');
  try {
    // Priority levels other than 3 have consumers `queue<level>-<queue>`: counted in their queue.
    const levels = new Map<string, { pending: number; inFlight: number }>();
    for await (const ci of jsm.consumers.list(names.tasksStream)) {
      const leveled = /^queue[1245]-(.+)$/.exec(ci.name);
      if (leveled) {
        const l = levels.get(leveled[1]!) ?? { pending: 0, inFlight: 0 };
        l.pending += ci.num_pending;
        l.inFlight += ci.num_ack_pending;
        levels.set(leveled[1]!, l);
        continue;
      }
      if (!ci.name.startsWith(mark)) continue;
      out.push({
        queue: ci.name.slice(mark.length),
        pending: ci.num_pending,
        inFlight: ci.num_ack_pending,
        limit: ci.config.max_ack_pending ?? -1,
      });
    }
    for (const q of out) {
      const l = levels.get(q.queue);
      if (l) {
        q.pending += l.pending;
        q.inFlight += l.inFlight;
      }
    }
  } catch {
    return out; // no tasks stream yet: no queues
  }
  return out.sort((a, b) => a.queue.localeCompare(b.queue));
}
