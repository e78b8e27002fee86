/**
 * `jetflow batch create|status|items|seal|retry-failed|cancel|pause|resume` (issue 23): parse,
 * call `client.batches`, print. `create --items file.ndjson` streams the file (one JSON item a
 * line, `-` for stdin) with a progress bar on a terminal (plain lines otherwise); run it again
 * with the same `--id` after a crash and it resumes where the batch says it stopped.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { Client } from '../client/index.js';
import type {
  BatchCallback,
  BatchItemStatus,
  BatchPolicy,
  BatchStatus,
} from '../contracts/batch.js';
import { BATCH_ITEM_STATUSES } from '../contracts/batch.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import { ErrorCode, RetryableError } from '../errors.js';
import { ExitCode, UsageError } from './exit.js';
import { inline, table } from './output.js';
import { parseJsonArg, type Io, type ServiceOptions } from './service.js';

export interface BatchCreateFlags extends ServiceOptions {
  id?: string;
  type?: string;
  items?: string;
  keyField?: string;
  onCompleteSignal?: string;
  onCompleteStart?: string;
  policy?: string;
  cancelRest?: boolean;
  seal?: boolean;
  watch?: boolean;
  chunkSize?: string;
}

export interface BatchVerbFlags extends ServiceOptions {
  watch?: boolean;
  status?: string;
  cursor?: string;
  limit?: string;
  reason?: string;
  by?: string;
}

async function withClient<T>(
  o: ServiceOptions,
  io: Io,
  run: (c: Client) => Promise<T>,
): Promise<T> {
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const client = await Client.connect(url, { prefix });
  try {
    return await run(client);
  } catch (err) {
    if ((err as { cause?: { name?: string } })?.cause?.name === 'NoResponders') {
      throw new RetryableError(
        `no engine is answering on ${prefix}.admin.batch.*: run \`jetflow engine --prefix ${prefix}\` (or \`jetflow dev\`)`,
        { code: ErrorCode.Unavailable, cause: err },
      );
    }
    throw err;
  } finally {
    await client.close();
  }
}

/** `--policy complete-with-errors | all-must-succeed | fail-if-more-than:0.01 | <json>`. */
export function parsePolicyFlag(v: string | undefined): BatchPolicy | undefined {
  if (v === undefined) return undefined;
  if (v === 'complete-with-errors' || v === 'all-must-succeed') return v;
  const m = /^fail-if-more-than:(.+)$/.exec(v);
  if (m) {
    const x = Number(m[1]);
    if (Number.isFinite(x) && x >= 0 && x < 1) return { failIfMoreThan: x };
  }
  if (v.trimStart().startsWith('{')) return parseJsonArg(v, '--policy') as BatchPolicy;
  throw new UsageError(
    `--policy must be complete-with-errors, all-must-succeed or fail-if-more-than:<0..1> (got ${v})`,
  );
}

/** `--on-complete-signal type/id[/EVENT]` or `--on-complete-start type[/id]`. */
export function parseCallbackFlags(
  signal: string | undefined,
  start: string | undefined,
): BatchCallback | undefined {
  if (signal && start)
    throw new UsageError('give --on-complete-signal or --on-complete-start, not both');
  if (signal) {
    const [type, id, event] = signal.split('/');
    if (!type || !id) throw new UsageError('--on-complete-signal needs type/id[/EVENT]');
    return { signal: { type, id, ...(event ? { event } : {}) } };
  }
  if (start) {
    const [type, id] = start.split('/');
    if (!type) throw new UsageError('--on-complete-start needs type[/id]');
    return { start: { type, ...(id ? { id } : {}) } };
  }
  return undefined;
}

async function* ndjson(path: string): AsyncGenerator<unknown> {
  const input = path === '-' ? process.stdin : createReadStream(path);
  const lines = createInterface({ input, crlfDelay: Infinity });
  let n = 0;
  for await (const line of lines) {
    n++;
    if (line.trim() === '') continue;
    try {
      yield JSON.parse(line);
    } catch {
      throw new UsageError(`${path}:${n}: not a JSON line`);
    }
  }
}

function progressText(s: BatchStatus, submitted: number): string {
  const c = s.counts;
  const eta = s.etaMs !== undefined ? ` eta ${Math.round(s.etaMs / 1000)}s` : '';
  return `submitted ${submitted} running ${c.running} succeeded ${c.succeeded} failed ${c.failed}${c.canceled ? ` canceled ${c.canceled}` : ''} ${s.rate ?? 0}/s${eta}`;
}

function progressLine(io: Io, s: BatchStatus, submitted: number, total?: number): void {
  const text = progressText(s, submitted);
  if (process.stderr.isTTY) {
    const width = 30;
    const base = total ?? Math.max(s.counts.total, 1);
    const done = s.counts.succeeded + s.counts.failed + s.counts.canceled;
    const filled = Math.min(width, Math.round((done / Math.max(1, base)) * width));
    process.stderr.write(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${text}`);
  } else io.err.line(`jetflow: batch ${s.id}: ${text}`);
}

function print(io: Io, s: BatchStatus, json?: boolean): void {
  if (json) {
    io.out.line(JSON.stringify(s, null, 2));
    return;
  }
  const c = s.counts;
  table(io.out, [
    ['batch', s.id],
    ['type', s.type],
    ['policy', inline(s.policy)],
    [
      'state',
      `${s.state}${s.outcome ? ` (${s.outcome})` : ''}${s.sealed ? '' : ', not sealed'}${s.paused ? ', paused' : ''}${s.canceled ? ', canceled' : ''}`,
    ],
    ['generation', String(s.generation)],
    ['items', String(c.total)],
    ['pending', c.pending ? String(c.pending) : undefined],
    ['running', String(c.running)],
    ['succeeded', String(c.succeeded)],
    ['failed', String(c.failed)],
    ['canceled', c.canceled ? String(c.canceled) : undefined],
    ['duplicates', s.duplicates ? String(s.duplicates) : undefined],
    ['rejected', s.rejected ? String(s.rejected) : undefined],
    ['rate', s.rate !== undefined ? `${s.rate}/s` : undefined],
    ['eta', s.etaMs !== undefined ? `${Math.round(s.etaMs / 1000)}s` : undefined],
    ['callback', s.state === 'done' ? (s.notified ? 'sent' : 'owed') : undefined],
    ['changed', s.changed ? inline(s.changed) : undefined],
    ...(s.jobs ?? []).map((j): [string, string] => [
      `${j.verb} job`,
      `${j.jobId} ${j.state} ${j.processed}/${j.matched} (${j.done} done)`,
    ]),
  ]);
}

const exitOf = (s: BatchStatus) =>
  s.state === 'done' && s.outcome === 'failed' ? ExitCode.Failed : ExitCode.Ok;

async function watch(c: Client, id: string, io: Io): Promise<BatchStatus> {
  for (;;) {
    const s = await c.batches.status(id);
    progressLine(io, s, s.counts.total);
    if (s.state === 'done' && s.notified && s.counts.running + s.counts.pending === 0) {
      if (process.stderr.isTTY) process.stderr.write('\n');
      return s;
    }
    await new Promise((r) => setTimeout(r, 1_000));
  }
}

/** `jetflow batch create`. */
export async function batchCreateVerb(o: BatchCreateFlags, io: Io): Promise<number> {
  if (!o.type) throw new UsageError('batch create needs --type <workflow type>');
  const id = o.id ?? `b-${Date.now().toString(36)}`;
  const policy = parsePolicyFlag(o.policy);
  const onComplete = parseCallbackFlags(o.onCompleteSignal, o.onCompleteStart);
  const chunkSize = o.chunkSize !== undefined ? Number(o.chunkSize) : undefined;
  if (chunkSize !== undefined && !(Number.isInteger(chunkSize) && chunkSize > 0)) {
    throw new UsageError('--chunk-size must be an integer > 0');
  }
  const field = o.keyField;
  return await withClient(o, io, async (c) => {
    let lastLine = 0;
    const res = await c.batches.create(
      {
        id,
        type: o.type!,
        ...(o.items ? { items: ndjson(o.items) } : {}),
        ...(field
          ? {
              itemKey: (x: unknown, i: number) => {
                const k = (x as Record<string, unknown> | null)?.[field];
                if (typeof k === 'string') return k;
                return typeof k === 'number' ? String(k) : String(i);
              },
            }
          : {}),
        ...(policy !== undefined ? { policy } : {}),
        ...(onComplete ? { onComplete } : {}),
        ...(o.cancelRest ? { cancelRest: true } : {}),
      },
      {
        seal: o.seal !== false,
        ...(chunkSize ? { chunkSize } : {}),
        onProgress: (p) => {
          if (Date.now() - lastLine < (process.stderr.isTTY ? 200 : 1_000)) return;
          lastLine = Date.now();
          void c.batches.status(id).then(
            (s) => progressLine(io, s, p.next),
            () => undefined,
          );
        },
      },
    );
    if (process.stderr.isTTY) process.stderr.write('\r\x1b[K');
    if (res.resumedFrom > 0)
      io.err.line(`jetflow: batch ${id}: resumed at item ${res.resumedFrom}`);
    for (const d of res.duplicateItems.slice(0, 20)) {
      io.err.line(
        `duplicate key ${d.key} at item ${d.index} (first at ${d.firstIndex}): not added`,
      );
    }
    for (const r of res.rejectedItems.slice(0, 20)) {
      io.err.line(`rejected item ${r.index} (${r.key}): ${r.error.code}: ${r.error.message}`);
    }
    const s = o.watch ? await watch(c, id, io) : res.status;
    if (o.json) {
      io.out.line(
        JSON.stringify(
          {
            ...s,
            submitted: {
              accepted: res.accepted,
              duplicates: res.duplicates,
              rejected: res.rejected,
              resumedFrom: res.resumedFrom,
              duplicateItems: res.duplicateItems,
              rejectedItems: res.rejectedItems,
            },
          },
          null,
          2,
        ),
      );
    } else print(io, s);
    return o.watch ? exitOf(s) : ExitCode.Ok;
  });
}

/** `jetflow batch <verb> <id>` for status, items, seal, retry-failed, cancel, pause, resume. */
export async function batchVerb(
  verb: 'status' | 'items' | 'seal' | 'retry-failed' | 'cancel' | 'pause' | 'resume',
  id: string,
  o: BatchVerbFlags,
  io: Io,
): Promise<number> {
  return await withClient(o, io, async (c) => {
    const who = { ...(o.by ? { by: o.by } : {}), ...(o.reason ? { reason: o.reason } : {}) };
    if (verb === 'items') {
      if (o.status !== undefined && !BATCH_ITEM_STATUSES.includes(o.status as BatchItemStatus)) {
        throw new UsageError(`--status must be one of ${BATCH_ITEM_STATUSES.join(', ')}`);
      }
      const page = await c.batches.items(id, {
        ...(o.status ? { status: o.status as BatchItemStatus } : {}),
        ...(o.cursor ? { cursor: Number(o.cursor) } : {}),
        ...(o.limit ? { limit: Number(o.limit) } : {}),
      });
      if (o.json) io.out.line(JSON.stringify(page, null, 2));
      else {
        for (const it of page.items) {
          const err = it.error ? `  ${it.error.code}: ${it.error.message}` : '';
          io.out.line(`${it.key}\t${it.status}\t${it.wf}\tattempts ${it.attempts}${err}`);
        }
        if (page.cursor !== undefined) io.err.line(`more: --cursor ${page.cursor}`);
      }
      return ExitCode.Ok;
    }
    let s: BatchStatus;
    switch (verb) {
      case 'status':
        s = o.watch ? await watch(c, id, io) : await c.batches.status(id);
        break;
      case 'seal':
        s = await c.batches.seal(id);
        break;
      case 'retry-failed':
        s = await c.batches.retryFailed(id, who);
        break;
      case 'cancel':
        s = await c.batches.cancel(id, who);
        break;
      case 'pause':
        s = await c.batches.pause(id, who);
        break;
      case 'resume':
        s = await c.batches.resume(id, who);
        break;
    }
    print(io, s, o.json);
    return verb === 'status' && o.watch ? exitOf(s) : ExitCode.Ok;
  });
}
