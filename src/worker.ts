/**
 * `jetflow/worker`: what a worker host needs to run activities. Loads neither XState nor the
 * engine (see the README's "Use it in your service").
 */
export {
  createWorker,
  withDecisions,
  Worker,
  type ActivityContext,
  type ActivityFn,
  type AttemptOutcome,
  type WorkerMetrics,
  type WorkerOptions,
  type WorkerStats,
} from './worker/index.js';
export {
  DEFAULT_QUEUE_SETTINGS,
  type QueueSettings,
  type QueueSettingsInput,
} from './nats/tasks.js';
export { backoffDelayMs, DEFAULT_RETRY, type RetryPolicy } from './engine/retry.js';
export {
  ConfigError,
  ErrorCode,
  JetflowError,
  RetryableError,
  TerminalError,
  toErrorData,
  type ErrorData,
} from './errors.js';
export { DEFAULT_PREFIX } from './contracts/subjects.js';
export { Header, WIRE_VERSION, type ResultMessage, type TaskMessage } from './contracts/wire.js';
