import { describe, expect, test } from '@jest/globals';
import { backupArgs, checkSnapshotRef, destinationKind, imageName, instanceRepository, parseBackupSummary, parseSnapshots, srvScript, srvVolumes } from '../../src/node-agent/backup/restic.js';

describe('restic, the NS8 way', () => {
  test('a destination is a local absolute path, a restic REST server or an SFTP path; anything else is refused with the allowed forms', () => {
    expect(destinationKind('/srv/backups')).toBe('local');
    expect(destinationKind('rest:http://127.0.0.1:8000/')).toBe('rest');
    expect(destinationKind('sftp:backup@10.0.0.2:/srv/restic')).toBe('sftp');
    expect(() => destinationKind('s3:bucket')).toThrow(/expected a local absolute path, rest:http\(s\):\/\/host:port\/path or sftp:user@host:\/path/);
    expect(() => destinationKind('relative/dir')).toThrow(/backup destination url "relative\/dir"/);
  });

  test('the repository of an instance is <destination>/<image name>/<MODULE_UUID>, as NS8 names it', () => {
    expect(imageName('ghcr.io/nethserver/mail:1.2.3')).toBe('mail');
    expect(imageName('localhost:5000/ns8ctl/kickweb@sha256:abc')).toBe('kickweb');
    expect(instanceRepository({ url: '/b/' }, 'ghcr.io/nethserver/dokuwiki:1', '0f5e2d7c-9b11')).toBe('/b/dokuwiki/0f5e2d7c-9b11');
    expect(instanceRepository({ url: 'rest:http://127.0.0.1:8000' }, 'x/webapp:2', 'u-1')).toBe('rest:http://127.0.0.1:8000/webapp/u-1');
    expect(() => instanceRepository({ url: '/b' }, 'x/webapp:2', '../../etc')).toThrow(/is not a UUID/);
  });

  test('volumes are bound under /srv/volumes by the name the module knows: rootfull <id>-<name> loses its prefix, other instances and restic volumes are skipped', () => {
    expect(srvVolumes(['data', 'restic-cache', ''], 'web1', false)).toEqual([{ podmanName: 'data', shown: 'data' }]);
    expect(srvVolumes(['web1-data', 'web10-data', 'other'], 'web1', true)).toEqual([{ podmanName: 'web1-data', shown: 'data' }]);
  });

  test('the namespace script quotes every path and ends by running the given command from /srv', () => {
    const script = srvScript({ stateDir: "/home/a b/.config/state", installDir: '/x', volumes: [{ podmanName: "it's", shown: "it's" }] });
    expect(script).toContain(`mount --bind '/home/a b/.config/state' /srv/state`);
    expect(script).toContain(`podman volume inspect --format '{{.Mountpoint}}' 'it'\\''s'`);
    expect(script.split('\n').slice(-2)).toEqual(['cd /srv', 'exec "$@"']);
  });

  test('a backup always holds state/environment, and uses the module include and exclude lists when it has them', () => {
    expect(backupArgs({})).toEqual(['backup', '--json', 'state/environment']);
    expect(backupArgs({ includeFile: '/i', excludeFile: '/e', tags: ['ns8ctl'] })).toEqual(['backup', '--json', 'state/environment', '--files-from=/i', '--exclude-file=/e', '--tag', 'ns8ctl']);
  });

  test('the summary of restic backup --json is read from its last summary line; no summary is an error', () => {
    const out = ['{"message_type":"status","percent_done":0.5}', '{"message_type":"summary","files_new":2,"files_changed":1,"total_bytes_processed":9,"data_added":1770,"total_duration":0.23,"snapshot_id":"b8df7421"}', ''].join('\n');
    expect(parseBackupSummary(out)).toEqual({ snapshotId: 'b8df7421', filesNew: 2, filesChanged: 1, bytesProcessed: 9, bytesAdded: 1770, durationS: 0.23 });
    expect(() => parseBackupSummary('{"message_type":"status"}\nnot json\n')).toThrow(/printed no summary/);
  });

  test('snapshots are read from restic snapshots --json; anything but a list is an error', () => {
    expect(parseSnapshots('[{"id":"abcdef0123","short_id":"abcdef01","time":"t","paths":["/srv/state"],"tags":null}]')).toEqual([{ id: 'abcdef0123', shortId: 'abcdef01', time: 't', paths: ['/srv/state'], tags: [] }]);
    expect(parseSnapshots('')).toEqual([]);
    expect(() => parseSnapshots('{}')).toThrow(/no JSON list/);
  });

  test('a snapshot argument is latest or a hex id', () => {
    expect(checkSnapshotRef('latest')).toBe('latest');
    expect(checkSnapshotRef('b8df7421')).toBe('b8df7421');
    expect(() => checkSnapshotRef('b8df')).toThrow(/8 to 64 hex digits/);
    expect(() => checkSnapshotRef('--target=/')).toThrow(/expected latest/);
  });
});

describe('state transfer, the NS8 way', () => {
  test('the receiver serves /srv as one module with numeric ids, one connection and its own lock, pid and secrets files', async () => {
    const { receiverConfig } = await import('../../src/node-agent/backup/transfer.js');
    const conf = receiverConfig('/run/x/web2', 'web2');
    expect(conf).toContain('[data]\n  path = /srv\n  read only = no');
    expect(conf).toContain('numeric ids = yes');
    expect(conf).toContain('max connections = 1');
    expect(conf).toContain('lock file = /run/x/web2/rsyncd.lock');
    expect(conf).toContain('  auth users = web2\n  secrets file = /run/x/web2/rsyncd.secrets');
    expect(() => receiverConfig('/run/x', 'web2\n[root]')).toThrow(/expected an instance id/);
  });

  test('an id that is not an instance id never names a run directory: nothing is stopped or removed', async () => {
    const { StateTransfer } = await import('../../src/node-agent/backup/transfer.js');
    const { mkdtempSync, existsSync, mkdirSync } = await import('node:fs');
    const os = await import('node:os');
    const base = mkdtempSync(`${os.tmpdir()}/ns8ctl-transfer-unit-`);
    mkdirSync(`${base}/run`);
    const runner = { history: [], run: async () => { throw new Error('no command may run'); } };
    const transfer = new StateTransfer(runner, `${base}/run`);
    await expect(transfer.stopReceiver('..')).rejects.toThrow(/expected an instance id/);
    await expect(transfer.stopReceiver('../run')).rejects.toThrow(/expected an instance id/);
    expect(existsSync(`${base}/run`)).toBe(true);
  });

  test('the sender never sends the identity files, merges the module filter, and deletes only on the final pass', async () => {
    const { senderArgs } = await import('../../src/node-agent/backup/transfer.js');
    const to = { address: '10.0.0.2', port: 20027, user: 'web2', password: 'p' };
    const live = senderArgs(to, { final: false });
    expect(live).toEqual(['rsync', '-aH', '--numeric-ids', '--stats', '--filter=- /state/agent.env', '--filter=- /state/environment', '--filter=- /state/apitoken.cache', './', 'rsync://web2@10.0.0.2:20027/data/']);
    const final = senderArgs(to, { final: true, filterFile: '/i/etc/state-filter-rules.rsync' });
    expect(final).toContain('--delete-after');
    expect(final).toContain('--filter=merge /i/etc/state-filter-rules.rsync');
    expect(final.join(' ')).not.toContain('p@');
  });
});
