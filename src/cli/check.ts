/**
 * `jetflow check`: the static check of definitions (src/engine/check.ts decides), with
 * `--against-live` the states workflows in flight are in now (visibility counts) that the new
 * definitions no longer have. Parses and prints; exit 1 when there is an error.
 */
import { Client } from '../client/index.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import { checkAgainstLive, checkDefinitions, type CheckFinding } from '../engine/check.js';
import type { WorkflowDefinition } from '../engine/registry.js';
import { ExitCode } from './exit.js';
import type { Io, ServiceOptions } from './service.js';

export interface CheckFlags extends ServiceOptions {
  workflows?: string;
  againstLive?: boolean;
}

/** The latest definition of each type. */
function latest(defs: readonly WorkflowDefinition[]): WorkflowDefinition[] {
  const by = new Map<string, WorkflowDefinition>();
  for (const d of defs) if ((by.get(d.type)?.version ?? 0) < d.version) by.set(d.type, d);
  return [...by.values()];
}

export async function checkVerb(
  defs: WorkflowDefinition[],
  o: CheckFlags,
  io: Io,
): Promise<number> {
  const findings: CheckFinding[] = checkDefinitions(defs);
  if (o.againstLive) {
    const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
    const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
    const client = await Client.connect(url, { prefix });
    try {
      for (const def of latest(defs)) {
        const counts = await client.searchCounts({ type: def.type });
        findings.push(
          ...checkAgainstLive(
            def,
            counts.byState.filter((r) => r.type === def.type && r.status === 'running'),
          ),
        );
      }
    } finally {
      await client.close();
    }
  }
  const errors = findings.filter((f) => f.severity === 'error').length;
  const warnings = findings.length - errors;
  if (o.json) {
    io.out.line(JSON.stringify({ findings, errors, warnings }, null, 2));
  } else {
    for (const f of findings)
      io.out.line(
        `${f.severity === 'error' ? io.out.paint('red', 'error  ') : io.out.paint('yellow', 'warning')}  ${f.type}@${f.version}  ${f.message}  ${io.out.paint('dim', `(${f.code})`)}`,
      );
    io.out.line(
      `${defs.length} definition${defs.length === 1 ? '' : 's'}: ${errors} error${errors === 1 ? '' : 's'}, ${warnings} warning${warnings === 1 ? '' : 's'}`,
    );
  }
  return errors > 0 ? ExitCode.Failed : ExitCode.Ok;
}
