/**
 * Backs up and restores one instance with the real `restic`, as NS8's `module-backup` and
 * `restore-module` do, without a restic container: restic runs in a private mount namespace
 * where the instance is laid out under `/srv` (restic.ts). A rootless instance's namespace is
 * also its user namespace (`podman unshare`), so files are stored with the ids the instance's
 * containers see (0 = the instance user) and restore maps them onto whatever user and
 * subordinate ids the restoring instance has: a restore on another node or into a new user keeps
 * every file's owner right.
 *
 * The module's `bin/module-dump-state` runs before the snapshot and `bin/module-cleanup-state`
 * after it (NS8's hooks; a failing dump aborts the backup). The repository password goes to
 * restic in its environment only: never on a command line, in a record, an error or a log.
 */
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import type { CommandRunner, RunOptions } from '../../host/runner.js';
import { asOwner, expectExitCode } from '../host/owner.js';
import { ensureSrvVolume, runInSrv, type SrvTarget } from './srv.js';
import {
  backupArgs,
  checkSnapshotRef,
  destinationKind,
  instanceRepository,
  parseBackupSummary,
  parseSnapshots,
  retentionArgs,
  type Retention,
  type BackupSummary,
  type ResticDestination,
  type SnapshotInfo,
} from './restic.js';

/** The instance a backup or restore is about. */
export interface BackupTarget extends SrvTarget {
  /** MODULE_UUID: names the repository, kept across restore. */
  uuid: string;
  /** The image the instance runs (its name, without tag, names the repository). */
  imageUrl: string;
}

/** Runs a module hook (`module-dump-state`, `module-cleanup-state`) in the instance's agent environment. */
export type HookRunner = (target: BackupTarget, hook: string, args: readonly string[]) => Promise<void>;

export interface BackupResult extends BackupSummary {
  repository: string;
  durationMs: number;
}

const RESTIC_TIMEOUT_MS = 60 * 60_000;

/** NS8's hook runner: `runagent -m <id> <hook> [args]` when `<install dir>/bin/<hook>` is executable. */
export function runagentHooks(runner: CommandRunner, runagent = '/usr/local/bin/runagent'): HookRunner {
  return async (target, hook, args) => {
    if (!(await isExecutable(path.join(target.installDir, 'bin', hook)))) return;
    await runner.run([runagent, '-m', target.id, hook, ...args], { purpose: `${target.id}: ${hook}`, timeoutMs: RESTIC_TIMEOUT_MS });
  };
}

async function isExecutable(file: string): Promise<boolean> {
  try {
    await fs.access(file, constants.X_OK);
    return (await fs.stat(file)).isFile();
  } catch {
    return false;
  }
}

async function isFile(file: string): Promise<boolean> {
  return fs.stat(file).then((s) => s.isFile(), () => false);
}

export class ResticBackups {
  constructor(
    private readonly runner: CommandRunner,
    private readonly hooks: HookRunner = runagentHooks(runner),
    private readonly restic = 'restic',
  ) {}

  /** Snapshots of the instance's repository, oldest first; empty when the repository does not exist yet. */
  async snapshots(target: BackupTarget, dest: ResticDestination, password: string): Promise<SnapshotInfo[]> {
    const repo = instanceRepository(dest, target.imageUrl, target.uuid);
    const res = await this.resticAs(target, ['snapshots', '--json'], repo, password, { allowFailure: true, purpose: `${target.id}: list snapshots` });
    if (res.exitCode !== 0) {
      if (/does not exist|unable to open config file|Is there a repository at the following location/i.test(res.stderr)) return [];
      expectExitCode(res, [], `${target.id}: list snapshots`);
    }
    return parseSnapshots(res.stdout);
  }

  /**
   * One snapshot of the instance (dump hook, restic backup, cleanup hook), initialising its
   * repository on first use; then `forget --prune --keep-last` when `keepLast` is given.
   */
  async backup(target: BackupTarget, dest: ResticDestination, password: string, opts: { keepLast?: number; keepDaily?: number; tags?: readonly string[]; hookArgs?: readonly string[] } = {}): Promise<BackupResult> {
    const started = performance.now();
    const repo = await this.prepareRepository(target, dest, password);
    await this.hooks(target, 'module-dump-state', opts.hookArgs ?? []).catch((err: unknown) => {
      throw new Ns8ctlError('backup_failed', `${target.id}: module-dump-state failed, no snapshot taken: ${(err as Error).message}`, { cause: err });
    });
    let summary: BackupSummary;
    try {
      const include = path.join(target.installDir, 'etc', 'state-include.conf');
      const exclude = path.join(target.installDir, 'etc', 'state-exclude.conf');
      const args = backupArgs({ ...((await isFile(include)) ? { includeFile: include } : {}), ...((await isFile(exclude)) ? { excludeFile: exclude } : {}), ...(opts.tags ? { tags: opts.tags } : {}) });
      const res = await this.inSrv(target, args, repo, password, `${target.id}: back up`);
      summary = parseBackupSummary(res.stdout);
    } finally {
      await this.hooks(target, 'module-cleanup-state', opts.hookArgs ?? []);
    }
    if (opts.keepLast !== undefined || opts.keepDaily !== undefined) await this.forget(target, dest, password, { ...(opts.keepLast !== undefined ? { keepLast: opts.keepLast } : {}), ...(opts.keepDaily !== undefined ? { keepDaily: opts.keepDaily } : {}) });
    return { ...summary, repository: repo, durationMs: Math.round(performance.now() - started) };
  }

  /** Keeps the last `keepLast` snapshots and the last snapshot of each of `keepDaily` days (either or both) and prunes the rest. */
  async forget(target: BackupTarget, dest: ResticDestination, password: string, keep: number | Retention): Promise<void> {
    const repo = instanceRepository(dest, target.imageUrl, target.uuid);
    await this.resticAs(target, ['forget', '--prune', ...retentionArgs(typeof keep === 'number' ? { keepLast: keep } : keep)], repo, password, { purpose: `${target.id}: forget old snapshots` });
  }

  /** The instance's `state/environment` as stored in a snapshot (restore reads the image and MODULE_UUID from it). */
  async environmentOf(target: BackupTarget, dest: ResticDestination, password: string, snapshot = 'latest'): Promise<string> {
    const repo = instanceRepository(dest, target.imageUrl, target.uuid);
    const res = await this.resticAs(target, ['dump', checkSnapshotRef(snapshot), '/state/environment'], repo, password, { purpose: `${target.id}: read the environment of snapshot ${snapshot}` });
    return res.stdout;
  }

  /**
   * Restores a snapshot into the instance: its volumes are created when missing, then every file
   * of the snapshot is written back under the state directory and the volumes (files the snapshot
   * does not hold are left alone). The instance's services should be stopped meanwhile.
   */
  async restore(target: BackupTarget, dest: ResticDestination, password: string, snapshot = 'latest'): Promise<SnapshotInfo> {
    const ref = checkSnapshotRef(snapshot);
    const repo = await this.prepareRepository(target, dest, password, false);
    const found = (await this.snapshots(target, dest, password)).filter((s) => ref === 'latest' || s.id.startsWith(ref));
    const chosen = found[found.length - 1];
    if (!chosen) throw new Ns8ctlError('snapshot_not_found', `${target.id}: no snapshot ${ref} in ${repo}`);
    const wanted = chosen.paths.map((p) => /^\/srv\/volumes\/([^/]+)/.exec(p)?.[1]).filter((v): v is string => v !== undefined);
    for (const shown of wanted) await ensureSrvVolume(this.runner, target, shown);
    await this.inSrv(target, ['restore', chosen.id, '--target', '/srv'], repo, password, `${target.id}: restore snapshot ${chosen.shortId}`);
    return chosen;
  }

  /** The repository URL, created (local: a directory the instance user owns) and initialised when `init`. */
  private async prepareRepository(target: BackupTarget, dest: ResticDestination, password: string, init = true): Promise<string> {
    const repo = instanceRepository(dest, target.imageUrl, target.uuid);
    if (destinationKind(dest.url) === 'local') {
      await fs.mkdir(repo, { recursive: true, mode: 0o711 });
      if (target.owner.kind === 'user') await this.runner.run(['chown', '-R', `${target.owner.uid}:${target.owner.gid}`, repo], { purpose: `${target.id}: hand the backup repository to the instance user`, mutating: true });
      await fs.chmod(repo, 0o700);
    }
    const probe = await this.resticAs(target, ['cat', 'config'], repo, password, { allowFailure: true, purpose: `${target.id}: probe backup repository` });
    if (probe.exitCode !== 0) {
      if (init) await this.resticAs(target, ['init'], repo, password, { purpose: `${target.id}: initialise backup repository` });
      return repo;
    }
    // A restic killed mid-run (node crash, kill -9) leaves its lock: restic unlock removes only
    // stale locks (of processes no longer running), so a crash never blocks the next backup.
    await this.resticAs(target, ['unlock'], repo, password, { allowFailure: true, purpose: `${target.id}: remove stale repository locks` });
    return repo;
  }

  /** restic run in the instance's /srv namespace (rootless: inside its user namespace). */
  private async inSrv(target: BackupTarget, args: string[], repo: string, password: string, purpose: string): Promise<{ stdout: string; stderr: string }> {
    return runInSrv(this.runner, target, [this.restic, '--no-cache', ...args], { env: { RESTIC_REPOSITORY: repo, RESTIC_PASSWORD: password }, timeoutMs: RESTIC_TIMEOUT_MS, purpose, mutating: true });
  }

  /** restic run as the instance's owner, outside any namespace (repository commands). */
  private async resticAs(target: BackupTarget, args: string[], repo: string, password: string, opts: RunOptions): Promise<{ stdout: string; stderr: string; exitCode: number | null; argv: string[]; durationMs: number }> {
    const run = asOwner(target.owner, [this.restic, '--no-cache', ...args], { ...opts, env: { ...(opts.env ?? {}), RESTIC_REPOSITORY: repo, RESTIC_PASSWORD: password }, timeoutMs: RESTIC_TIMEOUT_MS });
    return this.runner.run(run.argv, run.opts);
  }
}
