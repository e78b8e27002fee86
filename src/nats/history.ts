/**
 * Reads one workflow's journal from the history stream (direct gets by subject, in batches; any
 * replica may answer) and pages it for `<prefix>.history.<type>.<id>`.
 */
import type { JetStreamManager, StoredMsg } from '@nats-io/jetstream';
import { unpack } from '../contracts/codec.js';
import type { HistoryReply, JournalEntry } from '../contracts/wire.js';
import { HISTORY_MAX_LIMIT, HistoryPage, type HistoryQuery } from '../engine/journal.js';
import type { JournalReader } from '../engine/ports.js';
import type { TopologyNames } from './topology.js';
import { toJetflowError } from './connection.js';

const BATCH = 256;

export type HistoryReader = (type: string, id: string, q: HistoryQuery) => Promise<HistoryReply>;

/** True when the server said there is no (further) message for the subject. */
function isNoMessage(err: unknown): boolean {
  return err instanceof Error && /no message|not found|404/i.test(err.message);
}

export function createHistoryReader(jsm: JetStreamManager, names: TopologyNames): HistoryReader {
  return async (type, id, q) => {
    const subject = names.subjects.journal(type, id);
    const page = new HistoryPage(q);
    let seq = 1;
    for (;;) {
      let got = 0;
      let full = false;
      try {
        const it = await jsm.direct.getBatch(names.historyStream, {
          seq,
          next_by_subj: subject,
          batch: BATCH,
        });
        for await (const m of it as AsyncIterable<StoredMsg>) {
          got++;
          seq = m.seq + 1;
          let entry: JournalEntry;
          try {
            entry = unpack(m.data) as JournalEntry;
          } catch {
            continue; // not an entry jetflow wrote: skipped
          }
          if (!page.add(entry)) {
            full = true;
            break;
          }
        }
      } catch (err) {
        if (!isNoMessage(err)) throw toJetflowError(err, { workflowType: type, workflowId: id });
      }
      if (full || got < BATCH) break;
    }
    return page.reply();
  };
}

/** The journal as the engine's reset reads it: one step entry, through the history reader. */
export function createJournalReader(
  history: HistoryReader,
  jsm?: JetStreamManager,
  names?: TopologyNames,
): JournalReader {
  return {
    async stepEntry(type, id, step) {
      const page = await history(type, id, { fromStep: step, limit: HISTORY_MAX_LIMIT });
      return page.entries.find((e) => e.kind === 'step' && e.step === step);
    },
    ...(jsm && names
      ? {
          async lastStep(
            type: string,
            id: string,
          ): Promise<{ step: number; createdAt?: number } | undefined> {
            let m: StoredMsg | null;
            try {
              m = await jsm.direct.getMessage(names.historyStream, {
                last_by_subj: names.subjects.journal(type, id),
              });
            } catch (err) {
              if (isNoMessage(err)) return undefined;
              throw toJetflowError(err, { workflowType: type, workflowId: id });
            }
            if (!m) return undefined;
            try {
              const e = unpack(m.data) as { step?: unknown; createdAt?: unknown };
              if (typeof e.step !== 'number') return undefined;
              return typeof e.createdAt === 'number'
                ? { step: e.step, createdAt: e.createdAt }
                : { step: e.step };
            } catch {
              return undefined; // not an entry jetflow wrote
            }
          },
        }
      : {}),
  };
}
