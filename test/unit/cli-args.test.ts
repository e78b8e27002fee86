/** The CLI's argument parsing and its error → exit code mapping (the README's table). */
import { describe, expect, it } from 'vitest';
import { describeError, ExitCode, exitCodeOf, UsageError } from '../../src/cli/exit.js';
import { parseDuration, parseJsonArg } from '../../src/cli/service.js';
import { perQueue } from '../../src/cli/worker-host.js';
import {
  BadRequestError,
  ConfigError,
  ErrorCode,
  JetflowError,
  RetryableError,
  TerminalError,
} from '../../src/errors.js';

describe('exit codes', () => {
  it.each([
    [new UsageError('x'), ExitCode.Usage],
    [new ConfigError('x'), ExitCode.Usage],
    [new TerminalError('x', { code: ErrorCode.NotFound }), ExitCode.NotFound],
    [new TerminalError('x', { code: ErrorCode.UnknownType }), ExitCode.NotFound],
    [new TerminalError('x', { code: ErrorCode.EventNotAccepted }), ExitCode.Rejected],
    [new TerminalError('x', { code: ErrorCode.GuardRejected }), ExitCode.Rejected],
    [new TerminalError('x', { code: ErrorCode.AlreadyFinished }), ExitCode.Rejected],
    [new BadRequestError('x'), ExitCode.Rejected],
    [new RetryableError('x'), ExitCode.Unavailable],
    [new JetflowError('x', { code: ErrorCode.Timeout }), ExitCode.Unavailable],
    [new TerminalError('x', { code: ErrorCode.MachineError }), ExitCode.Failed],
    [Object.assign(new Error('timeout'), { name: 'TimeoutError' }), ExitCode.Unavailable],
    [
      new Error('request failed', {
        cause: Object.assign(new Error('nr'), { name: 'NoResponders' }),
      }),
      ExitCode.Unavailable,
    ],
    [new Error('boom'), ExitCode.Failed],
  ])('%s → %i', (err, code) => {
    expect(exitCodeOf(err)).toBe(code);
  });

  it('describes an error on one line, with what the workflow accepts', () => {
    const e = new TerminalError('workflow order/o-1 cannot take GO\nnow', {
      code: ErrorCode.EventNotAccepted,
      details: { accepts: ['PAY'] },
    });
    expect(describeError(e)).toBe(
      'event_not_accepted: workflow order/o-1 cannot take GO now (accepts now: PAY)',
    );
  });
});

describe('arguments', () => {
  it('durations: ms, s, m, h; a bare number is seconds', () => {
    expect(parseDuration('500ms', 't')).toBe(500);
    expect(parseDuration('30', 't')).toBe(30_000);
    expect(parseDuration('1.5s', 't')).toBe(1_500);
    expect(parseDuration('2m', 't')).toBe(120_000);
    expect(() => parseDuration('soon', '--timeout')).toThrow(UsageError);
  });

  it('JSON arguments', () => {
    expect(parseJsonArg('{"a":1}', 'x')).toEqual({ a: 1 });
    expect(() => parseJsonArg('{a', '--input')).toThrow(/--input is not valid JSON/);
  });

  it('per-queue numbers: N for every queue of the worker, or queue=N pairs', () => {
    expect(perQueue('4', '--max-in-flight', ['a', 'b'])).toEqual({ a: 4, b: 4 });
    expect(perQueue('a=2,b=3', '--max-in-flight', ['a'])).toEqual({ a: 2, b: 3 });
    expect(perQueue(undefined, '--max-in-flight', ['a'])).toEqual({});
    expect(() => perQueue('a=0', '--max-in-flight', [])).toThrow(/positive integer/);
    expect(() => perQueue('a:2', '--rate-limit', [])).toThrow(/takes N or queue=N/);
  });
});
