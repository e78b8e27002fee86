/* global process, console */
// `jetflow verify` throughput (`npm run bench:verify`), from the build as the CLI runs it:
// journals WORKFLOWS merchantPayment runs in memory through the engine's pure step (entries
// built as the engine builds them, no server), then re-runs every step with the same
// definition through `Verifier` (what `jetflow verify` does per entry it reads) and reports
// steps/s by wall clock and by this process's CPU time (best of ROUNDS). Reading the journal
// from a server is not timed here: `jetflow verify` prints both figures for a real journal.
import { performance } from 'node:perf_hooks';
import { createRegistry } from '../dist/src/engine/registry.js';
import { decide } from '../dist/src/engine/step.js';
import { stepEntry } from '../dist/src/engine/journal.js';
import { Verifier, verifyContext } from '../dist/src/engine/verify.js';
import { merchantPayment } from '../dist/actors/merchant-payment.js';

const WORKFLOWS = Number(process.env.WORKFLOWS ?? 5_000);
const ROUNDS = Number(process.env.ROUNDS ?? 5);

function record() {
  const ctx = verifyContext(createRegistry([merchantPayment]));
  const out = [];
  for (let w = 0; w < WORKFLOWS; w++) {
    const id = `m-${w}`;
    let rec;
    let message = { kind: 'start', input: { merchantId: id } };
    let now = 1_700_000_000_000 + w;
    for (let seq = 1; ; seq++) {
      const d = decide(ctx, rec, { type: 'merchantPayment', id, shard: 0, seq, message, now });
      if (d.kind !== 'write') throw new Error(`${id}: ${d.kind}`);
      rec = d.record;
      out.push(
        stepEntry(
          rec,
          rec.outbox.find((e) => e.kind === 'journal'),
          'bench',
        ),
      );
      const [actorId, t] = Object.entries(rec.tasks)[0] ?? [];
      if (rec.status !== 'running' || !actorId) break;
      const output =
        t.activity === 'getSoldVouchers'
          ? Array.from({ length: w % 6 }, (_, k) => ({ id: `v${k}`, price: k + 1 }))
          : t.activity === 'calculatePayment'
            ? w % 50
            : `ref-${w}`;
      message = { kind: 'result', taskId: t.taskId, actorId, ok: true, output, attempt: 1 };
      now += 10;
    }
  }
  return out;
}

const entries = record();
let best = { wall: 0, cpu: 0 };
for (let r = 0; r < ROUNDS; r++) {
  const v = new Verifier([merchantPayment]);
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (const e of entries) v.add(e);
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const s = v.summary();
  if (s.divergedSteps !== 0 || s.identical !== entries.length) throw new Error('diverged');
  const wall = Math.round(s.steps / (ms / 1000));
  const cpu = Math.round(s.steps / ((c.user + c.system) / 1e6));
  best = { wall: Math.max(best.wall, wall), cpu: Math.max(best.cpu, cpu) };
  console.log(
    `round ${r + 1}: ${s.steps} steps of ${s.workflows} workflows in ${ms.toFixed(0)} ms: ${wall} steps/s (${cpu} per CPU second)`,
  );
}
console.log(
  `verify: ${best.wall} steps/s wall, ${best.cpu} steps/s per CPU second (best of ${ROUNDS})`,
);
