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
