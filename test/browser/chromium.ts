/**
 * What the console's browser tests share: the system chromium, the screenshot folder, and a
 * stack of engine, worker, visibility replica and console with a browser page on it.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { chromium, type Browser, type Page } from 'playwright-core';
import { Client } from '../../src/client/index.js';
import { createRegistry, type WorkflowDefinition } from '../../src/engine/registry.js';
import type { Engine } from '../../src/host/engine.js';
import { startConsole, type ConsoleServer } from '../../src/host/console.js';
import { Visibility } from '../../src/host/visibility.js';
import { createWorker, type Worker } from '../../src/worker/index.js';
import {
  quietLogger,
  repoRoot,
  startEngine,
  TEST_SHARDS,
  uniquePrefix,
} from '../harness/jetflow.js';

/** Screenshots of each page (git-ignored), looked at by whoever runs the tests. */
export const shots = resolve(repoRoot, '.console-shots');

/** The system chromium's path: provisioned when missing, or a clear failure (never a skip). */
export function chromiumPath(): string {
  try {
    return execFileSync('bash', [resolve(repoRoot, 'scripts/provision-chromium.sh')], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    }).trim();
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(
      `the console's browser tests need chromium, and scripts/provision-chromium.sh could not provide one:\n${stderr}`,
    );
  }
}

/** Wait until `f` gives a value (polling every 50 ms), or fail naming `what`. */
export async function until<T>(
  what: string,
  f: () => Promise<T | undefined>,
  ms = 15_000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** One engine, one worker, a visibility replica and the console, with chromium on a page. */
export interface ConsoleStack {
  prefix: string;
  engine: Engine;
  worker: Worker;
  vis: Visibility;
  ui: ConsoleServer;
  client: Client;
  browser: Browser;
  page: Page;
  close(): Promise<void>;
}

/** Start the stack on a running nats-server (`url`, `nc`) with these definitions. */
export async function startConsoleStack(o: {
  url: string;
  nc: NatsConnection;
  prefix?: string;
  definitions: WorkflowDefinition[];
  queues: string[];
  activities: Record<string, (input: never) => unknown>;
}): Promise<ConsoleStack> {
  const executablePath = chromiumPath();
  mkdirSync(shots, { recursive: true });
  const dir = mkdtempSync(join(tmpdir(), 'jetflow-console-'));
  const prefix = o.prefix ?? uniquePrefix();
  const engine = await startEngine(o.url, prefix, { workflows: o.definitions });
  const worker = await createWorker({
    connection: o.nc,
    prefix,
    queues: o.queues,
    activities: o.activities as never,
  });
  const vis = await Visibility.create({
    servers: o.url,
    prefix,
    file: join(dir, 'v.db'),
    logger: quietLogger,
    progress: () => undefined,
  });
  const client = new Client(o.nc, { prefix });
  const ui = await startConsole({
    client,
    registry: createRegistry(o.definitions),
    shards: TEST_SHARDS,
    port: 0,
    overviewEveryMs: 500,
  });
  const browser = await chromium.launch({ executablePath, args: ['--no-sandbox'] });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  return {
    prefix,
    engine,
    worker,
    vis,
    ui,
    client,
    browser,
    page,
    async close() {
      await browser.close();
      await ui.close();
      await vis.close();
      await worker.close();
      await engine.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Confirm the open `verb` dialog with a reason; returns the server's answer as shown. */
export async function confirmDialog(page: Page, verb: string, reason: string): Promise<string> {
  const dialog = page.getByRole('dialog');
  await dialog.getByLabel('Reason').fill(reason);
  await dialog.getByRole('button', { name: 'Confirm' }).click();
  const answer = page.getByTestId('answer');
  await answer.getByText(new RegExp(`^${verb}(: done| failed)`)).waitFor();
  return (await answer.textContent()) ?? '';
}
