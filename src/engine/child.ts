/**
 * Child workflows (E8): `workflow(type)` declares actor logic that `invoke` / `spawnChild` start
 * as another workflow (or attach to an existing one) and await. The engine never runs the logic:
 * a spawn of it becomes a start (or watch) message to the child's inbox, recorded in the
 * parent's task table like an activity, and the child's end comes back through that table as the
 * invoke's done or error event.
 */
import { fromPromise, type AnyActorLogic, type AnyStateMachine } from 'xstate';
import { BadRequestError, ConfigError, ErrorCode } from '../errors.js';
import { isToken } from '../contracts/subjects.js';

/** Options of {@link workflow}. */
export interface ChildWorkflowOptions {
  /**
   * What happens to a child this workflow started when the invoking state is left (or this
   * workflow ends) before the child ended: `cancel` (default) cancels it, `abandon` leaves it
   * running. An attached workflow (`attach: true`) is never canceled.
   */
  parentClose?: 'cancel' | 'abandon';
}

/** Input of an invoke / spawn of {@link workflow} logic. */
export type ChildWorkflowInput<TInput = unknown> =
  | { id: string; input?: TInput; attach?: false }
  /** Await a workflow someone else started (or that already finished). */
  | { id: string; attach: true };

const WORKFLOW = Symbol.for('jetflow.workflow');

interface Marked {
  [WORKFLOW]?: { type: string; parentClose: 'cancel' | 'abandon' };
}

/**
 * Declare a child workflow for `setup({ actors: { pay: workflow('merchantPayment') } })`. Invoke
 * it with input `{ id, input? }` to start workflow `<type>/<id>` as this workflow's child (a
 * start is idempotent for this invocation; a workflow of that id that exists with another
 * parent, or none, fails the invoke with `ChildAlreadyExists`), or `{ id, attach: true }` to
 * await an existing one (`ChildNotFound` when there is none). `onDone` gets the child's output;
 * `onError` gets `{type: "ChildFailed" | "ChildCanceled" | …, code, message, details}`.
 *
 * Exactly once: the start (or watch) is an outbox effect with a deterministic msg id, the child
 * record keeps its parent's task id, and the end is a result message with msg id
 * `result.<taskId>` that the parent's task table applies at most once.
 */
export function workflow<TInput = unknown, TOutput = unknown>(
  type: string,
  options: ChildWorkflowOptions = {},
): ReturnType<typeof fromPromise<TOutput, ChildWorkflowInput<TInput>>> {
  if (!isToken(type)) throw new ConfigError(`invalid child workflow type ${JSON.stringify(type)}`);
  const parentClose = options.parentClose ?? 'cancel';
  if (parentClose !== 'cancel' && parentClose !== 'abandon') {
    throw new ConfigError(
      `invalid parentClose for child workflow ${type}: 'cancel' or 'abandon' (got ${JSON.stringify(parentClose)})`,
    );
  }
  const logic = fromPromise<TOutput, ChildWorkflowInput<TInput>>(() =>
    Promise.reject(new Error(`child workflow ${type} runs on a jetflow engine`)),
  );
  (logic as Marked)[WORKFLOW] = { type, parentClose };
  return logic;
}

/** A spawn of child-workflow logic, resolved. */
export interface ChildSpawn {
  type: string;
  id: string;
  attach: boolean;
  input: unknown;
  parentClose: 'cancel' | 'abandon';
}

/** The child workflow a spawn of `src` starts, or undefined when `src` is not {@link workflow}. */
export function resolveChild(
  machine: AnyStateMachine,
  src: string,
  input: unknown,
): ChildSpawn | undefined {
  const actors =
    (machine.implementations as { actors?: Record<string, AnyActorLogic> }).actors ?? {};
  const mark = (actors[src] as (AnyActorLogic & Marked) | undefined)?.[WORKFLOW];
  if (!mark) return undefined;
  const i = (input ?? {}) as { id?: unknown; input?: unknown; attach?: unknown };
  if (!isToken(i.id)) {
    throw new BadRequestError(
      `child workflow ${mark.type}: the invoke's input needs an id of 1-256 characters of A-Z a-z 0-9 _ - = (got ${JSON.stringify(i.id)})`,
      { code: ErrorCode.BadRequest, details: { src, id: i.id } },
    );
  }
  return {
    type: mark.type,
    id: i.id,
    attach: i.attach === true,
    input: i.input,
    parentClose: mark.parentClose,
  };
}
