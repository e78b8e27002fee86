/**
 * HTTP ingress cost: `npm run bench:http`. Starts of the `order` workflow (a start is one step:
 * stored and applied before the reply), alternately through the NATS client and through
 * `POST /v1/workflows/order/{id}` on `jetflow http`, against one nats-server; the engine and
 * `jetflow http` are processes of their own (as deployed), this one only drives load. At
 * concurrency 1 (latency) and 16 (throughput). Several rounds, both paths in
 * each, so they see the same machine noise. Prints p50/p99 and throughput per path and the ratios.
 *
 * `npm run bench` runs the same measurement ({@link runHttpBench}) on its own server.
 * Options: --starts N (per round, path and concurrency; default 1000), --rounds R (default 3),
 * --smoke.
 */
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { createServer } from 'node:net';
import { spawnTs, stopChild } from './processes.js';
import { percentile, round, runClosedLoop } from './peers/common.js';

function freePort(): Promise<number> {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => ok(port));
    });
  });
}

export interface HttpBenchOptions {
  /** A running nats-server (with `shardMapping(shards)`); the bench uses its own prefix on it. */
  serverUrl: string;
  shards: number;
  /** Starts per round, path and concurrency. */
  starts: number;
  rounds: number;
  log?: (line: string) => void;
}

interface PathStats {
  p50Ms: number;
  p99Ms: number;
  perSec: number;
}

/** Per concurrency (`c1`, `c16`): both paths' medians over rounds and HTTP's ratios to NATS. */
export type HttpBenchResult = { startsPerRound: number; rounds: number } & Record<
  `c${number}`,
  { nats: PathStats; http: PathStats; httpOverNatsP50: number; httpOverNatsThroughput: number }
>;

/** Spawns an engine and `jetflow http` (prefix `benchh`), measures, stops them. */
export async function runHttpBench(o: HttpBenchOptions): Promise<HttpBenchResult> {
  const N = o.starts;
  const ROUNDS = o.rounds;
  const prefix = 'benchh';
  const log = o.log ?? (() => undefined);
  // Node's fetch keeps connections alive, as a service calling the ingress would.
  const nc = await connect({ servers: o.serverUrl });
  const engine = await spawnTs(
    'src/cli/main.ts',
    ['engine', '--nats-url', o.serverUrl, '--prefix', prefix, '--shards', String(o.shards)],
    '"engine started"',
  );
  const port = await freePort();
  const httpProc = await spawnTs(
    'src/cli/main.ts',
    ['http', '--nats-url', o.serverUrl, '--prefix', prefix, '--port', String(port)],
    'http listening on',
  ).catch(async (err: unknown) => {
    await stopChild(engine);
    throw err;
  });
  const client = new Client(nc, { prefix, timeoutMs: 30_000 });
  const http = { url: `http://127.0.0.1:${port}` };
  const rows: {
    round: number;
    path: string;
    c: number;
    p50: number;
    p99: number;
    perSec: number;
  }[] = [];
  try {
    const viaNats = (id: string) => client.start('order', id, { total: 1 }).then(() => undefined);
    const viaHttp = async (id: string) => {
      const r = await fetch(`${http.url}/v1/workflows/order/${id}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ input: { total: 1 } }),
      });
      await r.arrayBuffer();
      if (r.status !== 201) throw new Error(`HTTP ${r.status}`);
    };
    // Warm-up of both paths.
    const warm = Math.min(200, N);
    await runClosedLoop(warm, 8, (i) => viaNats(`warm-n-${i}`), 120_000);
    await runClosedLoop(warm, 8, (i) => viaHttp(`warm-h-${i}`), 120_000);
    for (let r = 1; r <= ROUNDS; r++) {
      for (const c of [1, 16]) {
        const paths = r % 2 === 1 ? ['nats', 'http'] : ['http', 'nats'];
        for (const path of paths) {
          const one = path === 'nats' ? viaNats : viaHttp;
          const res = await runClosedLoop(N, c, (i) => one(`r${r}-c${c}-${path}-${i}`), 600_000);
          const lat = [...res.latenciesMs].sort((a, b) => a - b);
          const row = {
            round: r,
            path,
            c,
            p50: round(percentile(lat, 50), 2),
            p99: round(percentile(lat, 99), 2),
            perSec: round(N / (res.wallMs / 1000), 1),
          };
          rows.push(row);
          log(JSON.stringify(row));
        }
      }
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const pick = (path: string, c: number, k: 'p50' | 'p99' | 'perSec') =>
      median(rows.filter((x) => x.path === path && x.c === c).map((x) => x[k]));
    const out = { startsPerRound: N, rounds: ROUNDS } as HttpBenchResult;
    for (const c of [1, 16]) {
      out[`c${c}`] = {
        nats: {
          p50Ms: pick('nats', c, 'p50'),
          p99Ms: pick('nats', c, 'p99'),
          perSec: pick('nats', c, 'perSec'),
        },
        http: {
          p50Ms: pick('http', c, 'p50'),
          p99Ms: pick('http', c, 'p99'),
          perSec: pick('http', c, 'perSec'),
        },
        httpOverNatsP50: round(pick('http', c, 'p50') / pick('nats', c, 'p50'), 2),
        httpOverNatsThroughput: round(pick('http', c, 'perSec') / pick('nats', c, 'perSec'), 2),
      };
    }
    return out;
  } finally {
    await stopChild(httpProc);
    await stopChild(engine);
    await nc.close();
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      starts: { type: 'string', default: '1000' },
      rounds: { type: 'string', default: '3' },
      smoke: { type: 'boolean', default: false },
    },
  });
  const server = await NatsServer.start({ mappings: shardMapping(16) });
  try {
    const r = await runHttpBench({
      serverUrl: server.url,
      shards: 16,
      starts: values.smoke ? 50 : Number(values.starts),
      rounds: values.smoke ? 1 : Number(values.rounds),
      log: (s) => process.stderr.write(`[bench:http] ${s}\n`),
    });
    console.log(JSON.stringify(r, null, 2));
  } finally {
    await server.stop();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exit(1);
  });
}
