/**
 * Removes stray messages from the timer subjects.
 *
 * Timer schedules live in the inbox stream on `<prefix>.timer.>` (a schedule's target must be in
 * its own stream). No shard consumer reads those subjects, so a plain publish there (no
 * `Nats-Schedule` header: a mistake or a forgery) would stay in the work-queue stream forever,
 * and the stream cannot refuse it. This one durable consumer (shared by every engine) sees each
 * message on the timer subjects once: a plain one is logged and acked (which deletes it); a
 * schedule is handed back with a delay past its due time, by which time the server has fired and
 * removed it, so it is never acked here. Its cost is one delivery per timer set.
 */
import type { JetStreamClient, JetStreamManager, JsMsg } from '@nats-io/jetstream';
import { AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { Header } from '../contracts/wire.js';
import type { Logger } from '../engine/ports.js';
import type { TopologyNames } from './topology.js';

/** Durable name of the consumer. */
export const TIMER_STRAYS_CONSUMER = 'timer-strays';
const HOUR_MS = 3_600_000;

/** Delay before a schedule is seen again: a minute past its due time, within [1 min, 1 day]. */
export function strayRecheckMs(scheduleHeader: string, now: number): number {
  const at = /^@at\s+(.+)$/.exec(scheduleHeader.trim());
  const due = at ? Date.parse(at[1]!) : NaN;
  const wait = Number.isNaN(due) ? HOUR_MS : due - now + 60_000;
  return Math.min(24 * HOUR_MS, Math.max(60_000, wait));
}

export async function sweepTimerStrays(
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  logger: Logger,
): Promise<{ stop(): Promise<void> }> {
  await jsm.consumers
    .add(names.inboxStream, {
      durable_name: TIMER_STRAYS_CONSUMER,
      description: 'jetflow: removes plain messages published on timer subjects',
      filter_subject: names.subjects.timersWildcard,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: HOUR_MS * 1_000_000,
      // Every pending timer is held here until it fires: no limit on outstanding messages.
      max_ack_pending: -1,
      max_deliver: -1,
    })
    .catch((err: unknown) => {
      if (!/already (exists|in use)/i.test(String((err as Error)?.message ?? err))) throw err;
    });
  const consumer = await js.consumers.get(names.inboxStream, TIMER_STRAYS_CONSUMER);
  const messages = await consumer.consume({ max_messages: 256 });
  const loop = (async () => {
    for await (const m of messages) handle(m);
  })();
  function handle(m: JsMsg): void {
    const schedule = m.headers?.get(Header.Schedule);
    if (schedule) {
      m.nak(strayRecheckMs(schedule, Date.now()));
      return;
    }
    logger.warn(
      { subject: m.subject, seq: m.seq, size: m.data.length },
      'plain message on a timer subject (only engines publish there, and only schedules): removed',
    );
    m.ack();
  }
  return {
    async stop() {
      messages.stop();
      await loop.catch(() => undefined);
    },
  };
}
