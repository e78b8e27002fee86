/**
 * Checking a webhook request's signature: HMAC-SHA256 under the trigger's secret of the raw body,
 * or of `<timestamp>.<body>` when the trigger names a timestamp header (then a timestamp further
 * than `toleranceSec` from now is refused, so a captured request cannot be replayed later).
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import type { WebhookOptions } from '../engine/triggers.js';

export type WebhookVerdict = { ok: true } | { ok: false; why: string };

const first = (v: string | string[] | undefined) => (Array.isArray(v) ? v[0] : v);

export function verifyWebhook(
  w: WebhookOptions,
  secret: string,
  hdrs: Record<string, string | string[] | undefined>,
  body: Buffer,
  nowSec: number,
): WebhookVerdict {
  const given = first(hdrs[w.header.toLowerCase()]);
  if (!given) return { ok: false, why: `missing signature header ${w.header}` };
  let signed: Buffer = body;
  if (w.timestampHeader) {
    const ts = first(hdrs[w.timestampHeader.toLowerCase()]);
    const n = Number(ts);
    if (!ts || !Number.isFinite(n))
      return { ok: false, why: `missing or bad timestamp header ${w.timestampHeader}` };
    if (Math.abs(nowSec - n) > (w.toleranceSec ?? 300))
      return {
        ok: false,
        why: `timestamp ${ts} is outside the tolerance of ${w.toleranceSec ?? 300} s`,
      };
    signed = Buffer.concat([Buffer.from(`${ts}.`), body]);
  }
  const hex = given.startsWith('sha256=') ? given.slice(7) : given;
  const want = createHmac('sha256', secret).update(signed).digest();
  const got = Buffer.from(/^[0-9a-fA-F]+$/.test(hex) ? hex : '', 'hex');
  if (got.length !== want.length || !timingSafeEqual(got, want))
    return { ok: false, why: 'signature does not match' };
  return { ok: true };
}

/** The msg id a webhook request is stored under: the same signed request is stored once. */
export function webhookMsgId(name: string, signature: string, body: Buffer): string {
  return `hook.${name}.${createHash('sha256').update(signature).update(body).digest('hex').slice(0, 40)}`;
}
