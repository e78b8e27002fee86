/**
 * Removes stray messages from the timer subjects.
 *
 * Timer schedules live in the inbox stream on `<prefix>.timer.>` (a schedule's target must be in
 * its own stream). No shard consumer reads those subjects, so a plain publish there (no
 * `Nats-Schedule` header: a mistake or a forgery) would stay in the work-queue stream forever,
 * and the stream cannot refuse it. Every `timerStraySweepMs` each engine reads the messages stored
 * on those subjects since its last sweep (stream gets by subject, from a cursor: each message is
 * read once per engine) and deletes the plain ones by sequence; schedules are left alone.
 *
 * Why not a consumer: a durable consumer over the timer subjects holds every pending timer as an
 * unacknowledged delivery, and the server's cost of storing a message then grows with that count
 * (measured 2026-12-03, 16 shards, starts of workflows with a 1-hour timer: server CPU per start
 * 0.2 ms without such a consumer, 1.4 → 4.3 → 12.9 → 14.0 ms per block of 5,000 with one,
 * whether it naks the schedules with a delay or leaves them pending; 100,000 idle workflows did
 * not finish). Reads by sequence leave no state in the server.
 */
import type { JetStreamManager, StoredMsg } from '@nats-io/jetstream';
import { Header } from '../contracts/wire.js';
import type { Logger } from '../engine/ports.js';
import type { TopologyNames } from './topology.js';

/** The durable consumer earlier versions used for this; deleted at start (see above). */
export const TIMER_STRAYS_CONSUMER = 'timer-strays';

export interface TimerStraySweep {
  /** Stop sweeping (waits for a sweep under way). */
  stop(): Promise<void>;
}

export async function sweepTimerStrays(
  jsm: JetStreamManager,
  names: TopologyNames,
  logger: Logger,
  intervalMs: number,
): Promise<TimerStraySweep> {
  await jsm.consumers.delete(names.inboxStream, TIMER_STRAYS_CONSUMER).catch(() => undefined);
  let cursor = 1;
  let running: Promise<number> | undefined;
  let stopped = false;
  const once = async (): Promise<number> => {
    let removed = 0;
    while (!stopped) {
      let m: StoredMsg | null;
      try {
        m = await jsm.streams.getMessage(names.inboxStream, {
          seq: cursor,
          next_by_subj: names.subjects.timersWildcard,
        } as unknown as { seq: number });
      } catch (err) {
        // No message at or after the cursor is a 404 from the server: the sweep is done.
        if (/no message found|not found/i.test(String((err as Error)?.message ?? err))) break;
        throw err;
      }
      if (!m) break;
      cursor = m.seq + 1;
      if (m.header?.get(Header.Schedule)) continue;
      logger.warn(
        { subject: m.subject, seq: m.seq, size: m.data.length },
        'plain message on a timer subject (only engines publish there, and only schedules): removed',
      );
      await jsm.streams.deleteMessage(names.inboxStream, m.seq, false).catch(() => undefined);
      removed++;
    }
    return removed;
  };
  const tick = () => {
    running = once();
    running
      .catch((err: unknown) => logger.warn({ err }, 'timer stray sweep failed; next one later'))
      .finally(() => {
        running = undefined;
        if (!stopped) timer = setTimeout(tick, intervalMs);
      });
  };
  let timer: ReturnType<typeof setTimeout> | undefined = setTimeout(tick, 0);
  return {
    async stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = undefined;
      await running?.catch(() => undefined);
    },
  };
}
