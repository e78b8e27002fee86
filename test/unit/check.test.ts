/** `jetflow check`: ten broken definitions each get their finding; the shipped ones are clean. */
import { describe, expect, it } from 'vitest';
import { checkAgainstLive, checkDefinition, checkDefinitions } from '../../src/engine/check.js';
import { workflows } from '../../actors/index.js';
import { merchantPayment } from '../../actors/merchant-payment.js';
import { broken } from '../fixtures/broken-workflows.js';

describe('check', () => {
  it('the shipped demo definitions pass clean (no error, no warning)', () => {
    expect(checkDefinitions(workflows)).toEqual([]);
  });

  it.each(broken.map((b) => [b.def.type, b] as const))('%s: flagged with its finding', (_, b) => {
    const found = checkDefinition(b.def);
    expect(found.map((f) => [f.code, f.state])).toEqual([[b.expected, b.state]]);
    expect(found[0]!.message.length).toBeGreaterThan(10);
  });

  it('against live counts: states in flight that the new version no longer has', () => {
    const found = checkAgainstLive(merchantPayment, [
      { state: 'calculating', count: 3 },
      { state: 'approving', count: 2 },
      { state: 'gone', count: 0 },
    ]);
    expect(found).toEqual([
      expect.objectContaining({ code: 'state-removed', state: 'approving', severity: 'error' }),
    ]);
  });
});
