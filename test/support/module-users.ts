/**
 * Real `useradd`ed instance users for host tests that act as them (backups, transfers): created
 * under a temp home base, looked up as an Owner, commands run as them through the product's own
 * `asOwner` prefix.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { CommandRunner } from '../../src/host/runner.js';
import { asOwner, type Owner } from '../../src/node-agent/host/owner.js';
import { removeTestUsers } from './host-podman.js';

export type UserOwner = Extract<Owner, { kind: 'user' }>;

/** Removes leftovers of an earlier run, then `useradd -m` each user with its home under `<root>/home`. */
export async function createModuleUsers(runner: CommandRunner, root: string, names: readonly string[]): Promise<void> {
  await removeTestUsers(names);
  await fs.mkdir(path.join(root, 'home'), { recursive: true, mode: 0o755 });
  await fs.chmod(root, 0o755);
  for (const u of names) await runner.run(['useradd', '-m', '-b', path.join(root, 'home'), '-s', '/sbin/nologin', u]);
}

/** The user as an Owner (uid, gid, home from /etc/passwd); throws when it does not exist. */
export async function userOwner(name: string): Promise<UserOwner> {
  const line = (await fs.readFile('/etc/passwd', 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no user ${name} in /etc/passwd`);
  const [, , uid, gid, , home] = line.split(':');
  return { kind: 'user', name, uid: Number(uid), gid: Number(gid), home: home as string };
}

/** The first subordinate uid of the user (/etc/subuid). */
export async function subuidStart(name: string): Promise<number> {
  const line = (await fs.readFile('/etc/subuid', 'utf8')).split('\n').find((l) => l.startsWith(`${name}:`));
  if (!line) throw new Error(`no subordinate ids for ${name} in /etc/subuid`);
  return Number(line.split(':')[1]);
}

/** Runs argv as the user (from its home) and returns stdout; throws on a non-zero exit. */
export async function runAsUser(runner: CommandRunner, o: Owner, argv: string[]): Promise<string> {
  const r = asOwner(o, argv);
  return (await runner.run(r.argv, r.opts)).stdout;
}
