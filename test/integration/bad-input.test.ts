/**
 * Bad input gets a clear error (reply when there is a reply subject, a `rejected` notification
 * otherwise), is never redelivered forever, and changes no stored record.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { pack } from '../../src/contracts/codec.js';
import type { NatsServer } from '../harness/nats-server.js';
import { startEngine, startServer, uniquePrefix } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';
import { Client } from '../../src/client/index.js';
import { topologyNames } from '../../src/nats/topology.js';
import type { ErrorReply, Notification } from '../../src/contracts/wire.js';

let server: NatsServer;
let nc: NatsConnection;
let engine: Engine;
let client: Client;
const prefix = uniquePrefix();
const names = topologyNames(prefix);
const MAX = 4096;

beforeAll(async () => {
  server = await startServer();
  nc = await connect({ servers: server.url });
  engine = await startEngine(server.url, prefix, { maxInputBytes: MAX });
  client = new Client(nc, { prefix });
  await client.start('counter', 'victim', { label: 'keep' });
  await client.signal('counter', 'victim', { type: 'SIG', n: 1 });
  await client.start('counter', 'finished');
  await client.signal('counter', 'finished', { type: 'FINISH' });
});
afterAll(async () => {
  await engine?.close();
  await nc?.close();
  await server?.stop();
});

async function revision(id: string): Promise<number> {
  const kv = await new Kvm(nc).open(names.bucket);
  return (await kv.get(`counter.${id}`))!.revision;
}

async function rawRequest(
  subject: string,
  body: Uint8Array | string,
  contentType?: string,
): Promise<ErrorReply & Record<string, unknown>> {
  const h = headers();
  if (contentType) h.set('Content-Type', contentType);
  const r = await nc.request(subject, body, { timeout: 5000, headers: h });
  if (contentType === 'application/msgpack') {
    const { unpack } = await import('../../src/contracts/codec.js');
    return unpack(r.data) as ErrorReply & Record<string, unknown>;
  }
  return r.json<ErrorReply & Record<string, unknown>>();
}

/** Collect the next notification of type `rejected` for counter/<id>. */
type Rejected = Extract<Notification, { type: 'rejected' }>;

function nextRejection(id: string): Promise<Rejected> {
  return new Promise((ok, fail) => {
    const t = setTimeout(() => fail(new Error('no rejected notification')), 5000);
    const sub = nc.subscribe(`${prefix}.events.counter.${id}`, {
      callback: (_e, m) => {
        const n = m.json<Notification>();
        if (n.type === 'rejected') {
          clearTimeout(t);
          sub.unsubscribe();
          ok(n);
        }
      },
    });
  });
}

describe('bad input', () => {
  const cases: {
    name: string;
    subject: () => string;
    body: Uint8Array | string;
    ct?: string;
    code: string;
  }[] = [
    {
      name: 'malformed JSON',
      subject: () => `${prefix}.signal.counter.victim`,
      body: '{"type": "SIG", n: }',
      code: 'malformed_body',
    },
    {
      name: 'malformed msgpack',
      subject: () => `${prefix}.signal.counter.victim`,
      body: new Uint8Array([0xc1, 0xff, 0x00]),
      ct: 'application/msgpack',
      code: 'malformed_body',
    },
    {
      name: 'missing event type',
      subject: () => `${prefix}.signal.counter.victim`,
      body: '{"n": 3}',
      code: 'bad_request',
    },
    {
      name: 'non-object body',
      subject: () => `${prefix}.signal.counter.victim`,
      body: '[1,2]',
      code: 'bad_request',
    },
    {
      name: 'reserved xstate event',
      subject: () => `${prefix}.signal.counter.victim`,
      body: '{"type":"xstate.done.actor.x"}',
      code: 'bad_request',
    },
    {
      name: 'unknown workflow type (start)',
      subject: () => `${prefix}.start.nosuch.x1`,
      body: '{}',
      code: 'unknown_type',
    },
    {
      name: 'unknown workflow type (signal)',
      subject: () => `${prefix}.signal.nosuch.x1`,
      body: '{"type":"A"}',
      code: 'unknown_type',
    },
    {
      name: 'oversize payload',
      subject: () => `${prefix}.signal.counter.victim`,
      body: JSON.stringify({ type: 'SIG', n: 1, pad: 'x'.repeat(MAX) }),
      code: 'payload_too_large',
    },
    {
      name: 'signal to a workflow that does not exist',
      subject: () => `${prefix}.signal.counter.ghost`,
      body: '{"type":"SIG","n":1}',
      code: 'not_found',
    },
    {
      name: 'signal to a finished workflow',
      subject: () => `${prefix}.signal.counter.finished`,
      body: '{"type":"SIG","n":1}',
      code: 'already_finished',
    },
    {
      name: 'event the workflow cannot take now',
      subject: () => `${prefix}.signal.counter.victim`,
      body: '{"type":"GO"}',
      code: 'event_not_accepted',
    },
    {
      name: 'a guard that throws',
      subject: () => `${prefix}.signal.counter.victim`,
      body: '{"type":"BOOM"}',
      code: 'machine_error',
    },
    {
      name: 'query of a workflow that does not exist',
      subject: () => `${prefix}.query.counter.ghost`,
      body: '',
      code: 'not_found',
    },
  ];

  for (const c of cases) {
    it(`${c.name}: clear error reply, record unchanged`, async () => {
      const before = await revision('victim');
      const reply = await rawRequest(c.subject(), c.body, c.ct);
      expect(reply.error.code).toBe(c.code);
      expect(reply.error.message.length).toBeGreaterThan(10);
      expect(await revision('victim')).toBe(before);
    });
  }

  it('without a reply subject: a rejected notification instead, and nothing stored changes', async () => {
    const before = await revision('victim');
    const gw = nextRejection('victim');
    nc.publish(`${prefix}.signal.counter.victim`, '{not json');
    expect((await gw).error.code).toBe('malformed_body');
    const step = nextRejection('victim');
    nc.publish(`${prefix}.signal.counter.victim`, '{"type":"GO"}');
    const n = await step;
    expect(n.error.code).toBe('event_not_accepted');
    expect(n.accepts).toEqual(['BOOM', 'FINISH', 'SIG']);
    expect(await revision('victim')).toBe(before);
  });

  it('garbage written straight into the inbox is rejected, acked, and not redelivered', async () => {
    const before = await revision('victim');
    const js = jetstream(nc);
    const rej = nextRejection('victim');
    await js.publish(`${prefix}.inbox.signal.counter.victim`, new Uint8Array([0xc1, 0xc1]));
    expect((await rej).error.code).toBe('malformed_body');
    const rej2 = nextRejection('victim');
    await js.publish(`${prefix}.inbox.signal.counter.victim`, pack({ event: { nope: 1 } }));
    expect((await rej2).error.code).toBe('bad_request');
    // A good signal after the garbage still applies, so the garbage did not block the workflow.
    const ok = await client.signal('counter', 'victim', { type: 'SIG', n: 2 });
    expect(ok.status).toBe('running');
    const q = await client.query('counter', 'victim');
    expect(q.context).toMatchObject({ seq: [1, 2], label: 'keep' });
    expect(await revision('victim')).toBeGreaterThan(before);
    const jsm = await jetstreamManager(nc);
    expect((await jsm.streams.info(names.inboxStream)).state.messages).toBe(0);
  });
});
