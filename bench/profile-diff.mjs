/* global process, console */
// Compare two V8 CPU profiles per workflow (`node bench/profile-diff.mjs A_DIR A_COUNT B_DIR
// B_COUNT [self|incl] [ROWS]`): each directory holds one engine's `--cpu-prof` output (the main
// thread's profile is the first by name), each count the workflows that engine ran. Prints µs per
// workflow of each function in A and B and the difference, largest first, and the busy (non-idle)
// µs per workflow of each. `npm run bench:journal -- --profile DIR` writes such pairs, taken under
// the same conditions (both modes at once).
import { readFileSync, readdirSync } from 'node:fs';

function load(dir) {
  const file = readdirSync(dir)
    .filter((x) => x.endsWith('.cpuprofile'))
    .sort()[0];
  if (!file) throw new Error(`no .cpuprofile in ${dir}`);
  const p = JSON.parse(readFileSync(`${dir}/${file}`, 'utf8'));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const total = (p.endTime - p.startTime) / 1000;
  const interval = total / p.samples.length;
  const counts = new Map();
  for (const s of p.samples) counts.set(s, (counts.get(s) ?? 0) + 1);
  const key = (n) =>
    `${n.callFrame.functionName} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber}`;
  const self = new Map();
  const incl = new Map();
  for (const [id, c] of counts) {
    const k = key(byId.get(id));
    self.set(k, (self.get(k) ?? 0) + c * interval);
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const kk = key(byId.get(cur));
      if (seen.has(kk)) continue;
      seen.add(kk);
      incl.set(kk, (incl.get(kk) ?? 0) + c * interval);
    }
  }
  return { self, incl, total };
}

const [aDir, aCount, bDir, bCount, mode = 'self', rows = '40'] = process.argv.slice(2);
if (!aDir || !aCount || !bDir || !bCount) {
  console.error(
    'usage: node bench/profile-diff.mjs A_DIR A_COUNT B_DIR B_COUNT [self|incl] [ROWS]',
  );
  process.exit(2);
}
const a = load(aDir);
const b = load(bDir);
const m = mode === 'incl' ? 'incl' : 'self';
const perWf = (ms, n) => (1000 * ms) / Number(n);
const out = [...new Set([...a[m].keys(), ...b[m].keys()])]
  .map((k) => {
    const x = perWf(a[m].get(k) ?? 0, aCount);
    const y = perWf(b[m].get(k) ?? 0, bCount);
    return [k, x, y, y - x];
  })
  .sort((p, q) => Math.abs(q[3]) - Math.abs(p[3]));
console.log(`µs per workflow (${m}):      A       B    B-A`);
for (const [k, x, y, d] of out.slice(0, Number(rows))) {
  console.log(
    `${x.toFixed(1).padStart(8)}${y.toFixed(1).padStart(8)}${d.toFixed(1).padStart(7)}  ${k}`,
  );
}
const busy = (p, n) => perWf(p.total - (p.self.get('(idle) :-1') ?? 0), n);
console.log(
  `busy µs per workflow: A ${busy(a, aCount).toFixed(0)}, B ${busy(b, bCount).toFixed(0)}`,
);
