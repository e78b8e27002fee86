import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { assignShards } from '../../src/nats/membership.js';

const owners = (ids: string[], shards: number) =>
  new Map(
    ids.flatMap((me) =>
      assignShards(
        ids.map((id) => ({ id })),
        shards,
        me,
      ).map((s) => [s, me] as const),
    ),
  );

describe('shard assignment', () => {
  it('property: every shard has exactly one owner and counts are floor/ceil of S/E', () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.string({ minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 9 }),
        fc.integer({ min: 1, max: 256 }),
        (ids, shards) => {
          const per = ids.map((me) =>
            assignShards(
              ids.map((id) => ({ id })),
              shards,
              me,
            ),
          );
          const all = per.flat().sort((a, b) => a - b);
          expect(all).toEqual(Array.from({ length: shards }, (_, i) => i));
          for (const p of per) {
            expect(p.length).toBeGreaterThanOrEqual(Math.floor(shards / ids.length));
            expect(p.length).toBeLessThanOrEqual(Math.ceil(shards / ids.length));
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('3 engines and 64 shards give 21/21/22; a leaving engine moves few shards besides its own', () => {
    const ids = ['e-a', 'e-b', 'e-c'];
    expect(
      ids
        .map(
          (me) =>
            assignShards(
              ids.map((id) => ({ id })),
              64,
              me,
            ).length,
        )
        .sort(),
    ).toEqual([21, 21, 22]);
    const before = owners(ids, 64);
    const after = owners(['e-a', 'e-c'], 64);
    const moved = [...before].filter(([s, o]) => after.get(s) !== o).length;
    const own = [...before.values()].filter((o) => o === 'e-b').length;
    expect(moved).toBeLessThanOrEqual(own + 6);
  });

  it('draining engines get nothing', () => {
    expect(assignShards([{ id: 'a' }, { id: 'b', draining: true }], 8, 'b')).toEqual([]);
    expect(assignShards([{ id: 'a' }, { id: 'b', draining: true }], 8, 'a')).toHaveLength(8);
  });
});
