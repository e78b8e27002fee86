/**
 * What the server pays to store journal entries: `npm run bench:journal-store`. Publishes the
 * entries of workload 1 (`sequential`: four step entries per workflow, built by the engine's
 * own `stepEntry` shape) into a history-like stream, in the form each candidate writes, with 64
 * publishes in flight, and reads the nats-server's CPU time and the stream's stored bytes. The
 * candidates run alternately, several rounds, on one server, so they see the same machine
 * noise; medians are printed. No engine, no worker: only the journal's share of the server.
 *
 * Candidates: `full` (every field, as entries were first written), `stored` (the stored form,
 * `storedEntry`), `stored-bare` (without the Content-Type header), `+s2` (stream compression
 * `s2`). Also the engine's encode cost per entry
 * (`pack`, and `storedEntry` + `pack`), in-process.
 *
 * Options: --workflows N (per round and candidate, default 5000), --rounds R (default 3).
 */
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, headers } from '@nats-io/transport-node';
import {
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  StoreCompression,
} from '@nats-io/jetstream';
import { NatsServer } from '../test/harness/nats-server.js';
import { pack } from '../src/contracts/codec.js';
import { Header, type JournalEntry } from '../src/contracts/wire.js';
import { journalState, storedEntry } from '../src/engine/journal.js';
import { MSGPACK } from '../src/contracts/codec.js';
import { cpuSampler, round } from './peers/common.js';

const { values } = parseArgs({
  options: {
    workflows: { type: 'string', default: '5000' },
    rounds: { type: 'string', default: '3' },
  },
});
const COUNT = Number(values.workflows);
const ROUNDS = Number(values.rounds);
const INFLIGHT = 64;
const log = (s: string) => process.stderr.write(`[bench:journal-store] ${s}\n`);

/** The four entries of one `sequential` workflow, as `stepEntry` builds them. */
function workflowEntries(id: string, t0: number): JournalEntry[] {
  const out: JournalEntry[] = [];
  const states = ['a', 'b', 'c', 'done'];
  for (let step = 0; step < 4; step++) {
    const at = t0 + step * 70;
    const state = states[step]!;
    const done = state === 'done';
    const actor = done ? undefined : state;
    const taskId = `sequential.${id}.${step}.${actor}`;
    const prev = step > 0 ? states[step - 1]! : undefined;
    out.push({
      v: 1,
      kind: 'step',
      workflowType: 'sequential',
      id,
      version: 1,
      step,
      at,
      engine: 'bench-engine',
      seq: 2049 + step * 65 + Number(id.replace(/\D/g, '')),
      cause: step === 0 ? 'start' : 'result',
      event:
        step === 0
          ? { type: 'xstate.init', payload: { x: 0 } }
          : { type: `xstate.done.actor.${prev}`, payload: { output: step } },
      ...(prev ? { from: journalState(prev) } : {}),
      to: journalState(state),
      status: done ? 'completed' : 'running',
      stateSince: at,
      snapshot: {
        status: done ? 'done' : 'active',
        ...(done ? { output: { x: 3 } } : {}),
        value: state,
        historyValue: {},
        context: { x: step },
        children: actor
          ? {
              [actor]: {
                snapshot: { status: 'active', input: { x: step } },
                src: 'inc',
                syncSnapshot: false,
              },
            }
          : {},
      },
      effects: [
        ...(step === 0 ? [{ kind: 'notify' as const, type: 'started' }] : []),
        ...(actor
          ? [
              {
                kind: 'task' as const,
                actorId: actor,
                taskId,
                activity: 'inc',
                queue: 'inc',
                input: { x: step },
              },
            ]
          : [{ kind: 'notify' as const, type: 'completed' }]),
      ],
      needsReview: false,
      ...(actor
        ? {
            tasks: {
              [actor]: {
                taskId,
                taskKey: `k${String(id).padStart(26, 'x')}`.slice(0, 27),
                activity: 'inc',
                queue: 'inc',
              },
            },
          }
        : {}),
      ...(prev
        ? {
            activity: {
              actorId: prev,
              taskId: `sequential.${id}.${step - 1}.${prev}`,
              activity: 'inc',
              ok: true,
              attempt: 1,
            },
          }
        : {}),
      ...(done ? { output: { x: 3 } } : {}),
      createdAt: t0,
    } as JournalEntry);
  }
  return out;
}

interface Candidate {
  name: string;
  form: (e: JournalEntry) => JournalEntry;
  compression: 'none' | 's2';
  /** Without the `Content-Type` header (the body is msgpack whatever it says). */
  bare?: boolean;
}
const candidates: Candidate[] = [
  { name: 'full', form: (e) => e, compression: 'none' },
  { name: 'stored', form: storedEntry, compression: 'none' },
  { name: 'stored-bare', form: storedEntry, compression: 'none', bare: true },
  { name: 'full+s2', form: (e) => e, compression: 's2' },
  { name: 'stored+s2', form: storedEntry, compression: 's2' },
];

async function main(): Promise<void> {
  const server = await NatsServer.start();
  const nc = await connect({ servers: server.url });
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const rows: {
    round: number;
    name: string;
    serverUsPerEntry: number;
    bytesPerEntry: number;
    diskBytesPerEntry: number;
  }[] = [];
  try {
    for (let r = 1; r <= ROUNDS; r++) {
      const order = r % 2 === 1 ? candidates : [...candidates].reverse();
      for (const c of order) {
        const stream = `JS_${c.name.replace(/\W/g, '_')}_${r}`;
        const subj = `js${r}${c.name.replace(/\W/g, '')}`;
        await jsm.streams.add({
          name: stream,
          subjects: [`${subj}.journal.>`],
          retention: RetentionPolicy.Limits,
          storage: StorageType.File,
          discard: DiscardPolicy.Old,
          duplicate_window: 120_000_000_000,
          allow_direct: true,
          compression: c.compression === 's2' ? StoreCompression.S2 : StoreCompression.None,
        });
        const entries: { subject: string; data: Uint8Array; msgId: string }[] = [];
        for (let i = 0; i < COUNT; i++) {
          const id = `r${r}-on-${i}`;
          for (const e of workflowEntries(id, 1796249552335 + i)) {
            entries.push({
              subject: `${subj}.journal.sequential.${id}`,
              data: pack(c.form(e)),
              msgId: `sequential.${id}.${e.step}.j`,
            });
          }
        }
        const srv = cpuSampler([server.child!.pid!]);
        let next = 0;
        await Promise.all(
          Array.from({ length: INFLIGHT }, async () => {
            while (next < entries.length) {
              const m = entries[next++]!;
              const h = c.bare ? undefined : headers();
              h?.set(Header.ContentType, MSGPACK);
              await js.publish(m.subject, m.data, { msgID: m.msgId, ...(h ? { headers: h } : {}) });
            }
          }),
        );
        const cpu = srv.delta() ?? NaN;
        const info = await jsm.streams.info(stream);
        const msgs = join(server.dir, 'store', 'jetstream', '$G', 'streams', stream, 'msgs');
        const disk = readdirSync(msgs).reduce((n, f) => n + statSync(join(msgs, f)).size, 0);
        const row = {
          round: r,
          name: c.name,
          serverUsPerEntry: round((cpu * 1e6) / entries.length, 1),
          bytesPerEntry: round(info.state.bytes / info.state.messages, 0),
          diskBytesPerEntry: round(disk / info.state.messages, 0),
        };
        rows.push(row);
        log(JSON.stringify(row));
        await jsm.streams.delete(stream);
      }
    }
    // The engine's side: encode cost per entry of each form, in-process.
    const sample = Array.from({ length: 2000 }, (_, i) => workflowEntries(`e-${i}`, 1e12)).flat();
    const time = (f: (e: JournalEntry) => unknown) => {
      for (const e of sample) f(e); // warm
      const t = process.hrtime.bigint();
      for (let k = 0; k < 5; k++) for (const e of sample) f(e);
      return round(Number(process.hrtime.bigint() - t) / 1000 / (5 * sample.length), 2);
    };
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const result = {
      workflowsPerRound: COUNT,
      rounds: ROUNDS,
      candidates: Object.fromEntries(
        candidates.map((c) => [
          c.name,
          {
            serverUsPerEntry: median(
              rows.filter((x) => x.name === c.name).map((x) => x.serverUsPerEntry),
            ),
            bytesPerEntry: median(
              rows.filter((x) => x.name === c.name).map((x) => x.bytesPerEntry),
            ),
            diskBytesPerEntry: median(
              rows.filter((x) => x.name === c.name).map((x) => x.diskBytesPerEntry),
            ),
            msgpackBytes: round(
              sample.reduce((n, e) => n + pack(c.form(e)).length, 0) / sample.length,
              0,
            ),
          },
        ]),
      ),
      engineEncodeUsPerEntry: {
        full: time((e) => pack(e)),
        stored: time((e) => pack(storedEntry(e))),
      },
    };
    console.log(JSON.stringify(result));
  } finally {
    await nc.close();
    await server.stop();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
