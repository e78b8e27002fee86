/** The sliding-window slot arithmetic of activity rate limits, as properties. */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { reserveSlot } from '../../src/engine/ratelimit.js';

describe('reserveSlot', () => {
  it('never grants more than limit in any window of periodMs, never before now, in order', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 10, max: 5_000 }),
        // Callers arriving at these offsets (not sorted: clocks differ a little between workers).
        fc.array(fc.integer({ min: 0, max: 20_000 }), { minLength: 1, maxLength: 200 }),
        (limit, periodMs, arrivals) => {
          let grants: number[] = [];
          const all: number[] = [];
          for (const now of arrivals) {
            const g = reserveSlot(grants, limit, periodMs, now);
            expect(g.at).toBeGreaterThanOrEqual(now);
            expect(g.grants.length).toBeLessThanOrEqual(limit);
            grants = g.grants;
            all.push(g.at);
          }
          for (let i = 1; i < all.length; i++) expect(all[i]!).toBeGreaterThanOrEqual(all[i - 1]!);
          for (let i = 0; i + limit < all.length; i++)
            expect(all[i + limit]! - all[i]!).toBeGreaterThanOrEqual(periodMs);
        },
      ),
    );
  });

  it('grants at once while the window has room, then at the oldest grant plus the period', () => {
    let grants: number[] = [];
    const at = (now: number) => {
      const g = reserveSlot(grants, 3, 1_000, now);
      grants = g.grants;
      return g.at;
    };
    expect([at(0), at(10), at(20)]).toEqual([0, 10, 20]);
    expect(at(30)).toBe(1_000);
    expect(at(40)).toBe(1_010);
    expect(at(5_000)).toBe(5_000);
  });
});
