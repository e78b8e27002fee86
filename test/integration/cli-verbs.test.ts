/**
 * The service verbs of the built CLI (`bin/jetflow.js` → dist/) against a real nats-server and a
 * real `jetflow engine` process: human and `--json` output of `start`, `signal`, `query`,
 * `cancel`, `result`, `watch`, and every exit code with the input that causes it. Also
 * `jetflow worker` (a TypeScript activities module, loaded through tsx) and its SIGTERM drain.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { NatsServer } from '../harness/nats-server.js';
import { runRoot } from '../harness/nats-server.js';
import { repoRoot, startServer, TEST_SHARDS, uniquePrefix } from '../harness/jetflow.js';
import { JetflowProcess, repoBin, runJetflow, type CliRun } from '../harness/cli.js';

let server: NatsServer;
let engine: JetflowProcess;
const prefix = uniquePrefix();

beforeAll(async () => {
  server = await startServer();
  engine = await new JetflowProcess(
    [
      'engine',
      '--nats-url',
      server.url,
      '--prefix',
      prefix,
      '--shards',
      String(TEST_SHARDS),
      '--workflows',
      resolve(repoRoot, 'test/fixtures/workflows.ts'),
      '--name',
      `engine:${runRoot()}`,
    ],
    '"engine started"',
  ).start();
});
afterAll(async () => {
  await engine?.stop();
  await server?.stop();
});

const cli = (...args: string[]) =>
  runJetflow([...args, '--nats-url', server.url, '--prefix', prefix]);

/** One line on stderr, no stack trace. */
function oneLine(r: CliRun): string {
  const lines = r.stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(r.stderr).not.toMatch(/\n\s+at /);
  return lines[0]!;
}

describe('start', () => {
  it('human: an aligned table; a repeat says it existed (exit 0)', async () => {
    const r = await cli('start', 'counter', 's1', '--input', '{"label":"a"}');
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('workflow  counter/s1\nversion   1\ncreated   yes\n');
    expect(r.stdout).not.toContain('\x1b['); // no colour off a TTY
    const again = await cli('start', 'counter', 's1');
    expect(again.stdout).toContain('created   no');
  });

  it('--json: the start reply; --input @file reads JSON from a file', async () => {
    const file = join(runRoot(), `input-${prefix}.json`);
    writeFileSync(file, '{"label":"from-file"}');
    try {
      const r = await cli('start', 'counter', 's2', '--input', `@${file}`, '--json');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({
        id: 's2',
        type: 'counter',
        version: 1,
        created: true,
      });
      const q = JSON.parse((await cli('query', 'counter', 's2', '--json')).stdout) as {
        context: { label: string };
      };
      expect(q.context.label).toBe('from-file');
    } finally {
      const { rmSync } = await import('node:fs');
      rmSync(file, { force: true });
    }
  });

  it('exit 2: malformed --input JSON, a missing argument, an unknown flag or verb', async () => {
    const bad = await cli('start', 'counter', 's3', '--input', '{oops');
    expect(bad.code).toBe(2);
    expect(oneLine(bad)).toMatch(/^jetflow: --input is not valid JSON/);
    const missing = await cli('start', 'counter');
    expect(missing.code).toBe(2);
    expect(oneLine(missing)).toContain("missing required argument 'id'");
    const flag = await cli('start', 'counter', 's3', '--bogus');
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain("unknown option '--bogus'");
    const verb = await runJetflow(['strat']);
    expect(verb.code).toBe(2);
    expect(verb.stderr).toContain("unknown command 'strat'");
    expect((await runJetflow([])).code).toBe(2);
    expect((await runJetflow(['--help'])).code).toBe(0);
    const noFile = await cli('start', 'counter', 's3', '--input', '@/nonexistent/x.json');
    expect(noFile.code).toBe(2);
    expect(oneLine(noFile)).toContain('cannot read --input from /nonexistent/x.json');
  });

  it('exit 3: a type no engine registers', async () => {
    const r = await cli('start', 'nosuchtype', 'x1');
    expect(r.code).toBe(3);
    expect(oneLine(r)).toMatch(/^jetflow: unknown_type: /);
  });

  it('exit 4: an id that is not a subject token (bad request)', async () => {
    const r = await cli('start', 'counter', 'a.b');
    expect(r.code).toBe(4);
    expect(oneLine(r)).toMatch(/^jetflow: bad_request: invalid workflow id "a.b"/);
  });
});

describe('signal', () => {
  it('human and --json; --msg-id makes a retry count once', async () => {
    await cli('start', 'counter', 'g1');
    const r = await cli('signal', 'counter', 'g1', '{"type":"SIG","n":7}');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^workflow {2}counter\/g1\nevent {5}SIG\napplied {3}yes\nstep {6}1\n/);
    const j = await cli(
      'signal',
      'counter',
      'g1',
      '{"type":"SIG","n":8}',
      '--msg-id',
      'm-1',
      '--json',
    );
    expect(JSON.parse(j.stdout)).toMatchObject({ id: 'g1', type: 'counter', step: 2 });
    const dup = await cli('signal', 'counter', 'g1', '{"type":"SIG","n":8}', '--msg-id', 'm-1');
    expect(dup.code).toBe(0);
    expect(dup.stdout).toContain('applied   no (a repeat of this --msg-id');
  });

  it('exit 4: an event the workflow does not accept now, with what it accepts', async () => {
    await cli('start', 'counter', 'g2');
    const r = await cli('signal', 'counter', 'g2', '{"type":"GO"}');
    expect(r.code).toBe(4);
    expect(oneLine(r)).toMatch(
      /^jetflow: event_not_accepted: .*\(accepts now: BOOM, FINISH, SIG\)$/,
    );
    const j = await cli('signal', 'counter', 'g2', '{"type":"GO"}', '--json');
    expect(j.code).toBe(4);
    expect(JSON.parse(j.stdout)).toMatchObject({
      error: {
        code: 'event_not_accepted',
        exitCode: 4,
        details: { accepts: ['BOOM', 'FINISH', 'SIG'] },
      },
    });
  });

  it('exit 2: an event that is not JSON or has no type; exit 3: no such workflow', async () => {
    const notJson = await cli('signal', 'counter', 'g2', 'PAY');
    expect(notJson.code).toBe(2);
    expect(oneLine(notJson)).toContain('the event is not valid JSON');
    const noType = await cli('signal', 'counter', 'g2', '{"n":1}');
    expect(noType.code).toBe(2);
    const ghost = await cli('signal', 'counter', 'ghost', '{"type":"SIG","n":1}');
    expect(ghost.code).toBe(3);
    expect(oneLine(ghost)).toMatch(/^jetflow: not_found: /);
  });
});

describe('query', () => {
  it('human: status, state, accepts, context; --json: the query reply', async () => {
    await cli('start', 'counter', 'q1', '--input', '{"label":"L"}');
    await cli('signal', 'counter', 'q1', '{"type":"SIG","n":3}');
    const r = await cli('query', 'counter', 'q1');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      'workflow  counter/q1@1\nstatus    running\nstate     counting\nstep      1\n',
    );
    expect(r.stdout).toContain(
      'accepts   BOOM, FINISH, SIG\ntags      live\ncontext   {"seq":[3],"label":"L"}',
    );
    const j = JSON.parse((await cli('query', 'counter', 'q1', '--json')).stdout) as Record<
      string,
      unknown
    >;
    expect(j).toMatchObject({ id: 'q1', status: 'running', value: 'counting', step: 1 });
  });

  it('colour only on a terminal (a pty through util-linux `script`), never with NO_COLOR', async () => {
    await cli('start', 'counter', 'q2');
    const line = `${process.execPath} ${repoBin} query counter q2 --nats-url ${server.url} --prefix ${prefix}`;
    const tty = await runJetflow(['-qec', line, '/dev/null'], {
      command: ['script'],
      env: { TERM: 'xterm' },
    });
    expect(tty.code).toBe(0);
    expect(tty.stdout).toContain('\x1b[36mrunning\x1b[39m');
    const plain = await runJetflow(['-qec', line, '/dev/null'], {
      command: ['script'],
      env: { TERM: 'xterm', NO_COLOR: '1' },
    });
    expect(plain.stdout).toContain('running');
    expect(plain.stdout).not.toContain('\x1b[');
  });

  it('exit 3: no such workflow (also with --json); exit 5: no engine answering', async () => {
    const r = await cli('query', 'counter', 'ghost');
    expect(r.code).toBe(3);
    const j = await cli('query', 'counter', 'ghost', '--json');
    expect(j.code).toBe(3);
    expect(JSON.parse(j.stdout)).toMatchObject({ error: { code: 'not_found', exitCode: 3 } });
    const none = await runJetflow([
      'query',
      'counter',
      'q1',
      '--nats-url',
      server.url,
      '--prefix',
      'nobody',
    ]);
    expect(none.code).toBe(5);
    expect(oneLine(none)).toContain('no engine is answering');
  });

  it('exit 5: NATS unreachable', async () => {
    const r = await runJetflow(['query', 'counter', 'q1', '--nats-url', 'nats://127.0.0.1:1']);
    expect(r.code).toBe(5);
    expect(oneLine(r)).toMatch(
      /^jetflow: unavailable: cannot connect to NATS at nats:\/\/127\.0\.0\.1:1/,
    );
  });
});

describe('cancel', () => {
  it('human and --json; a second cancel is rejected (4); no such workflow (3)', async () => {
    await cli('start', 'counter', 'c1');
    const r = await cli('cancel', 'counter', 'c1', '--reason', 'test');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^workflow {2}counter\/c1\nstatus {4}canceled\n/);
    await cli('start', 'counter', 'c2');
    const j = await cli('cancel', 'counter', 'c2', '--json');
    expect(JSON.parse(j.stdout)).toMatchObject({ id: 'c2', status: 'canceled' });
    const again = await cli('cancel', 'counter', 'c1');
    expect(again.code).toBe(4);
    expect(oneLine(again)).toMatch(/^jetflow: already_finished: /);
    expect((await cli('cancel', 'counter', 'ghost')).code).toBe(3);
  });
});

describe('result', () => {
  it('waits (saying for what), then prints the output (exit 0); --json', async () => {
    await cli('start', 'counter', 'r1');
    const waiting = cli('result', 'counter', 'r1', '--timeout', '30s');
    await new Promise((r) => setTimeout(r, 1_500));
    await cli('signal', 'counter', 'r1', '{"type":"SIG","n":1}');
    await cli('signal', 'counter', 'r1', '{"type":"FINISH"}');
    const r = await waiting;
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(
      /^waiting for counter\/r1 \(running in counting; accepts BOOM, FINISH, SIG\) up to 30s\n$/,
    );
    expect(JSON.parse(r.stdout)).toEqual({ seq: [1], label: '' });
    const j = await cli('result', 'counter', 'r1', '--json');
    expect(JSON.parse(j.stdout)).toEqual({
      id: 'r1',
      type: 'counter',
      status: 'completed',
      output: { seq: [1], label: '' },
    });
  });

  it('exit 1: the workflow was canceled; exit 5: timeout; exit 2: a bad --timeout; exit 3: none', async () => {
    await cli('start', 'counter', 'r2');
    await cli('cancel', 'counter', 'r2');
    const canceled = await cli('result', 'counter', 'r2');
    expect(canceled.code).toBe(1);
    expect(oneLine(canceled)).toBe('counter/r2 canceled');
    const cj = await cli('result', 'counter', 'r2', '--json');
    expect(cj.code).toBe(1);
    expect(JSON.parse(cj.stdout)).toMatchObject({ status: 'canceled' });
    await cli('start', 'counter', 'r3');
    const slow = await cli('result', 'counter', 'r3', '--timeout', '300ms');
    expect(slow.code).toBe(5);
    expect(slow.stderr).toContain('jetflow: timeout: timed out waiting for counter/r3 to finish');
    const bad = await cli('result', 'counter', 'r3', '--timeout', 'soon');
    expect(bad.code).toBe(2);
    expect((await cli('result', 'counter', 'ghost')).code).toBe(3);
  });
});

describe('watch', () => {
  it('one aligned line per journal entry until the end (exit 0); --json: one entry per line', async () => {
    await cli('start', 'counter', 'w1');
    await cli('signal', 'counter', 'w1', '{"type":"SIG","n":2}');
    await cli('signal', 'counter', 'w1', '{"type":"FINISH"}');
    const r = await cli('watch', 'counter', 'w1');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines).toHaveLength(3); // one line per step: none of them issued effects
    const at = '\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d\\.\\d{3}';
    expect(lines[0]).toMatch(new RegExp(`^${at} {2}step 0 {4}step {6}xstate.init {2}-> counting$`));
    expect(lines[1]).toMatch(/ {2}step 1 {4}step {6}SIG {2}counting -> counting$/);
    expect(lines[2]).toMatch(/ {2}step 2 {4}step {6}FINISH {2}counting -> done {2}completed$/);
    const j = await cli('watch', 'counter', 'w1', '--json');
    const entries = j.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { kind: string; step: number; status: string });
    expect(entries.map((e) => [e.kind, e.step, e.status])).toEqual([
      ['step', 0, 'running'],
      ['step', 1, 'running'],
      ['step', 2, 'completed'],
    ]);
  });

  it('follows a running workflow to its end; exit 1 when it is canceled; 3 when none', async () => {
    await cli('start', 'counter', 'w2');
    const watching = cli('watch', 'counter', 'w2');
    await new Promise((r) => setTimeout(r, 1_500));
    await cli('cancel', 'counter', 'w2', '--reason', 'enough');
    const r = await watching;
    expect(r.code).toBe(1);
    expect(r.stdout.trim().split('\n').at(-1)).toMatch(
      /counting -> counting {2}canceled {2}reason enough$/,
    );
    expect((await cli('watch', 'counter', 'ghost')).code).toBe(3);
  });
});

describe('jetflow worker', () => {
  it('runs a TypeScript activities module through tsx, serves a 3-step chain, drains on SIGTERM', async () => {
    const worker = await new JetflowProcess(
      [
        'worker',
        '--activities',
        resolve(repoRoot, 'test/fixtures/inc-activities.ts'),
        '--nats-url',
        server.url,
        '--prefix',
        prefix,
        '--concurrency',
        '4',
        '--max-in-flight',
        '8',
        '--name',
        `worker:${runRoot()}`,
      ],
      '"worker started"',
    ).start();
    try {
      expect(worker.log).toMatch(/"queues":\["inc"\]/);
      expect((await cli('start', 'chain', 'k1', '--input', '{"x":1}')).code).toBe(0);
      const r = await cli('result', 'chain', 'k1', '--timeout', '30s');
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toEqual({ x: 4 });
    } finally {
      expect(await worker.stop()).toBe(0);
    }
    expect(worker.log).toContain('draining');
    expect(worker.log).toContain('"worker stopped"');
  });

  it('exit 2: no --activities (nor --http with --queues), a missing module, a module without activities', async () => {
    const none = await runJetflow(['worker']);
    expect(none.code).toBe(2);
    expect(oneLine(none)).toBe(
      'jetflow: give --activities <module>, or --http with --queues (or both)',
    );
    const httpOnly = await runJetflow(['worker', '--http']);
    expect(httpOnly.code).toBe(2);
    expect(oneLine(httpOnly)).toMatch(/--http without --activities needs --queues/);
    const missing = await runJetflow(['worker', '--activities', '/nonexistent/a.mjs']);
    expect(missing.code).toBe(2);
    expect(oneLine(missing)).toBe('jetflow: activities module not found: /nonexistent/a.mjs');
    const wrong = await runJetflow([
      'worker',
      '--activities',
      resolve(repoRoot, 'test/fixtures/workflows.ts'),
    ]);
    expect(wrong.code).toBe(2);
    expect(oneLine(wrong)).toMatch(/must export `activities`/);
  });
});
