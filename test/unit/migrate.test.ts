/** `jetflow migrate --dry-run`'s plan: map a v1 snapshot to v2 and validate it against v2. */
import { describe, expect, it } from 'vitest';
import { createRegistry } from '../../src/engine/registry.js';
import { decide } from '../../src/engine/step.js';
import { verifyContext } from '../../src/engine/verify.js';
import { planMigration } from '../../src/engine/migrate.js';
import * as m from '../../src/engine/machine.js';
import { merchantPayment } from '../../actors/merchant-payment.js';
import { renamed } from '../fixtures/merchant-variants.js';
import type { WorkflowRecord } from '../../src/contracts/wire.js';

const ctx = verifyContext(createRegistry([merchantPayment]));
const started = (id: string): WorkflowRecord => {
  const d = decide(ctx, undefined, {
    type: 'merchantPayment',
    id,
    shard: 0,
    seq: 1,
    message: { kind: 'start', input: { merchantId: id } },
    now: 1,
  });
  if (d.kind !== 'write') throw new Error(d.kind);
  return d.record;
};

describe('migration plan', () => {
  it('a state rename: blocked without a map (state gone), valid with one; the snapshot restores on v2', () => {
    const rec = started('a');
    const bare = planMigration(rec, renamed);
    expect(bare.problems).toEqual([
      'state gettingVouchers does not exist in merchantPayment@2',
      'in-flight activity getSoldVouchers (getSoldVouchers) is invoked by no state the workflow would be in',
    ]);
    const mapped = planMigration(rec, renamed, {
      states: { gettingVouchers: 'fetchingVouchers' },
      context: (c) => ({ ...(c as object), currency: 'EUR' }),
    });
    expect(mapped.problems).toEqual([]);
    expect(mapped.paths).toEqual({ before: ['gettingVouchers'], after: ['fetchingVouchers'] });
    expect(mapped.contextChanged).toBe(true);
    const live = m.restore(renamed.machine, mapped.snapshot);
    expect(live.value).toBe('fetchingVouchers');
    expect((live.context as { currency: string }).currency).toBe('EUR');
  });

  it('a rename onto a state that does not invoke the pending activity is reported, not dropped', () => {
    const plan = planMigration(started('b'), renamed, { states: { gettingVouchers: 'paid' } });
    expect(plan.problems).toEqual([
      'in-flight activity getSoldVouchers (getSoldVouchers) is invoked by no state the workflow would be in',
    ]);
    expect(plan.snapshot).toBeUndefined();
  });
});

describe('the migrate admin step', () => {
  const both = verifyContext(createRegistry([merchantPayment, renamed]));
  const admin = (rec: WorkflowRecord, extra: Partial<Record<string, unknown>>, seq = 10) =>
    decide(both, rec, {
      type: rec.type,
      id: rec.id,
      shard: 0,
      seq,
      now: 5,
      message: {
        kind: 'admin',
        verb: 'migrate',
        reason: 'rename',
        by: 'test',
        version: 2,
        expectStep: rec.step,
        jobId: 'job1',
        ...extra,
      } as never,
    });

  it('moves the workflow at the step it was planned from, marks it, journals the operator', () => {
    const rec = started('c');
    const plan = planMigration(rec, renamed, { states: { gettingVouchers: 'fetchingVouchers' } });
    const d = admin(rec, { snapshot: plan.snapshot });
    if (d.kind !== 'write') throw new Error(d.kind);
    expect(d.record.version).toBe(2);
    expect(d.record.step).toBe(rec.step + 1);
    expect((d.record.snapshot as { value: unknown }).value).toBe('fetchingVouchers');
    expect(d.record.tasks).toEqual(rec.tasks);
    expect(d.record.migration).toEqual({
      jobId: 'job1',
      from: 1,
      to: 2,
      step: rec.step + 1,
      at: 5,
    });
    const j = d.record.outbox.find((e) => e.kind === 'journal');
    expect(j).toMatchObject({
      cause: 'operator',
      event: { type: 'jetflow.migrate', payload: { from: 1, to: 2, jobId: 'job1' } },
      operator: { action: 'migrate', by: 'test', reason: 'rename' },
    });
    // The same job again: a duplicate, nothing changes.
    const again = admin(d.record, { snapshot: plan.snapshot, expectStep: d.record.step });
    expect(again).toMatchObject({ kind: 'noop', reply: { duplicate: true } });
  });

  it('refuses a plan made from another step (conflict) and a snapshot the new machine rejects', () => {
    const rec = started('d');
    const plan = planMigration(rec, renamed, { states: { gettingVouchers: 'fetchingVouchers' } });
    const stale = admin(rec, { snapshot: plan.snapshot, expectStep: rec.step - 1 });
    expect(stale.kind === 'reject' && stale.error.code).toBe('conflict');
    const bad = admin(rec, { snapshot: rec.snapshot }); // gettingVouchers is not a v2 state
    expect(bad.kind === 'reject' && bad.error.code).toBe('invalid_state');
    const unknown = admin(rec, { snapshot: plan.snapshot, version: 3 });
    expect(unknown.kind === 'reject' && unknown.error.code).toBe('unknown_version');
  });
});
