/**
 * Decode cost of the wire messages on the hot path: `npm run bench:wire`. Per message kind, the
 * time to turn a msgpack body into a checked message as the engine (`decodeInbox`, the public
 * `parseRequest`) and the worker (`decodeTask`) do it, in ns per message (median of rounds).
 * No NATS: the bodies are built in memory.
 *
 * `--baseline <dir>`: a checkout of another version (its `src/`); its decoders run in the same
 * process, rounds interleaved with this one's, so both see the same machine noise. A baseline
 * from before `src/contracts/schemas.ts` has no `decodeTask`: its task decode is the worker's
 * check of that time (unpack, then `taskId`, `resultSubject` and `taskKey` tested by hand).
 * Options: --n (per round, default 200000), --rounds (default 7).
 */
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { createMachine } from 'xstate';
import { pack } from '../src/contracts/codec.js';
import { createRegistry, defineWorkflow } from '../src/engine/registry.js';
import type { InboxEntry } from '../src/engine/ports.js';
import type { TaskMessage } from '../src/contracts/wire.js';
import type * as Processor from '../src/engine/processor.js';
import type * as Gateway from '../src/engine/gateway.js';
import type * as Schemas from '../src/contracts/schemas.js';
import type * as Codec from '../src/contracts/codec.js';

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '200000' },
    rounds: { type: 'string', default: '7' },
    baseline: { type: 'string' },
  },
});
const N = Number(values.n);
const ROUNDS = Number(values.rounds);

interface Decoders {
  decodeInbox: typeof Processor.decodeInbox;
  parseRequest: typeof Gateway.parseRequest;
  decodeTask: typeof Schemas.decodeTask;
}
async function load(root: string): Promise<Decoders> {
  const at = (p: string) => resolve(root, p);
  const [{ decodeInbox }, { parseRequest }, schemas, { unpack }] = await Promise.all([
    import(at('src/engine/processor.ts')) as Promise<typeof Processor>,
    import(at('src/engine/gateway.ts')) as Promise<typeof Gateway>,
    (import(at('src/contracts/schemas.ts')) as Promise<typeof Schemas>).catch(() => undefined),
    import(at('src/contracts/codec.ts')) as Promise<typeof Codec>,
  ]);
  const byHand = (data: Uint8Array): TaskMessage => {
    const task = unpack(data) as TaskMessage;
    if (
      !task ||
      typeof task.taskId !== 'string' ||
      typeof task.resultSubject !== 'string' ||
      typeof task.taskKey !== 'string' ||
      !/^[A-Za-z0-9_-]+$/.test(task.taskKey)
    )
      throw new Error('not a task');
    return task;
  };
  return { decodeInbox, parseRequest, decodeTask: schemas?.decodeTask ?? byHand };
}
const versions: [string, Decoders][] = [['this', await load(resolve(import.meta.dirname, '..'))]];
if (values.baseline) versions.push(['baseline', await load(resolve(values.baseline))]);

const registry = createRegistry([
  defineWorkflow({ type: 'order', version: 1, machine: createMachine({ id: 'order' }) }),
]);
const entry = (kind: InboxEntry['kind'], body: unknown): InboxEntry => ({
  seq: 1,
  shard: 0,
  kind,
  type: 'order',
  id: 'o-123',
  data: pack(body),
  replyTo: undefined,
  replyEncoding: 'json',
});
const task: TaskMessage = {
  v: 1,
  taskId: 'order.o-123.4.charge',
  taskKey: 'Zk3f9a0b1c2d3e4f5a6b7c8d',
  workflowType: 'order',
  workflowId: 'o-123',
  actorId: 'charge',
  activity: 'charge',
  queue: 'default',
  input: { orderId: 'o-123', total: 42, lines: [{ sku: 'a', qty: 1 }] },
  maxAttempts: 3,
  retry: {
    initialIntervalMs: 1000,
    backoffCoefficient: 2,
    maxIntervalMs: 60000,
    jitter: 0.1,
    nonRetryableErrorTypes: [],
  },
  startToCloseMs: 30000,
  resultSubject: 'wf.inbox.result.order.o-123',
  scheduledAt: 1764700000000,
};
const taskBytes = pack(task);
const casesOf = ({
  decodeInbox,
  parseRequest,
  decodeTask,
}: Decoders): [string, () => unknown][] => [
  [
    'inbox start',
    (
      (e) => () =>
        decodeInbox(e)
    )(entry('start', { kind: 'start', input: { orderId: 'o-123', total: 42 } })),
  ],
  [
    'inbox signal',
    (
      (e) => () =>
        decodeInbox(e)
    )(entry('signal', { kind: 'signal', event: { type: 'PAY', amount: 42 }, msgId: 'm-1' })),
  ],
  [
    'inbox result',
    (
      (e) => () =>
        decodeInbox(e)
    )(
      entry('result', {
        taskId: task.taskId,
        actorId: 'charge',
        ok: true,
        output: { charged: 42 },
        attempt: 1,
      }),
    ),
  ],
  [
    'inbox timer',
    (
      (e) => () =>
        decodeInbox(e)
    )(entry('timer', { timerId: 't', step: 3, event: { type: 'T' } })),
  ],
  [
    'public signal',
    (
      (data) => () =>
        parseRequest(
          {
            verb: 'signal',
            type: 'order',
            id: 'o-123',
            data,
            encoding: 'json',
            subject: 'wf.signal.order.o-123',
          },
          registry,
          1 << 20,
        )
    )(new TextEncoder().encode(JSON.stringify({ type: 'PAY', amount: 42 }))),
  ],
  ['task', () => decodeTask(taskBytes)],
];

const sets = versions.map(([v, d]) => [v, casesOf(d)] as const);
const per = new Map<string, number[]>();
for (const [, cases] of sets) for (const [, f] of cases) for (let i = 0; i < 20_000; i++) f(); // warm-up
for (let r = 0; r < ROUNDS; r++) {
  for (const [v, cases] of r % 2 === 0 ? sets : [...sets].reverse()) {
    for (const [name, f] of cases) {
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < N; i++) f();
      const k = `${v}|${name}`;
      per.set(k, [...(per.get(k) ?? []), Number(process.hrtime.bigint() - t0) / N]);
    }
  }
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
const out: Record<string, Record<string, number>> = {};
for (const [k, xs] of per) {
  const [v, name] = k.split('|') as [string, string];
  (out[name] ??= {})[`${v}Ns`] = Math.round(median(xs));
}
if (values.baseline)
  for (const o of Object.values(out)) o.ratio = Math.round((100 * o.thisNs!) / o.baselineNs!) / 100;
console.log(JSON.stringify({ n: N, rounds: ROUNDS, nsPerMessage: out }, null, 2));
