/**
 * Wire contract v1 of the visibility index: bodies of `<prefix>.search` and
 * `<prefix>.search.counts`. JSON unless `Content-Type: application/msgpack`; errors are the usual
 * `{ "error": { type, code, message, retryable } }` with header `Jf-Error` (code `bad_request` for
 * anything wrong in the request).
 */
import type { WorkflowStatus } from './wire.js';

/** Default and maximum `limit` of a search. */
export const SEARCH_DEFAULT_LIMIT = 100;
export const SEARCH_MAX_LIMIT = 1_000;

/** A time bound: ISO-8601 text or epoch milliseconds. */
export type TimeBound = string | number;

/** A time range: `after` is inclusive (`>=`), `before` exclusive (`<`). */
export interface TimeRange {
  after?: TimeBound;
  before?: TimeBound;
}

/** Value of a search attribute (equality match, type included: `1` does not match `"1"`). */
export type AttributeValue = string | number | boolean | null;

/** Keys a search may sort by. */
export type SearchSort = 'updatedAt' | 'inStateSince';

/** Body of `<prefix>.search`. Every field is optional; given filters are ANDed. */
export interface SearchRequest {
  type?: string;
  status?: WorkflowStatus;
  /** An active state path (`shipping.packing`), or a prefix ending in `.*` (`shipping.*`). */
  state?: string;
  /** When the workflow entered its current state. */
  inStateSince?: TimeRange;
  createdAt?: TimeRange;
  updatedAt?: TimeRange;
  errorType?: string;
  errorCode?: string;
  idPrefix?: string;
  needsReview?: boolean;
  /** Search attributes, each matched by equality. */
  attributes?: Record<string, AttributeValue>;
  /**
   * Activity trees (ACTIVITY-TREES §2.9.11): some node is in `status` now; some node entered
   * `pastStatus` (inside [`since`, `until`) when given; without `pastStatus` they bound the
   * `statusSince` of the node in `status`); some node has `name` / `queue`. Each filter may be met
   * by a different node. A list means "any of".
   */
  node?: {
    status?: string | string[];
    pastStatus?: string | string[];
    name?: string | string[];
    queue?: string | string[];
    since?: TimeBound;
    until?: TimeBound;
  };
  /** Default `updatedAt`. */
  sort?: SearchSort;
  /** Default `desc` for `updatedAt` (newest first), `asc` for `inStateSince` (longest first). */
  order?: 'asc' | 'desc';
  /** Default 100, at most 1,000. */
  limit?: number;
  /** The `cursor` of the previous page (same filters, sort and order). */
  cursor?: string;
}

/** One workflow as the index knows it. Times are ISO-8601. */
export interface SearchWorkflow {
  type: string;
  id: string;
  status: WorkflowStatus;
  /** Active leaf state paths (several when in parallel states). */
  states: string[];
  inStateSince: string;
  createdAt: string;
  updatedAt: string;
  step: number;
  needsReview: boolean;
  attributes: Record<string, AttributeValue>;
  error?: { type: string; code: string; message?: string };
  /** Activity trees: how many nodes are in each status (absent for other workflows). */
  nodeCounts?: Record<string, number>;
}

/** Reply to `<prefix>.search`: `cursor` is null on the last page. */
export interface SearchReply {
  workflows: SearchWorkflow[];
  cursor: string | null;
}

/** Body of `<prefix>.search.counts` (empty, `{}`, or `{ "type": … }`). */
export interface SearchCountsRequest {
  type?: string;
}

/** Reply to `<prefix>.search.counts`. A workflow in parallel states counts once per path. */
export interface SearchCountsReply {
  total: number;
  byType: Record<string, number>;
  byStatus: Partial<Record<WorkflowStatus, number>>;
  byState: { type: string; status: WorkflowStatus; state: string; count: number }[];
}

/** Body of `<prefix>.search.nodes` (ACTIVITY-TREES §2.9.11). A list means "any of". */
export interface NodeSearchRequest {
  type?: string;
  id?: string;
  status?: string | string[];
  /** Some node entered it (inside [since, until) when given). */
  pastStatus?: string | string[];
  name?: string | string[];
  queue?: string | string[];
  /** ISO-8601 or epoch ms. With `pastStatus`: when it was entered; else `statusSince`. */
  since?: string | number;
  until?: string | number;
  metadata?: Record<string, string | number | boolean>;
  /** 1..1000, default 25. */
  limit?: number;
  cursor?: string | null;
}

/** Reply of `<prefix>.search.nodes`: newest `statusSince` first. */
export interface NodeSearchReply {
  results: {
    type: string;
    id: string;
    nodeId: string;
    name: string;
    queue: string;
    status: string;
    statusSince: string;
    attempt: number;
    run: number;
  }[];
  next: string | null;
}
