/**
 * Demo workflow `order`: an order that is paid, packed, shipped and delivered, driven by signals
 * from other services. Pure XState: no I/O. A `CANCEL_ORDER` while not yet shipped ends it in
 * `canceled`; payment must match the order total (a guard).
 */
import { assign, setup } from 'xstate';
import { defineWorkflow } from '../src/engine/registry.js';

export interface OrderInput {
  orderId?: string;
  total?: number;
}

export const orderMachine = setup({
  types: {
    input: {} as OrderInput | undefined,
    context: {} as { total: number; paid: number; history: string[] },
    events: {} as
      | { type: 'PAY'; amount: number }
      | { type: 'PACK' }
      | { type: 'SHIP'; carrier?: string }
      | { type: 'DELIVER' }
      | { type: 'CANCEL_ORDER' },
  },
  guards: {
    paysInFull: ({ context, event }) => event.type === 'PAY' && event.amount >= context.total,
  },
}).createMachine({
  id: 'order',
  context: ({ input }) => ({ total: input?.total ?? 0, paid: 0, history: [] }),
  initial: 'awaitingPayment',
  states: {
    awaitingPayment: {
      tags: ['open'],
      on: {
        PAY: {
          guard: 'paysInFull',
          target: 'paid',
          actions: assign({
            paid: ({ event }) => event.amount,
            history: ({ context }) => [...context.history, 'paid'],
          }),
        },
        CANCEL_ORDER: 'canceled',
      },
    },
    paid: {
      tags: ['open'],
      on: {
        PACK: {
          target: 'packed',
          actions: assign({ history: ({ context }) => [...context.history, 'packed'] }),
        },
        CANCEL_ORDER: 'canceled',
      },
    },
    packed: {
      on: {
        SHIP: {
          target: 'shipped',
          actions: assign({ history: ({ context }) => [...context.history, 'shipped'] }),
        },
      },
    },
    shipped: {
      on: {
        DELIVER: {
          target: 'delivered',
          actions: assign({ history: ({ context }) => [...context.history, 'delivered'] }),
        },
      },
    },
    delivered: { type: 'final' },
    canceled: { type: 'final' },
  },
  output: ({ context }) => ({ paid: context.paid, history: context.history }),
});

export const order = defineWorkflow({ type: 'order', version: 1, machine: orderMachine });
