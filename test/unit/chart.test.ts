/** The statechart the console draws, read from the definition's XState machine. */
import { describe, expect, it } from 'vitest';
import { setup } from 'xstate';
import { chartOf, eventLabel } from '../../src/engine/chart.js';
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
});
