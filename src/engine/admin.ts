/**
 * Operator requests (`<prefix>.admin.<verb>.<type>.<id>`): validation of the body into an inbox
 * message. Pure: the NATS side (`src/nats/gateway.ts`) does the I/O, the step applies it.
 *
 * A verb acts on one workflow, so a bulk job can call it per workflow; its effect is decided by
 * the step, in inbox order, exactly once per `requestId`.
 */
import { decodeRequestBody, type BodyEncoding } from '../contracts/codec.js';
import { isToken } from '../contracts/subjects.js';
import {
  ADMIN_VERBS,
  type AdminRequest,
  type AdminVerb,
  type InboxMessage,
} from '../contracts/wire.js';
import { BadRequestError, ErrorCode } from '../errors.js';
import type { TSchema } from '@sinclair/typebox';
import {
  ADMIN_TEXT_MAX,
  AdminFieldSchemas,
  compile,
  firstIssue,
  type Checker,
} from '../contracts/schemas.js';
import type { Registry } from './registry.js';

/** Fields every verb takes. */
const COMMON = ['reason', 'by', 'requestId'] as const;

/** Fields each verb takes besides {@link COMMON}. */
const VERB_FIELDS: Record<AdminVerb, readonly string[]> = {
  pause: ['scope'],
  resume: ['scope'],
  terminate: [],
  retry: ['actorId', 'nodeId', 'attempts'],
  resolve: ['actorId', 'nodeId', 'output', 'decisions'],
  fail: ['actorId', 'error'],
  reset: ['toStep'],
  shutdown: ['nodeId', 'output'],
  cancel: ['nodeId'],
  prune: ['nodeId'],
  promote: [],
  skip: [],
  release: ['key'],
  migrate: ['version', 'snapshot', 'expectStep', 'jobId', 'revertOf'],
};

/** The fields of the tree forms (a bulk job takes the workflow forms only). */
const NODE_FIELDS = ['nodeId', 'decisions', 'scope'];

/**
 * True for a request the workflow's machine decides (a tree's node verb, or pause/resume of
 * its dispatch): delivered as the event `jetflow.admin.<verb>`.
 */
export function isNodeAdmin(msg: { verb: AdminVerb; nodeId?: string; scope?: string }): boolean {
  return msg.nodeId !== undefined || msg.scope === 'dispatch';
}

export { ADMIN_TEXT_MAX };

export interface AdminRequestInput {
  verb: string;
  type: string;
  id: string;
  data: Uint8Array;
  encoding: BodyEncoding;
  subject: string;
  maxBytes: number;
}

export function isAdminVerb(v: string): v is AdminVerb {
  return (ADMIN_VERBS as readonly string[]).includes(v);
}

/** Validate an admin request; throws {@link BadRequestError} naming the field at fault. */
export function parseAdminRequest(
  req: AdminRequestInput,
  registry: Registry,
): Extract<InboxMessage, { kind: 'admin' }> {
  const fields = { workflowType: req.type, workflowId: req.id, subject: req.subject };
  const bad = (msg: string, details?: unknown, code: ErrorCode = ErrorCode.BadRequest) =>
    new BadRequestError(msg, { ...fields, code, ...(details ? { details } : {}) });
  if (!isAdminVerb(req.verb)) {
    throw bad(`unknown admin verb ${JSON.stringify(req.verb)} (verbs: ${ADMIN_VERBS.join(', ')})`, {
      verb: req.verb,
    });
  }
  const verb = req.verb;
  if (!isToken(req.type) || !isToken(req.id)) {
    throw bad('workflow type and id must be 1-256 characters of A-Z a-z 0-9 _ - =');
  }
  if (req.data.length > req.maxBytes) {
    throw bad(
      `body of ${req.data.length} bytes exceeds the limit of ${req.maxBytes} bytes`,
      { size: req.data.length, limit: req.maxBytes },
      ErrorCode.PayloadTooLarge,
    );
  }
  const body = decodeRequestBody(req.data, req.encoding, fields);
  const out = parseAdminFields(verb, body, bad);
  if (!registry.has(req.type)) registry.latest(req.type); // throws unknown_type with the known list
  return out;
}

/** How {@link parseAdminFields} reports a bad field. */
export type BadField = (msg: string, details?: unknown) => Error;

/**
 * Validate the body of an admin verb (decoded): `reason`, `by`, `requestId` and the verb's own
 * fields; throws what `bad` makes, naming the field at fault. Shared with bulk jobs, which take
 * the same fields (`common`: the fields besides the verb's own; `extra`: fields the caller
 * checks itself; `actorOptional`: absent means every parked activity).
 */
export function parseAdminFields(
  verb: AdminVerb,
  body: unknown,
  bad: BadField,
  o: {
    common?: readonly string[];
    extra?: readonly string[];
    actorOptional?: boolean;
    /** false: the tree forms (`nodeId`, `decisions`, `scope`) are not taken (bulk jobs). */
    nodes?: boolean;
  } = {},
): Extract<InboxMessage, { kind: 'admin' }> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw bad('an admin request body must be an object with "reason" and "by"');
  }
  const b = body as Record<string, unknown>;
  const allowed = [
    ...(o.common ?? COMMON),
    ...VERB_FIELDS[verb].filter((f) => o.nodes !== false || !NODE_FIELDS.includes(f)),
    ...(o.extra ?? []),
  ];
  for (const k of Object.keys(b)) {
    if (!allowed.includes(k)) {
      throw bad(`unknown field ${JSON.stringify(k)} for ${verb} (fields: ${allowed.join(', ')})`, {
        field: k,
        why: 'Unexpected property',
      });
    }
  }
  // Each field present is checked against its schema; a bad one gets its own message.
  for (const k of Object.keys(b)) {
    const c = FIELD_CHECKS[k as AdminField];
    if (c && b[k] !== undefined && !c.Check(b[k]))
      throw badAdminField(k as AdminField, verb, b[k], bad);
  }
  for (const k of ['reason', 'by'] as const)
    if (b[k] === undefined) throw badAdminField(k, verb, undefined, bad);
  const f = b as Partial<AdminRequest>;
  const out: Extract<InboxMessage, { kind: 'admin' }> = {
    kind: 'admin',
    verb,
    reason: f.reason!,
    by: f.by!,
    ...(f.requestId !== undefined ? { requestId: f.requestId } : {}),
  };
  if (f.nodeId !== undefined || verb === 'shutdown' || verb === 'cancel' || verb === 'prune') {
    if (f.nodeId === undefined) throw badAdminField('nodeId', verb, undefined, bad);
    if (f.actorId !== undefined) {
      throw bad(`${verb} takes "nodeId" (a tree node) or "actorId" (a parked activity), not both`, {
        field: 'actorId',
        why: 'Unexpected property',
      });
    }
    out.nodeId = f.nodeId;
  } else if (f.decisions !== undefined) {
    throw bad('"decisions" goes with "nodeId" (resolve of a tree node)', {
      field: 'decisions',
      why: 'Unexpected property',
    });
  }
  if (f.decisions !== undefined) out.decisions = f.decisions;
  if (f.scope === 'dispatch') out.scope = 'dispatch';
  if (out.nodeId !== undefined) {
    // A tree node: retry's `attempts`, resolve's / shutdown's optional `output`.
  } else if (verb === 'retry' || verb === 'resolve' || verb === 'fail') {
    if (f.actorId === undefined && o.actorOptional) {
      // bulk: every parked activity of each workflow
    } else if (f.actorId === undefined) {
      throw badAdminField('actorId', verb, undefined, bad);
    } else {
      out.actorId = f.actorId;
    }
  }
  if (verb === 'retry' && f.attempts !== undefined) out.attempts = f.attempts;
  if ((verb === 'resolve' || verb === 'shutdown') && out.nodeId !== undefined) {
    if ('output' in b) out.output = b.output;
  } else if (verb === 'resolve') {
    if (!('output' in b)) {
      throw bad('resolve needs "output": the activity output to deliver (null allowed)', {
        field: 'output',
        why: 'Expected required property',
      });
    }
    out.output = b.output;
  }
  if (verb === 'fail' && f.error !== undefined) out.error = f.error;
  if (verb === 'reset') {
    if (f.toStep === undefined) throw badAdminField('toStep', verb, undefined, bad);
    out.toStep = f.toStep;
  }
  if (verb === 'migrate') {
    const int = (k: string, min: number): number => {
      const n = b[k];
      if (typeof n !== 'number' || !Number.isInteger(n) || n < min) {
        throw bad(`migrate needs "${k}": an integer >= ${min}`, {
          field: k,
          why: n === undefined ? 'Expected required property' : `Expected integer >= ${min}`,
          value: n,
        });
      }
      return n;
    };
    out.version = int('version', 1);
    out.expectStep = int('expectStep', 0);
    const snap = b.snapshot;
    if (snap === null || typeof snap !== 'object' || Array.isArray(snap) || !('value' in snap)) {
      throw bad('migrate needs "snapshot": a persisted XState snapshot (with "value")', {
        field: 'snapshot',
        why: 'Expected object with "value"',
      });
    }
    out.snapshot = snap;
    for (const k of ['jobId', 'revertOf'] as const) {
      const v = b[k];
      if (v === undefined) continue;
      if (typeof v !== 'string' || v.length === 0 || v.length > 256) {
        throw bad(`${k} must be a string of 1-256 characters`, { field: k });
      }
      out[k] = v;
    }
  }
  if (verb === 'release' && f.key !== undefined) out.key = f.key;
  return out;
}

type AdminField = keyof typeof AdminFieldSchemas;

const FIELD_CHECKS = Object.fromEntries(
  Object.entries(AdminFieldSchemas).map(([k, s]) => [k, compile(s)]),
) as Record<AdminField, Checker<TSchema>>;

/** What a bad (or missing) admin field is told: the field's own message, naming it. */
function badAdminField(k: AdminField, verb: AdminVerb, value: unknown, badField: BadField): Error {
  // Every message names the field; `why` is the schema's reason, as for the other requests.
  const why =
    value === undefined
      ? 'Expected required property'
      : (firstIssue(FIELD_CHECKS[k], value)?.why ?? 'Invalid value');
  const bad: BadField = (msg, details) =>
    badField(msg, { ...(details as Record<string, unknown>), why });
  switch (k) {
    case 'reason':
    case 'by':
    case 'requestId':
      return bad(`${k} must be a non-empty string of at most ${ADMIN_TEXT_MAX} characters`, {
        field: k,
      });
    case 'nodeId':
      return bad(`${verb} needs "nodeId": the tree node (e.g. "n3")`, { field: k });
    case 'decisions':
      return bad('decisions must be an array of decisions', { field: k });
    case 'scope':
      return bad('scope must be "workflow" (default) or "dispatch" (a tree\'s dispatch)', {
        field: k,
      });
    case 'actorId':
      return bad(`${verb} needs "actorId": the parked activity's actor id (a string)`, {
        field: k,
      });
    case 'attempts':
      return bad('attempts must be an integer in 1..1000', { field: k, value });
    case 'error':
      return bad('error must be an object with optional string "type", "message" and "details"', {
        field: k,
      });
    case 'toStep':
      return bad('reset needs "toStep": a step number (integer >= 0)', { field: k, value });
    case 'key':
      return bad('key must be a concurrency key: a string of 1-512 characters', { field: k });
    case 'output':
      return bad('output: any value', { field: k });
  }
}

/** The inbox message of an admin request, checked again when read from the inbox. */
export function decodeAdmin(
  body: Record<string, unknown>,
  fields: { workflowType: string; workflowId: string },
): Extract<InboxMessage, { kind: 'admin' }> {
  const verb = body.verb;
  if (
    typeof verb !== 'string' ||
    !isAdminVerb(verb) ||
    typeof body.reason !== 'string' ||
    typeof body.by !== 'string'
  ) {
    throw new BadRequestError('admin message needs a known verb, reason and by', {
      ...fields,
      code: ErrorCode.BadRequest,
    });
  }
  const out: Extract<InboxMessage, { kind: 'admin' }> = {
    kind: 'admin',
    verb,
    reason: body.reason,
    by: body.by,
  };
  if (typeof body.requestId === 'string') out.requestId = body.requestId;
  if (typeof body.actorId === 'string') out.actorId = body.actorId;
  if (typeof body.attempts === 'number') out.attempts = body.attempts;
  if ('output' in body) out.output = body.output;
  if (body.error && typeof body.error === 'object') out.error = body.error;
  if (typeof body.toStep === 'number') out.toStep = body.toStep;
  if (typeof body.key === 'string') out.key = body.key;
  if (typeof body.nodeId === 'string') out.nodeId = body.nodeId;
  if (Array.isArray(body.decisions)) out.decisions = body.decisions as unknown[];
  if (body.scope === 'dispatch') out.scope = 'dispatch';
  if (verb === 'migrate') {
    if (
      typeof body.version !== 'number' ||
      typeof body.expectStep !== 'number' ||
      body.snapshot === null ||
      typeof body.snapshot !== 'object'
    ) {
      throw new BadRequestError('migrate needs version, expectStep and snapshot', {
        ...fields,
        code: ErrorCode.BadRequest,
      });
    }
    out.version = body.version;
    out.expectStep = body.expectStep;
    out.snapshot = body.snapshot;
    if (typeof body.jobId === 'string') out.jobId = body.jobId;
    if (typeof body.revertOf === 'string') out.revertOf = body.revertOf;
  }
  const needs =
    verb === 'shutdown' || verb === 'cancel' || verb === 'prune'
      ? out.nodeId
      : verb === 'retry' || verb === 'resolve'
        ? (out.nodeId ?? out.actorId)
        : verb === 'fail'
          ? out.actorId
          : '';
  if (needs === undefined) {
    throw new BadRequestError(`${verb} needs ${verb === 'fail' ? 'actorId' : 'nodeId'}`, {
      ...fields,
      code: ErrorCode.BadRequest,
    });
  }
  if (verb === 'reset' && out.toStep === undefined) {
    throw new BadRequestError('reset needs toStep', { ...fields, code: ErrorCode.BadRequest });
  }
  return out;
}
