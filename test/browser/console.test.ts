/**
 * The web console in a real browser: playwright-core drives Debian's chromium (provisioned by
 * scripts/provision-chromium.sh when missing) against a real nats-server, engine, worker and
 * visibility replica. It searches the failed payments and opens one (statechart with the failed
 * state highlighted, the timeline), retries a parked bank activity and watches the workflow
 * complete live, pauses and resumes an order, resets one from the timeline, and sees the
 * server's error for a malformed signal payload. A screenshot of each page goes to
 * `.console-shots/` (git-ignored).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Browser, Page } from 'playwright-core';
import type { Client } from '../../src/client/index.js';
import type { Engine } from '../../src/host/engine.js';
import { startConsole, type ConsoleServer } from '../../src/host/console.js';
import { order } from '../../actors/order.js';
import { merchantPaymentMachine } from '../../actors/merchant-payment.js';
import { defineWorkflow } from '../../src/engine/registry.js';
import { activity } from '../../src/engine/activity.js';
import { TEST_SHARDS, useServer } from '../harness/jetflow.js';
import { confirmDialog, shots, startConsoleStack, until, type ConsoleStack } from './chromium.js';

const env = useServer();
/** The demo's merchant payment, its bank call parked for review after two quick attempts. */
const merchantPayment = defineWorkflow({
  type: 'merchantPayment',
  version: 1,
  onExhausted: 'review',
  machine: merchantPaymentMachine.provide({
    actors: {
      sendToBank: activity('sendToBank', {
        queue: 'bank',
        retry: { maxAttempts: 2, initialIntervalMs: 50, jitter: 0 },
      }),
    },
  }),
});
const definitions = [merchantPayment, order];

describe('web console in chromium', () => {
  let stack: ConsoleStack;
  let engine: Engine;
  let ui: ConsoleServer;
  let client: Client;
  let browser: Browser;
  let page: Page;
  const bank: { down: boolean; gate: Promise<void> | undefined } = { down: true, gate: undefined };

  beforeAll(async () => {
    stack = await startConsoleStack({
      url: env.server.url,
      nc: env.nc,
      definitions,
      queues: ['getSoldVouchers', 'calculatePayment', 'bank'],
      activities: {
        getSoldVouchers: () =>
          Promise.resolve([
            { id: 'v1', price: 30 },
            { id: 'v2', price: 12 },
          ]),
        calculatePayment: ({ vouchers }: { vouchers: { price: number }[] }) =>
          Promise.resolve(vouchers.reduce((a, v) => a + v.price, 0)),
        sendToBank: async ({ amount }: { amount: number }) => {
          if (bank.down) {
            const e = new Error('bank unreachable');
            e.name = 'BankDown';
            throw e;
          }
          await bank.gate;
          return { receipt: `r-${amount}` };
        },
      },
    });
    ({ engine, ui, client, browser, page } = stack);
  });

  afterAll(async () => {
    await stack?.close();
  });

  const confirm = (verb: string, reason: string) => confirmDialog(page, verb, reason);

  it('searches the failing merchant payments, opens one: statechart, timeline; fails its parked bank call', async () => {
    for (const id of ['m1', 'm2']) await client.start('merchantPayment', id, { merchantId: id });
    // Index lag: the search page is opened once the replica has both parked.
    await until('both parked in the index', async () => {
      const r = await client.search({ type: 'merchantPayment', needsReview: true });
      return r.workflows.length === 2 ? true : undefined;
    });
    await page.goto(`${ui.url}/#/search`);
    await page.getByLabel('Type', { exact: true }).fill('merchantPayment');
    await page.getByLabel('Needs review only').check();
    await page.getByRole('button', { name: 'Search' }).click();
    const rows = page.locator('table tbody tr');
    await expect.poll(() => rows.count()).toBe(2);
    await expect.poll(() => rows.first().textContent()).toContain('review');
    // A bulk retry on these filters counts first (a dry run changes nothing).
    await page.getByLabel('Bulk reason').fill('bank maintenance over');
    await page.getByRole('button', { name: 'Count (dry run)' }).click();
    await page.getByText('Dry run: 2 workflow(s) match').waitFor();
    expect(await page.getByRole('button', { name: 'Apply retry to 2' }).isEnabled()).toBe(true);
    await page.screenshot({ path: join(shots, 'search.png'), fullPage: true });

    await page.getByRole('link', { name: 'merchantPayment/m2' }).click();
    const sending = page.locator('svg.chart [data-state="sendingToBank"]');
    await expect.poll(() => sending.getAttribute('class')).toMatch(/current.*parked/);
    // The path taken is marked: gettingVouchers → calculating → sendingToBank.
    expect(
      await page.locator('svg.chart [data-state="calculating"]').getAttribute('class'),
    ).toMatch(/visited/);
    expect(await page.locator('svg.chart path.edge.taken').count()).toBe(2);
    const timeline = page.getByRole('list', { name: 'Journal' });
    expect(await timeline.textContent()).toContain('calculating → sendingToBank');
    expect(await timeline.textContent()).toContain('BankDown');
    await page.screenshot({ path: join(shots, 'workflow-parked.png'), fullPage: true });

    // Fail the parked call: the workflow takes its failure path and ends failed.
    await page.getByRole('button', { name: 'Fail sendToBank' }).click();
    expect(await confirm('fail', 'merchant closed their account')).toContain('fail: done');
    await page.getByTestId('status').getByText('failed').waitFor();
    const failedState = page.locator('svg.chart [data-state="failed"]');
    await expect.poll(() => failedState.getAttribute('class')).toMatch(/current.*failed/);
    expect(await timeline.textContent()).toContain('sendingToBank → failed');
    await page.screenshot({ path: join(shots, 'workflow-failed.png'), fullPage: true });
    // At a phone's width the page still lays out (one column, no horizontal page scroll).
    await page.setViewportSize({ width: 390, height: 844 });
    expect(await page.evaluate('document.documentElement.scrollWidth')).toBeLessThanOrEqual(390);
    await page.screenshot({ path: join(shots, 'workflow-phone.png'), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 900 });

    // The failed merchant payments: m2 only.
    await until('m2 failed in the index', async () =>
      (await client.search({ type: 'merchantPayment', status: 'failed' })).workflows.length === 1
        ? true
        : undefined,
    );
    await page.goto(`${ui.url}/#/search?type=merchantPayment&status=failed`);
    await expect.poll(() => rows.count()).toBe(1);
    expect(await rows.first().textContent()).toContain('merchantPayment/m2');
  });

  it('retries a parked bank activity and follows the workflow to its end without a reload', async () => {
    await page.goto(`${ui.url}/#/search?type=merchantPayment&needsReview=true`);
    await page.getByRole('link', { name: 'merchantPayment/m1' }).click();
    const sending = page.locator('svg.chart [data-state="sendingToBank"]');
    await expect.poll(() => sending.getAttribute('class')).toMatch(/current.*parked/);

    // The bank is back but slow: the workflow completes after the retry's answer is shown.
    let open!: () => void;
    bank.gate = new Promise<void>((ok) => (open = ok));
    bank.down = false;
    await page.getByRole('button', { name: 'Retry sendToBank' }).click();
    expect(await confirm('retry', 'bank is back')).toContain('retry: done');
    await page.getByTestId('status').getByText('running').waitFor();
    const marker = await page.evaluate('window.marker = 1');
    open();
    await page.getByTestId('status').getByText('completed').waitFor();
    // The same document: the page followed the journal (server-sent events), no reload.
    expect(await page.evaluate('window.marker')).toBe(marker);
    expect(await page.locator('svg.chart [data-state="paid"]').getAttribute('class')).toMatch(
      /current/,
    );
    expect(await page.getByRole('list', { name: 'Journal' }).textContent()).toContain(
      'operator retry: console — “bank is back”',
    );
    expect((await client.query('merchantPayment', 'm1')).status).toBe('completed');
  });

  it('pauses and resumes an order, resets one from the timeline, shows the server error of a bad payload', async () => {
    await client.start('order', 'o1', { total: 5 });
    await page.goto(`${ui.url}/#/wf/order/o1`);
    await page.getByRole('button', { name: 'Pause' }).click();
    expect(await confirm('pause', 'checking the address')).toContain('pause: done');
    await page
      .getByTestId('status')
      .getByText(/paused/)
      .waitFor();
    expect((await client.query('order', 'o1')).paused).toBe(true);
    await page.screenshot({ path: join(shots, 'workflow-paused.png'), fullPage: true });
    await page.getByRole('button', { name: 'Resume' }).click();
    expect(await confirm('resume', 'address ok')).toContain('resume: done');
    await expect.poll(async () => (await client.query('order', 'o1')).paused ?? false).toBe(false);

    // Signals through the form listing what it accepts now; then a reset to after PAY.
    const form = page.getByRole('form', { name: 'Send a signal' });
    expect((await form.getByLabel('Event').locator('option').allTextContents()).sort()).toEqual([
      'CANCEL_ORDER',
      'PAY',
    ]);
    await form.getByLabel('Event').selectOption('PAY');
    await form.getByLabel('Payload (JSON object)').fill('{"amount": 5}');
    await form.getByRole('button', { name: 'Send signal' }).click();
    await page.getByTestId('state').getByText('paid').waitFor();
    await form.getByLabel('Event').selectOption('PACK');
    await form.getByLabel('Payload (JSON object)').fill('{}');
    await form.getByRole('button', { name: 'Send signal' }).click();
    await page.getByTestId('state').getByText('packed').waitFor();
    const paySteps: number[] = [];
    for await (const e of client.historyAll('order', 'o1'))
      if (e.kind === 'step' && e.event.type === 'PAY') paySteps.push(e.step);
    await page.getByRole('button', { name: `Reset to step ${paySteps[0]}` }).click();
    expect(await confirm('reset', 'packed the wrong box')).toContain('reset: done');
    await page.getByTestId('state').getByText('paid').waitFor();
    expect((await client.query('order', 'o1')).value).toBe('paid');
    await page.screenshot({ path: join(shots, 'workflow-reset.png'), fullPage: true });

    // A malformed payload: the server's answer, error code included.
    await form.getByLabel('Event').selectOption('PACK');
    await form.getByLabel('Payload (JSON object)').fill('{"box": ');
    await form.getByRole('button', { name: 'Send signal' }).click();
    const answer = page.getByTestId('answer');
    await answer.getByText('signal failed').waitFor();
    expect(await answer.textContent()).toMatch(/signal failed: malformed_body/);
    expect((await client.query('order', 'o1')).value).toBe('paid');
    await page.screenshot({ path: join(shots, 'workflow-bad-signal.png'), fullPage: true });
  });

  it('shows the overview: counts, engines and shards, queues, failures, review', async () => {
    await page.goto(`${ui.url}/#/`);
    await page.getByRole('heading', { name: /Engines \(1 live\)/ }).waitFor();
    const shards = page.getByTestId('shards');
    await expect.poll(() => shards.locator('tbody tr').count()).toBe(TEST_SHARDS);
    expect(await shards.locator('tbody').textContent()).toContain(engine.config.name);
    await page
      .getByRole('table', { name: 'Latest failures' })
      .getByText('merchantPayment/m2')
      .waitFor();
    const byType = page.getByRole('figure', { name: 'By type' });
    expect(await byType.textContent()).toMatch(/merchantPayment\s*2/);
    await page.screenshot({ path: join(shots, 'overview.png'), fullPage: true });
  });

  it('with an access token, no anonymous request can act; the page asks for it once', async () => {
    await expect(startConsole({ client, host: '0.0.0.0', port: 0 })).rejects.toThrow(/token/);
    const locked = await startConsole({ client, token: 's3cret', port: 0 });
    try {
      const anonymous = await fetch(`${locked.url}/api/workflows/order/o1/pause`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ by: 'mallory', reason: 'because' }),
      });
      expect(anonymous.status).toBe(401);
      expect((await fetch(`${locked.url}/api/overview`)).status).toBe(401);
      expect((await client.query('order', 'o1')).paused).toBeFalsy();
      const bearer = await fetch(`${locked.url}/api/info`, {
        headers: { authorization: 'Bearer s3cret' },
      });
      expect(bearer.status).toBe(200);

      const context = await browser.newContext();
      const p = await context.newPage();
      await p.goto(`${locked.url}/#/wf/order/o1`);
      const dialog = p.getByRole('dialog', { name: 'Console access' });
      await dialog.getByLabel('Access token').fill('wrong');
      await dialog.getByRole('button', { name: 'Sign in' }).click();
      await dialog.getByText('wrong token').waitFor();
      await dialog.getByLabel('Access token').fill('s3cret');
      await dialog.getByRole('button', { name: 'Sign in' }).click();
      await p.getByTestId('state').getByText('paid').waitFor();
      await context.close();
    } finally {
      await locked.close();
    }
  });
});
