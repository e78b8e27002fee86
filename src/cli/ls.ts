/**
 * `jetflow ls`: search the visibility index and print a table (or `--json`); `--counts` prints
 * counts by type, status and state. The CLI only parses and prints: the search runs in a
 * visibility replica (`jetflow visibility` or `jetflow dev`).
 */
import { Client } from '../client/index.js';
import type {
  AttributeValue,
  NodeSearchReply,
  NodeSearchRequest,
  SearchCountsReply,
  SearchReply,
  SearchRequest,
} from '../contracts/search.js';
import { DEFAULT_PREFIX } from '../contracts/subjects.js';
import type { WorkflowStatus } from '../contracts/wire.js';
import { ErrorCode, RetryableError } from '../errors.js';
import { UsageError } from './exit.js';
import { STATUS_STYLE } from './output.js';
import { parseDuration, type Io, type ServiceOptions } from './service.js';

export interface LsOptions extends ServiceOptions {
  type?: string;
  status?: string;
  state?: string;
  inStateLongerThan?: string;
  where?: string[];
  idPrefix?: string;
  errorType?: string;
  errorCode?: string;
  needsReview?: boolean;
  sort?: string;
  order?: string;
  limit?: string;
  cursor?: string;
  counts?: boolean;
  /** Search activity-tree nodes (`<prefix>.search.nodes`) instead of workflows. */
  nodes?: boolean;
  id?: string;
  pastStatus?: string;
  name?: string;
  queue?: string;
  since?: string;
  until?: string;
}

/**
 * The node search body the flags describe (`--nodes`): `--status` and `--past-status` are node
 * statuses (comma-separated: any of), `--where` is node metadata, `--in-state-longer-than` bounds
 * the time in the current status.
 */
export function lsNodesRequest(o: LsOptions, now: number): NodeSearchRequest {
  const r: NodeSearchRequest = {};
  const list = (v: string) => (v.includes(',') ? v.split(',') : v);
  if (o.type) r.type = o.type;
  if (o.id) r.id = o.id;
  if (o.status) r.status = list(o.status);
  if (o.pastStatus) r.pastStatus = list(o.pastStatus);
  if (o.name) r.name = o.name;
  if (o.queue) r.queue = list(o.queue);
  const time = (v: string) => (/^\d+$/.test(v) ? Number(v) : v);
  if (o.since) r.since = time(o.since);
  if (o.until) r.until = time(o.until);
  if (o.inStateLongerThan) {
    if (o.pastStatus || o.until)
      throw new UsageError('--in-state-longer-than goes without --past-status and --until');
    r.until = now - parseDuration(o.inStateLongerThan, '--in-state-longer-than');
  }
  if (o.where?.length)
    r.metadata = Object.fromEntries(
      o.where.map((w) => {
        const [k, v] = parseWhere(w);
        if (v === null) throw new UsageError(`--where ${w}: node metadata is never null`);
        return [k, v];
      }),
    );
  if (o.limit !== undefined) {
    const n = Number(o.limit);
    if (!Number.isInteger(n)) throw new UsageError(`--limit must be an integer (got ${o.limit})`);
    r.limit = n;
  }
  if (o.cursor) r.cursor = o.cursor;
  for (const [flag, set] of [
    ['--state', o.state],
    ['--id-prefix', o.idPrefix],
    ['--error-type', o.errorType],
    ['--error-code', o.errorCode],
    ['--needs-review', o.needsReview],
    ['--sort', o.sort],
    ['--order', o.order],
    ['--counts', o.counts],
  ] as const)
    if (set) throw new UsageError(`${flag} is a workflow filter: it does not go with --nodes`);
  return r;
}

function printNodes(io: Io, r: NodeSearchReply, now: number): void {
  if (r.results.length === 0) {
    io.out.line('no nodes match');
    return;
  }
  const rows = [['TYPE', 'ID', 'NODE', 'NAME', 'QUEUE', 'STATUS', 'IN STATUS', 'ATTEMPT', 'RUN']];
  for (const n of r.results) {
    rows.push([
      n.type,
      n.id,
      n.nodeId,
      n.name,
      n.queue,
      n.status,
      ago(now - Date.parse(n.statusSince)),
      String(n.attempt),
      String(n.run),
    ]);
  }
  columns(io, rows);
  if (r.next) io.out.line(io.out.paint('dim', `more: add --cursor ${r.next}`));
}

/** `key=value`: the value as JSON when it parses as a number, boolean or null, else the text. */
export function parseWhere(text: string): [string, AttributeValue] {
  const i = text.indexOf('=');
  if (i <= 0) throw new UsageError(`--where must be key=value (got ${text})`);
  const key = text.slice(0, i);
  const raw = text.slice(i + 1);
  let value: AttributeValue = raw;
  if (/^(true|false|null|-?\d+(\.\d+)?([eE][+-]?\d+)?|".*")$/.test(raw)) {
    value = JSON.parse(raw) as AttributeValue;
  }
  return [key, value];
}

/** The search body the flags describe (`now` for `--in-state-longer-than`). */
export function lsRequest(o: LsOptions, now: number): SearchRequest {
  const r: SearchRequest = {};
  if (o.type) r.type = o.type;
  if (o.status) r.status = o.status as WorkflowStatus;
  if (o.state) r.state = o.state;
  if (o.inStateLongerThan) {
    r.inStateSince = { before: now - parseDuration(o.inStateLongerThan, '--in-state-longer-than') };
    r.sort = 'inStateSince';
  }
  if (o.where?.length) r.attributes = Object.fromEntries(o.where.map(parseWhere));
  if (o.idPrefix) r.idPrefix = o.idPrefix;
  if (o.errorType) r.errorType = o.errorType;
  if (o.errorCode) r.errorCode = o.errorCode;
  if (o.needsReview) r.needsReview = true;
  if (o.sort) r.sort = o.sort as SearchRequest['sort'];
  if (o.order) r.order = o.order as SearchRequest['order'];
  if (o.limit !== undefined) {
    const n = Number(o.limit);
    if (!Number.isInteger(n)) throw new UsageError(`--limit must be an integer (got ${o.limit})`);
    r.limit = n;
  }
  if (o.cursor) r.cursor = o.cursor;
  return r;
}

/** `3h12m`, `45s`, `2d4h`: the largest two units. */
export function ago(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const parts: [number, string][] = [
    [Math.floor(s / 86_400), 'd'],
    [Math.floor(s / 3_600) % 24, 'h'],
    [Math.floor(s / 60) % 60, 'm'],
    [s % 60, 's'],
  ];
  const first = parts.findIndex(([n]) => n > 0);
  if (first < 0) return '0s';
  return parts
    .slice(first, first + 2)
    .filter(([n]) => n > 0)
    .map(([n, u]) => `${n}${u}`)
    .join('');
}

type Style = ((cell: string, row: number) => string) | undefined;

function columns(io: Io, rows: string[][], styles: Style[] = []) {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  rows.forEach((r, i) => {
    io.out.line(
      r
        .map((cell, c) => {
          const padded = c === r.length - 1 ? cell : cell.padEnd(widths[c]!);
          if (i === 0) return io.out.paint('dim', padded);
          const style = styles[c];
          return style ? style(padded, i) : padded;
        })
        .join('  ')
        .trimEnd(),
    );
  });
}

function printSearch(io: Io, r: SearchReply, now: number): void {
  if (r.workflows.length === 0) {
    io.out.line('no workflows match');
    return;
  }
  const rows = [['TYPE', 'ID', 'STATUS', 'STATE', 'IN STATE', 'UPDATED', 'STEP']];
  for (const w of r.workflows) {
    rows.push([
      w.type,
      w.id,
      w.status,
      w.states.join(',') || '-',
      ago(now - Date.parse(w.inStateSince)),
      `${ago(now - Date.parse(w.updatedAt))} ago`,
      String(w.step),
    ]);
  }
  const status = (cell: string, i: number) =>
    io.out.paint(STATUS_STYLE[r.workflows[i - 1]!.status], cell);
  columns(io, rows, [undefined, undefined, status]);
  if (r.cursor) io.out.line(io.out.paint('dim', `more: add --cursor ${r.cursor}`));
}

function printCounts(io: Io, c: SearchCountsReply): void {
  io.out.line(
    `${c.total} workflows` +
      (Object.keys(c.byStatus).length
        ? `: ${Object.entries(c.byStatus)
            .map(([s, n]) => `${n} ${s}`)
            .join(', ')}`
        : ''),
  );
  if (c.byState.length === 0) return;
  const rows = [['TYPE', 'STATE', 'STATUS', 'COUNT']];
  for (const g of c.byState) rows.push([g.type, g.state, g.status, String(g.count)]);
  columns(io, rows);
}

/** nats.js' no-responders error, as such or as the cause of a request error. */
function noResponders(err: unknown): boolean {
  for (let e = err as { name?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; i++) {
    if (e.name === 'NoResponders' || e.name === 'NoRespondersError') return true;
    e = e.cause as typeof e;
  }
  return false;
}

export async function lsVerb(o: LsOptions, io: Io): Promise<number> {
  const now = Date.now();
  const nodes = o.nodes ? lsNodesRequest(o, now) : undefined;
  if (!o.nodes && (o.id || o.pastStatus || o.name || o.queue || o.since || o.until))
    throw new UsageError('--id, --past-status, --name, --queue, --since, --until go with --nodes');
  const request = o.counts || nodes ? undefined : lsRequest(o, now);
  const url = o.natsUrl ?? (io.env.NATS_URL || 'nats://127.0.0.1:4222');
  const prefix = o.prefix ?? (io.env.JETFLOW_PREFIX || DEFAULT_PREFIX);
  const client = await Client.connect(url, { prefix });
  try {
    const reply = nodes
      ? await client.searchNodes(nodes)
      : request
        ? await client.search(request)
        : await client.searchCounts(o.type ? { type: o.type } : {});
    if (o.json) io.out.line(JSON.stringify(reply, null, 2));
    else if (nodes) printNodes(io, reply as NodeSearchReply, now);
    else if (request) printSearch(io, reply as SearchReply, now);
    else printCounts(io, reply as SearchCountsReply);
    return 0;
  } catch (err) {
    if (noResponders(err)) {
      throw new RetryableError(
        `no visibility replica is answering on ${prefix}.search: run \`jetflow visibility --prefix ${prefix}\` (or \`jetflow dev\`)`,
        { code: ErrorCode.Unavailable, cause: err },
      );
    }
    throw err;
  } finally {
    await client.close();
  }
}
