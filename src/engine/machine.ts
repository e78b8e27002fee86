/**
 * Adapter over XState's pure API. Nothing here runs actor logic: transitions return the next
 * snapshot and the actions, and actions become {@link Effect}s the engine performs durably.
 */
import {
  createActor,
  createEmptyActor,
  type AnyMachineSnapshot,
  type AnyStateMachine,
  type EventObject,
} from 'xstate';

type MachineScope = Parameters<AnyStateMachine['transition']>[2];

/**
 * The actor scope of one pure computation, as XState's `initialTransition` / `transition` build
 * it (a fresh actor system, nothing executed: the actions are collected), but with an empty actor
 * as `self`. XState's own (`createInertActorScope`) creates an actor of the machine itself, and
 * an actor's constructor computes the machine's initial snapshot: on every step it entered the
 * initial states, spawned their children and ran the context factory without input (which throws
 * and is caught), about a third of a step's cost, for nothing (`jetflow verify`'s profile).
 */
function pureScope(actions?: ActionLike[]): MachineScope {
  const self = createEmptyActor() as unknown as MachineScope['self'];
  return {
    self,
    defer: () => {},
    id: '',
    logger: () => {},
    sessionId: '',
    stopChild: () => {},
    system: self.system,
    emit: () => {},
    actionExecutor: actions ? (a) => void actions.push(a) : () => {},
  };
}

/** Snapshot after start, and the effects it owes (XState's `initialTransition`). */
export function start(
  machine: AnyStateMachine,
  input: unknown,
): { snapshot: AnyMachineSnapshot; actions: ActionLike[] } {
  const actions: ActionLike[] = [];
  const snapshot = machine.getInitialSnapshot(pureScope(actions), input);
  return { snapshot, actions };
}

/**
 * Rebuild a live snapshot from its persisted form (children are recreated, never started). As
 * `createActor(machine, { snapshot }).getSnapshot()`: a snapshot that cannot be restored gives
 * an `error` snapshot, it does not throw.
 */
export function restore(machine: AnyStateMachine, persisted: unknown): AnyMachineSnapshot {
  try {
    return machine.restoreSnapshot(persisted as never, pureScope());
  } catch {
    // Whatever XState's actor makes of it (an error snapshot, or for no snapshot at all — a
    // workflow deferred before its machine started — the initial one): the slow path, as before.
    return createActor(machine, {
      snapshot: persisted as never,
    }).getSnapshot() as AnyMachineSnapshot;
  }
}

/** Plain-data form of a snapshot, for the record. */
export function persist(machine: AnyStateMachine, snapshot: AnyMachineSnapshot): unknown {
  return machine.getPersistedSnapshot(snapshot);
}

/** Apply one event; throws when a guard or assign throws. */
export function step(
  machine: AnyStateMachine,
  snapshot: AnyMachineSnapshot,
  event: EventObject,
): { snapshot: AnyMachineSnapshot; actions: ActionLike[] } {
  // XState's `transition(machine, snapshot, event)`, with a lighter scope (see `pureScope`).
  const actions: ActionLike[] = [];
  const next = machine.transition(snapshot, event, pureScope(actions));
  return { snapshot: next as AnyMachineSnapshot, actions };
}

/** Event types the snapshot's active states handle (guards not evaluated), sorted. */
export function acceptedEvents(snapshot: AnyMachineSnapshot): string[] {
  if (snapshot.status !== 'active') return [];
  const nodes = (snapshot as unknown as { _nodes: { ownEvents: string[] }[] })._nodes;
  const types = new Set<string>();
  for (const n of nodes)
    for (const e of n.ownEvents)
      if (!e.startsWith('xstate.') && !e.startsWith('jetflow.')) types.add(e);
  return [...types].sort();
}

/** Tags of the snapshot, sorted. */
export function tagsOf(snapshot: AnyMachineSnapshot): string[] {
  return [...snapshot.tags].sort();
}

/** The shape of an action returned by the pure API (only what we read). */
export interface ActionLike {
  type: string;
  params?: unknown;
}

/** What an XState action asks the engine to do (before it becomes a durable effect). */
export type Command =
  /** `maxAttempts` overrides the activity's retry budget (an operator's retry). */
  | { kind: 'spawn'; actorId: string; src: string; input: unknown; maxAttempts?: number }
  | { kind: 'stop'; actorId: string }
  | { kind: 'timer'; timerId: string; event: unknown; delayMs: number }
  | { kind: 'cancelTimer'; timerId: string }
  /** An engine-native activity task keyed by `key` (no XState child): results come back as
   * `jetflow.task.done|failed|retrying` events. */
  | { kind: 'dispatch'; key: string; target: DispatchTarget }
  /** An event to another workflow (E8), exactly once; optionally starting it. */
  | {
      kind: 'send';
      to: { type: string; id: string };
      event: { type: string; [k: string]: unknown };
      startIfAbsent?: { input: unknown };
    }
  | { kind: 'cancelTask'; key: string }
  /** A batch this workflow starts (issue 23); its `batch.completed` comes back as an event. */
  | { kind: 'batch'; batch: WorkflowBatch }
  /** An event the step emitted (XState `emit`): on the notification, and as an alert. */
  | { kind: 'emit'; event: Record<string, unknown> }
  /** The step's reply value (the signal reply's `result`). */
  | { kind: 'reply'; value: unknown }
  /** The step is a rejection: nothing is stored, the requester gets this error. */
  | { kind: 'reject'; code: string; message: string; details?: unknown };

/**
 * What `jetflow.dispatch` starts under a key (see {@link dispatch}): an activity task, a child
 * workflow (`workflow`), or the await of an existing workflow (`watch`). All three report back
 * through the same task table, as `jetflow.task.done|failed` events.
 */
export type DispatchTarget = ActivityTarget | ChildTarget | WatchTarget;

/** A child workflow started under a dispatch key; canceled when the key is canceled. */
export interface ChildTarget {
  workflow: { type: string; id: string; input?: unknown };
  node?: Record<string, unknown>;
}

/** An existing workflow awaited under a dispatch key (its end is reported; nothing else). */
export interface WatchTarget {
  watch: { type: string; id: string };
  node?: Record<string, unknown>;
}

/** An activity dispatched by `jetflow.dispatch`. */
export interface ActivityTarget {
  /** Activity name (the task's `activity`). */
  activity: string;
  queue: string;
  input: unknown;
  /** Per-call options, as `activity()` takes them (plus `retry.delaysMs`). */
  options?: Record<string, unknown>;
  /** Tree node facts carried on the task (`node` field). */
  node?: Record<string, unknown>;
}

/**
 * The engine-native actions, for `setup({ actions: { ...jetflowActions } })`. Their
 * implementations do nothing: the engine reads them from the pure transition's action list.
 */
export const jetflowActions = {
  'jetflow.dispatch': () => {},
  'jetflow.cancelTask': () => {},
  'jetflow.reply': () => {},
  'jetflow.reject': () => {},
  'jetflow.send': () => {},
  'jetflow.batch': () => {},
} as const;

/** Action arguments a dynamic value is computed from. */
export interface ActionArgs {
  // XState's own action arguments are typed `any` for context and event in custom actions.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  context: any;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  event: any;
}
/** A value, or a function of the action's context and event that computes it. */
export type Dynamic<T> = T | ((args: ActionArgs) => T);

const valueOf = <T>(v: Dynamic<T>, args: ActionArgs): T =>
  typeof v === 'function' ? (v as (a: ActionArgs) => T)(args) : v;

/** Options of {@link sendToWorkflow}. */
export interface SendOptions {
  /** Start the target with this input when it does not exist (then deliver the event). */
  startIfAbsent?: Dynamic<{ input?: unknown }>;
}

/**
 * Send an event to another workflow, exactly once (E8). The send is an outbox effect of this
 * step with a deterministic msg id, and the receiver keeps a per-sender watermark, so a repeat
 * (a re-performed outbox after a crash, even after JetStream's dedup window) is applied once.
 * Sends from one workflow to one target arrive in the order they were made. When the event
 * cannot be delivered (the target does not exist and `startIfAbsent` is not given, it has
 * finished, or it does not accept the event now), this workflow receives `jetflow.send.failed`
 * `{to, event, error}` (exactly once as well). `target`, its fields, `event` and
 * `startIfAbsent` may be functions of `{context, event}`.
 */
export function sendToWorkflow(
  target: Dynamic<{ type: string; id: string }> | { type: Dynamic<string>; id: Dynamic<string> },
  event: Dynamic<{ type: string; [k: string]: unknown }>,
  options: SendOptions = {},
) {
  return {
    type: 'jetflow.send',
    params: (args: ActionArgs) => {
      const t = valueOf(target as Dynamic<{ type: Dynamic<string>; id: Dynamic<string> }>, args);
      const start =
        options.startIfAbsent !== undefined ? valueOf(options.startIfAbsent, args) : undefined;
      return {
        to: { type: valueOf(t.type, args), id: valueOf(t.id, args) },
        event: valueOf(event, args),
        ...(start !== undefined ? { startIfAbsent: { input: start.input } } : {}),
      };
    },
  } as const;
}

/** The batch a workflow starts with {@link startBatch}, as its step's outbox holds it. */
export interface WorkflowBatch {
  id: string;
  type: string;
  items: { key: string; input: unknown }[];
  policy?: unknown;
  cancelRest?: boolean;
  /** Type of the event this workflow receives when the batch completes (default `batch.completed`). */
  event?: string;
}

/** Options of {@link startBatch}. */
export interface StartBatchSpec<T = unknown> {
  /** The batch id (deterministic: a function of the context, e.g. `month-close-${period}`). */
  id: Dynamic<string>;
  /** Workflow type of the items. */
  type: Dynamic<string>;
  /** The items' inputs (at most {@link WORKFLOW_BATCH_MAX_ITEMS}: they ride in the step's outbox). */
  items: Dynamic<readonly T[]>;
  /** Each item's key (default: its index). */
  itemKey?: (item: T, index: number) => string;
  /** `'complete-with-errors'` (default), `'all-must-succeed'` or `{ failIfMoreThan }`. */
  policy?: 'complete-with-errors' | 'all-must-succeed' | { failIfMoreThan: number };
  cancelRest?: boolean;
  /** Type of the completion event sent to this workflow (default `batch.completed`). */
  event?: string;
}

/** Most items a workflow's own step may start as a batch (bigger: submit from an activity). */
export const WORKFLOW_BATCH_MAX_ITEMS = 10_000;

/**
 * Start a batch as an effect of this step (issue 23): the batch is created, its items
 * submitted and it is sealed, with this workflow as its `onComplete` signal target, so the
 * workflow waits for `batch.completed` (`{ id, policy, outcome, counts, generation }`) like any
 * event. Exactly once: the batch is in the step's outbox and every part of its creation is
 * idempotent (the batch id, the items' positions, the seal), so a re-performed outbox after an
 * engine crash creates nothing twice. A batch that cannot be created (unknown type, bad id)
 * sends `jetflow.batch.failed` `{ id, error }` instead. `id` and `items` may be functions of
 * `{context, event}`.
 */
export function startBatch<T = unknown>(spec: StartBatchSpec<T>) {
  return {
    type: 'jetflow.batch',
    params: (args: ActionArgs): WorkflowBatch => {
      const items = valueOf(spec.items, args);
      return {
        id: valueOf(spec.id, args),
        type: valueOf(spec.type, args),
        items: items.map((input, i) => ({
          key: spec.itemKey ? spec.itemKey(input, i) : String(i),
          input,
        })),
        ...(spec.policy !== undefined ? { policy: spec.policy } : {}),
        ...(spec.cancelRest ? { cancelRest: true } : {}),
        ...(spec.event ? { event: spec.event } : {}),
      };
    },
  } as const;
}

/** Dispatch an activity task under `key` (results: `jetflow.task.done|failed|retrying`). */
export const dispatch = (key: string, target: DispatchTarget) =>
  ({ type: 'jetflow.dispatch', params: { key, target } }) as const;
/** Cancel the task dispatched under `key` (purge it, abort a running attempt). */
export const cancelTask = (key: string) =>
  ({ type: 'jetflow.cancelTask', params: { key } }) as const;
/** Set the reply of this step (the signal reply's `result`; the last one wins). */
export const reply = (value: unknown) => ({ type: 'jetflow.reply', params: { value } }) as const;
/** Make this step a rejection with a reply code (nothing is stored; a start creates nothing). */
export const reject = (r: { code: string; message: string; details?: unknown }) =>
  ({ type: 'jetflow.reject', params: r }) as const;

/**
 * Turn XState actions into engine commands, in order. `stepNo` makes generated timer ids
 * deterministic. Custom actions are not run (effects happen only through the engine);
 * non-delayed raises were already applied inside `transition()`.
 */
export function toCommands(actions: ActionLike[], stepNo: number): Command[] {
  const out: Command[] = [];
  actions.forEach((a, index) => {
    const p = (a.params ?? {}) as Record<string, unknown>;
    switch (a.type) {
      case 'xstate.spawnChild':
        out.push({ kind: 'spawn', actorId: String(p.id), src: String(p.src), input: p.input });
        break;
      case 'xstate.stopChild': {
        const id = (a.params as { id?: unknown } | undefined)?.id;
        if (typeof id === 'string') out.push({ kind: 'stop', actorId: id });
        break;
      }
      case 'xstate.raise': {
        // Delayed raises (and `after`, which XState expresses as one) become durable timers.
        // A non-delayed raise was already applied inside transition(). Delayed `sendTo` a child
        // has no meaning for activities and is not supported (documented).
        const delay = typeof p.delay === 'number' ? p.delay : undefined;
        if (delay === undefined) break;
        const timerId = typeof p.id === 'string' ? p.id : `t${stepNo}.${index}`;
        out.push({ kind: 'timer', timerId, event: p.event, delayMs: delay });
        break;
      }
      case 'xstate.cancel':
        if (typeof p.sendId === 'string') out.push({ kind: 'cancelTimer', timerId: p.sendId });
        break;
      case 'xstate.emit':
        if (p.event && typeof p.event === 'object')
          out.push({ kind: 'emit', event: p.event as Record<string, unknown> });
        break;
      case 'jetflow.dispatch':
        out.push({ kind: 'dispatch', key: String(p.key), target: p.target as DispatchTarget });
        break;
      case 'jetflow.cancelTask':
        out.push({ kind: 'cancelTask', key: String(p.key) });
        break;
      case 'jetflow.send': {
        const to = (p.to ?? {}) as { type?: unknown; id?: unknown };
        out.push({
          kind: 'send',
          to: { type: String(to.type), id: String(to.id) },
          event: p.event as { type: string },
          ...(p.startIfAbsent !== undefined
            ? { startIfAbsent: p.startIfAbsent as { input: unknown } }
            : {}),
        });
        break;
      }
      case 'jetflow.batch':
        out.push({ kind: 'batch', batch: p as unknown as WorkflowBatch });
        break;
      case 'jetflow.reply':
        out.push({ kind: 'reply', value: p.value });
        break;
      case 'jetflow.reject':
        out.push({
          kind: 'reject',
          code: String(p.code),
          message: String(p.message),
          ...(p.details !== undefined ? { details: p.details } : {}),
        });
        break;
      default:
        break;
    }
  });
  return out;
}

/**
 * The running children of a persisted snapshot, as spawn commands: how a restored state (a
 * reset) or a parked activity (a retry) dispatches its activities again. XState keeps each
 * child's `src` (the key in `setup({ actors })`) and its input in the persisted snapshot.
 */
export function childSpawns(persisted: unknown): Extract<Command, { kind: 'spawn' }>[] {
  const children = ((persisted as { children?: unknown } | undefined)?.children ?? {}) as Record<
    string,
    { src?: unknown; snapshot?: { input?: unknown } }
  >;
  const out: Extract<Command, { kind: 'spawn' }>[] = [];
  for (const [actorId, child] of Object.entries(children)) {
    if (typeof child?.src !== 'string') continue;
    out.push({ kind: 'spawn', actorId, src: child.src, input: child.snapshot?.input });
  }
  return out;
}
