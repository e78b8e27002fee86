/**
 * jetflow public API. Everything exported here is documented and semver-stable; internals are
 * reachable through `jetflow/internal` for tests and tools only.
 */
export { Client, WorkflowFailedError, type ClientOptions } from './client/index.js';
export { Engine, type EngineDeps } from './host/engine.js';
export {
  createWorker,
  Worker,
  type ActivityContext,
  type ActivityFn,
  type WorkerOptions,
  type WorkerStats,
} from './worker/index.js';
export {
  activity,
  withActivityOptions,
  backoffDelayMs,
  DEFAULT_RETRY,
  type ActivityOptions,
  type ActivityOptionsInput,
  type RetryPolicy,
} from './engine/activity.js';
export {
  DEFAULT_QUEUE_SETTINGS,
  type QueueSettings,
  type QueueSettingsInput,
} from './nats/tasks.js';
export {
  compileEngineConfig,
  ENGINE_DEFAULTS,
  type EngineConfig,
  type EngineOptions,
} from './config.js';
export {
  createRegistry,
  defineWorkflow,
  type QueryView,
  type Registry,
  type ViewMeta,
  type WorkflowDefinition,
} from './engine/registry.js';
export {
  triggerConsumerName,
  type DeliverFrom,
  type OnPoison,
  type SignalMapping,
  type StartMapping,
  type TriggerDefinition,
  type TriggerLedgerEntry,
  type TriggerMessage,
  type TriggerOutcome,
} from './engine/triggers.js';
export {
  cancelTask,
  dispatch,
  jetflowActions,
  reject,
  reply,
  sendToWorkflow,
  startBatch,
  type DispatchTarget,
  type SendOptions,
  type StartBatchSpec,
} from './engine/machine.js';
export { workflow, type ChildWorkflowInput, type ChildWorkflowOptions } from './engine/child.js';
export { activityTree } from '../actors/activity-tree.js';
export { withDecisions } from './worker/index.js';
export {
  BadRequestError,
  ConfigError,
  ConflictError,
  ErrorCode,
  JetflowError,
  RetryableError,
  TerminalError,
  toErrorData,
  type ErrorData,
} from './errors.js';
export {
  createSubjects,
  DEFAULT_PREFIX,
  shardMapping,
  type Subjects,
} from './contracts/subjects.js';
export {
  SEARCH_DEFAULT_LIMIT,
  SEARCH_MAX_LIMIT,
  type AttributeValue,
  type SearchCountsReply,
  type SearchCountsRequest,
  type NodeSearchReply,
  type NodeSearchRequest,
  type SearchReply,
  type SearchRequest,
  type SearchSort,
  type SearchWorkflow,
  type TimeRange,
} from './contracts/search.js';
export {
  BULK_DEFAULT_RATE,
  BULK_MAX_RATE,
  type BulkCounters,
  type BulkFailure,
  type BulkJobState,
  type BulkProgress,
  type BulkReply,
  type BulkRequest,
} from './contracts/bulk.js';
export type {
  BatchAddReply,
  BatchCallback,
  BatchCompletedEvent,
  BatchCounts,
  BatchItem,
  BatchItemStatus,
  BatchItemsReply,
  BatchOutcome,
  BatchPolicy,
  BatchStatus,
} from './contracts/batch.js';
export type {
  Batches,
  BatchCreateOptions,
  BatchCreateResult,
  BatchSubmitOptions,
  BatchSubmitProgress,
} from './client/batches.js';
export {
  Header,
  WIRE_VERSION,
  type CancelRequest,
  type ErrorReply,
  type HistoryReply,
  type HistoryRequest,
  type JournalActivity,
  type JournalEffect,
  type JournalEntry,
  type JournalEvent,
  type JournalState,
  type Notification,
  type NotificationType,
  type QueryReply,
  type AdminReply,
  type AdminRequest,
  type AdminVerb,
  type JournalOperator,
  ADMIN_VERBS,
  type ResultMessage,
  type TaskMessage,
  type SignalReply,
  type StartReply,
  type StartRequest,
  type WorkflowRecord,
  type WorkflowStatus,
} from './contracts/wire.js';
