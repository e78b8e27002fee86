/**
 * `jetflow verify`: re-run the journaled steps of selected workflows with a new definition and
 * report where it diverges (src/engine/verify.ts decides; src/nats/journal-scan.ts reads). This
 * file parses flags and prints. Nothing is published, no activity runs, no engine is needed.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Client } from '../client/index.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import type { JournalEntry } from '../contracts/wire.js';
import type { WorkflowDefinition } from '../engine/registry.js';
import { recordedTestSource, recordingOf, rerunRecordedStep } from '../engine/recording.js';
import { ErrorCode, JetflowError } from '../errors.js';
import {
  parseAllow,
  Verifier,
  type VerifySummary,
  type WorkflowVerdict,
} from '../engine/verify.js';
import { scanJournal, type JournalSelection } from '../nats/journal-scan.js';
import { ExitCode, UsageError } from './exit.js';
import { parseWhere } from './ls.js';
import type { Io, ServiceOptions } from './service.js';

export interface VerifyFlags extends ServiceOptions {
  workflows?: string;
  type?: string;
  version?: string;
  since?: string;
  ids?: string;
  where?: string[];
  sample?: string;
  allow?: string;
}

/** `7d`, `12h`, `30m`, `45s`, `500ms`. */
export function parseAge(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) throw new UsageError(`${what} must be a duration like 7d, 12h or 30m (got ${text})`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2]!]!;
  return Math.round(Number(m[1]) * unit);
}

function positiveInt(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1)
    throw new UsageError(`${what} must be a positive integer (got ${text})`);
  return n;
}

/** The ids `--where` selects, from the visibility index (every page). */
async function idsWhere(o: VerifyFlags, io: Io, where: string[]): Promise<string[]> {
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const client = await Client.connect(url, { prefix });
  try {
    const ids: string[] = [];
    let cursor: string | undefined;
    do {
      const r = await client.search({
        type: o.type!,
        attributes: Object.fromEntries(where.map(parseWhere)),
        limit: 1000,
        ...(cursor ? { cursor } : {}),
      });
      for (const w of r.workflows) ids.push(w.id);
      cursor = r.cursor ?? undefined;
    } while (cursor);
    return ids;
  } finally {
    await client.close();
  }
}

export async function verifyVerb(
  defs: WorkflowDefinition[],
  o: VerifyFlags,
  io: Io,
): Promise<number> {
  let allow;
  try {
    allow = parseAllow(o.allow);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const types = [...new Set(defs.map((d) => d.type))];
  if (o.type && !types.includes(o.type))
    throw new UsageError(`--type ${o.type}: the workflows module has no definition of it`);
  const type = o.type ?? (types.length === 1 ? types[0] : undefined);
  const selectors = [o.since, o.ids, o.where?.length ? 'where' : undefined].filter(Boolean);
  if (selectors.length > 1) throw new UsageError('use one of --since, --ids, --where');
  if ((o.ids || o.where?.length) && !type)
    throw new UsageError('--ids and --where need --type (the module has several types)');
  const version = o.version === undefined ? undefined : positiveInt(o.version, '--version');
  const sample = o.sample === undefined ? undefined : positiveInt(o.sample, '--sample');
  const sel: JournalSelection = {
    ...(type ? { type } : {}),
    ...(o.ids ? { ids: o.ids.split(',').filter(Boolean) } : {}),
    ...(o.where?.length ? { ids: await idsWhere({ ...o, type }, io, o.where) } : {}),
    ...(o.since ? { sinceMs: Date.now() - parseAge(o.since, '--since') } : {}),
  };
  const verifier = new Verifier(defs, { allow });
  const chosen = new Set<string>();
  let busyMs = 0;
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const started = performance.now();
  await scanJournal(url.split(','), prefix, sel, (e: JournalEntry) => {
    if (!types.includes(e.workflowType)) return;
    if (version !== undefined && e.version !== version) return;
    const key = `${e.workflowType}.${e.id}`;
    if (!chosen.has(key)) {
      if (sample !== undefined && chosen.size >= sample) return;
      chosen.add(key);
    }
    const t = performance.now();
    verifier.add(e);
    busyMs += performance.now() - t;
  });
  const totalMs = performance.now() - started;
  const summary = verifier.summary();
  const results = verifier.results();
  const rate = busyMs > 0 ? Math.round(summary.steps / (busyMs / 1000)) : 0;
  if (o.json) {
    io.out.line(
      JSON.stringify(
        {
          summary,
          stepsPerSecond: rate,
          elapsedMs: Math.round(totalMs),
          workflows: results.filter((v) => v.first),
        },
        null,
        2,
      ),
    );
  } else {
    printVerdicts(io, results, summary);
    io.out.line(
      io.out.paint(
        'dim',
        `re-ran ${summary.steps} steps in ${Math.round(busyMs)} ms (${rate} steps/s); ${Math.round(totalMs)} ms with reading the journal`,
      ),
    );
  }
  return summary.divergedSteps > 0 ? ExitCode.Failed : ExitCode.Ok;
}

function printVerdicts(io: Io, results: WorkflowVerdict[], s: VerifySummary): void {
  for (const v of results) {
    const d = v.first;
    if (!d) continue;
    io.out.line(
      `${io.out.paint('red', 'diverged')}  ${v.type}/${v.id} v${v.version}  step ${d.step} (${d.event}): ${d.kinds.join(', ')}${v.divergedSteps > 1 ? `  [${v.divergedSteps} steps diverge]` : ''}`,
    );
    for (const l of d.diff) io.out.line(`    ${l}`);
  }
  const kinds = Object.entries(s.diverged)
    .map(([k, n]) => `${k} ${n}`)
    .join(', ');
  const skipped = Object.entries(s.skipped)
    .map(([k, n]) => `${n} ${k}`)
    .join('; ');
  io.out.line(
    `${s.workflows} workflows, ${s.steps} steps: ${s.identical} identical, ${s.divergedSteps} diverged${kinds ? ` (${kinds})` : ''} in ${s.divergedWorkflows} workflows${skipped ? `; skipped: ${skipped}` : ''}`,
  );
  io.out.line(
    s.divergedSteps === 0
      ? io.out.paint('green', 'verify: no divergence')
      : io.out.paint('red', 'verify: divergences found'),
  );
}

export interface TestGenFlags extends ServiceOptions {
  workflows?: string;
  out?: string;
  helperImport?: string;
}

/**
 * `jetflow test-gen <type> <id>`: write `<out>/<type>-<id>.test.ts` from the workflow's journal;
 * each step is checked against the definitions of `workflowsPath` as they are now (a step they
 * do not reproduce is reported, and the exit code is 1).
 */
export async function testGenVerb(
  type: string,
  id: string,
  defs: WorkflowDefinition[],
  workflowsPath: string,
  o: TestGenFlags,
  io: Io,
): Promise<number> {
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const entries: JournalEntry[] = [];
  await scanJournal(url.split(','), prefix, { type, ids: [id] }, (e) => entries.push(e));
  if (!entries.some((e) => e.kind === 'step'))
    throw new JetflowError(`no journal entries for ${type}/${id} under prefix ${prefix}`, {
      code: ErrorCode.NotFound,
      workflowType: type,
      workflowId: id,
    });
  const recording = recordingOf(entries);
  const skipped = new Map<number, string>();
  const failing: string[] = [];
  for (const s of recording.steps) {
    const r = rerunRecordedStep(defs, recording, s.step);
    if (r.kind === 'skipped') skipped.set(s.step, r.reason);
    if (r.kind === 'diverged')
      failing.push(`step ${s.step} (${s.event.type}): ${r.divergence.kinds.join(', ')}`);
  }
  const outDir = resolve(o.out ?? 'test/recorded');
  mkdirSync(outDir, { recursive: true });
  const file = join(outDir, `${type}-${id}.test.ts`);
  let spec = relative(outDir, resolve(workflowsPath)).split(sep).join('/');
  if (!spec.startsWith('.')) spec = `./${spec}`;
  writeFileSync(
    file,
    recordedTestSource(recording, {
      workflowsImport: spec,
      ...(o.helperImport ? { helperImport: o.helperImport } : {}),
      skipped,
      header: `Generated by \`jetflow test-gen ${type} ${id}\` from its journal (prefix ${prefix}, ${recording.steps.length} steps, version ${recording.version}).`,
    }),
  );
  const summary = {
    file,
    steps: recording.steps.length,
    skipped: Object.fromEntries(skipped),
    failing,
  };
  if (o.json) io.out.line(JSON.stringify(summary, null, 2));
  else {
    io.out.line(
      `wrote ${relative(process.cwd(), file)}: ${recording.steps.length} steps of ${type}/${id}${skipped.size ? `, ${skipped.size} not re-runnable (skipped)` : ''}`,
    );
    for (const f of failing)
      io.err.line(`the definition in ${workflowsPath} does not reproduce ${f}`);
  }
  return failing.length > 0 ? ExitCode.Failed : ExitCode.Ok;
}
