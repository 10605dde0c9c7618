/**
 * Checks before any sandbox command touches the host: root, podman (and other tools a step
 * needs), with errors that say what to do.
 */
import { Ns8ctlError, RefusedError } from '../errors.js';
import type { SandboxDeps } from './deps.js';
import { applyHostAdjustments, type HostAdjustment } from './host-check.js';

/** Debian packages that provide each tool the sandbox uses. */
const PACKAGES: Record<string, string> = {
  podman: 'podman crun uidmap slirp4netns fuse-overlayfs',
  debootstrap: 'debootstrap',
  skopeo: 'skopeo',
  mount: 'mount',
  chroot: 'coreutils',
};

const WHY_ROOT = 'nodes are privileged containers with systemd, and the host may need cgroup and containers.conf adjustments';

/**
 * Refuses to go on unless root (`sandbox_needs_root`, with the sudo line). `why` replaces the
 * default reason (nodes are privileged containers and the host may need cgroup mounts).
 */
export function requireRoot(deps: Pick<SandboxDeps, 'uid'>, command: string, why = WHY_ROOT): void {
  if (deps.uid !== undefined && deps.uid !== 0) {
    throw new RefusedError('sandbox_needs_root', `ns8ctl sandbox ${command} must run as root: ${why}. Run: sudo ns8ctl sandbox ${command} ...`);
  }
}

/** Applies the host adjustments (docs/sandbox.md), printing one `sandbox: host: ...` line each. */
export function adjustHost(deps: Pick<SandboxDeps, 'runner' | 'stderr' | 'hostPaths'>): Promise<HostAdjustment[]> {
  return applyHostAdjustments({ runner: deps.runner, log: (line) => deps.stderr(`sandbox: ${line}\n`), ...(deps.hostPaths ? { paths: deps.hostPaths } : {}) });
}

/** Fails with `tool_missing` and the apt-get line to run when `tool` is not on PATH. */
export async function requireTool(deps: Pick<SandboxDeps, 'runner'>, tool: keyof typeof PACKAGES, versionArgs: string[] = ['--version']): Promise<void> {
  const res = await deps.runner.run([tool, ...versionArgs], { allowFailure: true, timeoutMs: 30_000 }).catch((e: unknown) => ({ exitCode: null, stderr: String(e) }));
  const missing = res.exitCode === null || /ENOENT|not found/.test(res.stderr);
  if (missing) {
    throw new Ns8ctlError('tool_missing', `${tool} is not installed, and ns8ctl sandbox needs it. Install it: apt-get install ${PACKAGES[tool] ?? tool}`);
  }
}
