/**
 * Activity tasks on JetStream: the engine side (publish a task, cancel it) and the queue
 * consumers workers pull from.
 */
import { headers, type NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
} from '@nats-io/jetstream';
import type { Logger } from '../engine/ports.js';
import { MSGPACK, pack } from '../contracts/codec.js';
import { Header, type Effect, type WorkflowRecord } from '../contracts/wire.js';
import type { EffectHandler } from './effects.js';
import type { TopologyNames } from './topology.js';

const ms = (n: number) => n * 1_000_000;

/** Effect handlers for `task` and `stopTask`. */
export function taskEffectHandlers(
  nc: NatsConnection,
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  logger: Logger,
): Record<'task' | 'stopTask', EffectHandler> {
  const s = names.subjects;
  return {
    async task(_record: WorkflowRecord, e: Effect) {
      if (e.kind !== 'task') return;
      const h = headers();
      h.set(Header.ContentType, MSGPACK);
      await js.publish(s.task(e.task.queue, e.task.taskKey), pack(e.task), {
        msgID: e.task.taskId,
        headers: h,
      });
    },
    async stopTask(_record: WorkflowRecord, e: Effect) {
      if (e.kind !== 'stopTask') return;
      // A queued task is removed before any worker starts it; a running attempt is told to abort.
      await jsm.streams.purge(names.tasksStream, { filter: s.task(e.queue, e.taskKey) });
      nc.publish(s.taskControl(e.queue), pack({ cancel: e.taskId }));
      logger.debug({ taskId: e.taskId }, 'activity canceled');
    },
  };
}

/** Per-queue settings that live on the queue's consumer (server-enforced). */
export interface QueueSettings {
  /**
   * Max tasks of this queue in flight across all workers (consumer `MaxAckPending`): the global
   * concurrency limit, e.g. "only 2 connections to the bank".
   */
  maxInFlight: number;
  /**
   * How long a task held by a dead worker waits before redelivery (consumer `AckWait`). Live
   * workers extend it while an attempt runs; heartbeating activities extend it by heartbeat.
   */
  ackWaitMs: number;
}

export const DEFAULT_QUEUE_SETTINGS: QueueSettings = Object.freeze({
  maxInFlight: 1000,
  ackWaitMs: 30_000,
});

/** Create or update the durable consumer of one queue. Idempotent; the last writer's settings win. */
export async function ensureQueueConsumer(
  jsm: JetStreamManager,
  names: TopologyNames,
  queue: string,
  settings: QueueSettings,
): Promise<void> {
  const durable = names.queueConsumer(queue);
  const config = {
    durable_name: durable,
    description: `jetflow activity queue ${queue}`,
    filter_subject: names.subjects.taskFilter(queue),
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: ms(settings.ackWaitMs),
    max_ack_pending: settings.maxInFlight,
    max_deliver: -1,
  };
  try {
    await jsm.consumers.info(names.tasksStream, durable);
    await jsm.consumers.update(names.tasksStream, durable, {
      ack_wait: config.ack_wait,
      max_ack_pending: config.max_ack_pending,
      description: config.description,
    });
  } catch {
    await jsm.consumers.add(names.tasksStream, config);
  }
}
