/**
 * A stand-in for systemd on hosts where it is not PID 1 (the sandbox runs the real one): it keeps
 * unit state as systemd would (enable makes the .wants symlinks, start and restart mark units
 * active, a unit can be made to fail) and records every call.
 */
import { promises as fs, existsSync } from 'node:fs';
import path from 'node:path';
import { parseInstallSection, type SystemdHost, type UnitScope } from '../../src/node-agent/host/systemd.js';

/** Keeps what systemd would keep, and every call made to it. */
export class RecordingSystemd implements SystemdHost {
  readonly calls: string[] = [];
  readonly active = new Set<string>();
  failing = new Set<string>();
  /** A unit that fails only in some conditions (a new version that crashes at start). */
  failingIf: (unit: string) => boolean = () => false;
  private fails(unit: string): boolean {
    return this.failing.has(unit) || this.failingIf(unit);
  }
  /** Told when a unit starts (start, restart) or stops (stop, linger off), after the fact. */
  onUnit: (event: 'start' | 'stop', scope: UnitScope, unit: string) => Promise<void> = async () => undefined;
  constructor(
    private readonly lingerDir: string,
    private readonly unitDir: (scope: UnitScope) => string,
    /** Where node-level units live (/etc/systemd/user, /etc/systemd/system). */
    private readonly extraDirs: string[] = [],
  ) {}
  private key(scope: UnitScope, unit: string): string {
    return `${scope.kind === 'user' ? scope.user : 'system'}/${unit}`;
  }
  async missing(): Promise<string | undefined> {
    return undefined;
  }
  async lingerEnabled(user: string): Promise<boolean> {
    return existsSync(path.join(this.lingerDir, user));
  }
  async enableLinger(user: string): Promise<void> {
    this.calls.push(`enable-linger ${user}`);
    await fs.mkdir(this.lingerDir, { recursive: true });
    await fs.writeFile(path.join(this.lingerDir, user), '');
  }
  async disableLinger(user: string): Promise<void> {
    this.calls.push(`disable-linger ${user}`);
    await fs.rm(path.join(this.lingerDir, user), { force: true });
    for (const k of [...this.active]) if (k.startsWith(`${user}/`)) this.active.delete(k);
    await this.onUnit('stop', { kind: 'user', user, uid: -1 }, 'agent.service');
  }
  async daemonReload(scope: UnitScope): Promise<void> {
    this.calls.push(`daemon-reload ${scope.kind}`);
  }
  async enable(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`enable ${units.join(' ')}`);
    for (const u of units) {
      const file = u.replace(/@[^.]+\./, '@.');
      const candidates = [path.join(this.unitDir(scope), file), ...this.extraDirs.map((d) => path.join(d, file))];
      const found = candidates.find((c) => existsSync(c));
      if (!found) throw new Error(`unit file of ${u} not found in ${candidates.join(', ')}`);
      const text = await fs.readFile(found, 'utf8');
      for (const t of parseInstallSection(text).wantedBy) {
        const dir = path.join(scope.kind === 'user' ? this.unitDir(scope) : this.unitDir(scope), `${t}.wants`);
        await fs.mkdir(dir, { recursive: true });
        await fs.symlink(path.join(this.unitDir(scope), u), path.join(dir, u)).catch(() => undefined);
      }
    }
  }
  async disable(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`disable ${units.join(' ')}`);
  }
  async start(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`start ${units.join(' ')}`);
    for (const u of units) if (this.fails(u)) this.active.delete(this.key(scope, u));
    for (const u of units) if (!this.fails(u)) this.active.add(this.key(scope, u));
    for (const u of units) if (!this.fails(u)) await this.onUnit('start', scope, u);
  }
  async restart(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`restart ${units.join(' ')}`);
    for (const u of units) if (this.fails(u)) this.active.delete(this.key(scope, u));
    for (const u of units) if (!this.fails(u)) this.active.add(this.key(scope, u));
    for (const u of units) if (!this.fails(u)) await this.onUnit('start', scope, u);
  }
  async stop(scope: UnitScope, units: string[]): Promise<void> {
    this.calls.push(`stop ${units.join(' ')}`);
    for (const u of units) this.active.delete(this.key(scope, u));
    for (const u of units) await this.onUnit('stop', scope, u);
  }
  async activeFromCgroup(scope: UnitScope, unit: string): Promise<boolean | undefined> {
    return this.active.has(this.key(scope, unit));
  }
  async isActive(scope: UnitScope, units: string[]): Promise<Record<string, string>> {
    return Object.fromEntries(units.map((u) => [u, this.active.has(this.key(scope, u)) ? 'active' : this.fails(u) ? 'failed' : 'inactive']));
  }
  async describe(_scope: UnitScope, unit: string): Promise<string> {
    return `${unit} is failed (failed), result exit-code, exit status 1`;
  }
}

