/** The stored form of a journal step entry: what it leaves out, and that readers get it back. */
import { describe, expect, it } from 'vitest';
import { pack, unpack } from '../../src/contracts/codec.js';
import type { JournalEntry } from '../../src/contracts/wire.js';
import {
  foldedEntry,
  journalState,
  readEntry,
  storedEntry,
  withoutSnapshot,
} from '../../src/engine/journal.js';

type Step = Extract<JournalEntry, { kind: 'step' }>;

const base: Step = {
  v: 1,
  kind: 'step',
  workflowType: 'order',
  id: 'o1',
  version: 1,
  step: 1,
  at: 1000,
  engine: 'e1',
  seq: 7,
  cause: 'result',
  event: { type: 'xstate.done.actor.a', payload: { output: 1 } },
  from: journalState('a'),
  to: journalState({ ship: 'packing' }),
  status: 'running',
  stateSince: 1000,
  snapshot: { status: 'active', value: { ship: 'packing' }, context: { x: 1 }, children: {} },
  effects: [
    { kind: 'task', actorId: 'b', taskId: 'order.o1.1.b', activity: 'inc', queue: 'q', input: 1 },
  ],
  needsReview: false,
  tasks: {
    b: { taskId: 'order.o1.1.b', taskKey: 'kb', activity: 'inc', queue: 'q' },
    // Issued by an earlier step: kept whole.
    w: { taskId: 'order.o1.0.w', taskKey: 'kw', activity: 'wait', queue: 'q2', noticed: 2 },
  },
  createdAt: 900,
};

/** Through the wire: stored form, msgpack, and back as a reader gets it. */
const roundTrip = (e: JournalEntry) =>
  readEntry(unpack(pack(storedEntry(e))) as JournalEntry) as Step;

describe('journal entry stored form', () => {
  it('leaves out what the entry repeats and readers get the full entry back', () => {
    const stored = storedEntry(base) as Partial<Step>;
    expect(stored.to).toBeUndefined();
    expect(stored.stateSince).toBeUndefined();
    expect(stored.needsReview).toBeUndefined();
    expect(stored.tasks!.b).toEqual({ taskKey: 'kb' });
    expect(stored.tasks!.w).toEqual(base.tasks!.w);
    expect(pack(stored).length).toBeLessThan(pack(base).length);
    expect(roundTrip(base)).toEqual({ ...base, context: { x: 1 } });
  });

  it('keeps what differs: an older stateSince, needsReview, a task not matching its effect', () => {
    const e: Step = {
      ...base,
      stateSince: 500,
      needsReview: true,
      tasks: { b: { ...base.tasks!.b!, queue: 'other' } },
    };
    const stored = storedEntry(e) as Partial<Step>;
    expect(stored.stateSince).toBe(500);
    expect(stored.needsReview).toBe(true);
    expect(stored.tasks!.b).toEqual(e.tasks!.b);
    expect(roundTrip(e)).toEqual({ ...e, context: { x: 1 } });
  });

  it('a completed entry: the output is read from the snapshot', () => {
    const e: Step = {
      ...base,
      status: 'completed',
      to: journalState('done'),
      snapshot: { status: 'done', value: 'done', output: { x: 3 }, context: { x: 3 } },
      effects: [{ kind: 'notify', type: 'completed' }],
      tasks: undefined,
      output: { x: 3 },
    };
    delete (e as Partial<Step>).tasks;
    expect((storedEntry(e) as Partial<Step>).output).toBeUndefined();
    expect(roundTrip(e)).toEqual({ ...e, context: { x: 3 } });
  });

  it('an entry written before the stored form reads unchanged (plus its context)', () => {
    expect(readEntry(unpack(pack(base)) as JournalEntry)).toEqual({ ...base, context: { x: 1 } });
  });

  it('an entry without its snapshot (too large) keeps every field', () => {
    const e = { ...base, snapshotOmitted: { bytes: 2_000_000 } } as Step;
    delete (e as Partial<Step>).snapshot;
    expect(storedEntry(e)).toBe(e);
    expect(readEntry(e)).toEqual(e);
  });

  it('withoutSnapshot drops snapshot and context, and the pending tasks only when asked', () => {
    const e = { ...base, context: { x: 1 } } as Step;
    const slim = withoutSnapshot(e, { bytes: 9 }) as Step;
    expect(slim.snapshot).toBeUndefined();
    expect(slim.context).toBeUndefined();
    expect(slim.tasks).toEqual(base.tasks);
    expect(slim.snapshotOmitted).toEqual({ bytes: 9 });
    expect({
      ...slim,
      snapshot: e.snapshot,
      context: e.context,
      snapshotOmitted: undefined,
    }).toEqual({ ...e, snapshotOmitted: undefined });
    expect((withoutSnapshot(e, { bytes: -1, folded: true }, true) as Step).tasks).toBeUndefined();
  });

  it('a folded step keeps a small snapshot and task table, and is thinned when either is large', () => {
    expect(foldedEntry(base, 16 * 1024)).toBe(base);
    const thin = foldedEntry(base, 64) as Step;
    expect(thin.snapshot).toBeUndefined();
    expect(thin.tasks).toBeUndefined();
    expect(thin.snapshotOmitted).toEqual({ bytes: -1, folded: true });
    expect(thin.to).toEqual(base.to);
    expect(thin.effects).toEqual(base.effects);
  });

  it('a deferred workflow entry (no machine started: snapshot null) is stored and read whole', () => {
    // A throw here hung every deferred start: the journal effect failed, the start had no reply.
    const e = { ...base, snapshot: null, status: 'deferred' } as unknown as Step;
    expect(storedEntry(e)).toBe(e);
    expect(roundTrip(e)).toEqual(e);
  });
});
