/**
 * `jetflow auth` (issue 17): the nats-server configuration of one jetflow account — a NATS account
 * per tenant, holding one user (nkey) per role with exactly the subjects that role needs. Pure:
 * returns the config text and the users' seeds; the CLI writes them.
 *
 * Roles (README, "Security"):
 * - `engine`: owns the account's jetflow subjects, streams and buckets (and reads trigger streams).
 * - `worker`: pulls its named queues only, reports results (which carry the task's proof, so a
 *   worker cannot complete another task), uses the attempt ledger and rate buckets.
 * - `service`: start / signal / query / cancel / history / search, for named workflow types, and
 *   follows their notifications and journals (`result()`, `watch()`, `follow()`).
 * - `operator`: the service verbs for every type, the admin verbs, read-only JetStream views.
 * - `console`: read-only: query, history, search, notifications, journals.
 *
 * No role but the engine may publish on the inbox (`<p>.inbox.>`, `<p>.in.>`), timer
 * (`<p>.timer.>`) or events subjects; no role but the engine and the queue's own workers on a task
 * subject.
 */
import { nkeys } from '@nats-io/transport-node';
import { isToken, shardMapping } from '../contracts/subjects.js';
import { topologyNames } from '../nats/topology.js';

export const ROLES = ['engine', 'worker', 'service', 'operator', 'console'] as const;
export type Role = (typeof ROLES)[number];

export interface AuthOptions {
  /** Account name (a tenant): `A-Z a-z 0-9 _ -`. */
  account: string;
  /** jetflow subject prefix (default `wf`). */
  prefix: string;
  /** Shard count: the account's inbox mapping (must equal the engines' `shards`). */
  shards: number;
  /** Workflow types the `service` role may use; empty = every type. */
  types: readonly string[];
  /** Queues the `worker` role may pull; at least one. */
  queues: readonly string[];
  /**
   * Let workers age priority levels and move fairness-staged tasks: a message get and delete on
   * the tasks stream, which the server cannot limit to the worker's queues (so a worker could
   * read or delete other queues' task messages in this account). Off by default: without it,
   * levels are served strictly (no aging) and tasks with a `fairnessKey` are never moved.
   */
  priorityWorkers?: boolean;
  /** The account's JetStream limits (nats-server units, e.g. `1G`); absent = unlimited. */
  maxFile?: string;
  maxMem?: string;
  /** Max payload of this account's connections, bytes (absent: the server's `max_payload`). */
  maxPayload?: number;
}

export interface RolePermissions {
  publish: string[];
  subscribe: string[];
}

/** The exact subjects a role may publish and subscribe on. */
export function rolePermissions(role: Role, o: AuthOptions): RolePermissions {
  const n = topologyNames(o.prefix);
  const s = n.subjects;
  const p = o.prefix;
  const api = '$JS.API';
  const types = o.types.length ? o.types : ['*'];
  /** Follow one subject filter of a stream with an ordered (ephemeral) consumer. */
  const follow = (stream: string, filters: string[]) => [
    ...filters.map((f) => `${api}.CONSUMER.CREATE.${stream}.*.${f}`),
    `${api}.CONSUMER.MSG.NEXT.${stream}.*`,
    `${api}.CONSUMER.INFO.${stream}.*`,
    `${api}.CONSUMER.DELETE.${stream}.*`,
    `${api}.STREAM.INFO.${stream}`,
  ];
  const kv = (bucket: string) => [
    `$KV.${bucket}.>`,
    `${api}.STREAM.INFO.KV_${bucket}`,
    `${api}.STREAM.MSG.GET.KV_${bucket}`,
    `${api}.DIRECT.GET.KV_${bucket}.>`,
  ];
  const replies = ['_INBOX.>'];
  switch (role) {
    case 'engine': {
      const all = [`${p}.>`, `${api}.>`, '$JS.ACK.>', '$JS.FC.>', '$KV.>', ...replies];
      return { publish: all, subscribe: all };
    }
    case 'worker':
      return {
        publish: [
          `${api}.INFO`,
          `${api}.STREAM.INFO.${n.tasksStream}`,
          // Only with `priorityWorkers` (the API cannot limit these to the worker's queues): the
          // oldest waiting task of a level (aging, `maxWaitMs`) is a message get, and a staged
          // task moved onto its level's subject (fairness keys) is deleted from staging.
          ...(o.priorityWorkers
            ? [
                `${api}.STREAM.MSG.GET.${n.tasksStream}`,
                `${api}.STREAM.MSG.DELETE.${n.tasksStream}`,
              ]
            : []),
          ...o.queues.flatMap((q) => [
            ...[1, 2, 3, 4, 5].flatMap((l) => {
              const c = n.levelConsumer(q, l);
              return [
                `${api}.CONSUMER.CREATE.${n.tasksStream}.${c}`,
                `${api}.CONSUMER.CREATE.${n.tasksStream}.${c}.>`,
                `${api}.CONSUMER.DURABLE.CREATE.${n.tasksStream}.${c}`,
                `${api}.CONSUMER.INFO.${n.tasksStream}.${c}`,
                `${api}.CONSUMER.MSG.NEXT.${n.tasksStream}.${c}`,
                `$JS.ACK.${n.tasksStream}.${c}.>`,
              ];
            }),
            // Retries and releases of its own queue's tasks.
            `${p}.task.${q}.>`,
          ]),
          // Results and attempt notices: any workflow, but only with the task's proof. The server
          // checks a publish after its mappings: `<p>.inbox.result.…` as the shard subject.
          s.shardInbox('*' as unknown as number, 'result', '*', '*'),
          ...kv(n.attemptsBucket),
          ...kv(n.ratesBucket),
          ...replies,
        ],
        subscribe: [...o.queues.map((q) => s.taskControl(q)), ...replies],
      };
    case 'service':
      return {
        publish: [
          `${api}.INFO`,
          ...types.flatMap((t) => [
            s.start(t, '*'),
            s.signal(t, '*'),
            s.query(t, '*'),
            s.cancel(t, '*'),
            s.history(t, '*'),
          ]),
          s.search,
          `${s.search}.>`,
          ...follow(
            n.eventsStream,
            types.map((t) => s.events(t, '*')),
          ),
          ...follow(
            n.historyStream,
            types.map((t) => s.journal(t, '*')),
          ),
          ...replies,
        ],
        subscribe: [...replies],
      };
    case 'operator':
      return {
        publish: [
          `${api}.INFO`,
          ...Object.values(s.publicWildcards),
          s.historyWildcard,
          s.search,
          `${s.search}.>`,
          `${p}.admin.>`,
          // Read-only views of every stream (why, ls, follow) and ephemeral consumers.
          `${api}.STREAM.NAMES`,
          `${api}.STREAM.LIST`,
          `${api}.STREAM.INFO.*`,
          `${api}.STREAM.MSG.GET.*`,
          `${api}.DIRECT.GET.>`,
          `${api}.CONSUMER.INFO.*.*`,
          `${api}.CONSUMER.LIST.*`,
          `${api}.CONSUMER.NAMES.*`,
          ...follow(n.eventsStream, [s.eventsWildcard]),
          ...follow(n.historyStream, [s.journalWildcard]),
          ...replies,
        ],
        subscribe: [`${p}.admin.bulk.*`, `${p}.batch.>`, ...replies],
      };
    case 'console':
      return {
        publish: [
          `${api}.INFO`,
          s.publicWildcards.query,
          s.historyWildcard,
          s.search,
          `${s.search}.>`,
          ...follow(n.eventsStream, [s.eventsWildcard]),
          ...follow(n.historyStream, [s.journalWildcard]),
          ...replies,
        ],
        subscribe: [...replies],
      };
  }
}

export interface AuthConfig {
  /** The account's block for a server's `accounts { … }`: `NAME: { … }`. */
  account: string;
  /**
   * The file `jetflow auth` writes: the account block with a header. A server config includes it
   * inside its `accounts { … }` (one `include` per tenant; see `config/tenants.conf`).
   */
  config: string;
  /** Each role's user: public nkey and seed (the secret, for the role's processes only). */
  users: Record<Role, { publicKey: string; seed: string }>;
}

const quote = (v: string) => JSON.stringify(v);
const list = (xs: string[]) => `[${xs.map(quote).join(', ')}]`;

function check(o: AuthOptions): void {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(o.account))
    throw new TypeError(`invalid account ${quote(o.account)}: 1-64 of A-Z a-z 0-9 _ -`);
  for (const t of o.types) if (!isToken(t)) throw new TypeError(`invalid type ${quote(t)}`);
  if (o.queues.length === 0) throw new TypeError('at least one queue for the worker role');
  for (const q of o.queues) if (!isToken(q)) throw new TypeError(`invalid queue ${quote(q)}`);
  if (o.maxPayload !== undefined && !(Number.isInteger(o.maxPayload) && o.maxPayload > 0))
    throw new TypeError(`invalid max payload ${o.maxPayload}`);
}

/**
 * The account of one jetflow deployment (one tenant): its JetStream limits, the inbox shard
 * mapping for its prefix, and one nkey user per role with {@link rolePermissions}.
 * `seeds` reuses existing users (public keys derived from them) instead of making new ones.
 */
export function authConfig(o: AuthOptions, seeds: Partial<Record<Role, string>> = {}): AuthConfig {
  check(o);
  const users = {} as AuthConfig['users'];
  for (const role of ROLES) {
    const kp = seeds[role]
      ? nkeys.fromSeed(new TextEncoder().encode(seeds[role]))
      : nkeys.createUser();
    users[role] = { publicKey: kp.getPublicKey(), seed: new TextDecoder().decode(kp.getSeed()) };
  }
  const js = [
    ...(o.maxMem ? [`max_mem: ${o.maxMem}`] : []),
    ...(o.maxFile ? [`max_file: ${o.maxFile}`] : []),
  ];
  const lines: string[] = [];
  lines.push(`${o.account}: {`);
  lines.push(`  jetstream: ${js.length ? `{ ${js.join(', ')} }` : 'enabled'}`);
  if (o.maxPayload !== undefined) lines.push(`  limits: { max_payload: ${o.maxPayload} }`);
  lines.push('  # The inbox is partitioned into shards by the server (see nats.conf).');
  lines.push('  mappings: {');
  for (const [from, to] of Object.entries(shardMapping(o.shards, o.prefix)))
    lines.push(`    ${quote(from)}: ${quote(to)}`);
  lines.push('  }');
  lines.push('  users: [');
  for (const role of ROLES) {
    const perm = rolePermissions(role, o);
    lines.push(`    # ${role}`);
    lines.push(`    { nkey: ${users[role].publicKey}, permissions: {`);
    lines.push(`        publish: { allow: ${list(perm.publish)} }`);
    lines.push(`        subscribe: { allow: ${list(perm.subscribe)} }`);
    lines.push(`    } }`);
  }
  lines.push('  ]');
  lines.push('}');
  const account = lines.join('\n');
  const header = [
    `# jetflow account ${o.account} (prefix ${o.prefix}, ${o.shards} shards), written by \`jetflow auth\`.`,
    `# service types: ${o.types.length ? o.types.join(', ') : 'all'}; worker queues: ${o.queues.join(', ')}.`,
    "# Include it inside the server config's `accounts { … }` block: `include ./<file>`.",
    '# Each role connects with its seed: NATS_NKEY=<account>-<role>.nk.',
  ];
  const config = `${header.join('\n')}\n${account}\n`;
  return { account, config, users };
}
