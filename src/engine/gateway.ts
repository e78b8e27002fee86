/**
 * Validation of public requests (`wf.start|signal|cancel.<type>.<id>`) into inbox messages, and
 * the query reply. Pure: the NATS side (`src/nats/gateway.ts`) does the I/O.
 */
import type { Registry } from './registry.js';
import * as m from './machine.js';
import { decodeRequestBody, type BodyEncoding } from '../contracts/codec.js';
import { isToken } from '../contracts/subjects.js';
import type { InboxMessage, QueryReply, WaitingTask, WorkflowRecord } from '../contracts/wire.js';
import { BadRequestError, ErrorCode } from '../errors.js';
import {
  CancelRequestSchema,
  compile,
  firstIssue,
  issueDetails,
  SignalRequestSchema,
  type Checker,
} from '../contracts/schemas.js';
import { Type, type TSchema } from '@sinclair/typebox';

const objectCheck = compile(Type.Object({}));
const signalCheck = compile(SignalRequestSchema);
const cancelCheck = compile(CancelRequestSchema);

/** A bad field: `message`, with the field at fault in `details`. */
function badField(
  c: Checker<TSchema>,
  v: unknown,
  fields: Record<string, string>,
  message: string,
): BadRequestError {
  const i = firstIssue(c, v);
  return new BadRequestError(message, { ...fields, ...(i ? { details: issueDetails(i) } : {}) });
}

export type PublicVerb = 'start' | 'signal' | 'cancel';

export interface PublicRequest {
  verb: string;
  type: string;
  id: string;
  data: Uint8Array;
  encoding: BodyEncoding;
  subject: string;
}

/** Validate a public request; throws {@link BadRequestError} with a precise code. */
export function parseRequest(
  req: PublicRequest,
  registry: Registry,
  maxBytes: number,
): InboxMessage {
  const fields = { workflowType: req.type, workflowId: req.id, subject: req.subject };
  if (!isToken(req.type) || !isToken(req.id)) {
    throw new BadRequestError(
      'workflow type and id must be 1-256 characters of A-Z a-z 0-9 _ - =',
      fields,
    );
  }
  if (req.data.length > maxBytes) {
    throw new BadRequestError(
      `body of ${req.data.length} bytes exceeds the limit of ${maxBytes} bytes`,
      {
        ...fields,
        code: ErrorCode.PayloadTooLarge,
        details: { size: req.data.length, limit: maxBytes },
      },
    );
  }
  const body = decodeRequestBody(req.data, req.encoding, fields);
  if (body !== undefined && !objectCheck.Check(body)) {
    throw new BadRequestError('body must be an object', {
      ...fields,
      code: ErrorCode.BadRequest,
      details: { field: '', why: 'Expected object' },
    });
  }
  const b = (body ?? {}) as Record<string, unknown>;
  if (!registry.has(req.type)) registry.latest(req.type); // throws unknown_type with the known list
  switch (req.verb) {
    case 'start': {
      // Open: unknown fields are ignored (the HTTP API, `closed`, refuses them).
      const p = b.priority;
      if (p !== undefined && !(Number.isInteger(p) && (p as number) >= 1 && (p as number) <= 5)) {
        throw new BadRequestError(
          `priority must be an integer from 1 (first) to 5, got ${JSON.stringify(p)?.slice(0, 40)}`,
          { ...fields, details: { field: 'priority', value: p } },
        );
      }
      return {
        kind: 'start',
        input: b.input,
        ...(p !== undefined ? { priority: p as number } : {}),
      };
    }
    case 'cancel': {
      if (!cancelCheck.Check(b))
        throw badField(cancelCheck, b, fields, 'cancel reason must be a string');
      return { kind: 'cancel', reason: b.reason };
    }
    case 'signal': {
      if (!signalCheck.Check(b)) {
        const i = firstIssue(signalCheck, b)!;
        const reserved = typeof b.type === 'string' && b.type.length > 0;
        throw new BadRequestError(
          reserved
            ? 'event types starting with "xstate." or "jetflow." are reserved for the engine'
            : 'a signal is an XState event: an object with a string "type"',
          { ...fields, details: issueDetails(i) },
        );
      }
      return { kind: 'signal', event: b };
    }
    default:
      throw new BadRequestError(`unknown verb ${JSON.stringify(req.verb)}`, fields);
  }
}

/**
 * Build the reply to `wf.query.<type>.<id>` from a stored record. With a body `{"view", …}` the
 * definition's view answers (E6); an unknown view is `bad_request` with the available names.
 */
export function queryReply(
  registry: Registry,
  r: WorkflowRecord,
  body?: unknown,
  /** A deferred workflow's current position (null: no longer waiting; undefined: not read). */
  position?: number | null,
): unknown {
  const def = registry.get(r.type, r.version);
  if (r.status === 'deferred') {
    // Not admitted yet: its machine has not started, there is no state or context.
    const a = r.admission!;
    const reply: QueryReply = {
      id: r.id,
      type: r.type,
      version: r.version,
      status: 'deferred',
      value: null,
      context: null,
      tags: [],
      accepts: [],
      step: r.step,
      createdAt: new Date(r.createdAt).toISOString(),
      updatedAt: new Date(r.updatedAt).toISOString(),
      deferred: {
        key: a.key,
        position: position === undefined ? (a.position ?? null) : position,
        since: new Date(a.deferredAt ?? r.createdAt).toISOString(),
      },
    };
    if (r.held?.length) reply.held = r.held.length;
    return reply;
  }
  const snapshot = m.restore(def.machine, r.snapshot);
  if (body !== undefined && body !== null) {
    const fields = { workflowType: r.type, workflowId: r.id };
    if (typeof body !== 'object' || Array.isArray(body)) {
      throw new BadRequestError('query body must be an object', fields);
    }
    const b = body as Record<string, unknown>;
    if (b.view !== undefined) {
      const views = def.views ?? {};
      const view = typeof b.view === 'string' ? views[b.view] : undefined;
      if (!view) {
        throw new BadRequestError(`unknown view ${JSON.stringify(b.view)}`, {
          ...fields,
          details: { views: Object.keys(views) },
        });
      }
      return view(snapshot.context, b, {
        id: r.id,
        type: r.type,
        version: r.version,
        status: r.status,
        step: r.step,
      });
    }
  }
  const reply: QueryReply = {
    id: r.id,
    type: r.type,
    version: r.version,
    status: r.status,
    value: snapshot.value,
    context: def.queryContext ? def.queryContext(snapshot.context) : snapshot.context,
    tags: m.tagsOf(snapshot),
    accepts: r.status === 'running' ? m.acceptedEvents(snapshot) : [],
    step: r.step,
    createdAt: new Date(r.createdAt).toISOString(),
    updatedAt: new Date(r.updatedAt).toISOString(),
  };
  if (r.output !== undefined) reply.output = r.output;
  if (r.error !== undefined) reply.error = r.error;
  if (r.admission && r.status === 'running') reply.concurrencyKey = r.admission.key;
  if (r.parent) reply.parent = { type: r.parent.type, id: r.parent.id };
  if (r.paused) {
    reply.paused = true;
    reply.held = r.held?.length ?? 0;
  }
  const review = Object.entries(r.tasks).flatMap(([actorId, t]) =>
    t.parked
      ? [
          {
            actorId,
            activity: t.activity,
            taskId: t.taskId,
            error: t.parked.error,
            attempts: t.parked.attempts,
            at: new Date(t.parked.at).toISOString(),
          },
        ]
      : [],
  );
  if (review.length > 0) reply.needsReview = review;
  if (r.status === 'running') reply.waiting = waitingOf(r);
  return reply;
}

/** The record's pending tasks and timers, for `QueryReply.waiting`. */
function waitingOf(r: WorkflowRecord): NonNullable<QueryReply['waiting']> {
  const tasks: WaitingTask[] = Object.entries(r.tasks).map(([actorId, t]) => {
    const kind = t.kind ?? 'activity';
    const w: WaitingTask = { actorId, kind, taskId: t.taskId };
    if (kind === 'activity') {
      w.activity = t.activity;
      w.queue = t.queue;
      w.taskKey = t.taskKey;
      if (t.priority !== undefined) w.priority = t.priority;
      if (t.fairness !== undefined) w.fairness = t.fairness;
    }
    if (t.target) w.target = { type: t.target.type, id: t.target.id };
    if (t.parked) w.parked = true;
    return w;
  });
  const timers = Object.keys(r.timers).map((id) => {
    const due = r.timerDue?.[id];
    return { id, dueAt: due === undefined ? null : new Date(due).toISOString() };
  });
  const windows = Object.entries(r.debounced ?? {}).map(([key, w]) => ({
    key,
    count: w.count,
    since: new Date(w.since).toISOString(),
  }));
  return { tasks, timers, ...(windows.length > 0 ? { debounced: windows } : {}) };
}
