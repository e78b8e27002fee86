/**
 * The console's overview against three engines as real processes: one is SIGKILLed and the
 * overview, open in chromium, shows its shards held by the two others without a reload (the
 * overview's server-sent events). The time from the kill to the page showing every shard moved
 * is printed; the engines run at the minimum failoverMs.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chromium, type Browser } from 'playwright-core';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Client } from '../../src/client/index.js';
import { startConsole, type ConsoleServer } from '../../src/host/console.js';
import { systemStatus } from '../../src/nats/status.js';
import { ENGINE_MIN_FAILOVER_MS } from '../../src/config.js';
import type { NatsServer } from '../harness/nats-server.js';
import { EngineProcess, startServer, uniquePrefix } from '../harness/jetflow.js';
import { chromiumPath, shots } from './chromium.js';

const SHARDS = 6;
const FAILOVER_MS = ENGINE_MIN_FAILOVER_MS;

describe('console overview during an engine failover', () => {
  let server: NatsServer;
  let nc: NatsConnection;
  let ui: ConsoleServer;
  let browser: Browser;
  const engines: EngineProcess[] = [];
  const prefix = uniquePrefix();

  beforeAll(async () => {
    const executablePath = chromiumPath();
    mkdirSync(shots, { recursive: true });
    server = await startServer({ shards: SHARDS });
    nc = await connect({ servers: server.url });
    for (const name of ['e1', 'e2', 'e3'])
      engines.push(
        new EngineProcess(server.url, prefix, { shards: SHARDS, failoverMs: FAILOVER_MS, name }),
      );
    await Promise.all(engines.map((e) => e.start()));
    ui = await startConsole({
      client: new Client(nc, { prefix }),
      shards: SHARDS,
      failoverMs: FAILOVER_MS,
      port: 0,
      overviewEveryMs: 200,
    });
    browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await ui?.close();
    await Promise.all(engines.map((e) => e.kill()));
    await nc?.close();
    await server?.stop();
  });

  it('killing an engine shows its shards moving to the others on the open overview', async () => {
    // The three engines share the shards, one holder each (the server's view, as `jetflow status`).
    const deadline = Date.now() + 30_000;
    for (;;) {
      const st = await systemStatus(nc, prefix, SHARDS, FAILOVER_MS / 2);
      if (
        st.engines.length === 3 &&
        st.engines.every((e) => e.shards.length === SHARDS / 3) &&
        st.shards.every((s) => s.claimedBy.length === 1)
      )
        break;
      if (Date.now() > deadline) throw new Error(`not balanced: ${JSON.stringify(st.engines)}`);
      await new Promise((r) => setTimeout(r, 100));
    }

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(`${ui.url}/#/`);
    await page.getByRole('heading', { name: /Engines \(3 live\)/ }).waitFor();
    const rows = page.getByTestId('shards').locator('tbody tr');
    await expect.poll(() => rows.count()).toBe(SHARDS);
    const holders = async () =>
      (await rows.locator('td:nth-child(2)').allTextContents()).map((t) => t.trim());
    const before = await holders();
    const victim = engines[0]!;
    const victimName = before.find((h) => h.endsWith(':e1'))!;
    expect(victimName).toBeDefined();
    const moving = before.flatMap((h, shard) => (h === victimName ? [shard] : []));
    expect(moving).toHaveLength(SHARDS / 3);
    await page.screenshot({ path: join(shots, 'failover-before.png'), fullPage: true });
    await page.evaluate('window.marker = 1');

    const killedAt = Date.now();
    await victim.kill();
    // When the engines' own view (as `jetflow status` reads it) has every shard moved: the page
    // is compared with it in the printed line.
    let movedAt = 0;
    const watching = (async () => {
      while (!movedAt && Date.now() - killedAt < 20_000) {
        const st = await systemStatus(nc, prefix, SHARDS, FAILOVER_MS / 2);
        if (st.shards.every((s) => s.holder && s.holder !== victimName && s.claimedBy.length === 1))
          movedAt = Date.now();
        else await new Promise((r) => setTimeout(r, 25));
      }
    })();
    // The open page: no shard held by the dead engine, every one by a live engine.
    await page.getByRole('heading', { name: /Engines \(2 live\)/ }).waitFor({ timeout: 20_000 });
    await expect
      .poll(
        async () => {
          const now = await holders();
          return now.every((h) => h !== victimName && /:e[23]$/.test(h));
        },
        { timeout: 20_000, interval: 50 },
      )
      .toBe(true);
    const shownAfterMs = Date.now() - killedAt;
    await watching;
    const after = await holders();
    expect(await page.evaluate('window.marker')).toBe(1);
    await page.screenshot({ path: join(shots, 'failover-after.png'), fullPage: true });
    console.log(
      `failover on the overview: shards ${moving.join(', ')} of ${victimName} shown on ${[...new Set(moving.map((s) => after[s]))].join(', ')} ${shownAfterMs} ms after SIGKILL; the engines' status had them moved after ${movedAt ? movedAt - killedAt : '?'} ms (failoverMs ${FAILOVER_MS})`,
    );
    await page.close();
  });
});
