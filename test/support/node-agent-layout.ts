import path from 'node:path';
import { defaultLayout, type HostLayout } from '../../src/node-agent/layout.js';

/**
 * A node layout for host tests: the agent's own directories (homes, rootfull dirs, UI, records,
 * unit dirs, linger flags) under `root`, no systemd (its marker and cgroup paths do not exist),
 * and the host's real user database and root container storage (useradd and podman use them).
 */
export function tempHostLayout(root: string, overrides: Partial<HostLayout> = {}): HostLayout {
  // The user database, root storage and login shell stay the host's (defaultLayout's).
  return defaultLayout({
    homeBase: path.join(root, 'home'),
    rootfullBase: path.join(root, 'nethserver'),
    uiBase: path.join(root, 'ui'),
    agentStateDir: path.join(root, 'agent'),
    systemUnitDir: path.join(root, 'units'),
    userUnitDir: path.join(root, 'user-units'),
    lingerDir: path.join(root, 'linger'),
    systemdRunDir: path.join(root, 'no-systemd-here'),
    cgroupRoot: path.join(root, 'no-cgroup-here'),
    pid1CgroupFile: path.join(root, 'no-pid1-cgroup-here'),
    ...overrides,
  });
}
