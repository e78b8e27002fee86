/**
 * The wire schemas (src/contracts/schemas.ts) as the engine, the worker and the HTTP API use them:
 * good messages pass unchanged, each rejected shape gets its documented message, the same error
 * code as before, and `details.field` naming the field at fault.
 */
import { describe, expect, it } from 'vitest';
import { createMachine } from 'xstate';
import { pack } from '../../src/contracts/codec.js';
import {
  closed,
  compile,
  decodeTask,
  decodeTaskControl,
  firstIssue,
  MalformedTaskError,
  StartRequestSchema,
} from '../../src/contracts/schemas.js';
import type { AdminVerb, TaskMessage } from '../../src/contracts/wire.js';
import { parseAdminFields } from '../../src/engine/admin.js';
import { parseTriggerRequest } from '../../src/engine/triggers.js';
import { BadRequestError } from '../../src/errors.js';
import { decodeInbox } from '../../src/engine/processor.js';
import { parseRequest } from '../../src/engine/gateway.js';
import { parseHistoryRequest } from '../../src/engine/journal.js';
import type { InboxEntry } from '../../src/engine/ports.js';
import { createRegistry, defineWorkflow } from '../../src/engine/registry.js';

const entry = (kind: InboxEntry['kind'], body: unknown): InboxEntry => ({
  seq: 1,
  shard: 0,
  kind,
  type: 'order',
  id: 'o1',
  data: pack(body),
  replyTo: undefined,
  replyEncoding: 'json',
});

function rejected(f: () => unknown): BadRequestError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(BadRequestError);
    return err as BadRequestError;
  }
  throw new Error('not rejected');
}

const parent = { type: 'order', id: 'p1', taskId: 't1', key: 'k' };
const origin = { type: 'order', id: 'p1', step: 3, index: 0 };

describe('inbox messages', () => {
  it('good messages decode to what they say', () => {
    expect(decodeInbox(entry('start', { input: { a: 1 }, parent }))).toEqual({
      kind: 'start',
      input: { a: 1 },
      parent,
    });
    expect(
      decodeInbox(
        entry('signal', {
          event: { type: 'GO', n: 1 },
          msgId: 'm1',
          from: origin,
          startIfAbsent: {},
          trigger: { name: 'tr', seq: 4 },
        }),
      ),
    ).toEqual({
      kind: 'signal',
      event: { type: 'GO', n: 1 },
      msgId: 'm1',
      from: origin,
      startIfAbsent: { input: null },
      trigger: { name: 'tr', seq: 4 },
    });
    // Lenient where a refusal would lose a worker's result: odd optional fields read as absent.
    expect(
      decodeInbox(
        entry('result', { taskId: 't', actorId: 'a', ok: true, attempt: 'x', from: { type: 1 } }),
      ),
    ).toEqual({
      kind: 'result',
      taskId: 't',
      actorId: 'a',
      ok: true,
      output: undefined,
      error: undefined,
      attempt: 0,
    });
    expect(decodeInbox(entry('cancel', { reason: null, msgId: 5 }))).toEqual({
      kind: 'cancel',
      reason: undefined,
    });
    expect(decodeInbox(entry('timer', { timerId: 'x', step: 2, dueAt: 9 }))).toMatchObject({
      kind: 'timer',
      dueAt: 9,
    });
  });

  const cases: [InboxEntry['kind'], unknown, string, string][] = [
    ['start', { parent: { ...parent, taskId: 3 } }, 'a child start needs parent', 'parent.taskId'],
    ['start', { batch: { id: 'b', item: 'i', gen: 0 } }, 'a batch item start needs', 'batch.gen'],
    ['start', { trigger: { name: 'x', seq: -1 } }, 'a trigger start needs', 'trigger.seq'],
    ['start', 7, 'start message body must be an object', ''],
    ['signal', { event: { nope: 1 } }, 'signal has no event type', 'event.type'],
    ['signal', { event: { type: '' } }, 'signal has no event type', 'event.type'],
    ['signal', { event: { type: 'xstate.init' } }, 'reserved for the engine', 'event.type'],
    [
      'signal',
      { event: { type: 'A' }, from: { ...origin, step: 'x' } },
      'a send needs',
      'from.step',
    ],
    [
      'signal',
      { event: { type: 'A' }, undeliverable: { type: 'order' } },
      'a send failure needs',
      'undeliverable.id',
    ],
    [
      'signal',
      { event: { type: 'A' }, startIfAbsent: {} },
      'startIfAbsent must be',
      'startIfAbsent',
    ],
    ['signal', { event: { type: 'A' }, trigger: { seq: 1 } }, 'a trigger signal', 'trigger.name'],
    ['cancel', { from: { type: 'order' } }, "a parent's cancel needs", 'from.id'],
    ['watch', {}, 'a watch needs watcher', 'watcher'],
    ['result', { taskId: 't', actorId: 'a' }, 'activity result needs', 'ok'],
    ['result', { progress: 'retrying', taskId: 't', actorId: 'a' }, 'attempt notice', 'attempt'],
    ['timer', { timerId: 't', step: '1' }, 'timer message needs', 'step'],
    ['admit', { key: 'k' }, 'admit message needs', 'startSeq'],
    ['admin', { verb: 'pause', reason: 'r' }, 'admin message needs', 'by'],
  ];
  for (const [kind, body, message, field] of cases) {
    it(`${kind} ${JSON.stringify(body)}: "${message}…", field ${field || '(body)'}`, () => {
      const err = rejected(() => decodeInbox(entry(kind, body)));
      expect(err.code).toBe('bad_request');
      expect(err.message).toContain(message);
      expect((err.details as { field: string }).field).toBe(field);
    });
  }

  it('a body that is not msgpack is malformed_body', () => {
    const e = { ...entry('signal', {}), data: new Uint8Array([0xc1, 0xc1]) };
    expect(rejected(() => decodeInbox(e)).code).toBe('malformed_body');
  });
});

describe('public requests', () => {
  const registry = createRegistry([
    defineWorkflow({ type: 'order', version: 1, machine: createMachine({ id: 'order' }) }),
  ]);
  const req = (verb: string, body: unknown) =>
    parseRequest(
      {
        verb,
        type: 'order',
        id: 'o1',
        data: new TextEncoder().encode(body === undefined ? '' : JSON.stringify(body)),
        encoding: 'json',
        subject: `wf.${verb}.order.o1`,
      },
      registry,
      1 << 20,
    );
  it('start and signal pass (unknown fields of a start are ignored over NATS)', () => {
    expect(req('start', { input: 1, extra: true })).toEqual({ kind: 'start', input: 1 });
    expect(req('start', undefined)).toEqual({ kind: 'start', input: undefined });
    expect(req('signal', { type: 'GO', n: 2 })).toEqual({
      kind: 'signal',
      event: { type: 'GO', n: 2 },
    });
  });
  it('rejected shapes keep their messages and name the field', () => {
    const e1 = rejected(() => req('signal', { n: 3 }));
    expect(e1.message).toBe('a signal is an XState event: an object with a string "type"');
    expect(e1.details).toMatchObject({ field: 'type' });
    const e2 = rejected(() => req('signal', { type: 'jetflow.x' }));
    expect(e2.message).toContain('reserved for the engine');
    expect(e2.details).toMatchObject({ field: 'type' });
    const e3 = rejected(() => req('cancel', { reason: 5 }));
    expect(e3.message).toBe('cancel reason must be a string');
    expect(e3.details).toMatchObject({ field: 'reason' });
    const e4 = rejected(() => req('start', [1]));
    expect(e4.message).toBe('body must be an object');
    expect(e4.code).toBe('bad_request');
  });
  it('history requests: defaults, bounds and unknown fields', () => {
    expect(parseHistoryRequest(undefined)).toEqual({ fromStep: 0, limit: 100 });
    expect(parseHistoryRequest({ fromStep: 5 })).toEqual({ fromStep: 5, limit: 100 });
    const e1 = rejected(() => parseHistoryRequest({ limit: 0 }));
    expect(e1.message).toBe('limit must be an integer in 1..1000');
    expect(e1.details).toMatchObject({ field: 'limit', value: 0 });
    expect(rejected(() => parseHistoryRequest({ fromStep: 1.5 })).message).toBe(
      `fromStep must be an integer in 0..${Number.MAX_SAFE_INTEGER}`,
    );
    const e2 = rejected(() => parseHistoryRequest({ from: 1 }));
    expect(e2.message).toContain('unknown field "from" in history request');
    expect(rejected(() => parseHistoryRequest('x')).message).toBe(
      'history request body must be an object',
    );
  });
  it('closed(): the HTTP form of a body refuses unknown fields, the NATS form ignores them', () => {
    const open = compile(StartRequestSchema);
    const shut = compile(closed(StartRequestSchema));
    expect(open.Check({ input: 1, inputt: 2 })).toBe(true);
    expect(shut.Check({ input: 1, inputt: 2 })).toBe(false);
    expect(firstIssue(shut, { input: 1, inputt: 2 })).toMatchObject({
      field: 'inputt',
      unknown: true,
    });
  });
});

describe('activity tasks (worker side)', () => {
  const task: TaskMessage = {
    v: 1,
    taskId: 'order.o1.1.charge',
    taskKey: 'abc_DEF-1',
    workflowType: 'order',
    workflowId: 'o1',
    actorId: 'charge',
    activity: 'charge',
    queue: 'default',
    input: { total: 1 },
    maxAttempts: 3,
    retry: {
      initialIntervalMs: 100,
      backoffCoefficient: 2,
      maxIntervalMs: 1000,
      jitter: 0,
      nonRetryableErrorTypes: [],
    },
    startToCloseMs: 1000,
    resultSubject: 'wf.inbox.result.order.o1',
    scheduledAt: 1,
  };
  it('a task passes unchanged, with fields added by newer engines', () => {
    expect(decodeTask(pack(task))).toEqual(task);
    expect(decodeTask(pack({ ...task, input: undefined, later: 1 }))).toMatchObject({ later: 1 });
  });
  const bad: [string, Record<string, unknown>][] = [
    ['taskKey', { taskKey: 'a.b' }],
    ['resultSubject', { resultSubject: 7 }],
    ['taskId', { taskId: '' }],
    ['retry.nonRetryableErrorTypes.0', { retry: { ...task.retry, nonRetryableErrorTypes: [1] } }],
    ['http.url', { http: { method: 'POST' } }],
    ['maxAttempts', { maxAttempts: undefined }],
  ];
  for (const [field, change] of bad) {
    it(`a task with a bad ${field} is refused, naming it`, () => {
      let err: unknown;
      try {
        decodeTask(pack({ ...task, ...change }));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(MalformedTaskError);
      expect((err as MalformedTaskError).issue?.field).toBe(field);
      expect((err as Error).message).toContain(field);
    });
  }
  it('garbage is refused; control messages need a string cancel', () => {
    expect(() => decodeTask(new Uint8Array([0xc1]))).toThrow(MalformedTaskError);
    expect(() => decodeTask(pack('task'))).toThrow('not an object');
    expect(decodeTaskControl(pack({ cancel: 't1' }))).toBe('t1');
    expect(decodeTaskControl(pack({ cancel: 1 }))).toBeUndefined();
    expect(decodeTaskControl(new Uint8Array([0xc1]))).toBeUndefined();
  });
});

describe('admin and trigger verb bodies', () => {
  const bad = (msg: string, details?: unknown) =>
    new BadRequestError(msg, details === undefined ? {} : { details });
  const admin = (verb: AdminVerb, body: unknown) => parseAdminFields(verb, body, bad);
  it('good admin bodies pass', () => {
    expect(admin('retry', { reason: 'r', by: 'b', actorId: 'a', attempts: 2 })).toEqual({
      kind: 'admin',
      verb: 'retry',
      reason: 'r',
      by: 'b',
      actorId: 'a',
      attempts: 2,
    });
    expect(admin('reset', { reason: 'r', by: 'b', toStep: 0 })).toMatchObject({ toStep: 0 });
  });
  const cases: [AdminVerb, Record<string, unknown>, string, string][] = [
    ['pause', { by: 'b' }, 'reason must be a non-empty string', 'reason'],
    ['pause', { reason: '  ', by: 'b' }, 'reason must be a non-empty string', 'reason'],
    [
      'pause',
      { reason: 'r', by: 'b', requestId: 'x'.repeat(1025) },
      'requestId must be',
      'requestId',
    ],
    ['pause', { reason: 'r', by: 'b', scope: 'all' }, 'scope must be "workflow"', 'scope'],
    ['retry', { reason: 'r', by: 'b', actorId: 'a', attempts: 0 }, 'attempts must be', 'attempts'],
    ['retry', { reason: 'r', by: 'b' }, 'retry needs "actorId"', 'actorId'],
    ['fail', { reason: 'r', by: 'b', actorId: 'a', error: { code: 1 } }, 'error must be', 'error'],
    ['reset', { reason: 'r', by: 'b', toStep: -1 }, 'reset needs "toStep"', 'toStep'],
    ['reset', { reason: 'r', by: 'b' }, 'reset needs "toStep"', 'toStep'],
    ['shutdown', { reason: 'r', by: 'b' }, 'shutdown needs "nodeId"', 'nodeId'],
    ['release', { reason: 'r', by: 'b', key: '' }, 'key must be a concurrency key', 'key'],
    ['terminate', { reason: 'r', by: 'b', actorId: 'a' }, 'unknown field "actorId"', 'actorId'],
  ];
  for (const [verb, body, message, field] of cases) {
    it(`${verb} ${JSON.stringify(body).slice(0, 60)}: "${message}…"`, () => {
      const err = rejected(() => admin(verb, body));
      expect(err.message).toContain(message);
      expect((err.details as { field: string }).field).toBe(field);
    });
  }
  it('trigger verbs: types checked, required fields keep their messages', () => {
    expect(parseTriggerRequest('replay', { name: 't', all: true })).toEqual({
      name: 't',
      all: true,
    });
    expect(parseTriggerRequest('list', undefined)).toEqual({});
    expect(rejected(() => parseTriggerRequest('skip', { name: 't', seq: 3 })).message).toBe(
      'skip needs seq and a reason',
    );
    expect(rejected(() => parseTriggerRequest('trace', { name: 't' })).message).toBe(
      'trace needs seq',
    );
    const e = rejected(() => parseTriggerRequest('rewind', { name: 't', toSeq: 0 }));
    expect(e.message).toContain('trigger rewind: toSeq:');
    expect(e.details).toMatchObject({ field: 'toSeq' });
    expect(rejected(() => parseTriggerRequest('replay', { seq: '4' })).details).toMatchObject({
      field: 'seq',
    });
    expect(rejected(() => parseTriggerRequest('explode', {})).message).toContain(
      'unknown trigger verb',
    );
  });
});
