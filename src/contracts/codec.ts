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

/**
 * True when `value` surely packs into at most `maxBytes` (an upper bound of its msgpack size,
 * walked with an early exit): the cheap answer to "is this small enough?" that needs no encoding.
 * False means "maybe not": pack it to know. Anything but plain data (a class instance other than
 * Date and byte arrays, a cycle, deep nesting) answers false.
 */
export function fitsPacked(value: unknown, maxBytes: number): boolean {
  let left = maxBytes;
  const walk = (v: unknown, depth: number): boolean => {
    switch (typeof v) {
      case 'string':
        // Header at most 5 bytes; a UTF-16 unit is at most 3 UTF-8 bytes.
        return (left -= 5 + 3 * v.length) >= 0;
      case 'number':
      case 'bigint':
        return (left -= 9) >= 0;
      case 'boolean':
        return (left -= 1) >= 0;
      case 'undefined':
        // msgpackr writes undefined as a 3-byte extension.
        return (left -= 3) >= 0;
      case 'object':
        break;
      default:
        return false;
    }
    if (v === null) return (left -= 1) >= 0;
    if (depth > 32) return false;
    if (v instanceof Uint8Array) return (left -= 5 + v.length) >= 0;
    if (v instanceof Date) return (left -= 15) >= 0;
    if ((left -= 5) < 0) return false;
    if (Array.isArray(v)) {
      for (const x of v) if (!walk(x, depth + 1)) return false;
      return true;
    }
    const proto = Object.getPrototypeOf(v) as unknown;
    if (proto !== Object.prototype && proto !== null) return false;
    for (const k in v as Record<string, unknown>) {
      if ((left -= 5 + 3 * k.length) < 0) return false;
      if (!walk((v as Record<string, unknown>)[k], depth + 1)) return false;
    }
    return true;
  };
  return walk(value, 0);
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
