/**
 * Who owns an instance's processes and images: root (rootfull) or the instance's Unix user
 * (rootless). Commands for a user run through `runuser -u <user> --` with the user's HOME and
 * runtime dir, from the user's home, so rootless podman finds its own storage.
 */
import { existsSync } from 'node:fs';
import { CommandFailedError } from '../../errors.js';
import type { CommandRecord, RunOptions } from '../../host/runner.js';

export type Owner = { kind: 'root' } | { kind: 'user'; name: string; uid: number; gid: number; home: string };

export const ROOT: Owner = { kind: 'root' };

/** Quotes one word for a POSIX shell. */
export function shq(s: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The argv prefix that runs a command as `owner` (empty for root). */
export function ownerPrefix(owner: Owner, runtimeDirExists: (dir: string) => boolean = existsSync): string[] {
  if (owner.kind === 'root') return [];
  const runtime = `/run/user/${owner.uid}`;
  const envArgs = runtimeDirExists(runtime) ? [`XDG_RUNTIME_DIR=${runtime}`] : ['-u', 'XDG_RUNTIME_DIR'];
  return ['runuser', '-u', owner.name, '--', 'env', '-u', 'DBUS_SESSION_BUS_ADDRESS', ...envArgs, `HOME=${owner.home}`, `USER=${owner.name}`, `LOGNAME=${owner.name}`];
}

/** argv + run options for a command as `owner`. */
export function asOwner(owner: Owner, argv: string[], opts: RunOptions = {}): { argv: string[]; opts: RunOptions } {
  if (owner.kind === 'root') return { argv, opts };
  return { argv: [...ownerPrefix(owner), ...argv], opts: { cwd: owner.home, ...opts } };
}

/**
 * Throws `command_failed` (with argv, exit code and stderr) unless the command exited with one of
 * `allowed` (0 is always allowed). For commands run with `allowFailure` whose "already done" exit
 * codes are fine (useradd 9, userdel 6, pkill 1).
 */
export function expectExitCode(res: CommandRecord, allowed: number[], purpose: string): void {
  if (res.exitCode === 0 || (res.exitCode !== null && allowed.includes(res.exitCode))) return;
  const tail = res.stderr.trim().split('\n').slice(-3).join(' | ');
  throw new CommandFailedError('command_failed', `${purpose}: \`${res.argv.join(' ')}\` exited ${res.exitCode ?? 'by signal'}${tail ? `: ${tail}` : ''}`, {
    argv: res.argv,
    exitCode: res.exitCode,
    stderr: res.stderr,
  });
}
