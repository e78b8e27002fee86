/**
 * `jetflow why <type> <id>`: why has this workflow not moved on? A pure reading of what the
 * workflow's record says it awaits (`QueryReply.waiting`, its concurrency key, its pause) and of
 * what the server knows of each awaited task (on the queue, running, waiting out a backoff). The
 * NATS side only gathers the observations (`src/nats/why.ts`); this module decides nothing but
 * the wording, so the same observations always read the same.
 */
import type { KeyRecord, QueryReply, WorkflowRef } from '../contracts/wire.js';

/**
 * The stages a workflow can wait in, in the order `why` reports them (the first is the one that
 * holds it): an operator's pause, a debounce window of its signals, an activity's rate limit,
 * its concurrency key, an activity parked for review, a task waiting behind tasks of higher
 * priority levels, a task not yet handed to a worker, a retry's backoff, an attempt a worker runs, a child workflow, a timer,
 * and last an event from outside.
 */
export const WHY_STAGES = [
  'paused',
  'debounce',
  'rate-limit',
  'concurrency-key',
  'review',
  'priority',
  'dispatch',
  'backoff',
  'attempt',
  'child',
  'timer',
  'event',
] as const;
export type WhyStage = (typeof WHY_STAGES)[number];

/** What the server knows of one activity's task (any field may be unknown). */
export interface TaskObservation {
  /** The task message is on its queue: not yet delivered, or delivered and not acked. */
  queued?: { seq: number; delivered: boolean; at: number };
  /** A retry waiting out its backoff: its attempt and due time (null: not readable). */
  retry?: { attempt: number; dueAt: number | null };
  /** Postponed by its activity's rate limit to the slot it holds. */
  postponed?: { attempt: number; dueAt: number | null };
  /**
   * An undelivered task's priority level, the undelivered tasks of the levels above it on its
   * queue, and the queue's `maxWaitMs` (after which it is served before them).
   */
  priority?: { level: number; ahead: number; maxWaitMs: number };
  /** A task with a fairness key still staged: its key's staged tasks and the keys taking turns. */
  staged?: { key: string; level: number; ofKey: number; keys: number };
  /** The latest attempt a worker took (attempt ledger). */
  taken?: { attempt: number; worker: string; at: number };
  /**
   * Its activity's concurrency key (slots bucket): the attempts holding a slot and whether the
   * taken attempt is one of them; `postponed` when the task was set aside for a free slot.
   */
  slot?: {
    key: string;
    limit: number;
    holders: { id: string; worker: string; at: number }[];
    holds: boolean;
    /** The live waiters of the key (tasks queued for a slot, served first come first). */
    waiting?: number;
    /** The task's place among them (1: next), when it is queued. */
    position?: number;
    postponed?: { attempt: number; dueAt: number | null; since: number };
  };
}

/** A queue's consumer as the server reports it. */
export interface QueueObservation {
  /** Tasks not yet delivered to any worker. */
  pending: number;
  /** Tasks delivered and not yet acknowledged (running, or held by a dead worker). */
  inFlight: number;
  maxInFlight: number;
  /** Pull requests waiting at the consumer: idle workers. */
  pullers: number;
}

export interface WhyInput {
  query: QueryReply;
  /** The record of the concurrency key it waits for or holds, when it has one. */
  key?: KeyRecord;
  /** By actor id, for its activities. */
  tasks: Record<string, TaskObservation>;
  /** By queue name. */
  queues: Record<string, QueueObservation>;
  /** Epoch ms. */
  now: number;
}

export interface WhyWait {
  stage: WhyStage;
  /** One line for a person. */
  what: string;
  /** ISO times, when known. */
  since?: string;
  until?: string;
  /** The observations behind the line. */
  data?: Record<string, unknown>;
}

export interface WhyReply {
  type: string;
  id: string;
  status: QueryReply['status'];
  step: number;
  /** The stage that holds it (the first wait); null once finished. */
  stage: WhyStage | null;
  /** One line: the stage and what it waits for, or how it ended. */
  summary: string;
  /** Everything it awaits, in stage order. */
  waits: WhyWait[];
}

const iso = (ms: number) => new Date(ms).toISOString();

function ago(ms: number): string {
  const s = Math.max(0, ms) / 1000;
  if (s < 60) return `${s.toFixed(1)}s`;
  if (s < 3600) return `${(s / 60).toFixed(1)}m`;
  return `${(s / 3600).toFixed(1)}h`;
}

const refOf = (r: WorkflowRef) => `${r.type}/${r.id}`;

function keyWait(q: QueryReply, key: KeyRecord | undefined, now: number): WhyWait | undefined {
  const d = q.deferred;
  if (!d) return undefined;
  const holders = key?.holders ?? [];
  const held = holders.length
    ? `held by ${holders.map((h) => `${h.id} (for ${ago(now - h.at)})`).join(', ')}`
    : 'no holder recorded (the slot is being handed over)';
  const me = key?.waiters.find((w) => w.id === q.id);
  const rank = me
    ? `, priority ${me.priority ?? 3}${me.fairness !== undefined ? `, fairness key ${JSON.stringify(me.fairness)}` : ''}`
    : '';
  const pos =
    d.position === null
      ? 'being admitted'
      : `position ${d.position} of ${key?.waiters.length ?? '?'} waiting${rank}`;
  return {
    stage: 'concurrency-key',
    what: `deferred on concurrency key ${JSON.stringify(d.key)} (limit ${key?.limit ?? '?'}): ${pos}, ${held}`,
    since: d.since,
    data: {
      key: d.key,
      position: d.position,
      limit: key?.limit,
      holders: holders.map((h) => ({ id: h.id, since: iso(h.at) })),
      waiters: key?.waiters.length,
      ...(me ? { priority: me.priority ?? 3 } : {}),
      ...(me?.fairness !== undefined ? { fairness: me.fairness } : {}),
    },
  };
}

function taskWait(
  q: QueryReply,
  t: NonNullable<QueryReply['waiting']>['tasks'][number],
  seen: TaskObservation | undefined,
  queue: QueueObservation | undefined,
  now: number,
): WhyWait {
  if (t.kind !== 'activity') {
    const target = t.target ? refOf(t.target) : '(not started yet)';
    return {
      stage: 'child',
      what:
        t.kind === 'workflow'
          ? `child workflow ${target} (${t.actorId}) has not ended`
          : `watching workflow ${target} (${t.actorId}) until it ends`,
      data: { actorId: t.actorId, taskId: t.taskId, target: t.target },
    };
  }
  const name = `activity ${t.activity ?? '?'} (${t.actorId})`;
  if (t.parked) {
    const r = q.needsReview?.find((x) => x.actorId === t.actorId);
    return {
      stage: 'review',
      what: `${name} is parked for manual review after ${r?.attempts ?? '?'} attempts${r ? `: ${r.error.message}` : ''} (retry, resolve or fail it)`,
      ...(r ? { since: r.at } : {}),
      data: { actorId: t.actorId, taskId: t.taskId, ...(r ? { error: r.error } : {}) },
    };
  }
  const data: Record<string, unknown> = {
    actorId: t.actorId,
    taskId: t.taskId,
    queue: t.queue,
    ...(seen ?? {}),
    ...(queue ? { queueState: queue } : {}),
  };
  if (seen?.postponed) {
    const due = seen.postponed.dueAt;
    return {
      stage: 'rate-limit',
      what:
        `${name}: attempt ${seen.postponed.attempt} postponed by its rate limit` +
        (due === null ? '' : ` to its slot at ${iso(due)} (in ${ago(due - now)})`),
      ...(due === null ? {} : { until: iso(due) }),
      data,
    };
  }
  const slot = seen?.slot;
  if (slot && (slot.postponed || (seen?.queued?.delivered && seen.taken && !slot.holds))) {
    const held = slot.holders.length
      ? `held by ${slot.holders.map((h) => `${h.id} on worker ${h.worker} (for ${ago(now - h.at)})`).join(', ')}`
      : 'no holder recorded (a slot is being freed)';
    const p = slot.postponed;
    const how = p
      ? `postponed` +
        (p.dueAt === null ? '' : `, back at ${iso(p.dueAt)} (in ${ago(p.dueAt - now)})`)
      : 'waiting in place on its worker';
    const place =
      slot.position !== undefined
        ? `position ${slot.position} of ${slot.waiting ?? '?'} waiting, `
        : '';
    return {
      stage: 'concurrency-key',
      what: `${name} waits for a slot of its concurrency key ${JSON.stringify(slot.key)} (limit ${slot.limit}): ${place}${how}; ${held}`,
      ...(p ? { since: iso(p.since) } : {}),
      ...(p && p.dueAt !== null ? { until: iso(p.dueAt) } : {}),
      data,
    };
  }
  if (seen?.retry) {
    const due = seen.retry.dueAt;
    return {
      stage: 'backoff',
      what:
        `${name}: attempt ${seen.retry.attempt - 1} failed; attempt ${seen.retry.attempt} ` +
        (due === null ? 'is scheduled' : `is due at ${iso(due)} (in ${ago(due - now)})`),
      ...(due === null ? {} : { until: iso(due) }),
      data,
    };
  }
  const st = seen?.staged;
  if (st && !seen?.queued) {
    return {
      stage: 'priority',
      what: `${name} waits for its fairness key's turn at priority ${st.level}: key ${JSON.stringify(st.key)} has ${st.ofKey} staged task(s), ${st.keys} key(s) take turns (round robin)`,
      data,
    };
  }
  const prio = seen?.priority;
  if (seen?.queued && !seen.queued.delivered && prio && prio.ahead > 0) {
    const waited = now - seen.queued.at;
    const aging =
      waited >= prio.maxWaitMs
        ? `it has waited past maxWaitMs (${prio.maxWaitMs} ms): the next free slot of the queue takes it`
        : `served before them once it has waited maxWaitMs (${prio.maxWaitMs} ms), at ${iso(seen.queued.at + prio.maxWaitMs)}`;
    return {
      stage: 'priority',
      what: `${name} waits at priority ${prio.level} behind ${prio.ahead} undelivered task(s) of levels 1-${prio.level - 1} on queue ${t.queue ?? '?'} (for ${ago(waited)}); ${aging}`,
      since: iso(seen.queued.at),
      until: iso(Math.max(now, seen.queued.at + prio.maxWaitMs)),
      data,
    };
  }
  if (seen?.queued && !seen.queued.delivered) {
    const reasons: string[] = [];
    if (queue) {
      reasons.push(`${queue.pending} undelivered on queue ${t.queue ?? '?'}`);
      reasons.push(`${queue.inFlight}/${queue.maxInFlight} in flight`);
      if (queue.inFlight >= queue.maxInFlight) reasons.push('the queue is at its maxInFlight');
      else if (queue.pullers === 0) reasons.push(`no worker is pulling queue ${t.queue ?? '?'}`);
    } else {
      reasons.push(`queue ${t.queue ?? '?'} has no consumer: no worker has pulled it yet`);
    }
    return {
      stage: 'dispatch',
      what: `${name} is queued, not yet taken by a worker${reasons.length ? `: ${reasons.join(', ')}` : ''}`,
      since: iso(seen.queued.at),
      data,
    };
  }
  if (seen?.queued) {
    const k = seen.taken;
    return {
      stage: 'attempt',
      what: k
        ? `${name}: attempt ${k.attempt} runs on worker ${k.worker} (for ${ago(now - k.at)})`
        : `${name}: delivered to a worker that has not taken it yet`,
      ...(k ? { since: iso(k.at) } : {}),
      data,
    };
  }
  return {
    stage: 'attempt',
    what: `${name}: not on its queue and no retry scheduled: its result is on its way to the workflow, or the engine has not published the task yet`,
    data,
  };
}

/** Read the observations: what holds the workflow, and everything else it awaits. */
export function explainWhy(input: WhyInput): WhyReply {
  const { query: q, now } = input;
  const head = { type: q.type, id: q.id, status: q.status, step: q.step };
  if (q.status !== 'running' && q.status !== 'deferred') {
    const how =
      q.status === 'failed' && q.error
        ? `failed: ${q.error.message}`
        : q.status === 'completed'
          ? 'completed'
          : q.status;
    return {
      ...head,
      stage: null,
      summary: `finished (${how}) at ${q.updatedAt}: it waits for nothing`,
      waits: [],
    };
  }
  const waits: WhyWait[] = [];
  if (q.paused) {
    waits.push({
      stage: 'paused',
      what: `paused by an operator: ${q.held ?? 0} message(s) held until resume`,
      data: { held: q.held ?? 0 },
    });
  }
  const k = keyWait(q, input.key, now);
  if (k) waits.push(k);
  for (const t of q.waiting?.tasks ?? []) {
    waits.push(
      taskWait(q, t, input.tasks[t.actorId], t.queue ? input.queues[t.queue] : undefined, now),
    );
  }
  const windows = new Map(
    (q.waiting?.debounced ?? []).map((w) => [`jetflow.debounce.${w.key}`, w]),
  );
  for (const t of q.waiting?.timers ?? []) {
    const due = t.dueAt === null ? null : Date.parse(t.dueAt);
    const w = windows.get(t.id);
    if (w) {
      waits.push({
        stage: 'debounce',
        what: `signals ${w.key} debounced: ${w.count} kept since ${w.since}; one is applied at ${t.dueAt ?? '?'}${due === null ? '' : ` (in ${ago(due - now)})`} unless another comes`,
        since: w.since,
        ...(t.dueAt === null ? {} : { until: t.dueAt }),
        data: { key: w.key, count: w.count },
      });
      continue;
    }
    waits.push({
      stage: 'timer',
      what:
        due === null
          ? `timer ${t.id} is set (due time not recorded)`
          : `timer ${t.id} is due at ${t.dueAt} (in ${ago(due - now)})`,
      ...(t.dueAt === null ? {} : { until: t.dueAt }),
      data: { timerId: t.id },
    });
  }
  if (q.status === 'running' && (waits.length === 0 || q.accepts.length > 0)) {
    waits.push({
      stage: 'event',
      what:
        q.accepts.length > 0
          ? `waiting for an event: it accepts ${q.accepts.join(', ')} in state ${JSON.stringify(q.value)}`
          : `in state ${JSON.stringify(q.value)} it accepts no event and awaits nothing`,
      data: { accepts: q.accepts, value: q.value },
    });
  }
  const rank = (s: WhyStage) => WHY_STAGES.indexOf(s);
  waits.sort((a, b) => rank(a.stage) - rank(b.stage));
  const first = waits[0];
  return {
    ...head,
    stage: first ? first.stage : null,
    summary: first ? `${first.stage}: ${first.what}` : 'it waits for nothing',
    waits,
  };
}
