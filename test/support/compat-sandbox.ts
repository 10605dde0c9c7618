/**
 * The setup of the sandbox tests of examples/ns8-compat/: a one-node sandbox made afresh, the
 * example images built under its registry's name and pushed there, and an admin client of the
 * node's Redis; and the teardown that removes the images the build left in the host's storage.
 */
import path from 'node:path';
import { Redis } from 'ioredis';
import { ProcessRunner } from '../../src/host/runner.js';
import { createSandbox, type SandboxInfo } from '../../src/sandbox/create.js';
import type { SandboxDeps } from '../../src/sandbox/deps.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { adminRedisUrl } from '../../src/sandbox/node-config.js';
import { readAdminPassword } from '../../src/sandbox/record.js';
import { withImageBuildLock } from './image-build-lock.js';

/** A compat sandbox ready for the test: its info and an admin client of node 1's Redis. */
export interface CompatSandbox {
  info: SandboxInfo;
  leader: Redis;
}

/**
 * Deletes any sandbox `name` left by an earlier run, creates it with `nodes` nodes (default 1), runs `afterCreate`
 * (a check of the fresh node), builds the images of examples/ns8-compat/ named in `only` with
 * namespace `ns8ctl-compat` and pushes them to the sandbox registry (bounded by `buildTimeoutMs`),
 * then connects to node 1's Redis as admin.
 *
 * @throws what the failing step throws, after removing the images in `built` a partial build
 *   may have left; the sandbox is left for {@link stopCompatSandbox}.
 */
export async function startCompatSandbox(name: string, deps: SandboxDeps, opts: { only: string[]; built: string[]; buildTimeoutMs: number; nodes?: number; afterCreate?: (info: SandboxInfo) => Promise<void> }): Promise<CompatSandbox> {
  await deleteSandbox({ name }, deps);
  const info = await createSandbox({ name, nodes: opts.nodes ?? 1 }, deps);
  try {
    await opts.afterCreate?.(info);
    await withImageBuildLock(() => new ProcessRunner().run([path.resolve('examples/modules/build-images.sh'), '--dir', path.resolve('examples/ns8-compat'), '--namespace', 'ns8ctl-compat', '--only', opts.only.join(','), '--registry', info.registry, '--push'], { timeoutMs: opts.buildTimeoutMs }));
    const leader = new Redis(adminRedisUrl(info.addresses['1'] ?? '', await readAdminPassword(deps, name)), { maxRetriesPerRequest: 1 });
    return { info, leader };
  } catch (err) {
    await removeBuiltImages(info, opts.built);
    throw err;
  }
}

/** `podman rmi -f` of each `name:tag` under `<registry>/ns8ctl-compat/`; never throws. */
async function removeBuiltImages(info: SandboxInfo, built: string[]): Promise<void> {
  await withImageBuildLock(() => new ProcessRunner().run(['podman', 'rmi', '-f', ...built.map((t) => `${info.registry}/ns8ctl-compat/${t}`)], { allowFailure: true }));
}

/**
 * Closes the admin client, removes from the host's storage the images `built` (`name:tag` under
 * `<registry>/ns8ctl-compat/`) that the build left there, and deletes the sandbox unless
 * NS8CTL_KEEP_SANDBOX is set (to look at it). Parts not made (a start that failed) are skipped;
 * never throws on a removal that fails.
 */
export async function stopCompatSandbox(name: string, deps: SandboxDeps, sandbox: { info?: SandboxInfo | undefined; leader?: Redis | undefined }, built: string[]): Promise<void> {
  sandbox.leader?.disconnect();
  if (sandbox.info) await removeBuiltImages(sandbox.info, built);
  if (!process.env.NS8CTL_KEEP_SANDBOX) await deleteSandbox({ name }, deps).catch(() => undefined);
}
