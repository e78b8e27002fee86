/** Human output of the service verbs: aligned key/value tables, colour only on a TTY. */
import type {
  JournalEffect,
  JournalEntry,
  JournalState,
  WorkflowStatus,
} from '../contracts/wire.js';

/** ANSI SGR open/close codes of the few styles used. */
const SGR = {
  dim: [2, 22],
  red: [31, 39],
  green: [32, 39],
  yellow: [33, 39],
  blue: [34, 39],
  magenta: [35, 39],
  cyan: [36, 39],
} as const;
type Style = keyof typeof SGR;

export interface Out {
  line(text: string): void;
  /** `text` styled when this stream is a terminal (and `NO_COLOR` is unset), plain otherwise. */
  paint(style: Style, text: string): string;
}

export function createOut(stream: NodeJS.WriteStream, env: NodeJS.ProcessEnv): Out {
  // no-color.org: NO_COLOR set to a non-empty value turns colour off.
  const colour = stream.isTTY === true && !env.NO_COLOR && env.TERM !== 'dumb';
  return {
    line: (text) => void stream.write(text + '\n'),
    paint: (style, text) => (colour ? `\x1b[${SGR[style][0]}m${text}\x1b[${SGR[style][1]}m` : text),
  };
}

export const STATUS_STYLE: Record<WorkflowStatus, Style> = {
  deferred: 'magenta',
  running: 'cyan',
  completed: 'green',
  failed: 'red',
  canceled: 'yellow',
};

/** A value on one line: strings as they are, anything else as compact JSON. */
export function inline(v: unknown): string {
  if (typeof v === 'string') return v;
  return v === undefined ? '-' : JSON.stringify(v);
}

/** Rows of `key  value`, keys padded to one column; rows whose value is undefined are left out. */
export function table(out: Out, rows: [string, string | undefined][]): void {
  const shown = rows.filter((r): r is [string, string] => r[1] !== undefined);
  const width = Math.max(...shown.map(([k]) => k.length));
  for (const [k, v] of shown) out.line(`${out.paint('dim', k.padEnd(width))}  ${v}`);
}

const ENTRY_STYLE: Record<JournalEntry['kind'], Style> = {
  step: 'blue',
  rejected: 'magenta',
  ignored: 'dim',
  operator: 'yellow',
  admission: 'cyan',
};

/** What a journaled effect did, short: `task charge(a1)`, `timer reminder @10:00:05`. */
function effectText(e: JournalEffect): string | undefined {
  switch (e.kind) {
    case 'task':
      return `task ${e.activity}(${e.actorId})`;
    case 'stopTask':
      return `stop ${e.actorId}`;
    case 'timer':
      return `timer ${e.timerId}${e.event ? ` ${e.event}` : ''} @${new Date(e.dueAt).toISOString()}`;
    case 'cancelTimer':
      return `cancel timer ${e.timerId}`;
    case 'message':
      return `message ${e.subject}${e.event ? ` ${e.event}` : ''}`;
    case 'notify':
      return undefined; // every step notifies: not worth a column
  }
}

const paths = (s: JournalState | undefined) => (s ? s.paths.join(',') || inline(s.value) : '');

/**
 * One journal entry as one or two lines: time, step, kind, event, from -> to, then effects and
 * errors indented below.
 */
export function journalLines(out: Out, e: JournalEntry): string[] {
  const at = new Date(e.at).toISOString().replace('T', ' ').replace(/Z$/, '');
  const head = `${at}  ${`step ${e.step}`.padEnd(8)}  ${out.paint(ENTRY_STYLE[e.kind], e.kind.padEnd(8))}`;
  const lines: string[] = [];
  const more: string[] = [];
  switch (e.kind) {
    case 'step': {
      const move = e.from ? `${paths(e.from)} -> ${paths(e.to)}` : `-> ${paths(e.to)}`;
      const status =
        e.status === 'running' ? '' : `  ${out.paint(STATUS_STYLE[e.status], e.status)}`;
      const reason = (e.event.payload as { reason?: unknown } | undefined)?.reason;
      const why = e.cause === 'cancel' && typeof reason === 'string' ? `  reason ${reason}` : '';
      lines.push(`${head}  ${e.event.type}  ${move}${status}${why}`);
      const effects = e.effects.map(effectText).filter((x): x is string => x !== undefined);
      if (effects.length > 0) more.push(`effects: ${effects.join('; ')}`);
      if (e.activity) {
        const a = e.activity;
        more.push(
          `activity ${a.activity ?? a.actorId} attempt ${a.attempt}: ${a.ok ? 'ok' : `failed${a.exhausted ? ' (retries exhausted)' : ''}`}`,
        );
      }
      if (e.trigger) more.push(`trigger ${e.trigger.name} seq ${e.trigger.seq}`);
      if (e.error) more.push(out.paint('red', `error ${e.error.code}: ${e.error.message}`));
      break;
    }
    case 'rejected':
      lines.push(`${head}  ${e.event.type}`);
      more.push(out.paint('red', `error ${e.error.code}: ${e.error.message}`));
      if (e.accepts.length > 0) more.push(`accepts ${e.accepts.join(', ')}`);
      break;
    case 'ignored':
      lines.push(`${head}  (${e.cause})  ${e.reason}`);
      break;
    case 'admission':
      lines.push(`${head}  ${e.stage} ${e.outcome}  ${e.what}`);
      break;
    case 'operator':
      lines.push(
        `${head}  ${e.action}${e.by ? ` by ${e.by}` : ''}${e.reason ? `: ${e.reason}` : ''}`,
      );
      break;
  }
  for (const m of more) lines.push(`${' '.repeat(34)}${m}`);
  return lines;
}
