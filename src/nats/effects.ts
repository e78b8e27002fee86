/** Performs outbox effects over NATS, each with a deterministic `Nats-Msg-Id`. */
import { headers, type NatsConnection } from '@nats-io/transport-node';
import type { JetStreamClient } from '@nats-io/jetstream';
import type { EffectSink, Logger } from '../engine/ports.js';
import { encodeBody, JSON_TYPE, MSGPACK, type BodyEncoding } from '../contracts/codec.js';
import {
  Header,
  type Effect,
  type EffectKind,
  type Notification,
  type WorkflowRecord,
} from '../contracts/wire.js';
import type { TopologyNames } from './topology.js';

/** A handler for effect kinds beyond notifications (activities, timers). */
export type EffectHandler = (
  record: WorkflowRecord,
  effect: Effect,
  msgId: string,
) => Promise<void>;

const enc = new TextEncoder();

/** Effects with the same key must be performed in order. */
function orderKey(e: Effect): string | undefined {
  switch (e.kind) {
    case 'timer':
    case 'cancelTimer':
      return `timer:${e.timerKey}`;
    case 'task':
      return `task:${e.task.taskKey}`;
    case 'stopTask':
      return `task:${e.taskKey}`;
    default:
      return undefined;
  }
}

export function createEffectSink(
  nc: NatsConnection,
  js: JetStreamClient,
  names: TopologyNames,
  logger: Logger,
  handlers: Partial<Record<EffectKind, EffectHandler>> = {},
): EffectSink {
  const s = names.subjects;
  const jsonHeaders = () => {
    const h = headers();
    h.set(Header.ContentType, JSON_TYPE);
    return h;
  };
  const unhandled = new Set<EffectKind>();
  const notify = async (notification: Notification, msgId: string): Promise<void> => {
    await js.publish(
      s.events(notification.workflowType, notification.id),
      enc.encode(JSON.stringify(notification)),
      { msgID: msgId, headers: jsonHeaders() },
    );
  };
  return {
    async perform(record, effects) {
      const base = `${record.type}.${record.id}.${record.step}`;
      // Effects on the same timer or task run in outbox order (a re-set timer is purged, then
      // scheduled again); all others run concurrently.
      const chains = new Map<string, Promise<void>>();
      const run = async (e: Effect, i: number) => {
        const msgId = `${base}.${i}`;
        if (e.kind === 'notify') return notify(e.notification, msgId);
        const h = handlers[e.kind];
        if (h) return h(record, e, msgId);
        if (!unhandled.has(e.kind)) {
          unhandled.add(e.kind);
          logger.warn(
            { kind: e.kind },
            'no handler for this effect kind on this engine; it stays recorded in the outbox',
          );
        }
      };
      effects.forEach((e, i) => {
        const key = orderKey(e) ?? `#${i}`;
        chains.set(
          key,
          (chains.get(key) ?? Promise.resolve()).then(() => run(e, i)),
        );
      });
      await Promise.all(chains.values());
    },
    notify,
    reply(subject: string, encoding: BodyEncoding, body: unknown, errorCode?: string) {
      const h = headers();
      h.set(Header.ContentType, encoding === 'msgpack' ? MSGPACK : JSON_TYPE);
      if (errorCode) h.set(Header.ErrorCode, errorCode);
      try {
        nc.publish(subject, encodeBody(body, encoding), { headers: h });
      } catch (err) {
        logger.warn({ err, subject }, 'reply not sent');
      }
    },
  };
}
