/**
 * Setup shared by the host-level tests of examples/ns8-compat/: the images built under a test
 * registry name, and a temp root with NS8's agent runtime installed and a `systemctl` on PATH
 * (fakebin/) that records its arguments in `<root>/systemctl.log` (the host has no systemd).
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import type { Redis } from 'ioredis';
import { parseEnvironment } from '../../src/agent/env-file.js';
import { startTaskRelay, type TaskRelay } from '../../src/agent/task-relay.js';
import { installNs8Runtime, ns8RuntimeLayout } from '../../src/agent/ns8-runtime.js';
import { ProcessRunner, type CommandRunner } from '../../src/host/runner.js';
import { withImageBuildLock } from './image-build-lock.js';

/**
 * Builds the images named in `only` (comma-separated) under `registry`, then makes a temp root
 * `<tmpdir>/<prefix>XXXXXX` with NS8's runtime installed in `node/` and the recording `systemctl`
 * in `fakebin/`. Returns the root; the caller removes it.
 *
 * @throws the runner's error when the build fails or takes over `timeoutMs` (default 5 min).
 */
export async function prepareCompatHost(opts: { only: string; registry: string; prefix: string; timeoutMs?: number }): Promise<string> {
  const build = [path.resolve('examples/modules/build-images.sh'), '--dir', path.resolve('examples/ns8-compat'), '--namespace', 'ns8ctl-compat', '--only', opts.only, '--registry', opts.registry];
  await withImageBuildLock(() => new ProcessRunner().run(build, { timeoutMs: opts.timeoutMs ?? 300_000 }));
  const root = mkdtempSync(path.join(tmpdir(), opts.prefix));
  const version = (await execa('/usr/bin/python3', ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'])).stdout.trim();
  const nodeRoot = path.join(root, 'node');
  await installNs8Runtime(nodeRoot, ns8RuntimeLayout({ runtimeDir: path.resolve('runtime/ns8'), pythonVersion: version, installRoot: nodeRoot }));
  mkdirSync(path.join(root, 'fakebin'));
  writeFileSync(path.join(root, 'fakebin', 'systemctl'), `#!/bin/sh\necho "$*" >> ${root}/systemctl.log\n`);
  chmodSync(path.join(root, 'fakebin', 'systemctl'), 0o755);
  return root;
}

/**
 * NS8's extract-image: `podman create` the image, export it, and untar its `imageroot/` into
 * `installDir` (owner not kept). The export tarball lives in `workDir` only while extracting, and
 * the container is removed even when a step fails.
 *
 * @throws the runner's error when the image is missing or has no imageroot/.
 */
export async function extractImageroot(runner: CommandRunner, image: string, installDir: string, workDir: string): Promise<void> {
  const created = await runner.run(['podman', 'create', image, '/bin/busybox', 'true']);
  const ctr = created.stdout.trim();
  const tarball = path.join(workDir, `export-${ctr}.tar`);
  try {
    await runner.run(['podman', 'export', '-o', tarball, ctr]);
    await runner.run(['tar', '-x', '--no-same-owner', '--strip-components=1', '-f', tarball, '-C', installDir, 'imageroot']);
  } finally {
    rmSync(tarball, { force: true });
    await runner.run(['podman', 'rm', '-f', ctr], { allowFailure: true });
  }
}

/** Where one instance of a compat test lives and how it logs in to Redis. */
export interface CompatInstance {
  id: string;
  installDir: string;
  stateDir: string;
  password: string;
}

/**
 * The environment an instance's action steps get on an NS8 node, under the compat root: PATH as
 * NS8's agent.env orders it (install dir's bin/ and the recording fakebin/ first), the module's
 * Redis login on `127.0.0.1:<redisPort>`, and the agent's dirs; `extra` is added last.
 */
export function compatStepEnv(root: string, redisPort: number, inst: CompatInstance, extra: Record<string, string> = {}): Record<string, string> {
  const nodeRoot = path.join(root, 'node');
  return {
    PATH: `${inst.installDir}/bin:${root}/fakebin:${nodeRoot}/usr/local/agent/pyenv/bin:/usr/local/bin:/usr/bin:/bin:${nodeRoot}/usr/local/agent/bin`,
    HOME: root,
    LANG: 'C.UTF-8',
    PYTHONDONTWRITEBYTECODE: '1',
    PYTHONPATH: `${inst.installDir}/pypkg`,
    REDIS_ADDRESS: `127.0.0.1:${redisPort}`,
    REDIS_REPLICA_ADDRESS: `127.0.0.1:${redisPort}`,
    REDIS_USER: `module/${inst.id}`,
    REDIS_PASSWORD: inst.password,
    AGENT_INSTALL_DIR: inst.installDir,
    AGENT_STATE_DIR: inst.stateDir,
    AGENT_ID: `module/${inst.id}`,
    ...extra,
  };
}

/** The instance's `<stateDir>/environment` file as a map. @throws ENOENT when it is missing. */
export function readStateEnvironment(stateDir: string): Record<string, string> {
  return Object.fromEntries(parseEnvironment(readFileSync(path.join(stateDir, 'environment'), 'utf8')));
}

/** The argument lines the recording `systemctl` wrote under `root`, in order; [] when none. */
export function systemctlCalls(root: string): string[] {
  const log = path.join(root, 'systemctl.log');
  return existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : [];
}

/**
 * The task relay the compat tests' agents.tasks calls go through, with short poll intervals, once
 * it is ready; the recorded `systemctl` calls of the setup are cleared, so a test sees only its own.
 */
export async function startCompatRelay(admin: Redis, root: string): Promise<TaskRelay> {
  const relay = startTaskRelay(admin, { blockSeconds: 0.2, refreshMs: 200, pollMs: 200, log: () => undefined });
  await relay.ready;
  rmSync(path.join(root, 'systemctl.log'), { force: true });
  return relay;
}
