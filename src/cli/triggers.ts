/**
 * `jetflow triggers …`: the operator verbs on triggers. One client request each; the CLI only
 * parses and prints.
 */
import type { RewindReply, TriggerLedgerEntry, TriggerRow } from '../engine/triggers.js';
import { ExitCode, UsageError } from './exit.js';
import { parseDuration, withClient, type Io, type ServiceOptions } from './service.js';

export interface TriggersOptions extends ServiceOptions {
  seq?: string;
  key?: string;
  all?: boolean;
  reason?: string;
  by?: string;
  toSeq?: string;
  since?: string;
  timeout?: string;
}

const int = (text: string | undefined, what: string): number => {
  const n = Number(text);
  if (text === undefined || !Number.isInteger(n) || n < 1)
    throw new UsageError(`${what} must be a positive integer, got ${JSON.stringify(text)}`);
  return n;
};

const time = (ms: number) =>
  new Date(ms)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, '');

/** `jetflow triggers [verb] [name]`. */
export async function triggersVerb(
  verb: string | undefined,
  name: string | undefined,
  o: TriggersOptions,
  io: Io,
): Promise<number> {
  const v = verb ?? 'list';
  const need = () => {
    if (!name) throw new UsageError(`triggers ${v} needs <name>`);
    return name;
  };
  const print = (x: unknown) => io.out.line(JSON.stringify(x, null, 2));
  switch (v) {
    case 'list': {
      const r = await withClient(o, io, (c) => c.triggers<{ triggers: TriggerRow[] }>('list'));
      if (o.json) return (print(r), ExitCode.Ok);
      if (r.triggers.length === 0) io.out.line('no triggers are declared by the engines');
      for (const t of r.triggers) {
        io.out.line(
          `${io.out.paint('cyan', t.name)}  ${t.kind} ${t.workflowType}  ${t.stream ? `stream ${t.stream}` : 'core subject (at most once)'}  filter ${t.filter}`,
        );
        const c = t.counts;
        io.out.line(
          `  holder ${t.holder ?? '-'}  pending ${t.pending ?? '-'}  ack pending ${t.ackPending ?? '-'}  rate ${t.rate ?? '-'}/s  parked ${t.parked}${t.paused ? '  PAUSED' : ''}`,
        );
        if (c)
          io.out.line(
            `  started ${c.started}  signaled ${c.signaled}  duplicate ${c.duplicate}  parked ${c.parked}  skipped ${c.skipped}  forwarded ${c.forwarded}`,
          );
        if (t.lastError)
          io.out.line(
            io.out.paint(
              'red',
              `  last error ${t.lastError.code} at seq ${t.lastError.seq} (${time(t.lastError.at)}): ${t.lastError.message}`,
            ),
          );
      }
      return ExitCode.Ok;
    }
    case 'parked': {
      const r = await withClient(o, io, (c) =>
        c.triggers<{
          parked: {
            seq: number;
            subject: string;
            key?: string;
            error: { code: string; message: string };
            at: number;
            body: string;
          }[];
        }>('parked', { name: need() }),
      );
      if (o.json) return (print(r), ExitCode.Ok);
      if (r.parked.length === 0) io.out.line(`${name}: nothing parked`);
      for (const p of r.parked)
        io.out.line(
          `seq ${p.seq}  ${p.subject}  key ${p.key ?? '-'}  ${time(p.at)}  ${p.error.code}: ${p.error.message}  body ${p.body.length > 80 ? `${p.body.slice(0, 77)}...` : p.body}`,
        );
      return ExitCode.Ok;
    }
    case 'replay': {
      const body: Record<string, unknown> = { name: need() };
      if (o.seq !== undefined) body.seq = int(o.seq, '--seq');
      if (o.key !== undefined) body.key = o.key;
      if (o.all) body.all = true;
      if (Object.keys(body).length === 1)
        throw new UsageError('replay needs --seq, --key or --all');
      const r = await withClient(o, io, (c) =>
        c.triggers<{
          replayed: { seq: number; id?: string; outcome: string; error?: { message: string } }[];
          remaining: number;
        }>('replay', body, { timeoutMs: 120_000 }),
      );
      if (o.json) return (print(r), ExitCode.Ok);
      for (const x of r.replayed)
        io.out.line(
          `seq ${x.seq}  ${x.id ?? '-'}  ${x.outcome}${x.error ? `: ${x.error.message}` : ''}`,
        );
      io.out.line(`${r.remaining} still parked`);
      return ExitCode.Ok;
    }
    case 'skip': {
      if (!o.reason) throw new UsageError('skip needs --reason');
      const r = await withClient(o, io, (c) =>
        c.triggers('skip', {
          name: need(),
          seq: int(o.seq, '--seq'),
          reason: o.reason,
          by: o.by ?? io.env.USER ?? 'operator',
        }),
      );
      if (o.json) return (print(r), ExitCode.Ok);
      io.out.line(
        `${name}: message ${o.seq} skipped (in the ledger: triggers trace ${name} --seq ${o.seq})`,
      );
      return ExitCode.Ok;
    }
    case 'pause':
    case 'resume': {
      const r = await withClient(o, io, (c) =>
        c.triggers<{ paused: boolean }>(v, { name: need() }),
      );
      if (o.json) return (print(r), ExitCode.Ok);
      io.out.line(`${name}: ${r.paused ? 'paused' : 'consuming'}`);
      return ExitCode.Ok;
    }
    case 'rewind': {
      const body: Record<string, unknown> = { name: need() };
      if (o.toSeq !== undefined) body.toSeq = int(o.toSeq, '--to-seq');
      if (o.since !== undefined) body.since = Date.now() - parseDuration(o.since, '--since');
      if ((o.toSeq === undefined) === (o.since === undefined))
        throw new UsageError('rewind needs one of --to-seq N or --since <duration>');
      const waitMs = parseDuration(o.timeout ?? '10m', '--timeout');
      body.waitMs = waitMs;
      const r = await withClient(o, io, (c) =>
        c.triggers<RewindReply>('rewind', body, { timeoutMs: waitMs + 60_000 }),
      );
      if (o.json) return (print(r), ExitCode.Ok);
      io.out.line(
        `${name}: rewound to seq ${r.fromSeq}; re-read ${r.reread} messages up to seq ${r.toSeq}: ${r.new} new, ${r.duplicates} duplicate, ${r.parked} parked, ${r.skipped} skipped before${r.done ? '' : ' (not finished within the timeout)'}`,
      );
      return r.done ? ExitCode.Ok : ExitCode.Unavailable;
    }
    case 'trace': {
      const seq = int(o.seq, '--seq');
      const r = await withClient(o, io, (c) =>
        c.triggers<{ entries: TriggerLedgerEntry[] }>('trace', { name: need(), seq }),
      );
      if (o.json) return (print(r), ExitCode.Ok);
      if (r.entries.length === 0) {
        io.out.line(`${name} seq ${seq}: no ledger entry`);
        return ExitCode.NotFound;
      }
      for (const e of r.entries)
        io.out.line(
          `${time(e.at)}  seq ${e.seq}  ${e.outcome.padEnd(9)}  ${e.workflowType}/${e.id ?? '-'}  ${e.subject}${e.via ? `  (${e.via})` : ''}${e.error ? `  ${e.error.code}: ${e.error.message}` : ''}${e.reason ? `  by ${e.by}: ${e.reason}` : ''}  engine ${e.engine}`,
        );
      return ExitCode.Ok;
    }
    default:
      throw new UsageError(
        `unknown triggers verb ${JSON.stringify(v)} (list, parked, replay, skip, pause, resume, rewind, trace)`,
      );
  }
}
