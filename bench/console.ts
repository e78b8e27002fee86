/**
 * Web console search benchmark (`npm run bench:console [-- --workflows N --runs R]`): a real
 * nats-server, engine and visibility replica; N `order` workflows started (default 100,000; they
 * wait for payment, so they stay running) and indexed; then chromium (playwright-core, the
 * system chromium from scripts/provision-chromium.sh) opens the console's search page R times
 * (default 20) with filters (type + state + time in state, and type + id prefix), and the time
 * from navigation to the first result rows rendered is reported as p50/p99.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { Client } from '../src/client/index.js';
import { Engine } from '../src/host/engine.js';
import { Visibility } from '../src/host/visibility.js';
import { startConsole } from '../src/host/console.js';
import { createRegistry } from '../src/engine/registry.js';
import { order } from '../actors/order.js';
import { repoRoot } from '../src/host/package-root.js';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { percentile, round } from './peers/common.js';

const { values } = parseArgs({
  options: {
    workflows: { type: 'string', default: '100000' },
    runs: { type: 'string', default: '20' },
    concurrency: { type: 'string', default: '500' },
  },
});
const N = Number(values.workflows);
const RUNS = Number(values.runs);
const CONC = Number(values.concurrency);
const silent = {
  debug: () => undefined,
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
  child: () => silent,
};

const dir = mkdtempSync(join(tmpdir(), 'jetflow-bench-console-'));
const SHARDS = 4;
const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
const prefix = `bc${Date.now().toString(36)}`;
const registry = createRegistry([order]);
const engine = await Engine.create(
  { servers: server.url, prefix, shards: SHARDS, logLevel: 'error' },
  { registry, logger: silent },
);
const vis = await Visibility.create({
  servers: server.url,
  prefix,
  file: join(dir, 'v.db'),
  logger: silent,
  progress: () => undefined,
});
const client = await Client.connect(server.url, { prefix, timeoutMs: 30_000 });
const ui = await startConsole({ client, registry, shards: SHARDS, port: 0 });
const executablePath = execFileSync('bash', [resolve(repoRoot, 'scripts/provision-chromium.sh')], {
  encoding: 'utf8',
}).trim();
const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
try {
  const t0 = Date.now();
  let next = 0;
  await Promise.all(
    Array.from({ length: CONC }, async () => {
      while (next < N) {
        const i = next++;
        await client.start('order', `o-${String(i).padStart(7, '0')}`, { total: i % 100 });
      }
    }),
  );
  const started = Date.now() - t0;
  for (;;) {
    const c = await client.searchCounts({ type: 'order' }).catch(() => undefined);
    if ((c?.byType.order ?? 0) >= N) break;
    await new Promise((r) => setTimeout(r, 500));
  }
  console.log(
    `seeded ${N} orders in ${round(started / 1000)} s, indexed after ${round((Date.now() - t0) / 1000)} s`,
  );
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const searches = [
    'type=order&state=awaitingPayment&inStateLongerThan=1s',
    'type=order&idPrefix=o-0001',
  ];
  for (const qs of searches) {
    const ms: number[] = [];
    for (let r = 0; r < RUNS; r++) {
      await page.goto('about:blank');
      const t = performance.now();
      await page.goto(`${ui.url}/#/search?${qs}`);
      await page.locator('table tbody tr td a').first().waitFor();
      ms.push(performance.now() - t);
    }
    ms.sort((a, b) => a - b);
    console.log(
      `search ${qs}: first rows rendered p50 ${round(percentile(ms, 50))} ms, p99 ${round(percentile(ms, 99))} ms (${RUNS} runs)`,
    );
  }
} finally {
  await browser.close();
  await ui.close();
  await client.close();
  await vis.close();
  await engine.close();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
}
