/**
 * The node agent's step handlers (src/node-agent/steps/), one concern at a time, on fakes of
 * podman, systemd and useradd over a temp layout: what each does to files and records, and what it
 * refuses. Handlers that reach Redis (ACL, flags, authorizations, default instances, ports,
 * mirror-environment, module keys, publish-*, release-finalizer, run-lifecycle, run-destroy-module)
 * are covered with a real redis-server elsewhere.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { applyStep, type StepContext } from '../../src/node-agent/applier.js';
import { settleUnits } from '../../src/node-agent/steps/context.js';
import type { Step } from '../../src/node-agent/types.js';
import { fakeNodeAgent, type FakeNodeAgent } from '../support/node-agent-fakes.js';

const ID = 'web1';
const URL = '127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0';
let root: string;
let f: FakeNodeAgent;
let ctx: StepContext;

const step = <K extends Step['kind']>(kind: K, fields: Omit<Extract<Step, { kind: K }>, 'id' | 'kind' | 'reason'>): Step => ({ id: ID, kind, reason: 'test', ...fields }) as unknown as Step;
const home = (): string => path.join(f.layout.homeBase, ID);

beforeEach(async () => {
  root = mkdtempSync(path.join(tmpdir(), 'ns8ctl-steps-'));
  f = await fakeNodeAgent(root);
  ctx = { deps: f.deps, node: 1, id: ID, rootfull: false, imageUrl: URL };
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

const userOf = async (): Promise<{ uid: number; gid: number }> => {
  await applyStep(step('create-user', {}), ctx);
  const rec = await f.deps.records.get(ID);
  return { uid: rec!.uid!, gid: rec!.gid! };
};

describe('user steps', () => {
  test('create-user records the uid; a home kept from an earlier removal loses its enabled-unit links, is chowned and its podman database reset', async () => {
    const wants = path.join(home(), '.config', 'systemd', 'user', 'default.target.wants');
    const libpod = path.join(home(), '.local', 'share', 'containers', 'storage', 'libpod');
    await fs.mkdir(wants, { recursive: true });
    await fs.symlink('/nowhere/webapp.service', path.join(wants, 'webapp.service'));
    await fs.mkdir(libpod, { recursive: true });
    await fs.writeFile(path.join(libpod, 'bolt_state.db'), 'old uid paths');
    const { uid, gid } = await userOf();
    expect(uid).toBe(5000);
    expect(gid).toBe(5000);
    expect(existsSync(path.join(wants, 'webapp.service'))).toBe(false);
    expect(f.users.calls).toEqual(['create web1', `chown ${home()} 5000:5000`]);
    expect(existsSync(path.join(libpod, 'bolt_state.db'))).toBe(false);
    expect(await f.deps.records.get(ID)).toMatchObject({ node: 1, rootfull: false, uid: 5000, gid: 5000 });
  });

  test('create-install-dir makes the install and state dirs owned by the user, mode 0700', async () => {
    const { uid } = await userOf();
    await applyStep(step('create-install-dir', {}), ctx);
    for (const dir of [path.join(home(), '.config'), path.join(home(), '.config', 'state')]) {
      const st = await fs.stat(dir);
      expect([st.uid, st.mode & 0o777]).toEqual([uid, 0o700]);
    }
  });

  test('create-volume-dirs refuses a relative or missing base path, and makes <base>/<id> owned by the user', async () => {
    const { uid } = await userOf();
    await expect(applyStep(step('create-volume-dirs', { bases: ['data'] }), ctx)).rejects.toMatchObject({ code: 'volume_base_invalid' });
    await expect(applyStep(step('create-volume-dirs', { bases: [path.join(root, 'no-disk')] }), ctx)).rejects.toMatchObject({ code: 'volume_base_missing' });
    const base = path.join(root, 'disk');
    await fs.mkdir(base);
    await applyStep(step('create-volume-dirs', { bases: [base] }), ctx);
    expect((await fs.stat(path.join(base, ID))).uid).toBe(uid);
    expect((await f.deps.records.get(ID))?.volumeBases).toEqual([base]);
  });

  test('enable-linger needs the user', async () => {
    await expect(applyStep(step('enable-linger', {}), ctx)).rejects.toMatchObject({ code: 'user_missing' });
    await userOf();
    await applyStep(step('enable-linger', {}), ctx);
    expect(f.systemd.linger.has(ID)).toBe(true);
  });
});

describe('image steps', () => {
  test('pull-image needs the user, fetches the image into the node cache (not the user store), records the facts and drops the copy pulled as root for the labels', async () => {
    await expect(applyStep(step('pull-image', { url: URL }), ctx)).rejects.toMatchObject({ code: 'user_missing' });
    await userOf();
    await f.deps.records.update(ID, { rootCopy: URL });
    f.podman.add({ kind: 'root' }, URL);
    await applyStep(step('pull-image', { url: URL }), ctx);
    expect(f.podman.calls).toEqual([`fetch ${URL}`, `rmi root ${URL}`]);
    expect(await f.podman.listImages({ kind: 'user', name: ID, uid: 5000, gid: 5000, home: home() })).toEqual([]);
    const rec = await f.deps.records.get(ID);
    expect(rec).toMatchObject({ imageUrl: URL, image: { id: `id-${URL}` } });
    expect(rec?.rootCopy).toBeUndefined();
  });

  test('pull-image pins the fetch to the digest the labels were read from (the record\'s, else the pass\'s)', async () => {
    await userOf();
    await applyStep(step('pull-image', { url: URL }), { ...ctx, imageDigest: 'sha256:from-the-pass' });
    expect(f.podman.calls).toEqual([`fetch ${URL} sha256:from-the-pass`]);
    f.podman.cache.entries.clear();
    await f.deps.records.update(ID, { image: { url: URL, id: 'i', digest: 'sha256:recorded', repoDigest: '', labels: {} } });
    await applyStep(step('pull-image', { url: URL }), { ...ctx, imageDigest: 'sha256:from-the-pass' });
    expect(f.podman.calls.at(-1)).toBe(`fetch ${URL} sha256:recorded`);
  });

  test('two instances of one image fetch it once: the second pull and both extractions copy from the node cache', async () => {
    f.podman.content.set(URL, { imageroot: { 'bin/tool': 'x' }, ui: { 'index.html': 'ui' } });
    const ctx2: StepContext = { ...ctx, id: 'web2' };
    for (const c of [ctx, ctx2]) {
      await applyStep({ ...step('create-user', {}), id: c.id }, c);
      await applyStep({ ...step('pull-image', { url: URL }), id: c.id }, c);
      await applyStep({ ...step('extract-image', { url: URL, imageroot: 'imageroot', uiroot: 'ui' }), id: c.id }, c);
    }
    expect(f.podman.calls.filter((c) => c.startsWith('fetch'))).toEqual([`fetch ${URL}`]);
    expect(f.podman.calls.filter((c) => c.startsWith('copy'))).toEqual([`copy web1 ${URL} imageroot`, `copy root ${URL} ui`, `copy web2 ${URL} imageroot`, `copy root ${URL} ui`]);
    for (const id of [ID, 'web2']) expect(await fs.readFile(path.join(f.layout.homeBase, id, '.config', 'bin', 'tool'), 'utf8')).toBe('x');
  });

  test('extract-image fetches an image missing from the node cache, then writes imageroot (as the user) and ui (as root), removes files gone from the image, records both', async () => {
    await userOf();
    f.podman.content.set(URL, { imageroot: { 'bin/tool': '#!/bin/sh\n' }, ui: { 'index.html': '<h1>ui</h1>' } });
    const installDir = path.join(home(), '.config');
    await fs.mkdir(installDir, { recursive: true });
    await fs.writeFile(path.join(installDir, '.imageroot.lst'), 'bin/old-tool\nbin/tool\n');
    await applyStep(step('extract-image', { url: URL, imageroot: 'imageroot', uiroot: 'ui' }), ctx);
    expect(f.podman.calls).toEqual([`fetch ${URL}`, `copy ${ID} ${URL} imageroot`, `copy root ${URL} ui`]);
    expect(await fs.readFile(path.join(installDir, 'bin', 'tool'), 'utf8')).toBe('#!/bin/sh\n');
    expect(await fs.readFile(path.join(installDir, '.imageroot.lst'), 'utf8')).toBe('bin/tool\n');
    // The stale file is removed as the user, by the runner (never by root following links).
    const rm = f.runner.history.at(-1)!.argv;
    expect(rm.slice(0, 3)).toEqual(['runuser', '-u', ID]);
    expect(rm.slice(-2)).toEqual([installDir, 'bin/old-tool']);
    const uiDir = path.join(f.layout.uiBase, ID);
    expect(await fs.readFile(path.join(uiDir, 'index.html'), 'utf8')).toBe('<h1>ui</h1>');
    expect(existsSync(`${uiDir}.ns8ctl-new`)).toBe(false);
    expect(await f.deps.records.get(ID)).toMatchObject({ extractedImageId: `id-${URL}`, uiImageId: `id-${URL}` });
  });

  test('extract-image of an image only in the instance user\'s store (converged before the node cache) extracts it from there, fetching nothing', async () => {
    await userOf();
    f.podman.add({ kind: 'user', name: ID, uid: 5000, gid: 5000, home: home() }, URL);
    f.podman.content.set(URL, { imageroot: { 'bin/tool': 'x' } });
    await applyStep(step('extract-image', { url: URL, imageroot: 'imageroot' }), ctx);
    expect(f.podman.calls).toEqual([`extract ${ID} ${URL} imageroot`]);
    expect(await fs.readFile(path.join(home(), '.config', 'bin', 'tool'), 'utf8')).toBe('x');
    expect(await f.deps.records.get(ID)).toMatchObject({ extractedImageId: `id-${URL}` });
  });
});

describe('environment and credential files', () => {
  test("write-environment keeps the module's own variables, replaces managed ones, drops the ones no longer managed, adds the extra ones", async () => {
    const { uid } = await userOf();
    await applyStep(step('create-install-dir', {}), ctx);
    const file = path.join(home(), '.config', 'state', 'environment');
    await fs.writeFile(file, 'MODULE_ID=web1\nTCP_PORT=20000\nOLD_MANAGED=x\nGREETING=hi\n');
    await applyStep(step('write-environment', { env: {}, managed: { MODULE_ID: 'web1', TCP_PORT: '20001' }, dropped: ['OLD_MANAGED'], extra: { PREV_IMAGE_URL: 'old' } }), ctx);
    const text = await fs.readFile(file, 'utf8');
    expect(text.split('\n').filter(Boolean).sort()).toEqual(['GREETING=hi', 'MODULE_ID=web1', 'PREV_IMAGE_URL=old', 'TCP_PORT=20001']);
    const st = await fs.stat(file);
    expect([st.uid, st.mode & 0o777]).toEqual([uid, 0o644]);
    expect((await f.deps.records.get(ID))?.managedEnv).toEqual({ MODULE_ID: 'web1', TCP_PORT: '20001' });
  });

  test('write-agent-env keeps a valid password, replaces an unusable one, and is readable by its owner only', async () => {
    const { uid } = await userOf();
    await applyStep(step('create-install-dir', {}), ctx);
    const file = path.join(home(), '.config', 'state', 'agent.env');
    await fs.writeFile(file, 'REDIS_PASSWORD=keepthispassword0123\n');
    await applyStep(step('write-agent-env', {}), ctx);
    expect(await fs.readFile(file, 'utf8')).toContain('REDIS_PASSWORD=keepthispassword0123\n');
    expect(await fs.readFile(file, 'utf8')).toContain('REDIS_USER=module/web1\n');
    const st = await fs.stat(file);
    expect([st.uid, st.mode & 0o777]).toEqual([uid, 0o600]);
    await fs.writeFile(file, 'REDIS_PASSWORD=short\n');
    await applyStep(step('write-agent-env', {}), ctx);
    expect(await fs.readFile(file, 'utf8')).not.toContain('REDIS_PASSWORD=short\n');
    expect(await fs.readFile(file, 'utf8')).toMatch(/^REDIS_PASSWORD=[A-Za-z0-9_-]{16,}$/m);
  });
});

describe('unit steps', () => {
  test('start-units succeeds once the units stay active; a unit that fails is named with its state', async () => {
    await userOf();
    await applyStep(step('start-units', { units: ['webapp.service'] }), ctx);
    expect(f.systemd.active.has('webapp.service')).toBe(true);
    f.systemd.failing.add('broken.service');
    await expect(applyStep(step('start-units', { units: ['broken.service'] }), ctx)).rejects.toMatchObject({ code: 'unit_failed', message: expect.stringContaining('broken.service: failed (exit code 1)') });
  });

  test('install-system-units keeps a template file while another instance records it, and records the installed hashes', async () => {
    ctx = { ...ctx, rootfull: true };
    const src = path.join(root, 'demo@.service');
    await fs.writeFile(src, '[Service]\nExecStart=/bin/true\n');
    await fs.mkdir(f.layout.systemUnitDir, { recursive: true });
    await applyStep(step('install-system-units', { units: [{ source: src, name: 'demo@.service' }], remove: [] }), ctx);
    const installed = path.join(f.layout.systemUnitDir, 'demo@.service');
    expect(await fs.readFile(installed, 'utf8')).toBe('[Service]\nExecStart=/bin/true\n');
    expect(Object.keys((await f.deps.records.get(ID))?.systemUnits ?? {})).toEqual(['demo@.service']);
    await f.deps.records.update('other1', { systemUnits: { 'demo@.service': 'h' } });
    await applyStep(step('install-system-units', { units: [], remove: ['demo@.service'] }), ctx);
    expect(existsSync(installed)).toBe(true);
    expect((await f.deps.records.get(ID))?.systemUnits).toEqual({});
    await f.deps.records.remove('other1');
    await applyStep(step('install-system-units', { units: [], remove: ['demo@.service'] }), ctx);
    expect(existsSync(installed)).toBe(false);
  });
});

describe('lifecycle and removal steps', () => {
  test('add-finalizer holds the Module and records the node; cancel-removal forgets the removal and its destroy-module', async () => {
    await applyStep(step('add-finalizer', {}), ctx);
    expect(await f.deps.records.get(ID)).toMatchObject({ node: 1, imageUrl: URL });
    await applyStep(step('mark-removing', { removalPolicy: 'Delete', request: { by: 'alice', why: 'test' } }), ctx);
    await f.deps.records.update(ID, { destroy: { attempts: 1 } });
    expect((await f.deps.records.get(ID))?.removing).toEqual({ by: 'alice', why: 'test', removalPolicy: 'Delete' });
    await applyStep(step('cancel-removal', {}), ctx);
    const rec = await f.deps.records.get(ID);
    expect([rec?.removing, rec?.destroy]).toEqual([undefined, undefined]);
  });

  test('erase-data refuses a home that is not <home base>/<id> (a user whose home points elsewhere)', async () => {
    const elsewhere = path.join(root, 'precious');
    await fs.mkdir(elsewhere);
    await fs.appendFile(f.layout.passwdFile, `${ID}:x:5000:5000::${elsewhere}:/sbin/nologin\n`);
    await expect(applyStep(step('erase-data', { volumeBases: [] }), ctx)).rejects.toMatchObject({ code: 'erase_refused' });
    expect(existsSync(elsewhere)).toBe(true);
  });

  test('erase-data removes the home and <base>/<id> of each volume base', async () => {
    await userOf();
    const base = path.join(root, 'disk');
    await fs.mkdir(path.join(base, ID), { recursive: true });
    await applyStep(step('erase-data', { volumeBases: [base] }), ctx);
    expect([existsSync(home()), existsSync(path.join(base, ID)), existsSync(base)]).toEqual([false, false, true]);
  });

  test("erase-data of a rootfull instance also removes its podman volumes named <id>-<name> (NS8's convention), not another instance's", async () => {
    ctx = { ...ctx, rootfull: true };
    await fs.mkdir(path.join(f.layout.rootfullBase, ID), { recursive: true });
    f.runner.respond = (argv) => (argv.join(' ') === 'podman volume ls --format {{.Name}}' ? 'web1-data\nweb10-data\nweb1-cache\nother\n' : '');
    await applyStep(step('erase-data', { volumeBases: [] }), ctx);
    expect(existsSync(path.join(f.layout.rootfullBase, ID))).toBe(false);
    expect(f.runner.history.at(-1)!.argv).toEqual(['podman', 'volume', 'rm', '--force', 'web1-data', 'web1-cache']);
  });
});

describe('units a rootfull module installs itself', () => {
  test("are its own by NS8's naming: <id>.service and <id>-<name>.service, not another id's or a template", async () => {
    const { isOwnSystemUnit } = await import('../../src/node-agent/observe.js');
    expect(['rootweb1.service', 'rootweb1-httpd.service', 'rootweb10.service', 'rootweb1@.service', 'agent@rootweb1.service'].filter((f) => isOwnSystemUnit('rootweb1', f))).toEqual(['rootweb1.service', 'rootweb1-httpd.service']);
  });
});

/** A user with an unusual uid, so its /tmp runtime dirs are nobody else's on the test host. */
const RARE_UID = 3999871;
const addRareUser = async (): Promise<void> => {
  await fs.mkdir(home(), { recursive: true });
  await fs.appendFile(f.layout.passwdFile, `${ID}:x:${RARE_UID}:${RARE_UID}::${home()}:/sbin/nologin\n`);
};

describe('chown-home', () => {
  test('makes a missing home owned by the uid, mode 0700, chowns the tree, resets the podman database and records uid and gid', async () => {
    await addRareUser();
    await fs.rm(home(), { recursive: true });
    await applyStep(step('chown-home', { uid: RARE_UID, gid: RARE_UID + 1 }), ctx);
    const st = await fs.stat(home());
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([RARE_UID, RARE_UID + 1, 0o700]);
    expect(f.users.calls).toEqual([`chown ${home()} ${RARE_UID}:${RARE_UID + 1}`]);
    expect(await f.deps.records.get(ID)).toMatchObject({ uid: RARE_UID, gid: RARE_UID + 1 });
  });

  test('fixes a root-owned home of mode 0 left by a killed useradd, and drops the podman database of the old uid', async () => {
    await addRareUser();
    const libpod = path.join(home(), '.local', 'share', 'containers', 'storage', 'libpod');
    await fs.mkdir(libpod, { recursive: true });
    await fs.writeFile(path.join(libpod, 'bolt_state.db'), 'old uid paths');
    await fs.writeFile(path.join(libpod, 'keep.txt'), 'not the database');
    await fs.chmod(home(), 0);
    await applyStep(step('chown-home', { uid: RARE_UID, gid: RARE_UID }), ctx);
    const st = await fs.stat(home());
    expect([st.uid, st.gid, st.mode & 0o700]).toEqual([RARE_UID, RARE_UID, 0o700]);
    expect(existsSync(path.join(libpod, 'bolt_state.db'))).toBe(false);
    expect(existsSync(path.join(libpod, 'keep.txt'))).toBe(true);
  });
});

describe('subids, linger, processes: one call each to the user and systemd hosts', () => {
  test('add-subids asks the user host to add both ranges for the instance user', async () => {
    await applyStep(step('add-subids', {}), ctx);
    expect(f.users.calls).toEqual([`add-subids ${ID}`]);
  });

  test('disable-linger names the uid of the user, or -1 when the user is gone already (no refusal: removal must go on)', async () => {
    await applyStep(step('disable-linger', {}), ctx);
    const { uid } = await userOf();
    f.systemd.linger.add(ID);
    await applyStep(step('disable-linger', {}), ctx);
    expect(f.systemd.calls).toEqual([`disable-linger ${ID} -1`, `disable-linger ${ID} ${uid}`]);
    expect(f.systemd.linger.has(ID)).toBe(false);
  });

  test('kill-processes asks the user host to kill the instance user’s processes', async () => {
    await applyStep(step('kill-processes', {}), ctx);
    expect(f.users.calls).toEqual([`kill ${ID}`]);
  });
});

describe('remove-user', () => {
  const runDirs = [`/tmp/podman-run-${RARE_UID}`, `/tmp/containers-user-${RARE_UID}`];
  afterEach(async () => {
    for (const d of runDirs) await fs.rm(d, { recursive: true, force: true });
  });

  test("removes the user and its rootless podman runtime dirs in /tmp, but not a dir of that name someone else owns", async () => {
    await addRareUser();
    await fs.mkdir(path.join(runDirs[0]!, 'libpod'), { recursive: true });
    await fs.chown(runDirs[0]!, RARE_UID, RARE_UID);
    await fs.mkdir(runDirs[1]!, { recursive: true }); // owned by root: not the user's
    await applyStep(step('remove-user', {}), ctx);
    expect(f.users.calls).toEqual([`remove ${ID}`]);
    expect(await fs.readFile(f.layout.passwdFile, 'utf8')).not.toContain(`${ID}:`);
    expect([existsSync(runDirs[0]!), existsSync(runDirs[1]!)]).toEqual([false, true]);
  });

  test('asks the user host to remove a user that is gone already (idempotent), touching no runtime dir', async () => {
    await fs.mkdir(runDirs[0]!, { recursive: true });
    await fs.chown(runDirs[0]!, RARE_UID, RARE_UID);
    await applyStep(step('remove-user', {}), ctx);
    expect(f.users.calls).toEqual([`remove ${ID}`]);
    expect(existsSync(runDirs[0]!)).toBe(true);
  });
});

describe('unit steps go to the manager of the instance: its user manager, or the system one when rootfull', () => {
  const verbs = [
    ['daemon-reload', 'daemon-reload', undefined],
    ['enable-units', 'enable', ['a.service', 'b.timer']],
    ['disable-units', 'disable', ['a.service', 'b.timer']],
    ['start-units', 'start', ['a.service', 'b.timer']],
    ['restart-units', 'restart', ['a.service', 'b.timer']],
    ['stop-units', 'stop', ['a.service', 'b.timer']],
  ] as const;
  const unitStep = (kind: (typeof verbs)[number][0], units: readonly string[] | undefined): Step => ({ id: ID, kind, reason: 'test', ...(units ? { units: [...units] } : {}) }) as Step;

  test.each(verbs)('%s of a rootless instance refuses with user_missing when its user does not exist, calling nothing', async (kind, _verb, units) => {
    await expect(applyStep(unitStep(kind, units), ctx)).rejects.toMatchObject({ code: 'user_missing', message: expect.stringContaining(`Unix user ${ID}`) });
    expect(f.systemd.calls).toEqual([]);
  });

  test.each(verbs)('%s of a rootless instance calls its user manager, with its uid', async (kind, verb, units) => {
    const { uid } = await userOf();
    await applyStep(unitStep(kind, units), ctx);
    expect(f.systemd.calls).toEqual([[verb, `user:${ID}:${uid}`, ...(units ?? [])].join(' ')]);
  });

  test.each(verbs)('%s of a rootfull instance calls the system manager and needs no Unix user', async (kind, verb, units) => {
    ctx = { ...ctx, rootfull: true };
    await applyStep(unitStep(kind, units), ctx);
    expect(f.systemd.calls).toEqual([[verb, 'system', ...(units ?? [])].join(' ')]);
  });

  test('stop-units leaves the units inactive', async () => {
    await userOf();
    await applyStep(step('start-units', { units: ['webapp.service'] }), ctx);
    await applyStep(step('stop-units', { units: ['webapp.service'] }), ctx);
    expect(f.systemd.active.has('webapp.service')).toBe(false);
  });
});

describe('start-units and restart-units wait until the units stay active', () => {
  test('a unit must be seen active on six polls in a row before the step succeeds', async () => {
    await userOf();
    await applyStep(step('restart-units', { units: ['webapp.service'] }), ctx);
    expect(f.systemd.polls).toBe(6);
  });

  test('a unit that reports active at once and fails a moment later makes the step fail, naming it', async () => {
    await userOf();
    let polls = 0;
    f.systemd.isActive = async (_scope, units) => Object.fromEntries(units.map((u) => [u, ++polls <= 3 ? 'active' : 'failed']));
    await expect(applyStep(step('restart-units', { units: ['webapp.service'] }), ctx)).rejects.toMatchObject({ code: 'unit_failed', message: expect.stringContaining('unit webapp.service did not start') });
    expect(polls).toBe(4);
  });

  test('a unit that never leaves activating fails the step after a bounded number of polls', async () => {
    await userOf();
    let polls = 0;
    f.systemd.isActive = async (_scope, units) => (polls++, Object.fromEntries(units.map((u) => [u, 'activating'])));
    await expect(applyStep(step('start-units', { units: ['slow.service'] }), ctx)).rejects.toMatchObject({ code: 'unit_failed', message: expect.stringContaining('slow.service') });
    expect(polls).toBe(12);
  });

  test('when the caller lets units settle in the background, the step returns after the first poll and the window ends in settleUnits', async () => {
    await userOf();
    // The window's waits hold until the test opens the gate: the step must return before.
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    ctx = { ...ctx, deps: { ...ctx.deps, delay: () => gate }, settleInBackground: true };
    await applyStep(step('start-units', { units: ['webapp.service'] }), ctx);
    expect(f.systemd.polls).toBe(1);
    expect(ctx.settling?.step.kind).toBe('start-units');
    open();
    await settleUnits(ctx);
    expect(f.systemd.polls).toBe(6);
    expect(ctx.settling).toBeUndefined();
  });

  test('a unit failing inside a background window fails settleUnits with the unit named; one failed at once fails the step itself', async () => {
    await userOf();
    ctx.settleInBackground = true;
    let polls = 0;
    f.systemd.isActive = async (_scope, units) => Object.fromEntries(units.map((u) => [u, ++polls <= 3 ? 'active' : 'failed']));
    await applyStep(step('start-units', { units: ['webapp.service'] }), ctx);
    await expect(settleUnits(ctx)).rejects.toMatchObject({ code: 'unit_failed', message: expect.stringContaining('unit webapp.service did not start') });
    f.systemd.isActive = async (_scope, units) => Object.fromEntries(units.map((u) => [u, 'failed']));
    await expect(applyStep(step('restart-units', { units: ['webapp.service'] }), ctx)).rejects.toMatchObject({ code: 'unit_failed' });
    expect(ctx.settling).toBeUndefined();
  });

  test('of several units only the ones not active are named', async () => {
    await userOf();
    f.systemd.failing.add('broken.service');
    await expect(applyStep(step('start-units', { units: ['webapp.service', 'broken.service'] }), ctx)).rejects.toMatchObject({ message: expect.stringMatching(/unit broken\.service did not start: broken\.service: failed/) });
  });
});

describe('unit files and records', () => {
  test('install-system-units writes a root-owned 0644 file, records its sha256 and keeps the hashes of units it does not touch', async () => {
    ctx = { ...ctx, rootfull: true };
    const text = '[Service]\nExecStart=/bin/true\n';
    const src = path.join(root, 'web1.service');
    await fs.writeFile(src, text);
    await fs.mkdir(f.layout.systemUnitDir, { recursive: true });
    await f.deps.records.update(ID, { systemUnits: { 'web1-old.service': 'kept' } });
    await applyStep(step('install-system-units', { units: [{ source: src, name: 'web1.service' }], remove: [] }), ctx);
    const st = await fs.stat(path.join(f.layout.systemUnitDir, 'web1.service'));
    expect([st.uid, st.mode & 0o777]).toEqual([0, 0o644]);
    const { createHash } = await import('node:crypto');
    expect((await f.deps.records.get(ID))?.systemUnits).toEqual({ 'web1-old.service': 'kept', 'web1.service': createHash('sha256').update(text).digest('hex') });
  });

  test('install-system-units removes a unit file no other instance records, and a missing one is no error', async () => {
    ctx = { ...ctx, rootfull: true };
    await fs.mkdir(f.layout.systemUnitDir, { recursive: true });
    await fs.writeFile(path.join(f.layout.systemUnitDir, 'web1-gone.service'), 'x');
    await f.deps.records.update(ID, { systemUnits: { 'web1-gone.service': 'h', 'web1-never.service': 'h' } });
    await applyStep(step('install-system-units', { units: [], remove: ['web1-gone.service', 'web1-never.service'] }), ctx);
    expect(existsSync(path.join(f.layout.systemUnitDir, 'web1-gone.service'))).toBe(false);
    expect((await f.deps.records.get(ID))?.systemUnits).toEqual({});
  });

  test('install-agent-unit makes the parent dirs and writes the content as a root-owned 0644 file, replacing an old one', async () => {
    const file = path.join(root, 'etc', 'systemd', 'system', 'agent@web1.service.d', 'ns8ctl.conf');
    await applyStep(step('install-agent-unit', { path: file, content: '[Service]\nA=1\n' }), ctx);
    await applyStep(step('install-agent-unit', { path: file, content: '[Service]\nA=2\n' }), ctx);
    expect(await fs.readFile(file, 'utf8')).toBe('[Service]\nA=2\n');
    const st = await fs.stat(file);
    expect([st.uid, st.gid, st.mode & 0o777]).toEqual([0, 0, 0o644]);
    expect(await fs.readdir(path.dirname(file))).toEqual(['ns8ctl.conf']);
  });

  test('record-units replaces the recorded units of the instance and leaves the rest of its record', async () => {
    await f.deps.records.update(ID, { node: 1, units: { 'old.service': 'h0' } });
    await applyStep(step('record-units', { units: { 'webapp.service': 'h1' } }), ctx);
    expect(await f.deps.records.get(ID)).toMatchObject({ node: 1, units: { 'webapp.service': 'h1' } });
    expect((await f.deps.records.get(ID))?.units).toEqual({ 'webapp.service': 'h1' });
  });
});

describe('service images and image removal', () => {
  const SVC = '127.0.0.1:5000/library/redis:7';
  const userOwner = (uid: number): { kind: 'user'; name: string; uid: number; gid: number; home: string } => ({ kind: 'user', name: ID, uid, gid: uid, home: home() });

  test('pull-service-image refuses with user_missing without the user; pulls as the user, or as root when rootfull, recording nothing', async () => {
    await expect(applyStep(step('pull-service-image', { url: SVC }), ctx)).rejects.toMatchObject({ code: 'user_missing' });
    expect(f.podman.calls).toEqual([]);
    const { uid } = await userOf();
    const before = await f.deps.records.get(ID);
    await applyStep(step('pull-service-image', { url: SVC }), ctx);
    await applyStep(step('pull-service-image', { url: SVC }), { ...ctx, rootfull: true });
    expect(f.podman.calls).toEqual([`pull ${ID} ${SVC}`, `pull root ${SVC}`]);
    expect((await f.podman.listImages(userOwner(uid))).map((i) => i.names)).toEqual([[SVC]]);
    expect(await f.deps.records.get(ID)).toEqual(before);
  });

  test('remove-old-images refuses with user_missing without the user; removes the refs from the owner’s store only', async () => {
    await expect(applyStep(step('remove-old-images', { refs: [URL] }), ctx)).rejects.toMatchObject({ code: 'user_missing' });
    const { uid } = await userOf();
    f.podman.add(userOwner(uid), URL);
    f.podman.add(userOwner(uid), SVC);
    f.podman.add({ kind: 'root' }, URL);
    await applyStep(step('remove-old-images', { refs: [URL] }), ctx);
    expect(f.podman.calls).toEqual([`rmi ${ID} ${URL}`]);
    expect((await f.podman.listImages(userOwner(uid))).map((i) => i.names)).toEqual([[SVC]]);
    expect(await f.podman.listImages({ kind: 'root' })).toHaveLength(1);
  });

  test('remove-old-images of a rootfull instance removes them as root', async () => {
    await applyStep(step('remove-old-images', { refs: [URL] }), { ...ctx, rootfull: true });
    expect(f.podman.calls).toEqual([`rmi root ${URL}`]);
  });

  test("remove-images removes root's copies; for a rootfull instance also its leftover extraction container, for a rootless one none", async () => {
    await applyStep(step('remove-images', { refs: [URL, SVC] }), ctx);
    await applyStep(step('remove-images', { refs: [URL] }), { ...ctx, rootfull: true });
    expect(f.podman.calls).toEqual([`rmi root ${URL} ${SVC}`, `rm root ns8ctl-extract-${ID}`, `rmi root ${URL}`]);
  });

  test('remove-ui removes the UI dir and a half-made new one, and is no error when neither exists', async () => {
    const uiDir = path.join(f.layout.uiBase, ID);
    const other = path.join(f.layout.uiBase, 'web2');
    for (const d of [uiDir, `${uiDir}.ns8ctl-new`, other]) {
      await fs.mkdir(d, { recursive: true });
      await fs.writeFile(path.join(d, 'index.html'), 'ui');
    }
    await applyStep(step('remove-ui', {}), ctx);
    expect([existsSync(uiDir), existsSync(`${uiDir}.ns8ctl-new`), existsSync(other)]).toEqual([false, false, true]);
    await applyStep(step('remove-ui', {}), ctx);
  });
});

describe('forget-record', () => {
  test("drops the instance's record and no other", async () => {
    await f.deps.records.update(ID, { node: 1 });
    await f.deps.records.update('web2', { node: 1 });
    await applyStep(step('forget-record', {}), ctx);
    expect(await f.deps.records.get(ID)).toBeUndefined();
    expect([...(await f.deps.records.list()).keys()]).toEqual(['web2']);
    await applyStep(step('forget-record', {}), ctx);
  });
});

describe('erase-data of a rootless instance whose user is gone', () => {
  test('removes <home base>/<id> through the user host and each volume dir, and lists no podman volumes', async () => {
    await fs.mkdir(home(), { recursive: true });
    const base = path.join(root, 'disk');
    await fs.mkdir(path.join(base, ID), { recursive: true });
    await applyStep(step('erase-data', { volumeBases: [base] }), ctx);
    expect(f.users.calls).toEqual([`remove-tree ${home()}`, `remove-tree ${path.join(base, ID)}`]);
    expect(f.runner.history).toEqual([]);
  });
});
