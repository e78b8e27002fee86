/** Waiters for workflows' ends, fed by one subscription on every notification of a prefix. */
import type { NatsConnection } from '@nats-io/transport-node';
import type { Notification } from '../src/contracts/wire.js';

/** `wait(type, id)` resolves with the workflow's `completed` or `failed` notification. */
export function completions(
  nc: NatsConnection,
  prefix: string,
): (type: string, id: string) => Promise<Notification> {
  const waiters = new Map<string, (n: Notification) => void>();
  nc.subscribe(`${prefix}.events.*.*`, {
    callback: (_e, m) => {
      const n = m.json<Notification>();
      if (n.type !== 'completed' && n.type !== 'failed') return;
      waiters.get(`${n.workflowType}.${n.id}`)?.(n);
    },
  });
  return (type, id) => new Promise<Notification>((ok) => waiters.set(`${type}.${id}`, ok));
}
