/**
 * NATS side of `jetflow migrate --apply` / `--revert`: what the migration runner reads (workflow
 * records from KV, one journal step entry, every record of the bucket) and where its job lives
 * (the bulk jobs bucket, see `src/nats/bulk.ts`). It writes records only through the admin verb.
 */
import type { JetStreamClient, JetStreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import type { JournalEntry, WorkflowRecord } from '../contracts/wire.js';
import { openBulkStore, type BulkStore } from './bulk.js';
import { createHistoryReader, createJournalReader } from './history.js';
import { createKvRecordStore } from './store.js';
import type { TopologyNames } from './topology.js';
import { scanRecords } from './visibility.js';

/** What the migration runner reads and where it keeps its job. */
export interface MigrationPorts {
  /** The workflow's record as stored now (undefined: none), with its KV revision. */
  record(
    type: string,
    id: string,
  ): Promise<{ record: WorkflowRecord; revision: number } | undefined>;
  /** The journal's step entry `step` of a workflow (undefined: not in the journal). */
  stepEntry(type: string, id: string, step: number): Promise<JournalEntry | undefined>;
  /** Every record of the bucket (latest revision of each), in batches. */
  scan(onRecord: (record: WorkflowRecord) => void): Promise<number>;
  jobs: BulkStore;
}

export async function openMigrationPorts(
  nc: NatsConnection,
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
): Promise<MigrationPorts> {
  const records = createKvRecordStore(await new Kvm(nc).open(names.bucket));
  const journal = createJournalReader(createHistoryReader(jsm, names));
  const jobs = await openBulkStore(nc, jsm, names);
  return {
    async record(type, id) {
      const got = await records.get(type, id);
      return got && { record: got.record, revision: got.revision };
    },
    stepEntry: (type, id, step) => journal.stepEntry(type, id, step),
    async scan(onRecord) {
      const r = await scanRecords(js, jsm, names, (batch) => {
        for (const rec of batch) onRecord(rec);
      });
      return r.scanned;
    },
    jobs,
  };
}
