/**
 * The state transfer of clone and move against the real thing: a real rsync server and client,
 * each inside its `useradd`ed instance user's namespace, real podman volumes, NS8's never-sent
 * files and the module's own filter rules; a receiver left by a killed process is cleaned up.
 */
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { promises as fs } from 'node:fs';
import { createServer, createConnection } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ProcessRunner } from '../../src/host/runner.js';
import { StateTransfer, type ReceiverAddress } from '../../src/node-agent/backup/transfer.js';
import type { SrvTarget } from '../../src/node-agent/backup/srv.js';
import type { Owner } from '../../src/node-agent/host/owner.js';
import { preparePodmanHost, removeTestUsers } from '../support/host-podman.js';
import { createModuleUsers, runAsUser, subuidStart, userOwner, type UserOwner } from '../support/module-users.js';

const USERS = ['trsrc1', 'trdst1'];
const PASSWORD = 'rsync-secret-0c1d9e';
const runner = new ProcessRunner();
let root: string;
let runBase: string;

async function instance(name: string): Promise<SrvTarget & { owner: UserOwner }> {
  const o = await userOwner(name);
  const installDir = path.join(o.home, '.config');
  return { id: name, owner: o, rootfull: false, installDir, stateDir: path.join(installDir, 'state') };
}

async function asUser(o: Owner, argv: string[]): Promise<string> {
  return runAsUser(runner, o, argv);
}

async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

async function volumeDir(o: Owner, name: string): Promise<string> {
  return (await asUser(o, ['podman', 'volume', 'inspect', '--format', '{{.Mountpoint}}', name])).trim();
}

async function writeTree(t: SrvTarget & { owner: UserOwner }, files: Record<string, string>): Promise<void> {
  for (const [rel, text] of Object.entries(files)) {
    const file = path.join(t.installDir, rel);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, text);
  }
  await runner.run(['chown', '-R', `${t.owner.uid}:${t.owner.gid}`, t.installDir]);
}

beforeAll(async () => {
  await preparePodmanHost();
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'ns8ctl-transfer-'));
  runBase = path.join(root, 'run');
  await createModuleUsers(runner, root, USERS);
  const src = await instance('trsrc1');
  await writeTree(src, {
    'state/environment': 'MODULE_UUID=source-uuid\n',
    'state/agent.env': 'REDIS_PASSWORD=source-secret\n',
    'state/apitoken.cache': 'token\n',
    'state/data.txt': 'v1\n',
    'state/old.txt': 'goes away\n',
    'state/skip.me': 'module filter\n',
    'etc/state-filter-rules.rsync': '- /state/skip.me\n',
  });
  await asUser(src.owner, ['podman', 'volume', 'create', 'appdata']);
  await asUser(src.owner, ['podman', 'unshare', 'sh', '-c', 'd=$(podman volume inspect --format "{{.Mountpoint}}" appdata); echo rows > "$d/db"; chown 33:33 "$d/db"']);
  const dst = await instance('trdst1');
  await writeTree(dst, { 'state/environment': 'MODULE_UUID=dest-uuid\n' });
}, 120_000);

afterAll(async () => {
  await new StateTransfer(runner, runBase).stopReceiver('trdst1').catch(() => undefined);
  await removeTestUsers(USERS);
  if (root) await fs.rm(root, { recursive: true, force: true });
}, 60_000);

describe('state transfer (real rsync, real users, real volumes)', () => {
  test('a live pass then a final pass copy state and volumes with their owners; identity files and the module filter stay behind; the final pass deletes what the source removed', async () => {
    const src = await instance('trsrc1');
    const dst = await instance('trdst1');
    const to: ReceiverAddress = { address: '127.0.0.1', port: await freePort(), user: 'trdst1', password: PASSWORD };
    const transfer = new StateTransfer(runner, runBase);
    const receiver = await transfer.startReceiver(dst, to, ['appdata']);
    await transfer.send(src, to, { final: false });
    expect(await fs.readFile(path.join(dst.stateDir, 'data.txt'), 'utf8')).toBe('v1\n');
    expect(await fs.readFile(path.join(dst.stateDir, 'environment'), 'utf8')).toBe('MODULE_UUID=dest-uuid\n');
    for (const kept of ['agent.env', 'apitoken.cache', 'skip.me']) await expect(fs.stat(path.join(dst.stateDir, kept))).rejects.toThrow(/ENOENT/);
    const db = await fs.stat(path.join(await volumeDir(dst.owner, 'appdata'), 'db'));
    const subuid = await subuidStart('trdst1');
    expect(db.uid).toBe(subuid + 32);
    expect((await fs.stat(path.join(dst.stateDir, 'data.txt'))).uid).toBe(dst.owner.uid);

    await fs.writeFile(path.join(src.stateDir, 'data.txt'), 'v2\n');
    await fs.rm(path.join(src.stateDir, 'old.txt'));
    await transfer.send(src, to, { final: true });
    expect(await fs.readFile(path.join(dst.stateDir, 'data.txt'), 'utf8')).toBe('v2\n');
    await expect(fs.stat(path.join(dst.stateDir, 'old.txt'))).rejects.toThrow(/ENOENT/);
    expect(await fs.readFile(path.join(dst.stateDir, 'environment'), 'utf8')).toBe('MODULE_UUID=dest-uuid\n');

    await transfer.stopReceiver('trdst1');
    await receiver.done;
    expect(await accepts(to.port)).toBe(false);
    await expect(fs.stat(receiver.runDir)).rejects.toThrow(/ENOENT/);
  }, 180_000);

  test('a receiver left behind by a killed process is stopped, its port freed and its files removed by the next one', async () => {
    const dst = await instance('trdst1');
    const to: ReceiverAddress = { address: '127.0.0.1', port: await freePort(), user: 'trdst1', password: PASSWORD };
    const receiver = await new StateTransfer(runner, runBase).startReceiver(dst, to, []);
    expect(await accepts(to.port)).toBe(true);
    // A new StateTransfer knows nothing of the first one, as after a restart.
    await new StateTransfer(runner, runBase).stopReceiver('trdst1');
    await receiver.done;
    expect(await accepts(to.port)).toBe(false);
    await expect(fs.stat(path.join(runBase, 'trdst1'))).rejects.toThrow(/ENOENT/);
  }, 120_000);

  test('a wrong password is refused by the receiver and shows in no message; the password is on no command line', async () => {
    const src = await instance('trsrc1');
    const dst = await instance('trdst1');
    const to: ReceiverAddress = { address: '127.0.0.1', port: await freePort(), user: 'trdst1', password: PASSWORD };
    const transfer = new StateTransfer(runner, runBase);
    await transfer.startReceiver(dst, to, []);
    const wrong = 'wrong-rsync-password-5';
    const err = await transfer.send(src, { ...to, password: wrong }, { final: false }).then(() => undefined, (e: unknown) => e as Error);
    await transfer.stopReceiver('trdst1');
    expect(err?.message).toMatch(/auth failed/);
    expect(err?.message).not.toContain(wrong);
    expect(runner.history.some((r) => r.argv.some((a) => a.includes(PASSWORD) || a.includes(wrong)))).toBe(false);
  }, 120_000);
});
