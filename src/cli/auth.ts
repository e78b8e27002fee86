/** `jetflow auth`: write the nats-server account of one jetflow deployment (issue 17). */
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { authConfig, ROLES, type Role } from '../security/auth.js';
import type { Io } from './service.js';

export interface AuthFlags {
  account: string;
  prefix?: string;
  shards?: string;
  types?: string;
  queues: string;
  out: string;
  maxFile?: string;
  maxMem?: string;
  maxPayload?: string;
  priorityWorkers?: boolean;
}

const split = (s: string | undefined) =>
  (s ?? '')
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);

/**
 * Writes `<out>/<account>.conf` (the account's block, to include inside the server config's
 * `accounts { … }`) and
 * `<out>/<account>-<role>.nk` (each role's nkey seed, mode 0600). Seeds already in `<out>` are
 * kept, so running it again with other types or queues changes permissions, not credentials.
 */
export function authVerb(o: AuthFlags, io: Io): number {
  mkdirSync(o.out, { recursive: true });
  const seedFile = (r: Role) => join(o.out, `${o.account}-${r}.nk`);
  const seeds: Partial<Record<Role, string>> = {};
  for (const r of ROLES)
    if (existsSync(seedFile(r))) seeds[r] = readFileSync(seedFile(r), 'utf8').trim();
  const c = authConfig(
    {
      account: o.account,
      prefix: o.prefix ?? 'wf',
      shards: Number(o.shards ?? 16),
      types: split(o.types),
      queues: split(o.queues),
      ...(o.maxFile ? { maxFile: o.maxFile } : {}),
      ...(o.maxMem ? { maxMem: o.maxMem } : {}),
      ...(o.maxPayload ? { maxPayload: Number(o.maxPayload) } : {}),
      ...(o.priorityWorkers ? { priorityWorkers: true } : {}),
    },
    seeds,
  );
  const conf = join(o.out, `${o.account}.conf`);
  writeFileSync(conf, c.config);
  io.out.line(
    `jetflow: wrote ${conf} (in the nats-server config: accounts { include ./${o.account}.conf })`,
  );
  for (const r of ROLES) {
    writeFileSync(seedFile(r), `${c.users[r].seed}\n`, { mode: 0o600 });
    chmodSync(seedFile(r), 0o600);
    io.out.line(`  ${r.padEnd(8)} ${c.users[r].publicKey}  NATS_NKEY=${seedFile(r)}`);
  }
  return 0;
}
