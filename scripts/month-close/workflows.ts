/**
 * The month close of the billing talk (issue 23's demo), as jetflow workflows:
 *
 * - `monthCloseUser` (one per customer, an item of the batch): invoice → charge → email, or
 *   invoice → charge declined → account hold. The charge runs on the throttled, flaky `payments`
 *   queue and re-reads the balance itself (the world may have changed since the invoice).
 * - `monthReport` (started by the batch's callback): builds the month's report from the batch's
 *   counts and the ledger of the fake world.
 */
import { assign, setup } from 'xstate';
import { defineWorkflow } from '../../src/engine/registry.js';
import { activity } from '../../src/engine/activity.js';

const retry = {
  maxAttempts: 8,
  initialIntervalMs: 50,
  backoffCoefficient: 2,
  maxIntervalMs: 1_000,
};

interface UserCtx {
  userId: string;
  month: string;
  invoice?: { invoiceId: string; amount: number };
  charged?: number;
  outcome?: 'charged' | 'nothing-due' | 'held';
}
interface ReportCtx {
  batch: { id: string; outcome: string; counts: Record<string, number> };
  report?: unknown;
}

export const monthCloseUser = defineWorkflow({
  type: 'monthCloseUser',
  version: 1,
  machine: setup({
    types: {
      input: {} as { userId: string; month: string },
      context: {} as UserCtx,
    },
    actors: {
      generateInvoice: activity('generateInvoice', { queue: 'billing', retry }),
      charge: activity('charge', {
        queue: 'payments',
        retry: { ...retry, nonRetryableErrorTypes: ['CardDeclined'] },
      }),
      sendEmail: activity('sendEmail', { queue: 'email', retry }),
      placeHold: activity('placeHold', { queue: 'billing', retry }),
    },
  }).createMachine({
    id: 'monthCloseUser',
    context: ({ input }) => ({ userId: input.userId, month: input.month }),
    initial: 'invoicing',
    states: {
      invoicing: {
        invoke: {
          src: 'generateInvoice',
          input: ({ context }: { context: UserCtx }) => ({
            userId: context.userId,
            month: context.month,
          }),
          onDone: {
            target: 'charging',
            actions: assign({
              invoice: ({ event }) => event.output as { invoiceId: string; amount: number },
            }),
          },
        },
      },
      charging: {
        invoke: {
          src: 'charge',
          input: ({ context }: { context: UserCtx }) => ({
            userId: context.userId,
            invoice: context.invoice,
          }),
          onDone: {
            target: 'emailing',
            actions: assign({
              charged: ({ event }) => (event.output as { charged: number }).charged,
              outcome: ({ event }) =>
                (event.output as { charged: number }).charged > 0 ? 'charged' : 'nothing-due',
            }),
          },
          onError: 'holding',
        },
      },
      emailing: {
        invoke: {
          src: 'sendEmail',
          input: ({ context }: { context: UserCtx }) => ({
            userId: context.userId,
            charged: context.charged,
          }),
          onDone: 'done',
        },
      },
      holding: {
        invoke: {
          src: 'placeHold',
          input: ({ context }: { context: UserCtx }) => ({
            userId: context.userId,
            invoice: context.invoice,
          }),
          onDone: { target: 'done', actions: assign({ outcome: 'held' }) },
        },
      },
      done: { type: 'final' },
    },
    output: ({ context }) => ({ outcome: context.outcome, charged: context.charged ?? 0 }),
  }),
});

export const monthReport = defineWorkflow({
  type: 'monthReport',
  version: 1,
  machine: setup({
    types: {
      input: {} as { id: string; outcome: string; counts: Record<string, number> },
      context: {} as ReportCtx,
    },
    actors: { buildReport: activity('buildReport', { queue: 'billing', retry }) },
  }).createMachine({
    id: 'monthReport',
    context: ({ input }) => ({ batch: input }),
    initial: 'building',
    states: {
      building: {
        invoke: {
          src: 'buildReport',
          input: ({ context }: { context: ReportCtx }) => context.batch,
          onDone: { target: 'done', actions: assign({ report: ({ event }) => event.output }) },
        },
      },
      done: { type: 'final' },
    },
    output: ({ context }) => context.report,
  }),
});

export const monthCloseWorkflows = [monthCloseUser, monthReport];
