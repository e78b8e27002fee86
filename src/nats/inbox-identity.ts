/**
 * Identity of the inbox stream: its creation time. A recreated stream (disaster recovery, a
 * manual `stream rm`) restarts its sequences at 1; records store the identity next to `lastSeq`
 * so that a sequence is only ever compared with sequences of the same incarnation.
 */
import type { JetStreamManager } from '@nats-io/jetstream';
import type { InboxIdentity } from '../engine/ports.js';
import type { TopologyNames } from './topology.js';

/** Reads the inbox stream's `created` timestamp; cached for `maxAgeMs` unless asked fresh. */
export function createInboxIdentity(
  jsm: JetStreamManager,
  names: TopologyNames,
  maxAgeMs = 1_000,
): InboxIdentity {
  let cached: { value: string; at: number } | undefined;
  let pending: Promise<string> | undefined;
  const read = (): Promise<string> => {
    pending ??= jsm.streams
      .info(names.inboxStream)
      .then((info) => {
        cached = { value: info.created, at: Date.now() };
        return info.created;
      })
      .finally(() => {
        pending = undefined;
      });
    return pending;
  };
  return {
    current(fresh = false) {
      if (!fresh && cached && Date.now() - cached.at < maxAgeMs) {
        return Promise.resolve(cached.value);
      }
      return read();
    },
  };
}
