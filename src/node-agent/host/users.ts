/**
 * Unix users of rootless instances: created with `useradd -m` (home `<homeBase>/<id>`, subuid and
 * subgid ranges from the distribution's defaults, as NS8 relies on), removed with `userdel -f`
 * after their processes are ended. Reading users never spawns a process (see passwd.ts).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { CommandRecord, CommandRunner } from '../../host/runner.js';
import type { HostLayout } from '../layout.js';
import { Ns8ctlError } from '../../errors.js';
import { expectExitCode } from './owner.js';
import { freeSubidRange, parseSubids } from './passwd.js';

export interface UserHost {
  /** Creates the user with its home; an existing home (preserved data) is reused. */
  create(id: string, purpose: string): Promise<void>;
  /**
   * Gives the user the subuid and/or subgid range it lacks (65536 ids, first free range, as
   * useradd picks them): rootless podman needs both.
   */
  addSubids(id: string, purpose: string): Promise<void>;
  /** `userdel -f`; no error when the user is already gone. The home is never touched here. */
  remove(id: string, purpose: string): Promise<void>;
  /** Ends every process of the user (SIGKILL); no error when there is none. */
  killProcesses(id: string, purpose: string): Promise<void>;
  /** `chown -R uid:gid` of a tree (files of a recreated user). */
  chownTree(dir: string, uid: number, gid: number, purpose: string): Promise<void>;
  /** `rm -rf` of a tree (data erased with removalPolicy Delete). */
  removeTree(dir: string, purpose: string): Promise<void>;
}

/** Production UserHost over the CommandRunner. */
export class RunnerUserHost implements UserHost {
  constructor(
    private readonly runner: CommandRunner,
    private readonly layout: HostLayout,
  ) {}

  async create(id: string, purpose: string): Promise<void> {
    await fs.mkdir(this.layout.homeBase, { recursive: true });
    const res = await this.withPasswdLock(['useradd', '-m', '-b', this.layout.homeBase, '-s', this.layout.loginShell, id], purpose);
    // 9: the user already exists (a concurrent or interrupted run made it): fine, it is what we want.
    expectExitCode(res, [9], purpose);
    await fs.chmod(path.join(this.layout.homeBase, id), 0o700);
  }

  async addSubids(id: string, purpose: string): Promise<void> {
    const [su, sg] = await Promise.all([this.layout.subuidFile, this.layout.subgidFile].map((f) => fs.readFile(f, 'utf8').catch(() => '')));
    const start = freeSubidRange([su!, sg!]);
    if (start === undefined) throw new Ns8ctlError('subids_exhausted', `${purpose}: no free range of 65536 subordinate ids is left in ${this.layout.subuidFile} and ${this.layout.subgidFile}`, { user: false });
    const range = `${start}-${start + 65535}`;
    const argv = ['usermod', ...(parseSubids(su!).has(id) ? [] : ['--add-subuids', range]), ...(parseSubids(sg!).has(id) ? [] : ['--add-subgids', range]), id];
    if (argv.length === 2) return;
    const res = await this.withPasswdLock(argv, purpose);
    expectExitCode(res, [], purpose);
  }

  async remove(id: string, purpose: string): Promise<void> {
    const res = await this.withPasswdLock(['userdel', '-f', id], purpose);
    // 6: no such user.
    expectExitCode(res, [6], purpose);
  }

  /**
   * Runs useradd/userdel, retrying while /etc/passwd (or group, shadow, subuid...) is locked: by
   * another tool for a moment, or by a lock file a killed process left behind (its PID gone or a
   * zombie), which is removed as shadow-utils itself does for dead owners. Gives up after ~10 s.
   */
  private async withPasswdLock(argv: string[], purpose: string): Promise<CommandRecord> {
    for (let attempt = 0; ; attempt++) {
      const res = await this.runner.run(argv, { purpose, mutating: true, allowFailure: true });
      if (res.exitCode === 0 || !/cannot lock|already used by PID|try again later/i.test(res.stderr) || attempt >= 50) return res;
      await this.removeStaleLocks();
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  private async removeStaleLocks(): Promise<void> {
    const dir = path.dirname(this.layout.passwdFile);
    for (const name of ['passwd', 'group', 'shadow', 'gshadow', 'subuid', 'subgid']) {
      const lock = path.join(dir, `${name}.lock`);
      const pid = Number((await fs.readFile(lock, 'utf8').catch(() => '')).trim());
      if (!Number.isInteger(pid) || pid <= 0) continue;
      const state = await fs.readFile(`/proc/${pid}/stat`, 'utf8').then((t) => t.slice(t.lastIndexOf(')') + 2, t.lastIndexOf(')') + 3), () => 'gone');
      if (state === 'gone' || state === 'Z' || state === 'X') await fs.rm(lock, { force: true });
    }
  }

  async killProcesses(id: string, purpose: string): Promise<void> {
    const res = await this.runner.run(['pkill', '-KILL', '-u', id], { purpose, mutating: true, allowFailure: true });
    // 1: no process matched.
    expectExitCode(res, [1], purpose);
    // Give the kernel a moment to reap them, so userdel does not see them.
    for (let i = 0; i < 50; i++) {
      const check = await this.runner.run(['pgrep', '-u', id], { purpose: `${purpose} (wait)`, allowFailure: true });
      if (check.exitCode !== 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async chownTree(dir: string, uid: number, gid: number, purpose: string): Promise<void> {
    await this.runner.run(['chown', '-R', '--no-dereference', `${uid}:${gid}`, dir], { purpose, mutating: true });
  }

  async removeTree(dir: string, purpose: string): Promise<void> {
    await this.runner.run(['rm', '-rf', '--one-file-system', '--', dir], { purpose, mutating: true });
  }
}
