/**
 * BackupDestination, BackupSchedule and the Module fields restoreFrom, cloneFrom and
 * updatePolicy: their schemas, defaults and located errors naming the allowed values.
 */
import { join } from 'node:path';
import { formatDiagnostic } from '../../src/errors.js';
import { loadManifests, parseManifestText } from '../../src/manifest/load.js';
import type { LoadResult } from '../../src/manifest/load.js';
import { validateManifests } from '../../src/manifest/validate.js';
import type { ClusterFacts } from '../../src/manifest/validate.js';
import { lines } from '../fixtures/manifests/tree.js';

function load(text: string, file = 'b.yaml'): LoadResult {
  const r = parseManifestText(file, text);
  return { documents: r.documents, diagnostics: r.diagnostics, files: [file] };
}

function check(text: string, facts: ClusterFacts = { knownNodes: [1], knownBackupDestinations: ['offsite'] }): string[] {
  return validateManifests(load(text), facts).diagnostics.map(formatDiagnostic);
}

function objects(text: string, facts: ClusterFacts = { knownNodes: [1], knownBackupDestinations: ['offsite'] }): unknown[] {
  const r = validateManifests(load(text), facts);
  expect(r.diagnostics.map(formatDiagnostic)).toEqual([]);
  return r.objects.map((o) => o.object);
}

const API = 'apiVersion: ns8ctl.nethserver.org/v1';
const destination = (name: string, url: string): string => lines(API, 'kind: BackupDestination', `metadata: {name: ${name}}`, 'spec:', `  url: ${JSON.stringify(url)}`);

describe('BackupDestination', () => {
  test.each(['/srv/backup/ns8', 'rest:http://127.0.0.1:8000/ns8', 'rest:https://backup.example.org/', 'rest:https://alice:s3cr%40t@backup.example.org:8000/x', 'rest:http://[::1]:8000/r', 'sftp:backup@nas.example.org:/srv/restic', 'sftp:backup@10.5.4.1:/srv/restic', 'sftp:nas:/srv/restic'])(
    'accepts the restic repository %s',
    (url) => {
      expect(objects(destination('offsite', url))).toEqual([{ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'BackupDestination', metadata: { name: 'offsite' }, spec: { url } }]);
    },
  );

  test.each(['s3:s3.amazonaws.com/bucket', 'relative/path', '/srv/../etc', '/srv/./x', '/srv/a b', '/srv/a\u0007b', 'rest:ftp://host/x', 'rest:http://ho st/', 'sftp:u@h:relative', 'sftp:u@[::1]:/srv', 'sftp:u@h:/a/../b', 'b2:bucket:path', '/'])(
    'refuses %j at the url with the three allowed forms',
    (url) => {
      const out = check(destination('offsite', url));
      expect(out).toHaveLength(1);
      expect(out[0]).toMatch(/^b\.yaml:5:8 {2}\/spec\/url {2}url: .* an absolute local path .*rest:http\(s\):\/\/host\[:port\]\/path .*sftp:user@host:\/path/);
    },
  );

  test('a url over 1024 characters is refused', () => {
    const out = check(destination('offsite', `/srv/${'a'.repeat(1020)}`));
    expect(out.join('\n')).toMatch(/\/spec\/url .*1024/);
  });

  test('the name is a DNS label', () => {
    expect(check(destination('Off_site', '/srv/b'))).toEqual([
      expect.stringMatching(/^b\.yaml:3:18 {2}\/metadata\/name {2}name: "Off_site" is not valid: expected a backup destination name: 1 to 63 lowercase letters, digits and '-'/),
    ]);
  });
});

const schedule = (...spec: string[]): string => lines(API, 'kind: BackupSchedule', 'metadata: {name: nightly}', 'spec:', ...spec.map((l) => `  ${l}`));

describe('BackupSchedule', () => {
  test('defaults: keepLast 7, instances sorted, suspend false left out', () => {
    expect(objects(schedule('destination: offsite', 'instances: [webapp2, dokuwiki1]', 'schedule: "*-*-* 02:30:00"', 'suspend: false'))).toEqual([
      { apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'BackupSchedule', metadata: { name: 'nightly' }, spec: { destination: 'offsite', instances: ['dokuwiki1', 'webapp2'], schedule: '*-*-* 02:30:00', retention: { keepLast: 7 } } },
    ]);
  });

  test('a selector, an explicit retention and suspend are kept', () => {
    expect(objects(schedule('destination: offsite', 'selector: {matchLabels: {backup: nightly}}', 'schedule: Mon..Fri 22:00', 'retention: {keepDaily: 14}', 'suspend: true'))).toEqual([
      {
        apiVersion: 'ns8ctl.nethserver.org/v1',
        kind: 'BackupSchedule',
        metadata: { name: 'nightly' },
        spec: { destination: 'offsite', selector: { matchLabels: { backup: 'nightly' } }, schedule: 'Mon..Fri 22:00', retention: { keepDaily: 14 }, suspend: true },
      },
    ]);
  });

  test('neither instances nor selector is refused at the spec', () => {
    expect(check(schedule('destination: offsite', 'schedule: daily')).join('\n')).toMatch(/^b\.yaml:4:1 {2}\/spec {2}a BackupSchedule selects no instance: give "instances" .*, "selector" .*, or both$/);
  });

  test('a schedule over 128 characters is refused', () => {
    expect(check(schedule('destination: offsite', 'instances: [webapp1]', `schedule: "${'1'.repeat(129)}"`))).toEqual([expect.stringMatching(/\/spec\/schedule {2}.* is 129 characters long; at most 128 allowed$/)]);
  });

  test.each(['"daily; rm -rf /"', '"daily\\nweekly"', '"\'daily\'"', '"daily $(id)"'])('the schedule %s is refused with the allowed characters', (value) => {
    const out = check(schedule('destination: offsite', 'instances: [webapp1]', `schedule: ${value}`));
    expect(out).toHaveLength(1);
    expect(out[0]).toMatch(/\/spec\/schedule {2}.*OnCalendar expression of at most 128 characters/);
  });

  test.each([
    [0, 'keepLast: 0 is out of range; must be >= 1'],
    [1001, 'keepLast: 1001 is out of range; must be <= 1000'],
    [2.5, 'keepLast: expected integer >= 1 <= 1000, got number 2.5'],
  ])('a keepLast of %s is refused: an integer from 1 to 1000', (n, message) => {
    const out = check(schedule('destination: offsite', 'instances: [webapp1]', 'schedule: daily', `retention: {keepLast: ${n}}`));
    expect(out).toEqual([`b.yaml:8:25  /spec/retention/keepLast  ${message}`]);
  });
});

const moduleDoc = (...spec: string[]): string => lines(API, 'kind: Module', 'metadata: {name: webapp1}', 'spec:', '  image: ghcr.io/example/webapp:1.0.0', '  node: 1', ...spec.map((l) => `  ${l}`));

describe('references between documents and to desired state', () => {
  test('a schedule and a restoreFrom may name a destination of the same manifests', () => {
    const text = [destination('nas', '/srv/b'), schedule('destination: nas', 'instances: [webapp1]', 'schedule: daily'), moduleDoc('restoreFrom: {destination: nas}')].join('---\n');
    expect(validateManifests(load(text), { knownNodes: [1] }).diagnostics).toEqual([]);
  });

  test('a destination neither in the manifests nor in desired state is refused at the field, naming the known ones', () => {
    const text = [destination('nas', '/srv/b'), schedule('destination: nsa', 'instances: [webapp1]', 'schedule: daily'), moduleDoc('restoreFrom: {destination: gone}')].join('---\n');
    expect(check(text, { knownNodes: [1], knownBackupDestinations: ['offsite'] })).toEqual([
      'b.yaml:11:16  /spec/destination  destination "nsa" is not declared: no BackupDestination of these manifests nor of the cluster has that name; known destinations: nas, offsite',
      'b.yaml:21:30  /spec/restoreFrom/destination  destination "gone" is not declared: no BackupDestination of these manifests nor of the cluster has that name; known destinations: nas, offsite',
    ]);
  });

  test('without cluster facts (validate --offline) only the manifests count', () => {
    const out = validateManifests(load(schedule('destination: offsite', 'instances: [webapp1]', 'schedule: daily'))).diagnostics.map(formatDiagnostic);
    expect(out).toEqual(['b.yaml:5:16  /spec/destination  destination "offsite" is not declared: no BackupDestination of these manifests has that name; known destinations: none']);
  });

  test('cloneFrom names an instance of the same module that the manifests or the cluster have', () => {
    expect(check(moduleDoc('cloneFrom: webapp2'), { knownNodes: [1], knownModules: ['webapp2'] })).toEqual([]);
    expect(check(moduleDoc('cloneFrom: webapp3'), { knownNodes: [1], knownModules: ['webapp2'] })).toEqual(['b.yaml:7:14  /spec/cloneFrom  "webapp3" is not a Module of these manifests nor an instance the cluster has (did you mean "webapp2"?)']);
    expect(check(moduleDoc('cloneFrom: dokuwiki1'), { knownNodes: [1], knownModules: ['dokuwiki1'] })).toEqual(['b.yaml:7:14  /spec/cloneFrom  cloneFrom "dokuwiki1" is a dokuwiki instance: a clone is an instance of the same module, webapp<N>']);
  });
});

describe('Module restoreFrom, cloneFrom, updatePolicy', () => {
  test('restoreFrom gets snapshot latest by default; updatePolicy backupFirst is kept', () => {
    const [m] = objects(moduleDoc('restoreFrom: {destination: offsite}', 'updatePolicy: {backupFirst: true}'), { knownNodes: [1], knownBackupDestinations: ['offsite'] });
    expect(m).toMatchObject({ spec: { restoreFrom: { destination: 'offsite', snapshot: 'latest' }, updatePolicy: { backupFirst: true } } });
  });

  test('updatePolicy backupFirst false is the default and left out', () => {
    const [m] = objects(moduleDoc('updatePolicy: {backupFirst: false}'));
    expect(m).not.toHaveProperty('spec.updatePolicy');
  });

  test('a snapshot that is neither latest nor 8-64 hex digits is refused', () => {
    const out = check(moduleDoc('restoreFrom: {destination: offsite, snapshot: "abc"}'), { knownNodes: [1], knownBackupDestinations: ['offsite'] });
    expect(out).toEqual([expect.stringMatching(/^b\.yaml:7:49 {2}\/spec\/restoreFrom\/snapshot {2}.*"latest" \(the default\) or a restic snapshot id of 8 to 64 lowercase hex digits/)]);
  });

  test('restoreFrom and cloneFrom together are refused at cloneFrom', () => {
    const out = check(moduleDoc('restoreFrom: {destination: offsite}', 'cloneFrom: webapp2'), { knownNodes: [1], knownModules: ['webapp2'], knownBackupDestinations: ['offsite'] });
    expect(out).toEqual([expect.stringMatching(/^b\.yaml:8:3 {2}\/spec\/cloneFrom {2}"restoreFrom" and "cloneFrom" are mutually exclusive/)]);
  });

  test('an instance cannot be a clone of itself', () => {
    expect(check(moduleDoc('cloneFrom: webapp1'))).toEqual(['b.yaml:7:14  /spec/cloneFrom  webapp1 cannot be a clone of itself: cloneFrom names another instance']);
  });
});

test('examples/backup/ validates as a directory (node 1 known) and gives both kinds and the restore and clone Modules', async () => {
  const r = validateManifests(await loadManifests([join(process.cwd(), 'examples', 'backup')]), { knownNodes: [1], knownModules: ['webapp1'] });
  expect(r.diagnostics.map(formatDiagnostic)).toEqual([]);
  expect(r.objects.map((o) => `${o.object.kind}/${o.object.metadata.name}`)).toEqual([
    'BackupDestination/local',
    'BackupDestination/offsite',
    'BackupSchedule/nightly',
    'Module/webapp2',
    'Module/webapp3',
  ]);
});
