/**
 * The metrics' documentation stays true: every jetflow metric registered is in the README's
 * table, and the Grafana dashboard queries only metrics that exist.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  createEngineMetrics,
  createMetricsRegistry,
  createVisibilityMetrics,
  createWorkerMetrics,
} from '../../src/metrics/index.js';

const root = resolve(import.meta.dirname, '../..');

async function registered(): Promise<Set<string>> {
  const registry = createMetricsRegistry();
  createEngineMetrics(registry);
  createWorkerMetrics(registry);
  createVisibilityMetrics(registry);
  const all = await registry.getMetricsAsJSON();
  return new Set(all.map((m) => m.name).filter((n) => n.startsWith('jetflow_')));
}

describe('metrics documentation', () => {
  it('the README table lists exactly the registered jetflow metrics', async () => {
    const readme = readFileSync(resolve(root, 'README.md'), 'utf8');
    const documented = new Set([...readme.matchAll(/^\| `(jetflow_[a-z_]+)`/gm)].map((m) => m[1]!));
    expect([...documented].sort()).toEqual([...(await registered())].sort());
  });

  it('the Grafana dashboard queries only metrics that exist', async () => {
    const dashboard = readFileSync(resolve(root, 'docs/grafana-dashboard.json'), 'utf8');
    JSON.parse(dashboard);
    const used = new Set(
      [...dashboard.matchAll(/\b(jetflow_[a-z_]+)/g)].map((m) =>
        m[1]!.replace(/_(bucket|sum|count)$/, ''),
      ),
    );
    const known = await registered();
    expect([...used].filter((n) => !known.has(n))).toEqual([]);
    expect(used.size).toBeGreaterThanOrEqual(known.size - 2);
  });
});
