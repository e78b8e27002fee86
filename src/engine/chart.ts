/**
 * The statechart of a workflow definition as plain data, for the console to draw: every state
 * (its dot-joined path, as the journal's `paths` spell them), its kind and invoked actors, and
 * every transition (event, source, targets, guarded or not), and where to draw them: a layered
 * layout by dagre (a maintained library; compound states drawn around their children). Pure:
 * reads the XState machine.
 */
import dagreModule from '@dagrejs/dagre';
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
  /** Where to draw it (dagre's layered layout, left to right). */
  layout: ChartLayout;
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
  const chart = { type, version, initial: init ? pathOf(init) : undefined, states, transitions };
  return { ...chart, layout: layoutChart(chart) };
}

// ---- Layout (dagre) -----------------------------------------------------------------------------

export interface Box {
  /** Top-left corner and size. */
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface ChartLayout {
  width: number;
  height: number;
  /** Every state but the root: atomic and final states as boxes, compound and parallel states as
   *  boxes drawn around their children (their name in a band at the top). */
  states: Record<string, Box>;
  /** One per transition target, in `transitions` order: the polyline and the label's centre. */
  edges: { from: string; to: string; label: string; points: Point[]; labelAt: Point }[];
}

export interface Point {
  x: number;
  y: number;
}

const NODE_W = 150;
const NODE_H = 40;
/** The compound state's name above its children. */
const BAND = 24;
const PAD = 12;

/** The part of dagre used here (its bundled types do not resolve under NodeNext: extensionless
 *  relative imports in its .d.ts files, so they are declared here). */
interface DagreGraph {
  setGraph(label: Record<string, unknown>): void;
  setDefaultEdgeLabel(f: () => Record<string, unknown>): void;
  setNode(name: string, label: Record<string, unknown>): void;
  setParent(child: string, parent: string): void;
  setEdge(v: string, w: string, label: Record<string, unknown>, name: string): void;
  node(name: string): { x: number; y: number; width: number; height: number };
  edge(e: { v: string; w: string; name: string }): { points: Point[]; x: number; y: number };
}
const dagre = dagreModule as unknown as {
  graphlib: { Graph: new (opts: { compound: boolean; multigraph: boolean }) => DagreGraph };
  layout(g: DagreGraph): void;
};

const inside = (p: Point, b: Box) =>
  p.x > b.x && p.x < b.x + b.width && p.y > b.y && p.y < b.y + b.height;

/** Where the segment from `a` (inside `b`) to `c` (outside) crosses `b`'s border. */
function exit(a: Point, c: Point, b: Box): Point {
  let t = 1;
  const dx = c.x - a.x;
  const dy = c.y - a.y;
  if (dx > 0) t = Math.min(t, (b.x + b.width - a.x) / dx);
  if (dx < 0) t = Math.min(t, (b.x - a.x) / dx);
  if (dy > 0) t = Math.min(t, (b.y + b.height - a.y) / dy);
  if (dy < 0) t = Math.min(t, (b.y - a.y) / dy);
  return { x: a.x + dx * t, y: a.y + dy * t };
}

/**
 * Lay `chart` out left to right with dagre (a compound graph: each state's children inside it).
 * Dagre does not route edges to a cluster, so a transition of a compound state is laid out from
 * (or to) its initial leaf and drawn from (or to) the compound's border. Pure.
 */
export function layoutChart(chart: Omit<Chart, 'layout'>): ChartLayout {
  const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
  g.setGraph({ rankdir: 'LR', nodesep: 36, ranksep: 70, edgesep: 14, marginx: 12, marginy: 12 });
  g.setDefaultEdgeLabel(() => ({}));
  const states = chart.states.filter((s) => s.path !== '');
  const byPath = new Map(states.map((s) => [s.path, s]));
  const hasChildren = new Set(states.map((s) => s.parent).filter((p) => p));
  for (const s of states) {
    if (hasChildren.has(s.path)) g.setNode(s.path, {});
    else g.setNode(s.path, { width: NODE_W, height: NODE_H });
    if (s.parent) g.setParent(s.path, s.parent);
  }
  /** A leaf inside `path` (its initial child, recursively; else its first child). */
  const leafOf = (path: string): string => {
    let p = path;
    for (;;) {
      if (!hasChildren.has(p)) return p;
      const s = byPath.get(p)!;
      p = s.initial ?? states.find((c) => c.parent === p)!.path;
    }
  };
  const edges: { from: string; to: string; label: string; name: string }[] = [];
  chart.transitions.forEach((t, i) => {
    if (t.from === '' || !byPath.has(t.from)) return; // a root's transition leaves every state
    t.to.forEach((to, j) => {
      if (!byPath.has(to)) return;
      const label = t.label + (t.guarded ? ' [guard]' : '');
      const name = `${i}.${j}`;
      edges.push({ from: t.from, to, label, name });
      g.setEdge(
        leafOf(t.from),
        leafOf(to),
        { width: label.length * 6.2 + 8, height: 14, labelpos: 'c' },
        name,
      );
    });
  });
  dagre.layout(g);

  const boxes: Record<string, Box> = {};
  for (const s of states) {
    const n = g.node(s.path);
    boxes[s.path] = {
      x: n.x - n.width / 2,
      y: n.y - n.height / 2,
      width: n.width,
      height: n.height,
    };
  }
  // Room for each compound's name: deepest first, each grows to hold its (grown) children.
  const depth = (p: string) => p.split('.').length;
  for (const s of [...states].sort((a, b) => depth(b.path) - depth(a.path))) {
    if (!hasChildren.has(s.path)) continue;
    const kids = states.filter((c) => c.parent === s.path).map((c) => boxes[c.path]!);
    const x0 = Math.min(...kids.map((k) => k.x)) - PAD;
    const y0 = Math.min(...kids.map((k) => k.y)) - PAD - BAND;
    const x1 = Math.max(...kids.map((k) => k.x + k.width)) + PAD;
    const y1 = Math.max(...kids.map((k) => k.y + k.height)) + PAD;
    boxes[s.path] = { x: x0, y: y0, width: x1 - x0, height: y1 - y0 };
  }
  const out: ChartLayout['edges'] = edges.map((e) => {
    const le = g.edge({ v: leafOf(e.from), w: leafOf(e.to), name: e.name });
    let points = le.points.map((p) => ({ x: p.x, y: p.y }));
    const src = boxes[e.from]!;
    const dst = boxes[e.to]!;
    // From a compound's border: drop the points inside it (unless the edge stays inside).
    if (hasChildren.has(e.from) && !e.to.startsWith(`${e.from}.`)) {
      const k = points.findIndex((p) => !inside(p, src));
      if (k > 0) points = [exit(points[k - 1]!, points[k]!, src), ...points.slice(k)];
    }
    if (hasChildren.has(e.to) && !e.from.startsWith(`${e.to}.`)) {
      let k = points.length - 1;
      while (k >= 0 && inside(points[k]!, dst)) k--;
      if (k >= 0 && k < points.length - 1)
        points = [...points.slice(0, k + 1), exit(points[k + 1]!, points[k]!, dst)];
    }
    return { from: e.from, to: e.to, label: e.label, points, labelAt: { x: le.x, y: le.y } };
  });
  // Compounds near the edges grew past 0: shift everything into view.
  const all = Object.values(boxes);
  const dx = Math.max(0, 12 - Math.min(...all.map((b) => b.x)));
  const dy = Math.max(0, 12 - Math.min(...all.map((b) => b.y)));
  for (const b of all) {
    b.x += dx;
    b.y += dy;
  }
  for (const e of out) {
    for (const p of e.points) {
      p.x += dx;
      p.y += dy;
    }
    e.labelAt.x += dx;
    e.labelAt.y += dy;
  }
  const xs = [...all.map((b) => b.x + b.width), ...out.flatMap((e) => e.points.map((p) => p.x))];
  const ys = [...all.map((b) => b.y + b.height), ...out.flatMap((e) => e.points.map((p) => p.y))];
  const right = Math.max(0, ...xs, ...out.map((e) => e.labelAt.x + e.label.length * 3.1));
  const bottom = Math.max(0, ...ys, ...out.map((e) => e.labelAt.y + 8));
  return {
    width: Math.ceil(right + 12),
    height: Math.ceil(bottom + 12),
    states: boxes,
    edges: out,
  };
}
