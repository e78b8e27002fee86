/**
 * The journal: every step recorded in order with its event, from -> to and effects; rejected
 * signals and ignored late results as such; the history request/reply and its paging.
 */
import { describe, expect, it } from 'vitest';
import { assign, setup } from 'xstate';
import { headers } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { activity } from '../../src/engine/activity.js';
import { topologyNames } from '../../src/nats/topology.js';
import { pack } from '../../src/contracts/codec.js';
import { JetflowError } from '../../src/errors.js';
import type { JournalEntry } from '../../src/contracts/wire.js';

const env = useServer();

const fast = { retry: { maxAttempts: 2, initialIntervalMs: 50, jitter: 0 } };

/** Three activities in a row, a timer, then a long activity that a signal skips. */
const journaled = defineWorkflow({
  type: 'journaled',
  version: 1,
  searchAttributes: ['merchant', 'x'],
  machine: setup({
    types: {
      input: {} as { x: number; merchant: string },
      context: {} as { x: number; merchant: string },
      events: {} as { type: 'SKIP' } | { type: 'BIG'; blob: string },
    },
    actors: { inc: activity('inc', fast), hang: activity('hang', fast) },
  }).createMachine({
    id: 'journaled',
    context: ({ input }) => ({ x: input.x, merchant: input.merchant }),
    initial: 'fetching',
    states: {
      fetching: {
        invoke: {
          src: 'inc',
          input: ({ context }: { context: { x: number } }) => ({ x: context.x }),
          onDone: {
            target: 'calculating',
            actions: assign({ x: ({ event }) => event.output as number }),
          },
        },
      },
      calculating: {
        invoke: {
          src: 'inc',
          input: ({ context }: { context: { x: number } }) => ({ x: context.x }),
          onDone: {
            target: 'sending',
            actions: assign({ x: ({ event }) => event.output as number }),
          },
        },
      },
      sending: {
        invoke: {
          src: 'inc',
          input: ({ context }: { context: { x: number } }) => ({ x: context.x }),
          onDone: {
            target: 'waiting',
            actions: assign({ x: ({ event }) => event.output as number }),
          },
        },
      },
      waiting: {
        after: { 300: 'holding' },
        on: { BIG: { actions: assign({ merchant: ({ context }) => context.merchant }) } },
      },
      holding: {
        invoke: { id: 'hanger', src: 'hang', input: () => ({}) },
        on: { SKIP: 'done' },
      },
      done: { type: 'final' },
    },
    output: ({ context }) => ({ x: context.x }),
  }),
});

const steps = (entries: JournalEntry[]) =>
  entries.filter((e): e is Extract<JournalEntry, { kind: 'step' }> => e.kind === 'step');

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('journal', () => {
  it('records exactly the steps of a workflow with three activities and a timer, a rejected signal and an ignored late result', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix, {
      workflows: [journaled],
      journalPayloadMaxBytes: 64,
    });
    const worker = await createWorker({
      connection: env.nc,
      prefix,
      activities: {
        inc: ({ x }: { x: number }) => x + 1,
        hang: (_: unknown, ctx) =>
          new Promise((_ok, no) =>
            ctx.signal.addEventListener('abort', () => no(new Error('aborted'))),
          ),
      },
    });
    const client = new Client(env.nc, { prefix });
    try {
      await client.start('journaled', 'j1', { x: 10, merchant: 'm-7' });
      await until('waiting', async () =>
        (await client.query('journaled', 'j1')).value === 'waiting' ? true : undefined,
      );
      // Not accepted in `waiting`: rejected, journaled with the error and what is accepted.
      await expect(client.signal('journaled', 'j1', { type: 'SKIP' })).rejects.toThrow(
        JetflowError,
      );
      // A big payload is journaled cut, with a marker.
      await client.signal('journaled', 'j1', { type: 'BIG', blob: 'z'.repeat(500) });
      await until('holding', async () =>
        (await client.query('journaled', 'j1')).value === 'holding' ? true : undefined,
      );
      await client.signal('journaled', 'j1', { type: 'SKIP' });
      expect(await client.result('journaled', 'j1')).toEqual({ x: 13 });

      // The hang task was stopped; a worker that missed the cancel reports late: ignored.
      const page = await client.history('journaled', 'j1');
      const hang = steps(page.entries)
        .flatMap((e) => e.effects)
        .find((e) => e.kind === 'task' && e.activity === 'hang');
      expect(hang).toBeDefined();
      const h = headers();
      h.set('Content-Type', 'application/msgpack');
      await jetstream(env.nc).publish(
        topologyNames(prefix).subjects.inbox('result', 'journaled', 'j1'),
        pack({
          taskId: (hang as { taskId: string }).taskId,
          actorId: 'hanger',
          ok: true,
          output: 1,
          attempt: 1,
        }),
        { headers: h },
      );
      const all = await until('the ignored entry', async () => {
        const r = await client.history('journaled', 'j1');
        return r.entries.some((e) => e.kind === 'ignored' && e.cause === 'result')
          ? r.entries
          : undefined;
      });

      const s = steps(all);
      expect(s.map((e) => e.step)).toEqual([0, 1, 2, 3, 4, 5, 6]);
      expect(s.map((e) => [e.event.type, e.from?.paths ?? null, e.to.paths])).toEqual([
        ['xstate.init', null, ['fetching']],
        ['xstate.done.actor.0.journaled.fetching', ['fetching'], ['calculating']],
        ['xstate.done.actor.0.journaled.calculating', ['calculating'], ['sending']],
        ['xstate.done.actor.0.journaled.sending', ['sending'], ['waiting']],
        ['BIG', ['waiting'], ['waiting']],
        ['xstate.after.300.journaled.waiting', ['waiting'], ['holding']],
        ['SKIP', ['holding'], ['done']],
      ]);
      expect(s.map((e) => e.cause)).toEqual([
        'start',
        'result',
        'result',
        'result',
        'signal',
        'timer',
        'signal',
      ]);
      // Effects: a task per activity, the timer with its due time, the stop of the hang task.
      const kinds = s.map((e) => e.effects.filter((x) => x.kind !== 'notify').map((x) => x.kind));
      expect(kinds).toEqual([['task'], ['task'], ['task'], ['timer'], [], ['task'], ['stopTask']]);
      const timer = s[3]!.effects.find((x) => x.kind === 'timer') as { dueAt: number };
      expect(timer.dueAt - s[3]!.at).toBe(300);
      // Event payloads: the input kept, the big blob cut with its size.
      expect(s[0]!.event.payload).toEqual({ x: 10, merchant: 'm-7' });
      expect(s[4]!.event.payload).toBeUndefined();
      expect(s[4]!.event.truncated!.bytes).toBeGreaterThan(500);
      // Activity outcomes, context, snapshot, status, attributes, time in state.
      expect(s[1]!.activity).toMatchObject({ activity: 'inc', ok: true, attempt: 1 });
      expect(s.map((e) => (e.context as { x: number }).x)).toEqual([10, 11, 12, 13, 13, 13, 13]);
      expect(s[6]!.status).toBe('completed');
      expect(s[6]!.attributes).toEqual({ merchant: 'm-7', x: 13 });
      expect(s[4]!.stateSince).toBe(s[3]!.at); // BIG stayed in `waiting`
      expect(s[5]!.stateSince).toBe(s[5]!.at);
      expect((s[6]!.snapshot as { value: unknown }).value).toBe('done');
      expect(s.every((e) => e.engine === engine.config.name)).toBe(true);

      const rejected = all.filter((e) => e.kind === 'rejected');
      expect(rejected).toHaveLength(1);
      expect(rejected[0]).toMatchObject({
        kind: 'rejected',
        step: 3,
        event: { type: 'SKIP' },
        error: { code: 'event_not_accepted' },
        accepts: ['BIG'],
      });
      // (The timer's second copy — the server's schedule or the engine's local twin, whichever
      // came last — may appear as an ignored timer too.)
      const ignored = all.filter((e) => e.kind === 'ignored' && e.cause === 'result');
      expect(ignored, JSON.stringify(ignored)).toHaveLength(1);
      expect(ignored[0]).toMatchObject({ kind: 'ignored', step: 6, cause: 'result' });

      // Paging: pages of 2 give the same entries in the same order, each once.
      const paged: JournalEntry[] = [];
      let from: number | null = 0;
      while (from !== null) {
        const p = await client.history('journaled', 'j1', { fromStep: from, limit: 2 });
        expect(p.entries.length).toBeGreaterThan(0);
        paged.push(...p.entries);
        from = p.next;
      }
      expect(paged.map((e) => `${e.kind}.${e.step}`)).toEqual(
        all.map((e) => `${e.kind}.${e.step}`),
      );
      const from5 = await client.history('journaled', 'j1', { fromStep: 5 });
      expect(from5.entries.map((e) => `${e.kind}.${e.step}`)).toEqual(
        all.filter((e) => e.step >= 5).map((e) => `${e.kind}.${e.step}`),
      );
      expect(from5.entries[0]).toMatchObject({ kind: 'step', step: 5 });
    } finally {
      await worker.close();
      await engine.close();
    }
  });

  it('bad history requests get a clear error; an unknown workflow is not_found', async () => {
    const prefix = uniquePrefix();
    const engine = await startEngine(env.server.url, prefix);
    const client = new Client(env.nc, { prefix, timeoutMs: 5_000 });
    const s = topologyNames(prefix).subjects;
    try {
      await expect(client.history('counter', 'nope')).rejects.toMatchObject({ code: 'not_found' });
      await expect(client.history('counter', 'x', { limit: 5000 })).rejects.toMatchObject({
        code: 'bad_request',
      });
      await expect(client.history('counter', 'x', { from: 1 } as never)).rejects.toMatchObject({
        code: 'bad_request',
      });
      const raw = await env.nc.request(
        s.history('counter', 'x'),
        new TextEncoder().encode('{oops'),
      );
      expect(raw.headers?.get('Jf-Error')).toBe('malformed_body');
      // Still serving.
      await client.start('counter', 'c1');
      const r = await client.history('counter', 'c1');
      expect(r.entries.map((e) => e.kind)).toEqual(['step']);
      expect(r.next).toBeNull();
    } finally {
      await engine.close();
    }
  });
});
