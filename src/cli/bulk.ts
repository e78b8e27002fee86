/**
 * Bulk forms of the operator verbs: `jetflow retry --needs-review --type payment --reason … --by …`
 * creates a job on `<prefix>.admin.bulk` and follows its progress (a bar on stderr on a
 * terminal, one plain line a second otherwise); `jetflow bulk <jobId>` shows (or follows, or
 * cancels) a job later. The job runs in the visibility replicas: stopping this command does not
 * stop the job.
 */
import { Client } from '../client/index.js';
import type { BulkProgress, BulkRequest } from '../contracts/bulk.js';
import type { SearchRequest } from '../contracts/search.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import type { AdminVerb } from '../contracts/wire.js';
import { ErrorCode, JetflowError, RetryableError } from '../errors.js';
import { ExitCode, UsageError } from './exit.js';
import { lsRequest, type LsOptions } from './ls.js';
import { inline, table } from './output.js';
import { parseJsonArg, type AdminOptions, type Io } from './service.js';

/** Flags of a verb's bulk form. */
export interface BulkOptions extends AdminOptions, Omit<LsOptions, 'where'> {
  where?: string[];
  dryRun?: boolean;
  rate?: string;
}

/** True when the flags name search filters: the verb's bulk form. */
export function isBulk(o: BulkOptions): boolean {
  return (
    (o.where?.length ?? 0) > 0 ||
    [o.type, o.status, o.state, o.idPrefix, o.errorType, o.errorCode, o.inStateLongerThan].some(
      (x) => x !== undefined,
    ) ||
    o.needsReview === true
  );
}

/** The search filters of the flags: `--where` is `k=v` (an attribute) or a JSON object of filters. */
export function bulkQuery(o: BulkOptions, now: number): BulkRequest['query'] {
  const json = (o.where ?? []).filter((w) => w.trimStart().startsWith('{'));
  const attrs = (o.where ?? []).filter((w) => !w.trimStart().startsWith('{'));
  const q: SearchRequest = lsRequest(
    { ...o, where: attrs, limit: undefined, cursor: undefined },
    now,
  );
  delete q.sort; // --in-state-longer-than sorts ls; a job takes every match
  for (const text of json) {
    const v = parseJsonArg(text, '--where');
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      throw new UsageError('--where must be key=value or a JSON object of search filters');
    }
    Object.assign(q, v);
  }
  return q;
}

function intFlag(v: string, what: string, min: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${what} must be an integer ≥ ${min}`);
  return n;
}

/** Exit code of a finished job: 0 all applied, 1 canceled, 5 only retryable failures, 4 other failures. */
export function jobExitCode(p: BulkProgress, failureCodes: ReadonlySet<string>): number {
  if (p.state === 'canceled') return ExitCode.Failed;
  if (p.failed === 0) return ExitCode.Ok;
  const retryable = [...failureCodes].every(
    (c) => c === ErrorCode.Timeout || c === ErrorCode.Unavailable,
  );
  return failureCodes.size > 0 && retryable ? ExitCode.Unavailable : ExitCode.Rejected;
}

async function withClient<T>(o: BulkOptions, io: Io, run: (c: Client) => Promise<T>): Promise<T> {
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const client = await Client.connect(url, { prefix });
  try {
    return await run(client);
  } catch (err) {
    if (noResponders(err)) {
      throw new RetryableError(
        `no visibility replica is answering on ${prefix}.admin.bulk: run \`jetflow visibility --prefix ${prefix}\` (or \`jetflow dev\`)`,
        { code: ErrorCode.Unavailable, cause: err },
      );
    }
    throw err;
  } finally {
    await client.close();
  }
}

function noResponders(err: unknown): boolean {
  for (let e = err as { name?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; i++) {
    if (e.name === 'NoResponders' || e.name === 'NoRespondersError') return true;
    e = e.cause as typeof e;
  }
  return false;
}

/** `jetflow <verb> --where … --reason … --by …`: create a bulk job and follow it. */
export async function bulkVerb(verb: AdminVerb, o: BulkOptions, io: Io): Promise<number> {
  if (!o.reason) throw new UsageError(`${verb} needs --reason <text> (journaled)`);
  if (!o.by) throw new UsageError(`${verb} needs --by <who> (journaled)`);
  if (o.requestId !== undefined) {
    throw new UsageError(
      '--request-id is for one workflow; a bulk job uses bulk-<jobId>-<type>-<id> for each',
    );
  }
  const req: BulkRequest = {
    verb,
    query: bulkQuery(o, Date.now()),
    reason: o.reason,
    by: o.by,
    ...(o.dryRun ? { dryRun: true } : {}),
  };
  if (o.rate !== undefined) {
    const r = Number(o.rate);
    if (!(r > 0)) throw new UsageError(`--rate must be a number > 0 (got ${o.rate})`);
    req.ratePerSec = r;
  }
  if (o.actorId !== undefined) req.actorId = o.actorId;
  if (verb === 'retry' && o.attempts !== undefined)
    req.attempts = intFlag(o.attempts, '--attempts', 1);
  if (verb === 'resolve') {
    if (o.output === undefined) throw new UsageError('resolve needs --output <json|@file>');
    req.output = parseJsonArg(o.output, '--output');
  }
  if (verb === 'reset') {
    if (o.toStep === undefined) throw new UsageError('reset needs --to-step <n>');
    req.toStep = intFlag(o.toStep, '--to-step', 0);
  }
  return await withClient(o, io, async (c) => {
    const created = await c.bulk(req);
    if (created.dryRun) {
      if (o.json) io.out.line(JSON.stringify(created, null, 2));
      else {
        table(io.out, [
          ['job', created.jobId],
          ['verb', `${verb} (dry run: nothing changed)`],
          ['matched', String(created.matched)],
          [
            'e.g.',
            created.sample?.length
              ? created.sample.map((w) => `${w.type}/${w.id}`).join(' ')
              : undefined,
          ],
        ]);
      }
      return ExitCode.Ok;
    }
    io.err.line(
      `jetflow: bulk ${verb} job ${created.jobId}: ${created.matched} workflows matched (it runs in the visibility replicas; \`jetflow bulk ${created.jobId} --follow\` to follow it again)`,
    );
    return await follow(c, created.jobId, o, io);
  });
}

/** `jetflow bulk <jobId> [--follow | --cancel]`. */
export async function bulkJobVerb(
  jobId: string,
  o: BulkOptions & { follow?: boolean; cancel?: boolean },
  io: Io,
): Promise<number> {
  return await withClient(o, io, async (c) => {
    if (o.follow) return await follow(c, jobId, o, io);
    const p = o.cancel ? await c.bulkCancel(jobId) : await c.bulkStatus(jobId);
    print(io, p, o.json);
    return p.state === 'running'
      ? ExitCode.Ok
      : jobExitCode(p, new Set(p.failures.map((f) => f.code)));
  });
}

function print(io: Io, p: BulkProgress, json?: boolean): void {
  if (json) {
    io.out.line(JSON.stringify(p, null, 2));
    return;
  }
  table(io.out, [
    ['job', p.jobId],
    ['verb', p.dryRun ? `${p.verb} (dry run)` : p.verb],
    ['state', p.state],
    ['matched', String(p.matched)],
    ['processed', String(p.processed)],
    ['done', String(p.done)],
    ['failed', String(p.failed)],
    ['skipped', p.skipped ? `${p.skipped} (nothing parked when reached)` : '0'],
    ['rate', `${p.ratePerSec}/s`],
    ['runs', p.runs > 1 ? `${p.runs} (resumed after a runner stopped)` : String(p.runs)],
    ['failures', p.failures.length ? inline(p.failures.slice(0, 20)) : undefined],
  ]);
}

/** Follow a job to its end: a bar on a terminal, plain lines otherwise; failures as they come. */
async function follow(c: Client, jobId: string, o: BulkOptions, io: Io): Promise<number> {
  const tty = process.stderr.isTTY === true;
  const codes = new Set<string>();
  const t0 = Date.now();
  let lastLine = 0;
  let last: BulkProgress | undefined;
  let seenFailures = 0;
  for await (const p of c.followBulk(jobId)) {
    // The first one is the status (its failures are the job's first ones), then the news.
    for (const f of p.failures) {
      codes.add(f.code);
      if (seenFailures++ < 1_000) {
        if (tty) process.stderr.write('\r\x1b[K');
        io.err.line(`failed ${f.type}/${f.id}: ${f.code}: ${f.message}`);
      }
    }
    last = p;
    const rate = p.processed / Math.max(0.001, (Date.now() - t0) / 1000);
    const text = `${p.processed}/${p.matched} done ${p.done} failed ${p.failed} skipped ${p.skipped} ${rate.toFixed(0)}/s`;
    if (tty) {
      const width = 30;
      const filled = p.matched ? Math.round((p.processed / p.matched) * width) : width;
      process.stderr.write(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}`);
    } else if (p.state !== 'running' || Date.now() - lastLine >= 1_000) {
      lastLine = Date.now();
      io.err.line(`jetflow: bulk ${p.verb} ${jobId}: ${text}`);
    }
  }
  if (tty) process.stderr.write('\n');
  if (!last) throw new JetflowError(`bulk job ${jobId} not found`, { code: ErrorCode.NotFound });
  // The job's first failures (kept with the job) complete the codes seen.
  for (const f of last.failures) codes.add(f.code);
  print(io, last, o.json);
  return jobExitCode(last, codes);
}
