/**
 * `jetflow/client`: what a service needs to start, signal, query, cancel and await workflows.
 * Loads neither XState nor the engine (see the README's "Use it in your service").
 */
export {
  Client,
  WorkflowFailedError,
  type ClientOptions,
  type OperatorFields,
} from './client/index.js';
export type {
  ScheduleAction,
  ScheduleDefinition,
  ScheduleSpec,
  Schedules,
} from './nats/schedules.js';
export {
  BadRequestError,
  ConflictError,
  ErrorCode,
  JetflowError,
  RetryableError,
  TerminalError,
  type ErrorData,
} from './errors.js';
export { createSubjects, DEFAULT_PREFIX, type Subjects } from './contracts/subjects.js';
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
  type SignalReply,
  type StartReply,
  type StartRequest,
  type WaitingTask,
  type WorkflowStatus,
} from './contracts/wire.js';
export { WHY_STAGES, type WhyReply, type WhyStage, type WhyWait } from './engine/why.js';
export type {
  AttributeValue,
  SearchCountsReply,
  SearchCountsRequest,
  NodeSearchReply,
  NodeSearchRequest,
  SearchReply,
  SearchRequest,
  SearchSort,
  SearchWorkflow,
  TimeRange,
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
