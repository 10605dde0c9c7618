import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { listActionNames, resolveAction, type BuiltinAction } from '../../src/agent/action-catalog.js';
import { renderRootfullAgentUnit, renderRootlessAgentUnit } from '../../src/agent/agent-unit.js';
import { actionMatches, authorizationsToStore, computeGrants, globToRegExp, parseAuthorizations } from '../../src/agent/authorizations.js';
import { imageNameFromUrl, serviceImageEnvName } from '../../src/agent/base-actions.js';
import { parseEventsGatewayConfig } from '../../src/agent/events.js';
import { parseIni } from '../../src/agent/ini.js';
import { planRunagent } from '../../src/agent/runagent.js';

let root: string;
beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'agent-cat-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

function step(dir: string, name: string, body = '#!/bin/sh\nexit 0\n'): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), body);
  chmodSync(path.join(dir, name), 0o755);
}

describe('action catalog', () => {
  const builtin: BuiltinAction = { name: 'create-module', steps: [{ name: '05pullimages', run: () => Promise.resolve(0) }, { name: '10selfadm_role', run: () => Promise.resolve(0) }], inputSchema: { type: 'object' } };

  it('merges steps by file name, later directory wins, and orders them alphabetically across directories', async () => {
    const base = path.join(root, 'base');
    const inst = path.join(root, 'inst');
    step(path.join(base, 'configure-module'), '10one');
    step(path.join(base, 'configure-module'), '30three');
    step(path.join(inst, 'configure-module'), '20two');
    step(path.join(inst, 'configure-module'), '30three');
    writeFileSync(path.join(base, 'configure-module', 'validate-input.json'), '{}');
    writeFileSync(path.join(inst, 'configure-module', 'validate-input.json'), '{}');
    const plan = await resolveAction('configure-module', [base, inst]);
    expect(plan?.steps.map((s) => (s.kind === 'file' ? path.relative(root, s.path) : s.name))).toEqual(['base/configure-module/10one', 'inst/configure-module/20two', 'inst/configure-module/30three']);
    expect(plan?.inputSchema).toEqual({ path: path.join(inst, 'configure-module', 'validate-input.json') });
    expect(plan?.outputSchema).toBeUndefined();
  });

  it('lets an instance file replace a built-in base step of the same name and interleave with the others', async () => {
    const inst = path.join(root, 'inst');
    step(path.join(inst, 'create-module'), '05pullimages');
    step(path.join(inst, 'create-module'), '07custom');
    const plan = await resolveAction('create-module', [inst], [builtin]);
    expect(plan?.steps.map((s) => `${s.kind}:${s.name}`)).toEqual(['file:05pullimages', 'file:07custom', 'builtin:10selfadm_role']);
    expect(plan?.inputSchema).toEqual({ json: { type: 'object' }, origin: 'built-in create-module/validate-input.json' });
  });

  it('ignores hidden and oddly named files and sub-directories', async () => {
    const dir = path.join(root, 'a', 'act');
    step(dir, '10ok');
    step(dir, '.hidden');
    step(dir, 'with space');
    mkdirSync(path.join(dir, 'subdir'));
    const plan = await resolveAction('act', [path.join(root, 'a')]);
    expect(plan?.steps.map((s) => s.name)).toEqual(['10ok']);
    expect(plan?.ignored.map((f) => path.basename(f)).sort()).toEqual(['.hidden', 'with space']);
  });

  it('returns nothing for an unknown action and refuses a crafted name before touching the disk', async () => {
    await expect(resolveAction('nope', [root])).resolves.toBeUndefined();
    await expect(resolveAction('../../../bin', [root])).rejects.toThrow(/not valid/);
  });

  it('lists directories, base actions and the two built-ins, sorted', async () => {
    step(path.join(root, 'x', 'get-configuration'), '10get');
    mkdirSync(path.join(root, 'x', '.git'));
    expect(await listActionNames([path.join(root, 'x')], [builtin])).toEqual(['cancel-task', 'create-module', 'get-configuration', 'list-actions']);
  });
});

describe('authorizations and grants', () => {
  it('parses labels and applies NS8 sanity rules', () => {
    expect(parseAuthorizations('traefik@any:routeadm cluster:accountconsumer node:portsadm,other')).toEqual({
      entries: [
        { selector: 'traefik@any', roles: ['routeadm'] },
        { selector: 'cluster', roles: ['accountconsumer'] },
        { selector: 'node', roles: ['portsadm', 'other'] },
      ],
      errors: [],
    });
    expect(parseAuthorizations('x*:a nocolon cluster:owner').errors).toHaveLength(3);
    expect(authorizationsToStore('traefik@node:routeadm')).toEqual(['traefik@node:routeadm', 'self:selfadm']);
    expect(() => authorizationsToStore('cluster:owner')).toThrow(/not allowed/);
  });

  it('matches action globs like Go filepath.Match', () => {
    expect(actionMatches(['get-*', 'list-*'], 'get-configuration')).toBe(true);
    expect(actionMatches(['get-*'], 'configure-module')).toBe(false);
    expect(actionMatches(['*'], 'anything')).toBe(true);
    expect(globToRegExp('set-rout?').test('set-route')).toBe(true);
    expect(globToRegExp('[cd]o').test('do')).toBe(true);
    expect(globToRegExp('a.b').test('axb')).toBe(false);
  });

  const agentRoles = {
    'module/traefik1': ['routeadm', 'owner'],
    'module/traefik2': ['routeadm'],
    'module/traefikx10': ['routeadm'],
    'module/dokuwiki1': ['selfadm', 'owner'],
    'node/1': ['portsadm'],
    'node/2': ['portsadm'],
  };

  it('grants X@any on every instance whose id starts with X that defines the role (NS8 prefix glob)', () => {
    const table = computeGrants({ instances: [{ id: 'dokuwiki1', node: '1', authorizations: ['traefik@any:routeadm', 'node:portsadm', 'self:selfadm'] }], agentRoles });
    expect(table).toEqual({ 'module/dokuwiki1': { 'module/dokuwiki1': 'selfadm', 'module/traefik1': 'routeadm', 'module/traefik2': 'routeadm', 'module/traefikx10': 'routeadm', 'node/1': 'portsadm' } });
  });

  it('resolves X@node and X@cluster through default instances, and skips roles the target does not define', () => {
    const table = computeGrants({
      instances: [{ id: 'kickstart1', node: '2', authorizations: ['traefik@node:routeadm', 'traefik@cluster:certadm', 'dokuwiki@cluster:owner'] }],
      agentRoles,
      nodeDefaults: { '2': { traefik: 'traefik2' } },
      clusterDefaults: { traefik: 'traefik1', dokuwiki: 'dokuwiki1' },
    });
    expect(table).toEqual({ 'module/kickstart1': { 'module/traefik2': 'routeadm', 'module/dokuwiki1': 'owner' } });
  });

  it('merges roles asked by several entries for the same agent', () => {
    const table = computeGrants({ instances: [{ id: 'a1', node: '1', authorizations: ['traefik1:routeadm', 'traefik@any:owner'] }], agentRoles });
    expect(table['module/a1']?.['module/traefik1']).toBe('owner,routeadm');
  });

  it('is deterministic whatever the input order', () => {
    const a = computeGrants({ instances: [{ id: 'b1', node: '1', authorizations: ['traefik@any:routeadm'] }, { id: 'a1', node: '1', authorizations: ['node:portsadm'] }], agentRoles });
    const b = computeGrants({ instances: [{ id: 'a1', node: '1', authorizations: ['node:portsadm'] }, { id: 'b1', node: '1', authorizations: ['traefik@any:routeadm'] }], agentRoles });
    expect(JSON.stringify(a)).toBe(JSON.stringify(b));
  });
});

describe('eventsgw.conf', () => {
  it('reads sections, comments, continuation lines, and reports problems with line numbers', () => {
    const doc = parseIni('# c\n[actions]\nmodule/traefik*/event/certificate-renew = renew-certificate\n\n[commands]\n; c\ncluster/event/x = echo one\n  two\nmodule/a/event/b = x\nmodule/a/event/b = y\norphan\n', 'eventsgw.conf');
    expect(doc.sections.get('actions')).toEqual([{ key: 'module/traefik*/event/certificate-renew', value: 'renew-certificate', line: 3 }]);
    expect(doc.sections.get('commands')?.[0]).toEqual({ key: 'cluster/event/x', value: 'echo one\ntwo', line: 7 });
    expect(doc.errors).toEqual(['eventsgw.conf:10: key "module/a/event/b" appears twice in [commands]', 'eventsgw.conf:11: expected "key = value" or "[section]", got "orphan"']);
  });

  it('refuses unsafe action names and unknown sections', () => {
    const cfg = parseEventsGatewayConfig('[actions]\na/event/b = ../../x\nc/event/d = ok-action\n[other]\nk = v\n');
    expect(cfg.actions).toEqual([{ channel: 'c/event/d', action: 'ok-action' }]);
    expect(cfg.errors).toEqual(['eventsgw.conf:2: [actions] a/event/b: "../../x" is not a valid action name', 'eventsgw.conf: unknown section [other]; allowed: [actions], [commands]']);
  });
});

describe('service image variables', () => {
  it.each([
    ['docker.io/library/mysql:10.3-alpine', 'MYSQL_IMAGE'],
    ['ghcr.io/x/node-exporter:1', 'NODE_EXPORTER_IMAGE'],
    ['ghcr.io/x/2fauth@sha256:abc', 'I2FAUTH_IMAGE'],
    ['docker://quay.io/a/b.c+d', 'B_C_D_IMAGE'],
  ])('%s -> %s', (url, name) => expect(serviceImageEnvName(url)).toBe(name));

  it('takes the last path segment without tag or digest', () => expect(imageNameFromUrl('127.0.0.1:5000/ns/web:1.0.0')).toBe('web'));
});

describe('runagent planning', () => {
  function fixture(): { passwd: string; rootfullBase: string; home: string } {
    const home = path.join(root, 'home', 'web1');
    mkdirSync(path.join(home, '.config', 'state'), { recursive: true });
    writeFileSync(path.join(home, '.config', 'state', 'environment'), 'MODULE_ID=web1\nTCP_PORT=20001\n');
    writeFileSync(path.join(home, '.config', 'state', 'agent.env'), 'REDIS_USER=module/web1\nREDIS_PASSWORD=pw\n');
    const passwd = path.join(root, 'passwd');
    writeFileSync(passwd, `root:x:0:0:root:/root:/bin/bash\nweb1:x:1234:1235::${home}:/sbin/nologin\n`);
    const rootfullBase = path.join(root, 'rootfull');
    mkdirSync(path.join(rootfullBase, 'promtail1', 'state'), { recursive: true });
    return { passwd, rootfullBase, home };
  }

  it('switches to the instance user for a rootless instance, with its agent environment', async () => {
    const f = fixture();
    const plan = await planRunagent('web1', ['env'], { uid: 0, isTTY: false, env: { TERM: 'xterm', SECRET_OF_CALLER: 'x' }, paths: { passwdFile: f.passwd, rootfullBase: f.rootfullBase, globalAgentEnv: path.join(root, 'none') } });
    expect(plan.uid).toBe(1234);
    expect(plan.gid).toBe(1235);
    expect(plan.cwd).toBe(path.join(f.home, '.config', 'state'));
    expect(plan.env).toMatchObject({ MODULE_ID: 'web1', TCP_PORT: '20001', AGENT_ID: 'module/web1', AGENT_INSTALL_DIR: path.join(f.home, '.config'), XDG_RUNTIME_DIR: '/run/user/1234', USER: 'web1', TERM: 'xterm' });
    expect(plan.env['SECRET_OF_CALLER']).toBeUndefined();
    expect(plan.env['PATH']?.split(':')[0]).toBe(path.join(f.home, '.config', 'bin'));
  });

  it('runs a rootfull instance as root in its state dir', async () => {
    const f = fixture();
    const plan = await planRunagent('promtail1', ['true'], { uid: 0, isTTY: false, env: {}, paths: { passwdFile: f.passwd, rootfullBase: f.rootfullBase } });
    expect(plan.uid).toBeUndefined();
    expect(plan.cwd).toBe(path.join(f.rootfullBase, 'promtail1', 'state'));
    expect(plan.env['AGENT_ID']).toBe('module/promtail1');
  });

  it('refuses another user, a missing instance, and a shell without a terminal', async () => {
    const f = fixture();
    const paths = { passwdFile: f.passwd, rootfullBase: f.rootfullBase };
    await expect(planRunagent('web1', ['env'], { uid: 999, isTTY: false, env: {}, paths })).rejects.toThrow(/run it as root or as the user web1/);
    await expect(planRunagent('ghost1', ['env'], { uid: 0, isTTY: false, env: {}, paths })).rejects.toThrow(/instance ghost1 not found on this node/);
    await expect(planRunagent('web1', [], { uid: 0, isTTY: false, env: {}, paths })).rejects.toThrow(/give a command to run/);
  });
});

describe('agent units', () => {
  it('run ns8ctl agent for the instance with NS8 directories', () => {
    const rootless = renderRootlessAgentUnit({ ns8ctl: ['/usr/bin/node', '/opt/ns8ctl/dist/src/cli/bin.js'] });
    expect(rootless).toContain('ExecStart=/usr/bin/node /opt/ns8ctl/dist/src/cli/bin.js agent --id %u --install-dir %E --state-dir %E/state --actionsdir %E/actions --eventsdir %E/events');
    expect(rootless).toContain('EnvironmentFile=-%E/state/agent.env');
    expect(rootless).toContain('WantedBy=default.target');
    const rootfull = renderRootfullAgentUnit({ ns8ctl: ['/usr/local/bin/ns8ctl'], baseActionsDir: '/usr/local/ns8ctl/actions' });
    expect(rootfull).toContain('ExecStart=/usr/local/bin/ns8ctl agent --id %i --install-dir /var/lib/nethserver/%i --state-dir /var/lib/nethserver/%i/state --rootfull --actionsdir /usr/local/ns8ctl/actions --actionsdir /var/lib/nethserver/%i/actions');
  });
});
