/**
 * Verify a definition against the journal (`jetflow verify`, `jetflow test-gen`): every journaled
 * step is re-run with the engine's own pure step ({@link decide}) from the state recorded before
 * it (the previous entry's snapshot, pending tasks and timers; the input for the start) and the
 * recorded event, and what it decides is compared with what was recorded after it: state value,
 * context, status and effects. Nothing is published and no activity runs. No I/O.
 */
import { JOURNAL_PAYLOAD_MAX_BYTES, stepEntry } from './journal.js';
import { decide, type StepContext } from './step.js';
import type { Registry, WorkflowDefinition } from './registry.js';
import { createSubjects } from '../contracts/subjects.js';
import {
  WIRE_VERSION,
  type Effect,
  type InboxMessage,
  type JournalEffect,
  type JournalEntry,
  type WorkflowRecord,
} from '../contracts/wire.js';
import { BadRequestError, ErrorCode } from '../errors.js';

type StepEntry = Extract<JournalEntry, { kind: 'step' }>;

/** What a divergence is about; `outcome`: the new definition refused or ignored the message. */
export type DivergenceKind = 'state' | 'context' | 'status' | 'effects' | 'outcome';

export const DIVERGENCE_KINDS: readonly DivergenceKind[] = Object.freeze([
  'state',
  'context',
  'status',
  'effects',
  'outcome',
]);

/** What a step is compared on. */
export interface StepView {
  state: unknown;
  status: string;
  context: unknown;
  /** Effects in a canonical form, sorted (see {@link effectView}). */
  effects: Record<string, unknown>[];
}

/** The first divergent step of a workflow (or any divergent step). */
export interface Divergence {
  step: number;
  /** The recorded event's type (`xstate.init` for the start). */
  event: string;
  kinds: DivergenceKind[];
  expected: StepView;
  /** What the new definition decided; absent with `outcome` (then `outcome` says what). */
  got?: StepView;
  outcome?: string;
  /** Readable lines, `path: expected → got`, `- effect` / `+ effect`. */
  diff: string[];
}

/** The verdict of one workflow. */
export interface WorkflowVerdict {
  type: string;
  id: string;
  version: number;
  /** Steps re-run and compared. */
  steps: number;
  identical: number;
  /** Divergent steps, by kind (a step may count under several kinds). */
  diverged: Partial<Record<DivergenceKind, number>>;
  divergedSteps: number;
  /** Steps that could not be re-run, by reason (operator actions, cut payloads, gaps). */
  skipped: Record<string, number>;
  first?: Divergence;
}

/** Summary over all workflows. */
export interface VerifySummary {
  workflows: number;
  steps: number;
  identical: number;
  divergedWorkflows: number;
  divergedSteps: number;
  diverged: Partial<Record<DivergenceKind, number>>;
  skipped: Record<string, number>;
}

/** The outcome of one step's re-run. */
export type StepOutcome =
  /** `record`: the record the re-run left (what a folded next step without snapshot re-runs from). */
  | { kind: 'same'; view: StepView; record?: WorkflowRecord }
  | { kind: 'diverged'; divergence: Divergence }
  | { kind: 'skipped'; reason: string };

export interface VerifyOptions {
  /** Kinds that do not count as divergences (`--allow context`). */
  allow?: readonly DivergenceKind[];
}

/** Parse an `--allow` list; throws on an unknown kind. */
export function parseAllow(text: string | undefined): DivergenceKind[] {
  if (!text) return [];
  const out: DivergenceKind[] = [];
  for (const raw of text.split(',')) {
    const k = raw.trim();
    if (!k) continue;
    if (!(DIVERGENCE_KINDS as readonly string[]).includes(k))
      throw new BadRequestError(
        `--allow: unknown kind ${JSON.stringify(k)} (kinds: ${DIVERGENCE_KINDS.join(', ')})`,
        { code: ErrorCode.BadRequest, details: { kind: k } },
      );
    out.push(k as DivergenceKind);
  }
  return out;
}

/**
 * A registry that answers every lookup of a type with the candidate definition (whatever
 * version the workflow recorded): "what would this definition have done here".
 */
export function candidateRegistry(defs: readonly WorkflowDefinition[]): Registry {
  const byType = new Map<string, WorkflowDefinition>();
  for (const d of defs) {
    const had = byType.get(d.type);
    if (!had || had.version < d.version) byType.set(d.type, d);
  }
  const get = (type: string): WorkflowDefinition => {
    const d = byType.get(type);
    if (!d)
      throw new BadRequestError(`no definition of ${JSON.stringify(type)} to verify with`, {
        code: ErrorCode.UnknownType,
        workflowType: type,
      });
    return d;
  };
  return {
    register: () => {
      throw new Error('a candidate registry is read-only');
    },
    latest: get,
    get,
    has: (t) => byType.has(t),
    list: () => [...byType.values()].map((d) => `${d.type}@${d.version}`),
    all: () => [...byType.values()],
  };
}

/** The step context verify decides with: the engine's, journal on, nothing else. */
export function verifyContext(registry: Registry): StepContext {
  return {
    registry,
    subjects: createSubjects(),
    journal: { payloadMaxBytes: JOURNAL_PAYLOAD_MAX_BYTES },
  };
}

/** The record as it was after `prev` (what the next step started from). */
export function recordAfter(prev: StepEntry): WorkflowRecord {
  const timers: Record<string, number> = {};
  const timerEvents: Record<string, unknown> = {};
  const timerDue: Record<string, number> = {};
  for (const [id, t] of Object.entries(prev.timers ?? {})) {
    timers[id] = t.setAt ?? prev.step;
    timerEvents[id] = t.event;
    timerDue[id] = t.dueAt;
  }
  const has = Object.keys(timers).length > 0;
  return {
    v: WIRE_VERSION,
    type: prev.workflowType,
    id: prev.id,
    version: prev.version,
    status: prev.status,
    snapshot: prev.snapshot,
    step: prev.step,
    lastSeq: 0,
    timers,
    ...(has ? { timerEvents, timerDue } : {}),
    shard: 0,
    tasks: prev.tasks ?? {},
    outbox: [],
    createdAt: prev.createdAt,
    updatedAt: prev.at,
    stateSince: prev.stateSince,
  };
}

/** The inbox message that made `entry`'s step, rebuilt from the entry (or why it cannot be). */
export function messageOf(
  entry: StepEntry,
  before: WorkflowRecord | undefined,
): InboxMessage | { skip: string } {
  if (entry.held) return { skip: 'held while paused' };
  if (entry.dropped) return { skip: 'released, dropped' };
  if (entry.event.truncated) return { skip: 'event payload cut in the journal' };
  const payload = (entry.event.payload ?? {}) as Record<string, unknown>;
  switch (entry.cause) {
    case 'start':
      if (entry.status === 'deferred') return { skip: 'deferred start' };
      return { kind: 'start', input: entry.event.payload };
    case 'signal':
      return {
        kind: 'signal',
        event: { ...payload, type: entry.event.type },
        ...(entry.sender ? { from: entry.sender } : {}),
      };
    case 'cancel':
      return { kind: 'cancel', reason: payload.reason as string | undefined };
    case 'timer': {
      if (entry.timerId === undefined) return { skip: 'timer step journaled without its timer id' };
      const setAt = before?.timers[entry.timerId];
      if (setAt === undefined) return { skip: 'timer not pending in the entry before' };
      return {
        kind: 'timer',
        timerId: entry.timerId,
        step: setAt,
        event: { ...payload, type: entry.event.type },
      };
    }
    case 'result': {
      const a = entry.activity;
      if (!a) return { skip: 'result step without its activity' };
      if (entry.event.type === 'jetflow.task.retrying')
        return {
          kind: 'progress',
          taskId: a.taskId,
          actorId: a.actorId,
          progress: 'retrying',
          attempt: a.attempt,
          retryAt: payload.retryAt as number,
          error: (payload.error ?? a.error) as never,
        };
      return {
        kind: 'result',
        taskId: a.taskId,
        actorId: a.actorId,
        ok: a.ok,
        attempt: a.attempt,
        ...(a.ok ? { output: payload.output } : { error: (payload.error ?? a.error) as never }),
        ...(payload.decisions !== undefined ? { decisions: payload.decisions } : {}),
      };
    }
    default:
      return { skip: `${entry.cause} step (not re-run)` };
  }
}

/** True for a key JavaScript orders first, as an array index (ascending, before the others). */
function isIndexKey(k: string): boolean {
  return /^(?:0|[1-9]\d{0,9})$/.test(k) && Number(k) < 4294967295;
}

/**
 * `JSON.stringify` of `v` with every object's keys sorted, written directly (this runs several
 * times per re-run step, on contexts and effects: building a sorted copy first and then
 * stringifying it cost twice the time and the garbage). The same text as
 * `JSON.stringify(sortedCopy)`: integer-like keys first in numeric order (as JavaScript orders a
 * copy's keys), holes and functions in arrays as `null`, undefined and functions in objects left
 * out, non-finite numbers as `null`.
 */
function writeSorted(v: unknown): string | undefined {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'string':
      return JSON.stringify(v);
    case 'number':
      return Number.isFinite(v) ? JSON.stringify(v) : 'null';
    case 'boolean':
      return v ? 'true' : 'false';
    case 'bigint':
      return JSON.stringify(v); // throws, as JSON.stringify does
    case 'object': {
      if (Array.isArray(v)) {
        let out = '[';
        for (let i = 0; i < v.length; i++)
          out += `${i > 0 ? ',' : ''}${writeSorted(v[i]) ?? 'null'}`;
        return `${out}]`;
      }
      const keys = Object.keys(v);
      // Object.keys lists index keys first (ascending), then the others in insertion order.
      let n = 0;
      while (n < keys.length && isIndexKey(keys[n]!)) n++;
      const rest = keys.slice(n).sort();
      let out = '{';
      let first = true;
      const add = (k: string) => {
        const t = writeSorted((v as Record<string, unknown>)[k]);
        if (t === undefined) return;
        out += `${first ? '' : ','}${JSON.stringify(k)}:${t}`;
        first = false;
      };
      for (let i = 0; i < n; i++) add(keys[i]!);
      for (const k of rest) add(k);
      return `${out}}`;
    }
    default:
      return undefined;
  }
}

/** Canonical JSON text (keys sorted). */
export function canonical(v: unknown): string {
  return writeSorted(v) ?? 'undefined';
}

/** The canonical text of each effect of a sorted effects list (kept by {@link sortEffects}). */
const effectTexts = new WeakMap<readonly Record<string, unknown>[], string[]>();

/**
 * An effect as verify compares it (undefined: not compared, i.e. notifications, which follow the
 * status). `recorded` is the journal's form of the same effect on the recorded side: a payload
 * the journal cut or did not keep is not compared.
 */
export function effectView(e: JournalEffect, at: number): Record<string, unknown> | undefined {
  switch (e.kind) {
    case 'task':
      return {
        kind: 'task',
        actorId: e.actorId,
        activity: e.activity,
        queue: e.queue,
        ...(e.input !== undefined ? { input: e.input } : {}),
      };
    case 'stopTask':
      return { kind: 'stopTask', actorId: e.actorId };
    case 'timer':
      return { kind: 'timer', timerId: e.timerId, delayMs: e.dueAt - at, event: e.event };
    case 'cancelTimer':
      return { kind: 'cancelTimer', timerId: e.timerId };
    case 'alert':
      return { kind: 'alert', queue: e.queue, type: e.type };
    case 'message':
      return {
        kind: 'message',
        subject: e.subject,
        ...(e.event !== undefined ? { event: e.event } : {}),
        ...(e.body !== undefined ? { body: withoutStamp(e.body) } : {}),
      };
    default:
      return undefined;
  }
}

/** A message body without the fields the performer stamps (sender, step). */
function withoutStamp(body: unknown): unknown {
  if (!body || typeof body !== 'object') return body;
  const b = { ...(body as Record<string, unknown>) };
  delete b.from;
  return b;
}

/** The view of a step entry. */
export function stepView(entry: StepEntry): StepView {
  const effects: Record<string, unknown>[] = [];
  for (const e of entry.effects) {
    const v = effectView(e, entry.at);
    if (v) effects.push(v);
  }
  return {
    state: entry.to.value,
    status: entry.status,
    context: (entry.snapshot as { context?: unknown } | undefined)?.context ?? entry.context,
    effects: sortEffects(effects),
  };
}

function sortEffects(effects: Record<string, unknown>[]): Record<string, unknown>[] {
  const pairs = effects
    .map((e) => [canonical(e), e] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const sorted = pairs.map(([, e]) => e);
  effectTexts.set(
    sorted,
    pairs.map(([t]) => t),
  );
  return sorted;
}

/** `got`'s effects with payloads the recorded side lacks (cut or older entries) left out. */
function alignPayloads(expected: StepEntry, got: StepView): StepView {
  const cutInput = new Set<string>();
  const cutBody = new Set<string>();
  for (const e of expected.effects) {
    if (e.kind === 'task' && e.input === undefined) cutInput.add(e.actorId);
    if (e.kind === 'message' && e.body === undefined) cutBody.add(e.subject);
  }
  if (cutInput.size === 0 && cutBody.size === 0) return got;
  const effects = got.effects.map((e) => {
    if (e.kind === 'task' && cutInput.has(e.actorId as string)) {
      const c = { ...e };
      delete c.input;
      return c;
    }
    if (e.kind === 'message' && cutBody.has(e.subject as string)) {
      const c = { ...e };
      delete c.body;
      return c;
    }
    return e;
  });
  return { ...got, effects: sortEffects(effects) };
}

/** Readable differences between two values, one line per differing leaf (at most `max`). */
export function diffLines(path: string, a: unknown, b: unknown, out: string[], max = 20): void {
  if (out.length >= max) return;
  if (canonical(a) === canonical(b)) return;
  const isObj = (v: unknown) => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (isObj(a) && isObj(b)) {
    const ao = a as Record<string, unknown>;
    const bo = b as Record<string, unknown>;
    for (const k of [...new Set([...Object.keys(ao), ...Object.keys(bo)])].sort())
      diffLines(path ? `${path}.${k}` : k, ao[k], bo[k], out, max);
    return;
  }
  if (Array.isArray(a) && Array.isArray(b) && a.length === b.length) {
    for (let i = 0; i < a.length; i++) diffLines(`${path}[${i}]`, a[i], b[i], out, max);
    return;
  }
  out.push(`${path || '(value)'}: ${short(a)} → ${short(b)}`);
}

function short(v: unknown): string {
  const t = v === undefined ? '(absent)' : canonical(v);
  return t.length > 200 ? `${t.slice(0, 197)}...` : t;
}

/** One line per effect: `task sendToBank@bank {"amount":1}`. */
export function effectLine(e: Record<string, unknown>): string {
  const rest = { ...e };
  delete rest.kind;
  return `${String(e.kind)} ${canonical(rest)}`;
}

/** Compare two views; the kinds that differ and the readable diff. */
export function compareViews(
  expected: StepView,
  got: StepView,
): { kinds: DivergenceKind[]; diff: string[] } {
  const kinds: DivergenceKind[] = [];
  const diff: string[] = [];
  if (canonical(expected.state) !== canonical(got.state)) {
    kinds.push('state');
    diff.push(`state: ${short(expected.state)} → ${short(got.state)}`);
  }
  if (expected.status !== got.status) {
    kinds.push('status');
    diff.push(`status: ${expected.status} → ${got.status}`);
  }
  if (canonical(expected.context) !== canonical(got.context)) {
    kinds.push('context');
    diffLines('context', expected.context, got.context, diff);
  }
  const e = effectTexts.get(expected.effects) ?? expected.effects.map(canonical);
  const g = effectTexts.get(got.effects) ?? got.effects.map(canonical);
  if (e.length !== g.length || e.some((t, i) => t !== g[i])) {
    kinds.push('effects');
    const left = [...g];
    for (let i = 0; i < e.length; i++) {
      const j = left.indexOf(e[i]!);
      if (j >= 0) left.splice(j, 1);
      else diff.push(`- ${effectLine(expected.effects[i]!)}`);
    }
    for (const t of left) diff.push(`+ ${effectLine(JSON.parse(t) as Record<string, unknown>)}`);
  }
  return { kinds, diff };
}

/** Why an entry has no snapshot to re-run from or compare with. */
function omittedReason(entry: StepEntry): string {
  return entry.snapshotOmitted?.folded
    ? "snapshot left out of the entry (a step folded into a later step's write)"
    : 'snapshot left out of the entry (too large)';
}

/**
 * Re-run `entry`'s step with `ctx`'s definitions from `prev` (the entry of the step before;
 * undefined for the start) and compare. The same pure function as the engine: {@link decide}.
 */
export function rerunStep(
  ctx: StepContext,
  prev: StepEntry | undefined,
  entry: StepEntry,
  opts: VerifyOptions = {},
  /**
   * The record the re-run of `prev` left, when it was the same as recorded: a step folded into a
   * later step's write has no snapshot in its entry (`snapshotOmitted.folded`), so the step after
   * it re-runs from this instead.
   */
  carried?: WorkflowRecord,
): StepOutcome {
  // A folded step's entry without snapshot is still re-run (from the step before), and compared
  // on everything but the context it does not hold; one too large for the server is not.
  const thin = entry.snapshotOmitted?.folded === true;
  if (entry.snapshotOmitted && !thin) return { kind: 'skipped', reason: omittedReason(entry) };
  let before: WorkflowRecord | undefined;
  if (entry.step > 0 || entry.cause !== 'start') {
    if (!prev || prev.step !== entry.step - 1)
      return { kind: 'skipped', reason: 'entry of the step before not read' };
    if (prev.paused) return { kind: 'skipped', reason: 'paused workflow' };
    if (prev.status === 'deferred') return { kind: 'skipped', reason: 'deferred start' };
    if (!prev.snapshotOmitted) before = recordAfter(prev);
    else if (prev.snapshotOmitted.folded && carried?.step === prev.step)
      before = { ...carried, lastSeq: 0, outbox: [] };
    else return { kind: 'skipped', reason: omittedReason(prev) };
  }
  const message = messageOf(entry, before);
  if ('skip' in message) return { kind: 'skipped', reason: message.skip };
  const def = (() => {
    try {
      return ctx.registry.get(entry.workflowType, entry.version);
    } catch {
      return undefined;
    }
  })();
  if (!def) return { kind: 'skipped', reason: 'no definition of the type' };
  const expected = stepView(entry);
  let decision: ReturnType<typeof decide>;
  try {
    decision = decide(ctx, before, {
      type: entry.workflowType,
      id: entry.id,
      shard: 0,
      seq: entry.seq ?? 0,
      message,
      now: entry.at,
      ...(message.kind === 'start' && def.concurrency
        ? {
            admission: {
              kind: 'admitted' as const,
              key: entry.admission?.key ?? '',
              keyToken: 'verify',
              at: entry.admission?.admittedAt ?? entry.at,
            },
          }
        : {}),
    });
  } catch (err) {
    return diverged(entry, expected, `threw: ${String((err as Error)?.message ?? err)}`, opts);
  }
  if (decision.kind !== 'write') {
    const why =
      decision.kind === 'reject' || decision.kind === 'defer'
        ? `${decision.kind}ed: ${decision.error.message}`
        : decision.kind === 'ignore'
          ? `ignored: ${decision.reason}`
          : 'nothing to store';
    return diverged(entry, expected, why, opts);
  }
  const j = decision.record.outbox.find(
    (e): e is Extract<Effect, { kind: 'journal' }> => e.kind === 'journal',
  );
  if (!j) return diverged(entry, expected, 'no journal entry decided', opts);
  const view = alignPayloads(entry, stepView(stepEntry(decision.record, j, 'verify') as StepEntry));
  // A thin entry holds no context to compare with.
  const got = thin ? { ...view, context: undefined } : view;
  const { kinds, diff } = compareViews(expected, got);
  const counted = kinds.filter((k) => !opts.allow?.includes(k));
  if (counted.length === 0) return { kind: 'same', view: got, record: decision.record };
  return {
    kind: 'diverged',
    divergence: { step: entry.step, event: entry.event.type, kinds: counted, expected, got, diff },
  };
}

function diverged(
  entry: StepEntry,
  expected: StepView,
  outcome: string,
  opts: VerifyOptions,
): StepOutcome {
  if (opts.allow?.includes('outcome')) return { kind: 'same', view: expected };
  return {
    kind: 'diverged',
    divergence: {
      step: entry.step,
      event: entry.event.type,
      kinds: ['outcome'],
      expected,
      outcome,
      diff: [`outcome: applied → ${outcome}`],
    },
  };
}

/**
 * Verifies a stream of journal entries (any order across workflows, stream order within one):
 * keeps only the last step entry of each workflow, so memory is per workflow, not per step.
 */
export class Verifier {
  private readonly last = new Map<string, StepEntry>();
  /** The record the last step's re-run left, while it was the same as recorded. */
  private readonly carried = new Map<string, WorkflowRecord>();
  private readonly verdicts = new Map<string, WorkflowVerdict>();
  private readonly ctx: StepContext;

  constructor(
    defs: readonly WorkflowDefinition[],
    private readonly opts: VerifyOptions = {},
  ) {
    this.ctx = verifyContext(candidateRegistry(defs));
  }

  /** Offer the next entry; entries other than steps, and repeated steps, are passed over. */
  add(entry: JournalEntry): void {
    if (entry.kind !== 'step') return;
    const key = `${entry.workflowType}.${entry.id}`;
    const prev = this.last.get(key);
    if (prev && prev.step >= entry.step) return; // a re-performed step: journaled twice
    let v = this.verdicts.get(key);
    if (!v) {
      v = {
        type: entry.workflowType,
        id: entry.id,
        version: entry.version,
        steps: 0,
        identical: 0,
        diverged: {},
        divergedSteps: 0,
        skipped: {},
      };
      this.verdicts.set(key, v);
    }
    const r = rerunStep(this.ctx, prev, entry, this.opts, this.carried.get(key));
    this.last.set(key, entry);
    // Kept only after a thin entry: the step after a full entry re-runs from that entry's
    // snapshot, so only a run of folded steps needs what their re-runs left.
    if (r.kind === 'same' && r.record && entry.snapshotOmitted?.folded)
      this.carried.set(key, r.record);
    else this.carried.delete(key);
    if (r.kind === 'skipped') {
      v.skipped[r.reason] = (v.skipped[r.reason] ?? 0) + 1;
      return;
    }
    v.steps++;
    if (r.kind === 'same') {
      v.identical++;
      return;
    }
    v.divergedSteps++;
    for (const k of r.divergence.kinds) v.diverged[k] = (v.diverged[k] ?? 0) + 1;
    v.first ??= r.divergence;
  }

  /** Verdicts of every workflow seen, in the order first seen. */
  results(): WorkflowVerdict[] {
    return [...this.verdicts.values()];
  }

  summary(): VerifySummary {
    const s: VerifySummary = {
      workflows: 0,
      steps: 0,
      identical: 0,
      divergedWorkflows: 0,
      divergedSteps: 0,
      diverged: {},
      skipped: {},
    };
    for (const v of this.verdicts.values()) {
      s.workflows++;
      s.steps += v.steps;
      s.identical += v.identical;
      s.divergedSteps += v.divergedSteps;
      if (v.divergedSteps > 0) s.divergedWorkflows++;
      for (const [k, n] of Object.entries(v.diverged))
        s.diverged[k as DivergenceKind] = (s.diverged[k as DivergenceKind] ?? 0) + n;
      for (const [k, n] of Object.entries(v.skipped)) s.skipped[k] = (s.skipped[k] ?? 0) + n;
    }
    return s;
  }
}

/** Verify one workflow's journal (step entries in order) against `defs`. */
export function verifyJournal(
  defs: readonly WorkflowDefinition[],
  entries: readonly JournalEntry[],
  opts: VerifyOptions = {},
): WorkflowVerdict | undefined {
  const v = new Verifier(defs, opts);
  for (const e of entries) v.add(e);
  return v.results()[0];
}
