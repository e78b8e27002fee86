/**
 * The visibility index: a projection of the journal (and, on rebuild, of the workflow records)
 * into one SQLite file (better-sqlite3, WAL). Synchronous and free of NATS: the role feeds it
 * batches and asks it questions.
 *
 * Idempotent: a workflow's row changes only for a step number above the one it holds, so a
 * redelivered, duplicated or already-reflected entry changes nothing. The journal stream
 * sequence applied is stored in the same transaction as the rows, so a restart resumes exactly
 * where the file left off.
 *
 * Layout (every query is driven by an index, see `search()`):
 * - `workflows`: one row per workflow, keyed by `<type>.<id>` (also the pagination tiebreak, so
 *   that every replica orders rows the same way and a cursor works on any of them);
 * - `wstates`: one row per active state path (several in parallel states) and per ancestor
 *   prefix of one (`shipping.*` for `shipping.packing`), with the workflow's `in_state_since`
 *   and `updated_at` copied in, so "in state X (or under prefix X) for more than 1 h, oldest
 *   first" is one index range;
 * - `wattrs`: search attributes, value stored as its JSON text (equality keeps the type), with
 *   the sort keys copied in too, so "merchant = m1, newest first" is one index range;
 * - `counts` / `totals`: counters kept up to date by every change, so counts are not a scan.
 */
import Database from 'better-sqlite3';
import type { AttributeValue, SearchCountsReply, SearchReply } from '../contracts/search.js';
import type { JournalEntry, WorkflowRecord, WorkflowStatus } from '../contracts/wire.js';
import { statePaths } from './paths.js';
import {
  attributeText,
  encodeCursor,
  encodeNodeCursor,
  type NodeSearchQuery,
  type Range,
  type SearchQuery,
} from './query.js';

/** Version of the file layout; a file of another version is rebuilt. */
export const SCHEMA_VERSION = 3;

/** What the index keeps of one workflow. Times are epoch ms. */
export interface WorkflowState {
  type: string;
  id: string;
  status: WorkflowStatus;
  step: number;
  paths: string[];
  inStateSince: number;
  createdAt: number;
  updatedAt: number;
  error?: { type: string; code: string; message?: string };
  attributes: Record<string, AttributeValue>;
  /** An activity is parked for manual review. */
  needsReview?: boolean;
  /** An activity tree's nodes as they are now: replace the indexed ones (rebuild, reset). */
  nodes?: NodeRow[];
  /** An activity tree's node status changes of this step, in order (its `nodes` event). */
  nodeChanges?: NodeChangeRow[];
}

/** One activity-tree node as the index keeps it. Times are epoch ms. */
export interface NodeRow {
  nodeId: string;
  seq: number;
  name: string;
  queue: string;
  status: string;
  statusSince: number;
  attempt: number;
  run: number;
  metadata?: Record<string, string | number | boolean>;
  /** Statuses the node entered, with when (`pastStatus` searches). */
  entered: { status: string; at: number }[];
}

/** One change of a tree's `nodes` event (ACTIVITY-TREES §2.9.10), times in epoch ms. */
export interface NodeChangeRow {
  nodeId: string;
  name: string;
  from: string | null;
  to: string;
  at: number;
  attempt?: number;
  run?: number;
  queue?: string;
  metadata?: Record<string, string | number | boolean>;
}

/** The node changes among a step's emitted events (a tree's `nodes` event), if any. */
function nodeChangesOf(
  emitted: Record<string, unknown>[] | undefined,
): NodeChangeRow[] | undefined {
  const out: NodeChangeRow[] = [];
  for (const ev of emitted ?? []) {
    if (ev.type !== 'nodes' || !Array.isArray(ev.changes)) continue;
    for (const c of ev.changes as Record<string, unknown>[]) {
      const at = typeof c.at === 'string' ? Date.parse(c.at) : NaN;
      if (typeof c.nodeId !== 'string' || typeof c.to !== 'string' || !Number.isFinite(at))
        continue;
      out.push({
        nodeId: c.nodeId,
        name: typeof c.name === 'string' ? c.name : '',
        from: typeof c.from === 'string' ? c.from : null,
        to: c.to,
        at,
        ...(typeof c.attempt === 'number' ? { attempt: c.attempt } : {}),
        ...(typeof c.run === 'number' ? { run: c.run } : {}),
        ...(typeof c.queue === 'string' ? { queue: c.queue } : {}),
        ...(c.metadata && typeof c.metadata === 'object'
          ? { metadata: c.metadata as Record<string, string | number | boolean> }
          : {}),
      });
    }
  }
  return out.length > 0 ? out : undefined;
}

/**
 * The nodes of an activity tree's persisted snapshot (its context is the node table, see
 * actors/activity-tree/reduce.ts `Tree`), or undefined when it is not a tree. Read structurally:
 * the index does not depend on the actors.
 */
export function treeNodesOf(snapshot: unknown): NodeRow[] | undefined {
  const ctx = (snapshot as { context?: unknown } | null | undefined)?.context as
    { nodes?: unknown; roots?: unknown; seq?: unknown } | undefined;
  if (!ctx || typeof ctx !== 'object' || !Array.isArray(ctx.roots) || typeof ctx.seq !== 'number')
    return undefined;
  if (!ctx.nodes || typeof ctx.nodes !== 'object') return undefined;
  const out: NodeRow[] = [];
  for (const n of Object.values(ctx.nodes as Record<string, Record<string, unknown>>)) {
    if (typeof n?.id !== 'string' || typeof n.status !== 'string') continue;
    const history = Array.isArray(n.history) ? (n.history as { to?: unknown; at?: unknown }[]) : [];
    out.push({
      nodeId: n.id,
      seq: typeof n.seq === 'number' ? n.seq : 0,
      name: typeof n.name === 'string' ? n.name : '',
      queue: typeof n.queue === 'string' ? n.queue : '',
      status: n.status,
      statusSince: typeof n.statusSince === 'number' ? n.statusSince : 0,
      attempt: typeof n.attempt === 'number' ? n.attempt : 0,
      run: typeof n.run === 'number' ? n.run : 1,
      ...(n.metadata && typeof n.metadata === 'object'
        ? { metadata: n.metadata as Record<string, string | number | boolean> }
        : {}),
      entered: history
        .filter((h) => typeof h.to === 'string' && typeof h.at === 'number')
        .map((h) => ({ status: h.to as string, at: h.at as number })),
    });
  }
  return out;
}

/** The state a `step` journal entry leaves its workflow in. */
export function stateOfEntry(e: Extract<JournalEntry, { kind: 'step' }>): WorkflowState {
  return {
    type: e.workflowType,
    id: e.id,
    status: e.status,
    step: e.step,
    paths: e.to.paths,
    inStateSince: e.stateSince,
    createdAt: e.createdAt,
    updatedAt: e.at,
    ...(e.error
      ? { error: { type: e.error.type, code: e.error.code, message: e.error.message } }
      : {}),
    attributes: e.attributes ?? {},
    needsReview: e.needsReview === true,
    ...nodesOfEntry(e),
  };
}

/** What a step entry tells of a tree's nodes: its changes, or (a reset) the whole table. */
function nodesOfEntry(
  e: Extract<JournalEntry, { kind: 'step' }>,
): Pick<WorkflowState, 'nodes' | 'nodeChanges'> {
  if (e.operator?.action === 'reset') {
    const nodes = e.snapshotOmitted ? undefined : treeNodesOf(e.snapshot);
    return nodes ? { nodes } : {};
  }
  const nodeChanges = nodeChangesOf(e.emitted);
  return nodeChanges ? { nodeChanges } : {};
}

/**
 * The state a stored record describes (used by the rebuild). `needsReview` as the journal has it:
 * an activity of the record is parked for manual review.
 */
export function stateOfRecord(r: WorkflowRecord): WorkflowState {
  const value = (r.snapshot as { value?: unknown } | null)?.value;
  return {
    type: r.type,
    id: r.id,
    status: r.status,
    step: r.step,
    paths: statePaths(value),
    inStateSince: r.stateSince ?? r.updatedAt,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
    ...(r.error
      ? { error: { type: r.error.type, code: r.error.code, message: r.error.message } }
      : {}),
    attributes: r.attributes ?? {},
    needsReview: Object.values(r.tasks ?? {}).some((t) => t.parked !== undefined),
    ...((): Pick<WorkflowState, 'nodes'> => {
      const nodes = treeNodesOf(r.snapshot);
      return nodes ? { nodes } : {};
    })(),
  };
}

/** Where the index stands in the journal. */
export interface JournalPosition {
  /** Last journal stream sequence applied (0 = none). */
  seq: number;
  /** Identity of the journal stream `seq` belongs to (its creation time), if known. */
  stream: string | undefined;
}

/** One message of the journal: its stream sequence and the decoded entry (undefined: malformed). */
export interface JournalItem {
  seq: number;
  entry: JournalEntry | undefined;
}

export interface ApplyResult {
  /** Step entries that changed a row. */
  applied: number;
  /** Step entries at or below the indexed step (already reflected). */
  stale: number;
  /** Entries of other kinds (rejected, ignored, operator) and malformed ones. */
  other: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS workflows (
  key TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  id TEXT NOT NULL,
  status TEXT NOT NULL,
  step INTEGER NOT NULL,
  states TEXT NOT NULL,
  in_state_since INTEGER NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  error_type TEXT,
  error_code TEXT,
  error_message TEXT,
  needs_review INTEGER NOT NULL DEFAULT 0,
  attributes TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS w_upd ON workflows (updated_at);
CREATE INDEX IF NOT EXISTS w_iss ON workflows (in_state_since);
CREATE INDEX IF NOT EXISTS w_status_upd ON workflows (status, updated_at);
CREATE INDEX IF NOT EXISTS w_status_iss ON workflows (status, in_state_since);
CREATE INDEX IF NOT EXISTS w_type_upd ON workflows (type, updated_at);
CREATE INDEX IF NOT EXISTS w_type_iss ON workflows (type, in_state_since);
CREATE INDEX IF NOT EXISTS w_created ON workflows (created_at);
CREATE INDEX IF NOT EXISTS w_id ON workflows (id);
CREATE INDEX IF NOT EXISTS w_err_type ON workflows (error_type, updated_at)
  WHERE error_type IS NOT NULL;
CREATE INDEX IF NOT EXISTS w_err_code ON workflows (error_code, updated_at)
  WHERE error_code IS NOT NULL;
CREATE INDEX IF NOT EXISTS w_review ON workflows (updated_at) WHERE needs_review = 1;
CREATE TABLE IF NOT EXISTS wstates (
  wkey TEXT NOT NULL,
  path TEXT NOT NULL,
  in_state_since INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (wkey, path)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS s_iss ON wstates (path, in_state_since);
CREATE INDEX IF NOT EXISTS s_upd ON wstates (path, updated_at);
CREATE TABLE IF NOT EXISTS wattrs (
  wkey TEXT NOT NULL,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  in_state_since INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (wkey, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS a_upd ON wattrs (name, value, updated_at);
CREATE INDEX IF NOT EXISTS a_iss ON wattrs (name, value, in_state_since);
CREATE TABLE IF NOT EXISTS counts (
  type TEXT NOT NULL, status TEXT NOT NULL, path TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (type, status, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nodes (
  wkey TEXT NOT NULL,
  node_id TEXT NOT NULL,
  type TEXT NOT NULL,
  id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  name TEXT NOT NULL,
  queue TEXT NOT NULL,
  status TEXT NOT NULL,
  status_since INTEGER NOT NULL,
  attempt INTEGER NOT NULL,
  run INTEGER NOT NULL,
  PRIMARY KEY (wkey, node_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS n_since ON nodes (status_since, wkey, seq);
CREATE INDEX IF NOT EXISTS n_status ON nodes (status, status_since);
CREATE INDEX IF NOT EXISTS n_name ON nodes (name, status_since);
CREATE INDEX IF NOT EXISTS n_queue ON nodes (queue, status_since);
CREATE TABLE IF NOT EXISTS nhist (
  wkey TEXT NOT NULL,
  node_id TEXT NOT NULL,
  status TEXT NOT NULL,
  at INTEGER NOT NULL,
  PRIMARY KEY (wkey, node_id, status, at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS h_status ON nhist (status, at);
CREATE TABLE IF NOT EXISTS nmeta (
  wkey TEXT NOT NULL,
  node_id TEXT NOT NULL,
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  PRIMARY KEY (wkey, node_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS m_value ON nmeta (name, value);
CREATE TABLE IF NOT EXISTS totals (
  type TEXT NOT NULL, status TEXT NOT NULL, n INTEGER NOT NULL,
  PRIMARY KEY (type, status)
) WITHOUT ROWID;
`;

interface StoredRow {
  key: string;
  type: string;
  id: string;
  status: WorkflowStatus;
  step: number;
  states: string;
  in_state_since: number;
  created_at: number;
  updated_at: number;
  error_type: string | null;
  error_code: string | null;
  error_message: string | null;
  needs_review: number;
  attributes: string;
}

const iso = (ms: number) => new Date(ms).toISOString();

/** `a.b.c` → `a.*`, `a.b.*`: the state prefixes a path is under. */
function ancestors(path: string): string[] {
  const out: string[] = [];
  for (let i = path.indexOf('.'); i > 0; i = path.indexOf('.', i + 1)) {
    out.push(`${path.slice(0, i)}.*`);
  }
  return out;
}

/** The smallest string above every string starting with `prefix` (ASCII keys). */
function prefixEnd(prefix: string): string {
  return prefix.slice(0, -1) + String.fromCharCode(prefix.charCodeAt(prefix.length - 1) + 1);
}

/** One node of a node search's reply. */
export interface NodeSearchResult {
  type: string;
  id: string;
  nodeId: string;
  name: string;
  queue: string;
  status: string;
  statusSince: string;
  attempt: number;
  run: number;
}

export interface VisibilityIndexOptions {
  /** SQLite page cache in MiB (default 64). */
  cacheMiB?: number;
}

export class VisibilityIndex {
  private readonly db: Database.Database;
  private readonly statements = new Map<string, Database.Statement>();
  private closed = false;

  private constructor(db: Database.Database) {
    this.db = db;
  }

  /**
   * Open (or create) the index file at `path` (`:memory:` for a throwaway one). A file with
   * another layout version is emptied (the role then rebuilds it).
   */
  static open(path: string, o: VisibilityIndexOptions = {}): VisibilityIndex {
    const db = new Database(path);
    try {
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('temp_store = MEMORY');
      db.pragma(`cache_size = ${-1024 * (o.cacheMiB ?? 64)}`);
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version !== SCHEMA_VERSION) {
        db.exec(
          'DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS workflows; DROP TABLE IF EXISTS wstates;' +
            'DROP TABLE IF EXISTS wattrs; DROP TABLE IF EXISTS counts; DROP TABLE IF EXISTS totals;' +
            'DROP TABLE IF EXISTS nodes; DROP TABLE IF EXISTS nhist; DROP TABLE IF EXISTS nmeta;',
        );
        db.exec(SCHEMA);
        db.pragma(`user_version = ${SCHEMA_VERSION}`);
      }
      return new VisibilityIndex(db);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  private st(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      if (this.statements.size > 512) this.statements.clear();
      this.statements.set(sql, s);
    }
    return s;
  }

  /** Where the index stands in the journal. */
  position(): JournalPosition {
    const get = (name: string) =>
      (this.st('SELECT value FROM meta WHERE name = ?').get(name) as { value: unknown } | undefined)
        ?.value;
    const seq = get('journal_seq');
    const stream = get('journal_stream');
    return {
      seq: typeof seq === 'number' ? seq : 0,
      stream: typeof stream === 'string' ? stream : undefined,
    };
  }

  private setMeta(name: string, value: unknown): void {
    this.st(
      'INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value',
    ).run(name, value);
  }

  /** Empty every table (start of a rebuild); `stream` is the journal identity to remember. */
  reset(position: JournalPosition): void {
    this.db.transaction(() => {
      for (const t of [
        'workflows',
        'wstates',
        'wattrs',
        'counts',
        'totals',
        'nodes',
        'nhist',
        'nmeta',
        'meta',
      ]) {
        this.db.exec(`DELETE FROM ${t}`);
      }
      this.setMeta('journal_seq', position.seq);
      if (position.stream !== undefined) this.setMeta('journal_stream', position.stream);
      this.setMeta('rebuilding', 1);
    })();
  }

  /** True between `reset()` and `finishRebuild()`: a rebuild that did not complete. */
  get rebuilding(): boolean {
    return (
      (this.st("SELECT value FROM meta WHERE name = 'rebuilding'").get() as
        { value: unknown } | undefined) !== undefined
    );
  }

  /** The records were all loaded: from now on the index follows the journal. */
  finishRebuild(): void {
    this.st("DELETE FROM meta WHERE name = 'rebuilding'").run();
    this.db.pragma('optimize');
  }

  /** Load workflow states (rebuild from records) in one transaction. */
  load(states: readonly WorkflowState[]): number {
    let n = 0;
    this.db.transaction(() => {
      for (const s of states) if (this.upsert(s)) n++;
    })();
    return n;
  }

  /**
   * Apply journal messages in one transaction and remember the last sequence. Only `step`
   * entries above the indexed step change rows; the others are counted.
   */
  apply(items: readonly JournalItem[]): ApplyResult {
    const r: ApplyResult = { applied: 0, stale: 0, other: 0 };
    if (items.length === 0) return r;
    this.db.transaction(() => {
      let last = 0;
      for (const { seq, entry } of items) {
        last = Math.max(last, seq);
        if (entry?.kind !== 'step') {
          r.other++;
          continue;
        }
        if (this.upsert(stateOfEntry(entry))) r.applied++;
        else r.stale++;
      }
      this.setMeta('journal_seq', last);
    })();
    return r;
  }

  /** Write one workflow's state unless the index already holds this step or a later one. */
  private upsert(s: WorkflowState): boolean {
    const key = `${s.type}.${s.id}`;
    const old = this.st(
      'SELECT type, status, step, states, in_state_since, attributes FROM workflows WHERE key = ?',
    ).get(key) as
      | Pick<StoredRow, 'type' | 'status' | 'step' | 'states' | 'in_state_since' | 'attributes'>
      | undefined;
    if (old && old.step >= s.step) return false;
    const states = JSON.stringify(s.paths);
    const attributes = JSON.stringify(s.attributes);
    this.st(
      `INSERT INTO workflows (key, type, id, status, step, states, in_state_since, created_at,
         updated_at, error_type, error_code, error_message, needs_review, attributes)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (key) DO UPDATE SET status = excluded.status, step = excluded.step,
         states = excluded.states, in_state_since = excluded.in_state_since,
         created_at = excluded.created_at, updated_at = excluded.updated_at,
         error_type = excluded.error_type, error_code = excluded.error_code,
         error_message = excluded.error_message, needs_review = excluded.needs_review,
         attributes = excluded.attributes`,
    ).run(
      key,
      s.type,
      s.id,
      s.status,
      s.step,
      states,
      s.inStateSince,
      s.createdAt,
      s.updatedAt,
      s.error?.type ?? null,
      s.error?.code ?? null,
      s.error?.message ?? null,
      s.needsReview ? 1 : 0,
      attributes,
    );
    if (!old || old.states !== states || old.in_state_since !== s.inStateSince) {
      this.st('DELETE FROM wstates WHERE wkey = ?').run(key);
      const ins = this.st(
        'INSERT OR IGNORE INTO wstates (wkey, path, in_state_since, updated_at) VALUES (?, ?, ?, ?)',
      );
      for (const p of s.paths) {
        for (const x of [p, ...ancestors(p)]) ins.run(key, x, s.inStateSince, s.updatedAt);
      }
    } else {
      this.st('UPDATE wstates SET updated_at = ? WHERE wkey = ?').run(s.updatedAt, key);
    }
    if (!old || old.attributes !== attributes) {
      this.st('DELETE FROM wattrs WHERE wkey = ?').run(key);
      const ins = this.st(
        'INSERT INTO wattrs (wkey, name, value, in_state_since, updated_at) VALUES (?, ?, ?, ?, ?)',
      );
      for (const [k, v] of Object.entries(s.attributes)) {
        ins.run(key, k, attributeText(v), s.inStateSince, s.updatedAt);
      }
    } else if (attributes !== '{}') {
      this.st('UPDATE wattrs SET in_state_since = ?, updated_at = ? WHERE wkey = ?').run(
        s.inStateSince,
        s.updatedAt,
        key,
      );
    }
    if (!old || old.status !== s.status || old.states !== states) {
      if (old) this.count(old.type, old.status, JSON.parse(old.states) as string[], -1);
      this.count(s.type, s.status, s.paths, +1);
    }
    if (s.nodes) this.replaceNodes(key, s);
    if (s.nodeChanges) this.applyNodeChanges(key, s, s.nodeChanges);
    return true;
  }

  private deleteNodes(key: string): void {
    for (const t of ['nodes', 'nhist', 'nmeta'])
      this.st(`DELETE FROM ${t} WHERE wkey = ?`).run(key);
  }

  /** A tree's whole node table (rebuild from a record, or a reset): replaces what was indexed. */
  private replaceNodes(key: string, s: WorkflowState): void {
    this.deleteNodes(key);
    const ins = this.st(
      `INSERT INTO nodes (wkey, node_id, type, id, seq, name, queue, status, status_since, attempt, run)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    const hist = this.st(
      'INSERT OR IGNORE INTO nhist (wkey, node_id, status, at) VALUES (?, ?, ?, ?)',
    );
    const meta = this.st(
      'INSERT OR REPLACE INTO nmeta (wkey, node_id, name, value) VALUES (?, ?, ?, ?)',
    );
    for (const n of s.nodes ?? []) {
      ins.run(
        key,
        n.nodeId,
        s.type,
        s.id,
        n.seq,
        n.name,
        n.queue,
        n.status,
        n.statusSince,
        n.attempt,
        n.run,
      );
      for (const h of n.entered) hist.run(key, n.nodeId, h.status, h.at);
      for (const [k, v] of Object.entries(n.metadata ?? {}))
        meta.run(key, n.nodeId, k, JSON.stringify(v));
    }
  }

  /** One step's node changes, in order: creations insert, the others move the status. */
  private applyNodeChanges(key: string, s: WorkflowState, changes: NodeChangeRow[]): void {
    const ins = this.st(
      `INSERT OR REPLACE INTO nodes (wkey, node_id, type, id, seq, name, queue, status, status_since, attempt, run)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 1)`,
    );
    const move = this.st(
      `UPDATE nodes SET status = ?, status_since = ?,
         attempt = CASE WHEN ? IS NOT NULL THEN ? WHEN ? IS NOT NULL THEN 0 ELSE attempt END,
         run = COALESCE(?, run)
       WHERE wkey = ? AND node_id = ?`,
    );
    const hist = this.st(
      'INSERT OR IGNORE INTO nhist (wkey, node_id, status, at) VALUES (?, ?, ?, ?)',
    );
    const meta = this.st(
      'INSERT OR REPLACE INTO nmeta (wkey, node_id, name, value) VALUES (?, ?, ?, ?)',
    );
    for (const c of changes) {
      if (c.from === null) {
        const seq = Number(/^n(\d+)$/.exec(c.nodeId)?.[1] ?? 0);
        ins.run(key, c.nodeId, s.type, s.id, seq, c.name, c.queue ?? '', c.to, c.at);
        for (const [k, v] of Object.entries(c.metadata ?? {}))
          meta.run(key, c.nodeId, k, JSON.stringify(v));
      } else {
        const attempt = c.attempt ?? null;
        const run = c.run ?? null;
        move.run(c.to, c.at, attempt, attempt, run, run, key, c.nodeId);
      }
      hist.run(key, c.nodeId, c.to, c.at);
    }
  }

  /** Answer a validated node search (ACTIVITY-TREES §2.9.11, `<prefix>.search.nodes`). */
  searchNodes(q: NodeSearchQuery): { results: NodeSearchResult[]; next: string | null } {
    const where: string[] = [];
    const args: unknown[] = [];
    const add = (sql: string, ...v: unknown[]) => {
      where.push(sql);
      args.push(...v);
    };
    const anyOf = (col: string, xs: string[] | undefined) => {
      if (xs) add(`${col} IN (${xs.map(() => '?').join(', ')})`, ...xs);
    };
    if (q.type !== undefined) add('n.type = ?', q.type);
    if (q.id !== undefined) add('n.id = ?', q.id);
    anyOf('n.status', q.status);
    anyOf('n.name', q.name);
    anyOf('n.queue', q.queue);
    if (q.pastStatus) {
      const h = [
        'h.wkey = n.wkey',
        'h.node_id = n.node_id',
        `h.status IN (${q.pastStatus.map(() => '?').join(', ')})`,
      ];
      const hargs: unknown[] = [...q.pastStatus];
      if (q.since !== undefined) {
        h.push('h.at >= ?');
        hargs.push(q.since);
      }
      if (q.until !== undefined) {
        h.push('h.at < ?');
        hargs.push(q.until);
      }
      add(`EXISTS (SELECT 1 FROM nhist h WHERE ${h.join(' AND ')})`, ...hargs);
    } else {
      if (q.since !== undefined) add('n.status_since >= ?', q.since);
      if (q.until !== undefined) add('n.status_since < ?', q.until);
    }
    for (const [k, v] of q.metadata)
      add(
        'EXISTS (SELECT 1 FROM nmeta m WHERE m.wkey = n.wkey AND m.node_id = n.node_id AND m.name = ? AND m.value = ?)',
        k,
        v,
      );
    if (q.after)
      add('(n.status_since, n.wkey, n.seq) < (?, ?, ?)', q.after.since, q.after.key, q.after.seq);
    const sql =
      'SELECT n.* FROM nodes n' +
      (where.length ? ` WHERE ${where.join(' AND ')}` : '') +
      ' ORDER BY n.status_since DESC, n.wkey DESC, n.seq DESC LIMIT ?';
    const rows = this.st(sql).all(...args, q.limit + 1) as {
      wkey: string;
      node_id: string;
      type: string;
      id: string;
      seq: number;
      name: string;
      queue: string;
      status: string;
      status_since: number;
      attempt: number;
      run: number;
    }[];
    const more = rows.length > q.limit;
    if (more) rows.length = q.limit;
    const last = rows[rows.length - 1];
    return {
      results: rows.map((r) => ({
        type: r.type,
        id: r.id,
        nodeId: r.node_id,
        name: r.name,
        queue: r.queue,
        status: r.status,
        statusSince: iso(r.status_since),
        attempt: r.attempt,
        run: r.run,
      })),
      next: more && last ? encodeNodeCursor(q, last.status_since, last.wkey, last.seq) : null,
    };
  }

  private count(type: string, status: string, paths: string[], d: number): void {
    const bump = (table: 'counts' | 'totals', cols: string, values: unknown[]) =>
      this.st(
        `INSERT INTO ${table} (${cols}, n) VALUES (${values.map(() => '?').join(', ')}, ?)
         ON CONFLICT DO UPDATE SET n = n + excluded.n`,
      ).run(...values, d);
    bump('totals', 'type, status', [type, status]);
    for (const p of new Set(paths)) bump('counts', 'type, status, path', [type, status, p]);
  }

  /** Answer a validated search. */
  search(q: SearchQuery): SearchReply {
    const { sql, args } = searchSql(q);
    const rows = this.st(sql).all(...args) as (StoredRow & { sort_value: number })[];
    const more = rows.length > q.limit;
    if (more) rows.length = q.limit;
    const last = rows[rows.length - 1];
    const counts = this.st(
      'SELECT status, count(*) AS n FROM nodes WHERE wkey = ? GROUP BY status',
    );
    return {
      workflows: rows.map((r) => {
        const w = toWorkflow(r);
        const c = counts.all(r.key) as { status: string; n: number }[];
        if (c.length > 0) w.nodeCounts = Object.fromEntries(c.map((x) => [x.status, x.n]));
        return w;
      }),
      cursor: more && last ? encodeCursor(q, last.sort_value, last.key) : null,
    };
  }

  /** The query plan SQLite picks for a search (for tests and the benchmark). */
  explain(q: SearchQuery): string {
    const { sql, args } = searchSql(q);
    return (this.db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...args) as { detail: string }[])
      .map((r) => r.detail)
      .join('; ');
  }
  /** Counts grouped by type, status and state (optionally of one type). */
  counts(o: { type?: string } = {}): SearchCountsReply {
    const filter = o.type === undefined ? '' : ' WHERE type = ?';
    const args = o.type === undefined ? [] : [o.type];
    const totals = this.st(`SELECT type, status, n FROM totals${filter}`).all(...args) as {
      type: string;
      status: WorkflowStatus;
      n: number;
    }[];
    const reply: SearchCountsReply = { total: 0, byType: {}, byStatus: {}, byState: [] };
    for (const t of totals) {
      if (t.n <= 0) continue;
      reply.total += t.n;
      reply.byType[t.type] = (reply.byType[t.type] ?? 0) + t.n;
      reply.byStatus[t.status] = (reply.byStatus[t.status] ?? 0) + t.n;
    }
    const rows = this.st(
      `SELECT type, status, path, n FROM counts${filter} ORDER BY type, path, status`,
    ).all(...args) as { type: string; status: WorkflowStatus; path: string; n: number }[];
    for (const r of rows) {
      if (r.n > 0)
        reply.byState.push({ type: r.type, status: r.status, state: r.path, count: r.n });
    }
    return reply;
  }

  /**
   * Remove finished workflows (completed, failed, canceled) whose last step is older than
   * `before` (epoch ms), at most `limit` per call: the engines' records of those expire after
   * `finishedRetentionMs`, and a replica rebuilt later would not have them. Returns how many went.
   */
  prune(before: number, limit = 10_000): number {
    let n = 0;
    this.db.transaction(() => {
      const rows = this.st(
        `SELECT key, type, status, states FROM workflows
         WHERE status IN ('completed', 'failed', 'canceled') AND updated_at < ? LIMIT ?`,
      ).all(before, limit) as Pick<StoredRow, 'key' | 'type' | 'status' | 'states'>[];
      for (const r of rows) {
        this.st('DELETE FROM workflows WHERE key = ?').run(r.key);
        this.st('DELETE FROM wstates WHERE wkey = ?').run(r.key);
        this.st('DELETE FROM wattrs WHERE wkey = ?').run(r.key);
        this.deleteNodes(r.key);
        this.count(r.type, r.status, JSON.parse(r.states) as string[], -1);
        n++;
      }
    })();
    return n;
  }

  /** Number of workflows indexed. */
  size(): number {
    return (this.st('SELECT count(*) AS n FROM workflows').get() as { n: number }).n;
  }

  /** Refresh the planner's statistics (after a large load). */
  analyze(): void {
    this.db.exec('ANALYZE');
  }

  /** Write the WAL back into the main file (for size measurements and backups). */
  checkpoint(): void {
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.statements.clear();
    this.db.close();
  }
}

/** SQL and parameters of a search; every value is a parameter. */
function searchSql(q: SearchQuery): { sql: string; args: unknown[] } {
  // Driving table, so that the filter most likely to be selective is an index range already in
  // sort order: the state rows for a state (or state prefix), the attribute rows for an
  // attribute, the workflows otherwise.
  const col = q.sort === 'updatedAt' ? 'updated_at' : 'in_state_since';
  const [first, ...attributes] = q.attributes;
  const d = q.state ? 's' : first ? 'a' : 'w';
  const k = { s: 's.wkey', a: 'a.wkey', w: 'w.key' }[d];
  const sortCol = `${d}.${col}`;
  const where: string[] = [];
  const args: unknown[] = [];
  const add = (sql: string, ...v: unknown[]) => {
    where.push(sql);
    args.push(...v);
  };
  if (q.state) add('s.path = ?', 'exact' in q.state ? q.state.exact : `${q.state.prefix}*`);
  if (d === 'a' && first) add('a.name = ? AND a.value = ?', ...first);
  if (q.type !== undefined) add('w.type = ?', q.type);
  if (q.status !== undefined) add('w.status = ?', q.status);
  const range = (c: string, r: Range | undefined) => {
    if (r?.after !== undefined) add(`${c} >= ?`, r.after);
    if (r?.before !== undefined) add(`${c} < ?`, r.before);
  };
  range(`${d}.in_state_since`, q.inStateSince);
  range(`${d}.updated_at`, q.updatedAt);
  range('w.created_at', q.createdAt);
  if (q.errorType !== undefined) add('w.error_type = ?', q.errorType);
  if (q.errorCode !== undefined) add('w.error_code = ?', q.errorCode);
  if (q.idPrefix !== undefined) add('w.id >= ? AND w.id < ?', q.idPrefix, prefixEnd(q.idPrefix));
  if (q.needsReview !== undefined) add('w.needs_review = ?', q.needsReview ? 1 : 0);
  // Further attributes: one primary-key probe per candidate row (an IN list would be built
  // from every workflow with that value, 200k rows for a 5-valued attribute at 1M).
  for (const [name, value] of d === 'a' ? attributes : q.attributes) {
    add(
      `EXISTS (SELECT 1 FROM wattrs x WHERE x.wkey = ${k} AND x.name = ? AND x.value = ?)`,
      name,
      value,
    );
  }
  // Tree nodes: each filter an EXISTS probe of the workflow's nodes (by its primary key prefix).
  const nf = q.node;
  if (nf) {
    const list = (xs: string[]) => xs.map(() => '?').join(', ');
    const window = (col: string): [string, unknown[]] => {
      const sql: string[] = [];
      const a: unknown[] = [];
      if (nf.since !== undefined) {
        sql.push(`${col} >= ?`);
        a.push(nf.since);
      }
      if (nf.until !== undefined) {
        sql.push(`${col} < ?`);
        a.push(nf.until);
      }
      return [sql.map((x) => ` AND ${x}`).join(''), a];
    };
    if (nf.status) {
      const [w, a] = nf.pastStatus ? ['', []] : window('n.status_since');
      add(
        `EXISTS (SELECT 1 FROM nodes n WHERE n.wkey = ${k} AND n.status IN (${list(nf.status)})${w})`,
        ...nf.status,
        ...a,
      );
    }
    if (nf.pastStatus) {
      const [w, a] = window('h.at');
      add(
        `EXISTS (SELECT 1 FROM nhist h WHERE h.wkey = ${k} AND h.status IN (${list(nf.pastStatus)})${w})`,
        ...nf.pastStatus,
        ...a,
      );
    }
    if (nf.name)
      add(
        `EXISTS (SELECT 1 FROM nodes n WHERE n.wkey = ${k} AND n.name IN (${list(nf.name)}))`,
        ...nf.name,
      );
    if (nf.queue)
      add(
        `EXISTS (SELECT 1 FROM nodes n WHERE n.wkey = ${k} AND n.queue IN (${list(nf.queue)}))`,
        ...nf.queue,
      );
  }
  const dir = q.order === 'asc' ? 'ASC' : 'DESC';
  if (q.after) {
    add(`(${sortCol}, ${k}) ${q.order === 'asc' ? '>' : '<'} (?, ?)`, q.after.value, q.after.key);
  }
  const from = {
    s: 'wstates s JOIN workflows w ON w.key = s.wkey',
    a: 'wattrs a JOIN workflows w ON w.key = a.wkey',
    w: 'workflows w',
  }[d];
  const sql =
    `SELECT w.*, ${sortCol} AS sort_value FROM ${from}` +
    (where.length ? ` WHERE ${where.join(' AND ')}` : '') +
    ` ORDER BY ${sortCol} ${dir}, ${k} ${dir} LIMIT ?`;
  return { sql, args: [...args, q.limit + 1] };
}

function toWorkflow(r: StoredRow): SearchReply['workflows'][number] {
  return {
    type: r.type,
    id: r.id,
    status: r.status,
    states: JSON.parse(r.states) as string[],
    inStateSince: iso(r.in_state_since),
    createdAt: iso(r.created_at),
    updatedAt: iso(r.updated_at),
    step: r.step,
    needsReview: r.needs_review === 1,
    attributes: JSON.parse(r.attributes) as Record<string, AttributeValue>,
    ...(r.error_type !== null
      ? {
          error: {
            type: r.error_type,
            code: r.error_code ?? '',
            ...(r.error_message !== null ? { message: r.error_message } : {}),
          },
        }
      : {}),
  };
}
