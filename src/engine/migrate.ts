/**
 * The plan of a migration of workflows in flight to a new version (`jetflow migrate --dry-run`):
 * a persisted snapshot of the old version mapped to the new one (state renames and a context
 * function), and validated against the new machine. Pure: nothing is written.
 */
import type { AnyStateMachine } from 'xstate';
import type { WorkflowRecord } from '../contracts/wire.js';
import { statePaths } from './journal.js';
import * as m from './machine.js';
import type { WorkflowDefinition } from './registry.js';

/** What `--map ./map.mjs` exports (all optional). */
export interface MigrationMap {
  /** Old state path → new state path (dot-joined leaf or parent paths, e.g. `a.b`). */
  states?: Record<string, string>;
  /** The new context from the old one. */
  context?: (context: unknown, record: { type: string; id: string; version: number }) => unknown;
  /**
   * For `--revert` of a workflow that took steps on the new version since it was migrated (its
   * journaled snapshot would undo them): the old context from the new one. The state renames are
   * inverted from `states`. Without it such a workflow keeps its context as it is.
   */
  revert?: {
    context?: (context: unknown, record: { type: string; id: string; version: number }) => unknown;
  };
}

/** The plan for one workflow. */
export interface MigrationPlan {
  type: string;
  id: string;
  from: number;
  to: number;
  /** Active state paths before and after the map. */
  paths: { before: string[]; after: string[] };
  contextChanged: boolean;
  /** Why it cannot be migrated (empty: it can). */
  problems: string[];
  /** The mapped persisted snapshot (absent when it has problems). */
  snapshot?: unknown;
}

interface Node {
  key: string;
  states: Record<string, Node>;
  invoke: { id: string }[];
}

function nodeAt(machine: AnyStateMachine, path: string): Node | undefined {
  let n = machine.root as unknown as Node;
  for (const seg of path.split('.')) {
    const c = n.states[seg];
    if (!c) return undefined;
    n = c;
  }
  return n;
}

/** A state value from leaf paths (`["a.b", "c"]` → `{a: "b", c: ...}`); one plain path: a string. */
function valueOf(paths: string[]): unknown {
  if (paths.length === 1 && !paths[0]!.includes('.')) return paths[0];
  const out: Record<string, unknown> = {};
  for (const p of paths) {
    const segs = p.split('.');
    let at = out;
    for (let i = 0; i < segs.length - 1; i++) {
      const k = segs[i]!;
      const last = i === segs.length - 2;
      if (last) at[k] = segs[i + 1];
      else {
        if (typeof at[k] !== 'object' || at[k] === null) at[k] = {};
        at = at[k] as Record<string, unknown>;
      }
    }
    if (segs.length === 1) out[segs[0]!] = {};
  }
  return out;
}

function rename(path: string, states: Record<string, string>): string {
  // The longest mapped prefix wins: `a` → `x` renames `a.b` to `x.b`.
  const segs = path.split('.');
  for (let i = segs.length; i > 0; i--) {
    const head = segs.slice(0, i).join('.');
    const to = states[head];
    if (to !== undefined) return [to, ...segs.slice(i)].join('.');
  }
  return path;
}

/** The state renames read backwards (`a → x` becomes `x → a`); undefined when two map to one. */
export function invertStates(
  states: Record<string, string> | undefined,
): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  for (const [from, to] of Object.entries(states ?? {})) {
    if (to in out) return undefined;
    out[to] = from;
  }
  return out;
}

/**
 * Validate `snapshot` as the state of `record` on `to`: every active state exists, the workflow
 * is running, every pending activity or child workflow is invoked by a state it would be in, every
 * pending `after` timer's state stays active, and the new machine restores it. Returns the
 * problems (empty: valid) and the snapshot as the new machine persists it. Pure; throws nothing.
 * The engine checks a `migrate` request with it again, in the step that applies it.
 */
export function checkSnapshot(
  record: WorkflowRecord,
  to: WorkflowDefinition,
  snapshot: unknown,
): { problems: string[]; snapshot?: unknown } {
  const problems: string[] = [];
  const after = statePaths((snapshot as { value?: unknown } | null)?.value);
  const machine = to.machine;
  const active: Node[] = [];
  for (const p of after) {
    const segs = p.split('.');
    let ok = true;
    for (let i = 1; i <= segs.length; i++) {
      const n = nodeAt(machine, segs.slice(0, i).join('.'));
      if (!n) {
        ok = false;
        break;
      }
      active.push(n);
    }
    if (!ok) problems.push(`state ${p} does not exist in ${to.type}@${to.version}`);
  }
  if (after.length === 0) problems.push('the snapshot has no state value');
  if (record.status !== 'running') problems.push(`the workflow is ${record.status}`);
  const invoked = new Set(active.flatMap((n) => n.invoke.map((i) => i.id)));
  for (const [actorId, t] of Object.entries(record.tasks)) {
    if (t.dispatched) continue; // a tree's own dispatch: kept by the machine's context
    if (!invoked.has(actorId))
      problems.push(
        `in-flight ${t.kind === 'workflow' ? 'child workflow' : 'activity'} ${t.activity} (${actorId}) is invoked by no state the workflow would be in`,
      );
  }
  for (const timerId of Object.keys(record.timers)) {
    // `xstate.after.<delay>.<machineId>.<state path>`: the state must stay active.
    const mt = /^xstate\.after\.[^.]+\.(.+)$/.exec(timerId);
    if (!mt) continue;
    const statePath = mt[1]!.split('.').slice(1).join('.');
    if (statePath && !after.some((p) => p === statePath || p.startsWith(`${statePath}.`)))
      problems.push(`pending timer ${timerId} belongs to a state the workflow would not be in`);
  }
  if (problems.length > 0) return { problems };
  try {
    return { problems, snapshot: m.persist(machine, m.restore(machine, snapshot)) };
  } catch (err) {
    problems.push(
      `the new machine cannot restore the snapshot: ${String((err as Error)?.message ?? err)}`,
    );
    return { problems };
  }
}

/**
 * Plan the migration of `record` to `to`: map its snapshot, then validate it against the new
 * machine ({@link checkSnapshot}). Throws nothing; problems are listed.
 */
export function planMigration(
  record: WorkflowRecord,
  to: WorkflowDefinition,
  map: MigrationMap = {},
): MigrationPlan {
  const snap = (record.snapshot ?? {}) as { value?: unknown; context?: unknown };
  const before = statePaths(snap.value);
  const after = before.map((p) => rename(p, map.states ?? {}));
  const problems: string[] = [];
  let context = snap.context;
  if (map.context) {
    try {
      context = map.context(snap.context, {
        type: record.type,
        id: record.id,
        version: record.version,
      });
    } catch (err) {
      problems.push(`the map's context function threw: ${String((err as Error)?.message ?? err)}`);
    }
  }
  const plan: MigrationPlan = {
    type: record.type,
    id: record.id,
    from: record.version,
    to: to.version,
    paths: { before, after },
    contextChanged: JSON.stringify(context) !== JSON.stringify(snap.context),
    problems,
  };
  if (problems.length > 0) return plan;
  const checked = checkSnapshot(record, to, {
    ...(record.snapshot as object),
    value: valueOf(after),
    context,
  });
  problems.push(...checked.problems);
  if (checked.snapshot !== undefined) plan.snapshot = checked.snapshot;
  return plan;
}
