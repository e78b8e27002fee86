/**
 * Restate peer measurement for benchmark workload 1 ("sequential"): a durable handler running
 * three sequential `ctx.run` steps that each return input + 1, N invocations at a given
 * concurrency, latency measured from the client's request to the response that carries the result.
 *
 * `runRestate(opts)` starts everything itself and tears it all down (processes killed, temp dir
 * deleted) on every path; it never throws — a peer that cannot be started or measured is reported
 * as `{ system: 'restate', notMeasured: reason }`.
 *
 * Topology (all local, two child processes so their CPU can be read from /proc):
 *   - restate-server: the binary shipped by the npm package @restatedev/restate-server (through
 *     its platform package @restatedev/restate-server-<os>-<arch>), single node, default config
 *     (durable on disk: replicated loglet with RocksDB WAL fsync, as shipped) with a fresh temp
 *     base dir.
 *   - the SDK endpoint bench/peers/restate-service.ts (HTTP/2 on 127.0.0.1), registered through
 *     the admin API (POST /deployments).
 *   - the client (this process) calls the ingress request-response (POST /Seq/run, or
 *     POST /SeqWf/<id>/run for `kind: 'workflow'`) over keep-alive HTTP/1.1.
 *
 * Network isolation: restate-server always starts a "latest release" check against GitHub at
 * boot. To keep the benchmark strictly local, by default the server and the service are run in
 * a fresh network namespace that has only a loopback interface (`unshare -n`, the service joins
 * it with `nsenter`), and the client reaches the ingress and admin API through the Unix sockets
 * restate-server creates in its base dir. If namespaces are unavailable (not root), or with
 * `isolateNetwork: false`, the server listens on free 127.0.0.1 TCP ports instead (the check
 * then just fails without network access).
 *
 * Measured: throughput (workflows/s over the measured phase), p50/p99 latency, CPU seconds per
 * workflow of restate-server (server) and of the SDK endpoint process (worker), and the
 * restate-server RSS at the end of the measured phase. A warm-up batch runs first and is not
 * counted.
 */
import { spawnSync } from 'node:child_process';
import { Agent, request } from 'node:http';
import { createRequire } from 'node:module';
import { arch, platform } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  cpuSampler,
  errorMessage,
  freePort,
  invalidOpts,
  loadTimeoutMs,
  makeTempDir,
  percentile,
  readRssMb,
  round,
  runClosedLoop,
  spawnManaged,
  stopManaged,
  waitForOutput,
  waitUntil,
  warmupCount,
} from './common.js';
import type { Managed, PeerOpts, PeerResult } from './common.js';

export interface RestateOpts extends PeerOpts {
  /** `service` (default): stateless durable handler `Seq/run`; `workflow`: keyed `SeqWf/<id>/run`. */
  kind?: 'service' | 'workflow';
  /** Run restate in a loopback-only network namespace (default: when available). */
  isolateNetwork?: boolean;
}

const SERVICE_FILE = fileURLToPath(new URL('./restate-service.ts', import.meta.url));
/** tsx's ESM loader, by absolute URL so children need not resolve it from their cwd. */
const TSX_LOADER = import.meta.resolve('tsx');
const NODE_NAME = 'n1';
const REQUEST_TIMEOUT_MS = 30_000;

/** Where a request goes: a Unix socket (isolated mode) or a loopback TCP port. */
type Target = { socketPath: string } | { host: '127.0.0.1'; port: number };

interface HttpReply {
  status: number;
  body: string;
}

/** One HTTP/1.1 request with a bounded duration; rejects on network errors and timeouts. */
function httpCall(
  agent: Agent,
  target: Target,
  method: 'GET' | 'POST',
  path: string,
  body?: string,
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = {};
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(Buffer.byteLength(body));
    }
    const req = request({ ...target, agent, method, path, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () =>
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
      );
      res.on('error', reject);
    });
    req.setTimeout(REQUEST_TIMEOUT_MS, () =>
      req.destroy(new Error(`${method} ${path} timed out after ${REQUEST_TIMEOUT_MS} ms`)),
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** Path of the restate-server binary inside node_modules, or a reason why there is none. */
function resolveServerBinary(): { bin: string } | { reason: string } {
  const pkg = `@restatedev/restate-server-${platform()}-${arch()}`;
  try {
    return { bin: createRequire(import.meta.url).resolve(`${pkg}/bin/restate-server`) };
  } catch {
    return {
      reason: `restate-server binary not found: npm package ${pkg} (optional dependency of @restatedev/restate-server) is not installed for this platform`,
    };
  }
}

/** True when this process may create a network namespace with a working loopback. */
function canIsolateNetwork(): boolean {
  const r = spawnSync('unshare', ['-n', 'sh', '-c', 'ip link set lo up'], {
    stdio: 'ignore',
    timeout: 5_000,
  });
  return r.status === 0;
}

export async function runRestate(opts: RestateOpts): Promise<PeerResult> {
  const { workflows, concurrency, log } = opts;
  const kind = opts.kind ?? 'service';
  const invalid = invalidOpts(opts);
  if (invalid) return { system: 'restate', notMeasured: invalid };
  const found = resolveServerBinary();
  if ('reason' in found) return { system: 'restate', notMeasured: found.reason };

  let temp: Awaited<ReturnType<typeof makeTempDir>> | undefined;
  let server: Managed | undefined;
  let service: Managed | undefined;
  const agent = new Agent({ keepAlive: true, maxSockets: Math.max(1, concurrency) });
  try {
    temp = await makeTempDir('jf-restate-');
    const dir = temp.path;
    const isolate = (opts.isolateNetwork ?? true) && canIsolateNetwork();
    if (opts.isolateNetwork !== false && !isolate) {
      log(
        'restate: cannot create a network namespace (needs root + unshare/ip): using loopback TCP',
      );
    }

    const serverArgs = [
      '--no-logo',
      '--log-disable-ansi-codes',
      'true',
      '--base-dir',
      dir,
      '--node-name',
      NODE_NAME,
    ];
    const serverEnv: NodeJS.ProcessEnv = {
      ...process.env,
      RESTATE_DISABLE_TELEMETRY: 'true',
      DO_NOT_TRACK: '1',
    };
    let ingress: Target;
    let admin: Target;
    if (isolate) {
      serverEnv.RESTATE_LISTEN_MODE = 'unix';
      ingress = { socketPath: join(dir, NODE_NAME, 'ingress.sock') };
      admin = { socketPath: join(dir, NODE_NAME, 'admin.sock') };
      // `unshare` (no --fork) and `exec` keep one pid: the spawned child *is* restate-server.
      server = await spawnManaged(
        'restate-server',
        'unshare',
        ['-n', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"', found.bin, ...serverArgs],
        { env: serverEnv },
      );
    } else {
      const [fabricPort, ingressPort, adminPort] = [
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      Object.assign(serverEnv, {
        RESTATE_LISTEN_MODE: 'tcp',
        RESTATE_BIND_ADDRESS: `127.0.0.1:${fabricPort}`,
        RESTATE_ADVERTISED_ADDRESS: `http://127.0.0.1:${fabricPort}/`,
        RESTATE_INGRESS__BIND_ADDRESS: `127.0.0.1:${ingressPort}`,
        RESTATE_ADMIN__BIND_ADDRESS: `127.0.0.1:${adminPort}`,
      });
      ingress = { host: '127.0.0.1', port: ingressPort };
      admin = { host: '127.0.0.1', port: adminPort };
      server = await spawnManaged('restate-server', found.bin, serverArgs, { env: serverEnv });
    }
    const serverProc = server;
    log(
      `restate: server pid ${serverProc.pid} (${isolate ? 'netns + unix sockets' : 'loopback TCP'})`,
    );

    await waitUntil(
      async () => {
        if (serverProc.hasExited()) {
          throw new Error(`restate-server exited: ${serverProc.output().slice(-2000)}`);
        }
        const a = await httpCall(agent, admin, 'GET', '/health');
        const i = await httpCall(agent, ingress, 'GET', '/restate/health');
        return a.status === 200 && i.status === 200;
      },
      60_000,
      'restate-server',
      200,
    );

    // The SDK endpoint: a separate node process (tsx for TypeScript), in the server's netns.
    const nodeArgs = ['--import', TSX_LOADER, SERVICE_FILE];
    const serviceEnv: NodeJS.ProcessEnv = { ...process.env, PORT: '0', RESTATE_LOGGING: 'WARN' };
    service = isolate
      ? await spawnManaged(
          'restate-service',
          'nsenter',
          [`--net=/proc/${serverProc.pid}/ns/net`, '--', process.execPath, ...nodeArgs],
          { env: serviceEnv },
        )
      : await spawnManaged('restate-service', process.execPath, nodeArgs, { env: serviceEnv });
    const serviceProc = service;
    const listening = await waitForOutput(service, /RESTATE_SERVICE_LISTENING (\d+)/, 30_000);
    const servicePort = Number(listening[1]);
    log(`restate: service pid ${service.pid} on 127.0.0.1:${servicePort}`);

    await waitUntil(
      async () => {
        const reply = await httpCall(
          agent,
          admin,
          'POST',
          '/deployments',
          JSON.stringify({ uri: `http://127.0.0.1:${servicePort}` }),
        );
        if (reply.status >= 200 && reply.status < 300) return true;
        throw new Error(`POST /deployments -> ${reply.status} ${reply.body.slice(0, 300)}`);
      },
      30_000,
      'deployment registration',
      250,
    );

    const runId = Date.now().toString(36);
    const invoke = async (key: string): Promise<void> => {
      const path = kind === 'service' ? '/Seq/run' : `/SeqWf/${key}/run`;
      const reply = await httpCall(agent, ingress, 'POST', path, '0');
      if (reply.status !== 200 || reply.body.trim() !== '3') {
        throw new Error(`invocation ${path} -> ${reply.status} ${reply.body.slice(0, 300)}`);
      }
    };
    // The first invocation may wait for partitions/schema to become ready: retry it (bounded).
    await waitUntil(
      async () => {
        await invoke(`${runId}-probe-${Date.now()}`);
        return true;
      },
      30_000,
      'first invocation',
      250,
    );

    const warm = warmupCount(workflows, concurrency);
    log(`restate: warm-up ${warm} (${kind}, concurrency ${concurrency})`);
    await runClosedLoop(
      warm,
      concurrency,
      (i) => invoke(`${runId}-w${i}`),
      loadTimeoutMs(warm, concurrency),
      [serverProc, serviceProc],
    );

    log(`restate: measuring ${workflows} workflows at concurrency ${concurrency}`);
    const serverCpu = cpuSampler([serverProc.pid]);
    const workerCpu = cpuSampler([service.pid]);
    const { latenciesMs, wallMs } = await runClosedLoop(
      workflows,
      concurrency,
      (i) => invoke(`${runId}-m${i}`),
      loadTimeoutMs(workflows, concurrency),
      [serverProc, serviceProc],
    );
    const serverCpuSec = serverCpu.delta();
    const workerCpuSec = workerCpu.delta();
    const serverRssMb = readRssMb(serverProc.pid);
    latenciesMs.sort((a, b) => a - b);
    return {
      system: 'restate',
      workload: 'sequential',
      concurrency,
      workflows,
      throughput: round(workflows / (wallMs / 1000), 1),
      p50Ms: round(percentile(latenciesMs, 50), 2),
      p99Ms: round(percentile(latenciesMs, 99), 2),
      ...(serverCpuSec === undefined
        ? {}
        : { serverCpuSecPerWf: round(serverCpuSec / workflows, 6) }),
      ...(workerCpuSec === undefined
        ? {}
        : { workerCpuSecPerWf: round(workerCpuSec / workflows, 6) }),
      serverRssMb: round(serverRssMb, 1),
    };
  } catch (err) {
    const tail = server?.output().slice(-1500);
    if (tail) log(`restate: server output tail:\n${tail}`);
    return { system: 'restate', notMeasured: `restate run failed: ${errorMessage(err)}` };
  } finally {
    agent.destroy();
    await stopManaged(service, 3_000).catch(() => undefined);
    await stopManaged(server, 10_000).catch(() => undefined);
    await temp?.release().catch(() => undefined);
  }
}
