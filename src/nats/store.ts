/** Workflow records in a JetStream KV bucket, with compare-and-set on the revision. */
import type { KV } from '@nats-io/kv';
import { JetStreamApiError } from '@nats-io/jetstream';
import type { RecordStore, StoredRecord } from '../engine/ports.js';
import { pack, unpack } from '../contracts/codec.js';
import type { WorkflowRecord } from '../contracts/wire.js';
import { ConflictError, ErrorCode, TerminalError } from '../errors.js';
import { toJetflowError } from './connection.js';

const WRONG_LAST_SEQUENCE = new Set([10071, 10164]);

/** True when a KV write lost its compare-and-set (or a create found the key). */
export function isCasFailure(err: unknown): boolean {
  if (err instanceof JetStreamApiError && WRONG_LAST_SEQUENCE.has(err.code)) return true;
  return err instanceof Error && /wrong last sequence|key exists/i.test(err.message);
}

export function recordKey(type: string, id: string): string {
  return `${type}.${id}`;
}

/** The record as bytes; a record that cannot be encoded never will be (terminal). */
function encode(record: WorkflowRecord): Uint8Array {
  try {
    return pack(record);
  } catch (cause) {
    throw new TerminalError(
      `workflow ${record.type}/${record.id}: the record cannot be serialised: ${String((cause as Error)?.message ?? cause)}`,
      { code: ErrorCode.Internal, workflowId: record.id, workflowType: record.type, cause },
    );
  }
}

/**
 * Records in KV. Reads go to the stream leader when the bucket has `allow_direct: false` (as
 * `ensureTopology` creates it): a follower's direct get may lag. Errors are normalised: a lost
 * compare-and-set is a `ConflictError`, a record over `max_payload` a `TerminalError` with code
 * `payload_too_large`, an outage a `RetryableError`.
 */
export function createKvRecordStore(kv: KV): RecordStore {
  return {
    async get(type, id): Promise<StoredRecord | undefined> {
      let e;
      try {
        e = await kv.get(recordKey(type, id));
      } catch (err) {
        throw toJetflowError(err, { workflowId: id, workflowType: type });
      }
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      return { record: unpack(e.value) as WorkflowRecord, revision: e.revision };
    },
    async create(record) {
      const data = encode(record);
      try {
        return await kv.create(recordKey(record.type, record.id), data);
      } catch (err) {
        if (isCasFailure(err)) {
          throw new ConflictError(`workflow ${record.type}/${record.id} already exists`, {
            workflowId: record.id,
            workflowType: record.type,
            cause: err,
          });
        }
        throw toJetflowError(err, { workflowId: record.id, workflowType: record.type });
      }
    },
    async update(record, revision) {
      const data = encode(record);
      try {
        return await kv.update(recordKey(record.type, record.id), data, revision);
      } catch (err) {
        if (isCasFailure(err)) {
          throw new ConflictError(
            `workflow ${record.type}/${record.id} changed since revision ${revision}`,
            { workflowId: record.id, workflowType: record.type, cause: err },
          );
        }
        throw toJetflowError(err, { workflowId: record.id, workflowType: record.type });
      }
    },
  };
}
