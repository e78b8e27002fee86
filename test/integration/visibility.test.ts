/**
 * The visibility role against a real nats-server. Until the engine journals its steps, this test
 * is its own engine: it writes each step as the engine will, the record into the workflows
 * bucket and the journal entry into `<PREFIX>_HISTORY`, so the role's reading, rebuilding and
 * answering are exercised exactly as in production.
 *
 * Proves: search finds by every filter (JSON and msgpack); time in state survives a restart of
 * the visibility process and entries published while it was down are applied; two visibility
 * processes give the same answers; deleting a replica's file (and losing journal entries to
 * retention) makes it rebuild to the same answers; bad input gets a `bad_request` error reply and
 * the process keeps serving.
 */
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import {
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { decodeBody, pack } from '../../src/contracts/codec.js';
import type {
  ErrorReply,
  JournalEntry,
  WorkflowRecord,
  WorkflowStatus,
} from '../../src/contracts/wire.js';
import type { SearchReply, SearchRequest } from '../../src/contracts/search.js';
import { Client } from '../../src/client/index.js';
import type { ErrorCode } from '../../src/errors.js';
import { topologyNames, type TopologyNames } from '../../src/nats/topology.js';
import { Visibility } from '../../src/host/visibility.js';
import { quietLogger, uniquePrefix, useServer } from '../harness/jetflow.js';
import { JetflowProcess, runJetflow } from '../harness/cli.js';

const env = useServer();
const HOUR = 3_600_000;
const dirs: string[] = [];
const tempDir = () => {
  const d = mkdtempSync(join(tmpdir(), 'jetflow-vis-'));
  dirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Writes steps as an engine does: record (KV) first, then the journal entry. */
class Steps {
  readonly names: TopologyNames;
  readonly records = new Map<string, WorkflowRecord>();
  private kv!: KV;
  private js!: JetStreamClient;

  constructor(
    private readonly nc: NatsConnection,
    readonly prefix: string,
  ) {
    this.names = topologyNames(prefix);
  }

  async init(): Promise<this> {
    const jsm = await jetstreamManager(this.nc);
    await jsm.streams.add({
      name: this.names.historyStream,
      subjects: [this.names.subjects.journalWildcard],
      retention: RetentionPolicy.Limits,
      storage: StorageType.File,
    });
    this.kv = await new Kvm(this.nc).create(this.names.bucket, { history: 1 });
    this.js = jetstream(this.nc);
    return this;
  }

  /** Apply the next step of `type/id`: into `paths` (a new state unless `stay`). */
  async step(
    type: string,
    id: string,
    o: {
      paths: string[];
      status?: WorkflowStatus;
      attributes?: Record<string, string | number | boolean | null>;
      error?: { type: string; code: string };
      /** When the step happened (default now). */
      at?: number;
      /** Keep the state's `stateSince` (a step that does not change state). */
      stay?: boolean;
    },
  ): Promise<void> {
    const key = `${type}.${id}`;
    const prev = this.records.get(key);
    const at = o.at ?? Date.now();
    const step = prev ? prev.step + 1 : 0;
    const stateSince = o.stay && prev?.stateSince !== undefined ? prev.stateSince : at;
    const value =
      o.paths.length === 1
        ? toValue(o.paths[0]!)
        : (Object.assign({}, ...o.paths.map((p) => toValue(p) as object)) as unknown);
    const status = o.status ?? 'running';
    const error = o.error
      ? { ...o.error, code: o.error.code as ErrorCode, message: 'boom', retryable: false }
      : undefined;
    const record = {
      v: 1,
      type,
      id,
      version: 1,
      status,
      snapshot: { value, context: {}, status: 'active' },
      step,
      lastSeq: 0,
      timers: {},
      shard: 0,
      tasks: {},
      outbox: [],
      createdAt: prev?.createdAt ?? at,
      updatedAt: at,
      stateSince,
      attributes: o.attributes ?? prev?.attributes ?? {},
      ...(error ? { error } : {}),
    } as WorkflowRecord;
    this.records.set(key, record);
    await this.kv.put(key, pack(record));
    const entry: JournalEntry = {
      v: 1,
      kind: 'step',
      workflowType: type,
      id,
      version: 1,
      step,
      at,
      engine: 'test',
      cause: step === 0 ? 'start' : 'signal',
      event: { type: 'E' },
      to: { value, paths: o.paths },
      status,
      stateSince,
      snapshot: record.snapshot,
      effects: [],
      attributes: record.attributes!,
      createdAt: record.createdAt,
      ...(error ? { error } : {}),
    };
    await this.js.publish(this.names.subjects.journal(type, id), pack(entry), {
      msgID: `${type}.${id}.${step}.j`,
    });
  }
}

/** `a.b.c` → `{ a: { b: 'c' } }`. */
function toValue(path: string): unknown {
  const parts = path.split('.');
  let v: unknown = parts.pop();
  while (parts.length) v = { [parts.pop()!]: v };
  return v;
}

/** Poll a search until `done` holds (the index follows the journal asynchronously). */
async function until(
  client: Client,
  body: SearchRequest,
  done: (r: SearchReply) => boolean,
): Promise<SearchReply> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await client.search(body).catch(() => undefined);
    if (r && done(r)) return r;
    if (Date.now() > deadline) throw new Error(`not visible: ${JSON.stringify(body)}`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

const ids = (r: SearchReply) => r.workflows.map((w) => `${w.type}/${w.id}`);

describe('search through a visibility role', () => {
  const prefix = uniquePrefix();
  let steps: Steps;
  let vis: Visibility;
  let client: Client;
  const t0 = Date.now() - 3 * HOUR;

  beforeAll(async () => {
    steps = await new Steps(env.nc, prefix).init();
    // Before the replica exists (it rebuilds these from KV) ...
    await steps.step('order', 'a1', { paths: ['cart'], attributes: { merchant: 'm1' }, at: t0 });
    await steps.step('order', 'a1', {
      paths: ['shipping.packing'],
      attributes: { merchant: 'm1', priority: 2 },
      at: t0 + HOUR,
    });
    vis = await Visibility.create({
      servers: env.server.url,
      prefix,
      dataDir: tempDir(),
      logger: quietLogger,
      progress: () => undefined,
    });
    client = new Client(env.nc, { prefix });
    // ... and after (it follows the journal).
    await steps.step('order', 'b2', { paths: ['shipping.label'], attributes: { merchant: 'm2' } });
    await steps.step('order', 'c3', {
      paths: ['payment'],
      status: 'failed',
      attributes: { merchant: 'm1' },
      error: { type: 'PaymentDeclined', code: 'machine_error' },
    });
    await steps.step('refund', 'r1', {
      paths: ['done'],
      status: 'completed',
      attributes: { vip: true },
    });
    await steps.step('order', 'p4', { paths: ['par.x.one', 'par.y.two'] });
    await until(client, {}, (r) => r.workflows.length === 5);
  });
  afterAll(async () => {
    await vis?.close();
  });

  it('finds by every filter', async () => {
    const q = async (body: SearchRequest) => ids(await client.search(body)).sort();
    expect(await q({ type: 'refund' })).toEqual(['refund/r1']);
    expect(await q({ status: 'failed' })).toEqual(['order/c3']);
    expect(await q({ state: 'shipping.packing' })).toEqual(['order/a1']);
    expect(await q({ state: 'shipping.*' })).toEqual(['order/a1', 'order/b2']);
    expect(await q({ state: 'par.y.two' })).toEqual(['order/p4']);
    const hourAgo = new Date(Date.now() - HOUR).toISOString();
    expect(await q({ inStateSince: { before: hourAgo } })).toEqual(['order/a1']);
    expect(await q({ inStateSince: { after: hourAgo }, type: 'order' })).toEqual([
      'order/b2',
      'order/c3',
      'order/p4',
    ]);
    expect(await q({ createdAt: { before: t0 + 1 } })).toEqual(['order/a1']);
    expect(await q({ updatedAt: { after: Date.now() - HOUR } })).toHaveLength(4);
    expect(await q({ errorType: 'PaymentDeclined' })).toEqual(['order/c3']);
    expect(await q({ errorCode: 'machine_error' })).toEqual(['order/c3']);
    expect(await q({ idPrefix: 'r' })).toEqual(['refund/r1']);
    expect(await q({ needsReview: true })).toEqual([]);
    expect(await q({ attributes: { merchant: 'm1' } })).toEqual(['order/a1', 'order/c3']);
    expect(await q({ attributes: { merchant: 'm1', priority: 2 } })).toEqual(['order/a1']);
    expect(await q({ attributes: { vip: true } })).toEqual(['refund/r1']);
    const a1 = (await client.search({ idPrefix: 'a1' })).workflows[0]!;
    expect(a1).toMatchObject({
      step: 1,
      states: ['shipping.packing'],
      inStateSince: new Date(t0 + HOUR).toISOString(),
      createdAt: new Date(t0).toISOString(),
    });
  });

  it('sorts, pages with a cursor, and counts', async () => {
    const first = await client.search({ sort: 'inStateSince', limit: 2 });
    expect(ids(first)[0]).toBe('order/a1');
    const second = await client.search({ sort: 'inStateSince', limit: 2, cursor: first.cursor! });
    const third = await client.search({ sort: 'inStateSince', limit: 2, cursor: second.cursor! });
    expect(third.cursor).toBeNull();
    expect(new Set([...ids(first), ...ids(second), ...ids(third)]).size).toBe(5);
    const c = await client.searchCounts();
    expect(c.total).toBe(5);
    expect(c.byStatus).toEqual({ running: 3, failed: 1, completed: 1 });
    expect(c.byState).toContainEqual({
      type: 'order',
      status: 'running',
      state: 'shipping.packing',
      count: 1,
    });
    expect((await client.searchCounts({ type: 'refund' })).total).toBe(1);
  });

  it('answers msgpack requests in msgpack', async () => {
    const h = headers();
    h.set('Content-Type', 'application/msgpack');
    const m = await env.nc.request(steps.names.subjects.search, pack({ status: 'failed' }), {
      headers: h,
      timeout: 5_000,
    });
    expect(m.headers?.get('Content-Type')).toBe('application/msgpack');
    expect(ids(decodeBody(m.data, 'msgpack') as SearchReply)).toEqual(['order/c3']);
  });

  it('jetflow ls prints a table, JSON, counts, and exits 4 on bad input', async () => {
    const flags = ['--nats-url', env.server.url, '--prefix', prefix];
    const table = await runJetflow([
      'ls',
      ...flags,
      '--state',
      'shipping.*',
      '--in-state-longer-than',
      '1h',
    ]);
    expect(table.stderr).toBe('');
    expect(table.code).toBe(0);
    const lines = table.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^TYPE\s+ID\s+STATUS\s+STATE\s+IN STATE\s+UPDATED\s+STEP$/);
    expect(lines.slice(1)).toHaveLength(1);
    expect(lines[1]).toMatch(/^order\s+a1\s+running\s+shipping\.packing\s+2h\d*m?\s/);
    const json = await runJetflow(['ls', ...flags, '--where', 'merchant=m1', '--json']);
    expect(ids(JSON.parse(json.stdout) as SearchReply).sort()).toEqual(['order/a1', 'order/c3']);
    const paged = await runJetflow(['ls', ...flags, '--limit', '2']);
    expect(paged.stdout).toMatch(/more: add --cursor [A-Za-z0-9_-]+/);
    const counts = await runJetflow(['ls', ...flags, '--counts']);
    expect(counts.code).toBe(0);
    expect(counts.stdout).toMatch(/^5 workflows: /);
    expect(counts.stdout).toMatch(/order\s+shipping\.packing\s+running\s+1/);
    const bad = await runJetflow(['ls', ...flags, '--limit', '5000']);
    expect(bad.code).toBe(4);
    expect(bad.stderr).toMatch(/bad_request: limit must be an integer from 1 to 1000/);
    const none = await runJetflow(['ls', '--nats-url', env.server.url, '--prefix', 'nobody']);
    expect(none.code).toBe(5);
    expect(none.stderr).toMatch(/no visibility replica is answering/);
  });

  it('answers bad input with bad_request and keeps serving', async () => {
    const raw = async (subject: string, data: Uint8Array) => {
      const m = await env.nc.request(subject, data, { timeout: 5_000 });
      return { code: m.headers?.get('Jf-Error'), body: decodeBody(m.data) as ErrorReply };
    };
    const enc = (s: string) => new TextEncoder().encode(s);
    // Malformed JSON is `malformed_body`, as on every other jetflow subject.
    const bad = await raw(steps.names.subjects.search, enc('{not json'));
    expect(bad.code).toBe('malformed_body');
    expect(bad.body.error.message).toMatch(/not valid JSON/);
    for (const [body, pattern] of [
      ['{"colour":"red"}', /unknown search field "colour"/],
      ['{"status":7}', /status must be one of/],
      ['{"limit":1001}', /limit must be an integer from 1 to 1000/],
      ['{"cursor":"%%%"}', /cursor is malformed/],
      ['[1]', /must be an object/],
    ] as const) {
      const r = await raw(steps.names.subjects.search, enc(body));
      expect(r.code).toBe('bad_request');
      expect(r.body.error).toMatchObject({ code: 'bad_request', retryable: false });
      expect(r.body.error.message).toMatch(pattern);
    }
    const c = await raw(steps.names.subjects.searchCounts, enc('{"status":"x"}'));
    expect(c.code).toBe('bad_request');
    await expect(client.search({ limit: 5000 })).rejects.toMatchObject({ code: 'bad_request' });
    expect(ids(await client.search({ status: 'failed' }))).toEqual(['order/c3']);
  });
});

describe('visibility processes', () => {
  const prefix = uniquePrefix();
  let steps: Steps;
  let client: Client;
  const dirA = tempDir();
  const dirB = tempDir();
  const spawned: JetflowProcess[] = [];
  const replica = (dir: string) => {
    const p = new JetflowProcess(
      ['visibility', '--nats-url', env.server.url, '--prefix', prefix, '--data-dir', dir],
      'visibility ready',
    );
    spawned.push(p);
    return p.start();
  };
  const stateBefore = Date.now() - 2 * HOUR;
  /** Everything a search can tell, asked of whichever replica answers. */
  const snapshot = async () => ({
    all: await client.search({ limit: 1000, sort: 'inStateSince' }),
    longer: await client.search({ inStateSince: { before: Date.now() - HOUR } }),
    counts: await client.searchCounts(),
  });

  beforeAll(async () => {
    steps = await new Steps(env.nc, prefix).init();
    client = new Client(env.nc, { prefix });
    // 40 workflows, some moved on, one waiting in `review` for two hours.
    for (let i = 0; i < 40; i++) {
      await steps.step('loan', `l${i}`, { paths: ['intake'], attributes: { branch: `b${i % 3}` } });
    }
    await steps.step('loan', 'slow', { paths: ['review'], at: stateBefore });
    for (let i = 0; i < 40; i += 2) await steps.step('loan', `l${i}`, { paths: ['scoring'] });
  });
  afterAll(async () => {
    await Promise.all(spawned.map((p) => p.stop()));
  });

  it('keeps time in state across a restart and applies what it missed', async () => {
    const a = await replica(dirA);
    const before = await until(client, { idPrefix: 'slow' }, (r) => r.workflows.length === 1);
    expect(before.workflows[0]!.inStateSince).toBe(new Date(stateBefore).toISOString());
    expect(await a.stop()).toBe(0);
    // While it is down: slow stays in review (a step that does not change state), l1 moves.
    await steps.step('loan', 'slow', { paths: ['review'], stay: true });
    await steps.step('loan', 'l1', { paths: ['scoring'] });
    const a2 = await replica(dirA);
    expect(a2.log).not.toMatch(/rebuilding/);
    const after = await until(client, { idPrefix: 'slow' }, (r) => r.workflows[0]?.step === 1);
    expect(after.workflows[0]!.inStateSince).toBe(new Date(stateBefore).toISOString());
    expect(ids(await client.search({ inStateSince: { before: Date.now() - HOUR } }))).toEqual([
      'loan/slow',
    ]);
    expect((await client.search({ state: 'scoring' })).workflows).toHaveLength(21);
  });

  it('two replicas give the same answers; a deleted file rebuilds to the same answers', async () => {
    // A (running since the last test) alone.
    const alone = await snapshot();
    const b = await replica(dirB);
    expect(b.log).toMatch(/rebuilding .* \(new replica\)/);
    expect(b.log).toMatch(/rebuilt: 41 workflows/);
    // Both in the queue group: 20 asks land on both; every answer is the same.
    for (let i = 0; i < 20; i++) expect(await snapshot()).toEqual(alone);
    // Garbage to the group does not stop either replica.
    for (let i = 0; i < 6; i++) {
      await expect(client.search({ limit: -1 })).rejects.toMatchObject({ code: 'bad_request' });
    }
    // A goes away with its file; B alone answers the same.
    const a = spawned.find((p) => p.running && p.args.includes(dirA))!;
    expect(await a.stop()).toBe(0);
    rmSync(join(dirA, `visibility-${prefix}.db`));
    expect(existsSync(join(dirA, `visibility-${prefix}.db`))).toBe(false);
    expect(await snapshot()).toEqual(alone);
    // A comes back: it rebuilds from the records, then B goes and A alone answers the same.
    const a3 = await replica(dirA);
    expect(a3.log).toMatch(/rebuilt: 41 workflows/);
    expect(await b.stop()).toBe(0);
    expect(await snapshot()).toEqual(alone);
  });

  it('rebuilds when entries it needs left the journal', async () => {
    const a = spawned.find((p) => p.running)!;
    expect(await a.stop()).toBe(0);
    // While it is down, a step is journaled and then dropped (as retention would).
    await steps.step('loan', 'l3', { paths: ['scoring'] });
    const jsm = await jetstreamManager(env.nc);
    const last = (await jsm.streams.info(steps.names.historyStream)).state.last_seq;
    await jsm.streams.purge(steps.names.historyStream, { seq: last + 1 });
    const a4 = await replica(dirA);
    expect(a4.log).toMatch(/left the journal \(retention\)/);
    const r = await until(client, { idPrefix: 'l3' }, (x) => x.workflows.length > 0);
    expect(r.workflows.find((w) => w.id === 'l3')!.states).toEqual(['scoring']);
    // and it follows the journal after the rebuild
    await steps.step('loan', 'l5', { paths: ['approved'] });
    await until(client, { state: 'approved' }, (x) => ids(x).includes('loan/l5'));
  });
});
