/**
 * The observations behind `jetflow why` (see `src/engine/why.ts`): for each activity a running
 * workflow awaits, whether its task message is on the queue (and delivered), whether a retry is
 * scheduled (and when), and which worker took the latest attempt; for each queue, its consumer's
 * counts; for a keyed workflow, its key's record. Reads only; a read that fails leaves that
 * observation out rather than failing the whole answer.
 */
import { Kvm } from '@nats-io/kv';
import { jetstreamManager, type ConsumerInfo } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { unpack } from '../contracts/codec.js';
import { Header, type KeyRecord, type QueryReply, type TaskMessage } from '../contracts/wire.js';
import { keyTokenOf } from '../engine/admission.js';
import type { QueueObservation, TaskObservation, WhyInput } from '../engine/why.js';
import type { AttemptTaker } from './attempts.js';
import { openSlots, type Slots } from './slots.js';
import { liveWaiters, waiterPosition } from '../engine/slots.js';
import { openKeysBucket } from './keys.js';
import type { TopologyNames } from './topology.js';
import { DEFAULT_QUEUE_SETTINGS, fairnessToken, settingsOf, stagedKeys } from './tasks.js';
import { DEFAULT_PRIORITY } from '../contracts/subjects.js';

/** `Nats-Schedule: @at <RFC 3339>` → epoch ms (null for anything else). */
function scheduleTime(spec: string | undefined): number | null {
  const m = spec ? /^@at\s+(.+)$/.exec(spec.trim()) : null;
  const t = m ? Date.parse(m[1]!) : NaN;
  return Number.isFinite(t) ? t : null;
}

const quietly = async <T>(p: Promise<T>): Promise<T | undefined> => {
  try {
    return await p;
  } catch {
    return undefined;
  }
};

async function keyRecordOf(
  nc: NatsConnection,
  names: TopologyNames,
  type: string,
  key: string,
): Promise<KeyRecord | undefined> {
  const kv = await quietly(openKeysBucket(nc, names));
  const e = kv ? await quietly(kv.get(`${type}.${keyTokenOf(key)}`)) : undefined;
  if (!e || e.operation !== 'PUT' || e.value.length === 0) return undefined;
  return unpack(e.value) as KeyRecord;
}

/** Gather what `explainWhy` reads for the workflow `q` (a fresh query reply). */
export async function observeWhy(
  nc: NatsConnection,
  names: TopologyNames,
  q: QueryReply,
  now = Date.now(),
): Promise<WhyInput> {
  const input: WhyInput = { query: q, tasks: {}, queues: {}, now };
  const keyName = q.deferred?.key ?? q.concurrencyKey;
  if (keyName !== undefined) {
    const key = await keyRecordOf(nc, names, q.type, keyName);
    if (key) input.key = key;
  }
  const activities = (q.waiting?.tasks ?? []).filter(
    (t) => t.kind === 'activity' && t.queue && t.taskKey && !t.parked,
  );
  if (activities.length === 0) return input;
  const jsm = await jetstreamManager(nc);
  const s = names.subjects;
  const consumers = new Map<string, ConsumerInfo | undefined>();
  const attempts = await quietly(new Kvm(nc).open(names.attemptsBucket));
  let slots: Slots | undefined;
  // Consumer info by `<queue>#<level>` (level 3 is the queue's own consumer).
  const levelInfo = new Map<string, ConsumerInfo | undefined>();
  const infoOf = async (queue: string, level: number) => {
    const k = `${queue}#${level}`;
    if (!levelInfo.has(k))
      levelInfo.set(
        k,
        await quietly(jsm.consumers.info(names.tasksStream, names.levelConsumer(queue, level))),
      );
    return levelInfo.get(k);
  };
  for (const t of activities) {
    const queue = t.queue!;
    const taskKey = t.taskKey!;
    const level = t.priority ?? DEFAULT_PRIORITY;
    if (!consumers.has(queue)) consumers.set(queue, await infoOf(queue, DEFAULT_PRIORITY));
    const ci = await infoOf(queue, level);
    const seen: TaskObservation = {};
    const msg = await quietly(
      jsm.streams.getMessage(names.tasksStream, { last_by_subj: s.task(queue, taskKey, level) }),
    );
    let scheduledAt: number | undefined;
    let concurrency: TaskMessage['concurrency'];
    if (msg) {
      try {
        const body = unpack(msg.data) as TaskMessage;
        scheduledAt = body.scheduledAt;
        concurrency = body.concurrency;
      } catch {
        scheduledAt = undefined;
      }
      seen.queued = {
        seq: msg.seq,
        delivered: ci !== undefined && msg.seq <= ci.delivered.stream_seq,
        at: msg.time.getTime(),
      };
      if (!seen.queued.delivered) {
        // Undelivered tasks of the levels above its own: what it waits behind.
        let ahead = 0;
        for (let l = 1; l < level; l++) ahead += (await infoOf(queue, l))?.num_pending ?? 0;
        const main = consumers.get(queue);
        seen.priority = {
          level,
          ahead,
          maxWaitMs: main ? settingsOf(main).maxWaitMs : DEFAULT_QUEUE_SETTINGS.maxWaitMs,
        };
      }
    }
    if (!msg && t.fairness !== undefined) {
      // Not on its level's subject yet: staged under its fairness key until its turn.
      const staged = await quietly(stagedKeys(jsm, names, queue));
      const keys = staged?.get(level);
      const ofKey = keys?.get(fairnessToken(t.fairness)) ?? 0;
      if (ofKey > 0) seen.staged = { key: t.fairness, level, ofKey, keys: keys!.size };
    }
    // A retry waiting out its backoff: a scheduled message on `<task subject>.<attempt>`.
    const info = await quietly(
      jsm.streams.info(names.tasksStream, {
        subjects_filter: `${s.task(queue, taskKey, level)}.*`,
      }),
    );
    const retrySubjects = Object.keys(info?.state.subjects ?? {});
    let retryAttempt = 0;
    let slotPostponed: NonNullable<TaskObservation['slot']>['postponed'];
    for (const subj of retrySubjects) {
      const n = Number(subj.slice(subj.lastIndexOf('.') + 1));
      if (Number.isInteger(n) && n > retryAttempt) retryAttempt = n;
    }
    if (retryAttempt > 0) {
      const sched = await quietly(
        jsm.streams.getMessage(names.tasksStream, {
          last_by_subj: s.taskRetry(queue, taskKey, retryAttempt, level),
        }),
      );
      const dueAt = scheduleTime(sched?.header.get('Nats-Schedule'));
      const slotWait = Number(sched?.header.get(Header.SlotWait) || NaN);
      if (sched && Number.isSafeInteger(slotWait)) {
        try {
          concurrency ??= (unpack(sched.data) as TaskMessage).concurrency;
        } catch {
          /* not a task body */
        }
        slotPostponed = { attempt: retryAttempt, dueAt, since: slotWait };
      } else if (sched?.header.get(Header.RateSlot))
        seen.postponed = { attempt: retryAttempt, dueAt };
      else seen.retry = { attempt: retryAttempt, dueAt };
    }
    // The latest attempt taken: ledger keys `<taskKey>.<scheduledAt>.<attempt>` (the task's own
    // `scheduledAt` when its message is at hand: an earlier run of the same id is left out).
    if (attempts) {
      const keys: string[] = [];
      const at = scheduledAt !== undefined && Number.isSafeInteger(scheduledAt) ? scheduledAt : '*';
      const it = await quietly(attempts.keys(`${taskKey}.${at}.*`));
      if (it) for await (const k of it) keys.push(k);
      let best: { attempt: number; key: string } | undefined;
      for (const k of keys) {
        const n = Number(k.slice(k.lastIndexOf('.') + 1));
        if (Number.isInteger(n) && (!best || n > best.attempt)) best = { attempt: n, key: k };
      }
      const e = best ? await quietly(attempts.get(best.key)) : undefined;
      if (best && e && e.operation === 'PUT') {
        const by = unpack(e.value) as AttemptTaker;
        seen.taken = { attempt: best.attempt, worker: by.worker, at: by.at };
      }
    }
    // Its activity's concurrency key: who holds the slots, and whether the taken attempt does.
    if (concurrency && t.activity) {
      slots ??= await quietly(openSlots(nc, names));
      const rec = slots ? await quietly(slots.read(t.activity, concurrency.key)) : undefined;
      const holders = (rec?.holders ?? []).filter((h) => h.exp > now);
      const mine = seen.taken ? `${t.taskId}#${seen.taken.attempt}` : undefined;
      // Its place among the key's waiters (any attempt of the task holds it).
      const waiting = rec ? liveWaiters(rec, now).length : 0;
      const position = rec ? waiterPosition(rec, `${t.taskId}#0`, now) : -1;
      seen.slot = {
        key: concurrency.key,
        limit: concurrency.limit,
        holders: holders.map((h) => ({ id: h.id, worker: h.worker, at: h.at })),
        holds: holders.some((h) => h.id === mine),
        waiting,
        ...(position >= 0 ? { position: position + 1 } : {}),
        ...(slotPostponed ? { postponed: slotPostponed } : {}),
      };
    }
    input.tasks[t.actorId] = seen;
  }
  for (const [queue, ci] of consumers) {
    if (!ci) continue;
    const q: QueueObservation = {
      pending: ci.num_pending,
      inFlight: ci.num_ack_pending,
      maxInFlight: ci.config.max_ack_pending ?? 0,
      pullers: ci.num_waiting,
    };
    input.queues[queue] = q;
  }
  return input;
}
