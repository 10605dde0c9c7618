/**
 * Where things live on a node. Production defaults follow NS8 (seeds, "Modules"; ns8-core-facts
 * §3); tests point the roots at temp dirs. Rootless instances live in `<homeBase>/<id>/.config`,
 * rootfull ones in `<rootfullBase>/<id>`, the UI of both in `<uiBase>/<id>`.
 */
import path from 'node:path';
import type { InstancePaths } from './types.js';

export interface HostLayout {
  /** Parent of rootless module homes (`useradd -b`), NS8 `HOME_BASEDIR`. Default /home. */
  homeBase: string;
  /** Parent of rootfull install dirs. Default /var/lib/nethserver. */
  rootfullBase: string;
  /** Parent of module UI dirs. Default /var/lib/nethserver/cluster/ui/apps. */
  uiBase: string;
  /** The node agent's own records (one JSON file per instance). Default /var/lib/nethserver/node/state/ns8ctl. */
  agentStateDir: string;
  /**
   * The node's service-image cache, whose entries instance users import as themselves: every
   * ancestor must be searchable by other users (NS8 keeps /var/lib/nethserver 0700). Default
   * /var/lib/ns8ctl/service-images; with another agentStateDir, `ns8ctl-service-images` beside it.
   */
  serviceImageCacheDir: string;
  /** System unit dir for rootfull modules' units. Default /etc/systemd/system. */
  systemUnitDir: string;
  /** System-wide user units (NS8's agent.service). Default /etc/systemd/user. */
  userUnitDir: string;
  /** systemd-logind linger flags. Default /var/lib/systemd/linger. */
  lingerDir: string;
  /** Exists when systemd is PID 1 (sd_booted). Default /run/systemd/system. */
  systemdRunDir: string;
  /** cgroup file system root. Default /sys/fs/cgroup. */
  cgroupRoot: string;
  /** PID 1's cgroup membership (tells where systemd's tree starts). Default /proc/1/cgroup. */
  pid1CgroupFile: string;
  passwdFile: string;
  subuidFile: string;
  subgidFile: string;
  /** Root's container storage (rootfull images). Default /var/lib/containers/storage. */
  rootStorage: string;
  /** Login shell of module users (NS8 >= 3.20: /sbin/nologin). */
  loginShell: string;
}

/** NS8's production layout. */
export function defaultLayout(overrides: Partial<HostLayout> = {}): HostLayout {
  const serviceImageCacheDir = overrides.agentStateDir ? path.join(path.dirname(path.resolve(overrides.agentStateDir)), 'ns8ctl-service-images') : '/var/lib/ns8ctl/service-images';
  return {
    serviceImageCacheDir,
    homeBase: '/home',
    rootfullBase: '/var/lib/nethserver',
    uiBase: '/var/lib/nethserver/cluster/ui/apps',
    agentStateDir: '/var/lib/nethserver/node/state/ns8ctl',
    systemUnitDir: '/etc/systemd/system',
    userUnitDir: '/etc/systemd/user',
    lingerDir: '/var/lib/systemd/linger',
    systemdRunDir: '/run/systemd/system',
    cgroupRoot: '/sys/fs/cgroup',
    pid1CgroupFile: '/proc/1/cgroup',
    passwdFile: '/etc/passwd',
    subuidFile: '/etc/subuid',
    subgidFile: '/etc/subgid',
    rootStorage: '/var/lib/containers/storage',
    loginShell: '/sbin/nologin',
    ...overrides,
  };
}

/**
 * Paths of one instance. `home` is the user's actual home when known (rootless; from passwd),
 * else `<homeBase>/<id>`.
 */
export function instancePaths(layout: HostLayout, id: string, rootfull: boolean, home?: string): InstancePaths {
  const base = rootfull ? path.join(layout.rootfullBase, id) : (home ?? path.join(layout.homeBase, id));
  const installDir = rootfull ? base : path.join(base, '.config');
  return {
    base,
    installDir,
    stateDir: path.join(installDir, 'state'),
    unitSourceDir: path.join(installDir, 'systemd', rootfull ? 'system' : 'user'),
    uiDir: path.join(layout.uiBase, id),
  };
}

/** Rootless container storage of a user (podman's default graphroot). */
export function userStorage(home: string): string {
  return path.join(home, '.local', 'share', 'containers', 'storage');
}
