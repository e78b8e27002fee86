/**
 * `jetflow console`: the web console's server (issue 19). A host role on the TypeScript `Client`
 * (no NATS code of its own): it serves the single-page app from the package's `console/` folder
 * and a small JSON API under `/api/`, plus server-sent event streams that follow a workflow's
 * journal, a bulk job and the overview. Every action goes through the Client with the console's
 * own NATS connection (the operator's credentials): the browser never talks to NATS.
 *
 * Failure semantics: an action's answer is the engine's reply (or its error, with its code) — a
 * 2xx means the step applied it. A timeout is "unknown" (503): the action may still be applied;
 * repeating it with the same request id (the console sends one per form submission) is applied
 * once.
 */
import { httpStatusOf } from '../http/status.js';
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import Fastify, { type FastifyError, type FastifyReply, type FastifyRequest } from 'fastify';
import { Type, type Static } from '@sinclair/typebox';
import type { Client } from '../client/index.js';
import { ConfigError, ErrorCode, JetflowError } from '../errors.js';
import { toJetflowError } from '../nats/connection.js';
import type { Registry } from '../engine/registry.js';
import { chartOf, type Chart } from '../engine/chart.js';
import { ADMIN_VERBS, type JournalEntry } from '../contracts/wire.js';
import { BATCH_ITEM_STATUSES } from '../contracts/batch.js';
import type { SearchRequest } from '../contracts/search.js';
import type { BulkRequest } from '../contracts/bulk.js';
import { repoRoot, packageVersion } from './package-root.js';
import { ENGINE_DEFAULTS } from '../config.js';

export interface ConsoleOptions {
  client: Client;
  /** Workflow definitions known here: their statecharts are drawn (others: the path only). */
  registry?: Registry;
  /** Inbox shards of the engines (for the overview's shard table; default 16). */
  shards?: number;
  /**
   * The engines' `failoverMs` (default 10 s, the engines' default): an engine silent for half of
   * it is left out of the overview, as the other engines leave it out, so that its shards show
   * their new holders as soon as they moved (`jetflow status` counts the same way).
   */
  failoverMs?: number;
  /** Interface to listen on (default 127.0.0.1). */
  host?: string;
  /** Port (default 8233; 0 picks a free one). */
  port?: number;
  /**
   * The console's own access token: when set, every `/api/` request needs it (header
   * `Authorization: Bearer <token>`, or the cookie the page sets after `POST /api/login`).
   * Required when `host` is not a loopback address: the console acts with the operator's NATS
   * credentials, so whoever reaches it unauthenticated could act as the operator.
   */
  token?: string;
  /** How often the overview stream refreshes (default 2 s). */
  overviewEveryMs?: number;
  log?: (line: string) => void;
}

export interface ConsoleServer {
  readonly url: string;
  close(): Promise<void>;
}

const Token = Type.String({ pattern: '^[A-Za-z0-9_=-]{1,256}$' });
const Params = Type.Object({ type: Token, id: Token });
const Operator = {
  reason: Type.String({ minLength: 1, maxLength: 1024 }),
  by: Type.String({ minLength: 1, maxLength: 256 }),
  requestId: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
};
const ActionBody = Type.Object(
  {
    ...Operator,
    actorId: Type.Optional(Type.String({ minLength: 1 })),
    attempts: Type.Optional(Type.Integer({ minimum: 1 })),
    output: Type.Optional(Type.Unknown()),
    error: Type.Optional(
      Type.Object({ type: Type.Optional(Type.String()), message: Type.Optional(Type.String()) }),
    ),
    toStep: Type.Optional(Type.Integer({ minimum: 0 })),
    nodeId: Type.Optional(Type.String({ minLength: 1 })),
    /** `release` of a holder whose record is gone: its concurrency key. */
    key: Type.Optional(Type.String({ minLength: 1 })),
  },
  { additionalProperties: false },
);
const SignalBody = Type.Object(
  {
    event: Type.Object({ type: Type.String({ minLength: 1 }) }, { additionalProperties: true }),
    msgId: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  },
  { additionalProperties: false },
);
/** The admin verbs the pages offer: all but `prune` (trees) and `migrate` (a job), CLI only. */
const VERBS = ADMIN_VERBS.filter((v) => v !== 'prune' && v !== 'migrate');
const BATCH_VERBS = ['seal', 'retry-failed', 'cancel', 'pause', 'resume'] as const;
const BatchParams = Type.Object({
  id: Token,
  verb: Type.Union(BATCH_VERBS.map((v) => Type.Literal(v))),
});
const BatchBody = Type.Object(
  {
    reason: Type.Optional(Type.String({ minLength: 1, maxLength: 1024 })),
    by: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
  },
  { additionalProperties: false },
);
const BatchItemsQuery = Type.Object({
  status: Type.Optional(Type.Union(BATCH_ITEM_STATUSES.map((v) => Type.Literal(v)))),
  cursor: Type.Optional(Type.Integer({ minimum: 0 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
});
const TriggerParams = Type.Object({ name: Token });
const EventsQuery = Type.Object({ step: Type.Optional(Type.Integer({ minimum: -1 })) });
const TriggerVerbParams = Type.Object({
  name: Token,
  verb: Type.Union([Type.Literal('pause'), Type.Literal('resume')]),
});
const KeysQuery = Type.Object({ type: Token, key: Type.Optional(Type.String({ minLength: 1 })) });
const VerbParams = Type.Object({
  type: Token,
  id: Token,
  verb: Type.Union(VERBS.map((v) => Type.Literal(v))),
});

/** An error as the browser sees it: `{ status, code, message, details? }`. */
export function errorBody(err: unknown): {
  status: number;
  code: string;
  message: string;
  details?: unknown;
} {
  const e = err as { name?: string; isNoResponders?: () => boolean };
  if (
    e?.name === 'NoRespondersError' ||
    (typeof e?.isNoResponders === 'function' && e.isNoResponders())
  )
    return {
      status: 503,
      code: ErrorCode.Unavailable,
      message: 'nothing answered (no engine or visibility replica running)',
    };
  const j = err instanceof JetflowError ? err : toJetflowError(err);
  const { status } = httpStatusOf(j);
  return {
    status,
    code: j.code,
    message: j.message,
    ...(j.details !== undefined ? { details: j.details } : {}),
  };
}

/** `30s`, `5m`, `2h`, `1d` or milliseconds → ms (NaN when malformed). */
function durationMs(s: string): number {
  const m = /^([0-9]+)(ms|s|m|h|d)?$/.exec(s.trim());
  if (!m) return NaN;
  const unit = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] ?? 'ms'] ?? 1;
  return Number(m[1]) * unit;
}

/** The search filters of the console's query string. */
export function searchFilters(q: Record<string, string | undefined>): SearchRequest {
  const f: SearchRequest = {};
  const s = (k: string) => (q[k] !== undefined && q[k] !== '' ? q[k] : undefined);
  if (s('type')) f.type = s('type')!;
  if (s('status')) f.status = s('status') as SearchRequest['status'];
  if (s('state')) f.state = s('state')!;
  if (s('idPrefix')) f.idPrefix = s('idPrefix')!;
  if (s('errorType')) f.errorType = s('errorType')!;
  if (s('errorCode')) f.errorCode = s('errorCode')!;
  if (s('needsReview') === 'true') f.needsReview = true;
  if (s('inStateLongerThan')) {
    const ms = durationMs(s('inStateLongerThan')!);
    if (!Number.isFinite(ms))
      throw new JetflowError(
        `time in state ${JSON.stringify(q.inStateLongerThan)}: use e.g. 30s, 5m, 2h, 1d`,
        {
          code: ErrorCode.BadRequest,
        },
      );
    f.inStateSince = { before: Date.now() - ms };
  }
  if (s('attributes')) {
    const attrs: Record<string, string | number | boolean | null> = {};
    for (const pair of s('attributes')!.split(',')) {
      const i = pair.indexOf('=');
      if (i <= 0)
        throw new JetflowError(`attribute ${JSON.stringify(pair)}: use key=value`, {
          code: ErrorCode.BadRequest,
        });
      const raw = pair.slice(i + 1).trim();
      let v: string | number | boolean | null = raw;
      try {
        const parsed: unknown = JSON.parse(raw);
        if (parsed === null || ['number', 'boolean', 'string'].includes(typeof parsed))
          v = parsed as string | number | boolean | null;
      } catch {
        v = raw;
      }
      attrs[pair.slice(0, i).trim()] = v;
    }
    f.attributes = attrs;
  }
  if (s('sort')) f.sort = s('sort') as SearchRequest['sort'];
  if (s('order')) f.order = s('order') as SearchRequest['order'];
  if (s('limit')) f.limit = Number(s('limit'));
  if (s('cursor')) f.cursor = s('cursor')!;
  return f;
}

/** A journal entry without its XState snapshot (large, and the context is kept beside it). */
function lean(e: JournalEntry): JournalEntry {
  if (e.kind !== 'step') return e;
  const rest: Record<string, unknown> = { ...e };
  delete rest.snapshot;
  return rest as unknown as JournalEntry;
}

const ASSETS: Record<string, string> = {
  '/': 'index.html',
  '/index.html': 'index.html',
  '/app.js': 'app.js',
  '/chart.js': 'chart.js',
  '/style.css': 'style.css',
};
const MIME: Record<string, string> = {
  html: 'text/html; charset=utf-8',
  js: 'text/javascript; charset=utf-8',
  css: 'text/css; charset=utf-8',
};

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);
const COOKIE = 'jetflow_console';
const digest = (s: string) => createHash('sha256').update(s).digest();

export async function startConsole(opts: ConsoleOptions): Promise<ConsoleServer> {
  const { client } = opts;
  const host = opts.host ?? '127.0.0.1';
  if (!opts.token && !LOOPBACK.has(host)) {
    throw new ConfigError(
      `the console on ${host} would let anyone who reaches it act as the operator: set a token (--token or JETFLOW_CONSOLE_TOKEN), or listen on 127.0.0.1`,
    );
  }
  const expected = opts.token ? digest(opts.token) : undefined;
  const granted = (given: string | undefined) =>
    expected === undefined || (given !== undefined && timingSafeEqual(digest(given), expected));
  const shards = opts.shards ?? 16;
  const app = Fastify({
    logger: false,
    ajv: { customOptions: { allErrors: true, coerceTypes: 'array', removeAdditional: false } },
  });
  const assetDir = join(repoRoot, 'console');
  const charts = new Map<string, Chart | null>();
  const chart = (type: string, version: number): Chart | null => {
    const key = `${type}@${version}`;
    if (!charts.has(key)) {
      let c: Chart | null = null;
      try {
        const def = opts.registry?.get(type, version);
        if (def) c = chartOf(type, version, def.machine);
      } catch {
        c = null; // a type or version this console does not know: no chart, the path only
      }
      charts.set(key, c);
    }
    return charts.get(key) ?? null;
  };
  const streams = new Set<AbortController>();

  app.setErrorHandler((err: FastifyError, _req, reply) => {
    if (err.validation) {
      return reply.code(400).send({
        status: 400,
        code: ErrorCode.BadRequest,
        message: `${err.validationContext ?? 'request'} ${err.message}`,
      });
    }
    if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500)
      return reply
        .code(400)
        .send({ status: 400, code: ErrorCode.MalformedBody, message: err.message });
    const b = errorBody(err);
    if (b.status >= 500) opts.log?.(`console: ${b.code} ${b.message}`);
    return reply.code(b.status).send(b);
  });

  // Access: the page itself is public (it holds nothing); every API call needs the token.
  app.addHook('onRequest', async (req, reply) => {
    if (!req.url.startsWith('/api/') || req.url === '/api/login') return;
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    const cookie = (req.headers.cookie ?? '')
      .split(';')
      .map((c) => c.trim())
      .find((c) => c.startsWith(`${COOKIE}=`))
      ?.slice(COOKIE.length + 1);
    if (granted(bearer) || granted(cookie ? decodeURIComponent(cookie) : undefined)) return;
    await reply.code(401).send({
      status: 401,
      code: ErrorCode.Unauthorized,
      message: 'this console needs its access token',
    });
  });
  app.post('/api/login', async (req, reply) => {
    const token = (req.body as { token?: unknown } | undefined)?.token;
    if (typeof token !== 'string' || !granted(token))
      return reply
        .code(401)
        .send({ status: 401, code: ErrorCode.Unauthorized, message: 'wrong token' });
    return reply
      .header(
        'set-cookie',
        `${COOKIE}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/api/`,
      )
      .send({ ok: true });
  });

  for (const [url, file] of Object.entries(ASSETS)) {
    app.get(url, async (_req, reply) => {
      const body = await readFile(join(assetDir, file));
      return reply
        .type(MIME[file.split('.').pop()!] ?? 'application/octet-stream')
        .header('cache-control', 'no-cache')
        .send(body);
    });
  }
  app.get('/api/info', () => ({
    version: packageVersion(),
    shards,
    types: opts.registry?.list() ?? [],
  }));

  const settle = async <T>(p: Promise<T>): Promise<T | { error: ReturnType<typeof errorBody> }> => {
    try {
      return await p;
    } catch (err) {
      return { error: errorBody(err) };
    }
  };
  const overview = async () => {
    const [counts, status, queues, failures, review] = await Promise.all([
      settle(client.searchCounts()),
      settle(client.status(shards, (opts.failoverMs ?? ENGINE_DEFAULTS.failoverMs) / 2)),
      settle(client.queues()),
      settle(client.search({ status: 'failed', limit: 10 })),
      settle(client.search({ needsReview: true, limit: 10 })),
    ]);
    return { at: new Date().toISOString(), counts, status, queues, failures, review };
  };
  app.get('/api/overview', overview);

  app.get('/api/search', async (req) =>
    client.search(searchFilters(req.query as Record<string, string>)),
  );

  app.get('/api/workflows/:type/:id', { schema: { params: Params } }, async (req) => {
    const { type, id } = req.params as Static<typeof Params>;
    const query = await client.query(type, id);
    const entries: JournalEntry[] = [];
    let truncated = false;
    const journal = await settle(
      (async () => {
        for await (const e of client.historyAll(type, id)) {
          entries.push(lean(e));
          if (entries.length >= 2_000) {
            truncated = true;
            break;
          }
        }
        return entries;
      })(),
    );
    const why =
      query.status === 'running' || query.status === 'deferred'
        ? await settle(client.why(type, id))
        : undefined;
    // An activity tree (its definition declares the `tree` view): the node tree as text.
    let hasTree = false;
    try {
      hasTree = !!opts.registry?.get(type, query.version).views?.tree;
    } catch {
      hasTree = false;
    }
    const tree = hasTree ? await settle(client.view(type, id, { view: 'tree' })) : undefined;
    return {
      query,
      journal: Array.isArray(journal) ? { entries, truncated } : journal,
      chart: chart(type, query.version),
      ...(why ? { why } : {}),
      ...(tree ? { tree } : {}),
    };
  });

  app.post(
    '/api/workflows/:type/:id/signal',
    { schema: { params: Params, body: SignalBody } },
    async (req) => {
      const { type, id } = req.params as Static<typeof Params>;
      const { event, msgId } = req.body as Static<typeof SignalBody>;
      return await client.signal(type, id, event, msgId ? { msgId } : {});
    },
  );

  app.post(
    '/api/workflows/:type/:id/:verb',
    { schema: { params: VerbParams, body: ActionBody } },
    async (req) => {
      const { type, id, verb } = req.params as Static<typeof VerbParams>;
      const body = req.body as Static<typeof ActionBody>;
      return await client.admin(verb, type, id, body);
    },
  );

  // ---- Batches, concurrency keys, triggers: the calls `jetflow batch|keys|triggers` make -----

  app.get('/api/batches/:id', { schema: { params: Type.Object({ id: Token }) } }, async (req) =>
    client.batches.status((req.params as { id: string }).id),
  );
  app.get(
    '/api/batches/:id/items',
    { schema: { params: Type.Object({ id: Token }), querystring: BatchItemsQuery } },
    async (req) =>
      client.batches.items(
        (req.params as { id: string }).id,
        req.query as Parameters<Client['batches']['items']>[1],
      ),
  );
  app.post(
    '/api/batches/:id/:verb',
    { schema: { params: BatchParams, body: BatchBody } },
    async (req) => {
      const { id, verb } = req.params as Static<typeof BatchParams>;
      const who = (req.body ?? {}) as Static<typeof BatchBody>;
      const b = client.batches;
      switch (verb) {
        case 'seal':
          return await b.seal(id);
        case 'retry-failed':
          return await b.retryFailed(id, who);
        case 'cancel':
          return await b.cancel(id, who);
        case 'pause':
          return await b.pause(id, who);
        case 'resume':
          return await b.resume(id, who);
      }
    },
  );
  /** Holders and waiters (with their positions) of a type's concurrency keys. */
  app.get('/api/keys', { schema: { querystring: KeysQuery } }, async (req) => {
    const { type, key } = req.query as Static<typeof KeysQuery>;
    const records = await client.keys(type, key);
    return {
      type,
      at: Date.now(),
      keys: records.sort((a, b) => a.key.localeCompare(b.key)),
    };
  });

  app.get('/api/triggers', async () => client.triggers('list'));
  app.get('/api/triggers/:name/parked', { schema: { params: TriggerParams } }, async (req) =>
    client.triggers('parked', { name: (req.params as Static<typeof TriggerParams>).name }),
  );
  app.post('/api/triggers/:name/:verb', { schema: { params: TriggerVerbParams } }, async (req) => {
    const { name, verb } = req.params as Static<typeof TriggerVerbParams>;
    return await client.triggers(verb, { name });
  });

  app.post('/api/bulk', async (req) => client.bulk(req.body as BulkRequest));
  app.get('/api/bulk/:jobId', async (req) =>
    client.bulkStatus((req.params as { jobId: string }).jobId),
  );

  // ---- Server-sent events --------------------------------------------------------------------

  /** Open an SSE response; `run` writes events until the browser leaves or the server stops. */
  const sse = (
    req: FastifyRequest,
    reply: FastifyReply,
    run: (send: (event: string, data: unknown) => void, signal: AbortSignal) => Promise<void>,
  ) => {
    const ac = new AbortController();
    streams.add(ac);
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, {
      'content-type': 'text/event-stream',
      'cache-control': 'no-cache',
      connection: 'keep-alive',
    });
    res.write(': jetflow console\n\n');
    const send = (event: string, data: unknown) => {
      if (!ac.signal.aborted) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    };
    const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
    const end = () => {
      clearInterval(ping);
      ac.abort();
      streams.delete(ac);
      res.end();
    };
    req.raw.on('close', end);
    run(send, ac.signal).then(
      () => end(),
      (err: unknown) => {
        if (!ac.signal.aborted) send('failure', errorBody(err));
        end();
      },
    );
  };
  const sleep = (ms: number, signal: AbortSignal) =>
    new Promise<void>((ok) => {
      const t = setTimeout(ok, ms);
      signal.addEventListener('abort', () => (clearTimeout(t), ok()), { once: true });
    });

  /**
   * Every journal entry of the workflow after step `?step=` (the one the page shows; none given:
   * from now), also those journaled between the page's read and this stream, and past the
   * workflow's end (a reset continues it).
   */
  app.get(
    '/api/workflows/:type/:id/events',
    { schema: { params: Params, querystring: EventsQuery } },
    (req, reply) => {
      const { type, id } = req.params as Static<typeof Params>;
      const { step } = req.query as Static<typeof EventsQuery>;
      sse(req, reply, async (send, signal) => {
        let after = step;
        while (!signal.aborted) {
          const entries =
            after === undefined
              ? client.follow(type, id, { fromStart: false, signal })
              : client.follow(type, id, { afterStep: after, signal });
          for await (const e of entries) {
            send('entry', lean(e));
            if (e.kind === 'step') after = Math.max(after ?? -1, e.step);
          }
          await sleep(250, signal);
        }
      });
    },
  );

  app.get('/api/overview/events', (req, reply) => {
    sse(req, reply, async (send, signal) => {
      let last = '';
      while (!signal.aborted) {
        const o = await overview();
        const text = JSON.stringify({ ...o, at: undefined });
        if (text !== last) send('overview', o);
        last = text;
        await sleep(opts.overviewEveryMs ?? 2_000, signal);
      }
    });
  });

  app.get('/api/bulk/:jobId/events', (req, reply) => {
    const { jobId } = req.params as { jobId: string };
    sse(req, reply, async (send, signal) => {
      for await (const p of client.followBulk(jobId, { signal, pollMs: 1_000 }))
        send('progress', p);
    });
  });

  const address = await app.listen({ host, port: opts.port ?? 8233 });
  opts.log?.(`jetflow: console at ${address}`);
  return {
    url: address,
    close: async () => {
      for (const ac of streams) ac.abort();
      await app.close();
    },
  };
}
