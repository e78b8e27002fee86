/**
 * The console's operator pages in chromium against a real nats-server, engine, worker and
 * visibility replica: concurrency keys (holders and waiters with positions; promote, skip, and a
 * refused release), triggers (stream, filter, holder, parked count and last error; pause and
 * resume; the parked list), a batch (counts, pause, resume, items), the node tree of an
 * activity tree with a parked node retried from the page, and a bulk action applied with its
 * progress bar to completion. Screenshots go to `.console-shots/` (git-ignored).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Page } from 'playwright-core';
import { headers } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { Client } from '../../src/client/index.js';
import type { Engine } from '../../src/host/engine.js';
import type { ConsoleServer } from '../../src/host/console.js';
import { workflows as fixtures } from '../fixtures/workflows.js';
import { triggerWorkflows } from '../fixtures/trigger-workflows.js';
import { uniquePrefix, useServer } from '../harness/jetflow.js';
import { confirmDialog, shots, startConsoleStack, until, type ConsoleStack } from './chromium.js';

const env = useServer();
/** Waits for the system (engine, worker, index), not only for the page: 15 s. */
const poll = <T>(f: () => Promise<T>) => expect.poll(f, { timeout: 15_000, interval: 50 });

describe('console operator pages in chromium', () => {
  let stack: ConsoleStack;
  let engine: Engine;
  let ui: ConsoleServer;
  let client: Client;
  let page: Page;
  const prefix = uniquePrefix();
  const stream = `PAY_${prefix}`;
  const subject = `${prefix}-pay`;
  const bank = { down: true };

  beforeAll(async () => {
    await (
      await jetstreamManager(env.nc)
    ).streams.add({ name: stream, subjects: [`${subject}.>`] });
    const definitions = [
      ...fixtures,
      ...triggerWorkflows({ JF_T_PAY_STREAM: stream, JF_T_PAY_SUBJECT: `${subject}.>` }),
    ];
    stack = await startConsoleStack({
      url: env.server.url,
      nc: env.nc,
      prefix,
      definitions,
      queues: ['bank'],
      activities: {
        pay: () => {
          if (bank.down) {
            const e = new Error('bank is down');
            e.name = 'BankDown';
            throw e;
          }
          return 'paid';
        },
      },
    });
    ({ engine, ui, client, page } = stack);
  });

  afterAll(async () => {
    await stack?.close();
  });

  /** Confirm the open dialog with a reason; returns the server's answer as shown. */
  const confirm = (verb: string, reason: string) => confirmDialog(page, verb, reason);

  it('concurrency keys: holder and waiters with positions; promote, skip; a running holder is not released', async () => {
    for (const id of ['a1', 'a2', 'a3']) await client.start('keyq', id, { key: 'k' });
    await until('two waiters', async () => {
      const [r] = await client.keys('keyq', 'k');
      return r?.waiters.length === 2 ? true : undefined;
    });
    await page.goto(`${ui.url}/#/keys?type=keyq`);
    const table = page.getByRole('table', { name: 'Key k' });
    const rows = table.locator('tbody tr');
    const cells = async () =>
      (await rows.allTextContents()).map((t) => /^(holder|\d+)(a\d)/.exec(t)?.slice(1).join(':'));
    await poll(cells).toEqual(['holder:a1', '1:a2', '2:a3']);
    // By keyboard: the focus stays on the button across the page's refreshes; Enter opens the
    // dialog, Enter in the reason confirms.
    const promote = page.getByRole('button', { name: 'Promote a3' });
    await promote.focus();
    await promote.evaluate('b => b.setAttribute("data-old", "")');
    await poll(() => table.locator('[data-old]').count()).toBe(0); // re-rendered since
    expect(await page.evaluate('document.activeElement.getAttribute("aria-label")')).toBe(
      'Promote a3',
    );
    await page.keyboard.press('Enter');
    await page.getByRole('dialog').getByLabel('Reason').fill('VIP customer');
    await page.keyboard.press('Enter');
    await page.getByTestId('answer').getByText('promote: done').waitFor();
    await poll(cells).toEqual(['holder:a1', '1:a3', '2:a2']);
    await page.getByRole('button', { name: 'Skip a2' }).click();
    expect(await confirm('skip', 'duplicate order')).toContain('skip: done');
    await poll(cells).toEqual(['holder:a1', '1:a3']);
    expect((await client.query('keyq', 'a2')).status).toBe('canceled');
    await page.getByRole('button', { name: 'Release a1' }).click();
    expect(await confirm('release', 'stuck?')).toMatch(/release failed: holder_running/);
    expect(await page.getByTestId('answer').textContent()).toContain('"status": 409');
    await page.screenshot({ path: join(shots, 'keys.png'), fullPage: true });
  });

  it('triggers: stream, filter, holder, parked count and last error; pause and resume; the parked list', async () => {
    await client.start('tpay', 'k0', {});
    const js = jetstream(env.nc);
    for (const [n, bad] of [
      [1, false],
      [2, true],
    ] as const) {
      const h = headers();
      h.set('Nats-Msg-Id', `k0-${n}`);
      await js.publish(`${subject}.k0`, JSON.stringify({ orderId: 'k0', n, bad }), { headers: h });
    }
    await page.goto(`${ui.url}/#/triggers`);
    const row = page.locator('tr[data-trigger="payments"]');
    await poll(() => row.textContent()).toContain('bad payment 2');
    const text = (await row.textContent()) ?? '';
    expect(text).toContain(stream);
    expect(text).toContain(`${subject}.>`);
    expect(text).toContain(engine.config.name);
    expect(await row.locator('td').nth(6).textContent()).toBe('1');
    await page.getByRole('button', { name: 'Pause payments' }).click();
    await page.getByTestId('answer').getByText('pause: done').waitFor();
    await row.getByText('paused').waitFor();
    await page.getByRole('button', { name: 'Resume payments' }).click();
    await page.getByTestId('answer').getByText('resume: done').waitFor();
    await page.getByRole('button', { name: 'Parked messages of payments' }).click();
    const parked = page.getByRole('table', { name: 'Parked messages of payments' });
    await poll(() => parked.locator('tbody tr').count()).toBe(1);
    expect(await parked.textContent()).toContain('bad payment 2');
    await page.screenshot({ path: join(shots, 'triggers.png'), fullPage: true });
    // At a phone's width: no horizontal page scroll (the wide table scrolls in its card).
    await page.setViewportSize({ width: 390, height: 844 });
    expect(await page.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
    await page.screenshot({ path: join(shots, 'triggers-phone.png'), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  it('a batch: counts, pause and resume with a reason, its items', async () => {
    await client.batches.create(
      {
        id: 'b1',
        type: 'batchItem',
        items: [{ n: 0 }, { n: 1, fail: true }, { n: 2, wait: true }],
      },
      { seal: true },
    );
    await page.goto(`${ui.url}/#/batches`);
    await page.getByRole('textbox', { name: 'Batch id' }).fill('b1');
    await page.getByRole('button', { name: 'Show' }).click();
    const counts = page.getByTestId('batch-counts');
    await poll(() => counts.textContent()).toMatch(
      /succeeded\s*1.*failed\s*1|failed\s*1.*succeeded\s*1/s,
    );
    await page.getByRole('button', { name: 'Pause', exact: true }).click();
    expect(await confirm('pause', 'month end')).toContain('pause: done');
    await page.getByTestId('batch-state').getByText('paused').waitFor();
    expect((await client.batches.status('b1')).paused).toBe(true);
    await page.getByRole('button', { name: 'Resume', exact: true }).click();
    expect(await confirm('resume', 'month end over')).toContain('resume: done');
    await poll(async () => (await client.batches.status('b1')).paused).toBe(false);
    const items = page.getByRole('table', { name: 'Batch items' });
    await poll(() => items.locator('tbody tr').count()).toBe(3);
    await page.getByLabel('Item status').selectOption('failed');
    await poll(() => items.locator('tbody tr').count()).toBe(1);
    await page.screenshot({ path: join(shots, 'batch.png'), fullPage: true });
  });

  it('an activity tree: nodes with modes and statuses; a parked node retried from the page', async () => {
    await client.start('activityTree', 't1', { signalQueue: 'bank' });
    await client.signal('activityTree', 't1', {
      type: 'signal',
      name: 'pay',
      retry: { maxAttempts: 2, delaysMs: [50] },
    });
    await page.goto(`${ui.url}/#/wf/activityTree/t1`);
    const node = page.locator('li[data-node="n1"]');
    await poll(() => node.textContent()).toMatch(/pay \[n1\] errored.*blocking/);
    expect(await node.textContent()).toContain('BankDown');
    await page.screenshot({ path: join(shots, 'tree-parked.png'), fullPage: true });
    bank.down = false;
    await page.getByRole('button', { name: 'Retry node n1' }).click();
    expect(await confirm('retry', 'bank is back')).toContain('retry: done');
    // Live: the node completes on the open page.
    await poll(() => node.textContent()).toMatch(/pay \[n1\] complete/);
    await page.screenshot({ path: join(shots, 'tree-retried.png'), fullPage: true });
  });

  it('a bulk action: dry-run count, then apply with a progress bar to completion', async () => {
    for (const id of ['c1', 'c2', 'c3']) await client.start('counter', id, {});
    await until('three running counters in the index', async () =>
      (await client.search({ type: 'counter', status: 'running' })).workflows.length === 3
        ? true
        : undefined,
    );
    await page.goto(`${ui.url}/#/search?type=counter&status=running`);
    await page.getByLabel('Action', { exact: true }).selectOption('terminate');
    await page.getByLabel('Bulk reason').fill('test data');
    await page.getByRole('button', { name: 'Count (dry run)' }).click();
    await page.getByText('Dry run: 3 workflow(s) match').waitFor();
    for (const id of ['c1', 'c2', 'c3'])
      expect((await client.query('counter', id)).status).toBe('running');
    await page.getByRole('button', { name: 'Apply terminate to 3' }).click();
    const bar = page.getByRole('progressbar', { name: 'bulk progress' });
    await page.getByText(/completed; 3\/3 processed, 3 done/).waitFor();
    expect(await bar.getAttribute('value')).toBe('3');
    expect(await bar.getAttribute('max')).toBe('3');
    for (const id of ['c1', 'c2', 'c3'])
      expect((await client.query('counter', id)).status).toBe('canceled');
    await page.screenshot({ path: join(shots, 'bulk-applied.png'), fullPage: true });
  });
});
