/** The statechart the console draws, read from the definition's XState machine. */
import { describe, expect, it } from 'vitest';
import { setup } from 'xstate';
import { chartOf, eventLabel, type Box } from '../../src/engine/chart.js';
import { orderMachine } from '../../actors/order.js';
import { merchantPaymentMachine } from '../../actors/merchant-payment.js';

describe('chartOf', () => {
  it('lists every state and targeted transition of the order, guards marked', () => {
    const c = chartOf('order', 1, orderMachine);
    expect(c.initial).toBe('awaitingPayment');
    expect(c.states.map((s) => [s.path, s.kind])).toEqual([
      ['', 'compound'],
      ['awaitingPayment', 'atomic'],
      ['paid', 'atomic'],
      ['packed', 'atomic'],
      ['shipped', 'atomic'],
      ['delivered', 'final'],
      ['canceled', 'final'],
    ]);
    expect(c.transitions).toContainEqual({
      from: 'awaitingPayment',
      to: ['paid'],
      event: 'PAY',
      label: 'PAY',
      guarded: true,
    });
    expect(c.transitions.filter((t) => t.event === 'CANCEL_ORDER')).toHaveLength(2);
  });

  it('names invoked activities and labels their done and error events', () => {
    const c = chartOf('merchantPayment', 1, merchantPaymentMachine);
    expect(c.states.find((s) => s.path === 'sendingToBank')?.invokes).toEqual([
      { id: 'sendToBank', src: 'sendToBank' },
    ]);
    expect(c.transitions.filter((t) => t.from === 'sendingToBank').map((t) => t.label)).toEqual([
      'done sendToBank',
      'error sendToBank',
    ]);
  });

  it('nested states get dotted paths, initial children, and always/after transitions', () => {
    const m = setup({}).createMachine({
      id: 'n',
      initial: 'a',
      states: {
        a: {
          initial: 'x',
          states: { x: { after: { 500: 'y' } }, y: { always: { target: '#n.b' } } },
        },
        b: { type: 'final' },
      },
    });
    const c = chartOf('n', 1, m);
    expect(c.states.find((s) => s.path === 'a')).toMatchObject({
      kind: 'compound',
      initial: 'a.x',
    });
    expect(c.transitions).toContainEqual(
      expect.objectContaining({ from: 'a.x', to: ['a.y'], label: 'after 500' }),
    );
    expect(c.transitions).toContainEqual(
      expect.objectContaining({ from: 'a.y', to: ['b'], label: 'always' }),
    );
    expect(eventLabel('xstate.done.state.n.a')).toBe('done');
  });

  it('lays a compound state out around its children (dagre), apart from its siblings; its transitions leave its border', () => {
    const m = setup({}).createMachine({
      id: 'o',
      initial: 'new',
      states: {
        new: { on: { GO: 'shipping' } },
        shipping: {
          initial: 'packing',
          on: { CANCEL: 'canceled' },
          states: {
            packing: { on: { PACKED: 'sending' } },
            sending: {
              initial: 'courier',
              states: { courier: { on: { HANDED: 'tracking' } }, tracking: {} },
              on: { SENT: '#o.done' },
            },
          },
        },
        canceled: { type: 'final' },
        done: { type: 'final' },
      },
    });
    const { layout } = chartOf('o', 1, m);
    const b = layout.states;
    const around = (outer: Box, inner: Box) =>
      outer.x < inner.x &&
      outer.y < inner.y &&
      outer.x + outer.width > inner.x + inner.width &&
      outer.y + outer.height > inner.y + inner.height;
    const apart = (p: Box, q: Box) =>
      p.x + p.width <= q.x ||
      q.x + q.width <= p.x ||
      p.y + p.height <= q.y ||
      q.y + q.height <= p.y;
    for (const c of ['shipping.packing', 'shipping.sending', 'shipping.sending.courier'])
      expect(around(b.shipping!, b[c]!)).toBe(true);
    expect(around(b['shipping.sending']!, b['shipping.sending.tracking']!)).toBe(true);
    expect(apart(b['shipping.packing']!, b['shipping.sending']!)).toBe(true);
    for (const [p, q] of [
      ['new', 'shipping'],
      ['shipping', 'canceled'],
      ['shipping', 'done'],
      ['canceled', 'done'],
    ] as const)
      expect(apart(b[p]!, b[q]!)).toBe(true);
    // Every box inside the drawing.
    for (const x of Object.values(b)) {
      expect(x.x).toBeGreaterThanOrEqual(0);
      expect(x.y).toBeGreaterThanOrEqual(0);
      expect(x.x + x.width).toBeLessThanOrEqual(layout.width);
      expect(x.y + x.height).toBeLessThanOrEqual(layout.height);
    }
    // CANCEL starts on shipping's border, not inside it at a child.
    const cancel = layout.edges.find((e) => e.label === 'CANCEL')!;
    const s = b.shipping!;
    const [p0] = cancel.points;
    const onBorder =
      (Math.abs(p0!.x - s.x) < 0.5 ||
        Math.abs(p0!.x - s.x - s.width) < 0.5 ||
        Math.abs(p0!.y - s.y) < 0.5 ||
        Math.abs(p0!.y - s.y - s.height) < 0.5) &&
      p0!.x >= s.x - 0.5 &&
      p0!.x <= s.x + s.width + 0.5;
    expect(onBorder).toBe(true);
    // GO ends on shipping's border too.
    const go = layout.edges.find((e) => e.label === 'GO')!;
    const end = go.points.at(-1)!;
    expect(Math.abs(end.x - s.x) < 0.5 || Math.abs(end.y - s.y) < 0.5).toBe(true);
  });
});
