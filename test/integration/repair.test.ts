/**
 * Operator verbs against a real nats-server and engine: manual review of exhausted activities
 * (retry, resolve, fail), reset to an earlier step, terminate, and bad input for every verb.
 */
import { describe, expect, it } from 'vitest';
import { headers } from '@nats-io/transport-node';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { runJetflow } from '../harness/cli.js';
import { Client } from '../../src/client/index.js';
import { createWorker } from '../../src/worker/index.js';
import { JetflowError } from '../../src/errors.js';
import { workflows } from '../fixtures/workflows.js';
import type { JournalEntry } from '../../src/contracts/wire.js';

const env = useServer();
const who = { by: 'ops@test', reason: 'bank was down' };

async function until<T>(what: string, f: () => Promise<T | undefined>, ms = 15_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The error a call rejects with (fails the test when it resolves). */
async function errorOf(p: Promise<unknown>): Promise<JetflowError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof JetflowError) return err;
    throw err;
  }
  throw new Error('expected an error reply');
}

type Bank = { down: boolean; gate?: Promise<void>; calls: Record<number, number> };

/** An engine, a worker whose bank is down until told, and a client, in a fresh namespace. */
async function setup(bank: Bank) {
  const prefix = uniquePrefix();
  const engine = await startEngine(env.server.url, prefix, { workflows });
  const worker = await createWorker({
    connection: env.nc,
    prefix,
    activities: {
      sendToBank: async ({ amount }: { amount: number }) => {
        if (bank.down) {
          const e = new Error('bank unreachable');
          e.name = 'BankDown';
          throw e;
        }
        await bank.gate;
        bank.calls[amount] = (bank.calls[amount] ?? 0) + 1;
        return { receipt: `r-${amount}` };
      },
    },
  });
  const client = new Client(env.nc, { prefix });
  return {
    prefix,
    client,
    engine,
    async history(type: string, id: string): Promise<JournalEntry[]> {
      const out: JournalEntry[] = [];
      for await (const e of client.historyAll(type, id)) out.push(e);
      return out;
    },
    async close() {
      await worker.close();
      await engine.close();
    },
  };
}

const steps = (entries: JournalEntry[]) =>
  entries.filter((e): e is Extract<JournalEntry, { kind: 'step' }> => e.kind === 'step');

describe('manual review (onExhausted: review)', () => {
  it('parks exhausted activities; retry, resolve and fail each apply once, a repeated requestId changes nothing', async () => {
    const bank: Bank = { down: true, calls: {} };
    const t = await setup(bank);
    try {
      const { client } = t;
      for (const [id, amount] of [
        ['r1', 1],
        ['r2', 2],
        ['r3', 3],
      ] as const) {
        await client.start('rpayment', id, { amount });
        await client.signal('rpayment', id, { type: 'GO' });
      }
      for (const id of ['r1', 'r2', 'r3']) {
        const q = await until(`${id} parked`, async () => {
          const q = await client.query('rpayment', id);
          return q.needsReview?.length ? q : undefined;
        });
        expect(q.status).toBe('running');
        expect(q.value).toBe('charging');
        expect(q.needsReview).toMatchObject([
          { actorId: 'bank', activity: 'sendToBank', attempts: 2, error: { type: 'BankDown' } },
        ]);
      }
      const parkedEntry = steps(await t.history('rpayment', 'r1')).at(-1)!;
      expect(parkedEntry).toMatchObject({
        cause: 'result',
        event: { type: 'jetflow.review' },
        needsReview: true,
        status: 'running',
        to: { paths: ['charging'] },
        activity: { actorId: 'bank', ok: false, exhausted: true, attempt: 2 },
      });

      bank.down = false; // the bank recovers

      // retry: dispatched again, the bank's result applied once.
      const retried = await client.retry('rpayment', 'r1', 'bank', { ...who, requestId: 'q-r1' });
      expect(retried).toMatchObject({ action: 'retry', changed: { actorId: 'bank', attempts: 2 } });
      await until('r1 confirming', async () =>
        (await client.query('rpayment', 'r1')).value === 'confirming' ? true : undefined,
      );
      const again = await client.retry('rpayment', 'r1', 'bank', { ...who, requestId: 'q-r1' });
      expect(again.duplicate).toBe(true);
      await client.signal('rpayment', 'r1', { type: 'NOTE' });
      expect(await client.result('rpayment', 'r1')).toEqual({
        receipt: { receipt: 'r-1' },
        error: null,
        notes: 1,
      });
      expect(bank.calls[1]).toBe(1);

      // resolve: the operator's output, no bank call.
      const resolved = await client.resolve(
        'rpayment',
        'r2',
        'bank',
        { manual: 'wire 77' },
        {
          ...who,
          requestId: 'q-r2',
        },
      );
      expect(resolved).toMatchObject({ action: 'resolve', value: 'confirming' });
      const step2 = (await client.query('rpayment', 'r2')).step;
      const dup2 = await client.resolve(
        'rpayment',
        'r2',
        'bank',
        { other: 1 },
        {
          ...who,
          requestId: 'q-r2',
        },
      );
      expect(dup2.duplicate).toBe(true);
      expect((await client.query('rpayment', 'r2')).step).toBe(step2);
      await client.signal('rpayment', 'r2', { type: 'NOTE' });
      expect(await client.result('rpayment', 'r2')).toEqual({
        receipt: { manual: 'wire 77' },
        error: null,
        notes: 1,
      });
      expect(bank.calls[2]).toBeUndefined();

      // fail: the machine's error path, with the parked error.
      const failed = await client.fail('rpayment', 'r3', 'bank', { ...who, requestId: 'q-r3' });
      expect(failed).toMatchObject({ action: 'fail', value: 'failed', status: 'failed' });
      const q3 = await client.query('rpayment', 'r3');
      const dup3 = await client.fail('rpayment', 'r3', 'bank', { ...who, requestId: 'q-r3' });
      expect(dup3.duplicate).toBe(true);
      expect((await client.query('rpayment', 'r3')).step).toBe(q3.step);
      expect(q3.error).toMatchObject({ type: 'BankDown', message: 'bank unreachable' });
      expect(bank.calls[3]).toBeUndefined();

      // The journal: contiguous steps, the operator actions with who, why and the request id.
      for (const id of ['r1', 'r2', 'r3']) {
        const s = steps(await t.history('rpayment', id));
        expect(s.map((e) => e.step)).toEqual(s.map((_, i) => i));
        const ops = s.filter((e) => e.cause === 'operator');
        expect(ops).toHaveLength(1);
        expect(ops[0]!.operator).toMatchObject({ by: 'ops@test', reason: 'bank was down' });
        expect(ops[0]!.operator!.requestId).toBe(`q-${id}`);
        expect(s.at(-1)!.needsReview).toBe(false);
      }
      const r1 = steps(await t.history('rpayment', 'r1'));
      const tasks = r1.flatMap((e) => e.effects.filter((x) => x.kind === 'task'));
      expect(tasks).toHaveLength(2); // the first dispatch and the retry, with distinct ids
      expect(new Set(tasks.map((x) => (x as { taskId: string }).taskId)).size).toBe(2);
    } finally {
      await t.close();
    }
  });
});

describe('reset', () => {
  it('a failed workflow reset to the step before its failing activity completes on the second run; a signal during the reset counts once', async () => {
    let open!: () => void;
    const bank: Bank = { down: true, calls: {} };
    const t = await setup(bank);
    try {
      const { client } = t;
      await client.start('fpayment', 'f1', { amount: 10 });
      await client.signal('fpayment', 'f1', { type: 'GO' });
      // The failure path ends in a final state tagged `failed`: the workflow's status is failed.
      await expect(client.result('fpayment', 'f1')).rejects.toMatchObject({
        name: 'WorkflowFailedError',
        details: { type: 'BankDown' },
      });
      const run1 = steps(await t.history('fpayment', 'f1'));
      const before = run1.find((e) => e.to.paths.includes('charging'))!;
      expect(before.step).toBe(1);
      const failedAt = run1.at(-1)!.step;

      bank.down = false;
      bank.gate = new Promise<void>((r) => (open = r)); // the second run's call waits
      const reset = await client.reset('fpayment', 'f1', before.step, { ...who, requestId: 'rs1' });
      expect(reset).toMatchObject({
        action: 'reset',
        status: 'running',
        value: 'charging',
        step: failedAt + 1,
        changed: { toStep: 1, from: { status: 'failed', value: 'failed' } },
      });
      expect((reset.changed.dispatched as string[]).length).toBe(1);
      // During the second run: a signal sent twice with one msg id, and the reset repeated.
      const n1 = await client.signal('fpayment', 'f1', { type: 'NOTE' }, { msgId: 'note-1' });
      const n2 = await client.signal('fpayment', 'f1', { type: 'NOTE' }, { msgId: 'note-1' });
      expect(n1.duplicate).toBeUndefined();
      expect(n2.duplicate).toBe(true);
      expect(
        (await client.reset('fpayment', 'f1', before.step, { ...who, requestId: 'rs1' })).duplicate,
      ).toBe(true);
      open();
      expect(await client.result('fpayment', 'f1')).toEqual({
        receipt: { receipt: 'r-10' },
        error: null,
        notes: 1,
      });
      expect(bank.calls[10]).toBe(1);

      const all = steps(await t.history('fpayment', 'f1'));
      expect(all.map((e) => e.step)).toEqual(all.map((_, i) => i));
      const op = all.find((e) => e.cause === 'operator')!;
      expect(op).toMatchObject({
        step: failedAt + 1,
        event: { type: 'jetflow.reset', payload: { toStep: 1 } },
        from: { paths: ['failed'] },
        to: { paths: ['charging'] },
        status: 'running',
        operator: { action: 'reset', requestId: 'rs1', params: { toStep: 1 } },
      });
      // Both runs are in the journal, with different task ids for the bank call.
      const tasks = all.flatMap((e) =>
        e.effects.flatMap((x) => (x.kind === 'task' ? [x.taskId] : [])),
      );
      expect(tasks).toHaveLength(2);
      expect(tasks[0]).not.toBe(tasks[1]);
      expect(all.filter((e) => e.status === 'failed').map((e) => e.to.paths)).toEqual([['failed']]);
      expect(all.filter((e) => e.status === 'completed').map((e) => e.to.paths)).toEqual([
        ['paid'],
      ]);

      // A completed workflow can be reset too: its context is the step's again (notes 0).
      const again = await client.reset('fpayment', 'f1', 1, who);
      expect(again).toMatchObject({ status: 'running', value: 'charging' });
      await until('second completion awaits a note', async () =>
        (await client.query('fpayment', 'f1')).value === 'confirming' ? true : undefined,
      );
      await client.signal('fpayment', 'f1', { type: 'NOTE' }, { msgId: 'note-2' });
      expect(await client.result('fpayment', 'f1')).toMatchObject({ notes: 1 });
      expect(bank.calls[10]).toBe(2);
      // Following the journal from the start goes past the ends that resets undid.
      const followed: number[] = [];
      for await (const e of client.follow('fpayment', 'f1'))
        if (e.kind === 'step') followed.push(e.step);
      const last = (await client.query('fpayment', 'f1')).step;
      expect(followed).toEqual(Array.from({ length: last + 1 }, (_, i) => i));
      // After a step: the latest entry journaled before the call when it is after that step (the
      // console's page follows from the step it has shown: a move in between is not lost).
      const after: number[] = [];
      for await (const e of client.follow('fpayment', 'f1', { afterStep: last - 1 }))
        if (e.kind === 'step') after.push(e.step);
      expect(after).toEqual([last]);
    } finally {
      await t.close();
    }
  });
});

describe('terminate', () => {
  it('cancels a running workflow with its pending activity, journaled as an operator action', async () => {
    const bank: Bank = { down: false, gate: new Promise(() => undefined), calls: {} };
    const t = await setup(bank);
    try {
      const { client } = t;
      await client.start('fpayment', 'x1', { amount: 5 });
      await client.signal('fpayment', 'x1', { type: 'GO' });
      const r = await client.terminate('fpayment', 'x1', { ...who, requestId: 't1' });
      expect(r).toMatchObject({
        action: 'terminate',
        status: 'canceled',
        changed: { stopped: ['bank'] },
      });
      expect(
        (await client.terminate('fpayment', 'x1', { ...who, requestId: 't1' })).duplicate,
      ).toBe(true);
      expect((await client.query('fpayment', 'x1')).status).toBe('canceled');
      const last = steps(await t.history('fpayment', 'x1')).at(-1)!;
      expect(last).toMatchObject({
        cause: 'operator',
        status: 'canceled',
        operator: { action: 'terminate', by: 'ops@test' },
      });
      expect(last.effects.map((e) => e.kind)).toContain('stopTask');
    } finally {
      await t.close();
    }
  });
});

describe('bad input', () => {
  it('every verb: a clear error with Jf-Error, and nothing changes', async () => {
    const bank: Bank = { down: false, gate: new Promise(() => undefined), calls: {} };
    const t = await setup(bank);
    try {
      const { client, prefix } = t;
      await client.start('rpayment', 'b1', { amount: 1 });
      await client.signal('rpayment', 'b1', { type: 'GO' }); // the bank call runs (never ends)
      const q0 = await client.query('rpayment', 'b1');

      // Unknown workflow, unknown type, unknown verb.
      for (const verb of ['pause', 'resume', 'terminate'] as const) {
        expect((await errorOf(client.admin(verb, 'rpayment', 'nope', who))).code).toBe('not_found');
      }
      expect((await errorOf(client.retry('rpayment', 'nope', 'bank', who))).code).toBe('not_found');
      expect((await errorOf(client.resolve('rpayment', 'nope', 'bank', 1, who))).code).toBe(
        'not_found',
      );
      expect((await errorOf(client.fail('rpayment', 'nope', 'bank', who))).code).toBe('not_found');
      expect((await errorOf(client.reset('rpayment', 'nope', 0, who))).code).toBe('not_found');
      expect((await errorOf(client.pause('nosuchtype', 'b1', who))).code).toBe('unknown_type');
      const raw = async (subject: string, body: string) => {
        const h = headers();
        h.set('Content-Type', 'application/json');
        const m = await env.nc.request(subject, new TextEncoder().encode(body), {
          timeout: 5_000,
          headers: h,
        });
        return {
          code: m.headers?.get('Jf-Error'),
          error: (JSON.parse(new TextDecoder().decode(m.data)) as { error: { message: string } })
            .error,
        };
      };
      const verbErr = await raw(`${prefix}.admin.explode.rpayment.b1`, JSON.stringify(who));
      expect(verbErr.code).toBe('bad_request');
      expect(verbErr.error.message).toMatch(/unknown admin verb "explode"/);

      // Malformed body, missing fields, unknown field, wrong types: each verb.
      for (const verb of ['pause', 'resume', 'retry', 'resolve', 'fail', 'reset', 'terminate']) {
        const subject = `${prefix}.admin.${verb}.rpayment.b1`;
        expect((await raw(subject, '{not json')).code).toBe('malformed_body');
        expect((await raw(subject, '[]')).code).toBe('bad_request');
        const noReason = await raw(subject, JSON.stringify({ by: 'x' }));
        expect(noReason.code).toBe('bad_request');
        expect(noReason.error.message).toMatch(/reason/);
        const unknown = await raw(subject, JSON.stringify({ ...who, bogus: 1 }));
        expect(unknown.code).toBe('bad_request');
        expect(unknown.error.message).toMatch(/unknown field "bogus"/);
      }
      const noActor = await raw(`${prefix}.admin.retry.rpayment.b1`, JSON.stringify(who));
      expect(noActor.error.message).toMatch(/actorId/);
      const noOutput = await raw(
        `${prefix}.admin.resolve.rpayment.b1`,
        JSON.stringify({ ...who, actorId: 'bank' }),
      );
      expect(noOutput.error.message).toMatch(/output/);
      expect(
        (
          await raw(
            `${prefix}.admin.retry.rpayment.b1`,
            JSON.stringify({ ...who, actorId: 'bank', attempts: 0 }),
          )
        ).error.message,
      ).toMatch(/attempts/);
      expect(
        (await raw(`${prefix}.admin.reset.rpayment.b1`, JSON.stringify({ ...who, toStep: -1 })))
          .error.message,
      ).toMatch(/toStep/);

      // Unknown actor id; an activity that runs, not parked.
      const unknownActor = await errorOf(client.retry('rpayment', 'b1', 'ghost', who));
      expect(unknownActor.code).toBe('not_parked');
      expect(unknownActor.message).toMatch(/no activity "ghost"/);
      for (const p of [
        client.retry('rpayment', 'b1', 'bank', who),
        client.resolve('rpayment', 'b1', 'bank', 1, who),
        client.fail('rpayment', 'b1', 'bank', who),
      ]) {
        const e = await errorOf(p);
        expect(e.code).toBe('not_parked');
        expect(e.message).toMatch(/running, not parked/);
      }
      // toStep out of range: the current step and beyond.
      for (const toStep of [q0.step, q0.step + 5]) {
        expect((await errorOf(client.reset('rpayment', 'b1', toStep, who))).code).toBe(
          'step_out_of_range',
        );
      }
      // Verbs that need a running workflow, while paused: refused until resumed.
      await client.pause('rpayment', 'b1', who);
      expect((await errorOf(client.reset('rpayment', 'b1', 0, who))).code).toBe('paused');
      expect((await errorOf(client.retry('rpayment', 'b1', 'bank', who))).code).toBe('paused');
      await client.resume('rpayment', 'b1', who);

      // Nothing changed by any refused request: the step moved only by pause and resume.
      const q1 = await client.query('rpayment', 'b1');
      expect(q1.step).toBe(q0.step + 2);
      expect(q1.value).toBe(q0.value);
      expect(q1.context).toEqual(q0.context);
      const s = steps(await t.history('rpayment', 'b1'));
      expect(s.filter((e) => e.cause === 'operator').map((e) => e.operator!.action)).toEqual([
        'pause',
        'resume',
      ]);
      // A finished workflow: terminate and pause refused.
      await client.terminate('rpayment', 'b1', who);
      expect((await errorOf(client.pause('rpayment', 'b1', who))).code).toBe('already_finished');
      expect((await errorOf(client.terminate('rpayment', 'b1', who))).code).toBe(
        'already_finished',
      );
    } finally {
      await t.close();
    }
  });
});

describe('CLI', () => {
  it('the operator verbs print what changed, take --json, and use the exit codes', async () => {
    const bank: Bank = { down: true, calls: {} };
    const t = await setup(bank);
    const cli = (...args: string[]) =>
      runJetflow([...args, '--nats-url', env.server.url, '--prefix', t.prefix]);
    try {
      await t.client.start('rpayment', 'c1', { amount: 7 });
      await t.client.signal('rpayment', 'c1', { type: 'GO' });
      await until('c1 parked', async () =>
        (await t.client.query('rpayment', 'c1')).needsReview ? true : undefined,
      );
      const q = await cli('query', 'rpayment', 'c1');
      expect(q.stdout).toMatch(/review\s+bank \(sendToBank, 2 attempts\): bank unreachable/);
      bank.down = false;
      const common = ['--reason', 'bank back', '--by', 'cli@test'];
      const r = await cli(
        'retry',
        'rpayment',
        'c1',
        '--actor-id',
        'bank',
        '--attempts',
        '3',
        ...common,
        '--request-id',
        'c-1',
        '--json',
      );
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({
        action: 'retry',
        changed: { actorId: 'bank', attempts: 3 },
      });
      const dup = await cli(
        'retry',
        'rpayment',
        'c1',
        '--actor-id',
        'bank',
        ...common,
        '--request-id',
        'c-1',
      );
      expect(dup.code).toBe(0);
      expect(dup.stdout).toMatch(/duplicate/);
      expect((await cli('pause', 'rpayment', 'c1', '--by', 'x')).code).toBe(2); // no --reason
      expect((await cli('resolve', 'rpayment', 'c1', ...common)).code).toBe(2); // no --actor-id
      expect((await cli('pause', 'rpayment', 'nope', ...common)).code).toBe(3);
      expect((await cli('reset', 'rpayment', 'c1', '--to-step', '99', ...common)).code).toBe(4);
      const paused = await cli('pause', 'rpayment', 'c1', ...common);
      expect(paused.code).toBe(0);
      expect(paused.stdout).toMatch(/paused\s+yes/);
      expect((await cli('resume', 'rpayment', 'c1', ...common)).code).toBe(0);
      await until('c1 confirming', async () =>
        (await t.client.query('rpayment', 'c1')).value === 'confirming' ? true : undefined,
      );
      expect(bank.calls[7]).toBe(1);
    } finally {
      await t.close();
    }
  });
});
