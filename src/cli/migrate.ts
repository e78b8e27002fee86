/**
 * `jetflow migrate <type> --to <version> --dry-run`: what a migration of the workflows in flight
 * would change (src/engine/migrate.ts plans; the records are read, nothing is written). `--apply`
 * and `--revert` are not built yet.
 */
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import type { WorkflowRecord } from '../contracts/wire.js';
import { planMigration, type MigrationMap, type MigrationPlan } from '../engine/migrate.js';
import type { WorkflowDefinition } from '../engine/registry.js';
import { scanWorkflowRecords } from '../nats/journal-scan.js';
import { ExitCode, UsageError } from './exit.js';
import { importUserModule } from './modules.js';
import type { Io, ServiceOptions } from './service.js';

export interface MigrateFlags extends ServiceOptions {
  workflows?: string;
  to?: string;
  from?: string;
  map?: string;
  dryRun?: boolean;
  apply?: boolean;
  revert?: string;
}

export async function migrateVerb(
  type: string,
  defs: WorkflowDefinition[],
  o: MigrateFlags,
  io: Io,
): Promise<number> {
  if (o.apply || o.revert)
    throw new UsageError(
      'migrate --apply and --revert are not built yet: only --dry-run (it writes nothing)',
    );
  if (!o.dryRun) throw new UsageError('migrate needs --dry-run (--apply is not built yet)');
  const to = Number(o.to);
  const def = defs.find((d) => d.type === type && d.version === to);
  if (!def) throw new UsageError(`--to ${o.to}: the workflows module has no ${type}@${o.to}`);
  const from = o.from === undefined ? undefined : Number(o.from);
  const map = o.map ? ((await importUserModule(o.map, 'map')) as MigrationMap) : {};
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const plans: MigrationPlan[] = [];
  await scanWorkflowRecords(url.split(','), prefix, (rec: WorkflowRecord) => {
    if (rec.type !== type || rec.status !== 'running' || rec.version === to) return;
    if (from !== undefined && rec.version !== from) return;
    plans.push(planMigration(rec, def, map));
  });
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
