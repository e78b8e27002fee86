/**
 * Debounce of signals against a real nats-server and engine: 100 signals in one second at 500 ms
 * apply one event (the last, the first, or the fold), per key when the window is keyed; the
 * journal tells each kept signal and the applied one; a window open when the workflow ends goes
 * with it; an event the state does not take is refused at once.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { JetflowError } from '../../src/errors.js';
import { ConfigError } from '../../src/errors.js';
import type { JournalEntry } from '../../src/contracts/wire.js';

const env = useServer();
const open: { close(): Promise<void> }[] = [];
afterEach(async () => {
  for (const o of open.splice(0).reverse()) await o.close();
});

type Price = { type: 'PRICE'; sku: string; n: number; total?: number };

/** Records every PRICE it applies; FINISH ends it. */
const priceMachine = setup({
  types: {
    context: {} as { applied: { sku: string; n: number; total?: number }[] },
    events: {} as Price | { type: 'FINISH' },
  },
}).createMachine({
  id: 'prices',
  context: { applied: [] },
  initial: 'open',
  states: {
    open: {
      on: {
        PRICE: {
          actions: assign({
            applied: ({ context, event }) => [
              ...context.applied,
              {
                sku: event.sku,
                n: event.n,
                ...(event.total !== undefined ? { total: event.total } : {}),
              },
            ],
          }),
        },
        FINISH: 'done',
      },
    },
    done: { type: 'final' },
  },
});

const defs = [
  defineWorkflow({
    type: 'dlast',
    version: 1,
    machine: priceMachine,
    debounce: { PRICE: { ms: 500 } },
  }),
  defineWorkflow({
    type: 'dfirst',
    version: 1,
    machine: priceMachine,
    debounce: { PRICE: { ms: 500, keep: 'first' } },
  }),
  defineWorkflow({
    type: 'dfold',
    version: 1,
    machine: priceMachine,
    debounce: {
      PRICE: {
        ms: 500,
        keep: (acc: Price, e: Price) => ({ ...e, total: (acc.total ?? acc.n) + e.n }),
      },
    },
  }),
  defineWorkflow({
    type: 'dslow',
    version: 1,
    machine: priceMachine,
    debounce: { PRICE: { ms: 60_000 } },
  }),
  defineWorkflow({
    type: 'dkeyed',
    version: 1,
    machine: priceMachine,
    debounce: { PRICE: { ms: 500, key: (e: Price) => e.sku } },
  }),
];

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function setupAll() {
  const prefix = uniquePrefix();
  const engine = await startEngine(env.server.url, prefix, { workflows: defs });
  open.push(engine);
  const client = new Client(env.nc, { prefix });
  const applied = async (type: string, id: string) =>
    (
      (await client.query(type, id)).context as {
        applied: { sku: string; n: number; total?: number }[];
      }
    ).applied;
  /** 100 signals over one second (10 ms apart), sku alternating when `skus` > 1. */
  const burst = async (type: string, id: string, skus = 1) => {
    for (let n = 1; n <= 100; n++) {
      const r = await client.signal(type, id, { type: 'PRICE', sku: `s${n % skus}`, n });
      expect(r).toMatchObject({ debounced: { count: skus === 1 ? n : Math.ceil(n / skus) } });
      await new Promise((res) => setTimeout(res, 10));
    }
  };
  return { prefix, client, applied, burst };
}

describe('debounce of signals', () => {
  it('100 signals in one second at 500 ms apply one event: the last, the first, the fold', async () => {
    const { client, applied, burst } = await setupAll();
    await client.start('dlast', 'l', {});
    await client.start('dfirst', 'f', {});
    await client.start('dfold', 's', {});
    const t0 = Date.now();
    await Promise.all([burst('dlast', 'l'), burst('dfirst', 'f'), burst('dfold', 's')]);
    // Nothing is applied while the signals keep coming.
    expect(await applied('dlast', 'l')).toEqual([]);
    const last = await until('the last PRICE applied', async () => {
      const a = await applied('dlast', 'l');
      return a.length > 0 ? a : undefined;
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_000);
    expect(last).toEqual([{ sku: 's0', n: 100 }]);
    await until('first and fold applied', async () =>
      (await applied('dfirst', 'f')).length > 0 && (await applied('dfold', 's')).length > 0
        ? true
        : undefined,
    );
    expect(await applied('dfirst', 'f')).toEqual([{ sku: 's0', n: 1 }]);
    expect(await applied('dfold', 's')).toEqual([{ sku: 's0', n: 100, total: 5050 }]);
    // Quiet for a while: nothing more is applied, and the window is closed.
    await new Promise((r) => setTimeout(r, 800));
    expect(await applied('dlast', 'l')).toHaveLength(1);
    const why = await client.query('dlast', 'l');
    expect(why.waiting?.timers).toEqual([]);

    // The journal: 100 kept signals, then one step that applies the window's event.
    const h = await client.history('dlast', 'l', { limit: 1000 });
    const entries = h.entries.filter(
      (e): e is Extract<JournalEntry, { kind: 'step' }> => e.kind === 'step',
    );
    const kept = entries.filter((e) => e.debounced && !e.debounced.applied);
    const done = entries.filter((e) => e.debounced?.applied);
    expect(kept).toHaveLength(100);
    expect(kept.every((e) => e.from?.value === 'open' && e.to.value === 'open')).toBe(true);
    expect(done).toHaveLength(1);
    expect(done[0]).toMatchObject({ cause: 'timer', debounced: { key: 'PRICE', count: 100 } });
  });

  it('a keyed window per sku; an open window ends with the workflow; a refused event is refused at once', async () => {
    const { client, applied, burst } = await setupAll();
    await client.start('dkeyed', 'k', {});
    await burst('dkeyed', 'k', 2);
    const a = await until('both skus applied', async () => {
      const x = await applied('dkeyed', 'k');
      return x.length === 2 ? x : undefined;
    });
    expect([...a].sort((p, q) => p.sku.localeCompare(q.sku))).toEqual([
      { sku: 's0', n: 100 },
      { sku: 's1', n: 99 },
    ]);

    // `why` names an open window and when it closes.
    await client.start('dslow', 'w', {});
    await client.signal('dslow', 'w', { type: 'PRICE', sku: 'x', n: 1 });
    await client.signal('dslow', 'w', { type: 'PRICE', sku: 'x', n: 2 });
    const why = await client.why('dslow', 'w');
    expect(why.stage).toBe('debounce');
    expect(why.summary).toContain('signals PRICE debounced: 2 kept');

    // A window still open when the workflow finishes is dropped with its timer.
    await client.start('dlast', 'gone', {});
    await client.signal('dlast', 'gone', { type: 'PRICE', sku: 'x', n: 1 });
    await client.signal('dlast', 'gone', { type: 'FINISH' });
    await client.result('dlast', 'gone', { timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 900));
    const q = await client.query('dlast', 'gone');
    expect(q.status).toBe('completed');
    expect((q.context as { applied: unknown[] }).applied).toEqual([]);

    // A finished workflow takes no PRICE: refused at once, nothing kept.
    const err = await client
      .signal('dlast', 'gone', { type: 'PRICE', sku: 'x', n: 2 })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(JetflowError);
    expect((err as JetflowError).code).toBe('already_finished');
  });

  it('refuses bad debounce options when the definition is declared', () => {
    const bad = (debounce: unknown) => () =>
      defineWorkflow({
        type: 'bad',
        version: 1,
        machine: priceMachine,
        debounce: debounce as never,
      });
    expect(bad({ PRICE: { ms: 0 } })).toThrow(ConfigError);
    expect(bad({ PRICE: { ms: 500, keep: 'middle' } })).toThrow(/keep must be/);
    expect(bad({ 'xstate.after.x': { ms: 500 } })).toThrow(/only signals/);
    expect(bad({ PRICE: { ms: 500, key: 'sku' } })).toThrow(/key must be a function/);
  });
});
