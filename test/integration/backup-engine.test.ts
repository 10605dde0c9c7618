/**
 * The backup engine against the real thing: real `restic` into a local repository, real
 * `useradd`ed rootless users with real podman volumes, NS8's state-include/exclude files and
 * dump/cleanup hooks. A snapshot of one user's instance is restored into another user with other
 * uids and subordinate ids: every file comes back with the owner the containers see.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ProcessRunner } from '../../src/host/runner.js';
import { ResticBackups, type BackupTarget, type HookRunner } from '../../src/node-agent/backup/engine.js';
import { instanceRepository } from '../../src/node-agent/backup/restic.js';
import { until } from '../support/wait-for.js';
import { asOwner, type Owner } from '../../src/node-agent/host/owner.js';
import { preparePodmanHost, removeTestUsers } from '../support/host-podman.js';
import { startRestServer } from '../support/rest-server.js';
import { createModuleUsers, runAsUser, subuidStart, userOwner } from '../support/module-users.js';

const USERS = ['bkeng1', 'bkeng2'];
const PASSWORD = 'correct-horse-battery-staple-42';
const IMAGE = 'localhost:5000/ns8ctl/kickweb:1.0.0';
const UUID = '3f0c2a9e-5b1d-4c1e-9a57-0f5e2d7c9b11';
const runner = new ProcessRunner();
let root: string;
let dest: { url: string };

async function asUser(o: Owner, argv: string[]): Promise<string> {
  return runAsUser(runner, o, argv);
}

/** The instance of user `name`: install dir `~/.config`, state `~/.config/state`, as NS8 lays a rootless module out. */
async function instance(name: string): Promise<BackupTarget> {
  const o = await userOwner(name);
  const installDir = path.join(o.home, '.config');
  return { id: name, uuid: UUID, imageUrl: IMAGE, owner: o, rootfull: false, installDir, stateDir: path.join(installDir, 'state') };
}

/** Runs a hook as the instance user from its state dir, as runagent does. */
const directHooks: HookRunner = async (t, hook, args) => {
  const file = path.join(t.installDir, 'bin', hook);
  if (!(await fs.stat(file).catch(() => undefined))) return;
  const r = asOwner(t.owner, [file, ...args], { cwd: t.stateDir, env: { AGENT_STATE_DIR: t.stateDir, AGENT_INSTALL_DIR: t.installDir } });
  await runner.run(r.argv, r.opts);
};

beforeAll(async () => {
  await preparePodmanHost();
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'ns8ctl-backup-'));
  await createModuleUsers(runner, root, USERS);
  dest = { url: path.join(root, 'repo') };
  // The source instance: environment, data, a file the module excludes, a volume with a file a container user owns, hooks.
  const src = await instance('bkeng1');
  const o = src.owner as Extract<Owner, { kind: 'user' }>;
  const files: Record<string, string> = {
    'state/environment': `IMAGE_URL=${IMAGE}\nMODULE_UUID=${UUID}\nWIKI_NAME=Ada\n`,
    'state/data.txt': 'page one\n',
    'state/cache.tmp': 'scratch\n',
    'etc/state-include.conf': 'state/data.txt\nstate/dump.sql\nstate/cache.tmp\nvolumes/appdata\n',
    'etc/state-exclude.conf': 'state/cache.tmp\n',
    'bin/module-dump-state': '#!/bin/sh\necho "dump of $(cat data.txt)" > dump.sql\n',
    'bin/module-cleanup-state': '#!/bin/sh\nrm -f dump.sql\n',
  };
  for (const [rel, text] of Object.entries(files)) {
    const file = path.join(src.installDir, rel);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, text, { mode: rel.startsWith('bin/') ? 0o755 : 0o644 });
  }
  await runner.run(['chown', '-R', `${o.uid}:${o.gid}`, src.installDir]);
  await asUser(o, ['podman', 'volume', 'create', 'appdata']);
  await asUser(o, ['podman', 'unshare', 'sh', '-c', 'd=$(podman volume inspect --format "{{.Mountpoint}}" appdata); echo rows > "$d/db"; chown 33:33 "$d/db"']);
  // The destination user gets only an empty state dir: restore creates the volume.
  const dst = await instance('bkeng2');
  await fs.mkdir(dst.stateDir, { recursive: true });
  await runner.run(['chown', '-R', `${(dst.owner as { uid: number }).uid}:${(dst.owner as { gid: number }).gid}`, dst.installDir]);
}, 120_000);

afterAll(async () => {
  await removeTestUsers(USERS);
  if (root) await fs.rm(root, { recursive: true, force: true });
}, 60_000);

describe('backup engine (real restic, real users, real volumes)', () => {
  const engine = (): ResticBackups => new ResticBackups(runner, directHooks);

  test('a backup holds the environment, the included files, the dump made by the hook and the volume; the cleanup hook ran; excluded files are not in it', async () => {
    const src = await instance('bkeng1');
    const result = await engine().backup(src, dest, PASSWORD);
    expect(result.snapshotId).toMatch(/^[0-9a-f]{8,}$/);
    expect(result.repository).toBe(`${dest.url}/kickweb/${UUID}`);
    await expect(fs.stat(path.join(src.stateDir, 'dump.sql'))).rejects.toThrow(/ENOENT/);
    const snaps = await engine().snapshots(src, dest, PASSWORD);
    expect(snaps.map((s) => s.shortId)).toEqual([result.snapshotId.slice(0, 8)]);
    const listed = await asUser(src.owner, ['env', `RESTIC_REPOSITORY=${result.repository}`, `RESTIC_PASSWORD=${PASSWORD}`, 'restic', '--no-cache', 'ls', 'latest']);
    expect(listed).toMatch(/\/state\/environment\n/);
    expect(listed).toMatch(/\/state\/data\.txt\n/);
    expect(listed).toMatch(/\/state\/dump\.sql\n/);
    expect(listed).toMatch(/\/volumes\/appdata\/db\n/);
    expect(listed.split('\n').filter((l) => l.startsWith('/'))).not.toContain('/state/cache.tmp');
  }, 120_000);

  test('keep-last prunes older snapshots of the instance', async () => {
    const src = await instance('bkeng1');
    await engine().backup(src, dest, PASSWORD, { keepLast: 1 });
    expect(await engine().snapshots(src, dest, PASSWORD)).toHaveLength(1);
  }, 120_000);

  test('the environment of a snapshot is read back without restoring it', async () => {
    const env = await engine().environmentOf(await instance('bkeng1'), dest, PASSWORD);
    expect(env).toContain(`MODULE_UUID=${UUID}`);
    expect(env).toContain('WIKI_NAME=Ada');
  }, 60_000);

  test('a restore into another user brings back the files and the volume, owned as the containers saw them', async () => {
    const dst = await instance('bkeng2');
    const o = dst.owner as Extract<Owner, { kind: 'user' }>;
    await engine().restore(dst, dest, PASSWORD, 'latest');
    expect(await fs.readFile(path.join(dst.stateDir, 'data.txt'), 'utf8')).toBe('page one\n');
    expect(await fs.readFile(path.join(dst.stateDir, 'dump.sql'), 'utf8')).toBe('dump of page one\n');
    expect((await fs.stat(path.join(dst.stateDir, 'data.txt'))).uid).toBe(o.uid);
    const mount = (await asUser(o, ['podman', 'volume', 'inspect', '--format', '{{.Mountpoint}}', 'appdata'])).trim();
    const db = await fs.stat(path.join(mount, 'db'));
    expect(db.uid).toBe((await subuidStart('bkeng2')) + 32);
    expect(await fs.readFile(path.join(mount, 'db'), 'utf8')).toBe('rows\n');
  }, 120_000);

  test('the password is in no command line, and a wrong one fails without showing either password', async () => {
    expect(runner.history.some((r) => r.argv.some((a) => a.includes(PASSWORD) && !a.startsWith('RESTIC_PASSWORD=')))).toBe(false);
    const wrong = 'not-the-password-17';
    const err = await engine()
      .restore(await instance('bkeng2'), dest, wrong, 'latest')
      .then(() => undefined, (e: unknown) => e as Error);
    expect(err).toBeInstanceOf(Error);
    expect(String(err?.message)).not.toContain(wrong);
    expect(String(err?.message)).not.toContain(PASSWORD);
    expect(JSON.stringify(err)).not.toContain(wrong);
  }, 60_000);

  test('a restic REST server is a destination like a local path: back up, list, restore', async () => {
    const served = path.join(root, 'rest');
    await fs.mkdir(served);
    const server = await startRestServer(served);
    try {
      const rest = { url: server.url };
      const src = await instance('bkeng1');
      const result = await engine().backup(src, rest, PASSWORD);
      expect(result.repository).toBe(`${server.url}kickweb/${UUID}`);
      expect((await engine().snapshots(src, rest, PASSWORD)).map((s) => s.shortId)).toEqual([result.snapshotId.slice(0, 8)]);
      await expect(fs.stat(path.join(served, 'kickweb', UUID, 'config'))).resolves.toBeTruthy();
      const dst = await instance('bkeng2');
      await fs.writeFile(path.join(dst.stateDir, 'data.txt'), 'overwritten\n');
      await engine().restore(dst, rest, PASSWORD, result.snapshotId);
      expect(await fs.readFile(path.join(dst.stateDir, 'data.txt'), 'utf8')).toBe('page one\n');
    } finally {
      server.stop();
    }
  }, 120_000);

  test('a restic killed while it held the repository lock (kill -9) does not block the next backup and its pruning', async () => {
    const src = await instance('bkeng1');
    const repo = instanceRepository(dest, src.imageUrl, src.uuid);
    const locks = path.join(repo, 'locks');
    await engine().backup(src, dest, PASSWORD);
    const o = src.owner as Extract<Owner, { kind: 'user' }>;
    // A backup reading a stdin that never ends holds its lock until it is killed.
    const stuck = spawn('restic', ['--no-cache', 'backup', '--stdin', '--stdin-filename', 'never-ends'], { uid: o.uid, gid: o.gid, cwd: '/', env: { PATH: process.env.PATH, HOME: o.home, RESTIC_REPOSITORY: repo, RESTIC_PASSWORD: PASSWORD }, stdio: ['pipe', 'ignore', 'pipe'] });
    let said = '';
    stuck.stderr.on('data', (c: Buffer) => void (said += c.toString()));
    try {
      await until(`the stuck restic holds a lock (it said: ${said})`, async () => (await fs.readdir(locks).catch(() => [])).length > 0 || stuck.exitCode !== null, { everyMs: 50, timeoutMs: 30_000 });
      expect(said).toBe('');
    } finally {
      stuck.kill('SIGKILL');
    }
    await new Promise((r) => stuck.once('exit', r));
    expect((await fs.readdir(locks)).length).toBeGreaterThan(0);
    // forget --prune needs the exclusive lock: the stale one must be gone for the backup to end well.
    await engine().backup(src, dest, PASSWORD, { keepLast: 2 });
    expect(await fs.readdir(locks)).toEqual([]);
  }, 120_000);

  test('a snapshot argument that is neither latest nor an id is refused before restic runs', async () => {
    const before = runner.history.length;
    await expect(engine().restore(await instance('bkeng2'), dest, PASSWORD, '$(reboot)')).rejects.toThrow(/expected latest or a snapshot id/);
    expect(runner.history.length).toBe(before);
  });
});
