import { createHash } from 'node:crypto';
import { planConverge, planRemoval, unitStamp, agentEnvironment, type ConvergeInput } from '../../src/node-agent/planner.js';
import { parseModuleLabels } from '../../src/node-agent/labels.js';
import { managedEnvironment } from '../../src/node-agent/module-env.js';
import { renderEnvironment } from '../../src/node-agent/environment-file.js';
import { passwordSha256 } from '../../src/node-agent/redis-acl.js';
import type { InstanceDesired, ObservedInstance, Step } from '../../src/node-agent/types.js';

const URL = '127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0';
const SVC = '127.0.0.1:5000/ns8ctl-examples/webapp-httpd:1.0.0';
const labels = parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.tcp-ports-demand': '1', 'org.nethserver.images': SVC }, URL);
const image = { url: URL, id: 'img1', digest: 'sha256:d1', repoDigest: '127.0.0.1:5000/ns8ctl-examples/webapp@sha256:d1', labels: {} };
const user = { name: 'webapp1', uid: 1001, gid: 1001, home: '/home/webapp1', shell: '/sbin/nologin' };
const desired: InstanceDesired = { id: 'webapp1', generation: 1, spec: { image: URL, node: 1 }, uuid: 'uuid-1', finalizers: ['node-agent'] };
const installDir = '/home/webapp1/.config';

function env(): Record<string, string> {
  return { ...managedEnvironment({ id: 'webapp1', node: 1, uuid: 'uuid-1', image, serviceImages: [SVC], ports: { tcp: { start: 20000, end: 20000 } } }), APP_SETTING: 'kept' };
}
const envText = renderEnvironment('webapp1', managedEnvironment({ id: 'webapp1', node: 1, uuid: 'uuid-1', image, serviceImages: [SVC], ports: { tcp: { start: 20000, end: 20000 } } }));
const managedMap = managedEnvironment({ id: 'webapp1', node: 1, uuid: 'uuid-1', image, serviceImages: [SVC], ports: { tcp: { start: 20000, end: 20000 } } });
const agentEnv = agentEnvironment(installDir, 'secretpassword0123', 'webapp1');
const aclLine = `user module/webapp1 on #${passwordSha256('secretpassword0123')} ~module/webapp1/* ~task/module/webapp1/* %R~cluster/* %R~node/* %R~module/* %R~private/agents/* resetchannels &progress/module/webapp1/* &module/webapp1/event/* -@all +@read`;

/** An instance exactly as the agent leaves it after converging (systemd running). */
function converged(): ObservedInstance {
  return {
    id: 'webapp1',
    record: {
      id: 'webapp1',
      imageUrl: URL,
      image,
      rootfull: false,
      uid: 1001,
      gid: 1001,
      extractedImageId: 'img1',
      uiImageId: 'img1',
      managedEnv: managedMap,
      units: { 'webapp.service': unitStamp('h1', envText) },
      aclLine,
      announced: true,
      node: 1,
    },
    user,
    subids: true,
    linger: true,
    installDir: true,
    baseExists: true,
    volumeDirs: {},
    localImage: { id: 'img1', digest: 'sha256:d1' },
    serviceImages: { [SVC]: true },
    imagerootIntact: true,
    imagerootMissing: [],
    uiPresent: true,
    envFile: env(),
    envText,
    envFileUid: 1001,
    envRedis: env(),
    agentEnv,
    agentEnvMode: 0o600,
    agentEnvUid: 1001,
    aclLine,
    ports: { tcp: { start: 20000, end: 20000 } },
    flags: ['rootless'],
    authorizations: ['self:selfadm'],
    roles: { owner: ['*'], reader: ['get-*', 'list-*', 'read-*', 'show-*'] },
    portsDemand: { tcp: '1' },
    units: [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: true, active: true }],
    moduleNode: '1',
  };
}

function input(o: ObservedInstance, over: Partial<ConvergeInput> = {}): ConvergeInput {
  return { desired, node: { node: 1 }, imageUrl: URL, labels, image, observed: o, installDir, ...over };
}
const kinds = (steps: Step[]): string[] => steps.map((s) => s.kind);

describe('the node planner converges an instance', () => {
  test('an instance that already matches gets an empty plan', () => {
    const p = planConverge(input(converged()));
    expect(p).toEqual({ steps: [], waiting: [] });
  });

  test('the plan is deterministic', () => {
    const o = converged();
    delete o.user;
    expect(planConverge(input(o))).toEqual(planConverge(input(structuredClone(o))));
  });

  test('a new instance: finalizer first, then user, dirs, linger, pulls, ports; environment waits for the image', () => {
    const o: ObservedInstance = { id: 'webapp1', subids: false, linger: false, installDir: false, baseExists: false, volumeDirs: {}, serviceImages: {}, imagerootIntact: false, imagerootMissing: ['.imageroot.lst'], uiPresent: false, envText: '', envRedis: {}, ports: {}, flags: [], authorizations: [], roles: { owner: [], reader: [] }, portsDemand: {}, units: [] };
    const p = planConverge(input(o, { desired: { ...desired, finalizers: [] } }));
    expect(kinds(p.steps)).toEqual([
      'add-finalizer', 'create-user', 'create-install-dir', 'enable-linger', 'pull-image', 'pull-service-image', 'allocate-ports', 'set-ports-demand',
      'extract-image', 'write-agent-env', 'apply-acl', 'set-flags', 'set-authorizations',
    ]);
    expect(p.waiting).toEqual(['environment: waits for the image pull (IMAGE_ID, IMAGE_DIGEST)', 'units: wait for the extraction']);
    expect(p.steps.every((s) => s.reason.length > 0)).toBe(true);
    expect(p.steps.find((s) => s.kind === 'allocate-ports')).toMatchObject({ proto: 'tcp', demand: 1 });
    expect(p.steps.find((s) => s.kind === 'extract-image')).toMatchObject({ imageroot: 'imageroot', uiroot: 'ui' });
  });

  test('once image and ports are there, the environment is written and mirrored, units installed and started, module-added follows', () => {
    const o = converged();
    delete o.envFile;
    o.envText = '';
    o.envRedis = {};
    o.record = { ...o.record!, units: {}, announced: false, managedEnv: {} };
    o.units = [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: false, active: false }];
    const p = planConverge(input(o));
    expect(kinds(p.steps)).toEqual(['write-environment', 'mirror-environment', 'daemon-reload', 'enable-units', 'start-units', 'record-units']);
    const w = p.steps[0] as Extract<Step, { kind: 'write-environment' }>;
    expect(w.env).toMatchObject({ MODULE_ID: 'webapp1', NODE_ID: '1', MODULE_UUID: 'uuid-1', IMAGE_ID: 'img1', TCP_PORT: '20000', WEBAPP_HTTPD_IMAGE: SVC });
    // module-added is published only in the round where nothing else is left.
    expect(kinds(p.steps)).not.toContain('publish-added');
    const last = converged();
    last.record = { ...last.record!, announced: false };
    expect(kinds(planConverge(input(last)).steps)).toEqual(['publish-added']);
  });

  test('an edited environment value is repaired and reported as drift; a unit started with other values is restarted', () => {
    const o = converged();
    o.envFile = { ...env(), TCP_PORT: '1234' };
    const p = planConverge(input(o));
    // The units were started with the right values (systemd reads the file at start): no restart.
    expect(kinds(p.steps)).toEqual(['write-environment']);
    expect(p.steps[0]!.drift).toBe('environment TCP_PORT edited (was "1234")');
    // Next round: file fixed; the unit still runs with the old environment stamp.
    const o2 = converged();
    o2.record = { ...o2.record!, units: { 'webapp.service': unitStamp('h1', 'OLD=1\n') } };
    expect(kinds(planConverge(input(o2)).steps)).toEqual(['restart-units', 'record-units']);
  });

  test('variables written by the module itself are kept and restart nothing', () => {
    const o = converged();
    o.envFile = { ...env(), OTHER: 'set by configure-module' };
    const p = planConverge(input(o));
    const w = p.steps.find((s) => s.kind === 'write-environment') as Extract<Step, { kind: 'write-environment' }> | undefined;
    // The file already has every managed value: only the Redis mirror differs.
    expect(w).toBeUndefined();
    expect(kinds(p.steps)).toEqual(['mirror-environment']);
  });

  test('a wanted change of a managed value (new image) is not drift; a deleted environment file is', () => {
    const o = converged();
    const p = planConverge(input(o, { imageUrl: '127.0.0.1:5000/ns8ctl-examples/webapp:1.1.0' }));
    expect(p.steps.filter((s) => s.drift)).toEqual([]);
    const o2 = converged();
    delete o2.envFile;
    expect(planConverge(input(o2)).steps[0]).toMatchObject({ kind: 'write-environment', drift: 'state/environment deleted' });
  });

  test('a value with a newline blocks the instance with EnvironmentInvalid', () => {
    const p = planConverge(input(converged(), { desired: { ...desired, uuid: 'a\nEVIL=1' } }));
    expect(p.blocked?.code).toBe('environment_value_invalid');
    expect(p.blocked?.message).toMatch(/MODULE_UUID contains a newline/);
  });

  test('a deleted unit file is re-extracted and reported', () => {
    const o = converged();
    o.imagerootIntact = false;
    o.imagerootMissing = ['systemd/user/webapp.service'];
    const p = planConverge(input(o));
    expect(p.steps).toEqual([expect.objectContaining({ kind: 'extract-image', imageroot: 'imageroot', drift: 'files of imageroot/ missing: systemd/user/webapp.service' })]);
    expect(p.steps[0]).not.toHaveProperty('uiroot');
    expect(p.waiting).toEqual(['units: wait for the extraction']);
  });

  test('an edited file of the imageroot is re-extracted and reported as edited', () => {
    const o = converged();
    o.imagerootIntact = false;
    o.imagerootMissing = ['bin/webapp-info (edited)'];
    const p = planConverge(input(o));
    expect(p.steps).toEqual([expect.objectContaining({ kind: 'extract-image', imageroot: 'imageroot', drift: 'files of imageroot/ missing or edited: bin/webapp-info (edited)' })]);
  });

  test('a removed user is recreated and reported; a recreated user gets its files back', () => {
    const o = converged();
    delete o.user;
    const p = planConverge(input(o));
    expect(p.steps[0]).toMatchObject({ kind: 'create-user', drift: 'user webapp1 removed' });
    const o2 = converged();
    o2.user = { ...user, uid: 1005, gid: 1005 };
    const p2 = planConverge(input(o2));
    expect(p2.steps[0]).toMatchObject({ kind: 'chown-home', uid: 1005, gid: 1005 });
  });

  test('a home a killed useradd left unusable (missing, root-owned, mode 0) is repaired before anything goes in it', () => {
    const fresh = converged();
    delete fresh.record;
    fresh.homeUnusable = 'is missing';
    fresh.baseExists = false;
    fresh.installDir = false;
    const p = planConverge(input(fresh));
    const first = p.steps.findIndex((s) => s.kind === 'chown-home');
    expect(p.steps[first]).toMatchObject({ uid: user.uid, gid: user.gid, reason: expect.stringContaining('the home is missing') });
    expect(p.steps[first]).not.toHaveProperty('drift');
    expect(first).toBeLessThan(kinds(p.steps).indexOf('create-install-dir'));
    // On an instance the agent had finished: drift, reported.
    const o = converged();
    o.homeUnusable = 'has mode 0000, its owner cannot use it';
    expect(planConverge(input(o)).steps).toEqual([expect.objectContaining({ kind: 'chown-home', drift: 'home of webapp1 has mode 0000, its owner cannot use it' })]);
    expect(kinds(planConverge(input(converged())).steps)).not.toContain('chown-home');
  });

  test('a user without subordinate id ranges gets them (before the image is pulled); on a finished instance it is drift', () => {
    const fresh = converged();
    delete fresh.record;
    fresh.subids = false;
    delete fresh.localImage;
    const steps = kinds(planConverge(input(fresh)).steps);
    expect(steps.indexOf('add-subids')).toBeGreaterThanOrEqual(0);
    expect(steps.indexOf('add-subids')).toBeLessThan(steps.indexOf('pull-image'));
    const o = converged();
    o.subids = false;
    expect(planConverge(input(o)).steps).toEqual([expect.objectContaining({ kind: 'add-subids', drift: 'subordinate ids of webapp1 removed' })]);
  });

  test('a stopped unit is started and reported; a disabled one enabled', () => {
    const o = converged();
    o.units = [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: false, active: false }];
    const p = planConverge(input(o));
    expect(kinds(p.steps)).toEqual(['enable-units', 'start-units']);
    expect(p.steps[1]!.drift).toBe('units stopped: webapp.service');
  });

  describe('an NS8 module (no ns8ctl.units label) starts its own units, as in NS8', () => {
    const ns8Labels = parseModuleLabels({ 'org.nethserver.tcp-ports-demand': '1', 'org.nethserver.images': SVC }, URL);
    const AGENT = { name: 'agent.service', file: 'agent.service', fileHash: 'a1', wanted: true, enabled: true, active: true, nodeLevel: { path: '/etc/systemd/user/agent.service', content: 'x' } };
    const agentHash = createHash('sha256').update('x').digest('hex');
    const withAgent = (o: ObservedInstance, own: ObservedInstance['units']): ObservedInstance => {
      o.units = [...own, { ...AGENT, fileHash: agentHash }];
      o.record!.units = Object.fromEntries(o.units.map((u) => [u.name, unitStamp(u.fileHash, envText)]));
      return o;
    };

    test('a unit the module has not enabled is neither enabled nor started (configure-module does it)', () => {
      const o = withAgent(converged(), [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: false, active: false }]);
      expect(planConverge(input(o, { labels: ns8Labels })).steps).toEqual([]);
      // The same observation under the agent's ownership enables and starts it.
      expect(kinds(planConverge(input(o, { labels: parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.tcp-ports-demand': '1', 'org.nethserver.images': SVC }, URL) })).steps)).toEqual(['enable-units', 'start-units']);
    });

    test('a fresh instance: unit files are reloaded and recorded, only the module agent is enabled and started', () => {
      const o = converged();
      delete o.record!.units;
      o.units = [
        { name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: false, active: false },
        { ...AGENT, fileHash: agentHash, enabled: false, active: false },
      ];
      const p = planConverge(input(o, { labels: ns8Labels }));
      expect(kinds(p.steps)).toEqual(['daemon-reload', 'enable-units', 'start-units', 'record-units']);
      expect(p.steps[1]).toMatchObject({ units: ['agent.service'] });
      expect(p.steps[2]).toMatchObject({ units: ['agent.service'] });
    });

    test('a unit the module enabled and that stopped is started again and reported; a running one is left alone', () => {
      const o = withAgent(converged(), [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: true, active: false }]);
      const p = planConverge(input(o, { labels: ns8Labels }));
      expect(kinds(p.steps)).toEqual(['start-units']);
      expect(p.steps[0]).toMatchObject({ units: ['webapp.service'], drift: 'units stopped: webapp.service' });
      o.units[0]!.active = true;
      expect(planConverge(input(o, { labels: ns8Labels })).steps).toEqual([]);
    });

    test('an enabled unit that runs once and exits (oneshot) is not started again when found inactive', () => {
      const o = withAgent(converged(), [{ name: 'setup.service', file: 'setup.service', fileHash: 'h1', wanted: true, enabled: true, active: false, runsOnce: true }]);
      expect(planConverge(input(o, { labels: ns8Labels })).steps).toEqual([]);
    });

    test('a unit the module started without the agent knowing is recorded, never restarted', () => {
      const o = withAgent(converged(), [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: true, active: true }]);
      o.record!.units = { 'agent.service': unitStamp(agentHash, envText) };
      expect(kinds(planConverge(input(o, { labels: ns8Labels })).steps)).toEqual(['daemon-reload', 'record-units']);
    });

    test('a new environment restarts only the module agent; a changed unit file only reloads', () => {
      const o = withAgent(converged(), [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: true, active: true }]);
      o.record!.units = { 'agent.service': unitStamp(agentHash, 'old env'), 'webapp.service': unitStamp('h0', 'old env') };
      const p = planConverge(input(o, { labels: ns8Labels }));
      expect(kinds(p.steps)).toEqual(['daemon-reload', 'restart-units', 'record-units']);
      expect(p.steps[1]).toMatchObject({ units: ['agent.service'] });
    });

    test('a unit that left the image is not stopped by the agent (the module owns it)', () => {
      const o = withAgent(converged(), []);
      o.record!.units = { ...o.record!.units, 'old.service': unitStamp('h0', envText) };
      expect(kinds(planConverge(input(o, { labels: ns8Labels })).steps)).toEqual(['record-units']);
    });
  });

  test('a removed image is pulled again and reported', () => {
    const o = converged();
    delete o.localImage;
    const p = planConverge(input(o));
    expect(p.steps[0]).toMatchObject({ kind: 'pull-image', drift: `image ${URL} removed` });
  });

  test('an update pulls the new image without reporting drift; the new image removed after it was extracted is drift', () => {
    const NEW = '127.0.0.1:5000/ns8ctl-examples/webapp:1.1.0';
    const newLabels = parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.tcp-ports-demand': '1', 'org.nethserver.images': SVC }, NEW);
    const newImage = { ...image, url: NEW, id: 'img2', digest: 'sha256:d2' };
    // Round one of the update 1.0.0 -> 1.1.0: the new image is not in the user's store yet.
    const o = converged();
    delete o.localImage;
    const p = planConverge(input(o, { imageUrl: NEW, labels: newLabels, image: newImage, desired: { ...desired, generation: 2, spec: { image: NEW, node: 1 } } }));
    expect(p.steps[0]).toMatchObject({ kind: 'pull-image', url: NEW });
    expect(p.steps.filter((s) => s.drift)).toEqual([]);
    // Pulled (the record names it) but not extracted yet, then lost: still no drift.
    const pulled = converged();
    delete pulled.localImage;
    pulled.record = { ...pulled.record!, imageUrl: NEW, image: newImage };
    expect(planConverge(input(pulled, { imageUrl: NEW, labels: newLabels, image: newImage })).steps.filter((s) => s.drift)).toEqual([]);
    // Extracted for 1.1.0 (the update done), then removed from the host: drift.
    const done = converged();
    delete done.localImage;
    done.record = { ...done.record!, imageUrl: NEW, image: newImage, extractedImageId: 'img2', uiImageId: 'img2' };
    expect(planConverge(input(done, { imageUrl: NEW, labels: newLabels, image: newImage })).steps[0]).toMatchObject({ kind: 'pull-image', drift: `image ${NEW} removed` });
  });

  test('a unit already running without a stamp (home kept from an earlier removal) is restarted, not just started', () => {
    const o = converged();
    o.record = { ...o.record!, units: {} };
    expect(kinds(planConverge(input(o)).steps)).toEqual(['daemon-reload', 'restart-units', 'record-units']);
  });

  test('a changed unit file is reloaded and restarted, not started twice', () => {
    const o = converged();
    o.units = [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h2', wanted: true, enabled: true, active: true }];
    expect(kinds(planConverge(input(o)).steps)).toEqual(['daemon-reload', 'restart-units', 'record-units']);
  });

  test('a larger port demand (an update) grows the range and rewrites the environment next round', () => {
    const l3 = parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.tcp-ports-demand': '3', 'org.nethserver.images': SVC }, URL);
    const p = planConverge(input(converged(), { labels: l3 }));
    expect(kinds(p.steps)).toEqual(['allocate-ports', 'set-ports-demand']);
    expect(p.steps[0]).toMatchObject({ proto: 'tcp', demand: 3, reason: expect.stringContaining('first port kept') });
    expect(p.waiting).toContain('environment: waits for the port allocation');
  });

  test('a smaller or no port demand (an update, as NS8) keeps the range and TCP_PORT; only the demand hash changes', () => {
    const l0 = parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.images': SVC }, URL);
    const p = planConverge(input(converged(), { labels: l0 }));
    expect(p.steps).toEqual([expect.objectContaining({ kind: 'set-ports-demand', proto: 'tcp', demand: 0 })]);
    expect(p.waiting).toEqual([]);
    const o = converged();
    o.portsDemand = {};
    expect(planConverge(input(o, { labels: l0 }))).toEqual({ steps: [], waiting: [] });
  });

  test('missing default-instance keys are claimed while the instance is added (NS8 add-module step 8); keys held by another instance are left alone', () => {
    const o = converged();
    o.record = { ...o.record!, announced: false };
    o.defaultInstance = { module: 'webapp', cluster: null, node: 'webapp7' };
    expect(planConverge(input(o)).steps).toEqual([
      expect.objectContaining({ kind: 'set-default-instance', module: 'webapp', cluster: true, node: false, reason: 'cluster/default_instance/webapp missing: webapp1 becomes the default webapp instance' }),
    ]);
    o.defaultInstance = { module: 'webapp', cluster: 'webapp7', node: null };
    expect(planConverge(input(o)).steps).toEqual([expect.objectContaining({ kind: 'set-default-instance', cluster: false, node: true })]);
    o.defaultInstance = { module: 'webapp', cluster: 'webapp7', node: 'webapp7' };
    expect(kinds(planConverge(input(o)).steps)).toEqual(['publish-added']);
    // Once added (module-added published), a key emptied by the removal of the default instance stays empty, as in NS8.
    const added = converged();
    added.defaultInstance = { module: 'webapp', cluster: null, node: null };
    expect(kinds(planConverge(input(added)).steps)).not.toContain('set-default-instance');
  });

  test('agent.env names the Redis the node agent uses (REDIS_ADDRESS); an instance without it is rewritten once', () => {
    const o = converged();
    const withAddress = { node: 1, redisAddress: '10.5.4.1:6379' };
    const p = planConverge(input(o, { node: withAddress }));
    expect(p.steps).toEqual([expect.objectContaining({ kind: 'write-agent-env', reason: expect.stringContaining('Redis address') }), expect.objectContaining({ kind: 'apply-acl' })]);
    o.agentEnv = agentEnvironment(installDir, 'secretpassword0123', 'webapp1', '10.5.4.1:6379');
    expect(o.agentEnv.REDIS_ADDRESS).toBe('10.5.4.1:6379');
    expect(planConverge(input(o, { node: withAddress })).steps).toEqual([]);
    expect(kinds(planConverge(input(o, { node: { node: 1, redisAddress: '127.0.0.1:6380' } })).steps)).toEqual(['write-agent-env', 'apply-acl']);
  });

  test('a wrong agent.env mode or a missing ACL user is repaired', () => {
    const o = converged();
    o.agentEnvMode = 0o644;
    expect(kinds(planConverge(input(o)).steps)).toEqual(['write-agent-env', 'apply-acl']);
    const o2 = converged();
    delete o2.aclLine;
    const p2 = planConverge(input(o2));
    expect(p2.steps).toEqual([expect.objectContaining({ kind: 'apply-acl', drift: 'Redis ACL user module/webapp1 removed' })]);
  });

  test('without systemd, no unit step is planned and the rest converges', () => {
    const o = converged();
    o.units = [{ name: 'webapp.service', file: 'webapp.service', fileHash: 'h1', wanted: true, enabled: false, active: undefined }];
    delete o.linger;
    o.record = { ...o.record!, units: {} };
    const p = planConverge(input(o, { node: { node: 1, systemdMissing: 'systemd not running on this host' } }));
    expect(p).toEqual({ steps: [], waiting: [] });
  });

  test('switching between rootless and rootfull is refused', () => {
    const lf = parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.rootfull': '1' }, URL);
    const p = planConverge(input(converged(), { labels: lf }));
    expect(p.blocked?.code).toBe('rootfull_changed');
    expect(p.steps).toEqual([]);
  });

  test('volume base paths get a <base>/<id> dir, remembered for removal', () => {
    const o = converged();
    const p = planConverge(input(o, { desired: { ...desired, spec: { ...desired.spec, volumes: { data: '/srv/disk1', logs: '/srv/disk1' } } } }));
    expect(p.steps).toEqual([expect.objectContaining({ kind: 'create-volume-dirs', bases: ['/srv/disk1'], reason: 'volume dirs missing: /srv/disk1/webapp1' })]);
    o.volumeDirs = { '/srv/disk1': true };
    o.record = { ...o.record!, volumeBases: ['/srv/disk1'] };
    expect(planConverge(input(o, { desired: { ...desired, spec: { ...desired.spec, volumes: { data: '/srv/disk1' } } } })).steps).toEqual([]);
    const r = planRemoval({ id: 'webapp1', policy: 'Delete', node: { node: 1 }, rootfull: false, observed: o, desiredPresent: true });
    expect(r.steps.find((s) => s.kind === 'erase-data')).toMatchObject({ volumeBases: ['/srv/disk1'] });
  });

  test('authorizations from the label are stored with self:selfadm; an invalid label blocks the instance', () => {
    const la = parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.tcp-ports-demand': '1', 'org.nethserver.images': SVC, 'org.nethserver.authorizations': 'traefik@any:routeadm node:portsadm' }, URL);
    const p = planConverge(input(converged(), { labels: la }));
    expect(p.steps).toEqual([expect.objectContaining({ kind: 'set-authorizations', authorizations: ['node:portsadm', 'self:selfadm', 'traefik@any:routeadm'] })]);
    const bad = parseModuleLabels({ 'ns8ctl.units': 'agent', 'org.nethserver.authorizations': 'cluster:owner' }, URL);
    expect(planConverge(input(converged(), { labels: bad })).blocked).toMatchObject({ code: 'image_label_invalid', message: expect.stringContaining('cluster:owner') });
  });

  test('an owed create-module or update-module runs once everything else is in place and the module agent runs', () => {
    const agentHash = createHash('sha256').update('x').digest('hex');
    const agent = { name: 'agent.service', file: 'agent.service', fileHash: agentHash, wanted: true, enabled: true, active: true, nodeLevel: { path: '/etc/systemd/user/agent.service', content: 'x' } };
    const o = converged();
    o.units = [...o.units, agent];
    o.record = { ...o.record!, units: { ...o.record!.units, 'agent.service': unitStamp(agentHash, envText) }, lifecycle: { action: 'create-module', image: URL } };
    const withVolumes = { ...desired, spec: { ...desired.spec, volumes: { data: '/srv/disk1' } } };
    o.volumeDirs = { '/srv/disk1': true };
    o.record.volumeBases = ['/srv/disk1'];
    expect(planConverge(input(o, { desired: withVolumes })).steps).toEqual([expect.objectContaining({ kind: 'run-lifecycle', action: 'create-module', data: { images: [SVC], volumes: { data: '/srv/disk1' } } })]);
    // Not while other steps are pending, nor while the module agent is down, nor for another image.
    const busy = structuredClone(o);
    busy.flags = [];
    expect(kinds(planConverge(input(busy, { desired: withVolumes })).steps)).toEqual(['set-flags']);
    const down = structuredClone(o);
    down.units = down.units.map((u) => (u.nodeLevel ? { ...u, active: false } : u));
    expect(kinds(planConverge(input(down, { desired: withVolumes })).steps)).not.toContain('run-lifecycle');
    const other = structuredClone(o);
    other.record!.lifecycle = { action: 'update-module', image: 'r/webapp:9' };
    expect(planConverge(input(other, { desired: withVolumes })).steps).toEqual([]);
    other.record!.lifecycle = { action: 'update-module', image: URL };
    expect(planConverge(input(other, { desired: withVolumes })).steps).toEqual([expect.objectContaining({ kind: 'run-lifecycle', action: 'update-module', data: { module_url: URL, force: false } })]);
  });

  test('a Module desired again while being removed cancels the removal first', () => {
    const o = converged();
    o.record = { ...o.record!, removing: { removalPolicy: 'Preserve' } };
    expect(kinds(planConverge(input(o)).steps)).toEqual(['cancel-removal']);
  });
});

describe('the node planner removes an instance', () => {
  test('rootless, data preserved: linger off, processes, user, ui, ports, ACL, keys, event, record, finalizer; no data erased', () => {
    const p = planRemoval({ id: 'webapp1', policy: 'Preserve', node: { node: 1 }, rootfull: false, observed: converged(), desiredPresent: true });
    expect(kinds(p.steps)).toEqual(['mark-removing', 'disable-linger', 'kill-processes', 'remove-user', 'remove-ui', 'free-ports', 'delete-acl', 'delete-module-keys', 'publish-removed', 'forget-record', 'release-finalizer']);
  });
  test('policy Delete erases the data too', () => {
    const p = planRemoval({ id: 'webapp1', policy: 'Delete', node: { node: 1 }, rootfull: false, observed: converged(), desiredPresent: true });
    expect(kinds(p.steps)).toContain('erase-data');
    expect(p.steps.find((s) => s.kind === 'mark-removing')?.reason).toMatch(/DATA DELETED/);
  });
  test('a removal interrupted after the host cleanup only finishes the bookkeeping', () => {
    const o: ObservedInstance = { id: 'webapp1', subids: false, linger: false, installDir: false, baseExists: true, volumeDirs: {}, serviceImages: {}, imagerootIntact: false, imagerootMissing: [], uiPresent: false, envText: '', envRedis: {}, ports: {}, flags: [], authorizations: [], roles: { owner: [], reader: [] }, portsDemand: {}, units: [] };
    const p = planRemoval({ id: 'webapp1', policy: 'Preserve', node: { node: 1 }, rootfull: false, observed: o, desiredPresent: true });
    expect(kinds(p.steps)).toEqual(['delete-module-keys', 'publish-removed', 'release-finalizer']);
  });
  test('rootfull: system units stopped, disabled and removed; images removed', () => {
    const o = converged();
    delete o.user;
    o.units = [{ name: 'demo1-demo.service', file: 'demo1-demo.service', fileHash: 'h', wanted: true, enabled: true, active: true, source: '/x', sourceHash: 'h' }];
    o.record = { ...o.record!, image: { ...image, labels: { 'org.nethserver.images': SVC } } };
    const p = planRemoval({ id: 'demo1', policy: 'Preserve', node: { node: 1 }, rootfull: true, observed: { ...o, id: 'demo1' }, desiredPresent: true });
    expect(kinds(p.steps).slice(0, 6)).toEqual(['mark-removing', 'stop-units', 'disable-units', 'install-system-units', 'daemon-reload', 'remove-images']);
    expect(p.steps.find((s) => s.kind === 'remove-images')).toMatchObject({ refs: ['img1', URL, SVC] });
  });
  test('a rootless instance whose image was pulled as root to read labels gets that copy removed', () => {
    const o = converged();
    o.record = { ...o.record!, rootCopy: URL };
    const p = planRemoval({ id: 'webapp1', policy: 'Preserve', node: { node: 1 }, rootfull: false, observed: o, desiredPresent: true });
    expect(p.steps.find((s) => s.kind === 'remove-images')).toMatchObject({ refs: [URL] });
    expect(planRemoval({ id: 'webapp1', policy: 'Preserve', node: { node: 1 }, rootfull: false, observed: converged(), desiredPresent: true }).steps.map((s) => s.kind)).not.toContain('remove-images');
  });
  test('destroy-module runs first while the module agent runs, until done or given up', () => {
    const o = converged();
    o.units = [...o.units, { name: 'agent.service', file: 'agent.service', fileHash: 'a1', wanted: true, enabled: true, active: true, nodeLevel: { path: '/etc/systemd/user/agent.service', content: 'x' } }];
    const p = planRemoval({ id: 'webapp1', policy: 'Delete', node: { node: 1 }, rootfull: false, observed: o, desiredPresent: true });
    expect(p.steps.slice(0, 2)).toEqual([expect.objectContaining({ kind: 'mark-removing' }), expect.objectContaining({ kind: 'run-destroy-module', data: { module_id: 'webapp1', preserve_data: false }, reason: expect.stringContaining('attempt 1 of 3') })]);
    o.record = { ...o.record!, destroy: { attempts: 3, done: true } };
    expect(kinds(planRemoval({ id: 'webapp1', policy: 'Delete', node: { node: 1 }, rootfull: false, observed: o, desiredPresent: true }).steps)).not.toContain('run-destroy-module');
    expect(kinds(planRemoval({ id: 'webapp1', policy: 'Delete', node: { node: 1 }, rootfull: false, observed: converged(), desiredPresent: true }).steps)).not.toContain('run-destroy-module');
  });

  test('nothing left and no desired object: empty plan', () => {
    const o: ObservedInstance = { id: 'x1', subids: false, installDir: false, baseExists: false, volumeDirs: {}, serviceImages: {}, imagerootIntact: false, imagerootMissing: [], uiPresent: false, envText: '', envRedis: {}, ports: {}, flags: [], authorizations: [], roles: { owner: [], reader: [] }, portsDemand: {}, units: [] };
    expect(planRemoval({ id: 'x1', policy: 'Preserve', node: { node: 1 }, rootfull: false, observed: o, desiredPresent: false }).steps).toEqual([]);
  });
});

describe('the node planner on a move target and a restore', () => {
  /** An instance being set up on node 2 from node 1: user, dirs and image here, nothing else yet. */
  function arriving(): ObservedInstance {
    const { envFile: _e, ...o } = converged();
    const { managedEnv: _m, units: _u, announced: _a, ...rest } = o.record!;
    return { ...o, record: { ...rest, node: 2, move: { from: 1, done: false } }, envRedis: env(), units: [] };
  }
  const at2 = { node: { node: 2 }, desired: { ...desired, spec: { ...desired.spec, node: 2 } } };

  test('while node 1 has not listed its data, the move waits and nothing else is planned', () => {
    const p = planConverge(input(arriving(), { ...at2, move: { from: 1, to: 2, state: 'requested' } }));
    expect(p.steps).toEqual([]);
    expect(p.waiting.join(' ')).toMatch(/waits for node 1 to list the data/);
  });

  test('node 1 ready: the receiver starts for its volumes; the environment and units wait', () => {
    const p = planConverge(input(arriving(), { ...at2, move: { from: 1, to: 2, state: 'source-ready', volumes: ['data'] } }));
    expect(kinds(p.steps)).toEqual(['receive-state']);
    expect(p.steps[0]).toMatchObject({ from: 1, volumes: ['data'] });
  });

  test('receiving: nothing while the receiver runs, the receiver again when it is gone (agent restarted)', () => {
    const mv = { from: 1, to: 2, state: 'receiving' as const, address: '10.0.0.12', port: 40000 };
    expect(planConverge(input(arriving(), { ...at2, move: mv, receiverAlive: true })).steps).toEqual([]);
    expect(kinds(planConverge(input(arriving(), { ...at2, move: mv, receiverAlive: false })).steps)).toEqual(['receive-state']);
  });

  test('final pass sent: the receive is finished; then the instance converges, and the move completes once nothing else is left', () => {
    expect(kinds(planConverge(input(arriving(), { ...at2, move: { from: 1, to: 2, state: 'sent' } })).steps)).toEqual(['finish-receive']);
    const here = converged();
    here.record = { ...here.record!, move: { from: 1, done: true } };
    expect(kinds(planConverge(input(here, { move: { from: 1, to: 1, state: 'sent' } })).steps)).toEqual(['complete-move']);
  });

  test('a clone waits on its own record: the source named in the waiting message, its last failure shown', () => {
    const o = arriving();
    o.record = { ...o.record!, move: { from: 1, done: false, source: 'webapp9' } };
    const waits = planConverge(input(o, { ...at2, move: { from: 1, to: 2, source: 'webapp9', state: 'requested', lastError: 'rsync: connection refused' } }));
    expect(waits.steps).toEqual([]);
    expect(waits.waiting).toEqual(['clone: waits for webapp9 on node 1 to list the data to send (its last attempt failed: rsync: connection refused)']);
    // A move record of the same id is not this clone's: the clone waits, nothing is received.
    expect(planConverge(input(o, { ...at2, move: { from: 1, to: 2, state: 'source-ready', volumes: [] } })).waiting.join(' ')).toMatch(/clone record from webapp9 on node 1 is gone/);
  });

  test('a clone receives, imports the source environment and completes with its source named in every step', () => {
    const o = arriving();
    o.record = { ...o.record!, move: { from: 1, done: false, source: 'webapp9' } };
    const rs = planConverge(input(o, { ...at2, move: { from: 1, to: 2, source: 'webapp9', state: 'source-ready', volumes: ['data'] } }));
    expect(rs.steps).toEqual([expect.objectContaining({ kind: 'receive-state', from: 1, source: 'webapp9', volumes: ['data'] })]);
    expect(planConverge(input(o, { ...at2, move: { from: 1, to: 2, source: 'webapp9', state: 'sent' } })).steps).toEqual([expect.objectContaining({ kind: 'finish-receive', source: 'webapp9' })]);
    const here = converged();
    here.record = { ...here.record!, move: { from: 1, done: true, source: 'webapp9' } };
    const done = planConverge(input(here));
    expect(done.steps).toEqual([expect.objectContaining({ kind: 'complete-move', from: 1, source: 'webapp9' })]);
    expect(done.steps[0]!.reason).toMatch(/cloned from webapp9 on node 1/);
  });

  test('a pending restore stops the running services first, then restores; the rest waits', () => {
    const o = converged();
    o.record = { ...o.record!, restore: { destination: 'nas', snapshot: 'latest', from: 'webapp1', done: false, request: 'r1' } };
    const p = planConverge(input(o));
    expect(kinds(p.steps)).toEqual(['stop-units', 'restore-data']);
    expect(p.steps[1]).toMatchObject({ destination: 'nas', snapshot: 'latest', from: 'webapp1' });
  });
});
