/**
 * systemd behind an interface. Rootless instances' units are user units managed through the
 * user's lingering manager (`systemctl --user`, run as the user); rootfull instances' units are system
 * units. Observation reads the file system (unit files, `.wants/` symlinks, cgroups) so an
 * unchanged node spawns no process; systemctl runs only to change something or when the cgroup
 * tree cannot tell. On a host where systemd is not PID 1, `missing()` says so and the agent
 * reports it (Degraded) instead of failing.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import type { CommandRunner } from '../../host/runner.js';
import type { HostLayout } from '../layout.js';
import { expectExitCode } from './owner.js';
import { pathExists } from '../../runtime/path-exists.js';

/** Which systemd manager a unit belongs to. */
export type UnitScope = { kind: 'user'; user: string; uid: number } | { kind: 'system' };

export interface SystemdHost {
  /** Undefined when systemd runs on this host; else a one-line reason. */
  missing(): Promise<string | undefined>;
  /** Linger flag file present (no process). */
  lingerEnabled(user: string): Promise<boolean>;
  enableLinger(user: string, uid: number, purpose: string): Promise<void>;
  disableLinger(user: string, uid: number, purpose: string): Promise<void>;
  daemonReload(scope: UnitScope, purpose: string): Promise<void>;
  enable(scope: UnitScope, units: string[], purpose: string): Promise<void>;
  disable(scope: UnitScope, units: string[], purpose: string): Promise<void>;
  start(scope: UnitScope, units: string[], purpose: string): Promise<void>;
  restart(scope: UnitScope, units: string[], purpose: string): Promise<void>;
  stop(scope: UnitScope, units: string[], purpose: string): Promise<void>;
  /** Running state from the cgroup tree; undefined when the tree cannot tell (then ask `isActive`). */
  activeFromCgroup(scope: UnitScope, unit: string): Promise<boolean | undefined>;
  /** `systemctl is-active` of each unit: unit -> state (`active`, `failed`, `activating`, ...). */
  isActive(scope: UnitScope, units: string[], purpose: string): Promise<Record<string, string>>;
  /** One line on why a unit is not running (`ActiveState`, `Result`, last journal line if any). */
  describe(scope: UnitScope, unit: string, purpose: string): Promise<string>;
}

export interface SystemdHostOptions {
  /** Waits between polls (injected so tests do not sleep). */
  delay?: (ms: number) => Promise<void>;
  /** How long to wait for a user manager after enabling linger (ms). Default 30 s. */
  userManagerTimeoutMs?: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Production SystemdHost over the CommandRunner. */
export class RunnerSystemdHost implements SystemdHost {
  private readonly delay: (ms: number) => Promise<void>;
  constructor(
    private readonly runner: CommandRunner,
    private readonly layout: HostLayout,
    private readonly opts: SystemdHostOptions = {},
  ) {
    this.delay = opts.delay ?? sleep;
  }

  async missing(): Promise<string | undefined> {
    return (await pathExists(this.layout.systemdRunDir)) ? undefined : 'systemd not running on this host';
  }

  lingerEnabled(user: string): Promise<boolean> {
    return pathExists(path.join(this.layout.lingerDir, user));
  }

  /**
   * A user manager is reached as its user, on its runtime directory's private socket (`runuser`
   * and `systemctl --user`: about 45 ms). `systemctl --user -M <user>@` would do the same through
   * machined, a PAM login session and systemd-stdio-bridge: about 170 ms, paid on every call.
   */
  private ctl(scope: UnitScope): string[] {
    return scope.kind === 'user' ? ['runuser', '-u', scope.user, '--', 'env', '-u', 'DBUS_SESSION_BUS_ADDRESS', `XDG_RUNTIME_DIR=/run/user/${scope.uid}`, 'systemctl', '--user'] : ['systemctl'];
  }

  async enableLinger(user: string, uid: number, purpose: string): Promise<void> {
    await this.runner.run(['loginctl', 'enable-linger', user], { purpose, mutating: true });
    // The user manager starts asynchronously: joining its start job returns once it is up (it
    // notifies readiness), then the loop below confirms it answers, so the next systemctl works.
    await this.runner.run(['systemctl', 'start', `user@${uid}.service`], { purpose: `${purpose} (start user manager)`, mutating: true, allowFailure: true, timeoutMs: this.opts.userManagerTimeoutMs ?? 30_000 });
    const deadline = this.opts.userManagerTimeoutMs ?? 30_000;
    for (let waited = 0; ; waited += 250) {
      const res = await this.runner.run([...this.ctl({ kind: 'user', user, uid }), 'is-system-running'], { purpose: `${purpose} (wait for user manager)`, allowFailure: true });
      const state = res.stdout.trim();
      if (['running', 'degraded', 'starting', 'initializing'].includes(state)) return;
      if (waited >= deadline) {
        throw new Ns8ctlError('user_manager_unavailable', `${purpose}: the systemd user manager of ${user} did not start within ${deadline / 1000} s (${state || res.stderr.trim()})`, { user: false });
      }
      await this.delay(250);
    }
  }

  async disableLinger(user: string, uid: number, purpose: string): Promise<void> {
    const res = await this.runner.run(['loginctl', 'disable-linger', user], { purpose, mutating: true, allowFailure: true });
    expectExitCode(res, [1], purpose);
    await this.runner.run(['systemctl', 'stop', `user@${uid}.service`], { purpose, mutating: true, allowFailure: true });
    await this.runner.run(['loginctl', 'terminate-user', user], { purpose, mutating: true, allowFailure: true });
  }

  async daemonReload(scope: UnitScope, purpose: string): Promise<void> {
    await this.runner.run([...this.ctl(scope), 'daemon-reload'], { purpose, mutating: true });
  }

  /**
   * `--no-reload`: the daemon-reload planned before it already loaded the unit files; enabling
   * only adds the [Install] links, which the manager reads at its next reload or boot. Without it
   * systemctl reloads the manager again (about 0.12 s per instance).
   */
  async enable(scope: UnitScope, units: string[], purpose: string): Promise<void> {
    if (units.length) await this.runner.run([...this.ctl(scope), 'enable', '--no-reload', ...units], { purpose, mutating: true });
  }

  async disable(scope: UnitScope, units: string[], purpose: string): Promise<void> {
    if (units.length) await this.runner.run([...this.ctl(scope), 'disable', ...units], { purpose, mutating: true, allowFailure: true });
  }

  async start(scope: UnitScope, units: string[], purpose: string): Promise<void> {
    if (units.length) await this.runner.run([...this.ctl(scope), 'start', ...units], { purpose, mutating: true, timeoutMs: 5 * 60_000 });
  }

  async restart(scope: UnitScope, units: string[], purpose: string): Promise<void> {
    if (units.length) await this.runner.run([...this.ctl(scope), 'restart', ...units], { purpose, mutating: true, timeoutMs: 5 * 60_000 });
  }

  async stop(scope: UnitScope, units: string[], purpose: string): Promise<void> {
    if (units.length) await this.runner.run([...this.ctl(scope), 'stop', ...units], { purpose, mutating: true, allowFailure: true, timeoutMs: 5 * 60_000 });
  }

  private systemdBase?: Promise<string>;

  /**
   * Where systemd's tree starts inside the cgroup file system: `/` on a host, the container's
   * own cgroup when systemd runs in a container without a cgroup namespace (a sandbox node).
   * Read from PID 1's cgroup (`name=systemd` or the unified line), without its `init.scope`.
   */
  private base(): Promise<string> {
    this.systemdBase ??= fs.readFile(this.layout.pid1CgroupFile, 'utf8').then(
      (text) => {
        const lines = text.split('\n');
        const line = lines.find((l) => l.includes(':name=systemd:')) ?? lines.find((l) => l.startsWith('0::'));
        const p = line ? line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1) : '/';
        return p.replace(/\/init\.scope$/, '') || '/';
      },
      () => '/',
    );
    return this.systemdBase;
  }

  async activeFromCgroup(scope: UnitScope, unit: string): Promise<boolean | undefined> {
    const base = await this.base();
    const roots = [path.join(this.layout.cgroupRoot, 'unified', base), path.join(this.layout.cgroupRoot, 'systemd', base), path.join(this.layout.cgroupRoot, base)];
    for (const root of roots) {
      if (scope.kind === 'system') {
        const slice = path.join(root, 'system.slice');
        if (!(await pathExists(slice))) continue;
        // Instances of a template x@.service live in system-x.slice.
        const tpl = /^(.+)@/.exec(unit);
        if (tpl) return (await populated(path.join(slice, `system-${tpl[1]!.replace(/-/g, '\\x2d')}.slice`, unit))) || (await populated(path.join(slice, unit)));
        return populated(path.join(slice, unit));
      }
      const mgr = path.join(root, 'user.slice', `user-${scope.uid}.slice`, `user@${scope.uid}.service`);
      if (!(await pathExists(mgr))) continue;
      return (await populated(path.join(mgr, 'app.slice', unit))) || (await populated(path.join(mgr, unit)));
    }
    return undefined;
  }

  async isActive(scope: UnitScope, units: string[], purpose: string): Promise<Record<string, string>> {
    if (!units.length) return {};
    const res = await this.runner.run([...this.ctl(scope), 'is-active', ...units], { purpose, allowFailure: true });
    const states = res.stdout.trim().split('\n');
    return Object.fromEntries(units.map((u, i) => [u, states[i]?.trim() || 'unknown']));
  }

  async describe(scope: UnitScope, unit: string, purpose: string): Promise<string> {
    const res = await this.runner.run([...this.ctl(scope), 'show', '-p', 'ActiveState', '-p', 'SubState', '-p', 'Result', '-p', 'ExecMainStatus', unit], { purpose, allowFailure: true });
    const props = Object.fromEntries(
      res.stdout
        .trim()
        .split('\n')
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    ) as Record<string, string>;
    return `${unit} is ${props.ActiveState ?? 'unknown'}${props.SubState ? ` (${props.SubState})` : ''}${props.Result && props.Result !== 'success' ? `, result ${props.Result}` : ''}${props.ExecMainStatus && props.ExecMainStatus !== '0' ? `, exit status ${props.ExecMainStatus}` : ''}`;
  }
}

async function populated(dir: string): Promise<boolean> {
  try {
    const events = await fs.readFile(path.join(dir, 'cgroup.events'), 'utf8');
    return /populated 1/.test(events);
  } catch {
    try {
      return (await fs.readFile(path.join(dir, 'cgroup.procs'), 'utf8')).trim() !== '';
    } catch {
      return false;
    }
  }
}

/** The [Install] targets of a unit file (`WantedBy=`, `RequiredBy=`), and whether it has an [Install] section. */
export function parseInstallSection(text: string): { hasInstall: boolean; wantedBy: string[]; requiredBy: string[] } {
  let section = '';
  let hasInstall = false;
  const wantedBy: string[] = [];
  const requiredBy: string[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('#') || line.startsWith(';') || !line) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1]!;
      if (section === 'Install') hasInstall = true;
      continue;
    }
    if (section !== 'Install') continue;
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq).trim();
    const vals = line
      .slice(eq + 1)
      .trim()
      .split(/\s+/)
      .filter(Boolean);
    if (key === 'WantedBy') wantedBy.push(...vals);
    if (key === 'RequiredBy') requiredBy.push(...vals);
  }
  return { hasInstall, wantedBy, requiredBy };
}

/** Unit types the agent enables and starts (templates `x@.service` are only installed). */
export function isStartableUnit(name: string): boolean {
  return /\.(service|socket|timer|path)$/.test(name) && !/@\./.test(name);
}
