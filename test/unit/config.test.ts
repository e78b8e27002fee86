import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { compileEngineConfig } from '../../src/config.js';
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
