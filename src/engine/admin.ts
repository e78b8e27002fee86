/**
 * Operator requests (`<prefix>.admin.<verb>.<type>.<id>`): validation of the body into an inbox
 * message. Pure: the NATS side (`src/nats/gateway.ts`) does the I/O, the step applies it.
 *
 * A verb acts on one workflow, so a bulk job can call it per workflow; its effect is decided by
 * the step, in inbox order, exactly once per `requestId`.
 */
import { decodeRequestBody, type BodyEncoding } from '../contracts/codec.js';
import { isToken } from '../contracts/subjects.js';
import { ADMIN_VERBS, type AdminVerb, type InboxMessage } from '../contracts/wire.js';
import { BadRequestError, ErrorCode } from '../errors.js';
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

/** Max length of `reason`, `by` and `requestId` (they are journaled). */
export const ADMIN_TEXT_MAX = 1024;

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
      });
    }
  }
  const text = (k: string, required: boolean): string | undefined => {
    const v = b[k];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'string' || v.trim().length === 0 || v.length > ADMIN_TEXT_MAX) {
      throw bad(`${k} must be a non-empty string of at most ${ADMIN_TEXT_MAX} characters`, {
        field: k,
      });
    }
    return v;
  };
  const reason = text('reason', true)!;
  const by = text('by', true)!;
  const requestId = text('requestId', false);
  const out: Extract<InboxMessage, { kind: 'admin' }> = {
    kind: 'admin',
    verb,
    reason,
    by,
    ...(requestId !== undefined ? { requestId } : {}),
  };
  if (b.nodeId !== undefined || verb === 'shutdown' || verb === 'cancel' || verb === 'prune') {
    const nodeId = b.nodeId;
    if (typeof nodeId !== 'string' || nodeId.length === 0 || nodeId.length > 256) {
      throw bad(`${verb} needs "nodeId": the tree node (e.g. "n3")`, { field: 'nodeId' });
    }
    if (b.actorId !== undefined) {
      throw bad(`${verb} takes "nodeId" (a tree node) or "actorId" (a parked activity), not both`, {
        field: 'actorId',
      });
    }
    out.nodeId = nodeId;
  } else if (b.decisions !== undefined) {
    throw bad('"decisions" goes with "nodeId" (resolve of a tree node)', { field: 'decisions' });
  }
  if (b.decisions !== undefined) {
    if (!Array.isArray(b.decisions)) {
      throw bad('decisions must be an array of decisions', { field: 'decisions' });
    }
    out.decisions = b.decisions;
  }
  if (b.scope !== undefined) {
    if (b.scope !== 'workflow' && b.scope !== 'dispatch') {
      throw bad('scope must be "workflow" (default) or "dispatch" (a tree\'s dispatch)', {
        field: 'scope',
      });
    }
    if (b.scope === 'dispatch') out.scope = 'dispatch';
  }
  if (out.nodeId !== undefined) {
    // A tree node: retry's `attempts`, resolve's / shutdown's optional `output`.
  } else if (verb === 'retry' || verb === 'resolve' || verb === 'fail') {
    const actorId = b.actorId;
    if (actorId === undefined && o.actorOptional) {
      // bulk: every parked activity of each workflow
    } else if (typeof actorId !== 'string' || actorId.length === 0 || actorId.length > 256) {
      throw bad(`${verb} needs "actorId": the parked activity's actor id (a string)`, {
        field: 'actorId',
      });
    } else {
      out.actorId = actorId;
    }
  }
  if (verb === 'retry' && b.attempts !== undefined) {
    const n = b.attempts;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > 1000) {
      throw bad('attempts must be an integer in 1..1000', { field: 'attempts', value: n });
    }
    out.attempts = n;
  }
  if ((verb === 'resolve' || verb === 'shutdown') && out.nodeId !== undefined) {
    if ('output' in b) out.output = b.output;
  } else if (verb === 'resolve') {
    if (!('output' in b)) {
      throw bad('resolve needs "output": the activity output to deliver (null allowed)', {
        field: 'output',
      });
    }
    out.output = b.output;
  }
  if (verb === 'fail' && b.error !== undefined) {
    const e = b.error as Record<string, unknown> | null;
    if (
      e === null ||
      typeof e !== 'object' ||
      Array.isArray(e) ||
      Object.keys(e).some((k) => !['type', 'message', 'details'].includes(k)) ||
      (e.type !== undefined && typeof e.type !== 'string') ||
      (e.message !== undefined && typeof e.message !== 'string')
    ) {
      throw bad('error must be an object with optional string "type", "message" and "details"', {
        field: 'error',
      });
    }
    out.error = e;
  }
  if (verb === 'reset') {
    const n = b.toStep;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 0) {
      throw bad('reset needs "toStep": a step number (integer >= 0)', {
        field: 'toStep',
        value: n,
      });
    }
    out.toStep = n;
  }
  if (verb === 'migrate') {
    const int = (k: string, min: number): number => {
      const n = b[k];
      if (typeof n !== 'number' || !Number.isInteger(n) || n < min) {
        throw bad(`migrate needs "${k}": an integer >= ${min}`, { field: k, value: n });
      }
      return n;
    };
    out.version = int('version', 1);
    out.expectStep = int('expectStep', 0);
    const snap = b.snapshot;
    if (snap === null || typeof snap !== 'object' || Array.isArray(snap) || !('value' in snap)) {
      throw bad('migrate needs "snapshot": a persisted XState snapshot (with "value")', {
        field: 'snapshot',
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
  if (verb === 'release' && b.key !== undefined) {
    if (typeof b.key !== 'string' || b.key.length === 0 || b.key.length > 512) {
      throw bad('key must be a concurrency key: a string of 1-512 characters', { field: 'key' });
    }
    out.key = b.key;
  }
  return out;
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
