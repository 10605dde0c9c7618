import { aclFileForStart, DEFAULT_USER_LOADING_RULE, renderAclFile } from '../../src/state/embedded-redis.js';
import { parseRedisUrl } from '../../src/state/connect.js';
import { renderRedisAclScript, renderRedisConf } from '../../src/sandbox/node-config.js';
import { renderRedisDropin } from '../../src/sandbox/rootfs-recipe.js';

describe('the ACL file a Redis starts with', () => {
  test('a new file: default switched off but allowed everything (the AOF replays), then the admin', () => {
    const lines = renderAclFile('pw').trim().split('\n');
    expect(lines[0]).toBe('user default off nopass ~* &* +@all');
    expect(lines[1]).toMatch(/^user ns8ctl on #[0-9a-f]{64} ~\* &\* \+@all$/);
  });

  test('a file ACL SAVE wrote: only the default line is replaced, module users and the admin are kept', () => {
    const saved = [
      'user default on nopass sanitize-payload ~cluster/* &* -@all +@read',
      'user module/web1 on #abc ~module/web1/* &* +@read',
      'user ns8ctl on #def ~* &* +@all',
      '',
    ].join('\n');
    expect(aclFileForStart(saved)).toBe([DEFAULT_USER_LOADING_RULE, 'user module/web1 on #abc ~module/web1/* &* +@read', 'user ns8ctl on #def ~* &* +@all', ''].join('\n'));
    expect(aclFileForStart('user ns8ctl on #def ~* &* +@all\n')).toBe(`${DEFAULT_USER_LOADING_RULE}\nuser ns8ctl on #def ~* &* +@all\n`);
  });
});

describe('sandbox nodes arrange the same around each start', () => {
  const input = { sandbox: 'dev', leaderAddress: '10.89.0.11', adminPassword: 'pw', registry: '10.89.0.2:5000' };
  test('redis.conf: root-only socket, fsync before acknowledging, on leader and replicas', () => {
    for (const nodeId of [1, 2]) {
      const conf = renderRedisConf({ ...input, nodeId });
      expect(conf).toMatch(/^unixsocket \/run\/redis\/redis-server\.sock$/m);
      expect(conf).toMatch(/^unixsocketperm 700$/m);
      expect(conf).toMatch(/^appendonly yes$/m);
      expect(conf).toMatch(/^appendfsync always$/m);
    }
  });
  test('the unit rewrites the default line before the start and sets the read-only rule after loading', () => {
    expect(renderRedisDropin()).toMatch(/^ExecStartPre=\+\/usr\/local\/sbin\/ns8ctl-redis-acl prepare$/m);
    expect(renderRedisDropin()).toMatch(/^ExecStartPost=\+\/usr\/local\/sbin\/ns8ctl-redis-acl apply$/m);
    const script = renderRedisAclScript();
    expect(script).toContain(`echo '${DEFAULT_USER_LOADING_RULE}'`);
    expect(script).toContain("grep -qx 'loading:0'");
    expect(script).toMatch(/ACL SETUSER default reset 'on' 'nopass' 'resetkeys' '~cluster\/\*'/);
    expect(script).not.toContain("'~ns8ctl/desired");
  });
});

describe('parseRedisUrl', () => {
  test('reads host, port, database, TLS and percent-decoded credentials', () => {
    expect(parseRedisUrl('redis://ns8ctl:p%40ss@10.0.0.1:6380/3')).toEqual({ host: '10.0.0.1', port: 6380, db: 3, tls: false, username: 'ns8ctl', password: 'p@ss' });
    expect(parseRedisUrl('rediss://h')).toEqual({ host: 'h', port: 6379, db: 0, tls: true });
    expect(parseRedisUrl('redis://[::1]:7000/')).toEqual({ host: '::1', port: 7000, db: 0, tls: false });
  });
  test.each([
    ['redis://h:0', /port "0" is not a number from 1 to 65535/],
    ['redis://h:65536', /port "65536"/],
    ['redis://h:x', /port "x"/],
    ['redis:///0', /no host|does not parse/],
    ['unix:///tmp/s', /scheme "unix:" is not a Redis scheme/],
    ['redis://h/1#x', /query parameters and fragments/],
  ])('refuses %s', (url, why) => expect(() => parseRedisUrl(url)).toThrow(why));
});

describe('sandbox node network identity', () => {
  test('a node keeps one MAC address across restarts, derived from its address', async () => {
    const { nodeMac, nodeRunArgs } = await import('../../src/sandbox/podman-sandbox.js');
    expect(nodeMac('10.89.0.11')).toBe('02:00:0a:59:00:0b');
    const argv = nodeRunArgs({ sandbox: 'dev', nodeId: 1, address: '10.89.0.11', leaderAddress: '10.89.0.11', rootfs: '/r', configDir: '/c', containersDir: '/k', homeDir: '/h', registriesConf: '/g', projectRoot: '/p', nodeBinary: '/n' });
    expect(argv[argv.indexOf('--mac-address') + 1]).toBe('02:00:0a:59:00:0b');
  });
});
