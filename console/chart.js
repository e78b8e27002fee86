// The statechart of a workflow definition as SVG: states in columns by their distance from the
// initial state (a layered layout, left to right), transitions as curves labelled with their
// event. Classes mark the current state(s), the states and transitions the journal shows were
// taken, and a failed or parked current state. No dependencies.

const SVG = 'http://www.w3.org/2000/svg';
const W = 150;
const H = 40;
const COL = 260;
const ROW = 72;
const PAD = 24;

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs ?? {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

/** A path and every ancestor of it: `a.b.c` → `a`, `a.b`, `a.b.c`. */
export function withAncestors(paths) {
  const out = new Set();
  for (const p of paths) {
    const parts = p.split('.');
    for (let i = 1; i <= parts.length; i++) out.add(parts.slice(0, i).join('.'));
  }
  return out;
}

/** XState state value → active leaf paths (`{a: 'b'}` → `a.b`). */
export function pathsOf(value, prefix = '') {
  if (value === null || value === undefined) return [];
  if (typeof value === 'string') return [prefix + value];
  const out = [];
  for (const [k, v] of Object.entries(value)) {
    const sub = pathsOf(v, `${prefix}${k}.`);
    out.push(...(sub.length ? sub : [prefix + k]));
  }
  return out;
}

const under = (p, q) => p === q || q.startsWith(`${p}.`);

/**
 * Ranks: breadth-first from the initial state over transitions and parent → initial-child
 * links; states never reached go in a last column.
 */
function layout(chart) {
  const states = chart.states.filter((s) => s.path !== '');
  const next = new Map(states.map((s) => [s.path, []]));
  for (const s of states) if (s.initial) next.get(s.path)?.push(s.initial);
  for (const t of chart.transitions) {
    // A transition of the root (or any compound state) leaves each of its states.
    const sources = t.from === '' ? [] : [t.from];
    for (const f of sources) for (const to of t.to) if (next.has(to)) next.get(f)?.push(to);
  }
  const rank = new Map();
  const queue = [];
  if (chart.initial && next.has(chart.initial)) {
    rank.set(chart.initial, 0);
    queue.push(chart.initial);
  }
  while (queue.length) {
    const p = queue.shift();
    for (const n of next.get(p) ?? []) {
      if (!rank.has(n)) {
        rank.set(n, rank.get(p) + 1);
        queue.push(n);
      }
    }
  }
  let max = Math.max(-1, ...rank.values());
  for (const s of states) if (!rank.has(s.path)) rank.set(s.path, ++max);
  const cols = new Map();
  for (const s of states) {
    const r = rank.get(s.path);
    if (!cols.has(r)) cols.set(r, []);
    cols.get(r).push(s);
  }
  const pos = new Map();
  let rows = 0;
  for (const [r, list] of cols) {
    list.forEach((s, i) => pos.set(s.path, { x: PAD + r * COL, y: PAD + i * ROW, s }));
    rows = Math.max(rows, list.length);
  }
  return {
    pos,
    width: PAD * 2 + (Math.max(...cols.keys(), 0) + 1) * COL - (COL - W),
    height: PAD * 2 + rows * ROW + 10,
  };
}

/**
 * Draw `chart`. `mark`: { current: string[] (leaf paths), visited: string[], taken: [from, to][],
 * failed: boolean, parked: string[] (states holding a parked activity) }.
 */
export function drawChart(chart, mark) {
  const { pos, width, height } = layout(chart);
  const current = withAncestors(mark.current);
  const visited = withAncestors(mark.visited);
  const svg = el('svg', {
    viewBox: `0 0 ${Math.max(width, 200)} ${height}`,
    width: Math.max(width, 200),
    class: 'chart',
    role: 'img',
    'aria-label': `statechart of ${chart.type} version ${chart.version}; current: ${mark.current.join(', ') || 'none'}`,
  });
  const defs = el('defs');
  for (const [id, cls] of [
    ['arrow', 'arrow'],
    ['arrow-taken', 'arrow taken'],
  ]) {
    const m = el('marker', {
      id,
      viewBox: '0 0 10 10',
      refX: 9,
      refY: 5,
      markerWidth: 7,
      markerHeight: 7,
      orient: 'auto-start-reverse',
    });
    m.append(el('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: cls }));
    defs.append(m);
  }
  svg.append(defs);
  const edges = el('g', { class: 'edges' });
  const labels = el('g', { class: 'labels' });
  for (const t of chart.transitions) {
    const a = pos.get(t.from);
    if (!a) continue;
    for (const to of t.to) {
      const b = pos.get(to);
      if (!b) continue;
      const taken = mark.taken.some(([f, g]) => under(t.from, f) && under(to, g));
      let d;
      let lx;
      let ly;
      if (b.x > a.x) {
        const x1 = a.x + W;
        const y1 = a.y + H / 2;
        const x2 = b.x;
        const y2 = b.y + H / 2;
        const mx = (x1 + x2) / 2;
        d = `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`;
        lx = mx;
        ly = (y1 + y2) / 2 - 7;
      } else {
        // Back or same-column edge: loop below the boxes.
        const x1 = a.x + W / 2;
        const y1 = a.y + H;
        const x2 = b.x + W / 2 + (a === b ? 30 : 0);
        const y2 = b.y + H;
        // Farther edges dip deeper, so that their labels do not overlap.
        const dip = Math.max(y1, y2) + 26 + Math.abs(a.x - b.x) / 12;
        d = `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2}`;
        lx = (x1 + x2) / 2;
        ly = dip - 6;
      }
      edges.append(
        el('path', {
          d,
          class: `edge${taken ? ' taken' : ''}`,
          'marker-end': taken ? 'url(#arrow-taken)' : 'url(#arrow)',
        }),
      );
      labels.append(
        el(
          'text',
          { x: lx, y: ly, class: `elabel${taken ? ' taken' : ''}`, 'text-anchor': 'middle' },
          t.label + (t.guarded ? ' [guard]' : ''),
        ),
      );
    }
  }
  svg.append(edges);
  const nodes = el('g', { class: 'nodes' });
  for (const [path, { x, y, s }] of pos) {
    const cls = ['node', s.kind];
    const words = [`state ${path}`];
    if (current.has(path)) {
      cls.push('current');
      words.push('current');
      if (mark.failed) {
        cls.push('failed');
        words.push('failed');
      }
      if (mark.parked.some((p) => under(path, p))) {
        cls.push('parked');
        words.push('activity parked for review');
      }
    } else if (visited.has(path)) {
      cls.push('visited');
      words.push('visited');
    }
    const g = el('g', {
      class: cls.join(' '),
      'data-state': path,
      transform: `translate(${x} ${y})`,
    });
    const title = el(
      'title',
      {},
      words.join(', ') +
        (s.invokes.length ? `; invokes ${s.invokes.map((i) => i.src).join(', ')}` : ''),
    );
    g.append(title);
    g.append(el('rect', { width: W, height: H, rx: s.kind === 'final' ? 18 : 6 }));
    const name = path.split('.').pop();
    g.append(
      el(
        'text',
        { x: W / 2, y: s.invokes.length ? 17 : 25, 'text-anchor': 'middle', class: 'sname' },
        name.length > 20 ? `${name.slice(0, 19)}…` : name,
      ),
    );
    if (s.invokes.length)
      g.append(
        el(
          'text',
          { x: W / 2, y: 32, 'text-anchor': 'middle', class: 'sinvoke' },
          `▸ ${s.invokes.map((i) => i.id).join(', ')}`.slice(0, 26),
        ),
      );
    nodes.append(g);
  }
  svg.append(nodes, labels);
  return svg;
}
