/* global process, console */
// Import time and size of each package entry (`npm run bench:entries`): for each entry, fresh
// Node processes import it from the build (through the package's own `exports`, by name) and
// report the wall time of the import (median of RUNS), the modules it loaded and their bytes on
// disk (ESM through a resolve hook, CommonJS through require.cache), and whether XState loaded.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const RUNS = Number(process.env.RUNS ?? 7);
const entries = ['jetflow', 'jetflow/client', 'jetflow/worker'];
const dir = mkdtempSync(join(tmpdir(), 'jetflow-entries-'));
const hooks = join(dir, 'hooks.mjs');
writeFileSync(
  hooks,
  `import { appendFileSync } from 'node:fs';
export async function resolve(s, c, next) {
  const r = await next(s, c);
  if (r.url.startsWith('file:')) appendFileSync(process.env.TRACE, r.url + '\\n');
  return r;
}`,
);
const preload = join(dir, 'preload.mjs');
writeFileSync(
  preload,
  `import { register } from 'node:module';\nregister(${JSON.stringify('file://' + hooks)});\n`,
);

function time(entry) {
  const script = `const t = performance.now(); await import(${JSON.stringify(entry)}); console.log(performance.now() - t);`;
  // Run from the checkout: the package resolves itself by name through its exports.
  return Number(
    execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }),
  );
}

function footprint(entry) {
  const trace = join(dir, 'trace');
  writeFileSync(trace, '');
  const script = `import { createRequire } from 'node:module'; await import(${JSON.stringify(entry)});
const req = createRequire(import.meta.url); console.log(JSON.stringify(Object.keys(req.cache)));`;
  const cjs = JSON.parse(
    execFileSync(process.execPath, ['--import', preload, '--input-type=module', '-e', script], {
      encoding: 'utf8',
      env: { ...process.env, TRACE: trace },
    }),
  );
  const files = new Set([
    ...readFileSync(trace, 'utf8')
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((u) => fileURLToPath(u)),
    ...cjs,
  ]);
  let bytes = 0;
  for (const f of files) bytes += statSync(f).size;
  const ownFiles = [...files].filter((f) => f.includes('/dist/'));
  return {
    modules: files.size,
    kib: Math.round(bytes / 102.4) / 10,
    jetflowModules: ownFiles.length,
    xstate: [...files].some((f) => f.includes('/node_modules/xstate/')),
  };
}

const rows = [];
for (const entry of entries) {
  const times = Array.from({ length: RUNS }, () => time(entry)).sort((a, b) => a - b);
  rows.push({
    entry,
    importMsMedian: Math.round(times[Math.floor(RUNS / 2)] * 10) / 10,
    ...footprint(entry),
  });
}
rmSync(dir, { recursive: true, force: true });
console.log(`node ${process.version}, ${RUNS} runs each (median), cold process per run`);
console.table(rows);
