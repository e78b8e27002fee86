/**
 * Durable timers as NATS scheduled messages (ADR-51). A timer is one message with
 * `Nats-Schedule: @at <due time>` on its own subject `wf.timer.<type>.<id>.<timerKey>` in the
 * inbox stream; at the due time the server publishes its body to the workflow's shard inbox
 * subject `wf.in.<shard>.timer.<type>.<id>`. Cancel = purge the timer's subject. Timers live in
 * JetStream, not in engine memory: they survive engine restarts and cost no engine RAM.
 *
 * `timerKey` is derived from the timer id *and the step that set it*: every setting of a timer
 * has its own subject. A cancel purges exactly the setting it cancels, and a re-performed outbox,
 * a late publish of a stale engine, a local twin's purge or the server's rollup of a fired
 * schedule touch only their own setting, never the live one.
 *
 * Precision: nats-server 2.15 fires schedules on a coarse tick (measured: 0-250 ms late,
 * uniformly). For short timers the engine that set one also keeps a local `setTimeout` (at most
 * `maxLocal` of them, only for delays up to `localHorizonMs`): when it fires, the engine publishes
 * the same timer message into the inbox itself and purges the schedule. Whichever copy arrives
 * second is recognised by the record (the timer is no longer pending) and ignored. So a timer is
 * as precise as a local timer while its engine lives, and as durable as JetStream when it dies.
 */
import { headers } from '@nats-io/transport-node';
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { MSGPACK, pack } from '../contracts/codec.js';
import { injectTrace } from '../tracing/index.js';
import { Header, type Effect, type TimerMessage, type WorkflowRecord } from '../contracts/wire.js';
import type { Logger } from '../engine/ports.js';
import { timerToken } from '../engine/proof.js';
import type { EffectHandler } from './effects.js';
import type { TopologyNames } from './topology.js';

export interface LocalTimerOptions {
  /** Only timers due within this horizon get a local twin (default 60 s). */
  localHorizonMs: number;
  /** At most this many local twins at once (default 20,000); beyond it, the server alone fires. */
  maxLocal: number;
}

export interface TimerHandlers extends Record<'timer' | 'cancelTimer', EffectHandler> {
  /** Clear every local twin (the durable schedules stay). */
  stop(): void;
  readonly localPending: number;
}

export function timerEffectHandlers(
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  logger: Logger,
  opts: Partial<LocalTimerOptions> = {},
): TimerHandlers {
  const s = names.subjects;
  const horizon = opts.localHorizonMs ?? 60_000;
  const maxLocal = opts.maxLocal ?? 20_000;
  const local = new Map<string, NodeJS.Timeout>();
  const msgpackHeaders = () => {
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    // The setting step's span (when traced): the step that applies the timer continues it.
    injectTrace(h);
    return h;
  };
  return {
    async timer(record: WorkflowRecord, e: Effect, msgId: string) {
      if (e.kind !== 'timer') return;
      const body = pack({
        timerId: e.timerId,
        step: e.step,
        event: e.event,
        dueAt: e.dueAt,
        ...(record.secret ? { token: timerToken(record.secret, e.timerId, e.step) } : {}),
      } satisfies TimerMessage);
      const subject = s.timer(record.type, record.id, e.timerKey);
      const target = s.shardInbox(record.shard, 'timer', record.type, record.id);
      await js.publish(subject, body, {
        msgID: msgId,
        headers: msgpackHeaders(),
        schedule: { specification: new Date(e.dueAt), target },
      });
      const wait = e.dueAt - Date.now();
      if (wait > horizon || local.size >= maxLocal) return;
      clearTimeout(local.get(subject));
      const t = setTimeout(
        () => {
          local.delete(subject);
          js.publish(target, body, { msgID: `fire.${msgId}`, headers: msgpackHeaders() })
            .then(() => jsm.streams.purge(names.inboxStream, { filter: subject }))
            .catch((err: unknown) =>
              logger.debug({ err, subject }, 'local timer twin failed; the schedule fires instead'),
            );
        },
        Math.max(0, wait) + 1, // setTimeout may fire up to 1 ms early by Date.now()
      );
      t.unref();
      local.set(subject, t);
    },
    async cancelTimer(record: WorkflowRecord, e: Effect) {
      if (e.kind !== 'cancelTimer') return;
      const subject = s.timer(record.type, record.id, e.timerKey);
      clearTimeout(local.get(subject));
      local.delete(subject);
      await jsm.streams.purge(names.inboxStream, { filter: subject });
    },
    stop() {
      for (const t of local.values()) clearTimeout(t);
      local.clear();
    },
    get localPending() {
      return local.size;
    },
  };
}
