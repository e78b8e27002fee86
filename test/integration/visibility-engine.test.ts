/**
 * The visibility index end to end: a real engine journals its steps, a visibility replica
 * indexes them, and searches see what the engine did: state paths (nested and parallel), time in
 * state equal to the journal's `stateSince`, search attributes from the definition, completion,
 * and a rejected signal that changes nothing in the index.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { Client } from '../../src/client/index.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import type { Engine } from '../../src/host/engine.js';
import { Visibility } from '../../src/host/visibility.js';
import type { SearchReply, SearchRequest } from '../../src/contracts/search.js';
import { quietLogger, startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';

const ticket = defineWorkflow({
  type: 'ticket',
  version: 1,
  searchAttributes: ['label', 'priority'],
  machine: setup({
    types: {
      input: {} as { label: string; priority: number },
      context: {} as { label: string; priority: number },
      events: {} as { type: 'PACK' } | { type: 'SPLIT' } | { type: 'BUMP' } | { type: 'FINISH' },
    },
  }).createMachine({
    id: 'ticket',
    context: ({ input }) => ({ label: input.label, priority: input.priority }),
    initial: 'open',
    states: {
      open: { on: { PACK: 'shipping', SPLIT: 'both', FINISH: 'done' } },
      shipping: {
        initial: 'packing',
        states: { packing: { on: { BUMP: { actions: assign({ priority: 9 }) } } } },
        on: { FINISH: 'done' },
      },
      both: {
        type: 'parallel',
        states: {
          left: { initial: 'l1', states: { l1: {} } },
          right: { initial: 'r1', states: { r1: {} } },
        },
      },
      done: { type: 'final' },
    },
  }),
});

const env = useServer();
const prefix = uniquePrefix();
let engine: Engine;
let vis: Visibility;
let client: Client;
const dir = mkdtempSync(join(tmpdir(), 'jetflow-vis-e2e-'));

beforeAll(async () => {
  engine = await startEngine(env.server.url, prefix, { workflows: [ticket] });
  vis = await Visibility.create({
    servers: env.server.url,
    prefix,
    dataDir: dir,
    logger: quietLogger,
    progress: () => undefined,
  });
  client = new Client(env.nc, { prefix });
});
afterAll(async () => {
  await vis?.close();
  await engine?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function until(body: SearchRequest, done: (r: SearchReply) => boolean) {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const r = await client.search(body);
    if (done(r)) return r;
    if (Date.now() > deadline) throw new Error(`not visible: ${JSON.stringify(body)}`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

it('indexes what the engine journals', async () => {
  await client.start('ticket', 'a', { label: 'red', priority: 1 });
  await client.start('ticket', 'b', { label: 'blue', priority: 2 });
  await client.start('ticket', 'c', { label: 'red', priority: 3 });
  await client.signal('ticket', 'a', { type: 'PACK' });
  await client.signal('ticket', 'a', { type: 'BUMP' }); // stays in shipping.packing
  await client.signal('ticket', 'b', { type: 'SPLIT' });
  await client.signal('ticket', 'c', { type: 'FINISH' });
  await expect(client.signal('ticket', 'c', { type: 'PACK' })).rejects.toMatchObject({
    code: 'already_finished',
  });

  const a = (await until({ idPrefix: 'a' }, (r) => r.workflows[0]?.step === 2)).workflows[0]!;
  expect(a).toMatchObject({
    type: 'ticket',
    status: 'running',
    states: ['shipping.packing'],
    attributes: { label: 'red', priority: 9 },
  });
  // Time in state is the journal's stateSince of the step that entered the state (step 1).
  const h = await client.history('ticket', 'a');
  const entered = h.entries.find((e) => e.kind === 'step' && e.step === 1);
  expect(entered?.kind === 'step' && new Date(entered.stateSince).toISOString()).toBe(
    a.inStateSince,
  );
  expect(a.inStateSince < a.updatedAt).toBe(true);

  await until({ status: 'completed' }, (r) => r.workflows.length === 1);
  expect((await client.search({ state: 'both.right.r1' })).workflows.map((w) => w.id)).toEqual([
    'b',
  ]);
  expect((await client.search({ state: 'both.*' })).workflows.map((w) => w.id)).toEqual(['b']);
  expect(
    (await client.search({ attributes: { label: 'red' }, sort: 'inStateSince' })).workflows.map(
      (w) => w.id,
    ),
  ).toEqual(['a', 'c']);
  const c = (await client.search({ status: 'completed' })).workflows[0]!;
  expect(c).toMatchObject({ id: 'c', states: ['done'], step: 1 });
  const counts = await client.searchCounts({ type: 'ticket' });
  expect(counts.total).toBe(3);
  expect(counts.byStatus).toEqual({ running: 2, completed: 1 });
  expect(vis.stats.applied).toBe(7);
});
