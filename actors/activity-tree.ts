/**
 * `activityTree`: Backbeat's model as one generic machine (ACTIVITY-TREES §2.2). Its context is
 * the node tree (a flat table); every rule lives in the pure reducer (`activity-tree/reduce.ts`);
 * this machine only turns the reducer's commands into the engine's actions: node tasks are
 * dispatched engine-natively (`jetflow.dispatch`, no XState child per node), `fireAt` and
 * re-alerts are durable timers (delayed raises), node changes and alerts are emitted events.
 *
 * A tree never completes by itself: a `close` signal moves it to `closing`, and it completes
 * when no node is open. A node with `onExhausted: "fail"` ends it `failed` (E11).
 */
import { enqueueActions, setup } from 'xstate';
import { defineWorkflow, type WorkflowDefinition } from '../src/engine/registry.js';
import {
  cancelTask,
  dispatch,
  jetflowActions,
  reject,
  reply,
  sendToWorkflow,
} from '../src/engine/machine.js';
import {
  initTree,
  isIdle,
  reduce,
  summary,
  type Tree,
  type TreeEvent,
  type TreeInput,
} from './activity-tree/reduce.js';
import { treeQueryContext, treeViews } from './activity-tree/views.js';

/** Context before the first step: the input was invalid (the start is rejected, never stored). */
type Context = Tree | { invalid: { code: string; message: string; details?: unknown } };

/** The tree machine for one workflow type (Backbeat workflow name). */
export function activityTreeMachine(type: string) {
  return setup({
    types: {
      context: {} as Context,
      input: {} as TreeInput | undefined,
      events: {} as TreeEvent,
    },
    actions: {
      ...jetflowActions,
      /** Run the reducer on the event; turn its commands into actions the engine makes durable. */
      apply: enqueueActions(({ context, event, enqueue }) => {
        const ctx = context as Context;
        if ('invalid' in ctx) return;
        const r = reduce(ctx, event as TreeEvent);
        if (r.reject) {
          enqueue(reject(r.reject));
          return;
        }
        if (r.tree !== ctx) enqueue.assign(() => r.tree);
        for (const c of r.commands) {
          if (c.kind === 'dispatch') enqueue(dispatch(c.key, c.target as never));
          else if (c.kind === 'cancelTask') enqueue(cancelTask(c.key));
          else if (c.kind === 'timer')
            enqueue.raise(c.event as never, { delay: c.delayMs, id: c.timerId });
          else if (c.kind === 'cancelTimer') enqueue.cancel(c.timerId);
          else if (c.kind === 'send')
            enqueue(
              sendToWorkflow(
                c.to,
                c.event,
                c.startIfAbsent ? { startIfAbsent: c.startIfAbsent } : {},
              ) as never,
            );
          else enqueue.emit(c.event as never);
        }
        if (r.reply !== undefined) enqueue(reply(r.reply));
      }),
      /** Refuse an invalid start input: nothing is created, the starter gets `bad_request`. */
      refuseInvalid: enqueueActions(({ context, enqueue }) => {
        const ctx = context as Context;
        if ('invalid' in ctx) enqueue(reject(ctx.invalid));
      }),
    },
    guards: {
      idle: ({ context }) => !('invalid' in context) && isIdle(context),
      failed: ({ context }) => !('invalid' in context) && context.failure !== undefined,
    },
  }).createMachine({
    id: type,
    context: ({ input }) => {
      const t = initTree({ ...(input ?? {}), signalQueue: input?.signalQueue ?? type });
      return 'nodes' in t ? t : { invalid: t };
    },
    entry: 'refuseInvalid',
    initial: 'open',
    on: {
      'jetflow.task.done': { actions: 'apply' },
      'jetflow.task.failed': { actions: 'apply' },
      'jetflow.task.retrying': { actions: 'apply' },
      'jetflow.tree.fire': { actions: 'apply' },
      'jetflow.tree.realert': { actions: 'apply' },
      // Link traffic between trees (E8 sends): answers and reports, also while closing.
      'jetflow.tree.linkAccepted': { actions: 'apply' },
      'jetflow.tree.linkStatus': { actions: 'apply' },
      'jetflow.tree.unlink': { actions: 'apply' },
      'jetflow.send.failed': { actions: 'apply' },
      // Operator verbs (E9): node verbs, and pause/resume with scope "dispatch".
      'jetflow.admin.retry': { actions: 'apply' },
      'jetflow.admin.resolve': { actions: 'apply' },
      'jetflow.admin.shutdown': { actions: 'apply' },
      'jetflow.admin.cancel': { actions: 'apply' },
      'jetflow.admin.prune': { actions: 'apply' },
      'jetflow.admin.pause': { actions: 'apply' },
      'jetflow.admin.resume': { actions: 'apply' },
    },
    states: {
      open: {
        always: { guard: 'failed', target: 'failed' },
        on: {
          signal: { actions: 'apply' },
          // Another tree's link node becomes a top-level node here (only while open).
          'jetflow.tree.link': { actions: 'apply' },
          close: { target: 'closing', actions: 'apply' },
        },
      },
      closing: {
        tags: ['closed'],
        always: [
          { guard: 'failed', target: 'failed' },
          { guard: 'idle', target: 'done' },
        ],
      },
      done: { type: 'final' },
      failed: { type: 'final', tags: ['failed'] },
    },
    output: ({ context }) => {
      if ('invalid' in context) return null;
      return context.failure ? { error: context.failure, ...summary(context) } : summary(context);
    },
  });
}

/** Register a tree type: `activityTree({ type: 'import' })` (default type `activityTree`). */
export function activityTree(o: { type?: string; version?: number } = {}): WorkflowDefinition {
  const type = o.type ?? 'activityTree';
  return defineWorkflow({
    type,
    version: o.version ?? 1,
    machine: activityTreeMachine(type),
    views: treeViews,
    queryContext: treeQueryContext,
  });
}
