/**
 * Directories the node agent makes in a module user's home are never left root-owned by a crash:
 * they appear under their final name only once owned by the user, and a leftover (a temporary
 * from a killed run, or a root-owned directory) is repaired. Real useradd, real chown.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyStep } from '../../src/node-agent/applier.js';
import { createNodeAgentDeps, type NodeAgentDeps } from '../../src/node-agent/deps.js';
import { readUsers } from '../../src/node-agent/host/passwd.js';
import { observeInstance, readRedisSnapshot } from '../../src/node-agent/observe.js';
import { tempHostLayout } from '../support/node-agent-layout.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const run = promisify(execFile);
const ID = `dirs${process.pid % 100000}1`;
const HALF = `dirs${process.pid % 100000}2`;
let root: string;
let srv: TestRedis;
let deps: NodeAgentDeps;
let uid: number;

beforeAll(async () => {
  srv = await startRedis();
  root = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-dirs-'));
  await fs.chmod(root, 0o755);
  await fs.mkdir(path.join(root, 'home'), { mode: 0o755 });
  await run('useradd', ['-m', '-b', path.join(root, 'home'), '-s', '/sbin/nologin', ID]);
  uid = Number((await run('id', ['-u', ID])).stdout.trim());
  deps = createNodeAgentDeps({ node: 1 }, { redis: srv.client(), runner: new ProcessRunner(), layout: tempHostLayout(root), log: () => undefined, delay: async () => undefined });
}, 60_000);

afterAll(async () => {
  deps?.redis.disconnect();
  // Rootless podman leaves a pause process (catatonit) behind: it would outlive the user and
  // hold its uid for whoever gets it next.
  for (const id of [ID, HALF]) await run('pkill', ['-KILL', '-u', id]).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 100));
  for (const id of [ID, HALF]) await run('userdel', ['-f', id]).catch(() => undefined);
  await fs.rm(root, { recursive: true, force: true });
  await srv.stop();
});

const step = { id: ID, kind: 'create-install-dir' as const, reason: 'test' };

test('after a killed run (temporary left, or a root-owned directory) the install dirs are owned by the user', async () => {
  const home = path.join(root, 'home', ID);
  const config = path.join(home, '.config');
  // A run killed after making its temporary directory, before renaming it.
  await fs.mkdir(path.join(home, '.config.ns8ctl-new'), { mode: 0o700 });
  await applyStep(step, { deps, node: 1, id: ID, rootfull: false });
  for (const d of [config, path.join(config, 'state')]) expect((await fs.stat(d)).uid).toBe(uid);
  expect(await fs.readdir(home)).not.toContain('.config.ns8ctl-new');
  // A directory left root-owned (by older code, or by hand) is given back to the user.
  await fs.chown(path.join(config, 'state'), 0, 0);
  await applyStep(step, { deps, node: 1, id: ID, rootfull: false });
  expect((await fs.stat(path.join(config, 'state'))).uid).toBe(uid);
});

/** What the node agent observes of HALF's home. */
async function homeProblem(): Promise<string | undefined> {
  const users = await readUsers(deps.layout);
  const ctx = { layout: deps.layout, podman: deps.podman, systemd: deps.systemd, users: users.users, subids: users.subids, systemdMissing: 'none here', redis: await readRedisSnapshot(deps.redis, 1, [HALF]) };
  return (await observeInstance(ctx, HALF, undefined, false, undefined, undefined)).homeUnusable;
}

test('a user whose useradd was killed (no home, or a root-owned home of mode 0) gets a home it can use', async () => {
  // useradd writes /etc/passwd before it makes the home: killed in between, there is none.
  await run('useradd', ['-M', '-d', path.join(root, 'home', HALF), '-s', '/sbin/nologin', HALF]);
  const home = path.join(root, 'home', HALF);
  const { uid: u, gid: g } = (await readUsers(deps.layout)).users.get(HALF)!;
  const asUser = (script: string) => run('runuser', ['-u', HALF, '--', 'sh', '-c', script], { env: { ...process.env, HOME: home } });
  expect(await homeProblem()).toBe('is missing');
  const chownHome = { id: HALF, kind: 'chown-home' as const, uid: u, gid: g, reason: 'test' };
  const installDirs = { id: HALF, kind: 'create-install-dir' as const, reason: 'test' };
  await applyStep(chownHome, { deps, node: 1, id: HALF, rootfull: false });
  await applyStep(installDirs, { deps, node: 1, id: HALF, rootfull: false });
  expect(await homeProblem()).toBeUndefined();
  await asUser('mkdir -p "$HOME/.config/containers" && touch "$HOME/.config/state/probe"');

  // Killed just after its mkdir(home, 0), before chown and chmod.
  await fs.rm(home, { recursive: true, force: true });
  await fs.mkdir(home, { mode: 0 });
  await fs.chmod(home, 0);
  expect(await homeProblem()).toBe('belongs to 0:0');
  await fs.chown(home, u, g);
  expect(await homeProblem()).toBe('has mode 0000, its owner cannot use it');
  await fs.chown(home, 0, 0);
  await expect(asUser('ls "$HOME"')).rejects.toThrow(/Permission denied/);
  await applyStep(chownHome, { deps, node: 1, id: HALF, rootfull: false });
  await applyStep(installDirs, { deps, node: 1, id: HALF, rootfull: false });
  expect(await homeProblem()).toBeUndefined();
  await asUser('mkdir -p "$HOME/.config/containers" && touch "$HOME/.config/state/probe"');
}, 60_000);

test('a user whose subordinate id ranges are gone gets a free range back, which rootless podman uses', async () => {
  const home = path.join(root, 'home', HALF);
  const lineOf = async (file: string) => (await fs.readFile(file, 'utf8')).split('\n').find((l) => l.startsWith(`${HALF}:`));
  // useradd gave both ranges; take them away (as a useradd killed before writing them would).
  for (const [file, flag] of [['/etc/subuid', '--del-subuids'], ['/etc/subgid', '--del-subgids']] as const) {
    const [, start, count] = (await lineOf(file))!.split(':');
    await run('usermod', [flag, `${start}-${Number(start) + Number(count) - 1}`, HALF]);
  }
  const users = await readUsers(deps.layout);
  expect(users.subids.has(HALF)).toBe(false);
  await applyStep({ id: HALF, kind: 'add-subids', reason: 'test' }, { deps, node: 1, id: HALF, rootfull: false });
  expect((await readUsers(deps.layout)).subids.has(HALF)).toBe(true);
  const uidLine = (await lineOf('/etc/subuid'))!.split(':');
  expect(Number(uidLine[2])).toBe(65536);
  // No other range overlaps the new one.
  const start = Number(uidLine[1]);
  for (const file of ['/etc/subuid', '/etc/subgid']) {
    for (const l of (await fs.readFile(file, 'utf8')).split('\n').filter((x) => x && !x.startsWith(`${HALF}:`))) {
      const [, s, n] = l.split(':');
      expect(Number(s) + Number(n) - 1 < start || Number(s) > start + 65535).toBe(true);
    }
  }
  // Applied again: nothing to add, nothing run.
  await applyStep({ id: HALF, kind: 'add-subids', reason: 'test' }, { deps, node: 1, id: HALF, rootfull: false });
  expect((await fs.readFile('/etc/subuid', 'utf8')).split('\n').filter((l) => l.startsWith(`${HALF}:`))).toHaveLength(1);
  // Rootless podman of the user maps the range.
  const { stdout } = await run('runuser', ['-u', HALF, '--', 'sh', '-c', 'cd && podman unshare cat /proc/self/uid_map'], { env: { ...process.env, HOME: home, XDG_RUNTIME_DIR: '' } });
  expect(stdout).toMatch(new RegExp(`\\b${start}\\s+65536\\b`));
}, 60_000);
