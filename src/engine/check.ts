/**
 * Static check of workflow definitions (`jetflow check`, and `jetflow engine` at start): what the
 * machine's own graph says before any workflow runs. Errors are definitions the engine cannot run
 * as written (a step would throw or loop); warnings are probable mistakes. No I/O.
 */
import { resolveActivity, CALL_OPTIONS_KEY } from './activity.js';
import { statePaths } from './journal.js';
import type { WorkflowDefinition } from './registry.js';

export type CheckSeverity = 'error' | 'warning';

/** What a finding is about (stable codes, documented in the README). */
export type CheckCode =
  | 'invalid-machine'
  | 'unreachable-state'
  | 'final-never-reached'
  | 'event-never-accepted'
  | 'activity-no-onerror'
  | 'activity-options'
  | 'activity-undeclared'
  | 'delay-unknown'
  | 'delay-invalid'
  | 'guard-unknown'
  | 'eventless-loop'
  | 'state-removed';

export interface CheckFinding {
  type: string;
  version: number;
  severity: CheckSeverity;
  code: CheckCode;
  /** The state node (dot path from the root; empty for the machine). */
  state: string;
  message: string;
}

/** The subset of XState's StateNode the check reads. */
interface Node {
  key: string;
  path: string[];
  type: 'atomic' | 'compound' | 'parallel' | 'final' | 'history';
  parent?: Node;
  states: Record<string, Node>;
  initial?: { target: Node[] };
  transitions: Map<string, Transition[]>;
  always?: Transition[];
  after: { delay: unknown; eventType: string }[];
  invoke: { id: string; src: unknown; input?: unknown }[];
  config: { after?: unknown; on?: Record<string, unknown> };
}

interface Transition {
  target?: Node[];
  guard?: unknown;
  eventType: string;
}

const pathOf = (n: Node) => n.path.join('.');

function allNodes(root: Node): Node[] {
  const out: Node[] = [];
  const walk = (n: Node) => {
    out.push(n);
    for (const c of Object.values(n.states)) walk(c);
  };
  walk(root);
  return out;
}

/** Transitions of a node, every event (including after, done and error events) and always. */
function transitionsOf(n: Node): Transition[] {
  return [...[...n.transitions.values()].flat(), ...(n.always ?? [])];
}

/** States reachable from the initial state, by the machine's transitions (guards ignored). */
function reachable(root: Node): Set<Node> {
  const seen = new Set<Node>();
  const work: Node[] = [];
  const enter = (n: Node) => {
    if (seen.has(n)) return;
    seen.add(n);
    work.push(n);
    for (let p = n.parent; p; p = p.parent) {
      if (!seen.has(p)) {
        seen.add(p);
        work.push(p);
      }
      if (p.type === 'parallel') for (const c of Object.values(p.states)) enter(c);
    }
    if (n.type === 'compound') for (const t of n.initial?.target ?? []) enter(t);
    if (n.type === 'parallel') for (const c of Object.values(n.states)) enter(c);
    if (n.type === 'history' && n.parent)
      for (const c of Object.values(n.parent.states)) if (c !== n) enter(c);
  };
  enter(root);
  while (work.length > 0) {
    const n = work.pop()!;
    for (const t of transitionsOf(n)) for (const target of t.target ?? []) enter(target);
  }
  return seen;
}

/** A guard referenced by name (`'name'` or `{ type: 'name' }`), or undefined (inline, built-in). */
function guardName(g: unknown): string | undefined {
  if (typeof g === 'string') return g;
  if (g && typeof g === 'object' && typeof (g as { type?: unknown }).type === 'string')
    return (g as { type: string }).type;
  return undefined;
}

/** Check one definition. */
export function checkDefinition(def: WorkflowDefinition): CheckFinding[] {
  const out: CheckFinding[] = [];
  const add = (severity: CheckSeverity, code: CheckCode, state: string, message: string) =>
    out.push({ type: def.type, version: def.version, severity, code, state, message });
  const machine = def.machine;
  let root: Node;
  let nodes: Node[];
  try {
    root = machine.root as unknown as Node;
    nodes = allNodes(root);
    for (const n of nodes) transitionsOf(n); // resolves targets: throws on a missing one
  } catch (err) {
    add('error', 'invalid-machine', '', String((err as Error)?.message ?? err));
    return out;
  }
  const impl = machine.implementations as {
    guards?: Record<string, unknown>;
    delays?: Record<string, unknown>;
    actors?: Record<string, unknown>;
  };
  const seen = reachable(root);

  for (const n of nodes) {
    if (n === root || seen.has(n) || n.type === 'history') continue;
    // Report the topmost unreachable state only (its descendants follow it).
    if (n.parent && n.parent !== root && !seen.has(n.parent)) continue;
    if (n.type === 'final')
      add(
        'warning',
        'final-never-reached',
        pathOf(n),
        `final state ${pathOf(n)} is never reached: no transition leads to it`,
      );
    else
      add(
        'warning',
        'unreachable-state',
        pathOf(n),
        `state ${pathOf(n)} is unreachable from the initial state`,
      );
  }
  const topFinal = Object.values(root.states).some((c) => c.type === 'final' && seen.has(c));
  const parallelDone =
    root.type === 'parallel' &&
    Object.values(root.states).every((r) =>
      Object.values(r.states).some((c) => c.type === 'final' && seen.has(c)),
    );
  // Said once: a final state reported unreachable above already tells it.
  if (!topFinal && !parallelDone && !out.some((f) => f.code === 'final-never-reached'))
    add(
      'warning',
      'final-never-reached',
      '',
      'no final state of the machine is reachable: a workflow never ends (only a cancel ends it)',
    );

  // Events: handled only in states no workflow can be in.
  const handledIn = new Map<string, Node[]>();
  for (const n of nodes)
    for (const ev of Object.keys(n.config.on ?? {}))
      handledIn.set(ev, [...(handledIn.get(ev) ?? []), n]);
  for (const [ev, where] of handledIn) {
    if (where.some((n) => seen.has(n) && n.type !== 'final')) continue;
    add(
      'warning',
      'event-never-accepted',
      where.map(pathOf).join(','),
      `event ${JSON.stringify(ev)} is never accepted: only ${where.map((n) => (n.type === 'final' ? `final state ${pathOf(n)}` : `unreachable state ${pathOf(n)}`)).join(', ')} handle${where.length > 1 ? '' : 's'} it`,
    );
  }

  for (const n of nodes) {
    const at = pathOf(n);
    for (const t of transitionsOf(n)) {
      const g = guardName(t.guard);
      if (g !== undefined && !g.startsWith('xstate.') && !(g in (impl.guards ?? {})))
        add(
          'error',
          'guard-unknown',
          at,
          `state ${at}: guard ${JSON.stringify(g)} (on ${t.eventType || 'always'}) is not defined in setup({ guards })`,
        );
    }
    for (const t of n.always ?? []) {
      if (t.guard !== undefined) continue;
      const targets = t.target ?? [];
      if (targets.length === 0 || targets.includes(n))
        add(
          'error',
          'eventless-loop',
          at,
          `state ${at}: an unguarded \`always\` transition ${targets.length === 0 ? 'without a target' : 'to itself'} loops forever`,
        );
    }
    for (const a of n.after) {
      const d = a.delay;
      if (typeof d === 'number' || (typeof d === 'string' && /^-?\d+(\.\d+)?$/.test(d))) {
        const ms = Number(d);
        if (!Number.isFinite(ms) || ms < 0)
          add('error', 'delay-invalid', at, `state ${at}: delay ${String(d)} is not a time`);
      } else if (typeof d === 'string' && !(d in (impl.delays ?? {}))) {
        add(
          'error',
          'delay-unknown',
          at,
          `state ${at}: delay ${JSON.stringify(d)} is not defined in setup({ delays }): no durable timer can be set`,
        );
      }
    }
    for (const inv of n.invoke) {
      const src = typeof inv.src === 'string' ? inv.src : undefined;
      if (src === undefined) continue;
      const staticInput = typeof inv.input === 'function' ? undefined : inv.input;
      const logic = impl.actors?.[src] as Record<symbol, unknown> | undefined;
      if (logic?.[Symbol.for('jetflow.workflow')]) continue; // a child workflow
      if (!(src in (impl.actors ?? {})))
        add(
          'warning',
          'activity-undeclared',
          at,
          `state ${at}: invoked ${JSON.stringify(src)} is not in setup({ actors }): it runs as an activity of that name with default options`,
        );
      try {
        if (staticInput && typeof staticInput === 'object' && CALL_OPTIONS_KEY in staticInput)
          resolveActivity(machine, src, staticInput);
        else resolveActivity(machine, src, undefined);
      } catch (err) {
        add(
          'error',
          'activity-options',
          at,
          `state ${at}: activity ${JSON.stringify(src)}: ${String((err as Error)?.message ?? err)}`,
        );
      }
      const errorEvent = `xstate.error.actor.${inv.id}`;
      let handled = false;
      for (let p: Node | undefined = n; p && !handled; p = p.parent)
        handled = p.transitions.has(errorEvent) || p.transitions.has('*');
      if (!handled)
        add(
          'warning',
          'activity-no-onerror',
          at,
          `state ${at}: invoked ${JSON.stringify(src)} has no onError: its final failure fails the whole workflow, with no state of its own to handle it`,
        );
    }
  }
  return out;
}

/** Check every definition. */
export function checkDefinitions(defs: readonly WorkflowDefinition[]): CheckFinding[] {
  return defs.flatMap(checkDefinition);
}

/**
 * States that workflows in flight are in now (`counts`: running workflows by state path, from
 * the visibility index) which `def` no longer has: a migration map is required for them.
 */
export function checkAgainstLive(
  def: WorkflowDefinition,
  counts: readonly { state: string; count: number }[],
): CheckFinding[] {
  const known = new Set<string>();
  for (const n of allNodes(def.machine.root as unknown as Node))
    if (n.path.length > 0) known.add(pathOf(n));
  const out: CheckFinding[] = [];
  for (const c of counts) {
    if (c.count === 0 || known.has(c.state)) continue;
    out.push({
      type: def.type,
      version: def.version,
      severity: 'error',
      code: 'state-removed',
      state: c.state,
      message: `${c.count} workflow${c.count > 1 ? 's' : ''} in flight ${c.count > 1 ? 'are' : 'is'} in state ${c.state}, which ${def.type}@${def.version} no longer has: a migration map is required`,
    });
  }
  return out;
}

/** Leaf state paths of a state value (re-exported for the CLI's counts). */
export const leafPaths = statePaths;
