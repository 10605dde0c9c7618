/**
 * Backups declared in manifests, in a 2-node sandbox with the NS8-layout podapp module (a podman
 * volume listed in its etc/state-include.conf, records written there by configure-module): the
 * BackupSchedule becomes a timer on the node that runs podapp1, its service backs podapp1 up with
 * the node's real restic to a real restic REST server (rclone on the sandbox network's gateway),
 * `backup list` shows it; removed with its data and re-created with `restoreFrom`, the instance
 * has its volume records and its MODULE_UUID back. `backup verify` restores the latest snapshot
 * into a throw-away copy that becomes Ready and leaves nothing behind. An update with
 * `backupFirst` whose migration changes the data and then fails (podapp 1.2.0, made here from
 * 1.1.0 with a failing update-module.d step) is rolled back: the previous image and the data of
 * the snapshot taken before the update.
 */
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import type { SandboxInfo } from '../../src/sandbox/create.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { execInNode } from '../../src/sandbox/lifecycle.js';
import { addressPlan } from '../../src/sandbox/naming.js';
import { keys } from '../../src/state/keys.js';
import { startCompatSandbox, stopCompatSandbox } from '../support/compat-sandbox.js';
import { startRestServer, type RestServer } from '../support/rest-server.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

const NAME = 'ns8bkup';
const ID = 'podapp1';
const KICKWEB = 'kickweb1';
const PASSWORD = 'sandbox-restic-Password-7741';
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let leader: Redis;
let rest: RestServer;
let served: string;
let uuidBefore = '';
/** podapp1's records when the backup of the second test was taken: what a restore brings back. */
let snapshotRecords = '';

const BUILT = ['kickweb:1.0.0', 'kickweb:1.1.0', 'kickweb-httpd:1.0.0', 'podapp:1.0.0', 'podapp:1.1.0', 'podapp:1.2.0', 'podapp-web:1.0.0', 'podapp-db:1.0.0', 'podapp-db:1.1.0'];
const image = (name: string, tag: string): string => `${info.registry}/ns8ctl-compat/${name}:${tag}`;

async function journal(): Promise<string> {
  return (await inNode(['journalctl', '--no-pager', '-n', '100'])).out;
}

/**
 * Waits until podapp1 is Ready and configured: the node agent's pass has ended and configure-module
 * (which the controller runs after it) was accepted, the restart of its services included (each
 * start adds a line to the records), so its records stay as they are.
 */
async function podappReady(what: string): Promise<void> {
  await eventually(what, async () => {
    const conditions = JSON.parse((await leader.hget(keys.moduleStatus(ID), 'conditions')) ?? '[]') as { type: string; status: string }[];
    const configured = await leader.hget(keys.moduleConfiguration(ID), 'appliedHash');
    return configured && conditions.some((c) => c.type === 'Ready' && c.status === 'True') ? true : undefined;
  }, { timeoutMs: 600_000, everyMs: 2000, explain: explainPodapp });
}

/** What a failed wait on podapp1 shows: its records file, its status, and the journal's lines about it. */
async function explainPodapp(): Promise<string> {
  const status = await inNode(['ns8ctl', 'get', 'modules', ID, '-o', 'json']);
  const lines = await inNode(['sh', '-c', `journalctl --no-pager -o short-precise | grep -E '${ID}|restor' | grep -v pam_unix | tail -n 80`]);
  return `records of ${ID}:\n${await records()}\nstatus:\n${status.out}${status.err}\njournal lines naming ${ID}:\n${lines.out}`;
}

async function inNode2(command: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await execInNode({ name: NAME, node: '2', command }, { ...deps, execStdio: { mode: 'pipe' }, stdout: (t) => void (out += t), stderr: () => undefined });
  return { code, out };
}

async function writeManifest(file: string, text: string): Promise<void> {
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/.${file}.tmp && mv /root/manifests/.${file}.tmp /root/manifests/${file}.yaml`], text);
  expect(w.code).toBe(0);
}

const podapp = (extra = '', tag = '1.0.0'): string =>
  `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${ID}\n  labels:\n    backup: nightly\nspec:\n  image: ${image('podapp', tag)}\n  node: 1\n  removalPolicy: Delete\n  dependsOn: [${KICKWEB}]\n${extra}  configuration:\n    title: "Team notes"\n    kickweb: ${KICKWEB}\n`;

/** The records file in podapp1's database volume. */
async function records(): Promise<string> {
  const r = await inNode(['runuser', '-u', ID, '--', 'sh', '-c', 'cd && cat "$(podman volume inspect --format "{{.Mountpoint}}" podapp-db-data)/records"']);
  return r.code === 0 ? r.out : '';
}

beforeAll(async () => {
  ({ info, leader } = await startCompatSandbox(NAME, deps, { nodes: 2, only: ['kickweb', 'kickweb-httpd', 'podapp', 'podapp-web', 'podapp-db'], built: BUILT, buildTimeoutMs: 600_000 }));
  served = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-rest-'));
  rest = await startRestServer(served, `${addressPlan(info.subnet).prefix}.1`);
  await writeManifest('backup', [
    'apiVersion: ns8ctl.nethserver.org/v1\nkind: BackupDestination\nmetadata:\n  name: rest1\nspec:\n  url: ' + rest.url + 'ns8\n',
    'apiVersion: ns8ctl.nethserver.org/v1\nkind: BackupSchedule\nmetadata:\n  name: nightly\nspec:\n  destination: rest1\n  selector:\n    matchLabels:\n      backup: nightly\n  schedule: "*-*-* 03:00:00"\n  retention:\n    keepLast: 3\n',
  ].join('---\n'));
  await writeManifest(KICKWEB, `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${KICKWEB}\nspec:\n  image: ${image('kickweb', '1.0.0')}\n  node: 1\n  configuration:\n    greeting: "Hello"\n`);
  await writeManifest(ID, podapp());
}, 1_200_000);

afterAll(async () => {
  rest?.stop();
  if (served) await fs.rm(served, { recursive: true, force: true });
  await stopCompatSandbox(NAME, deps, { info, leader }, BUILT);
}, 120_000);

test('the destination password is set without being echoed; the schedule becomes a timer on the node running the selected instance only', async () => {
  const set = await inNode(['ns8ctl', 'backup', 'set-password', 'rest1', '--password-stdin'], `${PASSWORD}\n`);
  expect(set.code).toBe(0);
  expect(set.out + set.err).not.toContain(PASSWORD);
  const started = await inNode(['systemd-run', '--unit=ns8ctl-run', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '10s']);
  expect(started.code).toBe(0);
  expect((await inNode2(['systemd-run', '--unit=ns8ctl-node-agent', '--collect', '/usr/local/bin/ns8ctl', 'node-agent', '--node', '2', '--resync', '5'])).code).toBe(0);
  await eventually('podapp1 configured (its record in the volume)', async () => ((await records()).includes('configured: Team notes') ? true : undefined), { timeoutMs: 600_000, everyMs: 3000, explain: journal });
  await podappReady('podapp1 Ready');
  const timer = await eventually('the backup timer is enabled on node 1', async () => {
    const r = await inNode(['systemctl', 'is-enabled', 'ns8ctl-backup-nightly.timer']);
    return r.out.trim() === 'enabled' ? r.out.trim() : undefined;
  }, { timeoutMs: 120_000, everyMs: 2000, explain: journal });
  expect(timer).toBe('enabled');
  expect((await inNode(['systemctl', 'show', '-p', 'TimersCalendar', 'ns8ctl-backup-nightly.timer'])).out).toContain('*-*-* 03:00:00');
  // Node 2 runs nothing the schedule selects: no timer there.
  expect((await inNode2(['test', '-e', '/etc/systemd/system/ns8ctl-backup-nightly.timer'])).code).not.toBe(0);
}, 1_200_000);

test('the timer\'s service backs podapp1 up to the REST server: status, event, backup list', async () => {
  uuidBefore = (await leader.hget(keys.moduleUuid(), ID)) ?? '';
  expect(uuidBefore).toMatch(/^[0-9a-f-]{36}$/);
  snapshotRecords = await records();
  expect(snapshotRecords).toContain('configured: Team notes');
  const run = await inNode(['systemctl', 'start', 'ns8ctl-backup-nightly.service']);
  expect(run.code).toBe(0);
  const status = await leader.hgetall(`module/${ID}/backup_status/nightly`);
  expect(status).toEqual(expect.objectContaining({ destination: 'rest1', errors: '0', snapshots_count: '1' }));
  // The repository NS8 would use: <image name>/<MODULE_UUID> under the destination.
  await expect(fs.stat(path.join(served, 'ns8', 'podapp', uuidBefore, 'config'))).resolves.toBeTruthy();
  const list = await inNode(['ns8ctl', 'backup', 'list', '-o', 'json']);
  expect(JSON.parse(list.out)).toEqual([expect.objectContaining({ destination: 'rest1', instance: ID, uuid: uuidBefore, node: 1 })]);
  const events = await inNode(['ns8ctl', 'events', '-o', 'json']);
  expect(events.out).toContain('backup-succeeded');
  expect(events.out + list.out + JSON.stringify(status)).not.toContain(PASSWORD);
}, 600_000);

test('removed with its data and re-created with restoreFrom, podapp1 has its volume records and MODULE_UUID back', async () => {
  const before = snapshotRecords;
  expect(before).toContain('configured: Team notes');
  expect((await inNode(['ns8ctl', 'delete', 'module', ID, '--manifests', '/root/manifests'])).code).toBe(0);
  await eventually('podapp1 removed with its data', async () => ((await inNode(['id', ID])).code !== 0 && (await inNode(['test', '-e', `/home/${ID}`])).code !== 0 ? true : undefined), { timeoutMs: 300_000, everyMs: 3000, explain: journal });
  await writeManifest(ID, podapp('  restoreFrom:\n    destination: rest1\n'));
  const after = await eventually('podapp1 restored and configured again', async () => {
    const r = await records();
    // The restored records, then one more line from the new configure-module.
    return r.startsWith(before) && r.length > before.length ? r : undefined;
  }, { timeoutMs: 600_000, everyMs: 3000, explain: explainPodapp });
  expect(after.startsWith(before)).toBe(true);
  await podappReady('podapp1 Ready again');
  expect(await leader.hget(keys.moduleUuid(), ID)).toBe(uuidBefore);
  expect(await leader.hget(keys.moduleEnvironment(ID), 'MODULE_UUID')).toBe(uuidBefore);
}, 1_200_000);

test('backup verify restores the latest snapshot of podapp1 into a throw-away copy that becomes Ready, then removes it and leaves nothing behind', async () => {
  const users = (await inNode(['sh', '-c', 'cut -d: -f1 /etc/passwd'])).out;
  const v = await inNode(['ns8ctl', 'backup', 'verify', '--destination', 'rest1', '--instance', ID, '--timeout', '8m', '-o', 'json']);
  const [result] = JSON.parse(v.out || '[]') as { copy: string; outcome: string; message?: string }[];
  expect(result).toMatchObject({ destination: 'rest1', instance: ID, outcome: 'verified' });
  expect(v.code).toBe(0);
  const copy = result!.copy;
  expect(copy).toMatch(/^podapp\d+$/);
  expect(copy).not.toBe(ID);
  // Nothing of the copy is left: user, home, desired object, status, NS8 keys, ports.
  expect((await inNode(['sh', '-c', 'cut -d: -f1 /etc/passwd'])).out).toBe(users);
  expect((await inNode(['test', '-e', `/home/${copy}`])).code).not.toBe(0);
  expect(await leader.exists(keys.desired('Module', copy), keys.moduleStatus(copy))).toBe(0);
  expect(await leader.keys(`module/${copy}/*`)).toEqual([]);
  expect(await leader.hexists(keys.moduleNode(), copy)).toBe(0);
  expect(Object.keys(await leader.hgetall(keys.nodePorts(1))).filter((k) => k.startsWith(`${copy}/`))).toEqual([]);
  // podapp1 itself is untouched.
  expect(await records()).toContain('configured: Team notes');
}, 900_000);

test('an update with backupFirst whose migration changes the data and fails is rolled back: previous image, data of the snapshot taken before it', async () => {
  // podapp 1.2.0: 1.1.0 plus an update-module.d step that writes into the volume, then fails.
  const ctx = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-podapp-broken-'));
  try {
    await fs.writeFile(path.join(ctx, '30break'), '#!/bin/sh\n# A migration that fails half-way: it changes the data, then exits with an error.\necho "half-migrated by 1.2.0" >> "$(podman volume inspect --format "{{.Mountpoint}}" podapp-db-data)/records"\nexit 1\n', { mode: 0o755 });
    await fs.writeFile(path.join(ctx, 'Containerfile'), `FROM ${image('podapp', '1.1.0')}\nCOPY --chmod=755 30break /imageroot/update-module.d/30break\n`);
    const host = new ProcessRunner();
    await withImageBuildLock(async () => {
      await host.run(['podman', 'build', '-q', '--tls-verify=false', '-t', image('podapp', '1.2.0'), ctx], { timeoutMs: 300_000 });
      await host.run(['podman', 'push', '-q', '--tls-verify=false', image('podapp', '1.2.0')], { timeoutMs: 300_000 });
    });
  } finally {
    await fs.rm(ctx, { recursive: true, force: true });
  }
  await podappReady('podapp1 Ready before the update');
  const before = await records();
  expect(before).toContain('configured: Team notes');
  await writeManifest(ID, podapp('  restoreFrom:\n    destination: rest1\n  updatePolicy:\n    backupFirst: true\n', '1.2.0'));
  const rolledBack = await eventually('the update is rolled back', async () => {
    const events = (JSON.parse((await inNode(['ns8ctl', 'events', '-o', 'json'])).out || '{"items":[]}') as { items: { name: string; object: string; message: string }[] }).items;
    return events.find((e) => e.name === 'module-update-rolled-back' && e.object === `Module/${ID}`);
  }, { timeoutMs: 900_000, everyMs: 3000, explain: journal });
  expect(rolledBack.message).toMatch(/failed at step run-lifecycle/);
  expect(rolledBack.message).toMatch(/with the data of snapshot [0-9a-f]{8} taken before the update/);
  await eventually('podapp1 runs its previous image again', async () => ((await leader.hget(keys.moduleEnvironment(ID), 'IMAGE_URL')) === image('podapp', '1.0.0') ? true : undefined), { timeoutMs: 300_000, everyMs: 3000, explain: journal });
  // The data is the data before the update: neither 1.1.0's migration record nor the broken step's.
  const after = await eventually('podapp1 runs with its data back', async () => {
    const r = await records();
    return r.startsWith(before) ? r : undefined;
  }, { timeoutMs: 300_000, everyMs: 3000, explain: journal });
  expect(after).not.toContain('half-migrated by 1.2.0');
  expect(after).not.toContain('migrated:');
}, 1_500_000);
