/**
 * Validation of search requests and the opaque cursor. Pure: the SQLite layer receives a
 * {@link SearchQuery} that is known to be well formed, so nothing a requester sends reaches SQL
 * as text (every value is a bound parameter).
 */
import {
  SEARCH_DEFAULT_LIMIT,
  SEARCH_MAX_LIMIT,
  type AttributeValue,
  type SearchSort,
} from '../contracts/search.js';
import { isToken } from '../contracts/subjects.js';
import type { WorkflowStatus } from '../contracts/wire.js';
import { BadRequestError } from '../errors.js';

export const STATUSES: readonly WorkflowStatus[] = [
  'deferred',
  'running',
  'completed',
  'failed',
  'canceled',
];

/** Epoch-ms bounds: `after` inclusive, `before` exclusive. */
export interface Range {
  after?: number;
  before?: number;
}

/** A validated search. */
export interface SearchQuery {
  type?: string;
  status?: WorkflowStatus;
  state?: { exact: string } | { prefix: string };
  inStateSince?: Range;
  createdAt?: Range;
  updatedAt?: Range;
  errorType?: string;
  errorCode?: string;
  idPrefix?: string;
  needsReview?: boolean;
  /** `[name, value as JSON text]`, sorted by name. */
  attributes: [string, string][];
  /** Activity-tree node filters (each may be met by a different node). */
  node?: {
    status?: string[];
    pastStatus?: string[];
    name?: string[];
    queue?: string[];
    since?: number;
    until?: number;
  };
  sort: SearchSort;
  order: 'asc' | 'desc';
  limit: number;
  /** Where the previous page ended: its last sort value and workflow key (`<type>.<id>`). */
  after?: { value: number; key: string };
  /** Identifies filters, sort and order: a cursor is only valid for the query that made it. */
  fingerprint: string;
}

const FIELDS = new Set([
  'type',
  'status',
  'state',
  'inStateSince',
  'createdAt',
  'updatedAt',
  'errorType',
  'errorCode',
  'idPrefix',
  'needsReview',
  'attributes',
  'node',
  'sort',
  'order',
  'limit',
  'cursor',
]);
const MAX_TEXT = 1_024;
const MAX_ATTRIBUTES = 16;

function bad(message: string, details?: unknown): BadRequestError {
  return new BadRequestError(message, details === undefined ? {} : { details });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function text(v: unknown, field: string): string {
  if (typeof v !== 'string' || v.length === 0 || v.length > MAX_TEXT) {
    throw bad(`${field} must be a non-empty string of at most ${MAX_TEXT} characters`, { field });
  }
  return v;
}

/** ISO-8601 text or epoch milliseconds → epoch ms. */
export function timeBound(v: unknown, field: string): number {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string' && /^\d{4}-\d{2}-\d{2}/.test(v)) {
    const t = Date.parse(v);
    if (Number.isFinite(t)) return t;
  }
  throw bad(`${field} must be an ISO-8601 time or epoch milliseconds`, { field });
}

function range(v: unknown, field: string): Range {
  if (!isObject(v)) throw bad(`${field} must be an object { after?, before? }`, { field });
  const r: Range = {};
  for (const [k, x] of Object.entries(v)) {
    if (k !== 'after' && k !== 'before') {
      throw bad(`${field}.${k} is not a filter: use after and/or before`, {
        field: `${field}.${k}`,
      });
    }
    if (x === undefined) continue;
    r[k] = timeBound(x, `${field}.${k}`);
  }
  return r;
}

function attributeValue(v: unknown, field: string): AttributeValue {
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  throw bad(`${field} must be a string, a finite number, a boolean or null`, { field });
}

/** The stored form of an attribute value: its JSON text (so `1` and `"1"` differ). */
export function attributeText(v: AttributeValue): string {
  return JSON.stringify(v);
}

/** 32-bit FNV-1a of a string, as 8 hex digits. */
/** A page size: an integer from 1 to `max`, else `bad_request` naming the field and the max. */
function parseLimit(limit: unknown, max: number): number {
  if (typeof limit !== 'number' || !Number.isInteger(limit) || limit < 1 || limit > max) {
    throw bad(`limit must be an integer from 1 to ${max}`, { field: 'limit', max });
  }
  return limit;
}

function fnv(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

interface CursorBody {
  v: 1;
  f: string;
  k: number;
  w: string;
}

/** The cursor after a page whose last row has sort value `value` and key `key`. */
export function encodeCursor(q: SearchQuery, value: number, key: string): string {
  const body: CursorBody = { v: 1, f: q.fingerprint, k: value, w: key };
  return Buffer.from(JSON.stringify(body)).toString('base64url');
}

function decodeCursor(cursor: unknown, fingerprint: string): { value: number; key: string } {
  if (typeof cursor !== 'string' || cursor.length === 0 || cursor.length > 2_048) {
    throw bad('cursor must be the non-empty string returned by the previous page', {
      field: 'cursor',
    });
  }
  let body: unknown;
  try {
    if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw new Error('not base64url');
    body = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    throw bad('cursor is malformed: pass the cursor of the previous reply unchanged', {
      field: 'cursor',
    });
  }
  const c = body as Partial<CursorBody> | null;
  if (
    !isObject(c) ||
    c.v !== 1 ||
    typeof c.f !== 'string' ||
    typeof c.k !== 'number' ||
    !Number.isFinite(c.k) ||
    typeof c.w !== 'string' ||
    c.w.length === 0
  ) {
    throw bad('cursor is malformed: pass the cursor of the previous reply unchanged', {
      field: 'cursor',
    });
  }
  if (c.f !== fingerprint) {
    throw bad('cursor belongs to another search: keep the filters, sort and order of its page', {
      field: 'cursor',
    });
  }
  return { value: c.k, key: c.w };
}

/**
 * Validate a decoded search body (`undefined` = empty body = everything). Throws a
 * {@link BadRequestError} (code `bad_request`) naming the offending field.
 */
export function parseSearch(body: unknown): SearchQuery {
  if (body === undefined || body === null) body = {};
  if (!isObject(body)) throw bad('the search body must be an object of filters');
  for (const k of Object.keys(body)) {
    if (!FIELDS.has(k)) {
      throw bad(`unknown search field ${JSON.stringify(k)}; known: ${[...FIELDS].join(', ')}`, {
        field: k,
      });
    }
  }
  const b = body;
  const q: SearchQuery = {
    attributes: [],
    sort: 'updatedAt',
    order: 'desc',
    limit: SEARCH_DEFAULT_LIMIT,
    fingerprint: '',
  };
  if (b.type !== undefined) {
    if (!isToken(b.type)) throw bad('type must be a workflow type (1-256 of A-Z a-z 0-9 _ - =)');
    q.type = b.type;
  }
  if (b.status !== undefined) {
    if (!STATUSES.includes(b.status as WorkflowStatus)) {
      throw bad(`status must be one of ${STATUSES.join(', ')}`, { field: 'status' });
    }
    q.status = b.status as WorkflowStatus;
  }
  if (b.state !== undefined) {
    const s = text(b.state, 'state');
    if (s.endsWith('.*')) {
      const prefix = s.slice(0, -1); // keep the dot: `shipping.*` matches `shipping.…`
      if (prefix.length < 2 || prefix.includes('*')) throw bad('state prefix must look like a.*');
      q.state = { prefix };
    } else {
      if (s.includes('*')) throw bad('state must be a state path, or a prefix ending in .*');
      q.state = { exact: s };
    }
  }
  for (const f of ['inStateSince', 'createdAt', 'updatedAt'] as const) {
    if (b[f] !== undefined) q[f] = range(b[f], f);
  }
  for (const f of ['errorType', 'errorCode', 'idPrefix'] as const) {
    if (b[f] !== undefined) q[f] = text(b[f], f);
  }
  if (b.needsReview !== undefined) {
    if (typeof b.needsReview !== 'boolean') throw bad('needsReview must be true or false');
    q.needsReview = b.needsReview;
  }
  if (b.attributes !== undefined) {
    if (!isObject(b.attributes)) throw bad('attributes must be an object { name: value }');
    const entries = Object.entries(b.attributes);
    if (entries.length > MAX_ATTRIBUTES) {
      throw bad(`at most ${MAX_ATTRIBUTES} attributes per search`, { field: 'attributes' });
    }
    q.attributes = entries
      .map(([k, v]): [string, string] => {
        text(k, 'attribute name');
        return [k, attributeText(attributeValue(v, `attributes.${k}`))];
      })
      .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  }
  if (b.node !== undefined) q.node = parseNodeFilter(b.node);
  if (b.sort !== undefined) {
    if (b.sort !== 'updatedAt' && b.sort !== 'inStateSince') {
      throw bad('sort must be updatedAt or inStateSince', { field: 'sort' });
    }
    q.sort = b.sort;
  }
  q.order = q.sort === 'updatedAt' ? 'desc' : 'asc';
  if (b.order !== undefined) {
    if (b.order !== 'asc' && b.order !== 'desc') throw bad('order must be asc or desc');
    q.order = b.order;
  }
  if (b.limit !== undefined) q.limit = parseLimit(b.limit, SEARCH_MAX_LIMIT);
  // Everything but the limit: a cursor may be used with another page size.
  q.fingerprint = fnv(
    JSON.stringify([
      q.type,
      q.status,
      q.state,
      q.inStateSince,
      q.createdAt,
      q.updatedAt,
      q.errorType,
      q.errorCode,
      q.idPrefix,
      q.needsReview,
      q.attributes,
      q.node,
      q.sort,
      q.order,
    ]),
  );
  if (b.cursor !== undefined && b.cursor !== null) q.after = decodeCursor(b.cursor, q.fingerprint);
  return q;
}

/** Validate a counts body: empty, `{}` or `{ type }`. */
export function parseCounts(body: unknown): { type?: string } {
  if (body === undefined || body === null) return {};
  if (!isObject(body)) throw bad('the counts body must be an object');
  for (const k of Object.keys(body)) {
    if (k !== 'type') throw bad(`unknown counts field ${JSON.stringify(k)}; known: type`);
  }
  if (body.type === undefined) return {};
  if (!isToken(body.type)) throw bad('type must be a workflow type (1-256 of A-Z a-z 0-9 _ - =)');
  return { type: body.type };
}

// ---------------------------------------------------------------------------------------------
// Node search (`<prefix>.search.nodes`, ACTIVITY-TREES §2.9.11)

/** Node statuses of activity trees (ACTIVITY-TREES §2.4). */
export const NODE_STATUSES = [
  'ready',
  'scheduled',
  'paused',
  'running',
  'retrying',
  'errored',
  'awaitingChildren',
  'complete',
  'canceled',
] as const;

/** A validated node search. Lists mean "any of". */
export interface NodeSearchQuery {
  type?: string;
  id?: string;
  status?: string[];
  pastStatus?: string[];
  name?: string[];
  queue?: string[];
  /** With `pastStatus`: when the node entered it; otherwise: `statusSince` (time in status). */
  since?: number;
  until?: number;
  /** `[key, value as JSON text]`, sorted by key. */
  metadata: [string, string][];
  limit: number;
  /** Where the previous page ended: `statusSince`, workflow key, node seq. */
  after?: { since: number; key: string; seq: number };
  fingerprint: string;
}

const NODE_FIELDS = new Set([
  'type',
  'id',
  'status',
  'pastStatus',
  'name',
  'queue',
  'since',
  'until',
  'metadata',
  'limit',
  'cursor',
]);
export const NODE_SEARCH_DEFAULT_LIMIT = 25;
export const NODE_SEARCH_MAX_LIMIT = 1_000;

function oneOrMany(v: unknown, field: string, check: (x: unknown, f: string) => string): string[] {
  const xs = Array.isArray(v) ? v : [v];
  if (xs.length === 0 || xs.length > 100) {
    throw bad(`${field} must be a value or a list of 1 to 100 values`, { field });
  }
  return [...new Set(xs.map((x, i) => check(x, Array.isArray(v) ? `${field}[${i}]` : field)))];
}

function nodeStatus(x: unknown, field: string): string {
  if (typeof x !== 'string' || !(NODE_STATUSES as readonly string[]).includes(x)) {
    throw bad(`${field} must be a node status: ${NODE_STATUSES.join(', ')}`, { field });
  }
  return x;
}

interface NodeCursorBody {
  v: 1;
  f: string;
  s: number;
  w: string;
  q: number;
}

export function encodeNodeCursor(
  q: NodeSearchQuery,
  since: number,
  key: string,
  seq: number,
): string {
  const body: NodeCursorBody = { v: 1, f: q.fingerprint, s: since, w: key, q: seq };
  return Buffer.from(JSON.stringify(body)).toString('base64url');
}

function decodeNodeCursor(
  cursor: unknown,
  fingerprint: string,
): { since: number; key: string; seq: number } {
  const malformed = () =>
    bad('cursor is malformed: pass the "next" of the previous reply unchanged', {
      field: 'cursor',
    });
  if (typeof cursor !== 'string' || cursor.length === 0 || cursor.length > 2_048) throw malformed();
  let c: Partial<NodeCursorBody> | null;
  try {
    if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw new Error('not base64url');
    c = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8')) as Partial<NodeCursorBody>;
  } catch {
    throw malformed();
  }
  if (
    !isObject(c) ||
    c.v !== 1 ||
    typeof c.f !== 'string' ||
    typeof c.s !== 'number' ||
    typeof c.w !== 'string' ||
    typeof c.q !== 'number'
  )
    throw malformed();
  if (c.f !== fingerprint) {
    throw bad('cursor belongs to another search: keep the filters of its page', {
      field: 'cursor',
    });
  }
  return { since: c.s, key: c.w, seq: c.q };
}

/**
 * Validate a decoded node search body (`undefined` = everything, paged). Throws a
 * {@link BadRequestError} (code `bad_request`) naming the offending field.
 */
export function parseNodeSearch(body: unknown): NodeSearchQuery {
  if (body === undefined || body === null) body = {};
  if (!isObject(body)) throw bad('the node search body must be an object of filters');
  for (const k of Object.keys(body)) {
    if (!NODE_FIELDS.has(k)) {
      throw bad(
        `unknown node search field ${JSON.stringify(k)}; known: ${[...NODE_FIELDS].join(', ')}`,
        { field: k },
      );
    }
  }
  const b = body;
  const q: NodeSearchQuery = { metadata: [], limit: NODE_SEARCH_DEFAULT_LIMIT, fingerprint: '' };
  const token = (x: unknown, field: string): string => {
    if (!isToken(x)) throw bad(`${field} must be a token (1-256 of A-Z a-z 0-9 _ - =)`, { field });
    return x;
  };
  if (b.type !== undefined) q.type = token(b.type, 'type');
  if (b.id !== undefined) q.id = token(b.id, 'id');
  if (b.status !== undefined) q.status = oneOrMany(b.status, 'status', nodeStatus);
  if (b.pastStatus !== undefined) q.pastStatus = oneOrMany(b.pastStatus, 'pastStatus', nodeStatus);
  if (b.name !== undefined) q.name = oneOrMany(b.name, 'name', text);
  if (b.queue !== undefined) q.queue = oneOrMany(b.queue, 'queue', token);
  if (b.since !== undefined) q.since = timeBound(b.since, 'since');
  if (b.until !== undefined) q.until = timeBound(b.until, 'until');
  if (b.metadata !== undefined) {
    if (!isObject(b.metadata)) throw bad('metadata must be an object { key: value }');
    const entries = Object.entries(b.metadata);
    if (entries.length > 16) throw bad('at most 16 metadata keys', { field: 'metadata' });
    q.metadata = entries
      .map(([k, v]): [string, string] => {
        text(k, 'metadata key');
        if (
          typeof v !== 'string' &&
          typeof v !== 'boolean' &&
          !(typeof v === 'number' && Number.isFinite(v))
        )
          throw bad(`metadata.${k} must be a string, a finite number or a boolean`, {
            field: `metadata.${k}`,
          });
        return [k, JSON.stringify(v)];
      })
      .sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
  }
  if (b.limit !== undefined) q.limit = parseLimit(b.limit, NODE_SEARCH_MAX_LIMIT);
  q.fingerprint = fnv(
    JSON.stringify([
      q.type,
      q.id,
      q.status,
      q.pastStatus,
      q.name,
      q.queue,
      q.since,
      q.until,
      q.metadata,
    ]),
  );
  if (b.cursor !== undefined && b.cursor !== null)
    q.after = decodeNodeCursor(b.cursor, q.fingerprint);
  return q;
}

/** `wf.search`'s `node` object (ACTIVITY-TREES §2.9.11). */
function parseNodeFilter(v: unknown): NonNullable<SearchQuery['node']> {
  if (!isObject(v)) throw bad('node must be an object of node filters', { field: 'node' });
  const known = ['status', 'pastStatus', 'name', 'queue', 'since', 'until'];
  for (const k of Object.keys(v)) {
    if (!known.includes(k)) {
      throw bad(`unknown node filter ${JSON.stringify(k)}; known: ${known.join(', ')}`, {
        field: `node.${k}`,
      });
    }
  }
  const out: NonNullable<SearchQuery['node']> = {};
  if (v.status !== undefined) out.status = oneOrMany(v.status, 'node.status', nodeStatus);
  if (v.pastStatus !== undefined)
    out.pastStatus = oneOrMany(v.pastStatus, 'node.pastStatus', nodeStatus);
  if (v.name !== undefined) out.name = oneOrMany(v.name, 'node.name', text);
  if (v.queue !== undefined)
    out.queue = oneOrMany(v.queue, 'node.queue', (x, f) => {
      if (!isToken(x)) throw bad(`${f} must be a queue token`, { field: f });
      return x;
    });
  if (v.since !== undefined) out.since = timeBound(v.since, 'node.since');
  if (v.until !== undefined) out.until = timeBound(v.until, 'node.until');
  if ((out.since !== undefined || out.until !== undefined) && !out.pastStatus && !out.status) {
    throw bad('node.since / node.until go with node.pastStatus (or node.status)', {
      field: out.since !== undefined ? 'node.since' : 'node.until',
    });
  }
  return out;
}
