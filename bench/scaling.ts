/**
 * Scaling benchmark (`npm run bench:scaling`): workload 1 (3 sequential activities, c=64) with 1, 2
 * and 3 engine processes on one nats-server, then the failover time: SIGKILL one of 3 engines and
 * measure until every shard is held and pinned by the survivors again. On 2 cores the point is
 * correctness and no ownership bottleneck, not linear speed-up.
 */
import type { ChildProcess } from 'node:child_process';
import { spawnTs } from './processes.js';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { NatsServer } from '../test/harness/nats-server.js';
import { shardMapping } from '../src/contracts/subjects.js';
import { Client } from '../src/client/index.js';
import { systemStatus } from '../src/nats/status.js';
import type { Notification } from '../src/contracts/wire.js';
import { percentile, round, runClosedLoop } from './peers/common.js';

const { values } = parseArgs({ options: { smoke: { type: 'boolean', default: false } } });
const root = resolve(import.meta.dirname, '..');
const SHARDS = 64;
const FAILOVER_MS = 4_000;
const N = values.smoke ? 60 : 2000;
async function main(): Promise<void> {
  const server = await NatsServer.start({ mappings: shardMapping(SHARDS) });
  const rows: Record<string, unknown>[] = [];
  try {
    for (const engines of [1, 2, 3]) {
      const prefix = `scale${engines}`;
      const args = [
        'engine',
        '--nats-url',
        server.url,
        '--prefix',
        prefix,
        '--shards',
        String(SHARDS),
        '--workflows',
        resolve(root, 'bench/workflows.ts'),
        '--failover-ms',
        String(FAILOVER_MS),
      ];
      const procs: ChildProcess[] = [];
      for (let i = 0; i < engines; i++)
        procs.push(await spawnTs('src/cli/main.ts', args, '"engine started"'));
      procs.push(await spawnTs('bench/worker.ts', [server.url, prefix], 'worker ready'));
      const nc = await connect({ servers: server.url });
      const client = new Client(nc, { prefix, timeoutMs: 60_000 });
      // Wait until the engines have balanced the shards among themselves.
      const balanceBy = Date.now() + 60_000;
      for (;;) {
        if (Date.now() > balanceBy)
          throw new Error(`${engines} engines did not balance within 60 s`);
        const st = await systemStatus(nc, prefix, SHARDS, FAILOVER_MS / 2);
        if (st.engines.length === engines && st.shards.every((s) => s.claimedBy.length === 1))
          break;
        await new Promise((r) => setTimeout(r, 200));
      }
      const waiters = new Map<string, () => void>();
      nc.subscribe(`${prefix}.events.sequential.*`, {
        callback: (_e, m) => {
          const n = m.json<Notification>();
          if (n.type === 'completed') waiters.get(n.id)?.();
        },
      });
      const r = await runClosedLoop(
        N,
        64,
        async (i) => {
          const done = new Promise<void>((ok) => waiters.set(`w${i}`, ok));
          await client.start('sequential', `w${i}`, { x: i });
          await done;
        },
        600_000,
      );
      const lat = [...r.latenciesMs].sort((a, b) => a - b);
      const row: Record<string, unknown> = {
        engines,
        workflows: N,
        throughput: round(N / (r.wallMs / 1000), 1),
        p50Ms: round(percentile(lat, 50), 1),
        p99Ms: round(percentile(lat, 99), 1),
      };
      if (engines === 3) {
        const t0 = Date.now();
        procs[0]!.kill('SIGKILL');
        for (;;) {
          if (Date.now() - t0 > 60_000)
            throw new Error('shards not held again within 60 s of the kill');
          const st = await systemStatus(nc, prefix, SHARDS, FAILOVER_MS / 2);
          if (
            st.engines.length === 2 &&
            st.shards.every(
              (s) => s.claimedBy.length === 1 && s.pinnedEngine === s.holder && s.holder,
            )
          )
            break;
          await new Promise((res) => setTimeout(res, 50));
        }
        row.failoverMs = Date.now() - t0;
        row.configuredFailoverMs = FAILOVER_MS;
      }
      rows.push(row);
      process.stdout.write(JSON.stringify(row) + '\n');
      await nc.close();
      for (const p of procs) p.kill('SIGTERM');
      await Promise.all(
        procs.map((p) =>
          p.exitCode === null ? new Promise((ok) => p.once('exit', ok)) : Promise.resolve(),
        ),
      );
    }
  } finally {
    await server.stop();
  }
  process.stdout.write(
    '\n| engines | throughput (wf/s) | p50 ms | p99 ms | failover |\n|---|---|---|---|---|\n',
  );
  for (const r of rows)
    process.stdout.write(
      `| ${r.engines} | ${r.throughput} | ${r.p50Ms} | ${r.p99Ms} | ${r.failoverMs ? `${r.failoverMs} ms (failoverMs ${r.configuredFailoverMs})` : '-'} |\n`,
    );
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`scaling bench failed: ${String((err as Error)?.stack ?? err)}\n`);
    process.exit(1);
  },
);
