// jetflow console: a small single-page app in plain ES modules (no framework, no build step).
// Pages: #/ (overview), #/search?…, #/wf/<type>/<id>. It talks to the console server only:
// JSON under /api/ and server-sent events for live updates.
import { drawChart, pathsOf } from './chart.js';

const main = document.getElementById('main');
let cleanup = () => {};

// ---- DOM helpers -----------------------------------------------------------------------------

/** h('tag.class', {attrs, on*: handlers}, ...children): text children are escaped. */
function h(spec, attrs, ...children) {
  const [tag, ...classes] = spec.split('.');
  const e = document.createElement(tag);
  if (classes.length) e.className = classes.join(' ');
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'value') e.value = v;
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat())
    if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
  return e;
}

const json = (v) => JSON.stringify(v, null, 2);
let uid = 0;
const nextId = (p) => `${p}-${++uid}`;

/** A labelled control: label + input/select/textarea. */
function field(label, control, hint) {
  control.id ||= nextId('f');
  return h(
    'div.field',
    {},
    h('label', { for: control.id }, label),
    control,
    hint ? h('small', {}, hint) : null,
  );
}

/** Collapsible JSON. */
function folded(summary, value, open = false) {
  return h(
    'details',
    { open },
    h('summary', {}, summary),
    h('pre.json', {}, value === undefined ? '(none)' : json(value)),
  );
}

function ago(iso) {
  const ms = Date.now() - (typeof iso === 'number' ? iso : Date.parse(iso));
  if (!Number.isFinite(ms)) return '';
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

const badge = (status) => h(`span.badge.s-${status}`, {}, status);
const wfHref = (type, id) => `#/wf/${encodeURIComponent(type)}/${encodeURIComponent(id)}`;

// ---- API -------------------------------------------------------------------------------------

/** GET (no body) or POST a JSON body (`raw`: text sent as it is, for the server to judge). */
async function api(path, body, raw) {
  const text = raw ?? (body === undefined ? undefined : JSON.stringify(body));
  const res = await fetch(
    `/api${path}`,
    text === undefined
      ? {}
      : { method: 'POST', headers: { 'content-type': 'application/json' }, body: text },
  );
  const data = await res.json().catch(() => ({ message: `HTTP ${res.status}` }));
  if (res.status === 401 && path !== '/login') {
    await login();
    return api(path, body, raw);
  }
  if (!res.ok) {
    const err = new Error(data.message ?? `HTTP ${res.status}`);
    err.body = { status: res.status, ...data };
    throw err;
  }
  return data;
}

/** Ask for the console's access token (when it has one); the server keeps it in a cookie. */
function login() {
  return new Promise((done) => {
    const token = h('input', { type: 'password', name: 'token', autocomplete: 'current-password' });
    const err = h('p.err', { role: 'alert' });
    const dlg = h(
      'dialog',
      { 'aria-label': 'Console access' },
      h(
        'form',
        { method: 'dialog' },
        h('h2', {}, 'This console needs its access token'),
        field('Access token', token),
        err,
        h('div.row', {}, h('button.primary', { type: 'submit' }, 'Sign in')),
      ),
    );
    document.body.append(dlg);
    dlg.querySelector('form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await api('/login', { token: token.value });
        dlg.close();
        dlg.remove();
        done();
      } catch (e) {
        err.textContent = e.message;
      }
    });
    dlg.addEventListener('cancel', (ev) => ev.preventDefault());
    dlg.showModal();
    token.focus();
  });
}

/** An SSE stream; closed when the page changes. */
function listen(path, handlers) {
  const es = new EventSource(`/api${path}`);
  for (const [ev, f] of Object.entries(handlers))
    es.addEventListener(ev, (m) => f(JSON.parse(m.data)));
  const prev = cleanup;
  cleanup = () => {
    es.close();
    prev();
  };
  return es;
}

/** The server's answer box (live region): a reply or an error with its code. */
function answerBox() {
  const box = h('div.answer', { role: 'status', 'aria-live': 'polite', 'data-testid': 'answer' });
  box.show = (ok, what, data) => {
    box.replaceChildren(
      h(
        `p.${ok ? 'ok' : 'err'}`,
        {},
        ok ? `${what}: done` : `${what} failed: ${data.code ?? 'error'} — ${data.message ?? ''}`,
      ),
      h(
        'details',
        { open: !ok },
        h('summary', {}, 'the server’s answer'),
        h('pre.json', {}, json(data)),
      ),
    );
  };
  box.pending = (what) => box.replaceChildren(h('p', {}, `${what}: waiting for the server…`));
  return box;
}

const operator = () => localStorage.getItem('jetflow.operator') || 'console';

/**
 * Ask for a reason (and any extra fields) in a modal dialog, then run `act(values)`; resolves
 * when done or canceled. Keyboard: Esc cancels, Enter in the reason confirms.
 */
function confirmAction(title, extra, act) {
  const reason = h('input', { required: true, autocomplete: 'off', name: 'reason' });
  const by = h('input', { required: true, name: 'by', value: operator() });
  const extras = extra.map((x) => ({ ...x, control: x.control() }));
  const err = h('p.err', { role: 'alert' });
  const dlg = h(
    'dialog',
    { 'aria-label': title },
    h(
      'form',
      { method: 'dialog' },
      h('h2', {}, title),
      field('Reason', reason, 'journaled with the action'),
      field('Operator', by),
      extras.map((x) => field(x.label, x.control, x.hint)),
      err,
      h(
        'div.row',
        {},
        h('button', { value: 'cancel', type: 'button', onclick: () => dlg.close() }, 'Cancel'),
        h('button.primary', { value: 'ok', type: 'submit' }, 'Confirm'),
      ),
    ),
  );
  document.body.append(dlg);
  dlg.addEventListener('close', () => dlg.remove());
  dlg.querySelector('form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const values = { reason: reason.value.trim(), by: by.value.trim() };
    if (!values.reason) return (err.textContent = 'A reason is required.');
    try {
      for (const x of extras) Object.assign(values, x.read(x.control));
    } catch (e) {
      return (err.textContent = String(e.message ?? e));
    }
    localStorage.setItem('jetflow.operator', values.by);
    dlg.close();
    act(values);
  });
  dlg.showModal();
  reason.focus();
}

// ---- Router ----------------------------------------------------------------------------------

function route() {
  cleanup();
  cleanup = () => {};
  const hash = location.hash || '#/';
  const [path, qs] = hash.slice(1).split('?');
  const params = new URLSearchParams(qs ?? '');
  for (const a of document.querySelectorAll('nav a'))
    a.toggleAttribute(
      'aria-current',
      a.getAttribute('href') === `#${path.split('/').slice(0, 2).join('/')}`,
    );
  const wf = /^\/wf\/([^/]+)\/([^/]+)$/.exec(path);
  if (wf) return workflowPage(decodeURIComponent(wf[1]), decodeURIComponent(wf[2]));
  if (path === '/search') return searchPage(params);
  if (path === '/batches') return batchesPage(params);
  if (path === '/keys') return keysPage(params);
  if (path === '/triggers') return triggersPage(params);
  return overviewPage();
}
window.addEventListener('hashchange', route);

// ---- Overview ----------------------------------------------------------------------------------

function bars(title, counts) {
  const entries = Object.entries(counts ?? {}).sort((a, b) => b[1] - a[1]);
  const max = Math.max(1, ...entries.map((e) => e[1]));
  return h(
    'figure.bars',
    {},
    h('figcaption', {}, title),
    entries.length === 0 ? h('p.muted', {}, 'none') : null,
    entries.map(([k, n]) =>
      h(
        'div.bar',
        {},
        h('span.k', {}, k),
        h('span.track', {}, h('span.fill', { style: `width:${(100 * n) / max}%` })),
        h('span.n', {}, String(n)),
      ),
    ),
  );
}

function failed(part) {
  return part?.error ? h('p.err', {}, `${part.error.code}: ${part.error.message}`) : null;
}

function wfTable(rows, caption) {
  return h(
    'table',
    {},
    h('caption', {}, caption),
    h(
      'thead',
      {},
      h(
        'tr',
        {},
        h('th', {}, 'Workflow'),
        h('th', {}, 'Status'),
        h('th', {}, 'State'),
        h('th', {}, 'In state'),
        h('th', {}, 'Error'),
      ),
    ),
    h(
      'tbody',
      {},
      rows.length === 0 ? h('tr', {}, h('td', { colspan: 5 }, 'none')) : null,
      rows.map((w) =>
        h(
          'tr',
          {},
          h('td', {}, h('a', { href: wfHref(w.type, w.id) }, `${w.type}/${w.id}`)),
          h(
            'td',
            {},
            badge(w.status),
            w.needsReview ? h('span.badge.s-review', {}, 'review') : null,
          ),
          h('td', {}, w.states.join(', ')),
          h('td', {}, ago(w.inStateSince)),
          h('td', {}, w.error ? `${w.error.type}: ${w.error.message ?? w.error.code}` : ''),
        ),
      ),
    ),
  );
}

function renderOverview(o) {
  const c = o.counts?.error ? null : o.counts;
  const st = o.status?.error ? null : o.status;
  const byState = {};
  for (const r of c?.byState ?? []) byState[`${r.type} · ${r.state} (${r.status})`] = r.count;
  return h(
    'div.grid',
    {},
    h(
      'section.card',
      { 'aria-labelledby': 'h-counts' },
      h('h2', { id: 'h-counts' }, `Workflows${c ? ` (${c.total})` : ''}`),
      failed(o.counts),
      c
        ? [bars('By type', c.byType), bars('By status', c.byStatus), bars('By state', byState)]
        : null,
    ),
    h(
      'section.card',
      { 'aria-labelledby': 'h-engines' },
      h('h2', { id: 'h-engines' }, `Engines${st ? ` (${st.engines.length} live)` : ''}`),
      failed(o.status),
      st
        ? [
            h(
              'ul',
              {},
              st.engines.map((e) =>
                h('li', {}, h('strong', {}, e.name), ` — shards ${e.shards.join(', ') || 'none'}`),
              ),
            ),
            h(
              'table',
              { 'data-testid': 'shards' },
              h('caption', {}, 'Shards'),
              h(
                'thead',
                {},
                h('tr', {}, h('th', {}, 'Shard'), h('th', {}, 'Holder'), h('th', {}, 'Lag')),
              ),
              h(
                'tbody',
                {},
                st.shards.map((s) =>
                  h(
                    'tr',
                    {},
                    h('td', {}, String(s.shard)),
                    h(
                      'td',
                      {},
                      s.holder ?? '— none —',
                      s.claimedBy.length > 1 ? ` (moving: ${s.claimedBy.join(', ')})` : '',
                    ),
                    h('td', {}, String(s.lag)),
                  ),
                ),
              ),
            ),
          ]
        : null,
    ),
    h(
      'section.card',
      { 'aria-labelledby': 'h-queues' },
      h('h2', { id: 'h-queues' }, 'Queues'),
      failed(o.queues),
      Array.isArray(o.queues)
        ? h(
            'table',
            {},
            h(
              'thead',
              {},
              h(
                'tr',
                {},
                h('th', {}, 'Queue'),
                h('th', {}, 'Waiting'),
                h('th', {}, 'In flight'),
                h('th', {}, 'Limit'),
              ),
            ),
            h(
              'tbody',
              {},
              o.queues.length ? null : h('tr', {}, h('td', { colspan: 4 }, 'none')),
              o.queues.map((q) =>
                h(
                  'tr',
                  {},
                  h('td', {}, q.queue),
                  h('td', {}, String(q.pending)),
                  h('td', {}, String(q.inFlight)),
                  h('td', {}, q.limit < 0 ? '∞' : String(q.limit)),
                ),
              ),
            ),
          )
        : null,
    ),
    h(
      'section.card.wide',
      {},
      failed(o.failures),
      o.failures?.workflows ? wfTable(o.failures.workflows, 'Latest failures') : null,
    ),
    h(
      'section.card.wide',
      {},
      failed(o.review),
      o.review?.workflows ? wfTable(o.review.workflows, 'Waiting for review') : null,
    ),
    h('p.muted.wide', {}, `updated ${new Date(o.at).toLocaleTimeString()} (live)`),
  );
}

async function overviewPage() {
  document.title = 'Overview · jetflow';
  main.replaceChildren(h('h1', {}, 'Overview'), h('p', {}, 'Loading…'));
  const show = (o) => main.replaceChildren(h('h1', {}, 'Overview'), renderOverview(o));
  try {
    show(await api('/overview'));
  } catch (e) {
    main.replaceChildren(h('h1', {}, 'Overview'), h('p.err', {}, e.message));
  }
  listen('/overview/events', { overview: show });
}

// ---- Search ------------------------------------------------------------------------------------

const FILTERS = [
  ['type', 'Type', 'input'],
  ['status', 'Status', ['', 'running', 'deferred', 'completed', 'failed', 'canceled']],
  ['state', 'State', 'input', 'a path, or a prefix such as shipping.*'],
  ['inStateLongerThan', 'In state longer than', 'input', 'e.g. 30s, 5m, 2h, 1d'],
  ['attributes', 'Attributes', 'input', 'key=value, comma-separated'],
  ['idPrefix', 'ID prefix', 'input'],
  ['errorType', 'Error type', 'input'],
];

function filterQuery(params) {
  const q = {};
  for (const [k] of FILTERS) if (params.get(k)) q[k] = params.get(k);
  if (params.get('needsReview') === 'true') q.needsReview = 'true';
  return q;
}

async function searchPage(params) {
  document.title = 'Search · jetflow';
  const controls = {};
  const form = h(
    'form.filters',
    { role: 'search', 'aria-label': 'Workflow filters' },
    FILTERS.map(([k, label, kind, hint]) => {
      const c = Array.isArray(kind)
        ? h(
            'select',
            { name: k },
            kind.map((o) => h('option', { value: o }, o || 'any')),
          )
        : h('input', { name: k, autocomplete: 'off' });
      c.value = params.get(k) ?? '';
      controls[k] = c;
      return field(label, c, hint);
    }),
    (() => {
      const cb = h('input', { type: 'checkbox', name: 'needsReview', id: 'f-review' });
      cb.checked = params.get('needsReview') === 'true';
      controls.needsReview = cb;
      return h('div.field.check', {}, cb, h('label', { for: 'f-review' }, 'Needs review only'));
    })(),
    h('div.row', {}, h('button.primary', { type: 'submit' }, 'Search')),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const [k, c] of Object.entries(controls)) {
      if (c.type === 'checkbox') {
        if (c.checked) p.set(k, 'true');
      } else if (c.value) p.set(k, c.value);
    }
    location.hash = `#/search?${p}`;
  });
  const results = h('div', { 'aria-live': 'polite' });
  const bulk = h('section.card', { 'aria-labelledby': 'h-bulk' });
  main.replaceChildren(h('h1', {}, 'Search'), form, results, bulk);
  const query = filterQuery(params);
  const cursors = [''];
  const load = async (cursor) => {
    results.replaceChildren(h('p', {}, 'Searching…'));
    try {
      const r = await api(
        `/search?${new URLSearchParams({ ...query, limit: '50', ...(cursor ? { cursor } : {}) })}`,
      );
      const page = cursors.indexOf(cursor);
      results.replaceChildren(
        wfTable(r.workflows, `${r.workflows.length} workflow(s), page ${page + 1}`),
        h(
          'div.row',
          {},
          h(
            'button',
            { type: 'button', disabled: page <= 0, onclick: () => load(cursors[page - 1]) },
            'Previous page',
          ),
          h(
            'button',
            {
              type: 'button',
              disabled: !r.cursor,
              onclick: () => {
                if (!cursors.includes(r.cursor)) cursors.push(r.cursor);
                void load(r.cursor);
              },
            },
            'Next page',
          ),
        ),
      );
    } catch (e) {
      results.replaceChildren(
        h('p.err', { role: 'alert' }, `${e.body?.code ?? 'error'}: ${e.message}`),
      );
    }
  };
  await load('');
  bulkPanel(bulk, query);
}

/** Bulk actions on the search's matches: a dry-run count first, then the job with a progress bar. */
function bulkPanel(box, query) {
  const verb = h(
    'select',
    { name: 'verb' },
    ['retry', 'resolve', 'fail', 'terminate', 'pause', 'resume'].map((v) =>
      h('option', { value: v }, v),
    ),
  );
  const actorId = h('input', { name: 'actorId', autocomplete: 'off' });
  const reason = h('input', { name: 'reason', autocomplete: 'off' });
  const status = h('div', { role: 'status', 'aria-live': 'polite' });
  const apply = h('button.primary', { type: 'button', disabled: true }, 'Apply');
  const body = () => {
    const filters = { ...query };
    const q = {};
    if (filters.type) q.type = filters.type;
    if (filters.status) q.status = filters.status;
    if (filters.state) q.state = filters.state;
    if (filters.idPrefix) q.idPrefix = filters.idPrefix;
    if (filters.errorType) q.errorType = filters.errorType;
    if (filters.needsReview) q.needsReview = true;
    return {
      verb: verb.value,
      query: q,
      reason: reason.value.trim(),
      by: operator(),
      ...(actorId.value ? { actorId: actorId.value } : {}),
    };
  };
  const count = async () => {
    apply.disabled = true;
    if (!reason.value.trim())
      return status.replaceChildren(h('p.err', {}, 'A reason is required.'));
    try {
      const r = await api('/bulk', { ...body(), dryRun: true });
      status.replaceChildren(
        h(
          'p',
          {},
          `Dry run: ${r.matched} workflow(s) match; ${verb.value} would be applied to each.`,
        ),
      );
      apply.textContent = `Apply ${verb.value} to ${r.matched}`;
      apply.disabled = r.matched === 0;
    } catch (e) {
      status.replaceChildren(h('p.err', {}, `${e.body?.code}: ${e.message}`));
    }
  };
  apply.addEventListener('click', async () => {
    apply.disabled = true;
    try {
      const r = await api('/bulk', body());
      const bar = h('progress', {
        max: String(Math.max(1, r.matched)),
        value: '0',
        'aria-label': 'bulk progress',
      });
      const text = h('p');
      status.replaceChildren(bar, text);
      listen(`/bulk/${encodeURIComponent(r.jobId)}/events`, {
        progress: (p) => {
          bar.setAttribute('value', String(p.processed));
          text.textContent = `job ${p.jobId}: ${p.state}; ${p.processed}/${p.matched} processed, ${p.done} done, ${p.failed} failed, ${p.skipped} skipped`;
        },
      });
    } catch (e) {
      status.replaceChildren(h('p.err', {}, `${e.body?.code}: ${e.message}`));
    }
  });
  box.replaceChildren(
    h('h2', { id: 'h-bulk' }, 'Bulk action on these filters'),
    h(
      'div.filters',
      {},
      field('Action', verb),
      field('Activity (actor id)', actorId, 'retry/resolve/fail; empty: every parked one'),
      field('Bulk reason', reason),
    ),
    h('div.row', {}, h('button', { type: 'button', onclick: count }, 'Count (dry run)'), apply),
    status,
  );
}

// ---- Batches, concurrency keys, triggers ---------------------------------------------------------

/** The focused control's name (or label), to focus its new copy after a re-render. */
function focusKey() {
  const e = document.activeElement;
  if (!e || !main.contains(e)) return undefined;
  return e.getAttribute('aria-label') ?? e.getAttribute('name') ?? e.textContent;
}
function refocus(key) {
  if (key === undefined || main.contains(document.activeElement)) return;
  const again = [...main.querySelectorAll('button,input,select,textarea,a')].find(
    (e) => (e.getAttribute('aria-label') ?? e.getAttribute('name') ?? e.textContent) === key,
  );
  again?.focus();
}

/**
 * Run `f` now and every `ms` until the page changes (these pages poll: no watch to follow). The
 * keyboard focus stays on the same control across the re-render.
 */
function every(ms, f) {
  let stopped = false;
  let t;
  const tick = async () => {
    const key = focusKey();
    await f();
    refocus(key);
    if (!stopped) t = setTimeout(tick, ms);
  };
  const prev = cleanup;
  cleanup = () => {
    stopped = true;
    clearTimeout(t);
    prev();
  };
  return tick();
}

const errLine = (e) => h('p.err', { role: 'alert' }, `${e.body?.code ?? 'error'}: ${e.message}`);

/** A small form of one field that sets a query parameter of this page's hash. */
function lookupForm(label, name, value, page, options) {
  const c = options
    ? h(
        'select',
        { name },
        options.map((o) => h('option', { value: o }, o)),
      )
    : h('input', { name, autocomplete: 'off', required: true });
  c.value = value ?? (options ? (options[0] ?? '') : '');
  const form = h(
    'form.filters',
    { 'aria-label': label },
    field(label, c),
    h('div.row', {}, h('button.primary', { type: 'submit' }, 'Show')),
  );
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.hash = `#/${page}?${new URLSearchParams({ [name]: c.value })}`;
  });
  return form;
}

/** A verb with a reason (dialog), its answer in `answer`, then `after()`. */
function withReason(answer, title, what, path, base, after) {
  confirmAction(title, [], (values) => {
    answer.pending(what);
    api(path, { ...base, ...values }).then(
      (r) => (answer.show(true, what, r), void after()),
      (e) => answer.show(false, what, e.body ?? { message: e.message }),
    );
  });
}

async function batchesPage(params) {
  document.title = 'Batches · jetflow';
  const id = params.get('id') ?? '';
  const answer = answerBox();
  const body = h('div', { 'aria-live': 'polite' });
  main.replaceChildren(
    h('h1', {}, 'Batches'),
    lookupForm('Batch id', 'id', id, 'batches'),
    answer,
    body,
  );
  if (!id)
    return body.replaceChildren(h('p.muted', {}, 'Enter a batch id (jetflow batch create --id).'));
  const path = `/batches/${encodeURIComponent(id)}`;
  const itemFilter = { status: params.get('items') ?? '', cursors: [undefined], page: 0 };
  const items = h('div');
  const loadItems = async () => {
    const q = new URLSearchParams({ limit: '50' });
    if (itemFilter.status) q.set('status', itemFilter.status);
    const cursor = itemFilter.cursors[itemFilter.page];
    if (cursor !== undefined) q.set('cursor', String(cursor));
    try {
      const r = await api(`${path}/items?${q}`);
      const sel = h(
        'select',
        {
          name: 'itemStatus',
          onchange: () => {
            itemFilter.status = sel.value;
            itemFilter.cursors = [undefined];
            itemFilter.page = 0;
            void loadItems();
          },
        },
        ['', 'pending', 'running', 'succeeded', 'failed', 'canceled'].map((s) =>
          h('option', { value: s }, s || 'any'),
        ),
      );
      sel.value = itemFilter.status;
      items.replaceChildren(
        h('h2', {}, 'Items'),
        field('Item status', sel),
        h(
          'table',
          { 'aria-label': 'Batch items' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ['#', 'Key', 'Workflow', 'Status', 'Runs', 'Error'].map((t) => h('th', {}, t)),
            ),
          ),
          h(
            'tbody',
            {},
            r.items.length === 0 ? h('tr', {}, h('td', { colspan: 6 }, 'none')) : null,
            r.items.map((it) =>
              h(
                'tr',
                {},
                h('td', {}, String(it.index)),
                h('td', {}, it.key),
                h('td', {}, h('a', { href: wfHref(status.type, it.wf) }, it.wf)),
                h('td', {}, badge(it.status)),
                h('td', {}, String(it.attempts)),
                h('td', {}, it.error ? `${it.error.type ?? ''}: ${it.error.message ?? ''}` : ''),
              ),
            ),
          ),
        ),
        h(
          'div.row',
          {},
          h(
            'button',
            {
              type: 'button',
              disabled: itemFilter.page === 0,
              onclick: () => (itemFilter.page--, void loadItems()),
            },
            'Previous items',
          ),
          h(
            'button',
            {
              type: 'button',
              disabled: r.cursor === undefined,
              onclick: () => {
                itemFilter.cursors[itemFilter.page + 1] = r.cursor;
                itemFilter.page++;
                void loadItems();
              },
            },
            'Next items',
          ),
        ),
      );
    } catch (e) {
      items.replaceChildren(errLine(e));
    }
  };
  let status;
  const summary = h('section.card.wide', { 'aria-label': 'Batch status' });
  const refresh = async () => {
    try {
      status = await api(path);
    } catch (e) {
      return summary.replaceChildren(errLine(e));
    }
    const s = status;
    const c = s.counts;
    const act = (verb, label, needsReason = true) =>
      h(
        'button',
        {
          type: 'button',
          onclick: () =>
            needsReason
              ? withReason(answer, `${label} batch ${id}`, verb, `${path}/${verb}`, {}, refresh)
              : (answer.pending(verb),
                api(`${path}/${verb}`, {}).then(
                  (r) => (answer.show(true, verb, r), void refresh()),
                  (e) => answer.show(false, verb, e.body ?? { message: e.message }),
                )),
        },
        label,
      );
    summary.replaceChildren(
      h(
        'div',
        {},
        h('h2', {}, `Batch ${s.id} — ${s.type}`),
        h(
          'dl',
          {},
          h('dt', {}, 'State'),
          h(
            'dd',
            { 'data-testid': 'batch-state' },
            badge(s.state),
            s.outcome ? [' ', badge(s.outcome)] : null,
            s.sealed ? ' sealed' : ' open to items',
            s.paused ? [' ', h('span.badge.s-paused', {}, 'paused')] : null,
            s.canceled ? ' canceled' : null,
          ),
          h('dt', {}, 'Generation'),
          h('dd', {}, String(s.generation)),
          h('dt', {}, 'Rate'),
          h(
            'dd',
            {},
            s.rate !== undefined ? `${s.rate}/s` : '—',
            s.etaMs !== undefined ? `, ETA ${Math.ceil(s.etaMs / 1000)}s` : '',
          ),
          h('dt', {}, 'Updated'),
          h('dd', {}, `${ago(s.updatedAt)} ago`),
        ),
        h(
          'div',
          { 'data-testid': 'batch-counts' },
          bars(`Items (${c.total})`, {
            pending: c.pending,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            canceled: c.canceled,
          }),
        ),
        (s.jobs ?? []).map((j) =>
          h(
            'p',
            {},
            `${j.verb} job ${j.jobId}: ${j.state} `,
            h('progress', {
              max: String(Math.max(1, j.matched)),
              value: String(j.processed),
              'aria-label': `${j.verb} job progress`,
            }),
            ` ${j.processed}/${j.matched}, ${j.done} acted on`,
          ),
        ),
        h(
          'div.row',
          {},
          act('seal', 'Seal', false),
          act('pause', 'Pause'),
          act('resume', 'Resume'),
          act('retry-failed', 'Retry failed items'),
          h(
            'button.danger',
            {
              type: 'button',
              onclick: () =>
                withReason(answer, `Cancel batch ${id}`, 'cancel', `${path}/cancel`, {}, refresh),
            },
            'Cancel batch',
          ),
        ),
      ),
    );
  };
  body.replaceChildren(summary, h('section.card.wide', {}, items));
  await every(1_000, async () => {
    await refresh();
    if (status) await loadItems();
  });
}

async function keysPage(params) {
  document.title = 'Keys · jetflow';
  const info = await api('/info').catch(() => ({ types: [] }));
  // `type@version` → type
  const types = [...new Set((info.types ?? []).map((t) => String(t).replace(/@\d+$/, '')))];
  const type = params.get('type') ?? types[0] ?? '';
  const answer = answerBox();
  const body = h('div', { 'aria-live': 'polite' });
  main.replaceChildren(
    h('h1', {}, 'Concurrency keys'),
    types.length
      ? lookupForm('Workflow type', 'type', type, 'keys', types)
      : lookupForm('Workflow type', 'type', type, 'keys'),
    answer,
    body,
  );
  if (!type) return;
  const refresh = async () => {
    let r;
    try {
      r = await api(`/keys?${new URLSearchParams({ type })}`);
    } catch (e) {
      return body.replaceChildren(errLine(e));
    }
    const act = (verb, label, wfId, extra = {}) =>
      h(
        'button',
        {
          type: 'button',
          'aria-label': `${label} ${wfId}`,
          onclick: () =>
            withReason(
              answer,
              `${label} ${type}/${wfId}`,
              verb,
              `/workflows/${encodeURIComponent(type)}/${encodeURIComponent(wfId)}/${verb}`,
              { ...extra, requestId: `console-${crypto.randomUUID()}` },
              refresh,
            ),
        },
        label,
      );
    const secs = (ms) => `${(ms / 1000).toFixed(1)}s`;
    body.replaceChildren(
      h(
        'div',
        {},
        r.keys.length === 0
          ? h('p.muted', {}, `${type}: no concurrency key is held or waited for`)
          : null,
        r.keys.map((k) =>
          h(
            'section.card.wide',
            { 'aria-label': `key ${k.key}` },
            h(
              'h2',
              {},
              `${k.key} — ${k.holders.length}/${k.limit} held, ${k.waiters.length} waiting`,
            ),
            h(
              'table',
              { 'aria-label': `Key ${k.key}` },
              h(
                'thead',
                {},
                h(
                  'tr',
                  {},
                  ['Position', 'Workflow', 'Since', 'Notes', 'Actions'].map((t) => h('th', {}, t)),
                ),
              ),
              h(
                'tbody',
                {},
                k.holders.map((x) =>
                  h(
                    'tr',
                    {},
                    h('td', {}, 'holder'),
                    h('td', {}, h('a', { href: wfHref(type, x.id) }, x.id)),
                    h(
                      'td',
                      {},
                      `held ${secs(r.at - x.at)}`,
                      x.at > x.queuedAt ? `, waited ${secs(x.at - x.queuedAt)}` : '',
                    ),
                    h(
                      'td',
                      {},
                      [
                        x.via ? `via ${x.via}` : '',
                        x.canceling ? `canceling for ${x.canceling}` : '',
                        x.promoted ? 'promoted' : '',
                      ]
                        .filter(Boolean)
                        .join('; '),
                    ),
                    h('td', {}, act('release', 'Release', x.id, { key: k.key })),
                  ),
                ),
                k.waiters.map((w, i) =>
                  h(
                    'tr',
                    {},
                    h('td', {}, String(i + 1)),
                    h('td', {}, h('a', { href: wfHref(type, w.id) }, w.id)),
                    h('td', {}, `waiting ${secs(r.at - w.queuedAt)}`),
                    h(
                      'td',
                      {},
                      [
                        w.promoted ? 'promoted' : '',
                        w.priority !== undefined ? `priority ${w.priority}` : '',
                        w.fairness !== undefined ? `fairness ${w.fairness}` : '',
                      ]
                        .filter(Boolean)
                        .join('; '),
                    ),
                    h('td', {}, act('promote', 'Promote', w.id), ' ', act('skip', 'Skip', w.id)),
                  ),
                ),
              ),
            ),
          ),
        ),
      ),
    );
  };
  await every(1_000, refresh);
}

async function triggersPage(params) {
  document.title = 'Triggers · jetflow';
  const answer = answerBox();
  const list = h('div.card', { 'aria-live': 'polite' });
  const parked = h('section.card.wide', { 'aria-label': 'Parked messages' });
  main.replaceChildren(h('h1', {}, 'Triggers'), answer, list, parked);
  const showParked = async (name) => {
    try {
      const r = await api(`/triggers/${encodeURIComponent(name)}/parked`);
      parked.replaceChildren(
        h('h2', {}, `Parked messages of ${name} (${r.parked.length})`),
        h(
          'table',
          { 'aria-label': `Parked messages of ${name}` },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ['Seq', 'Subject', 'Key', 'At', 'Error', 'Body'].map((t) => h('th', {}, t)),
            ),
          ),
          h(
            'tbody',
            {},
            r.parked.length === 0 ? h('tr', {}, h('td', { colspan: 6 }, 'nothing parked')) : null,
            r.parked.map((p) =>
              h(
                'tr',
                {},
                h('td', {}, String(p.seq)),
                h('td', {}, p.subject),
                h('td', {}, p.key ?? '—'),
                h('td', {}, new Date(p.at).toLocaleString()),
                h('td', {}, `${p.error.code}: ${p.error.message}`),
                h('td', {}, folded(`${p.body.length} bytes`, p.body)),
              ),
            ),
          ),
        ),
        h(
          'p.muted',
          {},
          `replay, skip, rewind: jetflow triggers replay|skip|rewind ${name} (they need the engine holding it)`,
        ),
      );
    } catch (e) {
      parked.replaceChildren(errLine(e));
    }
  };
  const refresh = async () => {
    let r;
    try {
      r = await api('/triggers');
    } catch (e) {
      return list.replaceChildren(errLine(e));
    }
    const toggle = (t) => {
      const verb = t.paused ? 'resume' : 'pause';
      answer.pending(verb);
      api(`/triggers/${encodeURIComponent(t.name)}/${verb}`, {}).then(
        (x) => (answer.show(true, verb, x), void refresh()),
        (e) => answer.show(false, verb, e.body ?? { message: e.message }),
      );
    };
    list.replaceChildren(
      h(
        'table',
        { 'aria-label': 'Triggers' },
        h(
          'thead',
          {},
          h(
            'tr',
            {},
            [
              'Trigger',
              'Workflow',
              'Stream',
              'Filter',
              'Holder',
              'Pending',
              'Parked',
              'Last error',
              'Actions',
            ].map((x) => h('th', {}, x)),
          ),
        ),
        h(
          'tbody',
          {},
          r.triggers.length === 0
            ? h('tr', {}, h('td', { colspan: 9 }, 'no triggers are declared by the engines'))
            : null,
          r.triggers.map((t) =>
            h(
              'tr',
              { 'data-trigger': t.name },
              h(
                'td',
                {},
                h('strong', {}, t.name),
                t.paused ? [' ', h('span.badge.s-paused', {}, 'paused')] : null,
              ),
              h('td', {}, `${t.kind} ${t.workflowType}`),
              h('td', {}, t.stream ?? 'core subject (at most once)'),
              h('td', {}, t.filter),
              h('td', {}, t.holder ?? '—'),
              h('td', {}, `${t.pending ?? '—'} (${t.ackPending ?? '—'} unacked)`),
              h('td', {}, String(t.parked)),
              h(
                'td',
                {},
                t.lastError
                  ? `${t.lastError.code} at seq ${t.lastError.seq}: ${t.lastError.message}`
                  : '',
              ),
              h(
                'td',
                {},
                h(
                  'button',
                  {
                    type: 'button',
                    'aria-label': `${t.paused ? 'Resume' : 'Pause'} ${t.name}`,
                    onclick: () => toggle(t),
                  },
                  t.paused ? 'Resume' : 'Pause',
                ),
                ' ',
                h(
                  'button',
                  {
                    type: 'button',
                    'aria-label': `Parked messages of ${t.name}`,
                    onclick: () =>
                      (location.hash = `#/triggers?parked=${encodeURIComponent(t.name)}`),
                  },
                  `Parked (${t.parked})`,
                ),
              ),
            ),
          ),
        ),
      ),
    );
  };
  const name = params.get('parked');
  await every(2_000, async () => {
    await refresh();
    if (name) await showParked(name);
  });
}

/** The node statuses each node verb is allowed in (ACTIVITY-TREES §2.7). */
const NODE_VERBS = [
  ['retry', 'Retry', ['retrying', 'errored']],
  ['resolve', 'Resolve', ['scheduled', 'paused', 'running', 'retrying', 'errored']],
  ['shutdown', 'Shut down', ['scheduled', 'paused', 'running', 'retrying', 'errored']],
  [
    'cancel',
    'Cancel',
    ['ready', 'scheduled', 'paused', 'running', 'retrying', 'errored', 'awaitingChildren'],
  ],
];

/** An activity tree's nodes, nested, with modes and statuses; verbs on the nodes that allow them. */
function nodeTree(tree, onVerb, jsonField) {
  const item = (n) => {
    const errored = n.status === 'errored';
    return h(
      'li',
      { 'data-node': n.id, class: errored ? 'failed' : '' },
      h(
        'div.head',
        {},
        h('strong', {}, n.name),
        ` [${n.id}] `,
        badge(n.status),
        n.outcome && n.outcome !== 'completed' ? ` /${n.outcome}` : '',
        ' ',
        h('span.muted', {}, n.mode),
        n.attempt > 0 ? ` attempt ${n.attempt}/${n.maxAttempts}` : '',
        n.run > 1 ? ` run ${n.run}` : '',
        n.blockedBy ? ` blocked by ${n.blockedBy}` : '',
      ),
      n.error ? h('div.err', {}, `${n.error.type ?? ''}: ${n.error.message ?? ''}`) : null,
      errored || n.status === 'retrying'
        ? h(
            'div.row',
            {},
            NODE_VERBS.filter(([, , allowed]) => allowed.includes(n.status)).map(([v, label]) =>
              h(
                v === 'cancel' || v === 'shutdown' ? 'button.small.danger' : 'button.small',
                {
                  type: 'button',
                  'aria-label': `${label} node ${n.id}`,
                  onclick: () =>
                    onVerb(
                      v,
                      n.id,
                      v === 'resolve' ? [jsonField('Output (JSON)', 'output', 'null')] : [],
                    ),
                },
                label,
              ),
            ),
          )
        : null,
      n.children?.length ? h('ul', {}, n.children.map(item)) : null,
    );
  };
  return h(
    'div',
    {},
    h(
      'p',
      {},
      `${Object.entries(tree.counts ?? {})
        .filter(([, v]) => v > 0)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
      tree.dispatchPaused ? ' — dispatch paused' : '',
      tree.closed ? ' — closed' : '',
      tree.truncated ? ' — first 2,000 nodes' : '',
    ),
    h('ul.nodetree', { 'aria-label': 'Activity tree nodes' }, tree.nodes.map(item)),
  );
}

// ---- Workflow page -----------------------------------------------------------------------------

function timeline(entries, onReset) {
  const steps = entries.filter((e) => e.kind === 'step');
  const last = steps.at(-1)?.step;
  return h(
    'ol.timeline',
    { 'aria-label': 'Journal' },
    entries.map((e) => {
      const head = [];
      if (e.kind === 'step') {
        head.push(h('span.step', {}, `#${e.step}`), ' ', h('strong', {}, e.event?.type ?? '?'));
        head.push(' ', h('span.muted', {}, `(${e.cause})`), ' ');
        head.push(
          `${e.from ? e.from.paths.join(', ') : '∅'} → ${e.to.paths.join(', ')}`,
          ' ',
          badge(e.status),
        );
        if (e.paused) head.push(' ', h('span.badge.s-paused', {}, 'paused'));
        if (e.held) head.push(' ', h('span.badge', {}, 'held'));
        if (e.needsReview) head.push(' ', h('span.badge.s-review', {}, 'parked'));
      } else head.push(h('strong', {}, e.kind), ' ', e.event?.type ?? '');
      const at = e.at ?? e.time;
      return h(
        'li',
        {
          class:
            e.kind === 'step' && e.status === 'failed' ? 'failed' : e.operator ? 'operator' : '',
        },
        h(
          'div.head',
          {},
          head,
          at
            ? h(
                'time.muted',
                { datetime: new Date(at).toISOString() },
                ` ${new Date(at).toLocaleTimeString()}`,
              )
            : null,
        ),
        e.operator
          ? h(
              'div.op',
              {},
              `operator ${e.operator.action ?? e.operator.verb}: ${e.operator.by} — “${e.operator.reason}”`,
            )
          : null,
        e.activity && e.activity.ok === false
          ? h(
              'div.err',
              {},
              `activity ${e.activity.actorId} attempt ${e.activity.attempt}: ${e.activity.error?.type ?? ''} ${e.activity.error?.message ?? ''}`,
            )
          : null,
        e.error ? h('div.err', {}, `${e.error.type}: ${e.error.message}`) : null,
        e.effects?.length
          ? h('div.muted', {}, `effects: ${e.effects.map((x) => x.kind ?? x.type).join(', ')}`)
          : null,
        folded('payload', { event: e.event, effects: e.effects, context: e.context }),
        e.kind === 'step' && e.step !== last
          ? h(
              'button.small',
              {
                type: 'button',
                onclick: () => onReset(e.step),
                'aria-label': `Reset to step ${e.step}`,
              },
              `Reset to step ${e.step}`,
            )
          : null,
      );
    }),
  );
}

async function workflowPage(type, id) {
  document.title = `${type}/${id} · jetflow`;
  const answer = answerBox();
  const body = h('div');
  main.replaceChildren(h('h1', {}, h('span.muted', {}, `${type} / `), id), answer, body);
  const act = (what, path, req, raw) =>
    answer.pending(what) ||
    api(`/workflows/${encodeURIComponent(type)}/${encodeURIComponent(id)}/${path}`, req, raw).then(
      (r) => (answer.show(true, what, r), void refresh()),
      (e) => answer.show(false, what, e.body ?? { message: e.message }),
    );
  const verb = (v, extra = [], base = {}) =>
    confirmAction(`${v} ${type}/${id}`, extra, (values) =>
      act(v, v, { ...base, ...values, requestId: `console-${crypto.randomUUID()}` }),
    );
  let data;
  // What the operator typed survives the live re-renders.
  const typed = { event: undefined, payload: '{}' };
  const render = () => {
    const q = data.query;
    const entries = data.journal?.entries ?? [];
    const steps = entries.filter((e) => e.kind === 'step');
    const current = pathsOf(q.value);
    const parked = (q.needsReview ?? []).map((r) => r.actorId);
    const parkedStates = steps
      .filter((s) => s.needsReview)
      .map((s) => s.to.paths)
      .flat();
    const chartBox = h(
      'section.card.wide',
      { 'aria-labelledby': 'h-chart' },
      h('h2', { id: 'h-chart' }, 'Statechart'),
    );
    if (data.chart) {
      chartBox.append(
        h(
          'div.chartwrap',
          {},
          drawChart(data.chart, {
            current,
            visited: steps.flatMap((s) => [...(s.from?.paths ?? []), ...s.to.paths]),
            taken: steps.flatMap((s) =>
              s.from
                ? s.from.paths.flatMap((f) => s.to.paths.filter((t) => t !== f).map((t) => [f, t]))
                : [],
            ),
            failed: q.status === 'failed',
            parked: parked.length ? parkedStates.filter((p) => current.includes(p)) : [],
          }),
        ),
      );
    } else
      chartBox.append(
        h(
          'p.muted',
          {},
          `This console does not load the definition of ${q.type}@${q.version}; path taken: `,
          [...new Set(steps.map((s) => s.to.paths.join('+')))].join(' → '),
        ),
      );
    const running = q.status === 'running' || q.status === 'deferred';
    // Signal form: the events the workflow accepts now.
    const evSel = h(
      'select',
      { name: 'event', onchange: () => (typed.event = evSel.value) },
      q.accepts.map((a) => h('option', { value: a }, a)),
    );
    if (typed.event && q.accepts.includes(typed.event)) evSel.value = typed.event;
    const payload = h('textarea', {
      name: 'payload',
      rows: 3,
      spellcheck: 'false',
      oninput: () => (typed.payload = payload.value),
    });
    payload.value = typed.payload;
    const signalForm = h(
      'form.signal',
      { 'aria-label': 'Send a signal' },
      h('h3', {}, 'Send a signal'),
      q.accepts.length ? null : h('p.muted', {}, 'It accepts no event now.'),
      field('Event', evSel, 'the events it accepts now'),
      field('Payload (JSON object)', payload),
      h('button.primary', { type: 'submit', disabled: q.accepts.length === 0 }, 'Send signal'),
    );
    signalForm.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const msgId = `console-${crypto.randomUUID()}`;
      let fields;
      try {
        fields = JSON.parse(payload.value || '{}');
      } catch {
        // Not JSON: sent as typed, and the server's answer (its error) is shown.
        return void act(
          'signal',
          'signal',
          undefined,
          `{"msgId":${JSON.stringify(msgId)},"event":${payload.value}}`,
        );
      }
      // Not an object: sent as it is; the server refuses it with its reason.
      const event =
        fields !== null && typeof fields === 'object' && !Array.isArray(fields)
          ? { ...fields, type: evSel.value }
          : fields;
      void act('signal', 'signal', { event, msgId });
    });
    const jsonField = (label, name, def) => ({
      label,
      control: () => h('textarea', { name, rows: 3, spellcheck: 'false' }, def),
      read: (c) => ({ [name]: JSON.parse(c.value) }),
    });
    const actions = h(
      'section.card',
      { 'aria-labelledby': 'h-actions' },
      h('h2', { id: 'h-actions' }, 'Actions'),
      h(
        'div.row',
        {},
        h(
          'button',
          { type: 'button', disabled: !running || q.paused, onclick: () => verb('pause') },
          'Pause',
        ),
        h(
          'button',
          { type: 'button', disabled: !q.paused, onclick: () => verb('resume') },
          'Resume',
        ),
        h(
          'button.danger',
          { type: 'button', disabled: !running, onclick: () => verb('terminate') },
          'Terminate',
        ),
      ),
      (q.needsReview ?? []).map((r) =>
        h(
          'div.parked',
          { 'aria-label': `parked activity ${r.actorId}` },
          h(
            'p',
            {},
            h('strong', {}, `${r.activity} (${r.actorId})`),
            ` parked after ${r.attempts} attempt(s): ${r.error?.type ?? ''} ${r.error?.message ?? ''}`,
          ),
          h(
            'div.row',
            {},
            h(
              'button',
              {
                type: 'button',
                onclick: () => verb('retry', [], { actorId: r.actorId }),
                'aria-label': `Retry ${r.actorId}`,
              },
              'Retry',
            ),
            h(
              'button',
              {
                type: 'button',
                onclick: () =>
                  verb('resolve', [jsonField('Output (JSON)', 'output', 'null')], {
                    actorId: r.actorId,
                  }),
                'aria-label': `Resolve ${r.actorId}`,
              },
              'Resolve',
            ),
            h(
              'button',
              {
                type: 'button',
                onclick: () => verb('fail', [], { actorId: r.actorId }),
                'aria-label': `Fail ${r.actorId}`,
              },
              'Fail',
            ),
          ),
        ),
      ),
      running ? signalForm : null,
    );
    const waiting = q.waiting;
    const pending = h(
      'section.card',
      { 'aria-labelledby': 'h-pending' },
      h('h2', { id: 'h-pending' }, 'Pending'),
      !waiting || (waiting.tasks.length === 0 && waiting.timers.length === 0)
        ? h('p.muted', {}, 'nothing pending')
        : null,
      h(
        'ul',
        {},
        (waiting?.tasks ?? []).map((t) =>
          h(
            'li',
            {},
            `${t.kind} ${t.actorId}: ${t.activity ?? t.target?.type ?? ''}${t.queue ? ` on queue ${t.queue}` : ''}${t.parked ? ' — parked for review' : ''}`,
          ),
        ),
        (waiting?.timers ?? []).map((t) =>
          h(
            'li',
            {},
            `timer ${t.id}: due ${t.dueAt ? `${new Date(t.dueAt).toLocaleString()} (in ${ago(Date.now() * 2 - Date.parse(t.dueAt))})` : 'unknown'}`,
          ),
        ),
      ),
      data.why && !data.why.error
        ? folded(`why: ${data.why.summary ?? data.why.stage ?? ''}`, data.why)
        : null,
    );
    const start = steps[0];
    body.replaceChildren(
      h(
        'section.summary',
        { 'aria-label': 'Status' },
        h(
          'dl',
          {},
          h('dt', {}, 'Status'),
          h(
            'dd',
            { 'data-testid': 'status' },
            badge(q.status),
            q.paused ? h('span.badge.s-paused', {}, `paused (${q.held ?? 0} held)`) : null,
          ),
          h('dt', {}, 'State'),
          h('dd', { 'data-testid': 'state' }, current.join(', ')),
          h('dt', {}, 'Step'),
          h('dd', {}, String(q.step)),
          h('dt', {}, 'Version'),
          h('dd', {}, String(q.version)),
          h('dt', {}, 'Updated'),
          h('dd', {}, `${ago(q.updatedAt)} ago`),
        ),
        q.error ? h('p.err', {}, `${q.error.type}: ${q.error.message}`) : null,
      ),
      h(
        'div.grid',
        {},
        chartBox,
        actions,
        pending,
        h(
          'section.card',
          { 'aria-labelledby': 'h-data' },
          h('h2', { id: 'h-data' }, 'Data'),
          folded('input', start?.event?.input),
          folded('context', q.context),
          folded('output', q.output),
        ),
        data.tree
          ? h(
              'section.card.wide',
              { 'aria-labelledby': 'h-tree' },
              h('h2', { id: 'h-tree' }, 'Activity tree'),
              data.tree.error
                ? h('p.err', {}, data.tree.error.message)
                : nodeTree(
                    data.tree,
                    (v, nodeId, extra = []) => verb(v, extra, { nodeId }),
                    jsonField,
                  ),
              h('p.muted', {}, 'prune and dispatch pause: jetflow prune|pause --node'),
            )
          : null,
        h(
          'section.card.wide',
          { 'aria-labelledby': 'h-timeline' },
          h(
            'h2',
            { id: 'h-timeline' },
            `Timeline (${entries.length} entries${data.journal?.truncated ? ', first 2,000' : ''})`,
          ),
          data.journal?.error
            ? h('p.err', {}, data.journal.error.message)
            : timeline(entries, (step) => verb('reset', [], { toStep: step })),
        ),
      ),
    );
  };
  let pendingRefresh;
  const refresh = async () => {
    try {
      const next = await api(`/workflows/${encodeURIComponent(type)}/${encodeURIComponent(id)}`);
      if (data && JSON.stringify(next) === JSON.stringify(data)) return;
      data = next;
      // Keep the keyboard focus where it was (a control with the same name or label).
      const focused = document.activeElement;
      const key = focused?.getAttribute?.('name') ?? focused?.getAttribute?.('aria-label');
      render();
      if (key && main.contains(document.activeElement) === false) {
        const again = [...main.querySelectorAll('[name],[aria-label]')].find(
          (e) => (e.getAttribute('name') ?? e.getAttribute('aria-label')) === key,
        );
        again?.focus();
      }
    } catch (e) {
      body.replaceChildren(
        h('p.err', { role: 'alert' }, `${e.body?.code ?? 'error'}: ${e.message}`),
      );
    }
  };
  await refresh();
  // From the step this page shows: what was journaled since its read comes too.
  const lastJournaled = (data?.journal?.entries ?? []).filter((e) => e.kind === 'step').at(-1);
  const shown = data ? Math.min(data.query.step, lastJournaled?.step ?? -1) : undefined;
  listen(
    `/workflows/${encodeURIComponent(type)}/${encodeURIComponent(id)}/events${shown === undefined ? '' : `?step=${shown}`}`,
    {
      entry: () => {
        clearTimeout(pendingRefresh);
        pendingRefresh = setTimeout(() => void refresh(), 100);
      },
    },
  );
}

route();
