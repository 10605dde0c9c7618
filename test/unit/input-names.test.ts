import { describe, expect, it } from '@jest/globals';
import { formatDiagnostic } from '../../src/errors.js';
import { parseManifestText } from '../../src/manifest/load.js';
import { assertApplySetName, assertObjectId, fileInside, isValidObjectId } from '../../src/manifest/names.js';
import { isNodeAddress, validateManifests } from '../../src/manifest/validate.js';

describe('ids and apply set names that reach paths and keys', () => {
  it.each(['../../x', 'a/b1', '', 'a\nb1', 'webapp1 ', '*', '.', '..', 'Webapp1', 'webapp01', `w${'a'.repeat(40)}1`])('refuses module id %j', (id) => {
    expect(() => assertObjectId('Module', id)).toThrow(/module id .* is not valid: expected an instance id <module><N>/);
  });

  it('accepts real ids of each kind', () => {
    expect(['dokuwiki1', 'nethvoice-proxy12', 'samba3'].every((id) => isValidObjectId('Module', id))).toBe(true);
    expect(isValidObjectId('Repository', 'default')).toBe(true);
    expect(isValidObjectId('Node', '12')).toBe(true);
    expect(isValidObjectId('Node', '0')).toBe(false);
    expect(isValidObjectId('Repository', '../r')).toBe(false);
  });

  it.each(['', 'x y', 'a\nb', '*', '../../cluster/module_node', 'a/b', 'x'.repeat(64), '.hidden', '-x', 'é'])('refuses --applyset %j, naming the rule', (name) => {
    expect(() => assertApplySetName(name)).toThrow(/--applyset .* is not valid: an apply set name uses letters, digits/);
  });

  it('accepts apply set names a source may have', () => {
    for (const n of ['default', 'prod', 'Prod.v2', 'team_a-1']) expect(assertApplySetName(n)).toBe(n);
  });

  it('fileInside refuses a name that leaves the directory', () => {
    expect(fileInside('/srv/m', 'dokuwiki1.yaml')).toBe('/srv/m/dokuwiki1.yaml');
    for (const n of ['../x.yaml', '/etc/passwd', 'a/b.yaml', '..', '.hidden.yaml']) expect(() => fileInside('/srv/m', n)).toThrow(/is not a plain file name inside \/srv\/m/);
  });
});

describe('values accepted before that must be refused', () => {
  const problems = (text: string): string[] => validateManifests({ ...parseManifestText('m.yaml', text), files: ['m.yaml'] }, { knownNodes: [1] }).diagnostics.map(formatDiagnostic);
  const node = (extra: string, meta = ''): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: n1\n${meta}spec:\n  id: 1\n${extra}`;

  it('a Node address must be an IP address or a host name', () => {
    expect(['10.0.0.1', '::1', 'fe80::1', 'node1.example.org', 'node1', 'node1.example.org.'].every(isNodeAddress)).toBe(true);
    for (const a of ['1.2.3.4;reboot', '$(reboot)', 'a..b', '-x', 'host/evil', 'a_b.example']) expect(isNodeAddress(a)).toBe(false);
    expect(problems(node('  address: "1.2.3.4;reboot"\n'))).toEqual([`m.yaml:7:12  /spec/address  address "1.2.3.4;reboot" is not valid: expected an IPv4 or IPv6 address or a host name (letters, digits, '-' and '.')`]);
  });

  it('label and annotation keys cannot hold newlines, NUL or other control characters', () => {
    const out = problems(node('', '  labels: {"a\\nb": x, "c\\0d": y}\n  annotations: {"e\\tf": z}\n'));
    expect(out).toEqual([
      'm.yaml:5:12  /metadata/labels/a\nb  invalid name "a\\nb" in /metadata/labels: expected a key of 1 to 253 characters without control characters (no newline, tab or NUL)',
      'm.yaml:5:23  /metadata/labels/c\u0000d  invalid name "c\\u0000d" in /metadata/labels: expected a key of 1 to 253 characters without control characters (no newline, tab or NUL)',
      'm.yaml:6:17  /metadata/annotations/e\tf  invalid name "e\\tf" in /metadata/annotations: expected a key of 1 to 253 characters without control characters (no newline, tab or NUL)',
    ]);
  });

  it('volume paths cannot hold . or .. segments', () => {
    const mod = (p: string): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: webapp1\nspec:\n  image: 127.0.0.1:5000/x/webapp:1\n  node: 1\n  volumes:\n    data: "${p}"\n`;
    for (const p of ['/srv/../etc', '/..', '/a/./b', '/data/..']) expect(problems(mod(p))).toEqual([expect.stringContaining("/spec/volumes/data  data: ")]);
    expect(problems(mod('/srv/a..b/data'))).toEqual([]);
  });
});
