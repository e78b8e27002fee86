/**
 * Rolling upgrade and rollback: an engine that does not know a workflow's `type@version` leaves
 * its messages for an engine that does, instead of rejecting and acking them (core review H5,
 * experiment E14).
 */
import { describe, expect, it } from 'vitest';
import { setup } from 'xstate';
import { startEngine, uniquePrefix, useServer } from '../harness/jetflow.js';
import { Client } from '../../src/client/index.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { counter, versionedV1, versionedV2 } from '../fixtures/workflows.js';

const env = useServer();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const vt = (version: number) =>
  defineWorkflow({
    type: 'vt',
    version,
    machine: setup({}).createMachine({
      id: `vt${version}`,
      initial: 'waiting',
      states: { waiting: { after: { 1500: 'done' } }, done: { type: 'final' } },
      output: () => ({ version }),
    }),
  });

describe('rolling upgrade', () => {
  it('H5: an engine without the version neither rejects nor acks a timer or signal of it; the engine that has it applies them', async () => {
    const prefix = uniquePrefix();
    const client = new Client(env.nc, { prefix });
    const newer = await startEngine(env.server.url, prefix, {
      workflows: [counter, vt(1), vt(2), versionedV1, versionedV2],
    });
    expect((await client.start('vt', 'u1')).version).toBe(2);
    expect((await client.start('versioned', 'u2')).version).toBe(2);
    await newer.close(); // rollback, crash, or the shards move to an old engine
    const older = await startEngine(env.server.url, prefix, {
      workflows: [counter, vt(1), versionedV1],
    });
    env.nc.publish(`${prefix}.signal.versioned.u2`, '{"type":"GO"}');
    await sleep(2_500); // the timer fires into the inbox and the old engine gets it
    const seen = { ...older.processor.stats };
    await older.close();
    expect(seen.rejected).toBe(0);
    expect(seen.ignored).toBe(0);
    expect(seen.deferred).toBeGreaterThanOrEqual(2);
    const again = await startEngine(env.server.url, prefix, {
      workflows: [counter, vt(1), vt(2), versionedV1, versionedV2],
    });
    try {
      expect(await client.result('vt', 'u1', { timeoutMs: 15_000 })).toEqual({ version: 2 });
      expect(await client.result('versioned', 'u2', { timeoutMs: 15_000 })).toEqual({
        finishedOn: 2,
      });
    } finally {
      await again.close();
    }
  });
});
