/**
 * Capped exponential backoff with jitter, as a pure function (controller-runtime's per-item
 * rate limiter, with jitter so that many failing keys do not retry in lock step).
 */

export interface BackoffOptions {
  /** Delay after the first failure (ms). */
  baseMs: number;
  /** Upper bound of any delay (ms), jitter included. */
  maxMs: number;
  /** Growth per consecutive failure (default 2). */
  factor?: number;
  /** Relative spread around the exponential value, 0..1 (default 0.2: ±20 %). */
  jitter?: number;
}

/** The controller's defaults: 5 s, 10 s, 20 s, ... up to 10 minutes, ±20 %. */
export const DEFAULT_BACKOFF: Required<BackoffOptions> = { baseMs: 5_000, maxMs: 600_000, factor: 2, jitter: 0.2 };

/**
 * Delay before retry number `failures` (1 = after the first failure): `base * factor^(failures-1)`,
 * spread by ±jitter using `random()` in [0, 1), never above `maxMs` and never negative.
 * `failures` below 1 counts as 1.
 */
export function backoffDelay(failures: number, opts: BackoffOptions, random: () => number = Math.random): number {
  const factor = opts.factor ?? 2;
  const jitter = Math.min(1, Math.max(0, opts.jitter ?? 0.2));
  const n = Math.max(1, Math.floor(failures));
  // Cap the exponent so huge failure counts cannot overflow to Infinity/NaN.
  const raw = Math.min(opts.maxMs, opts.baseMs * Math.pow(factor, Math.min(n - 1, 64)));
  const spread = raw * (1 - jitter + 2 * jitter * random());
  return Math.round(Math.min(opts.maxMs, Math.max(0, spread)));
}
