/**
 * The node agent's step handlers (src/node-agent/steps/), one concern at a time, on fakes of
 * podman, systemd and useradd over a temp layout: what each does to files and records, and what it
 * refuses. Handlers that write Redis are covered with a real redis-server by the integration tests.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { applyStep, type StepContext } from '../../src/node-agent/applier.js';
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
  test('pull-image pulls as the instance user, records the facts and drops the copy pulled as root for the labels', async () => {
    await userOf();
    await f.deps.records.update(ID, { rootCopy: URL });
    f.podman.add({ kind: 'root' }, URL);
    await applyStep(step('pull-image', { url: URL }), ctx);
    expect(f.podman.calls).toEqual([`pull ${ID} ${URL}`, `rmi root ${URL}`]);
    const rec = await f.deps.records.get(ID);
    expect(rec).toMatchObject({ imageUrl: URL, image: { id: `id-${URL}` } });
    expect(rec?.rootCopy).toBeUndefined();
  });

  test('extract-image refuses an image the owner does not have; then writes imageroot and ui, removes files gone from the image, records both', async () => {
    await userOf();
    await expect(applyStep(step('extract-image', { url: URL, imageroot: 'imageroot', uiroot: 'ui' }), ctx)).rejects.toMatchObject({ code: 'image_not_found' });
    f.podman.add({ kind: 'user', name: ID, uid: 5000, gid: 5000, home: home() }, URL);
    f.podman.content.set(URL, { imageroot: { 'bin/tool': '#!/bin/sh\n' }, ui: { 'index.html': '<h1>ui</h1>' } });
    const installDir = path.join(home(), '.config');
    await fs.mkdir(installDir, { recursive: true });
    await fs.writeFile(path.join(installDir, '.imageroot.lst'), 'bin/old-tool\nbin/tool\n');
    await applyStep(step('extract-image', { url: URL, imageroot: 'imageroot', uiroot: 'ui' }), ctx);
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
