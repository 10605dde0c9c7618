/**
 * Unix users of rootless instances: created with `useradd -m` (home `<homeBase>/<id>`, subuid and
 * subgid ranges from the distribution's defaults, as NS8 relies on), removed with `userdel -f`
 * after their processes are ended. Reading users never spawns a process (see passwd.ts).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { CommandRunner } from '../../host/runner.js';
import type { HostLayout } from '../layout.js';
import { expectExit } from './owner.js';

export interface UserHost {
  /** Creates the user with its home; an existing home (preserved data) is reused. */
  create(id: string, purpose: string): Promise<void>;
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
    const res = await this.runner.run(['useradd', '-m', '-b', this.layout.homeBase, '-s', this.layout.loginShell, id], { purpose, mutating: true, allowFailure: true });
    // 9: the user already exists (a concurrent or interrupted run made it): fine, it is what we want.
    expectExit(res, [9], purpose);
    await fs.chmod(path.join(this.layout.homeBase, id), 0o700);
  }

  async remove(id: string, purpose: string): Promise<void> {
    const res = await this.runner.run(['userdel', '-f', id], { purpose, mutating: true, allowFailure: true });
    // 6: no such user.
    expectExit(res, [6], purpose);
  }

  async killProcesses(id: string, purpose: string): Promise<void> {
    const res = await this.runner.run(['pkill', '-KILL', '-u', id], { purpose, mutating: true, allowFailure: true });
    // 1: no process matched.
    expectExit(res, [1], purpose);
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
