// The statechart of a workflow definition as SVG, drawn where the console server's layout put it
// (dagre's layered layout, left to right: src/engine/chart.ts): compound states as boxes around
// their children, transitions as curves labelled with their event. Classes mark the current
// state(s), the states and transitions the journal shows were taken, and a failed or parked
// current state.

const SVG = 'http://www.w3.org/2000/svg';

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
 * Draw `chart`. `mark`: { current: string[] (leaf paths), visited: string[], taken: [from, to][],
 * failed: boolean, parked: string[] (states holding a parked activity) }.
 */
export function drawChart(chart, mark) {
  const { layout } = chart;
  const { width, height } = layout;
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
  for (const e of layout.edges) {
    const taken = mark.taken.some(([f, g]) => under(e.from, f) && under(e.to, g));
    edges.append(
      el('path', {
        d: curve(e.points),
        class: `edge${taken ? ' taken' : ''}`,
        'data-from': e.from,
        'data-to': e.to,
        'marker-end': taken ? 'url(#arrow-taken)' : 'url(#arrow)',
      }),
    );
    labels.append(
      el(
        'text',
        {
          x: e.labelAt.x,
          y: e.labelAt.y + 4,
          class: `elabel${taken ? ' taken' : ''}`,
          'text-anchor': 'middle',
        },
        e.label,
      ),
    );
  }
  const nodes = el('g', { class: 'nodes' });
  // Parents first, so that their children are drawn on top of them.
  const states = chart.states
    .filter((s) => s.path !== '' && layout.states[s.path])
    .sort((a, b) => a.path.split('.').length - b.path.split('.').length);
  const parents = new Set(states.map((s) => s.parent).filter(Boolean));
  for (const s of states) {
    const { path } = s;
    const { x, y, width: w, height: hh } = layout.states[path];
    const group = parents.has(path);
    const cls = ['node', s.kind];
    if (group) cls.push('group');
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
    g.append(
      el(
        'title',
        {},
        words.join(', ') +
          (s.invokes.length ? `; invokes ${s.invokes.map((i) => i.src).join(', ')}` : ''),
      ),
    );
    g.append(el('rect', { width: w, height: hh, rx: s.kind === 'final' ? 18 : 6 }));
    const name = path.split('.').pop();
    const short = name.length > 20 ? `${name.slice(0, 19)}…` : name;
    if (group) {
      // A compound (or parallel) state: its name in the band above its children.
      g.append(
        el('text', { x: 8, y: 16, class: 'sname' }, s.kind === 'parallel' ? `${short} ∥` : short),
      );
    } else {
      g.append(
        el(
          'text',
          { x: w / 2, y: s.invokes.length ? 17 : 25, 'text-anchor': 'middle', class: 'sname' },
          short,
        ),
      );
      if (s.invokes.length)
        g.append(
          el(
            'text',
            { x: w / 2, y: 32, 'text-anchor': 'middle', class: 'sinvoke' },
            `▸ ${s.invokes.map((i) => i.id).join(', ')}`.slice(0, 26),
          ),
        );
    }
    nodes.append(g);
  }
  svg.append(nodes, edges, labels);
  return svg;
}

/** A smooth path through dagre's points (quadratic curves through the segments' midpoints). */
function curve(points) {
  if (points.length === 0) return '';
  let d = `M ${points[0].x} ${points[0].y}`;
  if (points.length === 2) return `${d} L ${points[1].x} ${points[1].y}`;
  for (let i = 1; i < points.length - 1; i++) {
    const p = points[i];
    const n = points[i + 1];
    const mx = i === points.length - 2 ? n.x : (p.x + n.x) / 2;
    const my = i === points.length - 2 ? n.y : (p.y + n.y) / 2;
    d += ` Q ${p.x} ${p.y} ${mx} ${my}`;
  }
  return d;
}
