/**
 * Test harness: makes Podman work on this kind of machine (Debian 12, cgroup hybrid layout, no
 * CAP_SYS_RESOURCE, /dev/net/tun 0600), rootful and rootless as a `useradd`ed user. The logic is
 * the product's own sandbox host check (src/sandbox/host-check.ts): each adjustment is detected,
 * explained in one line on stderr, and applied only when needed. Guarded: it refuses to run when
 * not root, and fails (never skips) when podman is missing, since CI installs it.
 */
import { ProcessRunner } from '../../src/host/runner.js';
import { applyHostAdjustments } from '../../src/sandbox/host-check.js';

let prepared: Promise<void> | undefined;

/**
 * Idempotent and safe to call from every test file (once per process; repeated calls share the
 * first promise). Throws when not root or when podman is not installed.
 */
export function preparePodmanHost(): Promise<void> {
  prepared ??= (async () => {
    if (process.getuid?.() !== 0) throw new Error('preparePodmanHost: tests that use podman run as root (CI does)');
    const runner = new ProcessRunner();
    await runner.run(['podman', '--version'], { purpose: 'preparePodmanHost: podman must be installed (apt-get install podman)' });
    await applyHostAdjustments({ runner, log: (line) => process.stderr.write(`[host-podman] ${line}\n`) });
  })();
  return prepared;
}

/**
 * Removes the Unix users a test made: their processes are killed first (rootless podman's pause
 * process outlives a deleted user and keeps its uid, which breaks the next useradd), then
 * `userdel -f`. Never throws: a user already gone is fine.
 */
export async function removeTestUsers(ids: Iterable<string>): Promise<void> {
  const runner = new ProcessRunner();
  for (const id of new Set(ids)) {
    await runner.run(['pkill', '-KILL', '-u', id], { allowFailure: true });
    await new Promise((r) => setTimeout(r, 200));
    await runner.run(['userdel', '-f', id], { allowFailure: true });
  }
}
