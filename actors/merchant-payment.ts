/**
 * Demo workflow `merchantPayment` (Backbeat's reason to exist): get the merchant's sold
 * vouchers → calculate the payment → send it to the bank. Each step is an activity run by a
 * worker and retried on its own; sending to the bank goes through queue `bank`, whose global
 * in-flight limit (set by the worker) is "only N connections to the bank".
 */
import { assign, setup } from 'xstate';
import { defineWorkflow } from '../src/engine/registry.js';
import { activity } from '../src/engine/activity.js';

export interface Voucher {
  id: string;
  price: number;
}

export const merchantPaymentMachine = setup({
  types: {
    input: {} as { merchantId: string },
    context: {} as {
      merchantId: string;
      vouchers: Voucher[];
      amount: number;
      bankRef: string | null;
      error: unknown;
    },
  },
  actors: {
    getSoldVouchers: activity<{ merchantId: string }, Voucher[]>('getSoldVouchers', {
      startToCloseMs: 10_000,
    }),
    calculatePayment: activity<{ vouchers: Voucher[] }, number>('calculatePayment', {}),
    sendToBank: activity<{ merchantId: string; amount: number }, string>('sendToBank', {
      queue: 'bank',
      startToCloseMs: 30_000,
      retry: {
        maxAttempts: 6,
        initialIntervalMs: 200,
        backoffCoefficient: 2,
        maxIntervalMs: 5_000,
      },
    }),
  },
}).createMachine({
  id: 'merchantPayment',
  context: ({ input }) => ({
    merchantId: input?.merchantId ?? 'unknown',
    vouchers: [],
    amount: 0,
    bankRef: null,
    error: null,
  }),
  initial: 'gettingVouchers',
  states: {
    gettingVouchers: {
      invoke: {
        id: 'getSoldVouchers',
        src: 'getSoldVouchers',
        input: ({ context }) => ({ merchantId: context.merchantId }),
        onDone: {
          target: 'calculating',
          actions: assign({ vouchers: ({ event }) => event.output }),
        },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
      },
    },
    calculating: {
      invoke: {
        id: 'calculatePayment',
        src: 'calculatePayment',
        input: ({ context }) => ({ vouchers: context.vouchers }),
        onDone: {
          target: 'sendingToBank',
          actions: assign({ amount: ({ event }) => event.output }),
        },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
      },
    },
    sendingToBank: {
      invoke: {
        id: 'sendToBank',
        src: 'sendToBank',
        input: ({ context }) => ({ merchantId: context.merchantId, amount: context.amount }),
        onDone: { target: 'paid', actions: assign({ bankRef: ({ event }) => event.output }) },
        onError: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
      },
    },
    paid: { type: 'final' },
    // Tagged `failed`: the workflow ends with status `failed` (its error from `output.error`).
    failed: { type: 'final', tags: ['failed'] },
  },
  output: ({ context }) => ({
    merchantId: context.merchantId,
    vouchers: context.vouchers.length,
    amount: context.amount,
    bankRef: context.bankRef,
    error: context.error,
  }),
});

export const merchantPayment = defineWorkflow({
  type: 'merchantPayment',
  version: 1,
  machine: merchantPaymentMachine,
});
