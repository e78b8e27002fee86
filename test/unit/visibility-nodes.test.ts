/**
 * Node search on the visibility index (`<prefix>.search.nodes`, ACTIVITY-TREES §2.9.11): trees
 * driven by the real reducer, their `nodes` events fed to the index as journal step entries;
 * the index must agree with the trees themselves (incrementally, and rebuilt from records), for
 * every filter, across pages; bad filters are refused naming the field.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { JournalEntry, WorkflowRecord } from '../../src/contracts/wire.js';
import { BadRequestError } from '../../src/errors.js';
import {
  stateOfRecord,
  VisibilityIndex,
  type JournalItem,
} from '../../src/visibility/projection.js';
import { parseNodeSearch, parseSearch } from '../../src/visibility/query.js';
import {
  initTree,
  keyOf,
  reduce,
  type Node,
  type Tree,
  type TreeEvent,
} from '../../actors/activity-tree/reduce.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');
type Step = Extract<JournalEntry, { kind: 'step' }>;

/** A tree workflow driven by the reducer; each event is a journal step entry with its changes. */
class Sim {
  t: Tree;
  n = 0;
  entries: Step[] = [];
  constructor(
    readonly type: string,
    readonly id: string,
    input: unknown = {},
  ) {
    const t = initTree(input);
    if (!('nodes' in t)) throw new Error('bad input');
    this.t = t;
  }
  apply(e: { type: string } & Record<string, unknown>, at = T0 + this.n * 1000): this {
    const r = reduce(this.t, { ...e, $at: at } as TreeEvent);
    if (r.reject) throw new Error(r.reject.message);
    this.t = r.tree;
    this.n++;
    this.entries.push({
      v: 1,
      kind: 'step',
      workflowType: this.type,
      id: this.id,
      version: 1,
      step: this.n,
      at,
      engine: 'test',
      cause: 'signal',
      event: { type: e.type },
      to: { value: 'open', paths: ['open'] },
      status: 'running',
      stateSince: T0,
      snapshot: {},
      effects: [],
      createdAt: T0,
      emitted: r.commands.flatMap((c) => (c.kind === 'emit' ? [c.event] : [])),
    });
    return this;
  }
  node(name: string): Node {
    return Object.values(this.t.nodes).find((n) => n.name === name)!;
  }
  done(name: string, decisions?: unknown[]): this {
    return this.apply({ type: 'jetflow.task.done', key: keyOf(this.node(name)), decisions });
  }
  fail(name: string): this {
    const n = this.node(name);
    return this.apply({
      type: 'jetflow.task.failed',
      key: keyOf(n),
      error: { type: 'BankDown', message: 'down' },
      attempt: 3,
    });
  }
  record(): WorkflowRecord {
    return {
      v: 1,
      type: this.type,
      id: this.id,
      version: 1,
      status: 'running',
      snapshot: { status: 'active', value: 'open', context: this.t },
      step: this.n,
      lastSeq: this.n,
      outbox: [],
      timers: {},
      tasks: {},
      shard: 0,
      createdAt: T0,
      updatedAt: T0 + this.n * 1000,
    };
  }
}

let seq = 0;
const items = (entries: JournalEntry[]): JournalItem[] =>
  entries.map((entry) => ({ seq: ++seq, entry }));
let index: VisibilityIndex;
beforeEach(() => {
  index = VisibilityIndex.open(':memory:');
  seq = 0;
});
afterEach(() => index.close());

const find = (body: Record<string, unknown> = {}) => index.searchNodes(parseNodeSearch(body));
const keys = (body: Record<string, unknown> = {}) => {
  const out: string[] = [];
  let cursor: string | null = null;
  do {
    const r = find({ ...body, limit: 2, ...(cursor ? { cursor } : {}) });
    out.push(...r.results.map((x) => `${x.id}/${x.nodeId}`));
    cursor = r.next;
  } while (cursor);
  return out.sort();
};

/** Two trees: w1 with a parked payment (blocking later signals) and a fan-out; w2 other queue. */
function trees() {
  const w1 = new Sim('activityTree', 'w1', { signalQueue: 'bank' })
    .apply({ type: 'signal', name: 'pay', metadata: { merchant: 'm-1' } })
    .apply({ type: 'signal', name: 'later', queue: 'later' });
  w1.fail('pay');
  const w2 = new Sim('import', 'w2', { signalQueue: 'decider' }).apply({
    type: 'signal',
    name: 'fan',
  });
  w2.done('fan', [
    { name: 'leaf', mode: 'non_blocking', queue: 'leaves', metadata: { merchant: 'm-1' } },
    { name: 'leaf', mode: 'non_blocking', queue: 'leaves' },
    { name: 'leaf', mode: 'non_blocking', queue: 'leaves' },
  ]);
  w2.apply({ type: 'jetflow.task.done', key: 'n2:1' });
  return [w1, w2];
}

/** What the trees themselves say matches `f`, as `<id>/<nodeId>`. */
const truth = (sims: Sim[], f: (n: Node, s: Sim) => boolean) =>
  sims
    .flatMap((s) => Object.values(s.t.nodes).flatMap((n) => (f(n, s) ? [`${s.id}/${n.id}`] : [])))
    .sort();

describe('visibility index: node search', () => {
  it('follows the trees step by step: every filter agrees with the trees, across pages', () => {
    const sims = trees();
    index.apply(items(sims.flatMap((s) => s.entries)));
    expect(keys()).toEqual(truth(sims, () => true));
    expect(keys({ status: 'errored' })).toEqual(['w1/n1']);
    expect(keys({ status: ['ready', 'running'] })).toEqual(
      truth(sims, (n) => n.status === 'ready' || n.status === 'running'),
    );
    expect(keys({ queue: 'leaves' })).toEqual(['w2/n2', 'w2/n3', 'w2/n4']);
    expect(keys({ name: 'leaf', status: 'complete' })).toEqual(['w2/n2']);
    expect(keys({ type: 'import', status: 'running' })).toEqual(['w2/n3', 'w2/n4']);
    expect(keys({ id: 'w1' })).toEqual(['w1/n1', 'w1/n2']);
    expect(keys({ metadata: { merchant: 'm-1' } })).toEqual(['w1/n1', 'w2/n2']);
    // pastStatus: entered at any time, or inside [since, until).
    expect(keys({ pastStatus: 'running' })).toEqual(
      truth(sims, (n) => n.history.some((h) => h.to === 'running')),
    );
    const errAt = sims[0]!.node('pay').statusSince;
    expect(keys({ pastStatus: 'errored', since: errAt, until: errAt + 1 })).toEqual(['w1/n1']);
    expect(keys({ pastStatus: 'errored', until: new Date(errAt).toISOString() })).toEqual([]);
    // Without pastStatus, since/until bound the time in the current status.
    expect(keys({ status: 'errored', until: errAt + 1 })).toEqual(['w1/n1']);
    expect(keys({ status: 'errored', until: errAt })).toEqual([]);
    const r = find({ status: 'errored' }).results[0];
    expect(r).toEqual({
      type: 'activityTree',
      id: 'w1',
      nodeId: 'n1',
      name: 'pay',
      queue: 'bank',
      status: 'errored',
      statusSince: new Date(errAt).toISOString(),
      attempt: 3,
      run: 1,
    });
  });

  it('a retry verb moves run and attempt; stale and repeated entries change nothing; a rebuild from records gives the same answers', () => {
    const sims = trees();
    const w1 = sims[0]!;
    w1.apply({ type: 'jetflow.admin.retry', nodeId: 'n1', by: 'ops' });
    index.apply(items(sims.flatMap((s) => s.entries)));
    index.apply(items(sims.flatMap((s) => s.entries))); // again: stale
    expect(find({ id: 'w1', name: 'pay' }).results[0]).toMatchObject({
      status: 'running',
      run: 2,
      attempt: 0,
    });
    const all = (i: VisibilityIndex) => {
      const out: unknown[] = [];
      for (const st of ['ready', 'running', 'errored', 'complete', 'awaitingChildren'])
        out.push(i.searchNodes(parseNodeSearch({ status: st, limit: 1000 })).results);
      out.push(i.searchNodes(parseNodeSearch({ pastStatus: 'errored' })).results);
      out.push(i.searchNodes(parseNodeSearch({ metadata: { merchant: 'm-1' } })).results);
      return out;
    };
    const rebuilt = VisibilityIndex.open(':memory:');
    try {
      rebuilt.load(sims.map((s) => stateOfRecord(s.record())));
      expect(all(rebuilt)).toEqual(all(index));
    } finally {
      rebuilt.close();
    }
    // Finished workflows pruned from the index take their nodes along.
    index.apply(items([{ ...w1.entries.at(-1)!, step: w1.n + 1, status: 'completed', at: T0 }]));
    index.prune(T0 + 1);
    expect(keys({ id: 'w1' })).toEqual([]);
  });

  it("wf.search's node filters find the workflows, each filter met by any node; nodeCounts per tree", () => {
    const sims = trees();
    index.apply(items(sims.flatMap((s) => s.entries)));
    const wf = (node: Record<string, unknown>) =>
      index
        .search(parseSearch({ node }))
        .workflows.map((w) => w.id)
        .sort();
    expect(wf({ status: 'errored' })).toEqual(['w1']);
    expect(wf({ status: ['running', 'errored'] })).toEqual(['w1', 'w2']);
    expect(wf({ pastStatus: 'complete' })).toEqual(['w2']);
    expect(wf({ queue: 'leaves', name: 'leaf' })).toEqual(['w2']);
    // Different nodes may meet different filters: w1 has an errored `pay` and a ready `later`.
    expect(wf({ status: 'ready', name: 'pay' })).toEqual(['w1']);
    const errAt = sims[0]!.node('pay').statusSince;
    expect(wf({ status: 'errored', until: errAt + 1 })).toEqual(['w1']);
    expect(wf({ status: 'errored', until: errAt })).toEqual([]);
    expect(wf({ pastStatus: 'errored', since: errAt + 1 })).toEqual([]);
    const w = index.search(parseSearch({ node: { status: 'errored' } })).workflows[0]!;
    expect(w.nodeCounts).toEqual({ errored: 1, ready: 1 });
    expect(() => parseSearch({ node: { since: 1 } })).toThrow(BadRequestError);
    expect(() => parseSearch({ node: { status: 'stuck' } })).toThrow(BadRequestError);
    expect(() => parseSearch({ node: { nodeId: 'n1' } })).toThrow(BadRequestError);
  });

  it('bad filters are refused naming the field; a cursor belongs to its search', () => {
    const bad = (body: unknown, field: string) => {
      try {
        parseNodeSearch(body);
      } catch (err) {
        expect(err).toBeInstanceOf(BadRequestError);
        expect((err as BadRequestError).details).toMatchObject({ field });
        return;
      }
      throw new Error(`accepted ${JSON.stringify(body)}`);
    };
    bad({ status: 'stuck' }, 'status');
    bad({ pastStatus: ['errored', 'x'] }, 'pastStatus[1]');
    bad({ queue: 'a b' }, 'queue');
    bad({ since: 'yesterday' }, 'since');
    bad({ metadata: { k: { x: 1 } } }, 'metadata.k');
    bad({ limit: 0 }, 'limit');
    bad({ nodeStatus: 'errored' }, 'nodeStatus');
    bad({ cursor: 'nope!' }, 'cursor');
    const sims = trees();
    index.apply(items(sims.flatMap((s) => s.entries)));
    const next = find({ limit: 1 }).next!;
    bad({ status: 'errored', cursor: next }, 'cursor');
  });
});
