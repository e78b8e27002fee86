/** Structured JSON logs (pino) to stderr. */
import { pino } from 'pino';
import type { Logger } from '../engine/ports.js';

export function createLogger(name: string, level: string): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}
