/** The pure parts of triggers: mapping, verdicts, definitions, the step's watermark, webhooks. */
import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { setup } from 'xstate';
import {
  checkTriggers,
  mapTriggerMessage,
  triggerSpecs,
  verdictOf,
  type TriggerDefinition,
  type TriggerMessage,
} from '../../src/engine/triggers.js';
import { decide } from '../../src/engine/step.js';
import { createRegistry, defineWorkflow } from '../../src/engine/registry.js';
import { createSubjects } from '../../src/contracts/subjects.js';
import { pack, unpack } from '../../src/contracts/codec.js';
import type { InboxMessage, WorkflowRecord } from '../../src/contracts/wire.js';
import { triggerHolder } from '../../src/nats/membership.js';
import { verifyWebhook } from '../../src/http/webhook.js';
import { counter } from '../fixtures/workflows.js';

const enc = new TextEncoder();
const msg = (body: string, seq = 1): TriggerMessage => ({
  subject: 'pay.x',
  seq,
  data: enc.encode(body),
  header: () => undefined,
  headers: () => ({}),
  text: () => body,
  json: <T>() => JSON.parse(body) as T,
});
const machine = setup({ types: { events: {} as { type: 'PAY' } } }).createMachine({
  on: { PAY: {} },
});
const signalTrigger: TriggerDefinition = {
  name: 'pay',
  stream: 'PAY',
  subject: 'pay.>',
  signal: {
    id: (m) => m.json<{ id: string }>().id,
    event: (m) => ({ type: m.json<{ t?: string }>().t ?? 'PAY' }),
  },
};
const [spec] = triggerSpecs([{ type: 'w', machine, triggers: [signalTrigger] }]);

describe('trigger mapping', () => {
  it('maps a message to a signal, and poison to parked with a reason', () => {
    expect(mapTriggerMessage(spec!, msg('{"id":"a"}'), 1000)).toEqual({
      kind: 'signal',
      id: 'a',
      event: { type: 'PAY' },
    });
    const code = (body: string, max = 1000) => {
      const m = mapTriggerMessage(spec!, msg(body), max);
      return m.kind === 'poison' ? m.error.code : m.kind;
    };
    expect(code('not json')).toBe('mapping_failed');
    expect(code('{}')).toBe('no_id');
    expect(code('{"id":"a.b"}')).toBe('bad_id');
    expect(code('{"id":"a","t":"NOPE"}')).toBe('unknown_event');
    expect(code('{"id":"a","t":"xstate.done"}')).toBe('bad_event');
    expect(code('{"id":"a"}', 5)).toBe('payload_too_large');
    // The key is known for park-key whenever the id could be read.
    expect(mapTriggerMessage(spec!, msg('{"id":"a","t":"NOPE"}'), 1000)).toMatchObject({ id: 'a' });
    expect(spec!.onPoison).toBe('park-key');
  });

  it('reads the step reply: started, duplicate, signaled, parked, retried', () => {
    expect(verdictOf('start', { created: true })).toEqual({ outcome: 'started' });
    expect(verdictOf('start', { created: false })).toEqual({ outcome: 'duplicate' });
    expect(verdictOf('signal', { duplicate: true })).toEqual({ outcome: 'duplicate' });
    expect(verdictOf('signal', {})).toEqual({ outcome: 'signaled' });
    const err = (retryable: boolean) =>
      verdictOf('signal', {
        error: { type: 'E', code: 'not_found', message: 'm', retryable },
      });
    expect(err(false)).toEqual({ outcome: 'parked', error: { code: 'not_found', message: 'm' } });
    expect(err(true)).toEqual({ retry: { code: 'not_found', message: 'm' } });
  });

  it('checks definitions: one of start or signal, unique names, a webhook without stream', () => {
    const base = { name: 't', subject: 's' };
    expect(() => checkTriggers('w', [{ ...base }])).toThrow(/exactly one of start or signal/);
    const start = { id: () => 'x' };
    expect(() =>
      checkTriggers('w', [
        { ...base, start },
        { ...base, start },
      ]),
    ).toThrow(/twice/);
    expect(() =>
      checkTriggers('w', [
        { name: 'h', stream: 'S', webhook: { secretEnv: 'E', header: 'x' }, start },
      ]),
    ).toThrow(/no stream or subject/);
    expect(() => checkTriggers('w', [{ name: 'a.b', subject: 's', start }])).toThrow(/name/);
    expect(() =>
      defineWorkflow({ type: 'w', version: 1, machine, triggers: [{ ...base, start }] }),
    ).not.toThrow();
  });

  it('one holder per trigger among the engines that declare it, the same on every engine', () => {
    const engines = [
      { id: 'e1', triggers: ['a', 'b'] },
      { id: 'e2', triggers: ['a', 'b'] },
      { id: 'e3', triggers: ['b'] },
      { id: 'e4', triggers: ['a'], draining: true },
    ];
    const a = triggerHolder(engines, 'a');
    expect(['e1', 'e2']).toContain(a);
    expect(triggerHolder([...engines].reverse(), 'a')).toBe(a);
    expect(triggerHolder(engines, 'c')).toBeUndefined();
  });
});

describe('the step: a trigger signal is applied above its watermark only', () => {
  const registry = createRegistry([counter]);
  const subjects = createSubjects('wf');
  it('a repeat at or below the per-trigger mark is a duplicate, after any dedup window', () => {
    let record: WorkflowRecord | undefined;
    const replies: unknown[] = [];
    const msgs: InboxMessage[] = [
      { kind: 'start', input: {} },
      { kind: 'signal', event: { type: 'SIG', n: 1 }, trigger: { name: 'pay', seq: 10 } },
      { kind: 'signal', event: { type: 'SIG', n: 2 }, trigger: { name: 'pay', seq: 12 } },
      // A rewind: seq 10 and 12 again, then a new one.
      { kind: 'signal', event: { type: 'SIG', n: 1 }, trigger: { name: 'pay', seq: 10 } },
      { kind: 'signal', event: { type: 'SIG', n: 2 }, trigger: { name: 'pay', seq: 12 } },
      { kind: 'signal', event: { type: 'SIG', n: 3 }, trigger: { name: 'pay', seq: 13 } },
      // Another trigger has its own mark.
      { kind: 'signal', event: { type: 'SIG', n: 4 }, trigger: { name: 'other', seq: 1 } },
    ];
    msgs.forEach((message, i) => {
      const d = decide({ registry, subjects, journal: { payloadMaxBytes: 4096 } }, record, {
        type: 'counter',
        id: 'x',
        seq: i + 1,
        shard: 0,
        message,
        now: 1,
      });
      replies.push(d.kind === 'noop' ? 'duplicate' : d.kind);
      if (d.kind === 'write') record = unpack(pack(d.record)) as WorkflowRecord;
    });
    expect(replies).toEqual([
      'write',
      'write',
      'write',
      'duplicate',
      'duplicate',
      'write',
      'write',
    ]);
    expect(record!.inbound).toMatchObject({ 'trigger/pay': [13, 0], 'trigger/other': [1, 0] });
  });
});

describe('webhook signatures', () => {
  const w = { secretEnv: 'S', header: 'X-Sig', timestampHeader: 'X-Ts', toleranceSec: 60 };
  const body = Buffer.from('{"id":"a"}');
  const sig = (ts: number, key = 'k') =>
    createHmac('sha256', key).update(`${ts}.${body.toString()}`).digest('hex');
  it('accepts a valid one and refuses a wrong, missing or stale one', () => {
    expect(
      verifyWebhook(w, 'k', { 'x-sig': `sha256=${sig(100)}`, 'x-ts': '100' }, body, 110),
    ).toEqual({ ok: true });
    expect(verifyWebhook(w, 'k', { 'x-sig': sig(100, 'other'), 'x-ts': '100' }, body, 110).ok).toBe(
      false,
    );
    expect(verifyWebhook(w, 'k', { 'x-ts': '100' }, body, 110).ok).toBe(false);
    expect(verifyWebhook(w, 'k', { 'x-sig': sig(100), 'x-ts': '100' }, body, 200).ok).toBe(false);
    expect(verifyWebhook(w, 'k', { 'x-sig': 'zz', 'x-ts': '100' }, body, 110).ok).toBe(false);
  });
});
