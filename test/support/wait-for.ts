/**
 * Polls `check` every 20 ms until it returns a value other than undefined/false, and returns it.
 * A check that throws is retried (its last error is named if time runs out). Bounded: fails with
 * `timed out waiting for <what>` after `ms`.
 */
export async function waitFor<T>(what: string, check: () => Promise<T | undefined | false> | T | undefined | false, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined && v !== false) return v as T;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Polls the condition `check` every `everyMs` (default 50 ms) until it holds. Unlike
 * {@link waitFor}, a check that throws fails at once with its own error: use it where a throw
 * means a real fault, not "not there yet". Bounded: fails with `timed out waiting for: <what>`
 * once `timeoutMs` (default 30 s) has passed; the check runs at least once.
 */
export async function until(what: string, check: () => boolean | Promise<boolean>, opts: { timeoutMs?: number; everyMs?: number } = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 30_000);
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, opts.everyMs ?? 50));
  }
}
