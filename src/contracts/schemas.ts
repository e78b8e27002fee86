/**
 * The wire contract's shapes as TypeBox schemas: what the engine, the worker and the HTTP ingress
 * validate bodies with (one schema library for the whole project; `/v1/openapi.json` publishes
 * the same objects). The TypeScript interfaces of `wire.ts` stay the documented contract; the
 * type assertions at the end fail to compile when a schema and its interface drift apart.
 *
 * Hot-path checks are compiled once with TypeBox's `TypeCompiler` (a generated function of plain
 * `typeof` tests, no interpretation per message); the error path, taken only by a bad message,
 * walks the errors to name the field at fault ({@link firstIssue}).
 *
 * Objects are open (unknown fields are ignored) unless said otherwise, as the hand-written checks
 * before them were: a newer sender may add optional fields.
 */
import { Type, type Static, type TObject, type TProperties, type TSchema } from '@sinclair/typebox';
import { TypeCompiler, type TypeCheck } from '@sinclair/typebox/compiler';
import { ValueErrorType } from '@sinclair/typebox/errors';
import { unpack } from './codec.js';
import { BATCH_ITEM_STATUSES } from './batch.js';
import { BULK_MAX_RATE } from './bulk.js';
import { BULK_VERBS } from './wire.js';
import type {
  AdminRequest,
  BatchRef,
  ParentRef,
  SendOrigin,
  CancelRequest,
  HistoryRequest,
  StartReply,
  StartRequest,
  TaskMessage,
  TriggerOrigin,
  WorkflowRef,
} from './wire.js';

// ---- Building blocks -------------------------------------------------------------------------

/** One subject token: a workflow type or id (`isToken`). */
export const TokenSchema = Type.String({
  pattern: '^[A-Za-z0-9_=-]{1,256}$',
  description: 'a subject token: 1-256 characters of A-Z a-z 0-9 _ - =',
});

export const WorkflowRefSchema = Type.Object({ type: TokenSchema, id: TokenSchema });

export const ParentRefSchema = Type.Object({
  type: TokenSchema,
  id: TokenSchema,
  taskId: Type.String(),
  key: Type.String(),
});

export const BatchRefSchema = Type.Object({
  id: TokenSchema,
  item: TokenSchema,
  gen: Type.Integer({ minimum: 1 }),
});

export const SendOriginSchema = Type.Object({
  type: TokenSchema,
  id: TokenSchema,
  step: Type.Integer(),
  index: Type.Integer(),
});

export const TriggerOriginSchema = Type.Object({
  name: Type.String(),
  seq: Type.Integer({ minimum: 0 }),
  replay: Type.Optional(Type.Boolean()),
});

/** The same fields, closed: an unknown field is refused (the HTTP API's bodies). */
export function closed<P extends TProperties>(schema: TObject<P>): TObject<P> {
  const { description } = schema as { description?: string };
  return Type.Object(schema.properties, {
    additionalProperties: false,
    ...(description ? { description } : {}),
  });
}

// ---- Public requests (NATS `wf.start|signal|cancel|history`, and the HTTP API) ---------------

/** A priority level: 1 (first) to 5; 3 is the default. */
const PrioritySchema = Type.Integer({
  minimum: 1,
  maximum: 5,
  description:
    "the start's priority level, 1 (first) to 5 (default: the definition's, else 3): its place among its concurrency key's waiters and its activities' default level",
});

/** Body of a start: `{"input": …, "priority"?: 1-5}` (`StartRequest`). */
export const StartRequestSchema = Type.Object({
  input: Type.Optional(Type.Unknown({ description: 'the workflow input (any JSON)' })),
  priority: Type.Optional(PrioritySchema),
});

/** An XState event: its `type` and payload fields. */
export const EventSchema = Type.Object(
  { type: Type.String({ minLength: 1, description: 'the event type' }) },
  { additionalProperties: true, description: 'the event: its type and payload fields' },
);

/** Body of a public signal: an event whose type is not the engine's (`xstate.*`, `jetflow.*`). */
export const SignalRequestSchema = Type.Object(
  {
    type: Type.String({
      minLength: 1,
      pattern: '^(?!xstate\\.|jetflow\\.)',
      description: 'the event type (not starting with `xstate.` or `jetflow.`)',
    }),
  },
  { additionalProperties: true, description: 'the event: its type and payload fields' },
);

/** Reply to a start (`StartReply`). */
export const StartReplySchema = Type.Object({
  id: Type.String(),
  type: Type.String(),
  version: Type.Integer(),
  created: Type.Boolean({ description: 'false: it already existed (an idempotent start)' }),
  deferred: Type.Optional(Type.Literal(true, { description: 'waits for its concurrency key' })),
  position: Type.Optional(Type.Integer({ description: '1-based position among the waiters' })),
});

/** Body of a cancel (`CancelRequest`). */
export const CancelRequestSchema = Type.Object({
  reason: Type.Optional(Type.String({ description: 'why (journaled, told to watchers)' })),
});

/** Body of a history request (`HistoryRequest`); closed: an unknown field is refused. */
export const HistoryRequestSchema = Type.Object(
  {
    fromStep: Type.Optional(
      Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, description: 'first step' }),
    ),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, description: 'max entries' })),
  },
  { additionalProperties: false },
);

// ---- Inbox messages (msgpack, `wf.in.<shard>.<kind>.<type>.<id>`) ----------------------------

export const StartInboxSchema = Type.Object({
  input: Type.Optional(Type.Unknown()),
  priority: Type.Optional(PrioritySchema),
  parent: Type.Optional(ParentRefSchema),
  batch: Type.Optional(BatchRefSchema),
  trigger: Type.Optional(TriggerOriginSchema),
});

export const SignalInboxSchema = Type.Object({
  event: Type.Object(
    { type: Type.String({ minLength: 1, pattern: '^(?!xstate\\.)' }) },
    { additionalProperties: true },
  ),
  msgId: Type.Optional(Type.Unknown({ description: 'a string; anything else is ignored' })),
  trigger: Type.Optional(TriggerOriginSchema),
  from: Type.Optional(SendOriginSchema),
  startIfAbsent: Type.Optional(
    Type.Object({ input: Type.Optional(Type.Unknown()) }, { additionalProperties: true }),
  ),
  undeliverable: Type.Optional(SendOriginSchema),
});

export const CancelInboxSchema = Type.Object({
  reason: Type.Optional(Type.Unknown({ description: 'a string; anything else reads as none' })),
  msgId: Type.Optional(Type.Unknown({ description: 'a string; anything else is ignored' })),
  from: Type.Optional(ParentRefSchema),
});

export const WatchInboxSchema = Type.Object({ watcher: ParentRefSchema });

/**
 * An activity result (`ResultMessage`), as a worker publishes it. Only what the engine cannot do
 * without is required: a result refused here is lost to its workflow, so the rest is read
 * leniently (a non-numeric `attempt` reads as 0, a malformed `from` as absent).
 */
export const ResultMessageSchema = Type.Object({
  taskId: Type.String(),
  actorId: Type.String(),
  ok: Type.Boolean(),
  output: Type.Optional(Type.Unknown()),
  error: Type.Optional(
    Type.Unknown({ description: 'ErrorData: {type, code, message, retryable}' }),
  ),
  attempt: Type.Optional(Type.Unknown({ description: 'a number (1 = first attempt)' })),
  decisions: Type.Optional(Type.Unknown()),
  from: Type.Optional(Type.Unknown({ description: 'WorkflowRef of a child or watched workflow' })),
  token: Type.Optional(
    Type.Unknown({
      description: 'HMAC proof the engine issued it (a string); absent or wrong: forged',
    }),
  ),
});

/** An attempt notice (`ProgressMessage`) on the result subject. */
export const ProgressMessageSchema = Type.Object({
  taskId: Type.String(),
  actorId: Type.String(),
  progress: Type.Literal('retrying'),
  attempt: Type.Number(),
  retryAt: Type.Optional(Type.Unknown({ description: 'epoch ms; anything else reads as 0' })),
  error: Type.Optional(Type.Unknown()),
  token: Type.Optional(
    Type.Unknown({
      description: 'HMAC proof the engine issued it (a string); absent or wrong: forged',
    }),
  ),
});

export const TimerMessageSchema = Type.Object({
  timerId: Type.String(),
  step: Type.Number(),
  event: Type.Optional(Type.Unknown()),
  dueAt: Type.Optional(Type.Unknown({ description: 'epoch ms; anything else is ignored' })),
  token: Type.Optional(
    Type.Unknown({
      description: 'HMAC proof the engine issued it (a string); absent or wrong: forged',
    }),
  ),
});

export const AdmitMessageSchema = Type.Object({
  key: Type.String(),
  startSeq: Type.Number(),
  at: Type.Optional(Type.Unknown({ description: 'epoch ms; anything else is ignored' })),
});

/** The part of an admin inbox message every verb has (the verb's own fields: `admin.ts`). */
export const AdminInboxSchema = Type.Object({
  verb: Type.String(),
  reason: Type.String(),
  by: Type.String(),
});

/** Max length of an admin request's `reason`, `by` and `requestId` (they are journaled). */
export const ADMIN_TEXT_MAX = 1024;

const AdminText = Type.String({
  minLength: 1,
  maxLength: ADMIN_TEXT_MAX,
  pattern: '\\S',
  description: `non-blank text of at most ${ADMIN_TEXT_MAX} characters (journaled)`,
});

/**
 * The fields of an admin request (`AdminRequest`), each with its own schema: which of them a
 * verb takes, and which it needs, is the verb's (`src/engine/admin.ts`).
 */
export const AdminFieldSchemas = {
  reason: AdminText,
  by: AdminText,
  requestId: Type.Optional(AdminText),
  actorId: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  attempts: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  output: Type.Optional(Type.Unknown()),
  error: Type.Optional(
    Type.Object(
      {
        type: Type.Optional(Type.String()),
        message: Type.Optional(Type.String()),
        details: Type.Optional(Type.Unknown()),
      },
      { additionalProperties: false },
    ),
  ),
  toStep: Type.Optional(Type.Integer({ minimum: 0 })),
  nodeId: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  decisions: Type.Optional(Type.Array(Type.Unknown())),
  scope: Type.Optional(Type.Union([Type.Literal('workflow'), Type.Literal('dispatch')])),
  key: Type.Optional(Type.String({ minLength: 1, maxLength: 512 })),
};

/** Body of an admin request (`AdminRequest`), every verb's fields. */
export const AdminRequestSchema = Type.Object(AdminFieldSchemas);

// ---- Trigger operator verbs (`<prefix>.admin.triggers.<verb>`, `….held.<verb>.<name>`) ------

const TriggerName = Type.Optional(Type.String({ description: 'the trigger name' }));
const Seq = Type.Integer({ minimum: 1, description: 'a stream sequence' });

/** Bodies of the trigger verbs, by verb (`jetflow triggers …`, `Client.triggers`). */
export const TriggerRequestSchemas = {
  list: Type.Object({}),
  parked: Type.Object({ name: TriggerName }),
  trace: Type.Object({ name: TriggerName, seq: Type.Integer({ minimum: 0 }) }),
  pause: Type.Object({ name: TriggerName }),
  resume: Type.Object({ name: TriggerName }),
  replay: Type.Object({
    name: TriggerName,
    seq: Type.Optional(Seq),
    key: Type.Optional(Type.String({ description: 'the workflow id the mapping gave' })),
    all: Type.Optional(Type.Boolean()),
  }),
  skip: Type.Object({
    name: TriggerName,
    seq: Seq,
    reason: Type.String({ minLength: 1, pattern: '\\S', description: 'why (in the ledger)' }),
    by: Type.Optional(Type.String()),
  }),
  rewind: Type.Object({
    name: TriggerName,
    toSeq: Type.Optional(Seq),
    since: Type.Optional(Type.Number({ description: 'epoch ms' })),
    waitMs: Type.Optional(Type.Number({ minimum: 0 })),
  }),
};

export type TriggerVerb = keyof typeof TriggerRequestSchemas;

// ---- Batch verbs (`<prefix>.admin.batch.<verb>`, `client.batches`, `jetflow batch`) ---------

/** Longest batch id (the item workflow id `<batchId>=<itemKey>=<gen>` must stay ≤ 256). */
export const BATCH_ID_MAX = 100;
/** Most items in one `add` chunk (the client sends 500). */
export const BATCH_ADD_MAX_ITEMS = 10_000;

const BatchId = Type.String({
  pattern: `^[A-Za-z0-9_=-]{1,${BATCH_ID_MAX}}$`,
  description: `the batch id: 1-${BATCH_ID_MAX} characters of A-Z a-z 0-9 _ - =`,
});
const BatchText = Type.Optional(
  Type.String({
    maxLength: ADMIN_TEXT_MAX,
    description: `at most ${ADMIN_TEXT_MAX} characters (journaled)`,
  }),
);

/** `complete-with-errors` (default), `all-must-succeed` or `{failIfMoreThan: x}`, 0 ≤ x < 1. */
export const BatchPolicySchema = Type.Union([
  Type.Literal('complete-with-errors'),
  Type.Literal('all-must-succeed'),
  Type.Object(
    { failIfMoreThan: Type.Number({ minimum: 0, exclusiveMaximum: 1 }) },
    { additionalProperties: false },
  ),
]);

/** What the batch does when it completes: signal one workflow or start one. */
export const BatchCallbackSchema = Type.Union([
  Type.Object(
    {
      signal: Type.Object(
        {
          type: TokenSchema,
          id: TokenSchema,
          event: Type.Optional(Type.String({ minLength: 1, description: 'the event type' })),
        },
        { additionalProperties: false },
      ),
    },
    { additionalProperties: false },
  ),
  Type.Object(
    {
      start: Type.Object(
        { type: TokenSchema, id: Type.Optional(TokenSchema) },
        { additionalProperties: false },
      ),
    },
    { additionalProperties: false },
  ),
]);

const BatchWho = Type.Object(
  { id: BatchId, by: BatchText, reason: BatchText },
  { additionalProperties: false },
);

/** Bodies of the batch verbs, by verb; closed: an unknown field is refused. */
export const BatchRequestSchemas = {
  create: Type.Object(
    {
      id: BatchId,
      type: TokenSchema,
      policy: Type.Optional(Type.Union([BatchPolicySchema, Type.Null()])),
      cancelRest: Type.Optional(Type.Boolean()),
      onComplete: Type.Optional(Type.Union([BatchCallbackSchema, Type.Null()])),
    },
    { additionalProperties: false },
  ),
  add: Type.Object(
    {
      id: BatchId,
      from: Type.Integer({ minimum: 0, description: 'position of the first item' }),
      // Each item's key is checked on its own: a bad one is rejected, the chunk goes on.
      items: Type.Array(Type.Unknown({ description: '{key, input}' }), {
        maxItems: BATCH_ADD_MAX_ITEMS,
      }),
    },
    { additionalProperties: false },
  ),
  seal: Type.Object({ id: BatchId }, { additionalProperties: false }),
  status: Type.Object({ id: BatchId }, { additionalProperties: false }),
  items: Type.Object(
    {
      id: BatchId,
      status: Type.Optional(Type.Union(BATCH_ITEM_STATUSES.map((x) => Type.Literal(x)))),
      cursor: Type.Optional(Type.Integer({ minimum: 1, description: 'from the previous page' })),
      limit: Type.Optional(Type.Integer({ minimum: 1, description: 'at most 1000 are given' })),
    },
    { additionalProperties: false },
  ),
  'retry-failed': BatchWho,
  cancel: BatchWho,
  pause: BatchWho,
  resume: BatchWho,
};

export type BatchRequestVerb = keyof typeof BatchRequestSchemas;

// ---- Bulk jobs (`<prefix>.admin.bulk`) ----------------------------------------------------

/**
 * The job's own fields of a bulk request; the verb's fields (`reason`, `by`, `attempts`, …) are
 * checked as for one workflow (`AdminFieldSchemas`, by `parseAdminFields`).
 */
export const BulkJobFieldsSchema = Type.Object({
  verb: Type.Union(
    BULK_VERBS.map((v) => Type.Literal(v)),
    { description: 'the admin verb run on every match' },
  ),
  query: Type.Object(
    {},
    { additionalProperties: true, description: 'search filters, as for <prefix>.search' },
  ),
  dryRun: Type.Optional(Type.Boolean()),
  ratePerSec: Type.Optional(
    Type.Number({ exclusiveMinimum: 0, maximum: BULK_MAX_RATE, description: 'workflows a second' }),
  ),
});

/** A bulk job's status or cancel request. */
export const BulkJobRefSchema = Type.Object({
  jobId: Type.String({ pattern: '^[A-Za-z0-9]{1,64}$', description: 'the id of a bulk job' }),
});

// ---- Activity tasks (msgpack on `wf.task.<queue>.<taskKey>`) --------------------------------

export const RetryPolicySchema = Type.Object({
  initialIntervalMs: Type.Number(),
  backoffCoefficient: Type.Number(),
  maxIntervalMs: Type.Number(),
  jitter: Type.Number(),
  nonRetryableErrorTypes: Type.Array(Type.String()),
  delaysMs: Type.Optional(Type.Array(Type.Number())),
});

/** An activity task (`TaskMessage`) as the worker takes it. */
export const TaskMessageSchema = Type.Object({
  v: Type.Literal(1),
  taskId: Type.String({ minLength: 1 }),
  // Part of the worker's ledger key: a bad one would fail every take and hold the task forever.
  taskKey: Type.String({ pattern: '^[A-Za-z0-9_-]+$' }),
  workflowType: Type.String(),
  workflowId: Type.String(),
  actorId: Type.String(),
  activity: Type.String(),
  queue: Type.String(),
  input: Type.Optional(Type.Unknown()),
  maxAttempts: Type.Number(),
  retry: RetryPolicySchema,
  startToCloseMs: Type.Number(),
  heartbeatMs: Type.Optional(Type.Number()),
  deadline: Type.Optional(Type.Number()),
  node: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
  http: Type.Optional(
    Type.Object({
      url: Type.String(),
      method: Type.Optional(Type.String()),
      headers: Type.Optional(Type.Record(Type.String(), Type.String())),
      timeoutMs: Type.Optional(Type.Number()),
    }),
  ),
  rateLimit: Type.Optional(
    Type.Object({ key: Type.String(), limit: Type.Number(), periodMs: Type.Number() }),
  ),
  concurrency: Type.Optional(
    Type.Object({ key: Type.String(), limit: Type.Integer({ minimum: 1 }) }),
  ),
  priority: Type.Optional(Type.Integer({ minimum: 1, maximum: 5 })),
  fairness: Type.Optional(
    Type.Object({
      key: Type.String({ minLength: 1, maxLength: 256 }),
      weight: Type.Integer({ minimum: 1, maximum: 1000 }),
    }),
  ),
  resultSubject: Type.String({ minLength: 1 }),
  scheduledAt: Type.Number(),
  token: Type.Optional(Type.String()),
});

// ---- Compiled checks and errors naming the field -------------------------------------------

/** A schema compiled once; `Check` is the hot path. */
export type Checker<T extends TSchema> = TypeCheck<T>;

export function compile<T extends TSchema>(schema: T): Checker<T> {
  return TypeCompiler.Compile(schema);
}

/** The first thing wrong with a value, the field named as a dotted path (`parent.taskId`). */
export interface WireIssue {
  /** Dotted path of the field at fault; `''` for the body itself. */
  field: string;
  /** TypeBox's reason, e.g. `Expected string`, `Unexpected property`. */
  why: string;
  /** The unknown field's name was the fault (a closed object). */
  unknown: boolean;
  /** The field is absent (a required one). */
  missing: boolean;
  /** The value found there. */
  value: unknown;
  /** The schema the value failed (its `minimum`, `maximum`, … make a message). */
  schema: TSchema;
}

/**
 * The first issue of `value` against `checker` (undefined when it passes). Prefers the deepest
 * error of the first field at fault, so `parent: {type: 1}` names `parent.type`.
 */
export function firstIssue(
  checker: Pick<Checker<TSchema>, 'Errors'>,
  value: unknown,
): WireIssue | undefined {
  const first = checker.Errors(value).First();
  if (!first) return undefined;
  const field = first.path.split('/').filter(Boolean).join('.');
  return {
    field,
    why: first.message,
    unknown: first.type === ValueErrorType.ObjectAdditionalProperties,
    missing: first.value === undefined,
    value: first.value,
    schema: first.schema,
  };
}

/** The top-level field of an issue (`parent` of `parent.taskId`). */
export const topField = (i: WireIssue): string => i.field.split('.')[0] ?? '';

/** `{field, why}` for an error's `details`. */
export const issueDetails = (i: WireIssue): { field: string; why: string } => ({
  field: i.field,
  why: i.why,
});

const taskCheck = compile(TaskMessageSchema);

/** A task body the worker cannot run: it says which field is at fault. */
export class MalformedTaskError extends Error {
  constructor(
    message: string,
    readonly issue?: WireIssue,
  ) {
    super(message);
    this.name = 'MalformedTaskError';
  }
}

/**
 * Decode and check an activity task (msgpack). Throws {@link MalformedTaskError} naming the
 * field at fault; the worker terminates such a message (it can never run).
 */
export function decodeTask(data: Uint8Array): TaskMessage {
  let task: unknown;
  try {
    task = unpack(data);
  } catch (cause) {
    throw new MalformedTaskError(`task body is not valid msgpack: ${String(cause)}`);
  }
  // `input` may be absent (an activity called with `undefined`).
  if (taskCheck.Check(task)) return task as TaskMessage;
  const i = firstIssue(taskCheck, task);
  throw new MalformedTaskError(
    i?.field ? `malformed task: ${i.field}: ${i.why}` : 'malformed task: not an object',
    i,
  );
}

const controlCheck = compile(Type.Object({ cancel: Type.String() }));

/** The task id of a task control message (`{cancel}`), or undefined for anything else. */
export function decodeTaskControl(data: Uint8Array): string | undefined {
  try {
    const b = unpack(data);
    return controlCheck.Check(b) ? b.cancel : undefined;
  } catch {
    return undefined;
  }
}

// ---- Schemas and interfaces agree (compile-time) --------------------------------------------

type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const agree = <T extends true>(): T | undefined => undefined;
agree<Same<Static<typeof WorkflowRefSchema>, WorkflowRef>>();
agree<Same<Static<typeof ParentRefSchema>, ParentRef>>();
agree<Same<Static<typeof BatchRefSchema>, BatchRef>>();
agree<Same<Static<typeof SendOriginSchema>, SendOrigin>>();
// `replay` is `true` only in the interface; a boolean on the wire.
agree<Static<typeof TriggerOriginSchema> extends Omit<TriggerOrigin, 'replay'> ? true : false>();
// Every field a task must have is checked (optional fields added later pass through unchecked).
agree<Static<typeof TaskMessageSchema> extends Omit<TaskMessage, 'input'> ? true : false>();
agree<Same<Static<typeof TaskMessageSchema>['retry'], TaskMessage['retry']>>();
agree<Same<Static<typeof StartRequestSchema>, StartRequest>>();
agree<Same<Static<typeof CancelRequestSchema>, CancelRequest>>();
agree<Same<Static<typeof HistoryRequestSchema>, HistoryRequest>>();
agree<Same<Static<typeof StartReplySchema>, StartReply>>();
agree<Same<Static<typeof AdminRequestSchema>, AdminRequest>>();
