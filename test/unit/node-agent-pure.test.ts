import { imageEnvName } from '../../src/node-agent/image-env-name.js';
import { moduleFlags, parseModuleLabels } from '../../src/node-agent/labels.js';
import { assertEnvironment, changedNames, parseEnvironment, renderEnvironment, sameEnvironment } from '../../src/node-agent/environment-file.js';
import { managedEnvironment, mergeEnvironment } from '../../src/node-agent/module-env.js';
import { parseNodePorts, parseRange, portEnvironment } from '../../src/node-agent/ports.js';
import { findImage, imageRepository, normalizeImageRef } from '../../src/host/image-store.js';
import { freeSubidRange, parsePasswd, parseSubids } from '../../src/node-agent/host/passwd.js';
import { isStartableUnit, parseInstallSection } from '../../src/node-agent/host/systemd.js';
import { aclLineMatches, moduleAclRules, passwordSha256 } from '../../src/node-agent/redis-acl.js';
import { ownerPrefix, shq } from '../../src/node-agent/host/owner.js';
import { systemUnitNames } from '../../src/node-agent/observe.js';
import { Redis } from 'ioredis';
import { Ns8ctlError } from '../../src/errors.js';
import { createLogger } from '../../src/runtime/log.js';
import { logReconcileResult } from '../../src/cli/commands/node-agent.js';
import { redisAddressOf } from '../../src/node-agent/deps.js';
import { REASONS, TERMINAL_REASONS } from '../../src/node-agent/reconcile.js';
import { parseStatus, sameStatus, statusFields } from '../../src/node-agent/status.js';
import type { ModuleStatus } from '../../src/node-agent/types.js';

describe('service image variable names follow the seeds rule', () => {
  test.each([
    ['docker.io/prom/node-exporter:v1.8.2', 'NODE_EXPORTER_IMAGE'],
    ['ghcr.io/x/2fauth:5.0', 'I2FAUTH_IMAGE'],
    ['docker.io/library/mysql:10.3-alpine', 'MYSQL_IMAGE'],
    ['127.0.0.1:5000/ns8ctl-examples/webapp-httpd:1.0.0', 'WEBAPP_HTTPD_IMAGE'],
    ['quay.io/a/b.c+d@sha256:abcd', 'B_C_D_IMAGE'],
    ['redis', 'REDIS_IMAGE'],
  ])('%s -> %s', (url, name) => {
    expect(imageEnvName(url)).toBe(name);
  });
});

describe('image labels are read as NS8 reads them', () => {
  test('defaults for an image without labels: rootless, no ports, imageroot and ui', () => {
    expect(parseModuleLabels({}, 'x')).toEqual({ rootfull: false, tcpPortsDemand: 0, udpPortsDemand: 0, images: [], flags: [], authorizations: [], imageroot: 'imageroot', uiroot: 'ui', units: 'module' });
  });
  test('hyphenated names, space-separated lists, rootfull 1', () => {
    const l = parseModuleLabels(
      { 'org.nethserver.rootfull': '1', 'org.nethserver.tcp-ports-demand': '3', 'org.nethserver.udp-ports-demand': '1', 'org.nethserver.images': ' a:1  b:2 a:1', 'org.nethserver.flags': 'core_module rootless', 'org.nethserver.authorizations': 'traefik@any:routeadm' },
      'x',
    );
    expect(l).toMatchObject({ rootfull: true, tcpPortsDemand: 3, udpPortsDemand: 1, images: ['a:1', 'b:2'], flags: ['core_module'], authorizations: ['traefik@any:routeadm'] });
    expect(moduleFlags(l)).toEqual(['core_module', 'rootfull']);
    expect(moduleFlags(parseModuleLabels({}, 'x'))).toEqual(['rootless']);
  });
  test('a non-integer demand is an error naming the image and the label', () => {
    expect(() => parseModuleLabels({ 'org.nethserver.tcp-ports-demand': 'two' }, 'reg/x:1')).toThrow(/reg\/x:1: label org.nethserver.tcp-ports-demand="two" must be an integer/);
  });
  test('an imageroot label escaping with .. is refused', () => {
    expect(() => parseModuleLabels({ 'org.nethserver.imageroot': '../etc' }, 'x')).toThrow(/org.nethserver.imageroot/);
  });
});

describe('state/environment files', () => {
  test('render sorts KEY=VALUE lines and parse splits at the first =', () => {
    const text = renderEnvironment('m1', { B: '2', A: 'x=y', C: '' });
    expect(text).toBe('A=x=y\nB=2\nC=\n');
    expect(parseEnvironment(text + 'garbage line\n')).toEqual({ A: 'x=y', B: '2', C: '' });
  });
  test('a value with a newline is refused with a clear error', () => {
    expect(() => renderEnvironment('webapp1', { TOKEN: 'a\nEVIL=1' })).toThrow(/webapp1: the value of TOKEN contains a newline/);
    expect(() => assertEnvironment('webapp1', { X: 'a\rb' })).toThrow(/carriage return/);
    expect(() => assertEnvironment('webapp1', { '1X': 'a' })).toThrow(/name "1X" is not allowed/);
  });
  test('sameEnvironment and changedNames compare names and values', () => {
    expect(sameEnvironment({ a: '1' }, { a: '1' })).toBe(true);
    expect(sameEnvironment({ a: '1' }, { a: '2' })).toBe(false);
    expect(sameEnvironment({ a: '1' }, { a: '1', b: '' })).toBe(false);
    expect(sameEnvironment(undefined, { a: '1' })).toBe(false);
    expect(changedNames({ a: '1', b: '2' }, { a: '1', b: '3', c: '4' })).toEqual(['b', 'c']);
  });
});

describe('port variables follow NS8 semantics', () => {
  test('demand 1: TCP_PORT and TCP_PORTS, no range', () => {
    expect(portEnvironment('tcp', { start: 20000, end: 20000 })).toEqual({ TCP_PORT: '20000', TCP_PORTS: '20000' });
  });
  test('demand 3: TCP_PORT, TCP_PORTS_RANGE, TCP_PORTS', () => {
    expect(portEnvironment('tcp', { start: 20001, end: 20003 })).toEqual({ TCP_PORT: '20001', TCP_PORTS_RANGE: '20001-20003', TCP_PORTS: '20001,20002,20003' });
  });
  test('demand 9: no TCP_PORTS list; udp uses the UDP_ prefix', () => {
    expect(portEnvironment('udp', { start: 20000, end: 20008 })).toEqual({ UDP_PORT: '20000', UDP_PORTS_RANGE: '20000-20008' });
    expect(portEnvironment('tcp', undefined)).toEqual({});
  });
  test('ranges parse and node hashes group by instance', () => {
    expect(parseRange('20000-20002')).toEqual({ start: 20000, end: 20002 });
    expect(parseRange('20002-20000')).toBeUndefined();
    expect(parseRange('x')).toBeUndefined();
    expect(parseNodePorts({ 'a1/tcp': '20000-20000', 'a1/udp': '20001-20002', 'b1/tcp': 'junk' })).toEqual(new Map([['a1', { tcp: { start: 20000, end: 20000 }, udp: { start: 20001, end: 20002 } }]]));
  });
});

describe('the managed environment', () => {
  const base = { id: 'webapp1', node: 1, uuid: 'u-1', image: { url: 'r/webapp:1', id: 'abc', digest: 'sha256:d', repoDigest: 'r/webapp@sha256:d' }, serviceImages: ['r/webapp-httpd:1.0.0'], ports: { tcp: { start: 20000, end: 20000 } } };
  test('has the identity, image, service image and port variables, with NS8 misspelling kept', () => {
    expect(managedEnvironment(base)).toEqual({
      MODULE_ID: 'webapp1',
      NODE_ID: '1',
      MODULE_UUID: 'u-1',
      IMAGE_ID: 'abc',
      IMAGE_URL: 'r/webapp:1',
      IMAGE_DIGEST: 'sha256:d',
      IMAGE_REPODIGEST: 'r/webapp@sha256:d',
      IMAGE_REOPODIGEST: 'r/webapp@sha256:d',
      WEBAPP_HTTPD_IMAGE: 'r/webapp-httpd:1.0.0',
      TCP_PORT: '20000',
      TCP_PORTS: '20000',
    });
  });
  test('merging keeps the module own variables and drops managed ones no longer wanted', () => {
    const merged = mergeEnvironment({ MY_SETTING: 'x', TCP_PORTS_RANGE: '1-2', TCP_PORT: '1' }, { TCP_PORT: '20000' }, ['TCP_PORT', 'TCP_PORTS_RANGE']);
    expect(merged).toEqual({ MY_SETTING: 'x', TCP_PORT: '20000' });
  });
});

describe('image references are matched as podman stores them', () => {
  test('normalisation adds docker.io/library and :latest', () => {
    expect(normalizeImageRef('mysql')).toBe('docker.io/library/mysql:latest');
    expect(normalizeImageRef('prom/node-exporter:v1')).toBe('docker.io/prom/node-exporter:v1');
    expect(normalizeImageRef('127.0.0.1:5000/a/b')).toBe('127.0.0.1:5000/a/b:latest');
    expect(normalizeImageRef('localhost/x:1')).toBe('localhost/x:1');
    expect(imageRepository('127.0.0.1:5000/a/b:1.0.0')).toBe('127.0.0.1:5000/a/b');
  });
  test('findImage by name and by digest', () => {
    const imgs = [
      { id: '1', digest: 'sha256:aa', names: ['127.0.0.1:5000/a/b:1.0.0'], digests: ['sha256:aa'] },
      { id: '2', digest: 'sha256:bb', names: ['docker.io/library/redis:latest'], digests: [] },
    ];
    expect(findImage(imgs, '127.0.0.1:5000/a/b:1.0.0')?.id).toBe('1');
    expect(findImage(imgs, 'redis')?.id).toBe('2');
    expect(findImage(imgs, '127.0.0.1:5000/a/b@sha256:aa')?.id).toBe('1');
    expect(findImage(imgs, '127.0.0.1:5000/a/b:2.0.0')).toBeUndefined();
  });
});

describe('host files are parsed without spawning processes', () => {
  test('passwd and subid files', () => {
    const users = parsePasswd('root:x:0:0:root:/root:/bin/bash\nwebapp1:x:1001:1001::/home/webapp1:/sbin/nologin\nbroken\n');
    expect(users.get('webapp1')).toEqual({ name: 'webapp1', uid: 1001, gid: 1001, home: '/home/webapp1', shell: '/sbin/nologin' });
    expect(users.size).toBe(2);
    expect([...parseSubids('webapp1:100000:65536\nzero:1:0\n')]).toEqual(['webapp1']);
  });
  test('a free subordinate id range: first fit at or above 100000, clear of both files', () => {
    expect(freeSubidRange(['', ''])).toBe(100000);
    expect(freeSubidRange(['a:100000:65536\nb:165536:65536\n', ''])).toBe(231072);
    // A hole big enough is reused; one too small is skipped; subgid lines count too.
    expect(freeSubidRange(['a:100000:65536\nc:300000:65536\n', 'x:165536:1000\n'])).toBe(166536);
    expect(freeSubidRange(['a:100000:65536\nc:200000:65536\n'])).toBe(265536);
    expect(freeSubidRange(['low:1000:10\n'])).toBe(100000);
    expect(freeSubidRange(['all:100000:600000001\n'])).toBeUndefined();
  });
  test('unit [Install] sections and which units are started', () => {
    expect(parseInstallSection('[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=default.target multi-user.target\nRequiredBy=x.target\n')).toEqual({
      hasInstall: true,
      wantedBy: ['default.target', 'multi-user.target'],
      requiredBy: ['x.target'],
    });
    expect(parseInstallSection('[Service]\nExecStart=/bin/true\n').hasInstall).toBe(false);
    expect(isStartableUnit('webapp.service')).toBe(true);
    expect(isStartableUnit('backup.timer')).toBe(true);
    expect(isStartableUnit('worker@.service')).toBe(false);
    expect(isStartableUnit('app.target')).toBe(false);
  });
  test('commands for a module user run through runuser with its HOME; words are shell-quoted', () => {
    expect(ownerPrefix({ kind: 'root' })).toEqual([]);
    expect(ownerPrefix({ kind: 'user', name: 'w1', uid: 1001, gid: 1001, home: '/home/w1' }, () => false)).toEqual([
      'runuser', '-u', 'w1', '--', 'env', '-u', 'DBUS_SESSION_BUS_ADDRESS', '-u', 'XDG_RUNTIME_DIR', 'HOME=/home/w1', 'USER=w1', 'LOGNAME=w1',
    ]);
    expect(shq("it's")).toBe(`'it'\\''s'`);
    expect(shq('/a/b:c')).toBe('/a/b:c');
  });
});

describe('module ACL rules', () => {
  test('NS8 rule list, preceded by reset', () => {
    const rules = moduleAclRules('webapp1', 'h');
    expect(rules.slice(0, 3)).toEqual(['reset', 'on', '#h']);
    expect(rules).toEqual(expect.arrayContaining(['~module/webapp1/*', '~task/module/webapp1/*', '%R~cluster/*', '%R~node/*', '%R~module/*', '%R~private/agents/*', '&progress/module/webapp1/*', '&module/webapp1/event/*', '+@read', '+@write', '-@admin']));
  });
  test('an ACL LIST line matches only with the right password and patterns', () => {
    const sha = passwordSha256('pw');
    const line = `user module/w1 on sanitize-payload #${sha} ~module/w1/* ~task/module/w1/* %R~cluster/* %R~node/* %R~module/* %R~private/agents/* resetchannels &progress/module/w1/* &module/w1/event/* -@all +@read`;
    expect(aclLineMatches(line, 'w1', 'pw')).toBe(true);
    expect(aclLineMatches(line, 'w1', 'other')).toBe(false);
    expect(aclLineMatches(line + ' ~cluster/*', 'w1', 'pw')).toBe(false);
    expect(aclLineMatches(undefined, 'w1', 'pw')).toBe(false);
  });
});

describe('rootfull unit names', () => {
  test('a template runs as <name>@<id>; other files are prefixed with the id', () => {
    expect(systemUnitNames('rootfull-demo1', 'rootfull-demo@.service')).toEqual({ file: 'rootfull-demo@.service', name: 'rootfull-demo@rootfull-demo1.service' });
    expect(systemUnitNames('samba1', 'samba-dc.service')).toEqual({ file: 'samba1-samba-dc.service', name: 'samba1-samba-dc.service' });
    expect(systemUnitNames('samba1', 'samba1-dc.service')).toEqual({ file: 'samba1-dc.service', name: 'samba1-dc.service' });
  });
});

describe('status, Redis address and log lines of the node agent', () => {
  test('targetImage is stored only while it differs from the running image, and read back', () => {
    const base: ModuleStatus = { id: 'web1', node: 1, observedGeneration: 2, conditions: [], imageUrl: 'r/web:1.0.0', imageDigest: 'sha256:a', ports: {}, units: [], drift: [] };
    expect(statusFields(base)).not.toHaveProperty('targetImage');
    const pending = { ...base, targetImage: 'r/web:2.0.0' };
    expect(statusFields(pending).targetImage).toBe('r/web:2.0.0');
    expect(parseStatus('web1', statusFields(pending))).toEqual(pending);
    expect(parseStatus('web1', statusFields(base))).toEqual(base);
    expect(sameStatus(base, pending)).toBe(false);
  });

  test('the Redis address written to agent.env is host:port of the node agent connection (rediss:// over TLS, none for a socket)', () => {
    const clients = [new Redis({ host: '10.5.4.1', port: 6380, lazyConnect: true }), new Redis({ host: 'leader', port: 6379, tls: {}, lazyConnect: true }), new Redis({ path: '/run/redis.sock', lazyConnect: true })];
    expect(clients.map(redisAddressOf)).toEqual(['10.5.4.1:6380', 'rediss://leader:6379', undefined]);
    for (const c of clients) c.disconnect();
  });

  test('repository resolution codes are ImageResolutionFailed (terminal); an unreachable repository is retried', () => {
    for (const code of ['module_not_found', 'version_not_found', 'invalid_version_spec', 'invalid_image_spec', 'image_resolution_unavailable']) {
      expect(REASONS[code]).toBe('ImageResolutionFailed');
    }
    expect(TERMINAL_REASONS.has('ImageResolutionFailed')).toBe(true);
    expect(REASONS.repository_not_accessible).toBe('RepositoryUnreachable');
    expect(TERMINAL_REASONS.has('RepositoryUnreachable')).toBe(false);
  });

  test('one log line per instance reconciled, with id, outcome, duration and reason; unchanged instances write none', () => {
    const lines: string[] = [];
    const logger = createLogger('json', (l) => lines.push(l), () => new Date('2025-01-01T00:00:00Z'));
    const degraded = { id: 'web2', node: 1, observedGeneration: 3, imageUrl: 'r/web:1.0.0', imageDigest: '', targetImage: 'r/web:0.9.0', ports: {}, units: [], drift: [], conditions: [{ type: 'Ready' as const, status: 'False' as const, reason: 'UpdateRefused', message: 'm' }, { type: 'Degraded' as const, status: 'True' as const, reason: 'UpdateRefused', message: 'm' }] };
    logReconcileResult(logger, {
      node: 1,
      instances: [
        { id: 'web1', outcome: 'unchanged', applied: [], drift: [], retry: false, durationMs: 1 },
        { id: 'web2', outcome: 'blocked', applied: [{ id: 'web2', kind: 'start-units', units: ['a.service'], reason: 'r' }], drift: ['units stopped: a.service'], retry: false, durationMs: 42, status: degraded, error: new Ns8ctlError('UpdateRefused', 'refused') },
        { id: 'web3', outcome: 'removed', applied: [], drift: [], retry: false, durationMs: 7 },
      ],
    });
    expect(lines.map((l) => JSON.parse(l))).toEqual([
      { time: '2025-01-01T00:00:00.000Z', level: 'warn', msg: 'instance reconciled', id: 'web2', node: 1, outcome: 'blocked', duration_ms: 42, reason: 'UpdateRefused', steps: 'start-units', drift: 'units stopped: a.service', target_image: 'r/web:0.9.0', error: 'refused' },
      { time: '2025-01-01T00:00:00.000Z', level: 'info', msg: 'instance reconciled', id: 'web3', node: 1, outcome: 'removed', duration_ms: 7, reason: 'Removed' },
    ]);
    const text: string[] = [];
    const { targetImage: _target, ...running } = degraded;
    logReconcileResult(createLogger('text', (l) => text.push(l), () => new Date('2025-01-01T00:00:00Z')), { node: 1, instances: [{ id: 'web3', outcome: 'converged', applied: [], drift: [], retry: false, durationMs: 5, status: { ...running, conditions: [{ type: 'Ready', status: 'True', reason: 'Converged', message: '' }] } }] });
    expect(text).toEqual(['2025-01-01T00:00:00.000Z info  instance reconciled id=web3 node=1 outcome=converged duration_ms=5 reason=Converged\n']);
  });
});

describe('units that run once', () => {
  test('Type=oneshot without RemainAfterExit=yes runs once and exits; with it, or another type, it stays active', async () => {
    const { runsOnceAndExits } = await import('../../src/node-agent/observe.js');
    expect(runsOnceAndExits('[Service]\nType=oneshot\nExecStart=/bin/true\n')).toBe(true);
    expect(runsOnceAndExits('[Service]\nType=oneshot\nRemainAfterExit=yes\n')).toBe(false);
    expect(runsOnceAndExits('[Service]\nType=forking\n')).toBe(false);
    expect(runsOnceAndExits('[Service]\nExecStart=/bin/sleep 1\n')).toBe(false);
  });
});
