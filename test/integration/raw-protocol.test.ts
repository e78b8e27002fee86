/**
 * A client with no NATS library: the NATS text protocol over a plain TCP socket starts a
 * workflow, signals it, and reads its state by request/reply.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Socket } from 'node:net';
import type { NatsServer } from '../harness/nats-server.js';
import { startEngine, startServer, uniquePrefix } from '../harness/jetflow.js';
import type { Engine } from '../../src/host/engine.js';

/** Minimal NATS text-protocol client: CONNECT, SUB, PUB with reply, MSG parsing, PING/PONG. */
class RawNats {
  private buf = Buffer.alloc(0);
  private waiters = new Map<string, (payload: string) => void>();
  private sid = 0;
  private constructor(private readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.parse();
    });
  }

  static async connect(port: number): Promise<RawNats> {
    const sock = new Socket();
    await new Promise<void>((ok, fail) => {
      sock.once('error', fail);
      sock.connect(port, '127.0.0.1', () => ok());
    });
    const c = new RawNats(sock);
    sock.write('CONNECT {"verbose":false,"pedantic":false,"name":"raw"}\r\n');
    return c;
  }

  private parse(): void {
    for (;;) {
      const nl = this.buf.indexOf('\r\n');
      if (nl < 0) return;
      const line = this.buf.subarray(0, nl).toString();
      if (line.startsWith('MSG ')) {
        // MSG <subject> <sid> [reply] <#bytes>
        const parts = line.split(' ');
        const size = Number(parts[parts.length - 1]);
        if (this.buf.length < nl + 2 + size + 2) return;
        const payload = this.buf.subarray(nl + 2, nl + 2 + size).toString();
        this.buf = this.buf.subarray(nl + 2 + size + 2);
        this.waiters.get(parts[1]!)?.(payload);
        continue;
      }
      this.buf = this.buf.subarray(nl + 2);
      if (line === 'PING') this.sock.write('PONG\r\n');
      if (line.startsWith('-ERR')) throw new Error(line);
    }
  }

  /** Publish `payload` on `subject` with a fresh reply inbox and resolve with the reply body. */
  request(subject: string, payload: string): Promise<string> {
    const inbox = `_INBOX.raw.${++this.sid}`; // engines reply only on request inboxes
    const sid = this.sid;
    const p = new Promise<string>((ok, fail) => {
      const t = setTimeout(() => fail(new Error(`no reply on ${subject}`)), 10_000);
      this.waiters.set(inbox, (body) => {
        clearTimeout(t);
        this.sock.write(`UNSUB ${sid}\r\n`);
        ok(body);
      });
    });
    this.sock.write(`SUB ${inbox} ${sid}\r\n`);
    const bytes = Buffer.byteLength(payload);
    this.sock.write(`PUB ${subject} ${inbox} ${bytes}\r\n${payload}\r\n`);
    return p;
  }

  close(): void {
    this.sock.destroy();
  }
}

describe('wire contract over the raw NATS text protocol', () => {
  let server: NatsServer;
  let engine: Engine;
  const prefix = uniquePrefix();

  beforeAll(async () => {
    server = await startServer();
    engine = await startEngine(server.url, prefix);
  });
  afterAll(async () => {
    await engine?.close();
    await server?.stop();
  });

  it('starts, signals and queries a workflow with no NATS library', async () => {
    const raw = await RawNats.connect(server.port);
    try {
      const started = JSON.parse(
        await raw.request(`${prefix}.start.counter.raw1`, '{"input":{"label":"raw"}}'),
      ) as unknown;
      expect(started).toEqual({ id: 'raw1', type: 'counter', version: 1, created: true });

      const signaled = JSON.parse(
        await raw.request(`${prefix}.signal.counter.raw1`, '{"type":"SIG","n":7}'),
      ) as {
        step: number;
        status: string;
      };
      expect(signaled).toMatchObject({ id: 'raw1', type: 'counter', step: 1, status: 'running' });

      const state = JSON.parse(await raw.request(`${prefix}.query.counter.raw1`, '')) as Record<
        string,
        unknown
      >;
      expect(state).toMatchObject({
        id: 'raw1',
        type: 'counter',
        version: 1,
        status: 'running',
        value: 'counting',
        context: { seq: [7], label: 'raw' },
        tags: ['live'],
        accepts: ['BOOM', 'FINISH', 'SIG'],
        step: 1,
      });
      expect(typeof state.updatedAt).toBe('string');

      const rejected = JSON.parse(
        await raw.request(`${prefix}.signal.counter.raw1`, '{"type":"NOPE"}'),
      ) as {
        error: { code: string; accepts: string[] };
      };
      expect(rejected.error.code).toBe('event_not_accepted');
      expect(rejected.error.accepts).toEqual(['BOOM', 'FINISH', 'SIG']);
    } finally {
      raw.close();
    }
  });
});
