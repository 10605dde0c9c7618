/**
 * Host adjustments that Podman needs on some machines before it can run containers at all, and
 * before nested (rootless) Podman works inside a sandbox node. Each one is detected from the
 * host's state, explained in one printed line, and applied idempotently. They are applied only by
 * the `ns8ctl sandbox` commands (and the test harness), never by the normal reconcile path.
 *
 * The adjustments, in order:
 * - `cgroup-hybrid`: in the cgroup v1 "hybrid" layout crun refuses to start containers while the
 *   v2 `unified` hierarchy still owns a controller (usually `hugetlb`). Moving those controllers to
 *   their own v1 hierarchy lets crun work on the host and inside the nodes.
 * - `oci-runtime-runc`: when that move is impossible, fall back to runc through a containers.conf
 *   drop-in (runc accepts the hybrid layout; nested rootless Podman may then not work).
 * - `podman-ulimits`: without CAP_SYS_RESOURCE, rootful Podman cannot raise RLIMIT_NOFILE to its
 *   default and every `podman run` fails; `default_ulimits = []` makes containers inherit limits.
 * - `tun-mode`: rootless networking (slirp4netns) opens `/dev/net/tun`, which must be 0666.
 */
import { promises as fsp } from 'node:fs';
import path from 'node:path';
import type { CommandRunner } from '../host/runner.js';
import { Ns8ctlError } from '../errors.js';

/** Stable names of the adjustments, as printed and as returned. */
export type HostAdjustmentId = 'cgroup-hybrid' | 'oci-runtime-runc' | 'podman-ulimits' | 'tun-mode';

/** One adjustment found necessary, with the line that explains it. */
export interface HostAdjustment {
  id: HostAdjustmentId;
  /** One line for the user: what is wrong and what ns8ctl does about it. */
  explanation: string;
}

/** Where the host keeps the files inspected and changed (overridable so unit tests use a temp tree). */
export interface HostPaths {
  /** Mount point of the cgroup file system (`/sys/fs/cgroup`). */
  cgroupRoot: string;
  /** Directory of containers.conf drop-ins (`/etc/containers/containers.conf.d`). */
  containersConfDir: string;
  /** The tun device (`/dev/net/tun`). */
  tunDevice: string;
  /** Status file of this process, for capabilities (`/proc/self/status`). */
  procStatus: string;
}

/** The real host's paths. */
export const HOST_PATHS: HostPaths = {
  cgroupRoot: '/sys/fs/cgroup',
  containersConfDir: '/etc/containers/containers.conf.d',
  tunDevice: '/dev/net/tun',
  procStatus: '/proc/self/status',
};

/** File name of the drop-in ns8ctl writes (and only this one). */
export const CONTAINERS_DROPIN = 'ns8ctl-sandbox.conf';

/** Dependencies of the host checks: commands go through the runner, lines go to `log`. */
export interface HostCheckDeps {
  runner: CommandRunner;
  /** Receives one explaining line per adjustment applied (the CLI prints them on stderr). */
  log: (line: string) => void;
  paths?: Partial<HostPaths>;
}

/** What the checks saw, before deciding (exported for tests and for `sandbox` error messages). */
export interface HostFacts {
  /** Controllers still attached to the v2 `unified` hierarchy in the hybrid layout (empty otherwise). */
  unifiedControllers: string[];
  /** True when this process has CAP_SYS_RESOURCE. */
  hasSysResource: boolean;
  /** Mode bits of the tun device, or null when it does not exist. */
  tunMode: number | null;
  /** Settings of our drop-in as found (`runtime`, `default_ulimits`). */
  dropin: { runtime?: string; ulimitsEmpty: boolean };
}

const CAP_SYS_RESOURCE = 24n;

function resolvePaths(p?: Partial<HostPaths>): HostPaths {
  return { ...HOST_PATHS, ...(p ?? {}) };
}

async function readOptional(file: string): Promise<string | null> {
  try {
    return await fsp.readFile(file, 'utf8');
  } catch {
    return null;
  }
}

/** Reads the facts the adjustments depend on. Never changes anything. */
export async function readHostFacts(paths?: Partial<HostPaths>): Promise<HostFacts> {
  const p = resolvePaths(paths);
  const controllers = await readOptional(path.join(p.cgroupRoot, 'unified', 'cgroup.controllers'));
  const unifiedControllers = (controllers ?? '').split(/\s+/).filter(Boolean);
  const status = (await readOptional(p.procStatus)) ?? '';
  const capEff = /^CapEff:\s*([0-9a-f]+)/m.exec(status)?.[1];
  const hasSysResource = capEff ? ((BigInt('0x' + capEff) >> CAP_SYS_RESOURCE) & 1n) === 1n : true;
  let tunMode: number | null = null;
  try {
    tunMode = (await fsp.stat(p.tunDevice)).mode & 0o777;
  } catch {
    tunMode = null;
  }
  const conf = (await readOptional(path.join(p.containersConfDir, CONTAINERS_DROPIN))) ?? '';
  const runtime = /^\s*runtime\s*=\s*"([^"]*)"/m.exec(conf)?.[1];
  const ulimitsEmpty = /^\s*default_ulimits\s*=\s*\[\s*\]/m.test(conf);
  return { unifiedControllers, hasSysResource, tunMode, dropin: { ...(runtime !== undefined ? { runtime } : {}), ulimitsEmpty } };
}

/**
 * Pure decision: which adjustments the facts call for. `cgroup-hybrid` comes first; the runc
 * fallback is only chosen by {@link applyHostAdjustments} when the move fails.
 */
export function planHostAdjustments(facts: HostFacts): HostAdjustment[] {
  const out: HostAdjustment[] = [];
  if (facts.unifiedControllers.length > 0 && facts.dropin.runtime !== 'runc') {
    out.push({
      id: 'cgroup-hybrid',
      explanation:
        `host: cgroup v1/v2 hybrid layout with controller(s) ${facts.unifiedControllers.join(', ')} on cgroup v2, which crun refuses; ` +
        `mounting them as cgroup v1 hierarchies under /sys/fs/cgroup so crun works on the host and inside sandbox nodes`,
    });
  }
  if (!facts.hasSysResource && !facts.dropin.ulimitsEmpty) {
    out.push({
      id: 'podman-ulimits',
      explanation:
        `host: this process lacks CAP_SYS_RESOURCE, so Podman cannot raise RLIMIT_NOFILE and every 'podman run' fails; ` +
        `writing default_ulimits = [] to /etc/containers/containers.conf.d/${CONTAINERS_DROPIN} (containers inherit the current limits)`,
    });
  }
  if (facts.tunMode !== null && (facts.tunMode & 0o666) !== 0o666) {
    out.push({
      id: 'tun-mode',
      explanation: `host: /dev/net/tun has mode ${facts.tunMode.toString(8).padStart(4, '0')}, so rootless Podman networking (slirp4netns) cannot open it; setting mode 0666`,
    });
  }
  return out;
}

/** Renders our containers.conf drop-in from the settings it must carry. */
export function renderContainersDropin(settings: { runtime?: string; ulimitsEmpty: boolean }): string {
  const lines = ['# Written by `ns8ctl sandbox` (host adjustments, see docs/sandbox.md). Safe to delete.'];
  if (settings.ulimitsEmpty) lines.push('[containers]', 'default_ulimits = []');
  if (settings.runtime) lines.push('[engine]', `runtime = "${settings.runtime}"`);
  return lines.join('\n') + '\n';
}

async function writeDropin(p: HostPaths, settings: { runtime?: string; ulimitsEmpty: boolean }): Promise<void> {
  await fsp.mkdir(p.containersConfDir, { recursive: true });
  const file = path.join(p.containersConfDir, CONTAINERS_DROPIN);
  const tmp = `${file}.${process.pid}.tmp`;
  await fsp.writeFile(tmp, renderContainersDropin(settings), { mode: 0o644 });
  await fsp.rename(tmp, file);
}

async function moveUnifiedControllers(deps: HostCheckDeps, p: HostPaths, controllers: string[]): Promise<boolean> {
  for (const c of controllers) {
    const dir = path.join(p.cgroupRoot, c);
    await fsp.mkdir(dir, { recursive: true }).catch(() => undefined);
    await deps.runner.run(['mount', '-t', 'cgroup', '-o', c, 'cgroup', dir], { allowFailure: true, mutating: true, purpose: `host: mount cgroup v1 ${c}` });
  }
  // Another process may have done the same at the same moment: only the end state matters.
  const after = await readHostFacts(p);
  return after.unifiedControllers.length === 0;
}

/**
 * Detects and applies every adjustment this host needs, printing one explaining line each through
 * `deps.log`. Idempotent: on a host that needs nothing (or was already adjusted) it prints and
 * changes nothing. Returns what it applied.
 *
 * Fails with `host_adjustment_failed` when a needed change cannot be made (e.g. not root), naming
 * the change and how to make it by hand.
 */
export async function applyHostAdjustments(deps: HostCheckDeps): Promise<HostAdjustment[]> {
  const p = resolvePaths(deps.paths);
  const facts = await readHostFacts(p);
  const planned = planHostAdjustments(facts);
  const applied: HostAdjustment[] = [];
  const dropin = { ...facts.dropin };
  let dropinChanged = false;
  for (const adj of planned) {
    deps.log(adj.explanation);
    try {
      if (adj.id === 'cgroup-hybrid') {
        const ok = await moveUnifiedControllers(deps, p, facts.unifiedControllers);
        applied.push(adj);
        if (!ok) {
          const fallback: HostAdjustment = {
            id: 'oci-runtime-runc',
            explanation: `host: could not move the cgroup v2 controller(s) off the unified hierarchy; falling back to runtime = "runc" in /etc/containers/containers.conf.d/${CONTAINERS_DROPIN} (nested rootless Podman in sandbox nodes may not work)`,
          };
          deps.log(fallback.explanation);
          dropin.runtime = 'runc';
          dropinChanged = true;
          applied.push(fallback);
        }
      } else if (adj.id === 'podman-ulimits') {
        dropin.ulimitsEmpty = true;
        dropinChanged = true;
        applied.push(adj);
      } else if (adj.id === 'tun-mode') {
        await fsp.chmod(p.tunDevice, 0o666);
        applied.push(adj);
      }
    } catch (err) {
      throw new Ns8ctlError('host_adjustment_failed', `host adjustment ${adj.id} failed: ${(err as Error).message}. Run ns8ctl sandbox as root, or make the change by hand (docs/sandbox.md, "Host adjustments")`, {
        cause: err,
      });
    }
  }
  if (dropinChanged) {
    try {
      await writeDropin(p, dropin);
    } catch (err) {
      throw new Ns8ctlError('host_adjustment_failed', `writing ${path.join(p.containersConfDir, CONTAINERS_DROPIN)} failed: ${(err as Error).message}. Run ns8ctl sandbox as root`, { cause: err });
    }
  }
  return applied;
}

/**
 * Files a sandbox node's root filesystem needs so that Podman works *inside* the node the same way
 * (the node inherits the host's limits and capabilities). Keys are paths inside the rootfs.
 */
export function nodePodmanFiles(): Record<string, string> {
  return {
    [`etc/containers/containers.conf.d/${CONTAINERS_DROPIN}`]: renderContainersDropin({ ulimitsEmpty: true }),
    'etc/tmpfiles.d/ns8ctl-tun.conf': '# rootless Podman networking (slirp4netns) opens /dev/net/tun\nz /dev/net/tun 0666 - - -\n',
  };
}
