/**
 * The NS8 agent runtime on a node: the files and links that make real NS8 module actions run.
 *
 * NS8's core installs, and module actions rely on:
 * - `/usr/local/agent/pypkg/agent`: the Python package every action `import`s (ns8ctl's own
 *   implementation lives in `runtime/ns8/pypkg`);
 * - `/usr/local/agent/pyenv`: a Python virtual environment (system site packages included, so
 *   Debian's python3-redis is found) whose site-packages has a `.pth` naming the pypkg dir; its
 *   `bin` is first on agent.env's PATH, so `#!/usr/bin/env python3` actions get it;
 * - `/usr/local/agent/bin`: helper commands (`redis-exec`, `podman-pull-missing`, ...), last on PATH
 *   (`runtime/ns8/agent-bin`);
 * - `/usr/local/bin/runagent` (`runtime/ns8/bin/runagent`), which module units call in
 *   `ExecStartPre=`;
 * - `/etc/nethserver/agent.env` and `/etc/nethserver/core.env`.
 *
 * The layout is data (ns8RuntimeLayout) so the sandbox root filesystem recipe and tests install
 * the same thing; installNs8Runtime materialises it under a root directory.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DEFAULT_CORE_VERSION } from '../repository/core-version.js';
import { AgentError } from '../errors.js';

/** Where NS8 keeps its agent runtime (absolute paths on a node). */
export const NS8_RUNTIME_PATHS = {
  pypkg: '/usr/local/agent/pypkg',
  agentBin: '/usr/local/agent/bin',
  pyenv: '/usr/local/agent/pyenv',
  baseActions: '/usr/local/agent/actions',
  runagent: '/usr/local/bin/runagent',
  agentEnv: '/etc/nethserver/agent.env',
  coreEnv: '/etc/nethserver/core.env',
  registryAuth: '/etc/nethserver/registry.json',
} as const;

/** The folders of `runtime/ns8/` in the ns8ctl source tree, relative to it. */
export const RUNTIME_SOURCE_DIRS = { pypkg: 'pypkg', agentBin: 'agent-bin', bin: 'bin' } as const;

/**
 * `/etc/nethserver/agent.env` as NS8 writes it: the PATH agents and actions get (pyenv first,
 * the helpers last), the registry credentials file, the base actions dir, the leader's Redis
 * through the `cluster-leader` host name (an /etc/hosts entry) and the local replica.
 */
export function renderGlobalAgentEnv(): string {
  return [
    '# Agent environment variables (NS8 layout, written by ns8ctl)',
    `PATH=${NS8_RUNTIME_PATHS.pyenv}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:${NS8_RUNTIME_PATHS.agentBin}`,
    `REGISTRY_AUTH_FILE=${NS8_RUNTIME_PATHS.registryAuth}`,
    `AGENT_BASEACTIONS_DIR=${NS8_RUNTIME_PATHS.baseActions}`,
    '# An /etc/hosts record decides where to go:',
    'REDIS_ADDRESS=cluster-leader:6379',
    'REDIS_REPLICA_ADDRESS=127.0.0.1:6379',
    '',
  ].join('\n');
}

/** Core image names NS8 lists in core.env (tag = the core version), and the two third-party ones it pins. */
const CORE_IMAGES = ['core', 'redis', 'rsync', 'restic', 'rclone', 'support'] as const;

/**
 * `/etc/nethserver/core.env`: the images of the NS8 core release ns8ctl stands for. Modules read
 * it for helper images (e.g. RSYNC_IMAGE, RESTIC_IMAGE), and ns8ctl's repository resolution reads
 * CORE_IMAGE's tag as the core version that `org.nethserver.min-core` labels are compared with,
 * so it is DEFAULT_CORE_VERSION unless told otherwise. @throws AgentError on a version or
 * registry prefix that would not make a one-line value.
 */
export function renderCoreEnv(opts: { coreVersion?: string; repobase?: string } = {}): string {
  const version = opts.coreVersion ?? DEFAULT_CORE_VERSION;
  const repobase = opts.repobase ?? 'ghcr.io/nethserver';
  for (const [what, v] of [['core version', version], ['image prefix', repobase]] as const) {
    if (!/^[A-Za-z0-9._/:@-]+$/.test(v)) throw new AgentError('core_env_invalid', `core.env: ${what} ${JSON.stringify(v)} is not valid: use letters, digits and . _ / : @ -`);
  }
  const lines = CORE_IMAGES.map((name) => `${name.toUpperCase()}_IMAGE=${repobase}/${name}:${version}`);
  lines.push('PROMTAIL_IMAGE=docker.io/grafana/alloy:v1.11.3', 'NODE_EXPORTER_IMAGE=quay.io/prometheus/node-exporter:v1.10.2');
  return lines.join('\n') + '\n';
}

/** Files (content, mode) and symbolic links to create, by path relative to the node's `/`. */
export interface Ns8RuntimeLayout {
  files: Record<string, { content: string; mode: number }>;
  symlinks: Record<string, string>;
}

/**
 * The NS8 runtime layout of a node. `runtimeDir` is where `runtime/ns8` of ns8ctl is readable
 * on the node (the sandbox bind-mounts the project there); pypkg, agent-bin and runagent are
 * links into it, so a new ns8ctl build is live without rebuilding anything. `python` is the
 * interpreter the pyenv links to and `pythonVersion` its `major.minor` (site-packages path).
 * `installRoot` (default `/`) is where the layout will be installed: the pyenv's `.pth` names the
 * pypkg link under it (tests install into a temp dir standing for a node's `/`).
 */
export function ns8RuntimeLayout(opts: { runtimeDir: string; python?: string; pythonVersion: string; coreVersion?: string; installRoot?: string }): Ns8RuntimeLayout {
  if (!/^\d+\.\d+$/.test(opts.pythonVersion)) throw new AgentError('python_version_invalid', `NS8 runtime: python version ${JSON.stringify(opts.pythonVersion)} is not major.minor (e.g. 3.11)`);
  if (!path.isAbsolute(opts.runtimeDir)) throw new AgentError('runtime_dir_invalid', `NS8 runtime: ${opts.runtimeDir} is not an absolute path`);
  const python = opts.python ?? '/usr/bin/python3';
  const rel = (p: string): string => p.replace(/^\//, '');
  const pyenv = rel(NS8_RUNTIME_PATHS.pyenv);
  return {
    files: {
      [`${pyenv}/pyvenv.cfg`]: { content: `home = ${path.dirname(python)}\ninclude-system-site-packages = true\nversion = ${opts.pythonVersion}\n`, mode: 0o644 },
      [`${pyenv}/lib/python${opts.pythonVersion}/site-packages/ns8-pypkg.pth`]: { content: `${path.join(opts.installRoot ?? '/', NS8_RUNTIME_PATHS.pypkg)}\n`, mode: 0o644 },
      [rel(NS8_RUNTIME_PATHS.agentEnv)]: { content: renderGlobalAgentEnv(), mode: 0o644 },
      [rel(NS8_RUNTIME_PATHS.coreEnv)]: { content: renderCoreEnv(opts.coreVersion ? { coreVersion: opts.coreVersion } : {}), mode: 0o644 },
      [rel(NS8_RUNTIME_PATHS.registryAuth)]: { content: '{"auths":{}}\n', mode: 0o644 },
      [`${rel(NS8_RUNTIME_PATHS.baseActions)}/.keep`]: { content: '', mode: 0o644 },
    },
    symlinks: {
      [`${pyenv}/bin/python3`]: python,
      [`${pyenv}/bin/python`]: python,
      [rel(NS8_RUNTIME_PATHS.pypkg)]: path.join(opts.runtimeDir, RUNTIME_SOURCE_DIRS.pypkg),
      [rel(NS8_RUNTIME_PATHS.agentBin)]: path.join(opts.runtimeDir, RUNTIME_SOURCE_DIRS.agentBin),
      [rel(NS8_RUNTIME_PATHS.runagent)]: path.join(opts.runtimeDir, RUNTIME_SOURCE_DIRS.bin, 'runagent'),
    },
  };
}

/**
 * Creates `layout` under `root` (a node's `/`, or a test's temp dir standing for it): parent
 * directories, files (replaced atomically enough for a node being set up: written in place),
 * links (an existing link or file at the path is replaced). Idempotent. @throws AgentError
 * naming the path that could not be written.
 */
export async function installNs8Runtime(root: string, layout: Ns8RuntimeLayout): Promise<void> {
  const at = (rel: string): string => {
    const p = path.resolve(root, rel);
    if (!p.startsWith(path.resolve(root) + path.sep)) throw new AgentError('runtime_path_invalid', `NS8 runtime: ${rel} is outside ${root}`);
    return p;
  };
  const attempt = async (p: string, what: () => Promise<void>): Promise<void> => {
    try {
      await what();
    } catch (err) {
      throw new AgentError('runtime_install_failed', `NS8 runtime: cannot write ${p}: ${(err as Error).message}`, { cause: err, user: false });
    }
  };
  for (const [rel, f] of Object.entries(layout.files)) {
    const p = at(rel);
    await attempt(p, async () => {
      await fs.mkdir(path.dirname(p), { recursive: true });
      await fs.writeFile(p, f.content, { mode: f.mode });
      await fs.chmod(p, f.mode);
    });
  }
  for (const [rel, target] of Object.entries(layout.symlinks)) {
    const p = at(rel);
    await attempt(p, async () => {
      await fs.mkdir(path.dirname(p), { recursive: true });
      await fs.rm(p, { force: true });
      await fs.symlink(target, p);
    });
  }
}
