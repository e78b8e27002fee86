/** Workflow records in a JetStream KV bucket, with compare-and-set on the revision. */
import type { KV } from '@nats-io/kv';
import { JetStreamApiError, type JetStreamClient } from '@nats-io/jetstream';
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

/** Retention of finished records: written with a per-message TTL (`Nats-TTL`). */
export interface RecordRetention {
  js: JetStreamClient;
  /** The bucket's name (`<prefix>_workflows`); records are on `$KV.<bucket>.<type>.<id>`. */
  bucket: string;
  /** TTL of every write of a finished record; 0 keeps finished records forever. */
  finishedRetentionMs: number;
}

const FINISHED = new Set(['completed', 'failed', 'canceled']);

/** The server's TTL syntax: whole seconds (its resolution), rounded up. */
export function ttlOf(ms: number): string {
  return `${Math.max(1, Math.ceil(ms / 1000))}s`;
}

/**
 * Records in KV. Reads go to the stream leader when the bucket has `allow_direct: false` (as
 * `ensureTopology` creates it): a follower's direct get may lag. Errors are normalised: a lost
 * compare-and-set is a `ConflictError`, a record over `max_payload` a `TerminalError` with code
 * `payload_too_large`, an outage a `RetryableError`.
 *
 * With `retention`, every write of a finished record (`completed`, `failed`, `canceled`) carries
 * a per-message TTL: the server removes the record `finishedRetentionMs` after the workflow's
 * last write, and the key is then free (a `start` creates a new workflow with that id).
 */
export function createKvRecordStore(kv: KV, retention?: RecordRetention): RecordStore {
  const ttl =
    retention && retention.finishedRetentionMs > 0 ? ttlOf(retention.finishedRetentionMs) : '';
  /**
   * A write of a finished record: the KV subject written directly, with the TTL and the same
   * compare-and-set header the KV client sets (`Nats-Expected-Last-Subject-Sequence`; 0 for a
   * create). The server deletes the record `ttl` after this write; any later write of the
   * (still finished) record starts the clock again.
   */
  const writeFinished = async (record: WorkflowRecord, data: Uint8Array, expected: number) => {
    const ack = await retention!.js.publish(
      `$KV.${retention!.bucket}.${recordKey(record.type, record.id)}`,
      data,
      { expect: { lastSubjectSequence: expected }, ttl },
    );
    return ack.seq;
  };
  const expires = (record: WorkflowRecord) => ttl !== '' && FINISHED.has(record.status);
  return {
    async get(type, id): Promise<StoredRecord | undefined> {
      let e;
      try {
        e = await kv.get(recordKey(type, id));
      } catch (err) {
        throw toJetflowError(err, { workflowId: id, workflowType: type });
      }
      if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
      return {
        record: unpack(e.value) as WorkflowRecord,
        revision: e.revision,
        bytes: e.value.length,
      };
    },
    async create(record) {
      const data = encode(record);
      try {
        const revision = expires(record)
          ? await writeFinished(record, data, 0)
          : await kv.create(recordKey(record.type, record.id), data);
        return { record, revision, bytes: data.length };
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
        const next = expires(record)
          ? await writeFinished(record, data, revision)
          : await kv.update(recordKey(record.type, record.id), data, revision);
        return { record, revision: next, bytes: data.length };
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
