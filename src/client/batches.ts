/**
 * `client.batches` (issue 23): create a batch and stream its items in chunks, then the verbs.
 * Every call is a request on `<prefix>.admin.batch.<verb>` answered by any engine.
 *
 * Failure semantics:
 * - `create` is resumable: a second `create` with the same id (after a crash of the submitter)
 *   asks the batch where its submission stopped (`next`) and skips that many items of the
 *   iterable before sending the rest; pass the same items in the same order. An item is started
 *   at most once (its workflow id `<batchId>=<itemKey>` is idempotent) and counted once.
 * - A chunk whose reply was lost is sent again: the batch recognises its items by position.
 * - Every other verb is idempotent (pause twice = pause; retry-failed that stopped half way
 *   finishes when called again).
 */
import type {
  BatchAddReply,
  BatchCallback,
  BatchItemStatus,
  BatchItemsReply,
  BatchPolicy,
  BatchStatus,
} from '../contracts/batch.js';
import { encodeBody } from '../contracts/codec.js';
import { ConflictError, ErrorCode, JetflowError } from '../errors.js';
import type { BulkProgress } from '../contracts/bulk.js';

export interface BatchCreateOptions<T = unknown> {
  id: string;
  /** Workflow type of every item. */
  type: string;
  /** The items: an array or an async iterable (streamed, never held whole). */
  items?: Iterable<T> | AsyncIterable<T>;
  /** Item key (a subject token, unique in the batch); default: its position. */
  itemKey?: (item: T, index: number) => string;
  /** Workflow input of an item; default: the item. */
  inputOf?: (item: T) => unknown;
  onComplete?: BatchCallback;
  policy?: BatchPolicy;
  /** With `'all-must-succeed'`: cancel the items still running when the batch fails. */
  cancelRest?: boolean;
}

export interface BatchSubmitOptions {
  /** Close the batch after these items: it can complete. */
  seal?: boolean;
  /** Items per request (default 500; also cut at `chunkBytes`). */
  chunkSize?: number;
  /** Encoded bytes per request (default 512 KiB). */
  chunkBytes?: number;
  /** Called after each chunk. */
  onProgress?: (p: BatchSubmitProgress) => void;
}

export interface BatchSubmitProgress {
  /** Position reached (items handled so far, resumed ones included). */
  next: number;
  /** Accepted by this call. */
  accepted: number;
  duplicates: number;
  rejected: number;
  /** Skipped at the start: accepted by an earlier (crashed) submission. */
  resumedFrom: number;
}

export interface BatchCreateResult extends BatchSubmitProgress {
  id: string;
  duplicateItems: BatchAddReply['duplicates'];
  rejectedItems: BatchAddReply['rejected'];
  status: BatchStatus;
}

type Requester = <R>(subject: string, body: unknown, timeoutMs?: number) => Promise<R>;

export class Batches {
  constructor(
    private readonly request: Requester,
    private readonly subject: (verb: string) => string,
    private readonly bulkStatus: string,
  ) {}

  /**
   * Create batch `id` (or continue it: see the module's failure semantics), submit `items` in
   * chunks, and seal it when `seal` is set. Resolves once every item was accepted (or reported
   * as a duplicate or rejected); the items run meanwhile.
   */
  async create<T>(
    opts: BatchCreateOptions<T>,
    submit: BatchSubmitOptions = {},
  ): Promise<BatchCreateResult> {
    const created = await this.request<BatchStatus>(this.subject('create'), {
      id: opts.id,
      type: opts.type,
      ...(opts.policy !== undefined ? { policy: opts.policy } : {}),
      ...(opts.onComplete ? { onComplete: opts.onComplete } : {}),
      ...(opts.cancelRest ? { cancelRest: true } : {}),
    });
    const res: BatchCreateResult = {
      id: opts.id,
      next: created.next,
      accepted: 0,
      duplicates: 0,
      rejected: 0,
      resumedFrom: created.next,
      duplicateItems: [],
      rejectedItems: [],
      status: created,
    };
    if (opts.items) await this.submit(opts, submit, res);
    res.status = submit.seal
      ? await this.seal(opts.id)
      : await this.request<BatchStatus>(this.subject('status'), { id: opts.id });
    return res;
  }

  private async submit<T>(
    opts: BatchCreateOptions<T>,
    o: BatchSubmitOptions,
    res: BatchCreateResult,
  ): Promise<void> {
    const size = o.chunkSize ?? 500;
    const maxBytes = o.chunkBytes ?? 512 * 1024;
    const keyOf = opts.itemKey ?? ((_: T, i: number) => String(i));
    const inputOf = opts.inputOf ?? ((x: T) => x);
    let chunk: { key: string; input: unknown }[] = [];
    let bytes = 0;
    let from = res.next;
    const send = async () => {
      if (chunk.length === 0) return;
      const r = await this.add(opts.id, from, chunk);
      res.accepted += r.accepted;
      res.duplicates += r.duplicates.length;
      res.rejected += r.rejected.length;
      res.duplicateItems.push(...r.duplicates.slice(0, 1000 - res.duplicateItems.length));
      res.rejectedItems.push(...r.rejected.slice(0, 1000 - res.rejectedItems.length));
      res.next = r.next;
      from = r.next;
      chunk = [];
      bytes = 0;
      o.onProgress?.({ ...res });
    };
    let index = 0;
    for await (const item of opts.items as AsyncIterable<T>) {
      const i = index++;
      if (i < res.resumedFrom) continue; // accepted by an earlier submission
      const entry = { key: keyOf(item, i), input: inputOf(item) ?? null };
      const b = encodeBody(entry).length;
      if (chunk.length > 0 && (chunk.length >= size || bytes + b > maxBytes)) await send();
      chunk.push(entry);
      bytes += b;
    }
    await send();
  }

  /** One chunk; a lost reply or a race is retried from where the batch says it is. */
  private async add(
    id: string,
    from: number,
    items: { key: string; input: unknown }[],
  ): Promise<BatchAddReply> {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request<BatchAddReply>(this.subject('add'), { id, from, items }, 30_000);
      } catch (err) {
        const retry =
          attempt < 5 &&
          (err instanceof ConflictError ||
            (err instanceof Error &&
              /timeout/i.test(err.message) &&
              !(err instanceof JetflowError)));
        if (!retry) throw err;
        const s = await this.status(id);
        if (s.next >= from + items.length) {
          return { id, next: s.next, accepted: 0, duplicates: [], rejected: [] };
        }
        if (s.next > from) {
          items = items.slice(s.next - from);
          from = s.next;
        }
      }
    }
  }

  /** Close the batch to new items: it completes once every item is terminal. */
  seal(id: string): Promise<BatchStatus> {
    return this.request(this.subject('seal'), { id });
  }

  /** Counts, rate (terminal items/s) and ETA. */
  status(id: string): Promise<BatchStatus> {
    return this.request(this.subject('status'), { id });
  }

  /** A page of items (`cursor` from the previous page), optionally of one status. */
  items(
    id: string,
    opts: { status?: BatchItemStatus; cursor?: number; limit?: number } = {},
  ): Promise<BatchItemsReply> {
    return this.request(this.subject('items'), { id, ...opts });
  }

  /**
   * Run the failed items again (fresh attempts); the callback fires again with the new counts.
   * Replies at once: the restarts are a background job (`changed.jobId`; follow it with
   * {@link job}, or `status().jobs`).
   */
  retryFailed(id: string, who: { by?: string; reason?: string } = {}): Promise<BatchStatus> {
    return this.request(this.subject('retry-failed'), { id, ...who });
  }

  /**
   * Cancel the items not ended yet; the batch takes no more items from now on. Replies at once:
   * the items are canceled by a background job (`changed.jobId`).
   */
  cancel(id: string, who: { by?: string; reason?: string } = {}): Promise<BatchStatus> {
    return this.request(this.subject('cancel'), { id, ...who });
  }

  /** Stop starting items (new ones are kept as `pending`); running ones go on. */
  pause(id: string, who: { by?: string; reason?: string } = {}): Promise<BatchStatus> {
    return this.request(this.subject('pause'), { id, ...who });
  }

  /** Admit new items again; the pending ones are started by a background job (`changed.jobId`). */
  resume(id: string, who: { by?: string; reason?: string } = {}): Promise<BatchStatus> {
    return this.request(this.subject('resume'), { id, ...who });
  }

  /** A batch job's progress (`<prefix>.admin.bulk.status`; state `completed` when done). */
  job(jobId: string): Promise<BulkProgress> {
    return this.request(this.bulkStatus, { jobId });
  }

  /** Wait until a batch job completed (polling its status every `everyMs`). */
  async waitJob(
    jobId: string,
    o: { timeoutMs?: number; everyMs?: number } = {},
  ): Promise<BulkProgress> {
    const end = Date.now() + (o.timeoutMs ?? 600_000);
    for (;;) {
      const p = await this.job(jobId);
      if (p.state !== 'running') return p;
      if (Date.now() > end) {
        throw new JetflowError(
          `batch job ${jobId} still running after ${o.timeoutMs ?? 600_000} ms`,
          {
            code: ErrorCode.Timeout,
            details: { progress: p },
          },
        );
      }
      await new Promise((r) => setTimeout(r, o.everyMs ?? 200));
    }
  }
}
