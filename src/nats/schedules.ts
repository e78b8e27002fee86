/**
 * Scheduled and recurring starts (and signals), on the server's own message schedules.
 *
 * A schedule is a definition in KV bucket `<prefix>_schedules` plus one schedule message on
 * `<prefix>.schedule.def.<name>` in stream `<PREFIX>_SCHEDULES` with `Nats-Schedule` = `@at <time>`,
 * `@every <duration>` or a 6-field cron (server 2.14+), targeting `<prefix>.schedule.fire.<name>`.
 * Every fire is a tick message; an engine consumes it (one durable consumer shared by all engines)
 * and publishes the start or signal into the workflow inbox with msg id `sched.<name>.<tick seq>`.
 *
 * Guarantees: a tick is turned into a start at least once; the start is idempotent (a recurring
 * start's workflow id is `<idPrefix>-<fire time>`, fixed per tick), so each period starts one
 * workflow. Pause purges the schedule message (no more ticks); resume publishes it again.
 */
import { headers, type NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { MSGPACK, pack, unpack } from '../contracts/codec.js';
import { isToken } from '../contracts/subjects.js';
import { Header } from '../contracts/wire.js';
import { BadRequestError, ErrorCode } from '../errors.js';
import type { Logger } from '../engine/ports.js';
import type { TopologyNames } from './topology.js';

/** When a schedule fires. */
export type ScheduleSpec =
  { at: string | Date } | { every: string } | { cron: string; timeZone?: string };

/** What a schedule does when it fires. */
export type ScheduleAction =
  | {
      kind: 'start';
      workflowType: string;
      input?: unknown;
      /** Exact id (one-off schedules); recurring ones use `<idPrefix>-<fire time>`. */
      workflowId?: string;
      /** Default: the schedule's name. */
      idPrefix?: string;
    }
  | {
      kind: 'signal';
      workflowType: string;
      workflowId: string;
      event: { type: string; [k: string]: unknown };
    };

export interface ScheduleDefinition {
  name: string;
  spec: ScheduleSpec;
  action: ScheduleAction;
  paused: boolean;
  createdAt: string;
}

/** The tick body the server delivers on every fire. */
interface Tick {
  name: string;
  action: ScheduleAction;
}

function specHeader(spec: ScheduleSpec): string {
  if ('at' in spec) return `@at ${new Date(spec.at).toISOString()}`;
  if ('every' in spec) return `@every ${spec.every}`;
  return spec.cron;
}

function validate(def: Omit<ScheduleDefinition, 'paused' | 'createdAt'>): void {
  const bad = (m: string) =>
    new BadRequestError(`schedule ${JSON.stringify(def.name)}: ${m}`, {
      code: ErrorCode.BadRequest,
    });
  if (!isToken(def.name)) throw bad('name must be 1-256 of A-Z a-z 0-9 _ - =');
  if (!isToken(def.action.workflowType)) throw bad('workflowType is not a valid token');
  if (
    def.action.kind === 'signal' &&
    (!isToken(def.action.workflowId) || typeof def.action.event?.type !== 'string')
  ) {
    throw bad('a signal schedule needs a workflowId and an event with a type');
  }
  if (
    def.action.kind === 'start' &&
    def.action.workflowId !== undefined &&
    !isToken(def.action.workflowId)
  ) {
    throw bad('workflowId is not a valid token');
  }
  if ('at' in def.spec && Number.isNaN(new Date(def.spec.at).getTime()))
    throw bad('`at` is not a date');
  if ('every' in def.spec && !/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(def.spec.every))
    throw bad('`every` must look like 30s, 5m, 1h30m');
  if (
    'cron' in def.spec &&
    def.spec.cron.trim().split(/\s+/).length !== 6 &&
    !def.spec.cron.startsWith('@')
  ) {
    throw bad('`cron` has 6 fields: sec min hour day-of-month month day-of-week');
  }
}

export function schedulesStreamConfig(
  names: TopologyNames,
  replicas: number,
): Partial<StreamConfig> & { name: string } {
  return {
    name: names.schedulesStream,
    description: 'jetflow schedules: definitions (def.<name>) and their fires (fire.<name>)',
    subjects: [`${names.subjects.prefix}.schedule.>`],
    retention: RetentionPolicy.Workqueue,
    storage: StorageType.File,
    num_replicas: replicas,
    allow_msg_schedules: true,
  };
}

/** Manage schedules (create, list, pause, resume, delete). Needs no engine running. */
export class Schedules {
  private kvp: Promise<KV> | undefined;
  private readonly js: JetStreamClient;
  private jsmp: Promise<JetStreamManager> | undefined;
  constructor(
    private readonly nc: NatsConnection,
    private readonly names: TopologyNames,
    private readonly replicas = 1,
  ) {
    this.js = jetstream(nc);
  }

  private jsm(): Promise<JetStreamManager> {
    this.jsmp ??= jetstreamManager(this.nc);
    return this.jsmp;
  }

  private kv(): Promise<KV> {
    this.kvp ??= (async () => {
      await ensureStream(await this.jsm(), schedulesStreamConfig(this.names, this.replicas));
      return new Kvm(this.nc).create(this.names.schedulesBucket, {
        history: 1,
        replicas: this.replicas,
      });
    })();
    return this.kvp;
  }

  private subject(kind: 'def' | 'fire', name: string): string {
    return `${this.names.subjects.prefix}.schedule.${kind}.${name}`;
  }

  private async arm(def: ScheduleDefinition): Promise<void> {
    const h = headers();
    h.set(Header.ContentType, MSGPACK);
    h.set('Nats-Schedule', specHeader(def.spec));
    h.set('Nats-Schedule-Target', this.subject('fire', def.name));
    if ('cron' in def.spec && def.spec.timeZone)
      h.set('Nats-Schedule-Time-Zone', def.spec.timeZone);
    await this.js.publish(
      this.subject('def', def.name),
      pack({ name: def.name, action: def.action } satisfies Tick),
      { headers: h },
    );
  }

  /** Create or replace a schedule. */
  async create(def: {
    name: string;
    spec: ScheduleSpec;
    action: ScheduleAction;
  }): Promise<ScheduleDefinition> {
    validate(def);
    const kv = await this.kv();
    const full: ScheduleDefinition = {
      name: def.name,
      spec: 'at' in def.spec ? { at: new Date(def.spec.at).toISOString() } : def.spec,
      action: def.action,
      paused: false,
      createdAt: new Date().toISOString(),
    };
    await kv.put(def.name, pack(full));
    await this.arm(full);
    return full;
  }

  async get(name: string): Promise<ScheduleDefinition | undefined> {
    const e = await (await this.kv()).get(name);
    if (!e || e.operation !== 'PUT') return undefined;
    return unpack(e.value) as ScheduleDefinition;
  }

  async list(): Promise<ScheduleDefinition[]> {
    const kv = await this.kv();
    const out: ScheduleDefinition[] = [];
    for await (const k of await kv.keys()) {
      const d = await this.get(k);
      if (d) out.push(d);
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  private async need(name: string): Promise<ScheduleDefinition> {
    const d = await this.get(name);
    if (!d)
      throw new BadRequestError(`no schedule named ${JSON.stringify(name)}`, {
        code: ErrorCode.NotFound,
      });
    return d;
  }

  /** Stop firing (the definition stays). */
  async pause(name: string): Promise<void> {
    const d = await this.need(name);
    await (
      await this.jsm()
    ).streams.purge(this.names.schedulesStream, { filter: this.subject('def', name) });
    await (await this.kv()).put(name, pack({ ...d, paused: true }));
  }

  async resume(name: string): Promise<void> {
    const d = await this.need(name);
    const next = { ...d, paused: false };
    await (await this.kv()).put(name, pack(next));
    await this.arm(next);
  }

  /** Stop firing and forget the definition. */
  async delete(name: string): Promise<void> {
    await (
      await this.jsm()
    ).streams.purge(this.names.schedulesStream, { filter: this.subject('def', name) });
    await (await this.kv()).delete(name);
  }
}

async function ensureStream(
  jsm: JetStreamManager,
  cfg: Partial<StreamConfig> & { name: string },
): Promise<void> {
  try {
    await jsm.streams.info(cfg.name);
  } catch {
    await jsm.streams.add(cfg);
  }
}

function fireId(ms: number): string {
  // 2026-11-22T02:30:00.123Z -> 20261122T023000123Z (a valid id token)
  return new Date(ms).toISOString().replace(/[-:.]/g, '');
}

/**
 * Engine side: consume ticks and turn each into a start or signal in the workflow's inbox.
 * Runs on every engine; the shared durable consumer hands each tick to one of them.
 */
export async function consumeScheduleTicks(
  js: JetStreamClient,
  jsm: JetStreamManager,
  names: TopologyNames,
  replicas: number,
  logger: Logger,
): Promise<{ stop(): Promise<void> }> {
  await ensureStream(jsm, schedulesStreamConfig(names, replicas));
  const durable = 'schedule-ticks';
  await jsm.consumers
    .add(names.schedulesStream, {
      durable_name: durable,
      filter_subject: `${names.subjects.prefix}.schedule.fire.>`,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: 30_000_000_000,
      max_deliver: -1,
    })
    .catch(() => undefined); // exists already
  const consumer = await js.consumers.get(names.schedulesStream, durable);
  const messages = await consumer.consume({ max_messages: 100 });
  const loop = (async () => {
    for await (const m of messages) {
      try {
        const tick = unpack(m.data) as Tick;
        const a = tick.action;
        const h = headers();
        h.set(Header.ContentType, MSGPACK);
        if (a.kind === 'start') {
          const id =
            a.workflowId ??
            `${a.idPrefix ?? tick.name}-${fireId(Math.floor(m.info.timestampNanos / 1e6))}`;
          await js.publish(
            names.subjects.inbox('start', a.workflowType, id),
            pack({ input: a.input }),
            {
              msgID: `sched.${tick.name}.${m.seq}`,
              headers: h,
            },
          );
          logger.info(
            { schedule: tick.name, workflowType: a.workflowType, workflowId: id },
            'schedule fired: start',
          );
        } else {
          // The tick's id also goes into the body: the workflow's record remembers it, so a
          // tick redelivered after a server restart (the server forgot the id) is a duplicate.
          const msgId = `sched.${tick.name}.${m.seq}`;
          await js.publish(
            names.subjects.inbox('signal', a.workflowType, a.workflowId),
            pack({ event: a.event, msgId }),
            {
              msgID: msgId,
              headers: h,
            },
          );
          logger.info(
            { schedule: tick.name, workflowType: a.workflowType, workflowId: a.workflowId },
            'schedule fired: signal',
          );
        }
        m.ack();
      } catch (err) {
        logger.warn({ err, seq: m.seq }, 'schedule tick not handled; it will be redelivered');
        m.nak(1000);
      }
    }
  })();
  return {
    async stop() {
      messages.stop();
      await loop.catch(() => undefined);
    },
  };
}
