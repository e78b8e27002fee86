/**
 * The service verbs: `start`, `signal`, `query`, `cancel`, `result`, `watch`. Each is one call of
 * the TypeScript client over the public subjects; the CLI only parses and prints. Human output by
 * default, `--json` for scripts (one JSON document; `watch`: one per line).
 */
import { readFileSync } from 'node:fs';
import { Client, WorkflowFailedError } from '../client/index.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import type { AdminRequest, AdminVerb, JournalEntry, QueryReply } from '../contracts/wire.js';
import { ErrorCode, JetflowError } from '../errors.js';
import { ExitCode, UsageError } from './exit.js';
import { inline, journalLines, STATUS_STYLE, table, type Out } from './output.js';

export interface ServiceOptions {
  natsUrl?: string;
  prefix?: string;
  json?: boolean;
}

export interface Io {
  out: Out;
  err: Out;
  env: NodeJS.ProcessEnv;
}

/** `JSON` or `@file` (JSON read from a file), named `what` in errors. */
export function parseJsonArg(text: string, what: string): unknown {
  let source = text;
  if (text.startsWith('@')) {
    try {
      source = readFileSync(text.slice(1), 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read ${what} from ${text.slice(1)}: ${(err as Error).message}`);
    }
  }
  try {
    return JSON.parse(source) as unknown;
  } catch (err) {
    throw new UsageError(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

/** `500ms`, `30s`, `2m`; a bare number is seconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!m) throw new UsageError(`${what} must be a duration like 30s, 500ms or 2m (got ${text})`);
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 }[m[2] ?? 's'] ?? 1_000;
  return Math.round(Number(m[1]) * unit);
}

export async function withClient<T>(
  o: ServiceOptions,
  io: Io,
  run: (c: Client) => Promise<T>,
): Promise<T> {
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const client = await Client.connect(url, { prefix });
  try {
    return await run(client);
  } finally {
    await client.close();
  }
}

function json(io: Io, v: unknown): void {
  io.out.line(JSON.stringify(v, null, 2));
}

const ref = (type: string, id: string) => `${type}/${id}`;

export async function startVerb(
  type: string,
  id: string,
  o: ServiceOptions & { input?: string },
  io: Io,
): Promise<number> {
  const input = o.input === undefined ? undefined : parseJsonArg(o.input, '--input');
  const r = await withClient(o, io, (c) => c.start(type, id, input));
  if (o.json) json(io, r);
  else
    table(io.out, [
      ['workflow', ref(r.type, r.id)],
      ['version', String(r.version)],
      [
        'created',
        r.created ? io.out.paint('green', 'yes') : 'no (it existed: start is idempotent)',
      ],
    ]);
  return ExitCode.Ok;
}

export async function signalVerb(
  type: string,
  id: string,
  eventText: string,
  o: ServiceOptions & { msgId?: string },
  io: Io,
): Promise<number> {
  const event = parseJsonArg(eventText, 'the event');
  if (!event || typeof event !== 'object' || typeof (event as { type?: unknown }).type !== 'string')
    throw new UsageError(
      'the event must be a JSON object with a string "type", e.g. {"type":"PAY"}',
    );
  const r = await withClient(o, io, (c) =>
    c.signal(type, id, event as { type: string }, o.msgId ? { msgId: o.msgId } : {}),
  );
  if (o.json) json(io, r);
  else {
    const dup = (r as { duplicate?: boolean }).duplicate;
    table(io.out, [
      ['workflow', ref(type, id)],
      ['event', (event as { type: string }).type],
      ['applied', dup ? 'no (a repeat of this --msg-id; applied before)' : 'yes'],
      ['step', r.step === undefined ? undefined : String(r.step)],
      ['status', r.status && io.out.paint(STATUS_STYLE[r.status], r.status)],
      ['state', r.value === undefined ? undefined : inline(r.value)],
    ]);
  }
  return ExitCode.Ok;
}

function queryTable(io: Io, q: QueryReply): void {
  table(io.out, [
    ['workflow', `${ref(q.type, q.id)}@${q.version}`],
    ['status', io.out.paint(STATUS_STYLE[q.status], q.status)],
    ['state', inline(q.value)],
    ['step', String(q.step)],
    ['accepts', q.accepts.length ? q.accepts.join(', ') : '-'],
    ['tags', q.tags.length ? q.tags.join(', ') : undefined],
    ['context', inline(q.context)],
    ['output', q.status === 'completed' ? inline(q.output) : undefined],
    ['error', q.error ? `${q.error.code}: ${q.error.message}` : undefined],
    ['paused', q.paused ? `yes (${q.held ?? 0} held)` : undefined],
    [
      'deferred',
      q.deferred
        ? `position ${q.deferred.position ?? '-'} for concurrency key ${q.deferred.key} since ${q.deferred.since}${q.held ? ` (${q.held} signals held)` : ''}`
        : undefined,
    ],
    ['key', q.concurrencyKey],
    [
      'review',
      q.needsReview?.length
        ? q.needsReview
            .map((r) => `${r.actorId} (${r.activity}, ${r.attempts} attempts): ${r.error.message}`)
            .join('; ')
        : undefined,
    ],
    ['created', q.createdAt],
    ['updated', q.updatedAt],
  ]);
}

export async function queryVerb(
  type: string,
  id: string,
  o: ServiceOptions,
  io: Io,
): Promise<number> {
  const q = await withClient(o, io, (c) => c.query(type, id));
  if (o.json) json(io, q);
  else queryTable(io, q);
  return ExitCode.Ok;
}

/**
 * `jetflow why <type> <id>`: the stage that holds the workflow and everything it awaits, one line
 * each (`--json`: the `WhyReply`). Read-only.
 */
export async function whyVerb(
  type: string,
  id: string,
  o: ServiceOptions,
  io: Io,
): Promise<number> {
  const w = await withClient(o, io, (c) => c.why(type, id));
  if (o.json) {
    json(io, w);
    return ExitCode.Ok;
  }
  const status = io.out.paint(STATUS_STYLE[w.status], w.status);
  io.out.line(`${ref(type, id)}  ${status}  step ${w.step}`);
  io.out.line(w.stage === null ? w.summary : `held by ${io.out.paint('cyan', w.stage)}`);
  for (const x of w.waits) io.out.line(`  ${x.stage.padEnd(15)}  ${x.what}`);
  return ExitCode.Ok;
}

/** `jetflow history <type> <id>`: the journal as a timeline (every page), or JSON. */
export async function historyVerb(
  type: string,
  id: string,
  o: ServiceOptions & { fromStep?: string; limit?: string },
  io: Io,
): Promise<number> {
  const fromStep = o.fromStep === undefined ? 0 : intArg(o.fromStep, '--from-step', 0);
  const limit = o.limit === undefined ? undefined : intArg(o.limit, '--limit', 1);
  await withClient(o, io, async (c) => {
    if (limit !== undefined) {
      // One page, as the request/reply returns it.
      const page = await c.history(type, id, { fromStep, limit });
      if (o.json) json(io, page);
      else {
        for (const e of page.entries) for (const l of journalLines(io.out, e)) io.out.line(l);
        if (page.next !== null) io.err.line(`more: --from-step ${page.next}`);
      }
      return;
    }
    const all: JournalEntry[] = [];
    for await (const e of c.historyAll(type, id, { fromStep })) {
      if (o.json) all.push(e);
      else for (const l of journalLines(io.out, e)) io.out.line(l);
    }
    if (o.json) json(io, { entries: all, next: null });
  });
  return ExitCode.Ok;
}

function intArg(text: string, what: string, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) {
    throw new UsageError(`${what} must be an integer >= ${min}, got ${JSON.stringify(text)}`);
  }
  return n;
}

export async function cancelVerb(
  type: string,
  id: string,
  o: ServiceOptions & { reason?: string },
  io: Io,
): Promise<number> {
  const r = await withClient(o, io, (c) => c.cancel(type, id, o.reason));
  if (o.json) json(io, r);
  else
    table(io.out, [
      ['workflow', ref(type, id)],
      ['status', io.out.paint(STATUS_STYLE.canceled, r.status ?? 'canceled')],
      ['state', r.value === undefined ? undefined : inline(r.value)],
      ['step', r.step === undefined ? undefined : String(r.step)],
    ]);
  return ExitCode.Ok;
}

/**
 * Wait for the workflow's end. stdout gets the output (human: the value itself, JSON for
 * anything but a string; `--json`: `{status, output}` or `{status, error}`); stderr says what it
 * waits for. Exit 0 completed, 1 failed or canceled, 5 timed out.
 */
export async function resultVerb(
  type: string,
  id: string,
  o: ServiceOptions & { timeout?: string },
  io: Io,
): Promise<number> {
  const timeoutMs = parseDuration(o.timeout ?? '60s', '--timeout');
  return withClient(o, io, async (c) => {
    const q = await c.query(type, id);
    if (q.status === 'deferred' && !o.json) {
      io.err.line(
        `waiting for ${ref(type, id)} (deferred: position ${q.deferred?.position ?? '?'} for concurrency key ${q.deferred?.key ?? '?'}) up to ${timeoutMs / 1000}s`,
      );
    }
    if (q.status === 'running' && !o.json) {
      io.err.line(
        `waiting for ${ref(type, id)} (running in ${inline(q.value)}; accepts ${q.accepts.join(', ') || 'nothing'}) up to ${timeoutMs / 1000}s`,
      );
    }
    try {
      const output = await c.result(type, id, { timeoutMs });
      if (o.json) json(io, { id, type, status: 'completed', output });
      else io.out.line(typeof output === 'string' ? output : JSON.stringify(output, null, 2));
      return ExitCode.Ok;
    } catch (err) {
      if (!(err instanceof WorkflowFailedError)) throw err;
      const final = await c.query(type, id).catch(() => undefined);
      const status = final?.status ?? 'failed';
      if (o.json) json(io, { id, type, status, error: final?.error ?? err.details ?? null });
      io.err.line(`${ref(type, id)} ${status}${final?.error ? `: ${final.error.message}` : ''}`);
      return ExitCode.Failed;
    }
  });
}

/**
 * One line per notification (`--json`: one JSON object per line), from the workflow's first,
 * until its end. A workflow that already finished prints what the events stream still holds.
 * Exit 0 when it completed, 1 when it failed or was canceled.
 */
export async function watchVerb(
  type: string,
  id: string,
  o: ServiceOptions,
  io: Io,
): Promise<number> {
  return withClient(o, io, async (c) => {
    const q = await c.query(type, id); // not_found (3) before waiting on nothing
    const ac = new AbortController();
    let idle: NodeJS.Timeout | undefined;
    // A finished workflow whose journal no longer reaches its end (retention): stop once the
    // stream has nothing more to give.
    const arm = () => {
      if (q.status === 'running' || q.status === 'deferred') return;
      clearTimeout(idle);
      idle = setTimeout(() => ac.abort(), 1_000);
    };
    arm();
    let status = q.status;
    try {
      for await (const e of c.follow(type, id, { signal: ac.signal })) {
        if (o.json) io.out.line(JSON.stringify(e));
        else for (const l of journalLines(io.out, e)) io.out.line(l);
        if (e.kind === 'step') status = e.status;
        arm();
      }
    } finally {
      clearTimeout(idle);
    }
    if (status === 'failed' || status === 'canceled') return ExitCode.Failed;
    if (status === 'running' || status === 'deferred') {
      throw new JetflowError(`stopped watching ${ref(type, id)} before it finished`, {
        code: ErrorCode.Timeout,
      });
    }
    return ExitCode.Ok;
  });
}

/** Flags of the operator verbs. */
export interface AdminOptions extends ServiceOptions {
  reason?: string;
  by?: string;
  requestId?: string;
  actorId?: string;
  output?: string;
  attempts?: string;
  toStep?: string;
  /** A tree node (`n<k>`): the node forms of retry, resolve, shutdown, cancel, prune. */
  node?: string;
  /** resolve of a node: its children, a JSON array of decisions (or @file). */
  decisions?: string;
  /** pause / resume: `workflow` (default) or `dispatch` (a tree's dispatch). */
  scope?: string;
  key?: string;
}

/**
 * `jetflow pause|resume|retry|resolve|fail|reset|terminate <type> <id>`: one admin request; prints
 * what changed. Exit 0 applied (or a duplicate of an applied request), 3 no such workflow, 4
 * refused (not parked, step out of range, paused, bad request), 5 unavailable.
 */
export async function adminVerb(
  verb: AdminVerb,
  type: string,
  id: string,
  o: AdminOptions,
  io: Io,
): Promise<number> {
  if (!o.reason) throw new UsageError(`${verb} needs --reason <text> (journaled)`);
  if (!o.by) throw new UsageError(`${verb} needs --by <who> (journaled)`);
  const body: AdminRequest = {
    reason: o.reason,
    by: o.by,
    ...(o.requestId !== undefined ? { requestId: o.requestId } : {}),
  };
  const nodeOnly = verb === 'shutdown' || verb === 'cancel' || verb === 'prune';
  if (o.node !== undefined) {
    if (o.actorId !== undefined)
      throw new UsageError(`${verb}: give --node (a tree node) or --actor-id, not both`);
    body.nodeId = o.node;
  } else if (nodeOnly) {
    throw new UsageError(`${verb} needs --node <nodeId> (a tree node, e.g. n3)`);
  } else if (verb === 'retry' || verb === 'resolve' || verb === 'fail') {
    if (!o.actorId)
      throw new UsageError(
        `${verb} needs --actor-id <id> (the parked activity)${verb === 'fail' ? '' : ' or --node <nodeId> (a tree node)'}`,
      );
    body.actorId = o.actorId;
  }
  if (verb === 'retry' && o.attempts !== undefined)
    body.attempts = intArg(o.attempts, '--attempts', 1);
  if (verb === 'resolve' && o.node === undefined) {
    if (o.output === undefined) throw new UsageError('resolve needs --output <json|@file>');
    body.output = parseJsonArg(o.output, '--output');
  } else if ((verb === 'resolve' || verb === 'shutdown') && o.output !== undefined) {
    body.output = parseJsonArg(o.output, '--output');
  }
  if (o.decisions !== undefined) {
    if (verb !== 'resolve' || o.node === undefined)
      throw new UsageError('--decisions goes with resolve --node');
    const d = parseJsonArg(o.decisions, '--decisions');
    if (!Array.isArray(d)) throw new UsageError('--decisions must be a JSON array of decisions');
    body.decisions = d;
  }
  if (o.scope !== undefined) {
    if (o.scope !== 'workflow' && o.scope !== 'dispatch')
      throw new UsageError('--scope must be workflow or dispatch');
    body.scope = o.scope;
  }
  if (verb === 'reset') {
    if (o.toStep === undefined) throw new UsageError('reset needs --to-step <n>');
    body.toStep = intArg(o.toStep, '--to-step', 0);
  }
  if (verb === 'release' && o.key !== undefined) body.key = o.key;
  const r = await withClient(o, io, (c) => c.admin(verb, type, id, body));
  if (o.json) json(io, r);
  else
    table(io.out, [
      ['workflow', ref(type, id)],
      ['action', r.duplicate ? `${verb} (duplicate: already applied, nothing changed)` : verb],
      ['status', r.status ? io.out.paint(STATUS_STYLE[r.status], r.status) : undefined],
      ['state', r.value === undefined ? undefined : inline(r.value)],
      ['step', r.step === undefined ? undefined : String(r.step)],
      ['paused', r.paused === undefined ? undefined : r.paused ? 'yes' : 'no'],
      ['changed', Object.keys(r.changed ?? {}).length ? inline(r.changed) : '-'],
      ...(r.result
        ? ([
            [
              'nodes',
              r.result.changed.length
                ? r.result.changed.map((c) => `${c.nodeId} ${c.from ?? 'new'}→${c.to}`).join(', ')
                : 'no change',
            ],
            [
              'dispatch',
              r.result.dispatchPaused === undefined
                ? undefined
                : r.result.dispatchPaused
                  ? 'paused'
                  : 'running',
            ],
          ] as [string, string | undefined][])
        : []),
    ]);
  return ExitCode.Ok;
}

/**
 * `jetflow keys <type> [--key K]`: the concurrency keys of a type, each with its holders and
 * its waiters in order (position, how long each has waited or held). Read from the keys bucket.
 */
export async function keysVerb(
  type: string,
  o: ServiceOptions & { key?: string },
  io: Io,
): Promise<number> {
  const records = await withClient(o, io, (c) => c.keys(type, o.key));
  const now = Date.now();
  const rows = records
    .sort((a, b) => a.key.localeCompare(b.key))
    .map((r) => ({
      key: r.key,
      limit: r.limit,
      holders: r.holders.map((h) => ({
        id: h.id,
        heldMs: now - h.at,
        waitedMs: h.at - h.queuedAt,
        ...(h.via ? { via: h.via } : {}),
        ...(h.canceling ? { canceling: h.canceling } : {}),
        ...(h.promoted ? { promoted: true } : {}),
      })),
      // In admission order (the client orders them: priority, aging, fairness).
      waiters: r.waiters.map((w, i) => ({
        position: i + 1,
        id: w.id,
        waitingMs: now - w.queuedAt,
        ...(w.priority !== undefined ? { priority: w.priority } : {}),
        ...(w.fairness !== undefined ? { fairness: w.fairness } : {}),
        ...(w.promoted ? { promoted: true } : {}),
      })),
    }));
  if (o.json) {
    json(io, { type, keys: rows });
    return ExitCode.Ok;
  }
  if (rows.length === 0) {
    io.out.line(
      o.key === undefined
        ? `${type}: no concurrency key is held or waited for`
        : `${type}: key ${o.key} is free (no holder, no waiter)`,
    );
    return ExitCode.Ok;
  }
  const secs = (ms: number) => `${(ms / 1000).toFixed(1)}s`;
  for (const r of rows) {
    io.out.line(
      `${io.out.paint('cyan', r.key)}  ${r.holders.length}/${r.limit} held, ${r.waiters.length} waiting`,
    );
    for (const h of r.holders)
      io.out.line(
        `  holder  ${h.id}  held ${secs(h.heldMs)}${h.waitedMs > 0 ? `, waited ${secs(h.waitedMs)}` : ''}${h.canceling ? `, canceling for ${h.canceling}` : ''}`,
      );
    for (const w of r.waiters)
      io.out.line(
        `  ${String(w.position).padStart(6)}  ${w.id}  waiting ${secs(w.waitingMs)}${w.priority !== undefined ? `, priority ${w.priority}` : ''}${w.fairness !== undefined ? `, fairness ${w.fairness}` : ''}${w.promoted ? ' (promoted)' : ''}`,
      );
  }
  return ExitCode.Ok;
}
