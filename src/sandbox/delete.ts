/**
 * `ns8ctl sandbox delete`: removes every container and the network of a sandbox, then its state
 * directory. Nothing is left: no containers, networks, overlay mounts or files (the cached root
 * filesystem stays, shared by all sandboxes).
 */
import { promises as fsp } from 'node:fs';
import type { SandboxDeps } from './deps.js';
import { DEFAULT_SANDBOX_NAME, networkName, sandboxPaths, validateSandboxName } from './naming.js';
import { listContainers } from './podman-sandbox.js';
import { requireRoot, requireTool } from './preflight.js';

export interface DeleteOptions {
  name?: string;
}

/** What delete removed (empty lists when the sandbox did not exist: delete is idempotent, like kind). */
export interface DeleteResult {
  name: string;
  containers: string[];
  network: string | null;
  stateDir: string | null;
}

/** Removes a sandbox's containers, network and state dir, whatever state they are in. */
export async function removeSandbox(deps: SandboxDeps, name: string): Promise<DeleteResult> {
  const containers = await listContainers(deps, name);
  if (containers.length > 0) {
    // Stop nodes cleanly first (systemd shuts down on SIGRTMIN+3), then remove.
    const ids = containers.map((c) => c.id);
    const first = await deps.runner.run(['podman', 'rm', '-f', '-t', '10', ...ids], { purpose: `sandbox ${name}: remove containers`, mutating: true, allowFailure: true, timeoutMs: 180_000 });
    if (first.exitCode !== 0) {
      // A node running many instances may outlast podman's wait after SIGKILL ("could not be
      // stopped: given PIDs did not die within timeout"); its processes are dying by then: one
      // more removal (of the containers still there), which must succeed.
      await deps.runner.run(['podman', 'rm', '-f', '--ignore', '-t', '0', ...ids], { purpose: `sandbox ${name}: remove containers (again, after podman gave up waiting)`, mutating: true, timeoutMs: 180_000 });
    }
  }
  const net = networkName(name);
  const exists = await deps.runner.run(['podman', 'network', 'exists', net], { allowFailure: true });
  if (exists.exitCode === 0) await deps.runner.run(['podman', 'network', 'rm', '-f', net], { purpose: `sandbox ${name}: remove network`, mutating: true });
  const dir = sandboxPaths(deps.env, name).dir;
  const hadDir = await fsp.stat(dir).then(() => true, () => false);
  if (hadDir) await fsp.rm(dir, { recursive: true, force: true });
  return { name, containers: containers.map((c) => c.name), network: exists.exitCode === 0 ? net : null, stateDir: hadDir ? dir : null };
}

/** The `delete` command. */
export async function deleteSandbox(opts: DeleteOptions, deps: SandboxDeps): Promise<DeleteResult> {
  const name = validateSandboxName(opts.name ?? DEFAULT_SANDBOX_NAME);
  requireRoot(deps, 'delete');
  await requireTool(deps, 'podman');
  return removeSandbox(deps, name);
}
