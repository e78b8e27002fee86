/**
 * The journal's hot path: the stored entry built in one pass equals the full entry thinned, byte
 * for byte; the size bound that spares encoding an event payload never says "fits" wrongly.
 */
import { describe, expect, it } from 'vitest';
import { fitsPacked, pack } from '../../src/contracts/codec.js';
import type { Effect, WorkflowRecord } from '../../src/contracts/wire.js';
import {
  eventPayload,
  journalEvent,
  journalState,
  stepEntry,
  storedEntry,
  storedStepEntry,
} from '../../src/engine/journal.js';

type JournalEffect = Extract<Effect, { kind: 'journal' }>;

const record = (over: Partial<WorkflowRecord> = {}): WorkflowRecord => ({
  v: 1,
  type: 'order',
  id: 'o1',
  version: 2,
  status: 'running',
  snapshot: {
    status: 'active',
    value: { ship: 'packing' },
    context: { x: 1, merchant: 'm1' },
    children: {},
  },
  step: 3,
  lastSeq: 41,
  timers: {},
  shard: 0,
  tasks: {},
  outbox: [],
  createdAt: 1_000,
  updatedAt: 2_000,
  ...over,
});

const effect = (over: Partial<JournalEffect> = {}): JournalEffect => ({
  kind: 'journal',
  cause: 'result',
  seq: 41,
  event: { type: 'xstate.done.actor.a', payload: { output: { n: 1 } } },
  from: journalState('a'),
  ...over,
});

const task = (actorId: string, step: number): Extract<Effect, { kind: 'task' }> =>
  ({
    kind: 'task',
    task: {
      actorId,
      taskId: `order.o1.${step}.${actorId}`,
      taskKey: `k${actorId}`,
      activity: 'inc',
      queue: 'q',
      input: { n: step },
    },
  }) as unknown as Extract<Effect, { kind: 'task' }>;

const cases: [string, WorkflowRecord, JournalEffect][] = [
  ['a plain result step', record(), effect()],
  [
    'a step that issues a task, with an older task pending and parked',
    record({
      outbox: [task('b', 3)],
      tasks: {
        b: { taskId: 'order.o1.3.b', taskKey: 'kb', activity: 'inc', queue: 'q' },
        w: {
          taskId: 'order.o1.0.w',
          taskKey: 'kw',
          activity: 'wait',
          queue: 'q2',
          parked: { at: 5, error: { message: 'x' } },
        } as unknown as WorkflowRecord['tasks'][string],
      },
      stateSince: 1_500,
    }),
    effect(),
  ],
  [
    'a start with timers, an admission and attributes',
    record({
      step: 0,
      timers: { t1: 1_900, t2: 1_950 },
      timerDue: { t1: 9_000 },
      timerEvents: { t1: { type: 'tick' } },
      admission: { key: 'k', admittedAt: 1_999 } as WorkflowRecord['admission'],
      attributes: { merchant: 'm1' },
      paused: { at: 1, by: 'op', reason: 'why' },
    }),
    effect({ cause: 'start', event: { type: 'xstate.init', payload: { input: 1 } } }),
  ],
  [
    'a completed workflow (output from the snapshot)',
    record({
      status: 'completed',
      output: { total: 3 },
      snapshot: { status: 'done', value: 'done', output: { total: 3 }, context: {}, children: {} },
    }),
    effect({
      emitted: [{ type: 'paid' }],
      timerId: 't1',
      sender: { type: 'a', id: 'b', step: 1, index: 0 },
    }),
  ],
  [
    'a completed workflow whose output differs from the snapshot',
    record({
      status: 'completed',
      output: { total: 4 },
      snapshot: { status: 'done', value: 'done', output: { total: 3 }, context: {}, children: {} },
    }),
    effect(),
  ],
  [
    'a deferred workflow (snapshot null): stored whole',
    record({ snapshot: null, status: 'deferred' as WorkflowRecord['status'] }),
    effect({ cause: 'start' }),
  ],
  [
    'a failed workflow',
    record({ status: 'failed', error: { message: 'boom', type: 'X' } as WorkflowRecord['error'] }),
    effect({ operator: { action: 'cancel', by: 'op' } } as Partial<JournalEffect>),
  ],
];

describe('storedStepEntry', () => {
  it.each(cases)('%s: equals storedEntry(stepEntry()), byte for byte', (_name, rec, eff) => {
    const direct = storedStepEntry(rec, eff, 'e1');
    const thinned = storedEntry(stepEntry(rec, eff, 'e1'));
    expect(direct).toEqual(thinned);
    expect(Buffer.from(pack(direct))).toEqual(Buffer.from(pack(thinned)));
  });
});

describe('fitsPacked', () => {
  const samples: unknown[] = [
    null,
    undefined,
    true,
    0,
    -1,
    2 ** 40,
    1.5,
    '',
    'short',
    'é'.repeat(300),
    '😀'.repeat(100),
    'x'.repeat(5_000),
    [1, 2, [3, { a: 'b' }]],
    { a: 1, b: { c: [1, 2, 3], d: 'text' }, e: undefined },
    new Uint8Array(100),
    new Date(0),
    Array.from({ length: 500 }, (_, i) => ({ i, s: `v${i}` })),
  ];
  it('never says "fits" for a value that packs larger', () => {
    for (const v of samples) {
      const size = pack(v).length;
      for (const max of [0, 1, 8, 64, 512, 4096, 100_000]) {
        if (fitsPacked(v, max))
          expect(size, JSON.stringify(v)?.slice(0, 40)).toBeLessThanOrEqual(max);
      }
    }
  });
  it('says "fits" for small plain data, so it is not encoded', () => {
    expect(fitsPacked({ output: { n: 1, id: 'abc' } }, 4096)).toBe(true);
    expect(fitsPacked('x'.repeat(5_000), 4096)).toBe(false);
  });
  it('anything but plain data answers "maybe not"', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(fitsPacked(cyclic, 1_000_000)).toBe(false);
    expect(fitsPacked(new Map([[1, 2]]), 1_000_000)).toBe(false);
    expect(fitsPacked(() => 1, 1_000_000)).toBe(false);
  });
  it('journalEvent cuts a payload over the limit and keeps one under it', () => {
    expect(journalEvent('e', { s: 'x'.repeat(5_000) }, 4096)).toEqual({
      type: 'e',
      truncated: { bytes: pack({ s: 'x'.repeat(5_000) }).length },
    });
    expect(journalEvent('e', { s: 'x' }, 4096)).toEqual({ type: 'e', payload: { s: 'x' } });
    // Near the limit the bound says "maybe": the exact size decides.
    const near = { s: 'x'.repeat(1_500) };
    expect(pack(near).length).toBeLessThan(4096);
    expect(journalEvent('e', near, 4096)).toEqual({ type: 'e', payload: near });
  });
  it('eventPayload: the fields other than type, or undefined', () => {
    expect(eventPayload({ type: 'a' })).toBeUndefined();
    expect(eventPayload({ type: 'a', n: 1, u: undefined })).toEqual({ n: 1, u: undefined });
  });
});
