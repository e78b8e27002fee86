/**
 * The visibility index's SQLite layer and request validation, on synthetic journal entries:
 * every filter, both sorts in both orders, keyset pages, idempotence, counts, rebuild from
 * records, resume position, and every kind of bad input.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { JournalEntry, WorkflowRecord, WorkflowStatus } from '../../src/contracts/wire.js';
import type { SearchRequest } from '../../src/contracts/search.js';
import { BadRequestError } from '../../src/errors.js';
import {
  stateOfRecord,
  VisibilityIndex,
  type JournalItem,
} from '../../src/visibility/projection.js';
import { parseCounts, parseSearch } from '../../src/visibility/query.js';
import { statePaths } from '../../src/visibility/paths.js';

const T0 = Date.parse('2026-01-01T00:00:00Z');
const MIN = 60_000;

type Step = Extract<JournalEntry, { kind: 'step' }>;

function step(
  type: string,
  id: string,
  n: number,
  o: {
    at?: number;
    paths?: string[];
    status?: WorkflowStatus;
    stateSince?: number;
    attributes?: Record<string, string | number | boolean | null>;
    error?: { type: string; code: string };
    createdAt?: number;
  } = {},
): Step {
  const at = o.at ?? T0 + n * MIN;
  const paths = o.paths ?? ['idle'];
  return {
    v: 1,
    kind: 'step',
    workflowType: type,
    id,
    version: 1,
    step: n,
    at,
    engine: 'test',
    cause: n === 0 ? 'start' : 'signal',
    event: { type: 'E' },
    to: { value: paths[0], paths },
    status: o.status ?? 'running',
    stateSince: o.stateSince ?? at,
    snapshot: {},
    effects: [],
    attributes: o.attributes ?? {},
    createdAt: o.createdAt ?? T0,
    ...(o.error
      ? { error: { ...o.error, message: 'boom', retryable: false } as Step['error'] }
      : {}),
  };
}

let seq = 0;
const items = (...entries: (JournalEntry | undefined)[]): JournalItem[] =>
  entries.map((entry) => ({ seq: ++seq, entry }));

let dir: string;
let index: VisibilityIndex;
const search = (body: SearchRequest | Record<string, unknown> = {}) =>
  index.search(parseSearch(body));
const ids = (body: SearchRequest | Record<string, unknown> = {}) =>
  search(body).workflows.map((w) => `${w.type}/${w.id}`);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'jetflow-vis-unit-'));
  index = VisibilityIndex.open(join(dir, 'v.db'));
  seq = 0;
});
afterEach(() => {
  index.close();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * A small fleet:
 * order/a: running in shipping.packing since T0+10m, merchant m1, updated T0+10m
 * order/b: running in shipping.label since T0+5m (stayed there; updated T0+30m), merchant m2
 * order/c: failed (PaymentDeclined/machine_error) in payment, merchant m1, updated T0+20m
 * refund/a: completed in done, priority 1, updated T0+40m, created T0+1h? (created later)
 * order/p: parallel in par.x.one and par.y.two since T0+15m, updated T0+15m
 */
function fleet(): void {
  index.apply(
    items(
      step('order', 'a', 0, { at: T0, paths: ['cart'], attributes: { merchant: 'm1' } }),
      step('order', 'b', 0, { at: T0, paths: ['cart'], attributes: { merchant: 'm2' } }),
      step('order', 'c', 0, { at: T0, paths: ['cart'], attributes: { merchant: 'm1' } }),
      step('order', 'b', 1, {
        at: T0 + 5 * MIN,
        paths: ['shipping.label'],
        attributes: { merchant: 'm2' },
      }),
      step('order', 'a', 1, {
        at: T0 + 10 * MIN,
        paths: ['shipping.packing'],
        attributes: { merchant: 'm1' },
      }),
      step('order', 'p', 0, { at: T0 + 15 * MIN, paths: ['par.x.one', 'par.y.two'] }),
      step('order', 'c', 1, {
        at: T0 + 20 * MIN,
        paths: ['payment'],
        status: 'failed',
        attributes: { merchant: 'm1' },
        error: { type: 'PaymentDeclined', code: 'machine_error' },
      }),
      // b: a step that stays in shipping.label (context changed): stateSince stays T0+5m.
      step('order', 'b', 2, {
        at: T0 + 30 * MIN,
        paths: ['shipping.label'],
        stateSince: T0 + 5 * MIN,
        attributes: { merchant: 'm2' },
      }),
      step('refund', 'a', 0, {
        at: T0 + 40 * MIN,
        createdAt: T0 + 40 * MIN,
        paths: ['done'],
        status: 'completed',
        attributes: { priority: 1, vip: true, note: null },
      }),
    ),
  );
}

describe('statePaths', () => {
  it('derives leaf paths of atomic, compound and parallel values', () => {
    expect(statePaths('idle')).toEqual(['idle']);
    expect(statePaths({ shipping: 'packing' })).toEqual(['shipping.packing']);
    expect(statePaths({ p: { a: 'x', b: { c: 'y' } } })).toEqual(['p.a.x', 'p.b.c.y']);
    expect(statePaths({ a: {} })).toEqual(['a']);
    expect(statePaths(null)).toEqual([]);
  });
});

describe('projection', () => {
  it('applies step entries and returns the row as the search reply shape', () => {
    fleet();
    const r = search({ type: 'order', idPrefix: 'b' });
    expect(r.cursor).toBeNull();
    expect(r.workflows).toEqual([
      {
        type: 'order',
        id: 'b',
        status: 'running',
        states: ['shipping.label'],
        inStateSince: new Date(T0 + 5 * MIN).toISOString(),
        createdAt: new Date(T0).toISOString(),
        updatedAt: new Date(T0 + 30 * MIN).toISOString(),
        step: 2,
        needsReview: false,
        attributes: { merchant: 'm2' },
      },
    ]);
    expect(search({ status: 'failed' }).workflows[0]!.error).toEqual({
      type: 'PaymentDeclined',
      code: 'machine_error',
      message: 'boom',
    });
  });

  it('ignores entries at or below the indexed step, other kinds and undecodable ones', () => {
    fleet();
    const before = search({ type: 'order', idPrefix: 'a' });
    const r = index.apply(
      items(
        // a redelivery of step 1 and an old step 0 of order/a
        step('order', 'a', 1, { at: T0 + 99 * MIN, paths: ['nowhere'] }),
        step('order', 'a', 0, { at: T0 + 98 * MIN, paths: ['nowhere'] }),
        {
          v: 1,
          kind: 'rejected',
          workflowType: 'order',
          id: 'a',
          version: 1,
          step: 1,
          at: T0 + 97 * MIN,
          engine: 'test',
          event: { type: 'X' },
          error: { type: 'E', code: 'event_not_accepted', message: 'no', retryable: false },
          accepts: [],
        },
        undefined,
      ),
    );
    expect(r).toEqual({ applied: 0, stale: 2, other: 2 });
    expect(search({ type: 'order', idPrefix: 'a' })).toEqual(before);
    expect(index.position().seq).toBe(seq);
  });

  it('applies a later step even when steps in between are missing', () => {
    fleet();
    index.apply(items(step('order', 'a', 7, { at: T0 + 50 * MIN, paths: ['closed'] })));
    expect(search({ state: 'closed' }).workflows.map((w) => w.step)).toEqual([7]);
    expect(ids({ state: 'shipping.packing' })).toEqual([]);
  });

  it('remembers the journal position across a reopen', () => {
    fleet();
    index.reset({ seq: 0, stream: 'S1' });
    fleet();
    index.finishRebuild();
    const pos = index.position();
    index.close();
    index = VisibilityIndex.open(join(dir, 'v.db'));
    expect(index.position()).toEqual(pos);
    expect(pos.stream).toBe('S1');
    expect(index.rebuilding).toBe(false);
    expect(index.size()).toBe(5);
  });

  it('rebuilds from records: paths from the snapshot, stateSince falling back to updatedAt', () => {
    const record = {
      v: 1,
      type: 'order',
      id: 'r',
      version: 1,
      status: 'running',
      snapshot: { value: { shipping: 'packing' }, context: {} },
      step: 3,
      lastSeq: 9,
      timers: {},
      shard: 0,
      tasks: {},
      outbox: [],
      createdAt: T0,
      updatedAt: T0 + 7 * MIN,
      attributes: { merchant: 'm9' },
    } as WorkflowRecord;
    index.reset({ seq: 5, stream: 'S' });
    expect(index.rebuilding).toBe(true);
    expect(index.load([stateOfRecord(record)])).toBe(1);
    index.finishRebuild();
    expect(index.rebuilding).toBe(false);
    const w = search({ attributes: { merchant: 'm9' } }).workflows[0]!;
    expect(w).toMatchObject({
      states: ['shipping.packing'],
      step: 3,
      inStateSince: new Date(T0 + 7 * MIN).toISOString(),
    });
    // The journal entry for the step the record reflects changes nothing; the next one applies.
    expect(index.apply(items(step('order', 'r', 3, { paths: ['x'] }))).stale).toBe(1);
    expect(index.apply(items(step('order', 'r', 4, { paths: ['y'] }))).applied).toBe(1);
    expect(ids({ state: 'y' })).toEqual(['order/r']);
  });
});

describe('prune', () => {
  it('removes finished workflows older than the bound, with their counts', () => {
    fleet();
    // refund/a completed at T0+40m, order/c failed at T0+20m; running ones stay however old.
    expect(index.prune(T0 + 30 * MIN)).toBe(1);
    expect(ids({ status: 'failed' })).toEqual([]);
    expect(ids({ attributes: { merchant: 'm1' } })).toEqual(['order/a']);
    expect(index.counts().byStatus).toEqual({ running: 3, completed: 1 });
    expect(index.prune(T0 + 99 * MIN)).toBe(1);
    expect(index.counts().total).toBe(3);
    expect(index.size()).toBe(3);
  });
});

describe('filters', () => {
  beforeEach(fleet);

  it('type and status', () => {
    expect(ids({ type: 'refund' })).toEqual(['refund/a']);
    expect(ids({ status: 'failed' })).toEqual(['order/c']);
    expect(ids({ type: 'order', status: 'running' }).sort()).toEqual([
      'order/a',
      'order/b',
      'order/p',
    ]);
  });

  it('state: exact path, a path of a parallel state, and a prefix', () => {
    expect(ids({ state: 'shipping.packing' })).toEqual(['order/a']);
    expect(ids({ state: 'par.y.two' })).toEqual(['order/p']);
    expect(ids({ state: 'shipping.*' }).sort()).toEqual(['order/a', 'order/b']);
    // a prefix matching two paths of one workflow lists it once
    expect(ids({ state: 'par.*' })).toEqual(['order/p']);
    expect(ids({ state: 'shipping' })).toEqual([]);
  });

  it('inStateSince: before (longer than) and after, with ISO text or epoch ms', () => {
    expect(ids({ state: 'shipping.*', inStateSince: { before: T0 + 8 * MIN } })).toEqual([
      'order/b',
    ]);
    expect(
      ids({
        inStateSince: { after: new Date(T0 + 10 * MIN).toISOString(), before: T0 + 16 * MIN },
      }),
    ).toEqual(['order/p', 'order/a']);
    // exact state, driven by the state table
    expect(ids({ state: 'shipping.label', inStateSince: { before: T0 + 6 * MIN } })).toEqual([
      'order/b',
    ]);
    expect(ids({ state: 'shipping.label', inStateSince: { after: T0 + 6 * MIN } })).toEqual([]);
  });

  it('createdAt and updatedAt ranges', () => {
    expect(ids({ createdAt: { after: T0 + MIN } })).toEqual(['refund/a']);
    expect(ids({ updatedAt: { after: T0 + 20 * MIN, before: T0 + 40 * MIN } })).toEqual([
      'order/b',
      'order/c',
    ]);
  });

  it('errorType, errorCode, idPrefix, needsReview', () => {
    expect(ids({ errorType: 'PaymentDeclined' })).toEqual(['order/c']);
    expect(ids({ errorCode: 'machine_error' })).toEqual(['order/c']);
    expect(ids({ errorCode: 'timeout' })).toEqual([]);
    expect(ids({ idPrefix: 'a' }).sort()).toEqual(['order/a', 'refund/a']);
    expect(ids({ needsReview: true })).toEqual([]);
    expect(ids({ needsReview: false })).toHaveLength(5);
    // a step entry with an activity parked for review sets it; the next step clears it
    index.apply(
      items({ ...step('order', 'b', 3, { paths: ['shipping.label'] }), needsReview: true }),
    );
    expect(ids({ needsReview: true })).toEqual(['order/b']);
    expect(search({ needsReview: true }).workflows[0]!.needsReview).toBe(true);
    index.apply(items(step('order', 'b', 4, { paths: ['shipping.label'] })));
    expect(ids({ needsReview: true })).toEqual([]);
  });

  it('attributes: equality with the value type, several ANDed', () => {
    expect(ids({ attributes: { merchant: 'm1' } })).toEqual(['order/c', 'order/a']);
    expect(ids({ attributes: { merchant: 'm1' }, status: 'running' })).toEqual(['order/a']);
    expect(ids({ attributes: { priority: 1, vip: true } })).toEqual(['refund/a']);
    expect(ids({ attributes: { priority: '1' } })).toEqual([]);
    expect(ids({ attributes: { note: null } })).toEqual(['refund/a']);
    expect(ids({ attributes: { merchant: 'm1', priority: 1 } })).toEqual([]);
    expect(ids({ state: 'shipping.packing', attributes: { merchant: 'm1' } })).toEqual(['order/a']);
  });
});

describe('sort and pages', () => {
  beforeEach(fleet);

  it('updatedAt desc by default; inStateSince asc by default; either order on request', () => {
    expect(ids()).toEqual(['refund/a', 'order/b', 'order/c', 'order/p', 'order/a']);
    expect(ids({ order: 'asc' })).toEqual(['order/a', 'order/p', 'order/c', 'order/b', 'refund/a']);
    expect(ids({ sort: 'inStateSince' })).toEqual([
      'order/b',
      'order/a',
      'order/p',
      'order/c',
      'refund/a',
    ]);
    expect(ids({ sort: 'inStateSince', order: 'desc' })).toEqual([
      'refund/a',
      'order/c',
      'order/p',
      'order/a',
      'order/b',
    ]);
    expect(ids({ state: 'shipping.label', sort: 'updatedAt' })).toEqual(['order/b']);
  });

  it('keyset pages cover every row once, ties broken by type and id', () => {
    // 25 workflows updated at the same time: only the tiebreak orders them.
    const many = Array.from({ length: 25 }, (_, i) =>
      step('bulk', `w${String(i).padStart(2, '0')}`, 0, { at: T0, paths: ['s'] }),
    );
    index.apply(items(...many));
    for (const body of [
      { type: 'bulk' },
      { type: 'bulk', order: 'asc' },
      { state: 's', sort: 'inStateSince' },
      { state: 's', sort: 'updatedAt', order: 'desc' },
    ] as SearchRequest[]) {
      const seen: string[] = [];
      let cursor: string | null | undefined;
      let pages = 0;
      do {
        const r = search({ ...body, limit: 10, ...(cursor ? { cursor } : {}) });
        seen.push(...r.workflows.map((w) => w.id));
        cursor = r.cursor;
        pages++;
      } while (cursor);
      expect(pages).toBe(3);
      expect(new Set(seen).size).toBe(25);
      const sorted = [...seen].sort();
      expect(seen).toEqual(
        body.order === 'desc' || (!body.order && !body.sort) ? sorted.reverse() : sorted,
      );
    }
  });

  it('a page of exactly `limit` rows at the end has no cursor', () => {
    expect(search({ limit: 5 }).cursor).toBeNull();
    expect(search({ limit: 4 }).cursor).not.toBeNull();
  });
});

describe('counts', () => {
  it('groups by type, status and state; a parallel workflow counts once per path', () => {
    fleet();
    const c = index.counts();
    expect(c.total).toBe(5);
    expect(c.byType).toEqual({ order: 4, refund: 1 });
    expect(c.byStatus).toEqual({ running: 3, failed: 1, completed: 1 });
    expect(c.byState).toEqual([
      { type: 'order', status: 'running', state: 'par.x.one', count: 1 },
      { type: 'order', status: 'running', state: 'par.y.two', count: 1 },
      { type: 'order', status: 'failed', state: 'payment', count: 1 },
      { type: 'order', status: 'running', state: 'shipping.label', count: 1 },
      { type: 'order', status: 'running', state: 'shipping.packing', count: 1 },
      { type: 'refund', status: 'completed', state: 'done', count: 1 },
    ]);
    expect(index.counts({ type: 'refund' }).total).toBe(1);
    // moving on updates the counters (no entry left at zero)
    index.apply(items(step('order', 'a', 2, { paths: ['done'], status: 'completed' })));
    expect(index.counts().byState.find((g) => g.state === 'shipping.packing')).toBeUndefined();
    expect(index.counts().byStatus).toEqual({ running: 2, failed: 1, completed: 2 });
  });
});

describe('bad input', () => {
  const rejects = (body: unknown, pattern: RegExp) => {
    let err: unknown;
    try {
      parseSearch(body);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(BadRequestError);
    expect((err as BadRequestError).code).toBe('bad_request');
    expect((err as Error).message).toMatch(pattern);
  };

  it('rejects unknown filters, wrong types, limits out of range', () => {
    rejects([], /must be an object/);
    rejects('x', /must be an object/);
    rejects({ colour: 'red' }, /unknown search field "colour"/);
    rejects({ type: 5 }, /type must be/);
    rejects({ type: 'a.b' }, /type must be/);
    rejects({ status: 'sleeping' }, /status must be one of/);
    rejects({ state: '' }, /state must be/);
    rejects({ state: 'a*b' }, /state must be a state path/);
    rejects({ inStateSince: 5 }, /inStateSince must be an object/);
    rejects({ inStateSince: { since: 1 } }, /inStateSince.since is not a filter/);
    rejects({ createdAt: { after: 'yesterday' } }, /createdAt.after must be an ISO-8601/);
    rejects({ updatedAt: { before: Number.NaN } }, /updatedAt.before/);
    rejects({ errorCode: 1 }, /errorCode must be/);
    rejects({ idPrefix: '' }, /idPrefix must be/);
    rejects({ needsReview: 'yes' }, /needsReview must be true or false/);
    rejects({ attributes: [] }, /attributes must be an object/);
    rejects({ attributes: { a: { b: 1 } } }, /attributes.a must be a string/);
    rejects({ sort: 'createdAt' }, /sort must be updatedAt or inStateSince/);
    rejects({ order: 'up' }, /order must be asc or desc/);
    rejects({ limit: 1001 }, /limit must be an integer from 1 to 1000/);
    rejects({ limit: 0 }, /limit must be/);
    rejects({ limit: 2.5 }, /limit must be/);
    rejects({ limit: '10' }, /limit must be/);
  });

  it('rejects malformed cursors and cursors of another search', () => {
    fleet();
    rejects({ cursor: 'not a cursor!' }, /cursor is malformed/);
    rejects({ cursor: Buffer.from('{"v":1}').toString('base64url') }, /cursor is malformed/);
    rejects({ cursor: Buffer.from('[1,2]').toString('base64url') }, /cursor is malformed/);
    rejects({ cursor: 42 }, /cursor must be/);
    const { cursor } = search({ limit: 2 });
    expect(cursor).toEqual(expect.any(String));
    rejects({ limit: 2, cursor, status: 'failed' }, /cursor belongs to another search/);
    rejects({ limit: 2, cursor, order: 'asc' }, /cursor belongs to another search/);
    // the limit may change between pages
    expect(search({ limit: 3, cursor }).workflows).toHaveLength(3);
  });

  it('validates counts bodies', () => {
    expect(parseCounts(undefined)).toEqual({});
    expect(parseCounts({ type: 'order' })).toEqual({ type: 'order' });
    expect(() => parseCounts({ status: 'running' })).toThrow(/unknown counts field/);
    expect(() => parseCounts(7)).toThrow(BadRequestError);
  });
});
