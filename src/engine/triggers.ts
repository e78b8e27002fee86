/**
 * Triggers, the pure part: a trigger declared with a workflow definition maps each message of a
 * stream (or core-NATS subject) to a start or a signal of one workflow. What a message becomes
 * (start, signal or poison), which key it belongs to, and what a step's reply means for the
 * trigger's ledger are decided here, without I/O. The consumer, the parking lot and the ledger
 * are in `src/nats/triggers.ts`; the role that holds triggers is `src/host/triggers.ts`.
 */
import type { AnyStateMachine } from 'xstate';
import { isToken } from '../contracts/subjects.js';
import type { ErrorData } from '../errors.js';
import { BadRequestError, ConfigError, ErrorCode } from '../errors.js';
import {
  compile,
  firstIssue,
  TriggerRequestSchemas,
  type TriggerVerb,
} from '../contracts/schemas.js';

/** A message as a trigger's mapping sees it. */
export interface TriggerMessage {
  /** The subject it was published on. */
  readonly subject: string;
  /** Its stream sequence (0 for a core-NATS subject trigger). */
  readonly seq: number;
  readonly data: Uint8Array;
  /** Header value (the first one), or undefined. */
  header(name: string): string | undefined;
  /** Every header (kept with a parked message). */
  headers(): Record<string, string[]>;
  /** The body as UTF-8 text. */
  text(): string;
  /** The body parsed as JSON (throws on malformed JSON). */
  json<T = Record<string, unknown>>(): T;
}

/** Where a new trigger's consumer starts reading. */
export type DeliverFrom = 'all' | 'new' | { seq: number } | { time: string | Date };

/** What a poison message does to its key's later messages. */
export type OnPoison = 'park-key' | 'park-message';

/** A trigger that starts one workflow per message (idempotent on the workflow id). */
export interface StartMapping {
  id: (m: TriggerMessage) => string;
  /** The start input (default: the body as JSON). */
  input?: (m: TriggerMessage) => unknown;
}

/** A trigger that delivers one event per message to an existing workflow. */
export interface SignalMapping {
  id: (m: TriggerMessage) => string;
  event: (m: TriggerMessage) => { type: string; [k: string]: unknown };
}

/**
 * A webhook trigger: `POST /hooks/<name>` on `jetflow http`, signed with HMAC-SHA256 of the raw
 * body (or of `<timestamp>.<body>` with `timestampHeader`) under the secret in environment
 * variable `secretEnv` (read by the `jetflow http` process). The header holds the hex digest,
 * optionally as `sha256=<hex>`.
 */
export interface WebhookOptions {
  secretEnv: string;
  signature?: 'hmac-sha256';
  /** Header carrying the signature, e.g. `x-signature`. */
  header: string;
  /** Header carrying the signing time (epoch seconds); signed as `<timestamp>.<body>`. */
  timestampHeader?: string;
  /** How old (or how far in the future) a timestamp may be, in seconds (default 300). */
  toleranceSec?: number;
}

/**
 * A trigger, declared in a definition's `triggers`. `stream` names the user's JetStream stream
 * (jetflow never creates it): the trigger is one durable consumer `jetflow-trigger-<name>` on
 * it, filtered by `subject`, exactly once per message. Without `stream` it is a core-NATS
 * subscription on `subject`: at most once (a message published while no engine holds the
 * trigger, or lost with an engine, is gone).
 */
export interface TriggerDefinition {
  /** Unique among all triggers; a subject token (it names the consumer). */
  name: string;
  stream?: string;
  /** Filter subject (wildcards allowed); not given for a webhook trigger. */
  subject?: string;
  /**
   * A webhook instead of a stream: each accepted request is stored in jetflow's stream
   * `<PREFIX>_HOOKS` (subject `<prefix>.hook.<name>`) and consumed from there like a stream.
   */
  webhook?: WebhookOptions;
  start?: StartMapping;
  signal?: SignalMapping;
  /** Where a new consumer starts (default `'all'`); a consumer that exists keeps its place. */
  deliverFrom?: DeliverFrom;
  /** Default `'park-key'` for signal triggers, `'park-message'` for start triggers. */
  onPoison?: OnPoison;
  /** Messages in flight at once (the consumer's MaxAckPending, default 256). */
  window?: number;
}

/** A trigger with the workflow type it belongs to and its defaults applied. */
export interface TriggerSpec {
  name: string;
  workflowType: string;
  stream: string | undefined;
  subject: string;
  kind: 'start' | 'signal';
  deliverFrom: DeliverFrom;
  onPoison: OnPoison;
  window: number;
  def: TriggerDefinition;
  /** Event types the machine knows (undefined: not known, not checked). */
  events: ReadonlySet<string> | undefined;
  webhook?: WebhookOptions;
}

const NAME = /^[A-Za-z0-9_-]{1,64}$/;
export const TRIGGER_WINDOW = 256;

/** Check a definition's triggers (called by `defineWorkflow`). */
export function checkTriggers(type: string, triggers: readonly TriggerDefinition[]): void {
  const seen = new Set<string>();
  for (const t of triggers) {
    const where = `workflow ${type}: trigger ${JSON.stringify(t?.name)}`;
    if (!t || typeof t.name !== 'string' || !NAME.test(t.name))
      throw new ConfigError(`${where}: name must be 1-64 of A-Z a-z 0-9 _ -`);
    if (seen.has(t.name)) throw new ConfigError(`${where} is declared twice`);
    seen.add(t.name);
    if (t.webhook !== undefined) {
      const w = t.webhook;
      if (t.stream !== undefined || t.subject !== undefined)
        throw new ConfigError(`${where}: a webhook trigger has no stream or subject`);
      if (
        typeof w.secretEnv !== 'string' ||
        typeof w.header !== 'string' ||
        !w.secretEnv ||
        !w.header
      )
        throw new ConfigError(`${where}: webhook needs secretEnv and header`);
      if (w.signature !== undefined && w.signature !== 'hmac-sha256')
        throw new ConfigError(`${where}: webhook signature must be 'hmac-sha256'`);
      if (w.toleranceSec !== undefined && !(w.toleranceSec > 0))
        throw new ConfigError(`${where}: webhook toleranceSec must be positive`);
    } else {
      if (typeof t.subject !== 'string' || t.subject.length === 0 || /\s/.test(t.subject))
        throw new ConfigError(`${where}: subject must be a NATS subject`);
      if (t.stream !== undefined && (typeof t.stream !== 'string' || !NAME.test(t.stream)))
        throw new ConfigError(`${where}: stream must be a stream name`);
    }
    if ((t.start === undefined) === (t.signal === undefined))
      throw new ConfigError(`${where}: give exactly one of start or signal`);
    if (t.start && typeof t.start.id !== 'function')
      throw new ConfigError(`${where}: start.id must be a function of the message`);
    if (t.signal && (typeof t.signal.id !== 'function' || typeof t.signal.event !== 'function'))
      throw new ConfigError(`${where}: signal.id and signal.event must be functions`);
    if (t.onPoison !== undefined && t.onPoison !== 'park-key' && t.onPoison !== 'park-message')
      throw new ConfigError(`${where}: onPoison must be 'park-key' or 'park-message'`);
    if (t.window !== undefined && (!Number.isInteger(t.window) || t.window < 1))
      throw new ConfigError(`${where}: window must be a positive integer`);
    const d = t.deliverFrom;
    if (
      d !== undefined &&
      d !== 'all' &&
      d !== 'new' &&
      !(typeof d === 'object' && d !== null && 'seq' in d && Number.isInteger(d.seq)) &&
      !(typeof d === 'object' && d !== null && 'time' in d)
    )
      throw new ConfigError(`${where}: deliverFrom must be 'all', 'new', {seq} or {time}`);
  }
}

/** Every trigger of the definitions, with defaults; throws on a name used twice. */
export function triggerSpecs(
  defs: Iterable<{
    type: string;
    machine: AnyStateMachine;
    triggers?: readonly TriggerDefinition[];
  }>,
): TriggerSpec[] {
  const out = new Map<string, TriggerSpec>();
  for (const d of defs) {
    for (const t of d.triggers ?? []) {
      const prev = out.get(t.name);
      // Several versions of one type declare the same trigger: the latest registered wins.
      if (prev && prev.workflowType !== d.type)
        throw new ConfigError(
          `trigger ${t.name} is declared by workflows ${prev.workflowType} and ${d.type}`,
        );
      const kind = t.start ? 'start' : 'signal';
      const events = machineEvents(d.machine);
      out.set(t.name, {
        name: t.name,
        workflowType: d.type,
        stream: t.stream,
        // A webhook's stream and subject are jetflow's (the role fills them in).
        subject: t.subject ?? '',
        ...(t.webhook ? { webhook: t.webhook } : {}),
        kind,
        deliverFrom: t.deliverFrom ?? 'all',
        onPoison: t.onPoison ?? (kind === 'signal' ? 'park-key' : 'park-message'),
        window: t.window ?? TRIGGER_WINDOW,
        def: t,
        events,
      });
    }
  }
  return [...out.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
}

/**
 * Every event type some state of the machine has a transition for (undefined when a wildcard
 * transition takes any event): an event outside it is `unknown_event` poison.
 */
function machineEvents(machine: AnyStateMachine): ReadonlySet<string> | undefined {
  type Node = { on?: Record<string, unknown>; states?: Record<string, Node> };
  const out = new Set<string>();
  let any = false;
  const walk = (n: Node) => {
    for (const k of Object.keys(n.on ?? {})) {
      if (k === '*' || k.endsWith('.*')) any = true;
      out.add(k);
    }
    for (const c of Object.values(n.states ?? {})) walk(c);
  };
  walk((machine as unknown as { root: Node }).root);
  return any ? undefined : out;
}

/** The durable consumer of a stream trigger on the user's stream. */
export function triggerConsumerName(name: string): string {
  return `jetflow-trigger-${name}`;
}

/** What one message becomes. */
export type Mapped =
  | { kind: 'start'; id: string; input: unknown }
  | { kind: 'signal'; id: string; event: { type: string; [k: string]: unknown } }
  /** Parked: `id` when the key is known (for `park-key`). */
  | { kind: 'poison'; id?: string; error: TriggerError };

/** Why a message was parked (or a forward failed). */
export interface TriggerError {
  code: string;
  message: string;
}

const reason = (err: unknown) => String((err as Error)?.message ?? err);

/** Map one message (the definition's functions may throw: that is poison, not a crash). */
export function mapTriggerMessage(spec: TriggerSpec, m: TriggerMessage, maxBytes: number): Mapped {
  const mapping = spec.def.start ?? spec.def.signal!;
  let id: unknown;
  try {
    id = mapping.id(m);
  } catch (err) {
    return { kind: 'poison', error: { code: 'mapping_failed', message: `id: ${reason(err)}` } };
  }
  if (id === undefined || id === null || id === '')
    return { kind: 'poison', error: { code: 'no_id', message: 'the mapping gave no workflow id' } };
  if (typeof id === 'number') id = String(id);
  if (!isToken(id))
    return {
      kind: 'poison',
      error: {
        code: 'bad_id',
        message: `workflow id ${JSON.stringify(id)} is not a subject token (A-Z a-z 0-9 _ = -)`,
      },
    };
  if (m.data.length > maxBytes)
    return {
      kind: 'poison',
      id,
      error: {
        code: 'payload_too_large',
        message: `message of ${m.data.length} bytes is larger than ${maxBytes}`,
      },
    };
  if (spec.def.start) {
    try {
      const input = spec.def.start.input ? spec.def.start.input(m) : m.json();
      return { kind: 'start', id, input };
    } catch (err) {
      return {
        kind: 'poison',
        id,
        error: { code: 'mapping_failed', message: `input: ${reason(err)}` },
      };
    }
  }
  let event: unknown;
  try {
    event = spec.def.signal!.event(m);
  } catch (err) {
    return {
      kind: 'poison',
      id,
      error: { code: 'mapping_failed', message: `event: ${reason(err)}` },
    };
  }
  const type = (event as { type?: unknown } | null)?.type;
  if (typeof event !== 'object' || event === null || typeof type !== 'string' || type === '')
    return { kind: 'poison', id, error: { code: 'bad_event', message: 'the event has no type' } };
  if (type.startsWith('xstate.') || type.startsWith('jetflow.'))
    return {
      kind: 'poison',
      id,
      error: { code: 'bad_event', message: `event type ${type} is reserved for the engine` },
    };
  if (spec.events && !spec.events.has(type))
    return {
      kind: 'poison',
      id,
      error: {
        code: 'unknown_event',
        message: `workflow ${spec.workflowType} has no transition on ${type}`,
      },
    };
  return { kind: 'signal', id, event: event as { type: string } };
}

/** What happened to one trigger message (the ledger's outcome). */
export type TriggerOutcome =
  | 'started'
  | 'signaled'
  | 'duplicate'
  | 'parked'
  | 'skipped'
  /** Written to the inbox, but the step's answer did not come in time (at most once applied). */
  | 'forwarded';

/** What the trigger does with a step's reply to a forwarded start or signal. */
export type ReplyVerdict =
  | { outcome: 'started' | 'signaled' | 'duplicate' }
  /** Refused by the step for good: parked with this error. */
  | { outcome: 'parked'; error: TriggerError }
  /** Refused for now (no engine, overload): forwarded again after a pause. */
  | { retry: TriggerError };

/** Read a step's reply (`error` set: an error reply). */
export function verdictOf(
  kind: 'start' | 'signal',
  reply: { error?: ErrorData; created?: unknown; duplicate?: unknown } | undefined,
): ReplyVerdict {
  if (reply?.error) {
    const e = { code: reply.error.code ?? 'error', message: reply.error.message ?? 'refused' };
    return reply.error.retryable ? { retry: e } : { outcome: 'parked', error: e };
  }
  if (kind === 'start') return { outcome: reply?.created === false ? 'duplicate' : 'started' };
  return { outcome: reply?.duplicate === true ? 'duplicate' : 'signaled' };
}

/** One ledger entry: what a trigger did with one message (subject `<prefix>.tledger.<name>.<seq>`). */
export interface TriggerLedgerEntry {
  trigger: string;
  seq: number;
  /** Epoch ms. */
  at: number;
  outcome: TriggerOutcome;
  workflowType: string;
  /** The workflow id (absent when the mapping gave none). */
  id?: string;
  subject: string;
  engine: string;
  error?: TriggerError;
  /** Operator actions (skip, replay): who and why. */
  by?: string;
  reason?: string;
  /** Set on entries written during a rewind or a replay. */
  via?: 'rewind' | 'replay' | 'catch-up';
}

/** Status of a trigger as its holder reports it (KV `<prefix>_triggers`, key `<name>`). */
export interface TriggerStatus {
  trigger: string;
  engine: string;
  engineId: string;
  /** Epoch ms of this report. */
  at: number;
  counts: Record<TriggerOutcome, number>;
  /** Messages per second over the last report period. */
  rate: number;
  lastError?: TriggerError & { seq: number; at: number };
}

/** Parse `--since 1h` style durations and `--to-seq` for a rewind; pure validation. */
export interface RewindRequest {
  name: string;
  toSeq?: number;
  /** Epoch ms. */
  since?: number;
}

/** What a rewind reports. */
export interface RewindReply {
  trigger: string;
  fromSeq: number;
  toSeq: number;
  /** Messages read again (up to the stream's last sequence at the rewind). */
  reread: number;
  /** Of those, how many started or signaled anything (0 when all had been applied before). */
  new: number;
  duplicates: number;
  parked: number;
  /** Skipped by an operator before: they stay skipped. */
  skipped: number;
  done: boolean;
}

/** One row of `jetflow triggers`. */
export interface TriggerRow {
  name: string;
  workflowType: string;
  kind: 'start' | 'signal';
  stream: string | null;
  filter: string;
  consumer: string | null;
  onPoison: string;
  holder: string | null;
  /** Process id of the holder (for operators and fault tests). */
  holderPid: number | null;
  pending: number | null;
  ackPending: number | null;
  paused: boolean;
  rate: number | null;
  parked: number;
  counts: Record<TriggerOutcome, number> | null;
  lastError: (TriggerError & { seq: number; at: number }) | null;
}

const TRIGGER_CHECKS = Object.fromEntries(
  Object.entries(TriggerRequestSchemas).map(([k, v]) => [k, compile(v)]),
) as { [K in TriggerVerb]: ReturnType<typeof compile<(typeof TriggerRequestSchemas)[K]>> };

/** Messages for a required field left out (the rest name the field and TypeBox's reason). */
const TRIGGER_MISSING: Record<string, string> = {
  'trace.seq': 'trace needs seq',
  'skip.seq': 'skip needs seq and a reason',
  'skip.reason': 'skip needs seq and a reason',
};

/**
 * Check the (decoded) body of a trigger verb against its schema; throws `bad_request` naming
 * the field at fault. An unknown verb is `bad_request` too. Pure.
 */
export function parseTriggerRequest(verb: string, body: unknown): Record<string, unknown> {
  if (!Object.hasOwn(TRIGGER_CHECKS, verb))
    throw new BadRequestError(`unknown trigger verb ${JSON.stringify(verb)}`, {
      code: ErrorCode.BadRequest,
    });
  const c = TRIGGER_CHECKS[verb as TriggerVerb];
  const b = body ?? {};
  if (c.Check(b)) return b as Record<string, unknown>;
  const i = firstIssue(c, b)!;
  const missing = i.missing ? TRIGGER_MISSING[`${verb}.${i.field}`] : undefined;
  throw new BadRequestError(
    missing ??
      (i.field === ''
        ? `a trigger ${verb} request body must be an object`
        : `trigger ${verb}: ${i.field}: ${i.why}`),
    { code: ErrorCode.BadRequest, details: { field: i.field, why: i.why } },
  );
}
