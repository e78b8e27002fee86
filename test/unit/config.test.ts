import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { compileEngineConfig } from '../../src/config.js';
import { topology } from '../../src/nats/topology.js';
import { engineOptions } from '../../src/cli/main.js';
import { ConfigError } from '../../src/errors.js';
import { createSubjects, shardMapping } from '../../src/contracts/subjects.js';
import { createRegistry, defineWorkflow } from '../../src/engine/registry.js';
import { counter } from '../fixtures/workflows.js';

describe('engine config', () => {
  it('applies defaults and freezes without touching the input', () => {
    const raw = { servers: 'nats://a:1, nats://b:2', shards: 8 };
    const cfg = compileEngineConfig(raw);
    expect(cfg.servers).toEqual(['nats://a:1', 'nats://b:2']);
    expect(cfg.shardIds).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(cfg.prefix).toBe('wf');
    expect(Object.isFrozen(cfg)).toBe(true);
    expect(raw).toEqual({ servers: 'nats://a:1, nats://b:2', shards: 8 });
  });

  it('bounds storage and memory by default (M8)', () => {
    const cfg = compileEngineConfig();
    expect(cfg.finishedRetentionMs).toBe(7 * 24 * 3600_000);
    expect(cfg.eventsMaxBytes).toBe(256 * 1024 * 1024);
    expect(cfg.cacheMaxBytes).toBe(256 * 1024 * 1024);
    expect(cfg.gatewayMaxInFlight).toBe(64);
    expect(compileEngineConfig({ finishedRetentionMs: 0 }).finishedRetentionMs).toBe(0);
    expect(cfg.attemptRetentionMs).toBe(7 * 24 * 3600_000);
  });

  it('reads attemptRetentionMs from a flag and the environment', () => {
    expect(engineOptions({ 'attempt-retention-ms': '3600000' }, {})).toMatchObject({
      attemptRetentionMs: 3_600_000,
    });
    const env = engineOptions({}, { JETFLOW_ATTEMPT_RETENTION_MS: '86400000' });
    expect(compileEngineConfig(env).attemptRetentionMs).toBe(86_400_000);
  });

  it('journalCompression: none by default, s2 from a flag or the environment, else refused', () => {
    expect(compileEngineConfig().journalCompression).toBe('none');
    const flag = engineOptions({ 'journal-compression': 's2' }, {});
    expect(compileEngineConfig(flag).journalCompression).toBe('s2');
    const env = engineOptions({}, { JETFLOW_JOURNAL_COMPRESSION: 's2' });
    expect(compileEngineConfig(env).journalCompression).toBe('s2');
    const s2 = topology({ ...compileEngineConfig(flag) }).streams.find((x) =>
      x.name?.endsWith('_HISTORY'),
    );
    expect(s2?.compression).toBe('s2');
    const none = topology({ ...compileEngineConfig() }).streams.find((x) =>
      x.name?.endsWith('_HISTORY'),
    );
    expect(none?.compression).toBe('none');
    expect(() => compileEngineConfig({ journalCompression: 'zstd' as 's2' })).toThrow(
      /journalCompression: must be none or s2/,
    );
  });

  it('reads the M8 options from flags, env and file', () => {
    const flags = engineOptions(
      {
        'finished-retention-ms': '2000',
        'events-max-bytes': '1048576',
        'cache-max-bytes': '65536',
        'gateway-max-in-flight': '8',
      },
      {},
    );
    expect(flags).toMatchObject({
      finishedRetentionMs: 2000,
      eventsMaxBytes: 1048576,
      cacheMaxBytes: 65536,
      gatewayMaxInFlight: 8,
    });
    const env = engineOptions(
      {},
      {
        JETFLOW_FINISHED_RETENTION_MS: '0',
        JETFLOW_EVENTS_MAX_BYTES: '2097152',
        JETFLOW_CACHE_MAX_BYTES: '131072',
        JETFLOW_GATEWAY_MAX_IN_FLIGHT: '16',
      },
    );
    expect(compileEngineConfig(env)).toMatchObject({
      finishedRetentionMs: 0,
      eventsMaxBytes: 2097152,
      cacheMaxBytes: 131072,
      gatewayMaxInFlight: 16,
    });
  });

  it('parses shard id ranges', () => {
    expect(compileEngineConfig({ shards: 16, shardIds: '0-2,7,7' }).shardIds).toEqual([0, 1, 2, 7]);
  });

  it.each([
    [{ shards: 0 }, /invalid shards/],
    [{ shards: 4, shardIds: '9' }, /invalid shardIds/],
    [{ prefix: 'a.b' }, /invalid prefix/],
    [{ ackWaitMs: 5 }, /invalid ackWaitMs/],
    [{ logLevel: 'loud' as never }, /invalid logLevel/],
    [{ servers: '' }, /invalid servers/],
    [{ finishedRetentionMs: 500 }, /invalid finishedRetentionMs: must be 0 \(keep forever\)/],
    [{ finishedRetentionMs: -1 }, /invalid finishedRetentionMs/],
    [{ eventsMaxBytes: 10 }, /invalid eventsMaxBytes/],
    [{ cacheMaxBytes: 0 }, /invalid cacheMaxBytes/],
    [{ gatewayMaxInFlight: 0 }, /invalid gatewayMaxInFlight/],
    [{ attemptRetentionMs: 60_000 }, /invalid attemptRetentionMs: must be an integer in 120000/],
    [
      { duplicateWindowMs: 10_000, attemptRetentionMs: 5_000 },
      /invalid attemptRetentionMs: must be an integer in 10000/,
    ],
  ])('rejects %o', (opts, msg) => {
    expect(() => compileEngineConfig(opts)).toThrow(ConfigError);
    expect(() => compileEngineConfig(opts)).toThrow(msg);
  });
});

describe('files that must agree with the code', () => {
  it("nats.conf carries exactly shardMapping(16), the engine's default shard count", () => {
    const conf = readFileSync(resolve(import.meta.dirname, '../../nats.conf'), 'utf8');
    const [[from, to]] = Object.entries(shardMapping(compileEngineConfig().shards)) as [
      [string, string],
    ];
    expect(conf).toContain(`"${from}": "${to}"`);
  });

  it('the cluster configs carry shardMapping(64)', () => {
    for (const n of [1, 2, 3]) {
      const conf = readFileSync(
        resolve(import.meta.dirname, `../../config/cluster-n${n}.conf`),
        'utf8',
      );
      const [[from, to]] = Object.entries(shardMapping(64)) as [[string, string]];
      expect(conf).toContain(`"${from}": "${to}"`);
    }
  });
});

describe('subjects and registry', () => {
  it('builds the public and internal subjects', () => {
    const s = createSubjects('wf');
    expect(s.start('order', 'o1')).toBe('wf.start.order.o1');
    expect(s.inbox('signal', 'order', 'o1')).toBe('wf.inbox.signal.order.o1');
    expect(s.shardInbox(3, 'signal', 'order', 'o1')).toBe('wf.in.3.signal.order.o1');
    expect(() => createSubjects('a.b')).toThrow(/prefix/);
  });

  it('rejects duplicate and malformed definitions, and unknown types with the known list', () => {
    const r = createRegistry([counter]);
    expect(() => r.register(counter)).toThrow(/registered twice/);
    expect(() => defineWorkflow({ ...counter, type: 'a.b' })).toThrow(/not a valid subject token/);
    expect(() => defineWorkflow({ ...counter, version: 0 })).toThrow(/positive integer/);
    expect(() => r.latest('nope')).toThrow(/unknown workflow type/);
    expect(r.list()).toEqual(['counter@1']);
  });
});
