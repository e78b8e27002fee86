/**
 * The registry of workflow definitions, keyed `type@version`. A new start uses the latest version
 * of its type; a running workflow keeps the version it started with (its record names it).
 */
import { checkPriorityOptions } from './activity.js';
import type { AnyStateMachine } from 'xstate';
import { ErrorCode, BadRequestError, ConfigError } from '../errors.js';
import { isToken } from '../contracts/subjects.js';
import { checkConcurrency, type ConcurrencyOptions } from './admission.js';
import { checkTriggers, type TriggerDefinition } from './triggers.js';

/** A workflow definition: an XState v5 machine under a type and an integer version. */
export interface WorkflowDefinition<M extends AnyStateMachine = AnyStateMachine> {
  type: string;
  version: number;
  machine: M;
  /**
   * Context fields the visibility index can match by equality (`jetflow ls --where key=value`):
   * after every step their values are read from the context (a dotted path reads a nested
   * field) and journaled. Strings, numbers, booleans and null are kept as they are; any other
   * value is kept as its JSON text.
   */
  searchAttributes?: readonly string[];
  /**
   * Default `onExhausted` of this workflow's activities (an activity's own option wins):
   * `'review'` parks an activity whose retries are exhausted for an operator instead of
   * delivering its error event. Default `'fail'`.
   */
  onExhausted?: 'fail' | 'review';
  /**
   * Query views (E6): `wf.query.<type>.<id>` with body `{"view": "<name>", …}` replies with
   * `views[name](context, body, meta)`. A view throws a {@link BadRequestError} to refuse.
   */
  views?: Readonly<Record<string, QueryView>>;
  /** Shape of the plain query reply's `context` (default: the whole context). */
  queryContext?: (context: unknown) => unknown;
  /**
   * Concurrency key (deferred workflows): at most `limit` workflows of this type with the same
   * `key(input)` run at once; the slot is held for the whole run. See {@link ConcurrencyOptions}.
   */
  concurrency?: ConcurrencyOptions<never>;
  /**
   * Priority level of this type's starts, 1 (first) to 5, or a pure function of the input;
   * default 3. A start's own `priority` (client `start(…, { priority })`, the start body's
   * `priority`) wins. It orders the waiters of a concurrency key (strict between levels, with
   * aging after `concurrency.maxWaitMs`), and it is the default level of the workflow's
   * activities (an activity's own `priority` option wins).
   */
  priority?: number | ((input: never) => number);
  /**
   * Fairness among the waiters of a concurrency key within one priority level: waiters are
   * admitted round robin across fairness keys (say a tenant id), `fairnessWeights[key]` per
   * turn (default 1), FIFO within one key. A string or a pure function of the input.
   */
  fairnessKey?: string | ((input: never) => string);
  /** Waiters admitted per turn of a fairness key (1-1000; default 1). */
  fairnessWeights?: Record<string, number>;
  /**
   * Debounce of signals, by event type: a signal of a listed type is not applied at once; it is
   * kept in the record and a durable timer is set `ms` ahead, moved again by every further signal
   * of the same type (and `key`). When `ms` pass with no new one, one event is applied: the
   * `last` (default), the `first`, or the fold of the window by `keep(acc, event)`. See
   * {@link DebounceOptions}.
   */
  debounce?: Readonly<Record<string, DebounceOptions<never>>>;
  /**
   * Triggers: streams and subjects whose messages start or signal workflows of this type,
   * exactly once per stream message (see {@link TriggerDefinition} and the README).
   */
  triggers?: readonly TriggerDefinition[];
}

/**
 * How signals of one event type are debounced (trailing edge). Every function here is pure and
 * deterministic: it runs inside the step, again when a step is re-decided after a conflict.
 */
export interface DebounceOptions<E = { type: string; [k: string]: unknown }> {
  /** Quiet time after the last signal before the event is applied (10 ms to 24 h). */
  ms: number;
  /**
   * Which event of the window is applied: `'last'` (default), `'first'`, or a fold
   * `(acc, event) => event` over the window's events in inbox order (the first is the seed).
   * The fold must return an event of the same type (checked at each signal: else refused).
   */
  keep?: 'last' | 'first' | ((acc: E, event: E) => unknown);
  /**
   * Splits the event type into independent windows (e.g. per SKU): a string from the event.
   * Default: one window per event type.
   */
  key?: (event: E) => string;
}

export const DEBOUNCE_MIN_MS = 10;
export const DEBOUNCE_MAX_MS = 86_400_000;

function checkDebounce(
  type: string,
  debounce: Readonly<Record<string, DebounceOptions<never>>>,
): void {
  for (const [event, o] of Object.entries(debounce)) {
    const where = `workflow ${type}: debounce of ${JSON.stringify(event)}`;
    if (event.startsWith('xstate.') || event.startsWith('jetflow.')) {
      throw new ConfigError(`${where}: only signals can be debounced, not internal events`);
    }
    if (typeof o !== 'object' || o === null) throw new ConfigError(`${where}: must be an object`);
    if (!Number.isInteger(o.ms) || o.ms < DEBOUNCE_MIN_MS || o.ms > DEBOUNCE_MAX_MS) {
      throw new ConfigError(
        `${where}: ms must be an integer from ${DEBOUNCE_MIN_MS} to ${DEBOUNCE_MAX_MS} (got ${String(o.ms)})`,
      );
    }
    if (
      o.keep !== undefined &&
      o.keep !== 'last' &&
      o.keep !== 'first' &&
      typeof o.keep !== 'function'
    ) {
      throw new ConfigError(`${where}: keep must be 'last', 'first' or a function (acc, event)`);
    }
    if (o.key !== undefined && typeof o.key !== 'function') {
      throw new ConfigError(`${where}: key must be a function (event) => string`);
    }
  }
}

/** What a query view knows besides the context and the request body. */
export interface ViewMeta {
  id: string;
  type: string;
  version: number;
  status: string;
  step: number;
}

/** A query view: pure, from the stored context to a reply body. */
export type QueryView = (
  context: unknown,
  request: Record<string, unknown>,
  meta: ViewMeta,
) => unknown;

/** Declare a workflow definition (identity helper that checks its shape). */
export function defineWorkflow<M extends AnyStateMachine>(
  def: WorkflowDefinition<M>,
): WorkflowDefinition<M> {
  if (!isToken(def.type)) {
    throw new ConfigError(`workflow type ${JSON.stringify(def.type)} is not a valid subject token`);
  }
  if (!Number.isInteger(def.version) || def.version < 1) {
    throw new ConfigError(`workflow ${def.type}: version must be a positive integer`);
  }
  if (def.concurrency !== undefined) checkConcurrency(def.type, def.concurrency);
  checkPriorityOptions(`workflow ${def.type}`, def);
  if (def.debounce !== undefined) checkDebounce(def.type, def.debounce);
  if (def.triggers !== undefined) checkTriggers(def.type, def.triggers);
  return Object.freeze(def);
}

export interface Registry {
  register(def: WorkflowDefinition): void;
  /** Latest version of `type`; throws `unknown_type`. */
  latest(type: string): WorkflowDefinition;
  /** Exactly `type@version`; throws `unknown_type` / `unknown_version`. */
  get(type: string, version: number): WorkflowDefinition;
  has(type: string): boolean;
  /** Every registered `type@version`. */
  list(): string[];
  /** Every registered definition. */
  all(): WorkflowDefinition[];
}

export function createRegistry(defs: Iterable<WorkflowDefinition> = []): Registry {
  const byType = new Map<string, Map<number, WorkflowDefinition>>();
  const registry: Registry = {
    register(def) {
      const checked = defineWorkflow(def);
      let versions = byType.get(checked.type);
      if (!versions) byType.set(checked.type, (versions = new Map<number, WorkflowDefinition>()));
      if (versions.has(checked.version)) {
        throw new ConfigError(`workflow ${checked.type}@${checked.version} is registered twice`);
      }
      versions.set(checked.version, checked);
    },
    latest(type) {
      const versions = byType.get(type);
      if (!versions || versions.size === 0) {
        throw new BadRequestError(`unknown workflow type ${JSON.stringify(type)}`, {
          code: ErrorCode.UnknownType,
          workflowType: type,
          details: { known: [...byType.keys()] },
        });
      }
      const top = Math.max(...versions.keys());
      return versions.get(top)!;
    },
    get(type, version) {
      const versions = byType.get(type);
      if (!versions) return registry.latest(type);
      const def = versions.get(version);
      if (!def) {
        throw new BadRequestError(`workflow ${type}@${version} is not registered on this engine`, {
          code: ErrorCode.UnknownVersion,
          workflowType: type,
          details: { registered: [...versions.keys()] },
        });
      }
      return def;
    },
    has: (type) => byType.has(type),
    list: () =>
      [...byType.values()].flatMap((m) => [...m.values()].map((d) => `${d.type}@${d.version}`)),
    all: () =>
      [...byType.values()].flatMap((m) => [...m.values()].sort((a, b) => a.version - b.version)),
  };
  for (const d of defs) registry.register(d);
  return registry;
}
