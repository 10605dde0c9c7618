/**
 * Progress lines on stderr for long sandbox steps: `sandbox: <step>: <detail>...`, a reminder
 * every `intervalMs` while it runs, and `sandbox: <step>: done in 12.3 s`.
 */
import type { SandboxDeps } from './deps.js';

/** Runs `work`, printing a start line, periodic "still ..." lines and the duration at the end. */
export async function step<T>(deps: Pick<SandboxDeps, 'stderr' | 'now'>, label: string, work: () => Promise<T>, intervalMs = 15_000): Promise<T> {
  const started = deps.now();
  const short = label.split(':')[0] ?? label;
  deps.stderr(`sandbox: ${label}...\n`);
  const timer = setInterval(() => deps.stderr(`sandbox: still ${short}... ${Math.round((deps.now() - started) / 1000)} s\n`), intervalMs);
  timer.unref();
  try {
    const out = await work();
    deps.stderr(`sandbox: ${short}: done in ${((deps.now() - started) / 1000).toFixed(1)} s\n`);
    return out;
  } finally {
    clearInterval(timer);
  }
}
