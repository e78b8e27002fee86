/** Workflow records in a JetStream KV bucket, with compare-and-set on the revision. */
import type { KV } from '@nats-io/kv';
import { JetStreamApiError } from '@nats-io/jetstream';
import type { RecordStore, StoredRecord } from '../engine/ports.js';
import { pack, unpack } from '../contracts/codec.js';
import type { WorkflowRecord } from '../contracts/wire.js';
import { ConflictError } from '../errors.js';

const WRONG_LAST_SEQUENCE = new Set([10071, 10164]);

/** True when a KV write lost its compare-and-set (or a create found the key). */
export function isCasFailure(err: unknown): boolean {
  if (err instanceof JetStreamApiError && WRONG_LAST_SEQUENCE.has(err.code)) return true;
  return err instanceof Error && /wrong last sequence|key exists/i.test(err.message);
}

export function recordKey(type: string, id: string): string {
  return `${type}.${id}`;
}

export function createKvRecordStore(kv: KV): RecordStore {
  return {
    async get(type, id): Promise<StoredRecord | undefined> {
      const e = await kv.get(recordKey(type, id));
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      return { record: unpack(e.value) as WorkflowRecord, revision: e.revision };
    },
    async create(record) {
      try {
        return await kv.create(recordKey(record.type, record.id), pack(record));
      } catch (err) {
        if (isCasFailure(err)) {
          throw new ConflictError(`workflow ${record.type}/${record.id} already exists`, {
            workflowId: record.id,
            workflowType: record.type,
            cause: err,
          });
        }
        throw err;
      }
    },
    async update(record, revision) {
      try {
        return await kv.update(recordKey(record.type, record.id), pack(record), revision);
      } catch (err) {
        if (isCasFailure(err)) {
          throw new ConflictError(
            `workflow ${record.type}/${record.id} changed since revision ${revision}`,
            { workflowId: record.id, workflowType: record.type, cause: err },
          );
        }
        throw err;
      }
    },
  };
}
