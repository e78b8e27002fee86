/**
 * Reads the journal in stream order for offline tools (`jetflow verify`, `jetflow test-gen`): an
 * ordered consumer over `<PREFIX>_HISTORY`, filtered to a type or to given workflows, from the
 * start or from a time. Reads only; ends at the stream's end as it was when reading began.
 */
import { DeliverPolicy, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import { unpack } from '../contracts/codec.js';
import { readEntry } from '../engine/journal.js';
import type { JournalEntry, WorkflowRecord } from '../contracts/wire.js';
import { scanRecords } from './visibility.js';
import { topologyNames, type TopologyNames } from './topology.js';
import { connectNats, toJetflowError } from './connection.js';

/** Which journal entries to read. */
export interface JournalSelection {
  /** Only workflows of this type. */
  type?: string;
  /** Only these workflows (with `type`). */
  ids?: readonly string[];
  /** Only entries stored at or after this time (epoch ms). */
  sinceMs?: number;
}

/** Subject filters of a selection (at most this many ids are filtered by subject). */
const MAX_ID_FILTERS = 200;

/**
 * Hand every selected entry to `onEntry`, in stream order (so in step order per workflow).
 * Entries that do not decode are counted and skipped. Resolves with what was read.
 */
export async function readJournal(
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  sel: JournalSelection,
  onEntry: (entry: JournalEntry) => void,
): Promise<{ read: number; undecodable: number }> {
  const s = names.subjects;
  const idSet = sel.ids ? new Set(sel.ids) : undefined;
  let filters: string[];
  if (sel.ids && sel.type && sel.ids.length <= MAX_ID_FILTERS)
    filters = sel.ids.map((id) => s.journal(sel.type!, id));
  else if (sel.type) filters = [s.journal(sel.type, '*')];
  else filters = [s.journalWildcard];
  let last: number;
  try {
    const info = await jsm.streams.info(names.historyStream);
    last = info.state.last_seq;
    if (info.state.messages === 0) return { read: 0, undecodable: 0 };
  } catch (err) {
    throw toJetflowError(err, {});
  }
  const consumer = await js.consumers.get(names.historyStream, {
    filter_subjects: filters,
    ...(sel.sinceMs !== undefined
      ? {
          deliver_policy: DeliverPolicy.StartTime,
          opt_start_time: new Date(sel.sinceMs).toISOString(),
        }
      : { deliver_policy: DeliverPolicy.All }),
  });
  let read = 0;
  let undecodable = 0;
  for (;;) {
    const batch = await consumer.fetch({ max_messages: 2_000, expires: 2_000 });
    let got = 0;
    let done = false;
    for await (const m of batch) {
      got++;
      if (m.seq > last) {
        done = true;
        break;
      }
      let entry: JournalEntry;
      try {
        entry = readEntry(unpack(m.data) as JournalEntry);
      } catch {
        undecodable++;
        continue;
      }
      if (idSet && !idSet.has(entry.id)) continue;
      read++;
      onEntry(entry);
      if (m.info.pending === 0 || m.seq >= last) {
        done = true;
        break;
      }
    }
    if (done || got === 0) break;
  }
  return { read, undecodable };
}

/** Connect, read the selected entries of prefix `prefix` into `onEntry`, close. */
export async function scanJournal(
  servers: readonly string[],
  prefix: string,
  sel: JournalSelection,
  onEntry: (entry: JournalEntry) => void,
): Promise<{ read: number; undecodable: number }> {
  const { nc, js, jsm } = await connectNats(servers, 'jetflow-journal-scan');
  try {
    return await readJournal(js, jsm, topologyNames(prefix), sel, onEntry);
  } finally {
    await nc.close();
  }
}

/** Connect, hand every workflow record of prefix `prefix` to `onRecord` (reads only), close. */
export async function scanWorkflowRecords(
  servers: readonly string[],
  prefix: string,
  onRecord: (record: WorkflowRecord) => void,
): Promise<{ scanned: number }> {
  const { nc, js, jsm } = await connectNats(servers, 'jetflow-record-scan');
  try {
    const r = await scanRecords(js, jsm, topologyNames(prefix), (batch) => {
      for (const rec of batch) onRecord(rec);
    });
    return { scanned: r.scanned };
  } finally {
    await nc.close();
  }
}
