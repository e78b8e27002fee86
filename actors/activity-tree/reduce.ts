/**
 * The activity tree's reducer: Backbeat's scheduling rules (backbeat-reference.md §4, as
 * ACTIVITY-TREES.md §2.3 states them) over a flat node table. Pure: no XState, no I/O, no clock
 * (times come from the event's `$at`, the engine's step time). `reduce(tree, event)` returns the
 * next tree and the commands the machine turns into engine effects, or a rejection.
 *
 * Built here (steps 1–3 of the design's build order): signals in lanes, decisions on results,
 * the three modes, flags, `fireAt` / `delayMs` as durable timers, attempt notices, exhaustion
 * (`park`, `skip`, `shutdown`, `fail`) with alerts and re-alerts, `close`, link nodes (`linkTo`:
 * a node of another tree, over cross-workflow sends), child-workflow nodes (`workflow`), and the
 * operator's node verbs (step 4, E9: `jetflow.admin.<verb>` events, checked against
 * {@link VERB_ALLOWED}; `retry` starts run r+1 of any kind through {@link rerunNode}'s path).
 */

export type NodeStatus =
  | 'ready'
  | 'scheduled'
  | 'paused'
  | 'running'
  | 'retrying'
  | 'errored'
  | 'awaitingChildren'
  | 'complete'
  | 'canceled';

export const NODE_STATUSES: readonly NodeStatus[] = [
  'ready',
  'scheduled',
  'paused',
  'running',
  'retrying',
  'errored',
  'awaitingChildren',
  'complete',
  'canceled',
];

export type Mode = 'blocking' | 'non_blocking' | 'fire_and_forget';
export type Kind = 'activity' | 'flag' | 'link' | 'workflow';
export type OnExhausted = 'park' | 'skip' | 'shutdown' | 'fail';
export type Outcome = 'completed' | 'resolved' | 'skipped' | 'shutdown';
export type CanceledBy = 'operator' | 'ancestor' | 'shutdown' | 'prune' | 'link' | 'workflow';
type Scalar = string | number | boolean;

export interface ErrorData {
  type: string;
  code: string;
  message: string;
  retryable: boolean;
  attempt?: number;
  details?: unknown;
}

export interface RetryOptions {
  maxAttempts?: number;
  initialIntervalMs?: number;
  backoffCoefficient?: number;
  maxIntervalMs?: number;
  jitter?: number;
  nonRetryableErrorTypes?: string[];
  delaysMs?: number[];
}

/** Per-node options: the signal or decision, then the tree's `defaults`, then the engine's. */
export interface NodeOptions {
  retry?: RetryOptions;
  startToCloseMs?: number;
  heartbeatMs?: number;
  scheduleToCloseMs?: number;
  onExhausted?: OnExhausted;
  realertMs?: number;
}

export interface StatusChange {
  from: NodeStatus | null;
  to: NodeStatus;
  at: number;
  by?: string;
}

export interface Node {
  id: string;
  parentId: string | null;
  rootId: string;
  seq: number;
  name: string;
  kind: Kind;
  mode: Mode;
  queue: string;
  lane?: string;
  input: unknown;
  metadata?: Record<string, Scalar>;
  options: NodeOptions;
  fireAt?: number;
  delayMs?: number;
  status: NodeStatus;
  statusSince: number;
  outcome?: Outcome;
  canceledBy?: CanceledBy;
  run: number;
  attempt: number;
  retryAt?: number;
  error?: ErrorData;
  errors: { run: number; attempt: number; at: number; error: ErrorData }[];
  output?: unknown;
  children: string[];
  /** Non-fire-and-forget children not yet complete or canceled. */
  open: number;
  /** A link node: the remote tree, its node once accepted, and that node's last status. */
  link?: {
    type: string;
    id: string;
    nodeId: string | null;
    status?: NodeStatus;
    start?: { input: unknown };
  };
  /** A node created by another tree's link: where its status changes are reported. */
  linkedFrom?: { type: string; id: string; nodeId: string; run: number };
  /** A child-workflow node: the workflow it starts (run 1: `id`; run r: `<id>-r<r>`) or attaches to. */
  workflow?: { type: string; id: string; attach: boolean; input?: unknown; status?: string };
  alerts: number;
  /** Alerts sent in the current run (the alert's `count`). */
  runAlerts: number;
  /** Attempt budget of the current run when an operator's `retry` gave one (`attempts`). */
  maxAttempts?: number;
  createdAt: number;
  history: StatusChange[];
}

export interface TreeInput {
  subject?: unknown;
  attributes?: Record<string, Scalar>;
  signalQueue?: string;
  defaults?: NodeOptions;
  maxNodes?: number;
}

export interface Tree {
  subject: unknown;
  attributes: Record<string, Scalar>;
  signalQueue: string;
  defaults: NodeOptions;
  maxNodes: number;
  /** Last node number handed out. */
  seq: number;
  nodes: Record<string, Node>;
  /** Top-level nodes in seq order. */
  roots: string[];
  /** Signal idempotency key → node id. */
  keys: Record<string, string>;
  dispatchPaused: boolean;
  closed: boolean;
  counts: Record<NodeStatus, number>;
  /** Set when a node with `onExhausted: "fail"` failed: the workflow ends `failed`. */
  failure?: ErrorData;
}

/** One status change as emitted in the step's `nodes` event (wire form: `at` is ISO). */
export interface NodeChange {
  nodeId: string;
  name: string;
  from: NodeStatus | null;
  to: NodeStatus;
  at: string;
  outcome?: Outcome;
  canceledBy?: CanceledBy;
  attempt?: number;
  /** At creation: the node's queue (and metadata), for the visibility index. */
  queue?: string;
  metadata?: Record<string, Scalar>;
  /** To `running`: the run dispatched (above 1 after an operator's `retry`). */
  run?: number;
}

/** What a node task carries besides the v1 task fields (ACTIVITY-TREES §2.9.4). */
export interface NodeRef {
  id: string;
  parentId: string | null;
  rootId: string;
  name: string;
  kind: Kind;
  mode: Mode;
  run: number;
  seq: number;
  lane?: string;
  metadata?: Record<string, Scalar>;
}

/** What the engine needs to dispatch one node run as an activity task. */
export interface ActivityTarget {
  activity: string;
  queue: string;
  input: unknown;
  options: NodeOptions;
  node: NodeRef;
}

/** One node run: an activity task, a child workflow, or the await of an existing workflow. */
export type DispatchTarget =
  | ActivityTarget
  | { workflow: { type: string; id: string; input: unknown }; node: NodeRef }
  | { watch: { type: string; id: string }; node: NodeRef };

type WfRef = { type: string; id: string };

export type Command =
  | { kind: 'dispatch'; key: string; target: DispatchTarget }
  /** An event to another workflow (a link's traffic), exactly once. */
  | {
      kind: 'send';
      to: WfRef;
      event: { type: string; [k: string]: unknown };
      startIfAbsent?: { input: unknown };
    }
  | { kind: 'cancelTask'; key: string }
  | { kind: 'timer'; timerId: string; event: TreeEvent; delayMs: number }
  | { kind: 'cancelTimer'; timerId: string }
  | { kind: 'emit'; event: { type: string; [k: string]: unknown } };

export interface Rejection {
  code: 'bad_request' | 'invalid_state' | 'event_not_accepted' | 'not_found';
  message: string;
  details?: unknown;
}

export interface Result {
  tree: Tree;
  commands: Command[];
  reply?: unknown;
  reject?: Rejection;
}

type At = { $at?: number; $from?: WfRef };
export type TreeEvent =
  | ({ type: 'signal' } & Record<string, unknown> & At)
  | ({ type: 'close' } & At)
  | ({
      type: 'jetflow.task.done';
      key: string;
      taskId?: string;
      output?: unknown;
      decisions?: unknown;
      attempt?: number;
    } & At)
  | ({
      type: 'jetflow.task.failed';
      key: string;
      taskId?: string;
      error?: unknown;
      attempt?: number;
    } & At)
  | ({
      type: 'jetflow.task.retrying';
      key: string;
      taskId?: string;
      attempt: number;
      retryAt?: number;
      error?: unknown;
    } & At)
  | ({ type: 'jetflow.tree.fire'; nodeId: string; run: number } & At)
  | ({ type: 'jetflow.tree.realert'; nodeId: string; run: number } & At)
  /** From a linking tree: create a top-level node for its link node `nodeId` (run `run`). */
  | ({ type: 'jetflow.tree.link'; nodeId: string; run: number; spec: unknown } & At)
  /** To the linking tree: the remote node exists. */
  | ({
      type: 'jetflow.tree.linkAccepted';
      nodeId: string;
      run: number;
      remoteNodeId: string;
      status: NodeStatus;
    } & At)
  /** To the linking tree: the remote node became errored, complete or canceled (or left errored). */
  | ({
      type: 'jetflow.tree.linkStatus';
      nodeId: string;
      run: number;
      status: NodeStatus;
      output?: unknown;
      error?: unknown;
    } & At)
  /** From a linking tree: its link node was canceled; cancel the remote node. */
  | ({ type: 'jetflow.tree.unlink'; nodeId: string; run: number } & At)
  /** A send of this tree could not be delivered (E8). */
  | ({ type: 'jetflow.send.failed'; to?: WfRef; event?: unknown; error?: unknown } & At)
  | AdminEvent;

/** The node verbs (and `scope: "dispatch"` pause/resume) as the engine delivers them (E9). */
export type NodeVerb = 'retry' | 'resolve' | 'shutdown' | 'cancel' | 'prune';
export type AdminEvent = {
  type: `jetflow.admin.${NodeVerb | 'pause' | 'resume'}`;
  nodeId?: string;
  /** retry: the attempt budget of the new run (default: the node's policy). */
  attempts?: number;
  /** resolve, shutdown: the node's output (default null). */
  output?: unknown;
  /** resolve: children, exactly as from a result. */
  decisions?: unknown;
  /** pause, resume: only "dispatch" reaches the tree. */
  scope?: string;
  by?: string;
  reason?: string;
  requestId?: string;
} & At;

/**
 * The node statuses each node verb is allowed in (ACTIVITY-TREES §2.7); any other status gets
 * `invalid_state` with these as `allowed`.
 */
export const VERB_ALLOWED: Readonly<Record<NodeVerb, readonly NodeStatus[]>> = Object.freeze({
  retry: ['retrying', 'errored'],
  resolve: ['scheduled', 'paused', 'running', 'retrying', 'errored'],
  shutdown: ['scheduled', 'paused', 'running', 'retrying', 'errored'],
  cancel: ['ready', 'scheduled', 'paused', 'running', 'retrying', 'errored', 'awaitingChildren'],
  prune: [
    'ready',
    'scheduled',
    'paused',
    'running',
    'retrying',
    'errored',
    'awaitingChildren',
    'complete',
  ],
});

export const DEFAULT_MAX_NODES = 2_000;
export const MAX_NODES_BOUND = 10_000;
export const DEFAULT_REALERT_MS = 3_600_000;
const DEFAULT_MAX_ATTEMPTS = 5;
const ERRORS_KEPT = 10;
const HISTORY_KEPT = 50;
const TERMINAL: ReadonlySet<NodeStatus> = new Set(['complete', 'canceled']);
const OPEN_FOR_IDLE: ReadonlySet<NodeStatus> = new Set([
  'ready',
  'scheduled',
  'paused',
  'running',
  'retrying',
  'errored',
  'awaitingChildren',
]);
const TOKEN = /^[A-Za-z0-9_\-=]{1,256}$/;

export const isTerminal = (s: NodeStatus) => TERMINAL.has(s);

// ---------------------------------------------------------------------------------------------
// Validation (signals, decisions, start input)

class Invalid extends Error {
  constructor(
    readonly field: string,
    readonly why: string,
  ) {
    super(`${field}: ${why}`);
  }
}

const isObj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function positiveMs(o: Record<string, unknown>, k: string, zeroOk = false): number | undefined {
  const v = o[k];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || (!zeroOk && v === 0)) {
    throw new Invalid(k, zeroOk ? 'must be a number ≥ 0 (ms)' : 'must be a number > 0 (ms)');
  }
  return v;
}

function scalars(v: unknown, field: string): Record<string, Scalar> | undefined {
  if (v === undefined) return undefined;
  if (!isObj(v)) throw new Invalid(field, 'must be an object of scalar values');
  const keys = Object.keys(v);
  if (keys.length > 16) throw new Invalid(field, 'at most 16 keys');
  for (const k of keys) {
    const x = v[k];
    if (typeof x !== 'string' && typeof x !== 'number' && typeof x !== 'boolean') {
      throw new Invalid(`${field}.${k}`, 'must be a string, number or boolean');
    }
  }
  return v as Record<string, Scalar>;
}

const RETRY_FIELDS = new Set([
  'maxAttempts',
  'initialIntervalMs',
  'backoffCoefficient',
  'maxIntervalMs',
  'jitter',
  'nonRetryableErrorTypes',
  'delaysMs',
]);

function retryOptions(v: unknown): RetryOptions | undefined {
  if (v === undefined) return undefined;
  if (!isObj(v)) throw new Invalid('retry', 'must be an object');
  for (const k of Object.keys(v))
    if (!RETRY_FIELDS.has(k)) throw new Invalid(`retry.${k}`, 'unknown field');
  const r: RetryOptions = {};
  if (v.maxAttempts !== undefined) {
    if (!Number.isInteger(v.maxAttempts) || (v.maxAttempts as number) < 1)
      throw new Invalid('retry.maxAttempts', 'must be an integer ≥ 1');
    r.maxAttempts = v.maxAttempts as number;
  }
  for (const k of ['initialIntervalMs', 'maxIntervalMs'] as const) {
    const x = v[k];
    if (x === undefined) continue;
    if (typeof x !== 'number' || !(x > 0)) throw new Invalid(`retry.${k}`, 'must be a number > 0');
    r[k] = x;
  }
  if (v.backoffCoefficient !== undefined) {
    if (typeof v.backoffCoefficient !== 'number' || !(v.backoffCoefficient >= 1))
      throw new Invalid('retry.backoffCoefficient', 'must be a number ≥ 1');
    r.backoffCoefficient = v.backoffCoefficient;
  }
  if (v.jitter !== undefined) {
    if (typeof v.jitter !== 'number' || !(v.jitter >= 0 && v.jitter <= 1))
      throw new Invalid('retry.jitter', 'must be a number in 0..1');
    r.jitter = v.jitter;
  }
  if (v.nonRetryableErrorTypes !== undefined) {
    const t = v.nonRetryableErrorTypes;
    if (!Array.isArray(t) || !t.every((x) => typeof x === 'string'))
      throw new Invalid('retry.nonRetryableErrorTypes', 'must be an array of strings');
    r.nonRetryableErrorTypes = t as string[];
  }
  if (v.delaysMs !== undefined) {
    const d = v.delaysMs;
    if (
      !Array.isArray(d) ||
      d.length < 1 ||
      d.length > 100 ||
      !d.every((x) => typeof x === 'number' && Number.isFinite(x) && x >= 0)
    )
      throw new Invalid('retry.delaysMs', 'must be 1–100 numbers ≥ 0 (ms)');
    r.delaysMs = d as number[];
  }
  return r;
}

const ON_EXHAUSTED = new Set<OnExhausted>(['park', 'skip', 'shutdown', 'fail']);

/** The per-node options found in `o` (signal, decision or start `defaults`). */
function nodeOptions(o: Record<string, unknown>): NodeOptions {
  const out: NodeOptions = {};
  const retry = retryOptions(o.retry);
  if (retry) out.retry = retry;
  for (const k of ['startToCloseMs', 'heartbeatMs', 'scheduleToCloseMs'] as const) {
    const v = positiveMs(o, k);
    if (v !== undefined) out[k] = v;
  }
  const realert = positiveMs(o, 'realertMs', true);
  if (realert !== undefined) out.realertMs = realert;
  if (o.onExhausted !== undefined) {
    if (!ON_EXHAUSTED.has(o.onExhausted as OnExhausted))
      throw new Invalid('onExhausted', 'must be park, skip, shutdown or fail');
    out.onExhausted = o.onExhausted as OnExhausted;
  }
  return out;
}

const OPTION_FIELDS = [
  'retry',
  'startToCloseMs',
  'heartbeatMs',
  'scheduleToCloseMs',
  'onExhausted',
  'realertMs',
];

/** Field-by-field precedence: `own` over `defaults` (the engine's come last, when dispatched). */
function mergeOptions(defaults: NodeOptions, own: NodeOptions): NodeOptions {
  const out: NodeOptions = { ...defaults, ...own };
  if (defaults.retry || own.retry) out.retry = { ...defaults.retry, ...own.retry };
  return out;
}

function name(v: unknown): string {
  if (typeof v !== 'string' || v.length < 1 || v.length > 256)
    throw new Invalid('name', 'required, a string of 1–256 characters');
  return v;
}

function timeOf(v: unknown, field: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string') {
    const t = Date.parse(v);
    if (Number.isFinite(t)) return t;
  }
  throw new Invalid(field, 'must be epoch ms or an ISO-8601 time');
}

interface Spec {
  name: string;
  kind: Kind;
  mode: Mode;
  queue: string;
  lane?: string;
  key?: string;
  input: unknown;
  metadata?: Record<string, Scalar>;
  options: NodeOptions;
  fireAt?: number;
  delayMs?: number;
  link?: { type: string; id: string; start?: { input: unknown } };
  workflow?: { type: string; id: string; attach: boolean; input?: unknown };
  linkedFrom?: { type: string; id: string; nodeId: string; run: number };
}

const SIGNAL_FIELDS = new Set([
  'type',
  '$at',
  'name',
  'queue',
  'lane',
  'key',
  'input',
  'metadata',
  'fireAt',
  'delayMs',
  'mode',
  ...OPTION_FIELDS,
]);
const DECISION_FIELDS = new Set([
  'name',
  'kind',
  'mode',
  'queue',
  'input',
  'metadata',
  'fireAt',
  'delayMs',
  'linkTo',
  'workflow',
  ...OPTION_FIELDS,
]);
const MODES = new Set<Mode>(['blocking', 'non_blocking', 'fire_and_forget']);

function timing(o: Record<string, unknown>): { fireAt?: number; delayMs?: number } {
  if (o.fireAt !== undefined && o.delayMs !== undefined)
    throw new Invalid('delayMs', 'fireAt and delayMs exclude each other');
  const fireAt = timeOf(o.fireAt, 'fireAt');
  const delayMs = positiveMs(o, 'delayMs', true);
  return {
    ...(fireAt !== undefined ? { fireAt } : {}),
    ...(delayMs !== undefined ? { delayMs } : {}),
  };
}

function signalSpec(t: Tree, e: Record<string, unknown>): Spec {
  for (const k of Object.keys(e)) if (!SIGNAL_FIELDS.has(k)) throw new Invalid(k, 'unknown field');
  const n = name(e.name);
  if (e.mode !== undefined && e.mode !== 'blocking')
    throw new Invalid(
      'mode',
      'signals are blocking within their lane: only "blocking" is accepted',
    );
  const queue = e.queue ?? t.signalQueue;
  if (typeof queue !== 'string' || !TOKEN.test(queue))
    throw new Invalid('queue', 'must be a token');
  const lane = e.lane ?? 'default';
  if (typeof lane !== 'string' || !TOKEN.test(lane)) throw new Invalid('lane', 'must be a token');
  if (e.key !== undefined && (typeof e.key !== 'string' || e.key.length < 1 || e.key.length > 256))
    throw new Invalid('key', 'must be a string of 1–256 characters');
  const metadata = scalars(e.metadata, 'metadata');
  return {
    name: n,
    kind: 'activity',
    mode: 'blocking',
    queue,
    lane,
    ...(e.key !== undefined ? { key: e.key as string } : {}),
    input: e.input ?? null,
    ...(metadata ? { metadata } : {}),
    options: mergeOptions(t.defaults, nodeOptions(e)),
    ...timing(e),
  };
}

function decisionSpec(t: Tree, parent: Node, d: unknown): Spec {
  if (!isObj(d)) throw new Invalid('', 'a decision must be an object');
  for (const k of Object.keys(d))
    if (!DECISION_FIELDS.has(k)) throw new Invalid(k, 'unknown field');
  const n = name(d.name);
  if (d.linkTo !== undefined && d.workflow !== undefined)
    throw new Invalid('workflow', 'linkTo and workflow exclude each other');
  const implied: Kind | undefined =
    d.linkTo !== undefined ? 'link' : d.workflow !== undefined ? 'workflow' : undefined;
  const kind = (d.kind ?? implied ?? 'activity') as Kind;
  if (!['activity', 'flag', 'link', 'workflow'].includes(kind))
    throw new Invalid('kind', 'must be activity, flag, link or workflow');
  if (implied !== undefined && kind !== implied)
    throw new Invalid('kind', `contradicts ${implied === 'link' ? 'linkTo' : 'workflow'}`);
  if (kind === 'link' && d.linkTo === undefined)
    throw new Invalid('linkTo', 'required for kind link');
  if (kind === 'workflow' && d.workflow === undefined)
    throw new Invalid('workflow', 'required for kind workflow');
  const link = d.linkTo !== undefined ? linkTo(d.linkTo) : undefined;
  const child = d.workflow !== undefined ? childWorkflow(d.workflow) : undefined;
  const mode = (d.mode ?? 'blocking') as Mode;
  if (!MODES.has(mode))
    throw new Invalid('mode', 'must be blocking, non_blocking or fire_and_forget');
  const queue = d.queue ?? parent.queue;
  if (typeof queue !== 'string' || !TOKEN.test(queue))
    throw new Invalid('queue', 'must be a token');
  const metadata = scalars(d.metadata, 'metadata');
  return {
    name: n,
    kind,
    mode,
    queue,
    input: d.input ?? null,
    ...(metadata ? { metadata } : {}),
    options: mergeOptions(t.defaults, nodeOptions(d)),
    ...timing(d),
    ...(link ? { link } : {}),
    ...(child ? { workflow: child } : {}),
  };
}

/** A workflow reference `{type, id}` (both tokens) at `field`. */
function wfRef(v: Record<string, unknown>, field: string): WfRef {
  if (typeof v.type !== 'string' || !TOKEN.test(v.type))
    throw new Invalid(`${field}.type`, 'must be a workflow type (token)');
  if (typeof v.id !== 'string' || !TOKEN.test(v.id))
    throw new Invalid(`${field}.id`, 'must be a workflow id (token)');
  return { type: v.type, id: v.id };
}

function linkTo(v: unknown): NonNullable<Spec['link']> {
  if (!isObj(v)) throw new Invalid('linkTo', 'must be {type, id, start?}');
  for (const k of Object.keys(v))
    if (!['type', 'id', 'start'].includes(k)) throw new Invalid(`linkTo.${k}`, 'unknown field');
  const ref = wfRef(v, 'linkTo');
  if (v.start === undefined) return ref;
  if (!isObj(v.start)) throw new Invalid('linkTo.start', 'must be {input?}');
  for (const k of Object.keys(v.start))
    if (k !== 'input') throw new Invalid(`linkTo.start.${k}`, 'unknown field');
  return { ...ref, start: { input: v.start.input ?? null } };
}

function childWorkflow(v: unknown): NonNullable<Spec['workflow']> {
  if (!isObj(v)) throw new Invalid('workflow', 'must be {type, id, input?, attach?}');
  for (const k of Object.keys(v))
    if (!['type', 'id', 'input', 'attach'].includes(k))
      throw new Invalid(`workflow.${k}`, 'unknown field');
  const ref = wfRef(v, 'workflow');
  if (v.attach !== undefined && typeof v.attach !== 'boolean')
    throw new Invalid('workflow.attach', 'must be a boolean');
  const attach = v.attach === true;
  if (attach && v.input !== undefined)
    throw new Invalid('workflow.input', 'an attached workflow is not started: no input');
  return { ...ref, attach, ...(attach ? {} : { input: v.input ?? null }) };
}

/** The spec of the node a linking tree asks for (its link node's name, queue, input, options). */
function linkedSpec(t: Tree, v: unknown): Spec {
  if (!isObj(v)) throw new Invalid('spec', 'must be an object');
  const n = name(v.name);
  const queue = v.queue ?? t.signalQueue;
  if (typeof queue !== 'string' || !TOKEN.test(queue))
    throw new Invalid('queue', 'must be a token');
  const metadata = scalars(v.metadata, 'metadata');
  return {
    name: n,
    kind: 'activity',
    mode: 'blocking',
    queue,
    lane: 'default',
    input: v.input ?? null,
    ...(metadata ? { metadata } : {}),
    options: mergeOptions(t.defaults, nodeOptions(isObj(v.options) ? v.options : {})),
  };
}

/** The initial tree, or a `bad_request` rejection with `{field, why}`. */
export function initTree(input: unknown): Tree | Rejection {
  try {
    const i = (input ?? {}) as Record<string, unknown>;
    if (!isObj(i)) throw new Invalid('input', 'must be an object');
    const known = new Set(['subject', 'attributes', 'signalQueue', 'defaults', 'maxNodes']);
    for (const k of Object.keys(i)) if (!known.has(k)) throw new Invalid(k, 'unknown field');
    const attributes = scalars(i.attributes, 'attributes') ?? {};
    const signalQueue = i.signalQueue ?? 'activityTree';
    if (typeof signalQueue !== 'string' || !TOKEN.test(signalQueue))
      throw new Invalid('signalQueue', 'must be a token');
    let defaults: NodeOptions = {};
    if (i.defaults !== undefined) {
      if (!isObj(i.defaults)) throw new Invalid('defaults', 'must be an object');
      for (const k of Object.keys(i.defaults))
        if (!OPTION_FIELDS.includes(k)) throw new Invalid(`defaults.${k}`, 'unknown field');
      defaults = nodeOptions(i.defaults);
    }
    const maxNodes = i.maxNodes ?? DEFAULT_MAX_NODES;
    if (
      !Number.isInteger(maxNodes) ||
      (maxNodes as number) < 1 ||
      (maxNodes as number) > MAX_NODES_BOUND
    )
      throw new Invalid('maxNodes', `must be an integer in 1..${MAX_NODES_BOUND}`);
    return {
      subject: i.subject ?? null,
      attributes,
      signalQueue,
      defaults,
      maxNodes: maxNodes as number,
      seq: 0,
      nodes: {},
      roots: [],
      keys: {},
      dispatchPaused: false,
      closed: false,
      counts: emptyCounts(),
    };
  } catch (err) {
    if (err instanceof Invalid)
      return {
        code: 'bad_request',
        message: `invalid tree input: ${err.message}`,
        details: { field: err.field, why: err.why },
      };
    throw err;
  }
}

export function emptyCounts(): Record<NodeStatus, number> {
  return Object.fromEntries(NODE_STATUSES.map((s) => [s, 0])) as Record<NodeStatus, number>;
}

// ---------------------------------------------------------------------------------------------
// The reducer

/** Mutable working state of one reduce call (the input tree is never mutated). */
class Step {
  readonly commands: Command[] = [];
  readonly changes: NodeChange[] = [];
  readonly alerts: Record<string, unknown>[] = [];
  readonly t: Tree;
  private readonly copied = new Set<string>();

  /** Re-alert timers already canceled in this step (each is canceled once). */
  private readonly realertStopped = new Set<string>();

  constructor(
    tree: Tree,
    readonly now: number,
    /** The operator whose verb this step applies: set on every history entry it makes. */
    readonly by?: string,
  ) {
    this.t = { ...tree, nodes: { ...tree.nodes }, counts: { ...tree.counts } };
  }

  /** The node, copied on first write (the input tree stays as it was). */
  node(id: string): Node {
    const n = this.t.nodes[id];
    if (!n) throw new Error(`no node ${id}`);
    if (this.copied.has(id)) return n;
    const c: Node = {
      ...n,
      children: [...n.children],
      errors: [...n.errors],
      history: [...n.history],
    };
    this.t.nodes[id] = c;
    this.copied.add(id);
    return c;
  }

  setStatus(n: Node, to: NodeStatus, extra: { by?: string } = {}): void {
    const from = n.status;
    if (from === to) return;
    this.t.counts[from] -= 1;
    this.t.counts[to] += 1;
    n.status = to;
    n.statusSince = this.now;
    const by = extra.by ?? this.by;
    n.history.push({ from, to, at: this.now, ...(by ? { by } : {}) });
    if (n.history.length > HISTORY_KEPT) n.history.splice(0, n.history.length - HISTORY_KEPT);
    this.record(n, from, to);
  }

  record(n: Node, from: NodeStatus | null, to: NodeStatus): void {
    this.changes.push({
      nodeId: n.id,
      name: n.name,
      from,
      to,
      at: new Date(this.now).toISOString(),
      ...((to === 'awaitingChildren' || to === 'complete') && n.outcome
        ? { outcome: n.outcome }
        : {}),
      ...(to === 'canceled' && n.canceledBy ? { canceledBy: n.canceledBy } : {}),
      ...(to === 'retrying' || to === 'errored' ? { attempt: n.attempt } : {}),
      ...(from === null ? { queue: n.queue, ...(n.metadata ? { metadata: n.metadata } : {}) } : {}),
      ...(to === 'running' && n.run > 1 ? { run: n.run } : {}),
    });
  }

  create(spec: Spec, parent: Node | null): Node {
    const t = this.t;
    t.seq += 1;
    const id = `n${t.seq}`;
    const n: Node = {
      id,
      parentId: parent ? parent.id : null,
      rootId: parent ? parent.rootId : id,
      seq: t.seq,
      name: spec.name,
      kind: spec.kind,
      mode: spec.mode,
      queue: spec.queue,
      ...(spec.lane !== undefined ? { lane: spec.lane } : {}),
      input: spec.input,
      ...(spec.metadata ? { metadata: spec.metadata } : {}),
      options: spec.options,
      ...(spec.fireAt !== undefined ? { fireAt: spec.fireAt } : {}),
      ...(spec.delayMs !== undefined ? { delayMs: spec.delayMs } : {}),
      ...(spec.link ? { link: { ...spec.link, nodeId: null } } : {}),
      ...(spec.workflow ? { workflow: spec.workflow } : {}),
      ...(spec.linkedFrom ? { linkedFrom: spec.linkedFrom } : {}),
      status: 'ready',
      statusSince: this.now,
      run: 1,
      attempt: 0,
      errors: [],
      children: [],
      open: 0,
      alerts: 0,
      runAlerts: 0,
      createdAt: this.now,
      history: [{ from: null, to: 'ready', at: this.now, ...(this.by ? { by: this.by } : {}) }],
    };
    t.nodes[id] = n;
    this.copied.add(id);
    t.counts.ready += 1;
    if (parent) {
      parent.children.push(id);
      if (n.mode !== 'fire_and_forget') parent.open += 1;
    } else {
      t.roots = [...t.roots, id];
    }
    this.record(n, null, 'ready');
    return n;
  }

  // --- scheduling -----------------------------------------------------------------------------

  /** Walk a lane of top-level nodes: each is blocking within its lane. */
  walkLane(lane: string): void {
    for (const id of this.t.roots) {
      const c = this.t.nodes[id]!;
      if ((c.lane ?? 'default') !== lane || isTerminal(c.status)) continue;
      if (c.status === 'ready') this.reach(this.node(id));
      if (!isTerminal(this.t.nodes[id]!.status)) return;
    }
  }

  /** Walk a node's children by seq; complete it when its own work is done and nothing is open. */
  walk(pid: string): void {
    const p = this.t.nodes[pid]!;
    for (const id of p.children) {
      const c = this.t.nodes[id]!;
      if (isTerminal(c.status)) continue;
      if (c.status === 'ready') this.reach(this.node(id));
      const now = this.t.nodes[id]!;
      if (now.mode === 'blocking' && !isTerminal(now.status)) break;
    }
    const after = this.t.nodes[pid]!;
    if (after.status === 'awaitingChildren' && after.open === 0) this.complete(this.node(pid));
  }

  reach(c: Node): void {
    if (c.kind === 'flag') {
      c.output = c.input ?? null;
      c.outcome = 'completed';
      this.complete(c);
      return;
    }
    if (c.fireAt === undefined && c.delayMs !== undefined) c.fireAt = this.now + c.delayMs;
    if (c.fireAt !== undefined && c.fireAt > this.now) {
      this.setStatus(c, 'scheduled');
      this.commands.push({
        kind: 'timer',
        timerId: fireTimerId(c),
        event: { type: 'jetflow.tree.fire', nodeId: c.id, run: c.run },
        delayMs: c.fireAt - this.now,
      });
      return;
    }
    this.start(c);
  }

  /** Turn has come and time has come: dispatch, or hold while dispatch is paused. */
  start(c: Node): void {
    if (this.t.dispatchPaused) {
      this.setStatus(c, 'paused');
      return;
    }
    this.setStatus(c, 'running');
    const node: NodeRef = {
      id: c.id,
      parentId: c.parentId,
      rootId: c.rootId,
      name: c.name,
      kind: c.kind,
      mode: c.mode,
      run: c.run,
      seq: c.seq,
      ...(c.lane !== undefined ? { lane: c.lane } : {}),
      ...(c.metadata ? { metadata: c.metadata } : {}),
    };
    if (c.kind === 'link' && c.link) {
      // The remote tree creates the node (`jetflow.tree.link`) and reports on it.
      c.link = { ...c.link, nodeId: null };
      delete c.link.status;
      this.commands.push({
        kind: 'send',
        to: { type: c.link.type, id: c.link.id },
        event: {
          type: 'jetflow.tree.link',
          nodeId: c.id,
          run: c.run,
          spec: {
            name: c.name,
            queue: c.queue,
            input: c.input,
            ...(c.metadata ? { metadata: c.metadata } : {}),
            options: c.options,
          },
        },
        ...(c.link.start ? { startIfAbsent: c.link.start } : {}),
      });
      return;
    }
    if (c.kind === 'workflow' && c.workflow) {
      const w = c.workflow;
      c.workflow = { ...w };
      delete c.workflow.status;
      this.commands.push({
        kind: 'dispatch',
        key: keyOf(c),
        target: w.attach
          ? { watch: { type: w.type, id: w.id }, node }
          : { workflow: { type: w.type, id: childIdOf(c), input: w.input ?? null }, node },
      });
      return;
    }
    this.commands.push({
      kind: 'dispatch',
      key: keyOf(c),
      target: {
        activity: c.name,
        queue: c.queue,
        input: c.input,
        options: taskOptions(c),
        node,
      },
    });
  }

  /** The node's own work is done: create its children (if any) and complete or await them. */
  completeOwnWork(n: Node, outcome: Outcome, output: unknown, decisions: Spec[]): void {
    n.output = output;
    n.outcome = outcome;
    delete n.retryAt;
    for (const d of decisions) this.create(d, n);
    if (n.children.length === 0) {
      this.complete(n); // one change: running → complete
      return;
    }
    this.setStatus(n, 'awaitingChildren');
    this.walk(n.id); // may complete n in this same step
  }

  complete(n: Node): void {
    if (isTerminal(n.status)) return;
    this.stopRealert(n);
    this.setStatus(n, 'complete');
    this.afterDone(n);
  }

  /** A node became complete or canceled: its parent (or lane) may move on. */
  private afterDone(n: Node): void {
    if (n.mode === 'fire_and_forget') return; // never re-walks its parent (Backbeat NodeComplete)
    if (n.parentId === null) {
      this.walkLane(n.lane ?? 'default');
      return;
    }
    const p = this.node(n.parentId);
    p.open -= 1;
    this.walk(p.id);
  }

  /** Cancel a node and its open descendants (deepest first); then re-walk its parent or lane. */
  cancelNode(n: Node, by: CanceledBy, opts: { by?: string } = {}): void {
    if (isTerminal(n.status)) return;
    for (const cid of [...n.children].reverse()) this.cancelSubtree(cid, 'ancestor');
    n.open = 0;
    n.canceledBy = by;
    this.stopWork(n);
    this.setStatus(n, 'canceled', opts);
    this.afterDone(n);
  }

  /**
   * Cancel a node's subtree, deepest first, without re-walking (its ancestor is being canceled
   * or pruned). A complete node is kept, but its fire-and-forget descendants may still run.
   */
  private cancelSubtree(id: string, by: CanceledBy): void {
    for (const cid of [...this.t.nodes[id]!.children].reverse()) this.cancelSubtree(cid, by);
    if (isTerminal(this.t.nodes[id]!.status)) return;
    const n = this.node(id);
    n.open = 0;
    n.canceledBy = by;
    this.stopWork(n);
    this.setStatus(n, 'canceled');
  }

  /** Stop whatever a node has pending: its task, its fire timer, its re-alerts. */
  stopWork(n: Node): void {
    if ((n.status === 'running' || n.status === 'retrying' || n.status === 'errored') && n.link) {
      // Canceling a link node cancels the remote node (not when the remote cancel caused it, and
      // not after a refused link: there is no remote node then).
      if (n.canceledBy !== 'link' && n.status !== 'errored')
        this.commands.push({
          kind: 'send',
          to: { type: n.link.type, id: n.link.id },
          event: { type: 'jetflow.tree.unlink', nodeId: n.id, run: n.run },
        });
    } else if (n.status === 'running' || n.status === 'retrying')
      // An activity's task, or a workflow node's child (canceled: parentClose cancel).
      this.commands.push({ kind: 'cancelTask', key: keyOf(n) });
    if (n.status === 'scheduled')
      this.commands.push({ kind: 'cancelTimer', timerId: fireTimerId(n) });
    this.stopRealert(n);
  }

  private stopRealert(n: Node): void {
    if (n.status !== 'errored' || realertOf(n) <= 0) return;
    const id = realertTimerId(n);
    if (this.realertStopped.has(id)) return;
    this.realertStopped.add(id);
    this.commands.push({ kind: 'cancelTimer', timerId: id });
  }

  /**
   * The `retry` verb: stop the current run (its task, a pending backoff included, its child
   * workflow, its link, and its re-alerts), then run `r+1` with a new task key and a fresh attempt
   * budget, dispatched as its kind says (see `start`): an activity task, a new child workflow
   * `<id>-r<run>` (the same workflow again when attached), or the link sent again.
   */
  rerun(n: Node, attempts: number | undefined): void {
    this.stopWork(n);
    n.run += 1;
    n.attempt = 0;
    n.runAlerts = 0;
    delete n.retryAt;
    delete n.error;
    if (attempts !== undefined) n.maxAttempts = attempts;
    else delete n.maxAttempts;
    this.start(n);
  }

  /** The `prune` verb: every open descendant canceled; the node re-evaluated at once. */
  prune(n: Node): void {
    for (const cid of [...n.children].reverse()) this.cancelSubtree(cid, 'prune');
    n.open = 0;
    this.walk(n.id); // awaitingChildren with nothing open → complete
  }

  /** `resume` of dispatch: every paused node, in seq order, runs (or waits for its fireAt). */
  resumeDispatch(): void {
    this.t.dispatchPaused = false;
    for (let k = 1; k <= this.t.seq; k++) {
      const n0 = this.t.nodes[`n${k}`];
      if (!n0 || n0.status !== 'paused') continue;
      const n = this.node(n0.id);
      if (n.fireAt !== undefined && n.fireAt > this.now) {
        this.setStatus(n, 'scheduled');
        this.commands.push({
          kind: 'timer',
          timerId: fireTimerId(n),
          event: { type: 'jetflow.tree.fire', nodeId: n.id, run: n.run },
          delayMs: n.fireAt - this.now,
        });
      } else this.start(n);
    }
  }

  /** Later siblings (later nodes of the lane for a top-level node), in seq order. */
  laterSiblings(n: Node): Node[] {
    const ids =
      n.parentId === null
        ? this.t.roots.filter(
            (id) => (this.t.nodes[id]!.lane ?? 'default') === (n.lane ?? 'default'),
          )
        : this.t.nodes[n.parentId]!.children;
    return ids.map((id) => this.t.nodes[id]!).filter((s) => s.seq > n.seq);
  }

  /** Backbeat's shutdown: a blocking node first cancels its later siblings, then completes. */
  shutdownNode(n: Node, output: unknown): void {
    if (n.mode === 'blocking') {
      for (const s of this.laterSiblings(n)) this.cancelNode(this.node(s.id), 'shutdown');
    }
    n.output = output;
    n.outcome = 'shutdown';
    delete n.retryAt;
    this.complete(n);
  }

  alert(n: Node): void {
    n.alerts += 1;
    n.runAlerts += 1;
    const blocked =
      n.mode === 'blocking' ? this.laterSiblings(n).filter((s) => !isTerminal(s.status)).length : 0;
    this.commands.push({
      kind: 'emit',
      event: {
        type: 'nodeErrored',
        alert: n.queue,
        nodeId: n.id,
        name: n.name,
        kind: n.kind,
        queue: n.queue,
        parentId: n.parentId,
        rootId: n.rootId,
        run: n.run,
        attempt: n.attempt,
        maxAttempts: maxAttemptsOf(n),
        onExhausted: n.options.onExhausted ?? 'park',
        ...(n.error ? { error: n.error } : {}),
        blocked,
        count: n.runAlerts,
      },
    });
  }
}

/**
 * The options of a node's task: the retry policy and timeouts only. `onExhausted` and
 * `realertMs` are the tree's (the engine's activity `onExhausted` is another setting, `fail` or
 * `review`, and refuses `park`/`skip`/`shutdown`). An operator's `retry` with `attempts` gives
 * the run its own budget.
 */
function taskOptions(c: Node): NodeOptions {
  const o: NodeOptions = { ...c.options };
  delete o.onExhausted;
  delete o.realertMs;
  if (c.maxAttempts !== undefined) o.retry = { ...o.retry, maxAttempts: c.maxAttempts };
  return o;
}

export const keyOf = (n: Pick<Node, 'id' | 'run'>) => `${n.id}:${n.run}`;
/** The child workflow id of a workflow node's run: `id`, then `<id>-r<run>` for later runs. */
export const childIdOf = (n: Node) =>
  n.workflow!.attach || n.run === 1 ? n.workflow!.id : `${n.workflow!.id}-r${n.run}`;
const fireTimerId = (n: Node) => `jetflow.tree.fire.${n.id}.${n.run}`;
const realertTimerId = (n: Node) => `jetflow.tree.realert.${n.id}.${n.run}`;
const realertOf = (n: Node) => n.options.realertMs ?? DEFAULT_REALERT_MS;
export const maxAttemptsOf = (n: Node) =>
  n.maxAttempts ?? n.options.retry?.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;

function errorOf(v: unknown, fallbackAttempt: number): ErrorData {
  const e = isObj(v) ? v : {};
  return {
    type: typeof e.type === 'string' ? e.type : 'Error',
    code: typeof e.code === 'string' ? e.code : 'internal',
    message: typeof e.message === 'string' ? e.message : 'activity failed',
    retryable: e.retryable === true,
    attempt: typeof e.attempt === 'number' ? e.attempt : fallbackAttempt,
    ...(e.details !== undefined ? { details: e.details } : {}),
  };
}

/** The link node `nodeId` in run `run`, if it still waits for its remote node. */
function linkNode(t: Tree, nodeId: unknown, run: unknown): Node | undefined {
  if (typeof nodeId !== 'string') return undefined;
  const n = t.nodes[nodeId];
  if (!n || n.kind !== 'link' || !n.link || n.run !== run) return undefined;
  return n.status === 'running' ? n : undefined;
}

/** The node whose current run the key `n<k>:<r>` names, if it is still waiting for a result. */
function current(t: Tree, key: unknown): Node | undefined {
  if (typeof key !== 'string') return undefined;
  const i = key.lastIndexOf(':');
  const n = t.nodes[key.slice(0, i)];
  if (!n || `${n.run}` !== key.slice(i + 1)) return undefined;
  return n.status === 'running' || n.status === 'retrying' ? n : undefined;
}

/** Validate a whole decisions array first: nothing is created unless all of it is valid. */
function decisionSpecs(t: Tree, parent: Node, decisions: unknown): Spec[] | ErrorData {
  if (decisions === undefined || decisions === null) return [];
  const bad = (index: number | null, field: string, why: string): ErrorData => ({
    type: 'InvalidDecision',
    code: 'bad_request',
    message: `invalid decision${index === null ? 's' : ` ${index}`}: ${field ? `${field}: ` : ''}${why}`,
    retryable: false,
    details: { index, field, why },
  });
  if (!Array.isArray(decisions)) return bad(null, 'decisions', 'must be an array');
  const specs: Spec[] = [];
  for (let i = 0; i < decisions.length; i++) {
    try {
      specs.push(decisionSpec(t, parent, decisions[i]));
    } catch (err) {
      if (err instanceof Invalid) return bad(i, err.field, err.why);
      throw err;
    }
  }
  const room = t.maxNodes - Object.keys(t.nodes).length;
  if (specs.length > room) {
    return {
      type: 'TooManyNodes',
      code: 'invalid_state',
      message: `${specs.length} decisions would exceed the tree's maxNodes (${t.maxNodes}; room for ${room})`,
      retryable: false,
      details: { limit: 'maxNodes', maxNodes: t.maxNodes, decisions: specs.length },
    };
  }
  return specs;
}

/** A final failure of a node's run: `onExhausted` decides (park, skip, shutdown, fail). */
function exhausted(s: Step, n: Node, error: ErrorData, forcePark = false): void {
  n.error = error;
  n.attempt = Math.max(n.attempt, error.attempt ?? n.attempt);
  n.errors.push({ run: n.run, attempt: error.attempt ?? n.attempt, at: s.now, error });
  if (n.errors.length > ERRORS_KEPT) n.errors.splice(0, n.errors.length - ERRORS_KEPT);
  delete n.retryAt;
  const policy = forcePark ? 'park' : (n.options.onExhausted ?? 'park');
  if (policy === 'skip') {
    s.alert(n);
    s.completeOwnWork(n, 'skipped', null, []);
    return;
  }
  if (policy === 'shutdown') {
    s.alert(n);
    s.shutdownNode(n, null);
    return;
  }
  s.setStatus(n, 'errored');
  s.alert(n);
  const realert = realertOf(n);
  if (realert > 0)
    s.commands.push({
      kind: 'timer',
      timerId: realertTimerId(n),
      event: { type: 'jetflow.tree.realert', nodeId: n.id, run: n.run },
      delayMs: realert,
    });
  if (policy === 'fail' && !s.t.failure) {
    s.t.failure = {
      type: 'NodeFailed',
      code: 'internal',
      message: `node ${n.id} (${n.name}) failed: ${error.message}`,
      retryable: false,
      details: { nodeId: n.id, error },
    };
  }
}

/**
 * Apply one event to the tree: its direct effect, then the walks and completions it causes,
 * all in this call. Returns the next tree, the commands (in order), and a reply or rejection.
 */
export function reduce(tree: Tree, event: TreeEvent): Result {
  const now = typeof event.$at === 'number' ? event.$at : 0;
  const admin = event.type.startsWith('jetflow.admin.') ? (event as AdminEvent) : undefined;
  const s = new Step(tree, now, typeof admin?.by === 'string' ? admin.by : undefined);
  /** A late, stale or repeated event: the very same tree, nothing to do. */
  const unchanged: Result = { tree, commands: [] };
  let reply: unknown;
  switch (event.type) {
    case 'signal': {
      let spec: Spec;
      try {
        spec = signalSpec(tree, event as Record<string, unknown>);
      } catch (err) {
        if (!(err instanceof Invalid)) throw err;
        return {
          tree,
          commands: [],
          reject: {
            code: 'bad_request',
            message: `invalid signal: ${err.message}`,
            details: { field: err.field, why: err.why },
          },
        };
      }
      if (spec.key !== undefined && tree.keys[spec.key] !== undefined) {
        return { tree, commands: [], reply: { nodeId: tree.keys[spec.key], duplicate: true } };
      }
      if (tree.closed) {
        return {
          tree,
          commands: [],
          reject: { code: 'event_not_accepted', message: 'the tree is closing' },
        };
      }
      if (Object.keys(tree.nodes).length >= tree.maxNodes) {
        return {
          tree,
          commands: [],
          reject: {
            code: 'invalid_state',
            message: `the tree is full (maxNodes ${tree.maxNodes})`,
            details: { limit: 'maxNodes' },
          },
        };
      }
      const n = s.create(spec, null);
      if (spec.key !== undefined) s.t.keys = { ...tree.keys, [spec.key]: n.id };
      s.walkLane(spec.lane ?? 'default');
      reply = { nodeId: n.id, duplicate: false };
      break;
    }
    case 'close':
      if (tree.closed) return unchanged;
      s.t.closed = true;
      break;
    case 'jetflow.task.done': {
      const found = current(tree, event.key);
      if (!found) return unchanged;
      const n = s.node(found.id);
      if (n.workflow) n.workflow = { ...n.workflow, status: 'completed' };
      const specs = decisionSpecs(s.t, n, event.decisions);
      if (!Array.isArray(specs)) {
        exhausted(s, n, { ...specs, attempt: event.attempt ?? n.attempt }, true);
        break;
      }
      s.completeOwnWork(n, 'completed', event.output ?? null, specs);
      break;
    }
    case 'jetflow.task.failed': {
      const found = current(tree, event.key);
      if (!found) return unchanged;
      const error = errorOf(event.error, event.attempt ?? found.attempt + 1);
      if (found.workflow) {
        const status =
          error.type === 'ChildFailed'
            ? 'failed'
            : error.type === 'ChildCanceled'
              ? 'canceled'
              : undefined;
        if (status) s.node(found.id).workflow = { ...found.workflow, status };
      }
      // A result too large for the record (E10) parks the node, whatever its onExhausted; so does
      // a child workflow that failed, was canceled, or could not be started or found.
      exhausted(
        s,
        s.node(found.id),
        error,
        error.type === 'RecordTooLarge' || found.kind === 'workflow',
      );
      break;
    }
    case 'jetflow.task.retrying': {
      const found = current(tree, event.key);
      if (!found || !(event.attempt > found.attempt)) return unchanged;
      const n = s.node(found.id);
      const error = errorOf(event.error, event.attempt);
      n.attempt = event.attempt;
      if (typeof event.retryAt === 'number') n.retryAt = event.retryAt;
      n.error = error;
      n.errors.push({ run: n.run, attempt: event.attempt, at: now, error });
      if (n.errors.length > ERRORS_KEPT) n.errors.splice(0, n.errors.length - ERRORS_KEPT);
      s.setStatus(n, 'retrying');
      break;
    }
    case 'jetflow.tree.fire': {
      const n0 = tree.nodes[event.nodeId];
      if (!n0 || n0.status !== 'scheduled' || n0.run !== event.run) return unchanged;
      s.start(s.node(n0.id));
      break;
    }
    case 'jetflow.tree.link': {
      // Another tree's link node: a top-level node here, serialized in its lane like a signal.
      const from = event.$from;
      if (!from || typeof event.nodeId !== 'string' || typeof event.run !== 'number')
        return {
          tree,
          commands: [],
          reject: { code: 'bad_request', message: 'a link needs its sender, nodeId and run' },
        };
      let spec: Spec;
      try {
        spec = linkedSpec(tree, event.spec);
      } catch (err) {
        if (!(err instanceof Invalid)) throw err;
        return {
          tree,
          commands: [],
          reject: {
            code: 'bad_request',
            message: `invalid link: ${err.message}`,
            details: { field: err.field, why: err.why },
          },
        };
      }
      if (tree.closed)
        return {
          tree,
          commands: [],
          reject: { code: 'event_not_accepted', message: 'the tree is closing' },
        };
      if (Object.keys(tree.nodes).length >= tree.maxNodes)
        return {
          tree,
          commands: [],
          reject: {
            code: 'invalid_state',
            message: `the tree is full (maxNodes ${tree.maxNodes})`,
            details: { limit: 'maxNodes' },
          },
        };
      spec.linkedFrom = { type: from.type, id: from.id, nodeId: event.nodeId, run: event.run };
      const n = s.create(spec, null);
      s.commands.push({
        kind: 'send',
        to: { type: from.type, id: from.id },
        event: {
          type: 'jetflow.tree.linkAccepted',
          nodeId: event.nodeId,
          run: event.run,
          remoteNodeId: n.id,
          status: 'ready',
        },
      });
      const accepted = s.commands[s.commands.length - 1] as { event: { status: NodeStatus } };
      s.walkLane('default');
      accepted.event.status = s.t.nodes[n.id]!.status;
      reply = { nodeId: n.id };
      break;
    }
    case 'jetflow.tree.linkAccepted': {
      const n0 = linkNode(tree, event.nodeId, event.run);
      if (!n0 || typeof event.remoteNodeId !== 'string') return unchanged;
      const n = s.node(n0.id);
      n.link = { ...n.link!, nodeId: event.remoteNodeId, status: event.status };
      break;
    }
    case 'jetflow.tree.linkStatus': {
      const n0 = linkNode(tree, event.nodeId, event.run);
      if (!n0) return unchanged;
      const n = s.node(n0.id);
      n.link = { ...n.link!, status: event.status };
      if (event.status === 'complete') s.completeOwnWork(n, 'completed', event.output ?? null, []);
      else if (event.status === 'canceled') s.cancelNode(n, 'link');
      // errored (the alert comes from the remote tree), or back from errored: L′ stays running.
      break;
    }
    case 'jetflow.tree.unlink': {
      const from = event.$from;
      if (!from) return unchanged;
      const id = Object.keys(tree.nodes).find((k) => {
        const lf = tree.nodes[k]!.linkedFrom;
        return (
          lf !== undefined &&
          lf.type === from.type &&
          lf.id === from.id &&
          lf.nodeId === event.nodeId &&
          lf.run === event.run
        );
      });
      if (!id || isTerminal(tree.nodes[id]!.status)) return unchanged;
      s.cancelNode(s.node(id), 'link');
      break;
    }
    case 'jetflow.send.failed': {
      // A link this tree sent was refused (absent without start, closing, finished, …).
      const sent = (isObj(event.event) ? event.event : {}) as Record<string, unknown>;
      if (sent.type !== 'jetflow.tree.link') return unchanged;
      const n0 = linkNode(tree, sent.nodeId, sent.run);
      if (!n0 || n0.link!.nodeId !== null) return unchanged;
      const e = isObj(event.error) ? event.error : {};
      const code = typeof e.code === 'string' ? e.code : 'internal';
      exhausted(
        s,
        s.node(n0.id),
        {
          type: 'LinkRejected',
          code,
          message: `link to ${n0.link!.type}/${n0.link!.id} refused: ${typeof e.message === 'string' ? e.message : code}`,
          retryable: false,
          attempt: n0.attempt,
          details: { type: n0.link!.type, id: n0.link!.id, code },
        },
        true,
      );
      break;
    }
    case 'jetflow.tree.realert': {
      const n0 = tree.nodes[event.nodeId];
      if (!n0 || n0.status !== 'errored' || n0.run !== event.run) return unchanged;
      const n = s.node(n0.id);
      s.alert(n);
      s.commands.push({
        kind: 'timer',
        timerId: realertTimerId(n),
        event: { type: 'jetflow.tree.realert', nodeId: n.id, run: n.run },
        delayMs: realertOf(n),
      });
      break;
    }
    default: {
      if (!admin) return unchanged;
      const r = adminVerb(s, admin);
      if ('reject' in r) return { tree, commands: [], reject: r.reject };
      reply = r.reply;
    }
  }
  return finish(s, reply);
}

/** The step's result: linked-node reports, then one `nodes` event, then the alerts. */
function finish(s: Step, reply?: unknown): Result {
  // A node another tree linked to reports its errored / complete / canceled (and leaving errored).
  for (const c of s.changes) {
    const n = s.t.nodes[c.nodeId];
    if (!n?.linkedFrom) continue;
    if (c.to !== 'errored' && c.to !== 'complete' && c.to !== 'canceled' && c.from !== 'errored')
      continue;
    if (c.from === null) continue;
    s.commands.push({
      kind: 'send',
      to: { type: n.linkedFrom.type, id: n.linkedFrom.id },
      event: {
        type: 'jetflow.tree.linkStatus',
        nodeId: n.linkedFrom.nodeId,
        run: n.linkedFrom.run,
        status: c.to,
        ...(c.to === 'complete' ? { output: n.output ?? null } : {}),
        ...(c.to === 'errored' && n.error ? { error: n.error } : {}),
      },
    });
  }
  const commands = s.commands;
  // One `nodes` event per step, before the alerts it explains.
  if (s.changes.length > 0)
    commands.push({ kind: 'emit', event: { type: 'nodes', changes: s.changes } });
  // Alerts were pushed as commands in order; move them after the `nodes` event.
  const ordered = [
    ...commands.filter((c) => c.kind !== 'emit'),
    ...commands.filter((c) => c.kind === 'emit' && c.event.type === 'nodes'),
    ...commands.filter((c) => c.kind === 'emit' && c.event.type !== 'nodes'),
  ];
  return { tree: s.t, commands: ordered, ...(reply !== undefined ? { reply } : {}) };
}

/**
 * A new run of node `nodeId` (the E9 `retry` verb's seam, for every kind): the old run is
 * stopped (task purged, link unlinked, child canceled), then run `r+1` is dispatched by kind: an
 * activity task, a child workflow `<id>-r<run>` (the same workflow again when attached), or the
 * link sent again. The caller checks the node's status is one `retry` allows. The operator's
 * `retry` verb (`jetflow.admin.retry`) takes this same path (`Step.rerun`) inside its own step.
 */
export function rerunNode(tree: Tree, nodeId: string, at: number): Result {
  const s = new Step(tree, at);
  s.rerun(s.node(nodeId), undefined);
  return finish(s);
}

/**
 * A node verb (or a dispatch pause/resume) from an operator, checked against
 * {@link VERB_ALLOWED}: a refusal changes nothing. The reply lists every status change the verb
 * caused, in order (`changed`, ACTIVITY-TREES §2.9.9).
 */
function adminVerb(s: Step, e: AdminEvent): { reply: unknown } | { reject: Rejection } {
  const verb = e.type.slice('jetflow.admin.'.length);
  const changed = () => s.changes.map((c) => ({ nodeId: c.nodeId, from: c.from, to: c.to }));
  if (verb === 'pause' || verb === 'resume') {
    if (e.scope !== 'dispatch')
      return {
        reject: {
          code: 'bad_request',
          message: `${verb} reaches the tree only with scope "dispatch"`,
          details: { field: 'scope' },
        },
      };
    if (verb === 'pause') s.t.dispatchPaused = true;
    else if (s.t.dispatchPaused) s.resumeDispatch();
    return { reply: { changed: changed(), dispatchPaused: s.t.dispatchPaused } };
  }
  if (!(verb in VERB_ALLOWED))
    return {
      reject: { code: 'bad_request', message: `unknown node verb ${JSON.stringify(verb)}` },
    };
  const allowed = VERB_ALLOWED[verb as NodeVerb];
  const id = e.nodeId;
  const n0 = typeof id === 'string' && /^n\d+$/.test(id) ? s.t.nodes[id] : undefined;
  if (!n0)
    return {
      reject: {
        code: 'not_found',
        message: `no node ${JSON.stringify(id)}`,
        details: { nodeId: id },
      },
    };
  if (!allowed.includes(n0.status))
    return {
      reject: {
        code: 'invalid_state',
        message: `node ${n0.id} is ${n0.status}: ${verb} is allowed only when ${allowed.join(', ')}`,
        details: { nodeId: n0.id, status: n0.status, allowed },
      },
    };
  const n = s.node(n0.id);
  switch (verb as NodeVerb) {
    case 'retry':
      s.rerun(n, typeof e.attempts === 'number' ? e.attempts : undefined);
      break;
    case 'resolve': {
      const specs = decisionSpecs(s.t, n, e.decisions);
      if (!Array.isArray(specs)) {
        const d = specs.details as { index?: number; field?: string; why?: string } | undefined;
        return {
          reject:
            specs.type === 'TooManyNodes'
              ? { code: 'invalid_state', message: specs.message, details: specs.details }
              : {
                  code: 'bad_request',
                  message: specs.message,
                  details: { index: d?.index, field: d?.field, why: d?.why },
                },
        };
      }
      s.stopWork(n);
      s.completeOwnWork(n, 'resolved', e.output ?? null, specs);
      break;
    }
    case 'shutdown':
      s.stopWork(n);
      s.shutdownNode(n, e.output ?? null);
      break;
    case 'cancel':
      s.cancelNode(n, 'operator');
      break;
    case 'prune':
      s.prune(n);
      break;
  }
  return { reply: { nodeId: n.id, changed: changed() } };
}

/** True when nothing keeps a closing tree open. */
export function isIdle(t: Tree): boolean {
  for (const s of OPEN_FOR_IDLE) if (t.counts[s] > 0) return false;
  return true;
}

/** The workflow's output when a closed tree completes. */
export function summary(t: Tree): {
  nodes: number;
  counts: { complete: number; canceled: number };
} {
  return {
    nodes: Object.keys(t.nodes).length,
    counts: { complete: t.counts.complete, canceled: t.counts.canceled },
  };
}

/** The earlier sibling (lane predecessor) that holds a ready node, if any. */
export function blockedBy(t: Tree, n: Node): string | undefined {
  if (n.status !== 'ready') return undefined;
  const ids =
    n.parentId === null
      ? t.roots.filter((id) => (t.nodes[id]!.lane ?? 'default') === (n.lane ?? 'default'))
      : (t.nodes[n.parentId]?.children ?? []);
  for (const id of ids) {
    const c = t.nodes[id]!;
    if (c.seq >= n.seq) break;
    if (!isTerminal(c.status) && (c.mode === 'blocking' || c.parentId === null)) return c.id;
  }
  return undefined;
}
