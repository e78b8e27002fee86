/** Workflows of the benchmark (loaded by the benchmark's engine process). */
import { assign, enqueueActions, setup } from 'xstate';
import { activity } from '../src/engine/activity.js';
import { defineWorkflow, type WorkflowDefinition } from '../src/engine/registry.js';

const inc = activity<{ x: number }, number>('inc', {
  retry: { maxAttempts: 3, initialIntervalMs: 100 },
});

/** Workload 1: three sequential trivial activities (each returns its input + 1). */
export const sequential = defineWorkflow({
  type: 'sequential',
  version: 1,
  machine: setup({
    types: { input: {} as { x: number }, context: {} as { x: number } },
    actors: { inc },
  }).createMachine({
    id: 'sequential',
    context: ({ input }) => ({ x: input?.x ?? 0 }),
    initial: 'a',
    states: {
      a: {
        invoke: {
          id: 'a',
          src: 'inc',
          input: ({ context }) => ({ x: context.x }),
          onDone: { target: 'b', actions: assign({ x: ({ event }) => event.output }) },
        },
      },
      b: {
        invoke: {
          id: 'b',
          src: 'inc',
          input: ({ context }) => ({ x: context.x }),
          onDone: { target: 'c', actions: assign({ x: ({ event }) => event.output }) },
        },
      },
      c: {
        invoke: {
          id: 'c',
          src: 'inc',
          input: ({ context }) => ({ x: context.x }),
          onDone: { target: 'done', actions: assign({ x: ({ event }) => event.output }) },
        },
      },
      done: { type: 'final' },
    },
    output: ({ context }) => ({ x: context.x }),
  }),
});

/** Workload 2: N activities in parallel, joined. */
export const fanout = defineWorkflow({
  type: 'fanout',
  version: 1,
  machine: setup({
    types: { input: {} as { n: number }, context: {} as { n: number; done: number; sum: number } },
    actors: { inc },
    guards: { all: ({ context }) => context.done === context.n },
  }).createMachine({
    id: 'fanout',
    context: ({ input }) => ({ n: input?.n ?? 0, done: 0, sum: 0 }),
    initial: 'running',
    states: {
      running: {
        entry: enqueueActions(({ context, enqueue }) => {
          for (let i = 0; i < context.n; i++)
            enqueue.spawnChild('inc', { id: `i${i}`, input: { x: i } });
        }),
        always: { guard: 'all', target: 'joined' },
        on: {
          'xstate.done.actor.*': {
            actions: assign({
              done: ({ context }) => context.done + 1,
              sum: ({ context, event }) =>
                context.sum + (event as unknown as { output: number }).output,
            }),
          },
        },
      },
      joined: { type: 'final' },
    },
    output: ({ context }) => ({ done: context.done, sum: context.sum }),
  }),
});

/** Workload 3: a live workflow that takes signals. */
export const live = defineWorkflow({
  type: 'live',
  version: 1,
  machine: setup({
    types: { context: {} as { n: number }, events: {} as { type: 'TICK' } },
  }).createMachine({
    id: 'live',
    context: { n: 0 },
    initial: 'on',
    states: { on: { on: { TICK: { actions: assign({ n: ({ context }) => context.n + 1 }) } } } },
  }),
});

/** Workloads 4 and 5: a workflow that waits for a timer of `ms`. */
export const sleeper = defineWorkflow({
  type: 'sleeper',
  version: 1,
  machine: setup({
    types: { input: {} as { ms: number }, context: {} as { ms: number } },
    delays: { wait: ({ context }) => context.ms },
  }).createMachine({
    id: 'sleeper',
    context: ({ input }) => ({ ms: input?.ms ?? 1000 }),
    initial: 'waiting',
    states: { waiting: { after: { wait: 'woke' } }, woke: { type: 'final' } },
  }),
});

/** A line of an order: what `bench:memory` fills a ~10 KB context with. */
export interface OrderLine {
  sku: string;
  qty: number;
  price: number;
  note: string;
}

/** `bench:memory`: a workflow that keeps its input (order lines) as its context and waits. */
export const holder = defineWorkflow({
  type: 'holder',
  version: 1,
  machine: setup({
    types: {
      input: {} as { lines: OrderLine[] },
      context: {} as { lines: OrderLine[]; status: string },
      events: {} as { type: 'CLOSE' },
    },
  }).createMachine({
    id: 'holder',
    context: ({ input }) => ({ lines: input?.lines ?? [], status: 'open' }),
    initial: 'open',
    states: { open: { on: { CLOSE: 'closed' } }, closed: { type: 'final' } },
  }),
});

/**
 * `bench:keys`: workload 1 with a concurrency key that never waits (limit 1,000, more than the
 * benchmark's concurrency): what the admission stage costs when nothing is deferred.
 */
export const sequentialKeyed = defineWorkflow({
  type: 'sequentialKeyed',
  version: 1,
  machine: sequential.machine,
  concurrency: { key: (input: { x: number; k?: string }) => input.k ?? 'all', limit: 1_000 },
});

/** `bench:keys`: holds its key's only slot until CLOSE: the admission latency of the next one. */
export const gate = defineWorkflow({
  type: 'gate',
  version: 1,
  machine: setup({
    types: { input: {} as { k: string }, events: {} as { type: 'CLOSE' } },
  }).createMachine({
    id: 'gate',
    initial: 'open',
    states: { open: { on: { CLOSE: 'closed' } }, closed: { type: 'final' } },
  }),
  concurrency: { key: (input: { k: string }) => input.k, limit: 1 },
});

/** `bench:priority`: workload 1 with its three activities at priority 1 (their own subjects). */
export const sequentialPrio = defineWorkflow({
  type: 'sequentialPrio',
  version: 1,
  machine: sequential.machine.provide({
    actors: {
      inc: activity<{ x: number }, number>('inc', {
        priority: 1,
        retry: { maxAttempts: 3, initialIntervalMs: 100 },
      }),
    },
  }),
});

export const workflows: WorkflowDefinition[] = [
  sequential,
  sequentialPrio,
  fanout,
  live,
  sleeper,
  holder,
  sequentialKeyed,
  gate,
];
export default workflows;
