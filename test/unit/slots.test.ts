import { describe, expect, it } from 'vitest';
import { EMPTY_SLOTS, releaseSlot, renewSlot, takeSlot } from '../../src/engine/slots.js';

describe('activity concurrency slots (pure)', () => {
  it('grants up to the limit, then refuses; a holder asking again keeps its slot', () => {
    let r = EMPTY_SLOTS;
    for (const id of ['a', 'b']) {
      const t = takeSlot(r, id, 'w1', 2, 1_000, 500);
      expect(t.granted).toBe(true);
      r = t.record;
    }
    expect(takeSlot(r, 'c', 'w2', 2, 1_100, 500).granted).toBe(false);
    const again = takeSlot(r, 'a', 'w1', 2, 1_200, 500);
    expect(again.granted).toBe(true);
    expect(again.record.holders.find((h) => h.id === 'a')!.exp).toBe(1_700);
  });

  it("a dead worker's holder is dropped once its lease has passed", () => {
    let r = takeSlot(EMPTY_SLOTS, 'a', 'dead', 1, 0, 500).record;
    expect(takeSlot(r, 'b', 'w', 1, 499, 500).granted).toBe(false);
    const t = takeSlot(r, 'b', 'w', 1, 500, 500);
    expect(t.granted).toBe(true);
    expect(t.record.holders.map((h) => h.id)).toEqual(['b']);
    r = releaseSlot(t.record, 'b', 600);
    expect(r.holders).toEqual([]);
  });

  it('a renewal extends the lease, and puts back a holder that lost it (over the limit)', () => {
    let r = takeSlot(EMPTY_SLOTS, 'a', 'w1', 1, 0, 500).record;
    expect(renewSlot(r, 'a', 'w1', 300, 500, 0)).toMatchObject({ lost: false });
    r = renewSlot(r, 'a', 'w1', 300, 500, 0).record;
    expect(r.holders[0]!.exp).toBe(800);
    // Its lease passed and another took the slot: it is put back, and nothing new is admitted.
    r = takeSlot(r, 'b', 'w2', 1, 900, 500).record;
    const back = renewSlot(r, 'a', 'w1', 950, 500, 0);
    expect(back.lost).toBe(true);
    expect(back.record.holders.map((h) => h.id)).toEqual(['b', 'a']);
    expect(takeSlot(back.record, 'c', 'w3', 1, 960, 500).granted).toBe(false);
  });
});
