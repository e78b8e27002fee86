/**
 * HTTP ingress: `jetflow http`. The NATS request/reply API (start, signal, query, result, cancel,
 * history) over HTTP, on Fastify. Every route goes through the TypeScript `Client`, so an HTTP
 * call has exactly the semantics of the NATS request it becomes: a 2xx is sent only once the
 * engine replied (the start or signal is stored and applied), an error reply keeps its code.
 *
 * Why Fastify: JSON Schema validation of params, query and body is built in (ajv), so the
 * schemas below are both what the server validates with and what `/v1/openapi.json` publishes;
 * and it is maintained, fast and has no transitive framework dependencies to speak of.
 *
 * Errors are `application/problem+json` (RFC 9457): `{type, title, status, detail, code,
 * instance}` with `code` the NATS reply's error code, plus `accepts` for an event the workflow
 * cannot take now.
 */
import { httpStatusOf } from './status.js';
import { createHash } from 'node:crypto';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import type { Client } from '../client/index.js';
import { WorkflowFailedError } from '../client/index.js';
import { ErrorCode, JetflowError } from '../errors.js';
import { toJetflowError } from '../nats/connection.js';
import { packageVersion } from '../host/package-root.js';
import { verifyWebhook, webhookMsgId } from './webhook.js';
import type { WebhookOptions } from '../engine/triggers.js';
import {
  CancelRequestSchema,
  closed,
  TokenSchema,
  HistoryRequestSchema,
  SignalRequestSchema,
  StartReplySchema,
  StartRequestSchema,
  WorkflowRefSchema,
} from '../contracts/schemas.js';

export interface HttpOptions {
  client: Client;
  /** Interface to listen on (default 127.0.0.1: not reachable from other machines). */
  host?: string;
  /** Port (default 8080; 0 picks a free one). */
  port?: number;
  /** Largest request body in bytes (default: the NATS server's max_payload, else 1 MiB). */
  bodyLimit?: number;
  /** Upper bound of `?wait=` on the result route (default 5 min). */
  maxWaitMs?: number;
  /** Log lines (default: none). */
  log?: (line: string) => void;
  /**
   * Bearer tokens (issue 17/21): when given (even empty), every `/v1/workflows` route needs
   * `Authorization: Bearer <token>` of one of them: `service` for the listed `types` (all when
   * absent), `operator` for every type. Without it: no authentication (the default, for
   * `jetflow dev` on 127.0.0.1). Webhooks keep their own signatures.
   */
  tokens?: Record<string, { role: 'service' | 'operator'; types?: string[] }>;
}

export interface HttpServer {
  /** `http://host:port` */
  readonly url: string;
  close(): Promise<void>;
}

// ---- Schemas: validated by Fastify, published as the OpenAPI document ----------------------

// The bodies are the NATS requests' own schemas (`src/contracts/schemas.ts`), closed: over HTTP
// an unknown field is refused.
const Params = WorkflowRefSchema;
const StartBody = closed(StartRequestSchema);
const EventBody = SignalRequestSchema;
const CancelBody = closed(CancelRequestSchema);
const ResultQuery = Type.Object(
  {
    wait: Type.Optional(
      Type.String({
        pattern: '^[0-9]+(ms|s|m)?$',
        description: 'how long to wait for the end: `30s`, `500ms`, `2m` or milliseconds',
      }),
    ),
  },
  { additionalProperties: false },
);
const HistoryQuery = HistoryRequestSchema;
const IdempotencyHeaders = Type.Object({
  'idempotency-key': Type.Optional(
    Type.String({
      pattern: '^[\\x21-\\x7e]{1,256}$',
      description: 'a repeat with the same key is applied once (the NATS message id)',
    }),
  ),
});
const AnyObject = Type.Object({}, { additionalProperties: true });
const HookParams = Type.Object({ trigger: TokenSchema });
const HookReply = Type.Object({
  trigger: Type.String(),
  seq: Type.Integer({ description: 'sequence of the stored request in the hooks stream' }),
  duplicate: Type.Boolean({ description: 'the same signed request was stored before' }),
});
const ResultSchema = Type.Object({
  status: Type.String({ description: 'completed, failed, canceled, or running when not ended' }),
  output: Type.Optional(Type.Unknown()),
  error: Type.Optional(AnyObject),
});
const Problem = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    detail: Type.String(),
    code: Type.String({ description: 'the same error code as the NATS reply' }),
    instance: Type.Optional(Type.String()),
    accepts: Type.Optional(Type.Array(Type.String())),
    details: Type.Optional(Type.Unknown()),
  },
  { additionalProperties: true },
);

type P = Static<typeof Params>;

interface Route {
  method: 'GET' | 'POST';
  url: string;
  operationId: string;
  summary: string;
  description?: string;
  /** The body is read raw (any media type), not as JSON. */
  rawBody?: string;
  params?: TSchema;
  querystring?: TSchema;
  body?: TSchema;
  headers?: TSchema;
  ok: Record<number, { description: string; schema?: TSchema }>;
  errors: number[];
}

const ROUTES = {
  start: {
    method: 'POST',
    url: '/v1/workflows/:type/:id',
    operationId: 'startWorkflow',
    summary: 'Start a workflow (idempotent: the same id again replies created: false)',
    params: Params,
    body: StartBody,
    headers: IdempotencyHeaders,
    ok: {
      201: { description: 'started', schema: StartReplySchema },
      200: { description: 'it already existed', schema: StartReplySchema },
    },
    errors: [400, 404, 413, 503],
  },
  signal: {
    method: 'POST',
    url: '/v1/workflows/:type/:id/signals',
    operationId: 'signalWorkflow',
    summary: 'Send an event; replies once it is applied',
    params: Params,
    body: EventBody,
    headers: IdempotencyHeaders,
    ok: { 200: { description: 'applied (or a duplicate)', schema: AnyObject } },
    errors: [400, 404, 409, 413, 503],
  },
  query: {
    method: 'GET',
    url: '/v1/workflows/:type/:id',
    operationId: 'queryWorkflow',
    summary: 'Current state, context, status and the events accepted now',
    params: Params,
    ok: { 200: { description: 'the workflow', schema: AnyObject } },
    errors: [400, 404, 503],
  },
  result: {
    method: 'GET',
    url: '/v1/workflows/:type/:id/result',
    operationId: 'workflowResult',
    summary: 'Wait for the end (up to ?wait=, default 0): output or error',
    params: Params,
    querystring: ResultQuery,
    ok: {
      200: { description: 'ended: completed, failed or canceled', schema: ResultSchema },
      202: { description: 'not ended within the wait', schema: ResultSchema },
    },
    errors: [400, 404, 503],
  },
  cancel: {
    method: 'POST',
    url: '/v1/workflows/:type/:id/cancel',
    operationId: 'cancelWorkflow',
    summary: 'Cancel: stops its activities and timers; final status canceled',
    params: Params,
    body: CancelBody,
    headers: IdempotencyHeaders,
    ok: { 200: { description: 'canceled', schema: AnyObject } },
    errors: [400, 404, 409, 503],
  },
  history: {
    method: 'GET',
    url: '/v1/workflows/:type/:id/history',
    operationId: 'workflowHistory',
    summary: 'One page of the journal, oldest first; `next` is the fromStep of the next page',
    params: Params,
    querystring: HistoryQuery,
    ok: { 200: { description: 'a page of journal entries', schema: AnyObject } },
    errors: [400, 404, 503],
  },
  hook: {
    method: 'POST',
    url: '/hooks/:trigger',
    operationId: 'webhook',
    summary: 'Deliver a webhook to a trigger declared with `webhook`; 202 once durably stored',
    description:
      'The raw body is checked against the HMAC-SHA256 signature (hex, optionally `sha256=<hex>`) ' +
      'in the header the trigger names (`webhook.header`), of `<timestamp>.<body>` when it names ' +
      'a timestamp header too. The trigger maps the stored request to a start or a signal, ' +
      'exactly once per request (the same signed request again is a duplicate). Each declared ' +
      'webhook is also listed as its own path with its headers.',
    params: HookParams,
    rawBody: 'the request as the sender signed it (any media type)',
    ok: { 202: { description: 'stored (or a duplicate of a stored one)', schema: HookReply } },
    errors: [400, 401, 404, 413, 503],
  },
} satisfies Record<string, Route>;

// ---- Errors ---------------------------------------------------------------------------------

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

interface ProblemBody {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  instance?: string;
  accepts?: string[];
  details?: unknown;
}

function problem(status: number, code: string, detail: string, extra: object = {}): ProblemBody {
  return {
    type: `urn:jetflow:problem:${code}`,
    title: TITLES[status] ?? 'Error',
    status,
    detail,
    code,
    ...extra,
  };
}

/** A NATS-side failure as a problem: the reply's code, or 503 when nothing answered. */
function problemOf(err: unknown): ProblemBody {
  const e = err as { name?: string; message?: string; isNoResponders?: () => boolean };
  const noResponders =
    e?.name === 'NoRespondersError' ||
    (typeof e?.isNoResponders === 'function' && e.isNoResponders());
  if (noResponders) {
    return problem(503, ErrorCode.Unavailable, 'no engine is answering for this workflow type');
  }
  const j = err instanceof JetflowError ? err : toJetflowError(err);
  const { status, known } = httpStatusOf(j);
  const code = known || status === 500 ? j.code : ErrorCode.Unavailable;
  const details = j.details as { accepts?: unknown } | undefined;
  const accepts = Array.isArray(details?.accepts) ? (details.accepts as string[]) : undefined;
  return problem(status, code, j.message, {
    ...(accepts ? { accepts } : {}),
    ...(details !== undefined && !accepts ? { details } : {}),
  });
}

function sendProblem(reply: FastifyReply, p: ProblemBody, instance: string): FastifyReply {
  if (p.status === 503) reply.header('retry-after', '1');
  return reply
    .code(p.status)
    .type('application/problem+json')
    .send({ ...p, instance });
}

/** `30s`, `500ms`, `2m`, or plain milliseconds. */
export function parseWait(s: string | undefined): number {
  if (s === undefined) return 0;
  const m = /^([0-9]+)(ms|s|m)?$/.exec(s);
  if (!m) return NaN;
  const n = Number(m[1]);
  return m[2] === 's' ? n * 1000 : m[2] === 'm' ? n * 60_000 : n;
}

// ---- OpenAPI ----------------------------------------------------------------------------------

/** Strip TypeBox's symbol keys (JSON does that too) and turn `:param` into `{param}`. */
export function openApiDocument(
  version: string,
  webhooks: Record<string, WebhookOptions> = {},
): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const json = (s: TSchema) => JSON.parse(JSON.stringify(s)) as Record<string, unknown>;
  // Each declared webhook trigger: the generic route's operation, with its own headers.
  const hooks: [string, Route, unknown[]][] = Object.entries(webhooks).map(([name, w]) => [
    `/hooks/${name}`,
    {
      ...ROUTES.hook,
      params: undefined,
      operationId: `webhook_${name}`,
      summary: `Webhook of trigger ${name}`,
    },
    [
      {
        name: w.header,
        in: 'header',
        required: true,
        description: "HMAC-SHA256 of the signed content under the trigger's secret",
        schema: { type: 'string', pattern: '^(sha256=)?[0-9a-fA-F]{64}$' },
      },
      ...(w.timestampHeader
        ? [
            {
              name: w.timestampHeader,
              in: 'header',
              required: true,
              description: `signing time, epoch seconds (within ${w.toleranceSec ?? 300} s of now); signed as \`<timestamp>.<body>\``,
              schema: { type: 'string', pattern: '^[0-9]+$' },
            },
          ]
        : []),
    ],
  ]);
  const all: [string, Route, unknown[]][] = [
    ...(Object.values(ROUTES) as Route[]).map(
      (r) => [r.url.replace(/:([a-zA-Z]+)/g, '{$1}'), r, []] as [string, Route, unknown[]],
    ),
    ...hooks,
  ];
  for (const [path, r, extra] of all) {
    const parameters: unknown[] = [...extra];
    const addAll = (schema: TSchema | undefined, where: 'path' | 'query' | 'header') => {
      if (!schema) return;
      const s = json(schema) as { properties: Record<string, unknown>; required?: string[] };
      for (const [name, p] of Object.entries(s.properties)) {
        parameters.push({
          name: where === 'header' ? 'Idempotency-Key' : name,
          in: where,
          required: where === 'path' || (s.required ?? []).includes(name),
          schema: p,
        });
      }
    };
    addAll(r.params, 'path');
    addAll(r.querystring, 'query');
    addAll(r.headers, 'header');
    const responses: Record<string, unknown> = {};
    for (const [code, o] of Object.entries(r.ok)) {
      responses[code] = {
        description: o.description,
        ...(o.schema ? { content: { 'application/json': { schema: json(o.schema) } } } : {}),
      };
    }
    for (const code of r.errors) {
      responses[String(code)] = {
        description: TITLES[code] ?? 'error',
        content: {
          'application/problem+json': { schema: { $ref: '#/components/schemas/Problem' } },
        },
      };
    }
    (paths[path] ??= {})[r.method.toLowerCase()] = {
      operationId: r.operationId,
      summary: r.summary,
      ...(r.description ? { description: r.description } : {}),
      parameters,
      ...(r.body
        ? {
            requestBody: {
              required: true,
              content: { 'application/json': { schema: json(r.body) } },
            },
          }
        : {}),
      ...(r.rawBody
        ? {
            requestBody: {
              required: true,
              content: { '*/*': { schema: { description: r.rawBody } } },
            },
          }
        : {}),
      responses,
    };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'jetflow', version, description: 'Workflows over HTTP; see the README.' },
    paths,
    components: { schemas: { Problem: json(Problem) } },
  };
}

// ---- Server -------------------------------------------------------------------------------------

export async function startHttp(opts: HttpOptions): Promise<HttpServer> {
  const { client } = opts;
  const maxWaitMs = opts.maxWaitMs ?? 300_000;
  const bodyLimit = opts.bodyLimit ?? client.nc.info?.max_payload ?? 1024 * 1024;
  const app: FastifyInstance = Fastify({
    bodyLimit,
    logger: false,
    // Validation errors name every failing field, not only the first.
    ajv: { customOptions: { allErrors: true, coerceTypes: 'array', removeAdditional: false } },
  });
  const version = packageVersion();

  app.setErrorHandler((err: FastifyError, req, reply) => {
    if (err.validation) {
      return sendProblem(
        reply,
        problem(400, ErrorCode.BadRequest, `${err.validationContext ?? 'request'} ${err.message}`, {
          details: err.validation.map((v) => ({ field: v.instancePath, why: v.message })),
        }),
        req.url,
      );
    }
    if (err.code === 'FST_ERR_CTP_BODY_TOO_LARGE') {
      return sendProblem(
        reply,
        problem(413, ErrorCode.PayloadTooLarge, `the body is over ${bodyLimit} bytes`),
        req.url,
      );
    }
    if (err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
      return sendProblem(
        reply,
        problem(415, ErrorCode.BadRequest, 'send the body as application/json'),
        req.url,
      );
    }
    if (typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500) {
      // Malformed JSON, an empty JSON body, and the like.
      return sendProblem(reply, problem(400, ErrorCode.MalformedBody, err.message), req.url);
    }
    const p = problemOf(err);
    if (p.status >= 500) opts.log?.(`http: ${req.method} ${req.url}: ${p.code} ${p.detail}`);
    return sendProblem(reply, p, req.url);
  });
  app.setNotFoundHandler((req, reply) =>
    sendProblem(
      reply,
      problem(404, ErrorCode.NotFound, `no route ${req.method} ${req.url.split('?')[0]}`),
      req.url,
    ),
  );

  const schema = (r: Route) => ({
    ...(r.params ? { params: r.params } : {}),
    ...(r.querystring ? { querystring: r.querystring } : {}),
    ...(r.body ? { body: r.body } : {}),
    ...(r.headers ? { headers: r.headers } : {}),
  });
  const key = (h: Record<string, unknown>) => {
    const k = h['idempotency-key'];
    return typeof k === 'string' ? k : undefined;
  };

  if (opts.tokens) {
    // Tokens are compared as SHA-256 digests (a map lookup leaks nothing about a near miss).
    const digest = (t: string) => createHash('sha256').update(t).digest('base64url');
    const byDigest = new Map(Object.entries(opts.tokens).map(([t, v]) => [digest(t), v]));
    app.addHook('onRequest', async (req, reply) => {
      if (!req.url.startsWith('/v1/workflows/')) return;
      const h = req.headers.authorization;
      const grant =
        typeof h === 'string' && h.startsWith('Bearer ')
          ? byDigest.get(digest(h.slice(7)))
          : undefined;
      if (!grant) {
        reply.header('WWW-Authenticate', 'Bearer');
        return sendProblem(
          reply,
          problem(401, ErrorCode.Unauthorized, 'a valid bearer token is required'),
          req.url,
        );
      }
      const type = decodeURIComponent(req.url.split('?')[0]!.split('/')[3] ?? '');
      if (grant.role === 'service' && grant.types && !grant.types.includes(type))
        return sendProblem(
          reply,
          problem(
            403,
            ErrorCode.Unauthorized,
            `this token may not use workflow type ${JSON.stringify(type)}`,
          ),
          req.url,
        );
    });
  }

  // Built per request: the webhook triggers declared now are listed with their headers.
  app.get('/v1/openapi.json', async (_req, reply) =>
    reply.send(openApiDocument(version, await client.webhookConfigs().catch(() => ({})))),
  );
  app.get('/healthz', (_req, reply) => reply.send({ ok: true }));

  app.post(ROUTES.start.url, { schema: schema(ROUTES.start) }, async (req, reply) => {
    const { type, id } = req.params as P;
    const body = req.body as Static<typeof StartBody>;
    const r = await client.start(type, id, body.input, {
      msgId: key(req.headers),
      priority: body.priority,
    });
    return reply.code(r.created ? 201 : 200).send(r);
  });
  app.post(ROUTES.signal.url, { schema: schema(ROUTES.signal) }, async (req) => {
    const { type, id } = req.params as P;
    const event = req.body as { type: string; [k: string]: unknown };
    const msgId = key(req.headers);
    return await client.signal(type, id, event, msgId ? { msgId } : {});
  });
  app.get(ROUTES.query.url, { schema: schema(ROUTES.query) }, async (req) => {
    const { type, id } = req.params as P;
    return await client.query(type, id);
  });
  app.post(ROUTES.cancel.url, { schema: schema(ROUTES.cancel) }, async (req) => {
    const { type, id } = req.params as P;
    const body = (req.body ?? {}) as Static<typeof CancelBody>;
    return await client.cancel(type, id, body.reason, { msgId: key(req.headers) });
  });
  app.get(ROUTES.history.url, { schema: schema(ROUTES.history) }, async (req) => {
    const { type, id } = req.params as P;
    const q = req.query as Static<typeof HistoryQuery>;
    return await client.history(type, id, q);
  });
  app.get(ROUTES.result.url, { schema: schema(ROUTES.result) }, async (req, reply) => {
    const { type, id } = req.params as P;
    const waitMs = Math.min(parseWait((req.query as Static<typeof ResultQuery>).wait), maxWaitMs);
    try {
      const output = await client.result(type, id, { timeoutMs: Math.max(waitMs, 1) });
      return { status: 'completed', output };
    } catch (err) {
      const timedOut = err instanceof JetflowError && err.code === ErrorCode.Timeout;
      if (!timedOut && !(err instanceof WorkflowFailedError)) throw err;
      // Failed, canceled or still running: the query says which (and the error).
      const q = await client.query(type, id);
      if (q.status === 'completed') return { status: 'completed', output: q.output };
      const ended = q.status === 'failed' || q.status === 'canceled';
      return reply
        .code(ended ? 200 : 202)
        .send({ status: q.status, ...(q.error ? { error: q.error } : {}) });
    }
  });

  // Webhooks: the raw body is what is signed, so this route reads it unparsed.
  await app.register((scope, _o, done) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, next) => next(null, body));
    scope.post(ROUTES.hook.url, { schema: schema(ROUTES.hook) }, async (req, reply) => {
      const { trigger } = req.params as { trigger: string };
      const w = await client.webhookConfig(trigger);
      if (!w)
        return sendProblem(
          reply,
          problem(404, ErrorCode.NotFound, `no webhook trigger ${JSON.stringify(trigger)}`),
          req.url,
        );
      const secret = process.env[w.secretEnv];
      if (!secret)
        return sendProblem(
          reply,
          problem(
            503,
            ErrorCode.Config,
            `the secret of webhook ${trigger} is not set here (environment variable ${w.secretEnv})`,
          ),
          req.url,
        );
      const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
      const v = verifyWebhook(w, secret, req.headers, body, Date.now() / 1000);
      if (!v.ok) return sendProblem(reply, problem(401, ErrorCode.Unauthorized, v.why), req.url);
      const signature = String(req.headers[w.header.toLowerCase()]);
      const keep: Record<string, string> = {};
      const ct = req.headers['content-type'];
      if (typeof ct === 'string') keep['Content-Type'] = ct;
      const stored = await client.storeHook(
        trigger,
        body,
        keep,
        webhookMsgId(trigger, signature, body),
      );
      // Stored durably (JetStream acknowledged): a retry of the sender is a harmless duplicate.
      return reply.code(202).send({ trigger, seq: stored.seq, duplicate: stored.duplicate });
    });
    done();
  });

  const address = await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 8080 });
  opts.log?.(`jetflow: http listening on ${address} (OpenAPI at ${address}/v1/openapi.json)`);
  return {
    url: address,
    close: () => app.close(),
  };
}
