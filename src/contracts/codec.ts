/**
 * Body encodings. Public bodies are JSON unless `Content-Type: application/msgpack`; internal
 * messages and stored records are msgpack (msgpackr with `useRecords: false`, so any msgpack
 * reader decodes them).
 */
import { Packr } from 'msgpackr';
import { BadRequestError, ErrorCode } from '../errors.js';

export const MSGPACK = 'application/msgpack';
export const JSON_TYPE = 'application/json';

const packr = new Packr({ useRecords: false, moreTypes: false, int64AsType: 'number' });

/** Encode a value as msgpack. */
export function pack(value: unknown): Uint8Array {
  return packr.pack(value);
}

/** Decode msgpack; throws on malformed input. */
export function unpack(data: Uint8Array): unknown {
  return packr.unpack(data);
}

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: true });

export type BodyEncoding = 'json' | 'msgpack';

/** The encoding a Content-Type header value selects (JSON when absent or unknown JSON-ish). */
export function encodingOf(contentType: string | undefined): BodyEncoding {
  return contentType?.toLowerCase().startsWith(MSGPACK) ? 'msgpack' : 'json';
}

/** Encode a public body. */
export function encodeBody(value: unknown, encoding: BodyEncoding = 'json'): Uint8Array {
  return encoding === 'msgpack' ? pack(value) : enc.encode(JSON.stringify(value));
}

/**
 * Decode a public body. An empty body decodes to `undefined`. Throws a `SyntaxError`-like error
 * with a readable message on malformed input.
 */
export function decodeBody(data: Uint8Array, encoding: BodyEncoding = 'json'): unknown {
  if (data.length === 0) return undefined;
  if (encoding === 'msgpack') return unpack(data);
  return JSON.parse(dec.decode(data)) as unknown;
}

/**
 * Decode a public request body (JSON, or msgpack when asked for): `undefined` when empty, a
 * `malformed_body` error naming the encoding when it cannot be decoded.
 */
export function decodeRequestBody(
  data: Uint8Array,
  encoding: BodyEncoding,
  fields: { workflowType?: string; workflowId?: string; subject?: string } = {},
): unknown {
  try {
    return decodeBody(data, encoding);
  } catch (cause) {
    throw new BadRequestError(
      `body is not valid ${encoding === 'msgpack' ? 'msgpack' : 'JSON'}: ${String((cause as Error)?.message ?? cause)}`,
      { ...fields, code: ErrorCode.MalformedBody, cause },
    );
  }
}
