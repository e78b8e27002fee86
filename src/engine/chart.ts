/**
 * The statechart of a workflow definition as plain data, for the console to draw: every state
 * (its dot-joined path, as the journal's `paths` spell them), its kind and invoked actors, and
 * every transition (event, source, targets, guarded or not). Pure: reads the XState machine.
 */
import type { AnyStateMachine } from 'xstate';

export interface ChartState {
  /** Dot-joined path below the root, e.g. `shipping.packing` (the root is ``). */
  path: string;
  /** Parent path (`` for a top-level state; absent for the root). */
  parent?: string;
  kind: 'atomic' | 'compound' | 'parallel' | 'final' | 'history';
  /** The initial child's path (compound states). */
  initial?: string;
  /** Invoked actors: id and source (activity name, child workflow…). */
  invokes: { id: string; src: string }[];
}

export interface ChartTransition {
  from: string;
  to: string[];
  /** The event, shortened for reading: `done bank`, `error bank`, `after 3000`, `always`. */
  label: string;
  event: string;
  guarded: boolean;
}

export interface Chart {
  type: string;
  version: number;
  initial: string | undefined;
  states: ChartState[];
  transitions: ChartTransition[];
}

interface NodeLike {
  id: string;
  type: ChartState['kind'];
  states: Record<string, NodeLike>;
  initial?: { target?: NodeLike[] };
  invoke: { id: string; src: unknown }[];
  transitions: Map<string, { target?: NodeLike[]; guard?: unknown; eventType: string }[]>;
  always?: { target?: NodeLike[]; guard?: unknown }[];
}

/** `xstate.done.actor.bank` → `done bank`; `xstate.after.3000.m.s` → `after 3000`. */
export function eventLabel(event: string): string {
  let m = /^xstate\.(done|error)\.actor\.(.+)$/.exec(event);
  if (m) return `${m[1]} ${m[2]}`;
  m = /^xstate\.after\.([^.]+)\./.exec(event);
  if (m) return `after ${m[1]}`;
  m = /^xstate\.done\.state\.(.+)$/.exec(event);
  if (m) return 'done';
  return event;
}

/** The chart of `machine` (registered as `type`@`version`). */
export function chartOf(type: string, version: number, machine: AnyStateMachine): Chart {
  const root = machine.root as unknown as NodeLike;
  const rootId = root.id;
  const pathOf = (n: NodeLike) => (n.id === rootId ? '' : n.id.slice(rootId.length + 1));
  const states: ChartState[] = [];
  const transitions: ChartTransition[] = [];
  const walk = (n: NodeLike, parent: string | undefined) => {
    const path = pathOf(n);
    const initial = n.initial?.target?.[0];
    states.push({
      path,
      ...(parent !== undefined ? { parent } : {}),
      kind: n.type,
      ...(initial ? { initial: pathOf(initial) } : {}),
      invokes: n.invoke.map((i) => ({
        id: i.id,
        src: typeof i.src === 'string' ? i.src : 'inline',
      })),
    });
    for (const [event, ts] of n.transitions) {
      for (const t of ts) {
        const to = (t.target ?? []).map(pathOf);
        if (to.length === 0) continue; // an action-only (targetless) transition
        transitions.push({ from: path, to, event, label: eventLabel(event), guarded: !!t.guard });
      }
    }
    for (const t of n.always ?? []) {
      const to = (t.target ?? []).map(pathOf);
      if (to.length > 0)
        transitions.push({ from: path, to, event: '', label: 'always', guarded: !!t.guard });
    }
    for (const c of Object.values(n.states)) walk(c, path);
  };
  walk(root, undefined);
  const init = root.initial?.target?.[0];
  return { type, version, initial: init ? pathOf(init) : undefined, states, transitions };
}
