/**
 * Shared-secret checks for the git webhook. Accepted proofs, any one of:
 * - `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>` (GitHub, Gitea, Forgejo);
 * - `X-Gitea-Signature: <hex HMAC-SHA256(secret, body)>` (Gitea);
 * - `X-Gitlab-Token: <secret>` (GitLab); `Authorization: Bearer <secret>`; `X-Ns8ctl-Token: <secret>`.
 * Every comparison is constant-time (`crypto.timingSafeEqual` on equal-length digests), so the
 * response time says nothing about how much of a guess was right.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';

type Headers = Record<string, string | string[] | undefined>;

function header(h: Headers, name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** Constant-time equality of two strings of any length (compares SHA-256 digests). */
export function safeEqual(a: string, b: string): boolean {
  const da = createHash('sha256').update(a, 'utf8').digest();
  const db = createHash('sha256').update(b, 'utf8').digest();
  return timingSafeEqual(da, db);
}

/** Hex HMAC-SHA256 of `body` with `secret`. */
export function hmacHex(secret: string, body: Buffer | string): string {
  return createHmac('sha256', secret).update(body).digest('hex');
}

/**
 * True when the request proves knowledge of `secret` (see the module doc). False for an empty
 * secret (a webhook without a secret is never accepted) and for a request with no proof.
 * Header names must be lower-case, as Node's http module gives them.
 */
export function verifyWebhook(headers: Headers, body: Buffer, secret: string): boolean {
  if (!secret) return false;
  const expected = hmacHex(secret, body);
  const hub = header(headers, 'x-hub-signature-256');
  if (hub !== undefined) return hub.startsWith('sha256=') && safeEqual(hub.slice(7).toLowerCase(), expected);
  const gitea = header(headers, 'x-gitea-signature');
  if (gitea !== undefined) return safeEqual(gitea.toLowerCase(), expected);
  const token = header(headers, 'x-gitlab-token') ?? header(headers, 'x-ns8ctl-token');
  if (token !== undefined) return safeEqual(token, secret);
  const auth = header(headers, 'authorization');
  if (auth !== undefined && /^bearer /i.test(auth)) return safeEqual(auth.slice(7).trim(), secret);
  return false;
}
