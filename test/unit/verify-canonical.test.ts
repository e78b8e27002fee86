/**
 * `canonical()` (verify's comparison text) writes sorted JSON directly; it must give exactly the
 * text of the plain way, `JSON.stringify` of a copy with every object's keys sorted, for any
 * value (index-like keys, holes, undefined, functions, non-finite numbers, typed arrays, dates).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { canonical } from '../../src/engine/verify.js';

const sortKeys = (v: unknown): unknown => {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    // defineProperty, not assignment: an own "__proto__" key stays a key (assigned, it would set
    // the copy's prototype and vanish from the text), as canonical() keeps it.
    for (const k of Object.keys(v).sort())
      Object.defineProperty(out, k, {
        value: sortKeys((v as Record<string, unknown>)[k]),
        enumerable: true,
        writable: true,
        configurable: true,
      });
    return out;
  }
  return v;
};
const reference = (v: unknown) => JSON.stringify(sortKeys(v)) ?? 'undefined';

describe('canonical', () => {
  it('is JSON.stringify of the key-sorted copy', () => {
    fc.assert(
      fc.property(
        fc.anything({
          withBoxedValues: false,
          withMap: false,
          withSet: false,
          withObjectString: true,
          withNullPrototype: true,
          withSparseArray: true,
          withTypedArray: true,
          withDate: true,
          withBigInt: false,
        }),
        (v) => {
          expect(canonical(v)).toBe(reference(v));
        },
      ),
      { numRuns: 3_000 },
    );
  });

  it('keeps an own "__proto__" key (found by fast-check: [{"":{"__proto__":0}}])', () => {
    const v = JSON.parse('[{"":{"__proto__":0}}]') as unknown;
    expect(canonical(v)).toBe('[{"":{"__proto__":0}}]');
    expect(canonical(v)).toBe(reference(v));
  });

  it('orders index-like keys as a copy would', () => {
    for (const v of [
      {
        b: 1,
        10: 2,
        9: 3,
        a: [undefined, () => 1, NaN, -0],
        '01': 4,
        4294967295: 5,
        4294967294: 6,
      },
      [1, , 3], // eslint-disable-line no-sparse-arrays
      { x: undefined, y: () => 1, z: Infinity },
      new Uint8Array([3, 1, 2]),
      undefined,
      'text',
    ])
      expect(canonical(v)).toBe(reference(v));
  });
});
