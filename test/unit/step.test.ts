import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { decide, type Decision } from '../../src/engine/step.js';
import { createRegistry } from '../../src/engine/registry.js';
import { createSubjects } from '../../src/contracts/subjects.js';
import { pack, unpack } from '../../src/contracts/codec.js';
import {
  INBOUND_MEMORY,
  type InboxMessage,
  type WorkflowRecord,
} from '../../src/contracts/wire.js';
import { counter, versionedV1, versionedV2 } from '../fixtures/workflows.js';
import { order } from '../../actors/order.js';

const registry = createRegistry([counter, versionedV1, order]);
const subjects = createSubjects('wf');
const NOW = Date.parse('2026-01-01T00:00:00Z');

/** Apply messages like the engine does, with the record round-tripped through msgpack. */
function run(
  messages: InboxMessage[],
  reg = registry,
  type = 'counter',
): { record?: WorkflowRecord; decisions: Decision[] } {
  let record: WorkflowRecord | undefined;
  const decisions: Decision[] = [];
  messages.forEach((message, i) => {
    const d = decide({ registry: reg, subjects }, record, {
      type,
      id: 'x',
      seq: i + 1,
      shard: 0,
      message,
      now: NOW + i,
    });
    decisions.push(d);
    if (d.kind === 'write') record = unpack(pack(d.record)) as WorkflowRecord;
  });
  return { record, decisions };
}

describe('decide (the pure step)', () => {
  it('start creates step 0 with a started notification; a second start is a no-op', () => {
    const { record, decisions } = run([
      { kind: 'start', input: { label: 'L' } },
      { kind: 'start', input: {} },
    ]);
    expect(decisions[0]).toMatchObject({
      kind: 'write',
      create: true,
      reply: { created: true, version: 1 },
    });
    expect(decisions[1]).toMatchObject({ kind: 'noop', reply: { created: false } });
    expect(record).toMatchObject({ step: 0, lastSeq: 1, status: 'running', version: 1 });
    expect(record!.outbox).toHaveLength(1);
    expect(record!.outbox[0]).toMatchObject({
      kind: 'notify',
      notification: { type: 'started', input: { label: 'L' } },
    });
  });

  it('cross-workflow sends: the per-sender watermark drops repeats and keeps the 10,000 most recent senders', () => {
    const send = (sender: string, step: number, index: number, n: number): InboxMessage => ({
      kind: 'signal',
      event: { type: 'SIG', n },
      from: { type: 'counter', id: sender, step, index },
    });
    const { record, decisions } = run([
      { kind: 'start', input: {} },
      send('a', 3, 1, 1),
      send('a', 3, 1, 2), // the same send again: a repeat
      send('a', 2, 9, 3), // older than the watermark: a repeat
      send('a', 3, 2, 4),
      send('b', 1, 0, 5),
    ]);
    expect(decisions.map((d) => d.kind)).toEqual([
      'write',
      'write',
      'ignore',
      'ignore',
      'write',
      'write',
    ]);
    expect((record!.snapshot as { context: { seq: number[] } }).context.seq).toEqual([1, 4, 5]);
    expect(record!.inbound).toEqual({ 'counter.a': [3, 2], 'counter.b': [1, 0] });
    const full: WorkflowRecord = {
      ...record!,
      inbound: Object.fromEntries(
        Array.from({ length: INBOUND_MEMORY }, (_, i) => [
          `counter.s${i}`,
          [1, 0] as [number, number],
        ]),
      ),
    };
    const d = decide({ registry, subjects }, full, {
      type: 'counter',
      id: 'x',
      seq: 100,
      shard: 0,
      message: send('new', 1, 0, 6),
      now: NOW,
    });
    if (d.kind !== 'write') throw new Error(d.kind);
    const keys = Object.keys(d.record.inbound!);
    expect(keys).toHaveLength(INBOUND_MEMORY);
    expect(keys[0]).toBe('counter.s1'); // the least recently applied sender is forgotten
    expect(keys.at(-1)).toBe('counter.new');
  });

  it('a signal advances step and lastSeq, and FINISH completes with output', () => {
    const { record } = run([
      { kind: 'start', input: {} },
      { kind: 'signal', event: { type: 'SIG', n: 5 } },
      { kind: 'signal', event: { type: 'FINISH' } },
    ]);
    expect(record).toMatchObject({
      step: 2,
      lastSeq: 3,
      status: 'completed',
      output: { seq: [5], label: '' },
    });
    expect(record!.outbox.at(-1)).toMatchObject({
      kind: 'notify',
      notification: { type: 'completed' },
    });
  });

  it('rejects events the workflow cannot take, saying what it accepts', () => {
    const { decisions } = run(
      [
        { kind: 'start', input: { total: 10 } },
        { kind: 'signal', event: { type: 'SHIP' } },
      ],
      registry,
      'order',
    );
    const d = decisions[1]!;
    expect(d.kind).toBe('reject');
    if (d.kind === 'reject') {
      expect(d.error.code).toBe('event_not_accepted');
      expect(d.accepts).toEqual(['CANCEL_ORDER', 'PAY']);
    }
  });

  it('L9: an event the state handles but whose guard refused it is guard_rejected, not "cannot take"', () => {
    const { decisions } = run(
      [
        { kind: 'start', input: { total: 10 } },
        { kind: 'signal', event: { type: 'PAY', amount: 1 } },
      ],
      registry,
      'order',
    );
    const d = decisions[1]!;
    expect(d.kind).toBe('reject');
    if (d.kind === 'reject') {
      expect(d.error.code).toBe('guard_rejected');
      expect(d.error.message).toMatch(/handles event "PAY".*guard refused it/);
      expect(d.error.message).not.toMatch(/cannot take/);
      expect(d.accepts).toEqual(['CANCEL_ORDER', 'PAY']);
    }
  });

  it('a throwing guard is a machine_error rejection, not a crash', () => {
    const { decisions, record } = run([
      { kind: 'start', input: {} },
      { kind: 'signal', event: { type: 'BOOM' } },
    ]);
    expect(decisions[1]).toMatchObject({ kind: 'reject', error: { code: 'machine_error' } });
    expect(record!.step).toBe(0);
  });

  it('signals to a missing or finished workflow are rejected', () => {
    const missing = run([{ kind: 'signal', event: { type: 'SIG', n: 1 } }]);
    expect(missing.decisions[0]).toMatchObject({ kind: 'reject', error: { code: 'not_found' } });
    const done = run([
      { kind: 'start', input: {} },
      { kind: 'signal', event: { type: 'FINISH' } },
      { kind: 'signal', event: { type: 'SIG', n: 1 } },
    ]);
    expect(done.decisions[2]).toMatchObject({
      kind: 'reject',
      error: { code: 'already_finished' },
    });
  });

  it('cancel marks the workflow canceled and notifies', () => {
    const { record } = run([
      { kind: 'start', input: {} },
      { kind: 'cancel', reason: 'r' },
    ]);
    expect(record).toMatchObject({ status: 'canceled', step: 1 });
    expect(record!.outbox.at(-1)).toMatchObject({
      notification: { type: 'canceled', reason: 'r' },
    });
  });

  it('a running workflow keeps its version when a newer one is registered', () => {
    const v1 = run(
      [{ kind: 'start', input: {} }],
      createRegistry([versionedV1]),
      'versioned',
    ).record!;
    const both = createRegistry([versionedV1, versionedV2]);
    const d = decide({ registry: both, subjects }, v1, {
      type: 'versioned',
      id: 'x',
      seq: 2,
      shard: 0,
      message: { kind: 'signal', event: { type: 'GO' } },
      now: NOW,
    });
    expect(d).toMatchObject({ kind: 'write', record: { version: 1, output: { finishedOn: 1 } } });
    const fresh = decide({ registry: both, subjects }, undefined, {
      type: 'versioned',
      id: 'y',
      seq: 1,
      shard: 0,
      message: { kind: 'start', input: {} },
      now: NOW,
    });
    expect(fresh).toMatchObject({ kind: 'write', record: { version: 2 } });
  });

  it('property: the same messages always give the same record (determinism)', () => {
    const ev = fc.oneof(
      fc.record({
        kind: fc.constant('signal' as const),
        event: fc.record({ type: fc.constant('SIG'), n: fc.integer() }),
      }),
      fc.record({
        kind: fc.constant('signal' as const),
        event: fc.record({ type: fc.constantFrom('FINISH', 'NOPE', 'BOOM') }),
      }),
      fc.record({
        kind: fc.constant('cancel' as const),
        reason: fc.option(fc.string(), { nil: undefined }),
      }),
    );
    fc.assert(
      fc.property(fc.array(ev, { maxLength: 30 }), (events) => {
        const msgs: InboxMessage[] = [{ kind: 'start', input: {} }, ...events];
        expect(run(msgs).record).toEqual(run(msgs).record);
      }),
      { numRuns: 200 },
    );
  });

  it('property: SIG values are recorded in order until a terminal event', () => {
    fc.assert(
      fc.property(fc.array(fc.integer(), { maxLength: 50 }), (ns) => {
        const { record } = run([
          { kind: 'start', input: {} },
          ...ns.map((n): InboxMessage => ({ kind: 'signal', event: { type: 'SIG', n } })),
        ]);
        expect((record!.snapshot as { context: { seq: number[] } }).context.seq).toEqual(ns);
        expect(record!.step).toBe(ns.length);
      }),
      { numRuns: 100 },
    );
  });
});
