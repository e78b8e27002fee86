/**
 * `jetflow migrate`: move the workflows in flight to another version of their definition.
 * `--dry-run` plans (src/engine/migrate.ts) and writes nothing; `--apply` runs a migration job
 * (src/host/migrate.ts) in this process, through each workflow's inbox; `--revert <job>` moves
 * back what a job moved; `--resume <job>` goes on with a job whose runner stopped or died.
 */
import { hostname } from 'node:os';
import type { BulkProgress, MigrationJobSpec } from '../contracts/bulk.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import type { WorkflowRecord } from '../contracts/wire.js';
import { BULK_DEFAULT_RATE, BULK_MAX_RATE } from '../contracts/bulk.js';
import { planMigration, type MigrationMap, type MigrationPlan } from '../engine/migrate.js';
import type { WorkflowDefinition } from '../engine/registry.js';
import { createLogger } from '../host/logger.js';
import { MigrationRunner } from '../host/migrate.js';
import { scanWorkflowRecords } from '../nats/journal-scan.js';
import { jobExitCode } from './bulk.js';
import { ExitCode, UsageError } from './exit.js';
import { importUserModule } from './modules.js';
import { inline, table } from './output.js';
import type { Io, ServiceOptions } from './service.js';

export interface MigrateFlags extends ServiceOptions {
  workflows?: string;
  to?: string;
  from?: string;
  map?: string;
  where?: string[];
  dryRun?: boolean;
  apply?: boolean;
  revert?: string;
  resume?: string;
  reason?: string;
  by?: string;
  rate?: string;
}

function whereOf(o: MigrateFlags): Record<string, string> | undefined {
  if (!o.where?.length) return undefined;
  const out: Record<string, string> = {};
  for (const w of o.where) {
    const i = w.indexOf('=');
    if (i <= 0) throw new UsageError(`--where must be key=value (a search attribute; got ${w})`);
    out[w.slice(0, i)] = w.slice(i + 1);
  }
  return out;
}

function versionFlag(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1)
    throw new UsageError(`${flag} must be a version (integer ≥ 1)`);
  return n;
}

export async function migrateVerb(
  type: string | undefined,
  defs: WorkflowDefinition[],
  o: MigrateFlags,
  io: Io,
): Promise<number> {
  const modes = [o.dryRun, o.apply, o.revert !== undefined, o.resume !== undefined].filter(Boolean);
  if (modes.length !== 1) {
    throw new UsageError(
      'migrate needs one of --dry-run (writes nothing), --apply, --revert <job> or --resume <job>',
    );
  }
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const map = o.map ? ((await importUserModule(o.map, 'map')) as MigrationMap) : {};
  if (o.revert !== undefined || o.resume !== undefined) return await runJob(defs, map, o, io);
  if (!type)
    throw new UsageError('migrate needs the workflow type (jetflow migrate <type> --to …)');
  const to = versionFlag(o.to, '--to');
  if (to === undefined) throw new UsageError('migrate needs --to <version>');
  const def = defs.find((d) => d.type === type && d.version === to);
  if (!def) throw new UsageError(`--to ${o.to}: the workflows module has no ${type}@${o.to}`);
  const from = versionFlag(o.from, '--from');
  const where = whereOf(o);
  if (o.apply) {
    const spec: MigrationJobSpec = {
      type,
      to,
      ...(from !== undefined ? { from } : {}),
      ...(map.states ? { states: map.states } : {}),
      contextMapped: typeof map.context === 'function',
      ...(where ? { where } : {}),
    };
    return await runJob(defs, map, o, io, spec);
  }
  // A record written while the scan runs can be read twice: the last one read counts.
  const records = new Map<string, WorkflowRecord>();
  await scanWorkflowRecords(url.split(','), prefix, (rec: WorkflowRecord) => {
    if (rec.type === type) records.set(rec.id, rec);
  });
  const plans: MigrationPlan[] = [];
  for (const rec of records.values()) {
    if (rec.status !== 'running' || rec.version === to) continue;
    if (from !== undefined && rec.version !== from) continue;
    if (where && !Object.entries(where).every(([k, v]) => String(rec.attributes?.[k]) === v))
      continue;
    plans.push(planMigration(rec, def, map));
  }
  const blocked = plans.filter((p) => p.problems.length > 0);
  const summary = {
    workflows: plans.length,
    migratable: plans.length - blocked.length,
    blocked: blocked.length,
    renamed: plans.filter((p) => p.paths.before.join() !== p.paths.after.join()).length,
    contextChanged: plans.filter((p) => p.contextChanged).length,
  };
  if (o.json) {
    io.out.line(
      JSON.stringify(
        { summary, workflows: plans.map(({ snapshot: _s, ...rest }) => rest) },
        null,
        2,
      ),
    );
  } else {
    for (const p of plans) {
      const moves = `${p.paths.before.join(',')} → ${p.paths.after.join(',')}${p.contextChanged ? ', context changed' : ''}`;
      io.out.line(
        p.problems.length > 0
          ? `${io.out.paint('red', 'blocked')}  ${p.type}/${p.id} v${p.from} → v${p.to}: ${p.problems.join('; ')}`
          : `ok       ${p.type}/${p.id} v${p.from} → v${p.to}: ${moves}`,
      );
    }
    io.out.line(
      `dry run (nothing written): ${summary.workflows} workflows in flight, ${summary.migratable} migratable (${summary.renamed} with renamed states, ${summary.contextChanged} with a new context), ${summary.blocked} blocked`,
    );
  }
  return blocked.length > 0 ? ExitCode.Failed : ExitCode.Ok;
}

/** `--apply` (with `spec`), `--revert <job>` or `--resume <job>`: run the job here to its end. */
async function runJob(
  defs: WorkflowDefinition[],
  map: MigrationMap,
  o: MigrateFlags,
  io: Io,
  spec?: MigrationJobSpec,
): Promise<number> {
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  if (o.resume === undefined) {
    if (!o.reason) throw new UsageError('migrate needs --reason <text> (journaled)');
    if (!o.by) throw new UsageError('migrate needs --by <who> (journaled)');
  }
  let ratePerSec = BULK_DEFAULT_RATE;
  if (o.rate !== undefined) {
    ratePerSec = Number(o.rate);
    if (!(ratePerSec > 0 && ratePerSec <= BULK_MAX_RATE))
      throw new UsageError(`--rate must be a number in (0, ${BULK_MAX_RATE}] (got ${o.rate})`);
  }
  const tty = process.stderr.isTTY === true;
  const t0 = Date.now();
  let lastLine = 0;
  let startProcessed = 0;
  const show = (p: BulkProgress) => {
    const rate = (p.processed - startProcessed) / Math.max(0.001, (Date.now() - t0) / 1000);
    const text = `${p.processed}/${p.matched} done ${p.done} failed ${p.failed} skipped ${p.skipped} ${rate.toFixed(0)}/s`;
    if (tty) {
      const width = 30;
      const filled = p.matched ? Math.round((p.processed / p.matched) * width) : width;
      process.stderr.write(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}`);
    } else if (p.state !== 'running' || Date.now() - lastLine >= 1_000) {
      lastLine = Date.now();
      io.err.line(`jetflow: migrate ${p.jobId}: ${text}`);
    }
  };
  let failuresShown = 0;
  const { runner, close } = await MigrationRunner.connect(url.split(','), prefix, {
    logger: createLogger('migrate', io.env.JETFLOW_LOG_LEVEL || 'warn'),
    owner: `migrate-${hostname()}-${process.pid}`,
    defs,
    map,
    onProgress: (p, fresh) => {
      for (const f of fresh) {
        if (failuresShown++ >= 1_000) break;
        if (tty) process.stderr.write('\r\x1b[K');
        io.err.line(`failed ${f.type}/${f.id}: ${f.code}: ${f.message}`);
      }
      show(p);
    },
  });
  const onSignal = () => runner.stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const who = { reason: o.reason ?? '', by: o.by ?? '', ratePerSec };
    const held = spec
      ? await runner.create(spec, who)
      : o.revert !== undefined
        ? await runner.createRevert(o.revert, who)
        : await runner.claim(o.resume!);
    const { job } = held;
    startProcessed = job.counters.processed;
    const what = job.request.migration!.revertOf
      ? `revert of ${job.request.migration!.revertOf}`
      : `${job.request.migration!.type} → v${job.request.migration!.to}`;
    io.err.line(
      `jetflow: migration job ${job.jobId} (${what}): ${job.counters.matched} workflows${job.runs > 1 ? `, resumed at ${job.counters.processed}` : ''}`,
    );
    const p = await runner.run(job, held.revision);
    if (tty) process.stderr.write('\n');
    if (o.json) io.out.line(JSON.stringify({ ...p, ...runner.stats }, null, 2));
    else {
      table(io.out, [
        ['job', p.jobId],
        ['state', p.state],
        ['matched', String(p.matched)],
        ['processed', String(p.processed)],
        ['done', String(p.done)],
        ['failed', String(p.failed)],
        ['skipped', p.skipped ? `${p.skipped} (finished, or not to move)` : '0'],
        ['replanned', String(runner.stats.replanned)],
        ['runs', String(p.runs)],
        ['failures', p.failures.length ? inline(p.failures.slice(0, 20)) : undefined],
      ]);
    }
    if (p.state === 'running') {
      io.err.line(
        `jetflow: stopped at ${p.processed}/${p.matched}: \`jetflow migrate --resume ${p.jobId}\` (same --workflows and --map) goes on from there`,
      );
      return ExitCode.Failed;
    }
    if (p.state === 'completed' && !job.request.migration!.revertOf) {
      io.err.line(`jetflow: to move them back: jetflow migrate --revert ${p.jobId}`);
    }
    return jobExitCode(p, new Set(p.failures.map((f) => f.code)));
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await close();
  }
}
