/**
 * Triggers under faults at the acceptance size (`npm run soak:triggers`, not in test:fast or
 * test:chaos): a user stream of 10,000 order messages, 500 of them repeating an earlier order id
 * under a new Nats-Msg-Id, the trigger's holder SIGKILLed twice, then `rewind --to-seq 1`:
 * exactly 9,500 workflows, each started once and its activity's side effect recorded once, and
 * the rewind reports 0 new. A signal trigger with 1,000 keys x 10 ordered messages, interleaved,
 * with a holder SIGKILLed, a nats-server restart and a rewind after the dedup window: every
 * workflow saw its 10 events in stream order, none twice. TRIG_MESSAGES, TRIG_KEYS override.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { useServer } from '../harness/jetflow.js';
import { runSignalScenario, runStartScenario, type ScenarioEnv } from './triggers-scenario.js';

const env = useServer();
const closers: (() => Promise<unknown>)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c().catch(() => undefined);
});
const scenario = (): ScenarioEnv => ({
  server: env.server,
  nc: env.nc,
  closers,
  log: (l) => console.log(l),
});
const MESSAGES = Number(process.env.TRIG_MESSAGES ?? 10_000);
const KEYS = Number(process.env.TRIG_KEYS ?? 1_000);

describe('triggers: full size', () => {
  it(
    `start trigger: ${MESSAGES} messages, ${MESSAGES / 20} repeated ids, holder SIGKILLed twice, rewind`,
    { timeout: 1_800_000 },
    async () => {
      const out = await runStartScenario(scenario(), {
        messages: MESSAGES,
        repeats: MESSAGES / 20,
        kills: 2,
      });
      console.log('start trigger:', JSON.stringify(out));
      expect(out.kills).toBe(2);
      expect(out.distinct).toBe(MESSAGES - MESSAGES / 20);
      expect({ started: out.started, twice: out.startedTwice }).toEqual({
        started: out.distinct,
        twice: 0,
      });
      expect({ effects: out.effects, twice: out.effectsTwice }).toEqual({
        effects: out.distinct,
        twice: 0,
      });
      expect(out.rewind).toMatchObject({
        fromSeq: 1,
        toSeq: MESSAGES,
        reread: MESSAGES,
        new: 0,
        done: true,
      });
      expect({ started: out.startedAfter, twice: out.startedTwiceAfter }).toEqual({
        started: out.distinct,
        twice: 0,
      });
    },
  );

  it(
    `signal trigger: ${KEYS} keys x 10 ordered messages, holder SIGKILLed, server restarted, rewind after the dedup window`,
    { timeout: 1_800_000 },
    async () => {
      const out = await runSignalScenario(scenario(), { keys: KEYS, perKey: 10 });
      console.log(
        'signal trigger:',
        JSON.stringify({ ...out, wrong: out.wrong.length, wrongAfter: out.wrongAfter.length }),
      );
      expect(out.dedupWindowNs).toBe(1_000_000_000);
      expect(out.wrong).toEqual([]);
      expect(out.rewind).toMatchObject({
        fromSeq: 1,
        toSeq: KEYS * 10,
        reread: KEYS * 10,
        new: 0,
        done: true,
      });
      expect(out.wrongAfter).toEqual([]);
    },
  );
});
