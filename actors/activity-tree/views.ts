/**
 * Query views of an activity tree (ACTIVITY-TREES §2.8, §2.9.8): `tree` (nested JSON, or
 * Backbeat's `/tree/print` as text), `nodes` (a flat page in seq order) and `node` (one node
 * with its input, errors and history). Pure functions of the stored context.
 */
import { BadRequestError, ErrorCode } from '../../src/errors.js';
import type { QueryView, ViewMeta } from '../../src/engine/registry.js';
import {
  blockedBy,
  childIdOf,
  maxAttemptsOf,
  NODE_STATUSES,
  type Node,
  type Tree,
} from './reduce.js';

const iso = (ms: number) => new Date(ms).toISOString();

/** A node in the wire form of §2.9.7, without children. */
function wireNode(t: Tree, n: Node): Record<string, unknown> {
  const by = blockedBy(t, n);
  return {
    id: n.id,
    parentId: n.parentId,
    rootId: n.rootId,
    seq: n.seq,
    name: n.name,
    kind: n.kind,
    mode: n.mode,
    queue: n.queue,
    ...(n.lane !== undefined ? { lane: n.lane } : {}),
    status: n.status,
    statusSince: iso(n.statusSince),
    ...(n.outcome ? { outcome: n.outcome } : {}),
    ...(n.canceledBy ? { canceledBy: n.canceledBy } : {}),
    run: n.run,
    attempt: n.attempt,
    maxAttempts: maxAttemptsOf(n),
    ...(n.retryAt !== undefined && n.status === 'retrying' ? { retryAt: iso(n.retryAt) } : {}),
    ...(n.fireAt !== undefined ? { fireAt: iso(n.fireAt) } : {}),
    ...(n.error ? { error: n.error } : {}),
    ...(n.output !== undefined ? { output: n.output } : {}),
    ...(n.metadata ? { metadata: n.metadata } : {}),
    ...(by ? { blockedBy: by } : {}),
    ...(n.link
      ? {
          link: {
            type: n.link.type,
            id: n.link.id,
            nodeId: n.link.nodeId,
            ...(n.link.status ? { status: n.link.status } : {}),
          },
        }
      : {}),
    ...(n.linkedFrom
      ? {
          linkedFrom: { type: n.linkedFrom.type, id: n.linkedFrom.id, nodeId: n.linkedFrom.nodeId },
        }
      : {}),
    ...(n.workflow
      ? {
          workflow: {
            type: n.workflow.type,
            id: childIdOf(n),
            attach: n.workflow.attach,
            ...(n.workflow.status ? { status: n.workflow.status } : {}),
          },
        }
      : {}),
    alerts: n.alerts,
    createdAt: iso(n.createdAt),
  };
}

function asTree(context: unknown): Tree {
  return context as Tree;
}

function bad(message: string, details?: unknown): never {
  throw new BadRequestError(message, {
    code: ErrorCode.BadRequest,
    ...(details !== undefined ? { details } : {}),
  });
}

function nested(t: Tree, id: string, budget: { left: number }): Record<string, unknown> | null {
  if (budget.left <= 0) return null;
  budget.left -= 1;
  const n = t.nodes[id]!;
  const children: Record<string, unknown>[] = [];
  for (const c of n.children) {
    const x = nested(t, c, budget);
    if (x) children.push(x);
  }
  return { ...wireNode(t, n), children };
}

/** `{"view":"tree"}`: the nested tree (at most `maxNodes` nodes, default 2,000). */
function treeJson(t: Tree, req: Record<string, unknown>, meta: ViewMeta): unknown {
  const max = req.maxNodes ?? 2000;
  if (!Number.isInteger(max) || (max as number) < 1) bad('maxNodes must be a positive integer');
  const budget = { left: max as number };
  const nodes: Record<string, unknown>[] = [];
  for (const r of t.roots) {
    const x = nested(t, r, budget);
    if (x) nodes.push(x);
  }
  const total = Object.keys(t.nodes).length;
  return {
    id: meta.id,
    type: meta.type,
    version: meta.version,
    status: meta.status,
    step: meta.step,
    dispatchPaused: t.dispatchPaused,
    closed: t.closed,
    subject: t.subject,
    counts: t.counts,
    nodes,
    ...(total > (max as number) ? { truncated: true } : {}),
  };
}

/** One line of the text tree, after the drawing characters (§2.8's grammar). */
export function nodeLine(t: Tree, n: Node): string {
  const parts: string[] = [n.mode];
  if (n.attempt > 0) parts.push(`attempt ${n.attempt}/${maxAttemptsOf(n)}`);
  if (n.status === 'retrying' && n.retryAt !== undefined) parts.push(`retry at ${iso(n.retryAt)}`);
  if (n.status === 'scheduled' && n.fireAt !== undefined) parts.push(`fires at ${iso(n.fireAt)}`);
  const by = blockedBy(t, n);
  if (by) parts.push(`blocked by ${by}`);
  if (n.link) parts.push(`link ${n.link.type}/${n.link.id}/${n.link.nodeId ?? '-'}`);
  if (n.workflow) parts.push(`child ${n.workflow.type}/${childIdOf(n)}`);
  const outcome =
    n.outcome &&
    n.outcome !== 'completed' &&
    (n.status === 'complete' || n.status === 'awaitingChildren')
      ? `/${n.outcome}`
      : '';
  return `${n.name} [${n.id}] ${n.status}${outcome} (${parts.join(', ')})`;
}

function treeText(t: Tree, meta: ViewMeta): { text: string } {
  const lines = [
    `${meta.type}/${meta.id} ${meta.status}${t.dispatchPaused ? ' paused' : ''}${t.closed ? ' closed' : ''}`,
  ];
  const draw = (ids: string[], indent: string) => {
    ids.forEach((id, i) => {
      const last = i === ids.length - 1;
      const n = t.nodes[id]!;
      lines.push(`${indent}${last ? '└─' : '├─'} ${nodeLine(t, n)}`);
      draw(n.children, `${indent}${last ? '   ' : '│  '}`);
    });
  };
  draw(t.roots, '');
  return { text: lines.join('\n') };
}

const tree: QueryView = (context, req, meta) => {
  const t = asTree(context);
  if (req.format === 'text') return treeText(t, meta);
  if (req.format !== undefined && req.format !== 'json') bad('format must be "json" or "text"');
  return treeJson(t, req, meta);
};

const nodes: QueryView = (context, req) => {
  const t = asTree(context);
  const limit = req.limit ?? 100;
  if (!Number.isInteger(limit) || (limit as number) < 1 || (limit as number) > 1000)
    bad('limit must be an integer in 1..1000');
  let after = 0;
  if (req.cursor !== undefined && req.cursor !== null) {
    const m = typeof req.cursor === 'string' ? /^s(\d+)$/.exec(req.cursor) : null;
    if (!m) bad('malformed cursor', { cursor: req.cursor });
    after = Number(m[1]);
  }
  const statuses =
    req.status === undefined ? undefined : Array.isArray(req.status) ? req.status : [req.status];
  if (statuses && !statuses.every((s) => NODE_STATUSES.includes(s as never)))
    bad('unknown status', { statuses: NODE_STATUSES });
  const out: Record<string, unknown>[] = [];
  let next: string | null = null;
  // Node ids are n<seq>: walk seq order without sorting the table.
  for (let k = after + 1; k <= t.seq; k++) {
    const n = t.nodes[`n${k}`];
    if (!n) continue;
    if ('parentId' in req && req.parentId !== undefined && n.parentId !== req.parentId) continue;
    if (statuses && !statuses.includes(n.status)) continue;
    if (typeof req.name === 'string' && n.name !== req.name) continue;
    if (out.length === limit) {
      next = `s${out.length ? (out[out.length - 1]!.seq as number) : k}`;
      break;
    }
    out.push({ ...wireNode(t, n), childIds: n.children });
  }
  return { nodes: out, next };
};

const node: QueryView = (context, req) => {
  const t = asTree(context);
  const id = req.nodeId;
  const n = typeof id === 'string' ? t.nodes[id] : undefined;
  if (!n) {
    throw new BadRequestError(`no node ${JSON.stringify(id)}`, {
      code: ErrorCode.NotFound,
      details: { nodeId: id },
    });
  }
  return {
    node: {
      ...wireNode(t, n),
      childIds: n.children,
      input: n.input,
      errors: n.errors.map((e) => ({ ...e, at: iso(e.at) })),
      history: n.history.map((h) => ({ ...h, at: iso(h.at) })),
    },
  };
};

export const treeViews: Readonly<Record<string, QueryView>> = Object.freeze({ tree, nodes, node });

/** The plain query's `context` for a tree: the summary, not the table (stays under max_payload). */
export function treeQueryContext(context: unknown): unknown {
  const t = asTree(context);
  if (!t || typeof t !== 'object' || !('nodes' in t)) return context;
  return {
    subject: t.subject,
    attributes: t.attributes,
    counts: t.counts,
    dispatchPaused: t.dispatchPaused,
    closed: t.closed,
    seq: t.seq,
  };
}
