/**
 * The engine's admission stages are counted (`jetflow_admission_total{stage, outcome}`): a
 * repeated start and a signal repeated with its msg id dropped by dedup, signals of a debounce window held, merged and admitted, a start
 * deferred on its concurrency key then admitted, a start refused by `cancel-newest` dropped.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { quietLogger, TEST_SHARDS, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Engine } from '../../src/host/engine.js';
import { createRegistry, defineWorkflow } from '../../src/engine/registry.js';
import { createEngineMetrics, createMetricsRegistry } from '../../src/metrics/index.js';
import { Client } from '../../src/client/index.js';
import { keyedWorkflows } from '../fixtures/keyed-workflows.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

const prices = defineWorkflow({
  type: 'admprices',
  version: 1,
  machine: setup({
    types: {
      context: {} as { n: number[] },
      events: {} as { type: 'PRICE'; n: number } | { type: 'FINISH' },
    },
  }).createMachine({
    id: 'admprices',
    context: { n: [] },
    initial: 'open',
    states: {
      open: {
        on: {
          PRICE: { actions: assign({ n: ({ context, event }) => [...context.n, event.n] }) },
          FINISH: 'done',
        },
      },
      done: { type: 'final' },
    },
  }),
  debounce: { PRICE: { ms: 200 } },
});

describe('admission metrics (engine stages)', () => {
  it('counts dedup drops, debounce held/merged/admitted, key deferred/admitted/dropped', async () => {
    const prefix = uniquePrefix();
    const registry = createMetricsRegistry();
    const engine = await Engine.create(
      { servers: env.server.url, prefix, shards: TEST_SHARDS, failoverMs: 2_000 },
      {
        registry: createRegistry([...keyedWorkflows, prices]),
        logger: quietLogger,
        metrics: createEngineMetrics(registry),
      },
    );
    open.push(engine);
    const client = new Client(env.nc, { prefix });
    await client.start('keyq', 'a', { key: 'k' });
    expect(await client.start('keyq', 'b', { key: 'k' })).toMatchObject({ deferred: true });
    expect(await client.start('keyq', 'a', { key: 'k' })).toMatchObject({ created: false });
    await client.start('keynewest', 'n1', { key: 'k' });
    await expect(client.start('keynewest', 'n2', { key: 'k' })).rejects.toMatchObject({
      code: 'concurrency_limit',
    });
    // A signal sent twice with one msg id: the server drops the second (the gateway counts it).
    await client.signal('keyq', 'a', { type: 'SIG', n: 1 }, { msgId: 'once' });
    expect(
      await client.signal('keyq', 'a', { type: 'SIG', n: 1 }, { msgId: 'once' }),
    ).toMatchObject({ duplicate: true });
    await client.signal('keyq', 'a', { type: 'FINISH' });
    await client.result('keyq', 'a', { timeoutMs: 10_000 });
    await client.start('admprices', 'p', {});
    for (let n = 1; n <= 3; n++) await client.signal('admprices', 'p', { type: 'PRICE', n });
    const deadline = Date.now() + 10_000;
    let counts = new Map<string, number>();
    for (;;) {
      counts = new Map();
      for (const line of (await registry.metrics()).split('\n')) {
        const m = /^jetflow_admission_total\{stage="([^"]+)",outcome="([^"]+)"\} (\d+)/.exec(line);
        if (m) counts.set(`${m[1]} ${m[2]}`, Number(m[3]));
      }
      const done =
        counts.get('debounce admitted') === 1 && counts.get('concurrency-key admitted') === 1;
      if (done || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(Object.fromEntries(counts)).toEqual({
      'dedup dropped': 2,
      'concurrency-key deferred': 1,
      'concurrency-key admitted': 1,
      'concurrency-key dropped': 1,
      'debounce held': 1,
      'debounce merged': 2,
      'debounce admitted': 1,
    });
  });
});
