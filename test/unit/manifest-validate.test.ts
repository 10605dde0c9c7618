import { join } from 'node:path';
import { ManifestError, formatDiagnostic } from '../../src/errors.js';
import type { Diagnostic } from '../../src/errors.js';
import { loadManifests, parseManifestText } from '../../src/manifest/load.js';
import type { LoadResult } from '../../src/manifest/load.js';
import { assertValid, validateManifests } from '../../src/manifest/validate.js';
import type { ClusterFacts } from '../../src/manifest/validate.js';
import { lines, moduleDoc, nodeDoc, removeTree, writeTree } from '../fixtures/manifests/tree.js';

const roots: string[] = [];
async function tree(files: Record<string, string>): Promise<string> {
  const root = await writeTree(files);
  roots.push(root);
  return root;
}
afterAll(async () => {
  await Promise.all(roots.map(removeTree));
});

/** Parses one in-memory file (plus a Node 1 document unless told otherwise). */
function load(text: string, file = 'm.yaml'): LoadResult {
  const r = parseManifestText(file, text);
  return { documents: r.documents, diagnostics: r.diagnostics, files: [file] };
}

function check(text: string, facts: ClusterFacts = { knownNodes: [1] }): string[] {
  return validateManifests(load(text), facts).diagnostics.map(formatDiagnostic);
}

const HEAD = ['apiVersion: ns8ctl.nethserver.org/v1', 'kind: Module'];

describe('schema errors name the value, the place and what is allowed', () => {
  test('an unknown field points at the key and lists the allowed names', () => {
    expect(check(lines(...HEAD, 'metadata:', '  nmae: dokuwiki1', 'spec:', '  module: dokuwiki', '  node: 1'))).toEqual([
      'm.yaml:3:1  /metadata/name  missing required field "name" in /metadata: expected string',
      'm.yaml:4:3  /metadata/nmae  unknown field "nmae" in /metadata; allowed: name, labels, annotations (did you mean "name"?)',
    ]);
  });

  test('an unknown top-level field lists the top-level names', () => {
    expect(check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec: {module: dokuwiki, node: 1}', 'status: {}'))).toEqual([
      'm.yaml:5:1  /status  unknown field "status" in /; allowed: apiVersion, kind, metadata, spec',
    ]);
  });

  test('a type error says expected vs got at the value', () => {
    expect(check(lines(...HEAD, 'metadata:', '  name: dokuwiki1', 'spec:', '  module: dokuwiki', '  node: "two"'))).toEqual([
      'm.yaml:7:9  /spec/node  node: expected integer >= 1, got string "two"',
    ]);
  });

  test('an enum error lists the allowed values', () => {
    expect(check(lines(...HEAD, 'metadata:', '  name: dokuwiki1', 'spec:', '  module: dokuwiki', '  node: 1', '  removalPolicy: delete'))).toEqual([
      'm.yaml:8:18  /spec/removalPolicy  removalPolicy: "delete" is not allowed; allowed: Preserve, Delete (did you mean "Delete"?)',
    ]);
  });

  test('a wrong apiVersion says the right one', () => {
    expect(check(lines('apiVersion: v1', 'kind: Module', 'metadata: {name: dokuwiki1}', 'spec: {module: dokuwiki, node: 1}'))).toEqual([
      'm.yaml:1:13  /apiVersion  apiVersion must be "ns8ctl.nethserver.org/v1"; got "v1"',
    ]);
  });

  test('an unknown kind lists the kinds, and a wrong apiVersion is still reported', () => {
    expect(check(lines('apiVersion: apps/v1', 'kind: Deployment', 'metadata: {name: x}'))).toEqual([
      'm.yaml:1:13  /apiVersion  apiVersion must be "ns8ctl.nethserver.org/v1"; got "apps/v1"',
      'm.yaml:2:7  /kind  unknown kind "Deployment"; allowed kinds: Module, Repository, Node, BackupDestination, BackupSchedule',
    ]);
    expect(check(lines('apiVersion: ns8ctl.nethserver.org/v1', 'kind: module'))).toEqual([
      'm.yaml:2:7  /kind  unknown kind "module"; allowed kinds: Module, Repository, Node, BackupDestination, BackupSchedule (did you mean "Module"?)',
    ]);
  });

  test('a missing required field points at its parent', () => {
    expect(check(lines(...HEAD, 'metadata:', '  name: dokuwiki1', 'spec:', '  module: dokuwiki'))).toEqual([
      'm.yaml:5:1  /spec/node  missing required field "node" in /spec: expected integer >= 1',
    ]);
    expect(check(lines(...HEAD, 'metadata:', '  name: dokuwiki1'))).toEqual(['m.yaml:1:1  /spec  missing required field "spec" in /: expected a mapping']);
  });

  test('a document that is not a mapping is reported at its start', () => {
    expect(check(lines('- a', '- b'))).toEqual(['m.yaml:1:1  /  a manifest must be a mapping with apiVersion, kind, metadata and spec; got a list']);
  });

  test('an instance id that is not <module><N> explains the form', () => {
    const out = check(lines(...HEAD, 'metadata:', '  name: Dokuwiki', 'spec:', '  module: dokuwiki', '  node: 1'));
    expect(out).toHaveLength(1);
    expect(out[0]).toMatch(/^m\.yaml:4:9 {2}\/metadata\/name {2}name: "Dokuwiki" is not valid: expected an NS8 instance id <module><N>/);
  });

  test('an instance id longer than 32 characters is refused', () => {
    const name = 'a'.repeat(32) + '1';
    expect(check(lines(...HEAD, 'metadata:', `  name: ${name}`, 'spec:', `  module: ${'a'.repeat(31)}`, '  node: 1'))).toEqual([
      `m.yaml:4:9  /metadata/name  name: "${name}" is 33 characters long; at most 32 allowed`,
    ]);
  });

  test('module and image together, or neither, are refused', () => {
    expect(check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec:', '  module: dokuwiki', '  image: ghcr.io/nethserver/dokuwiki:1', '  node: 1'))).toEqual([
      'm.yaml:6:3  /spec/image  "module" and "image" are mutually exclusive: give a module name looked up in the repositories, or a full image URL, not both',
    ]);
    expect(check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec:', '  node: 1'))).toEqual([
      'm.yaml:4:1  /spec  missing "module" or "image" in /spec: give exactly one, a module name (dokuwiki) or a full image URL (ghcr.io/nethserver/dokuwiki:1.2.3)',
    ]);
  });

  test('version is refused together with image', () => {
    expect(check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec:', '  image: ghcr.io/nethserver/dokuwiki:1.2.3', '  version: 1.2.3', '  node: 1'))).toEqual([
      'm.yaml:6:3  /spec/version  "version" is not allowed with "image": the image tag selects the version; use "module" with "version", or put the tag in the image URL',
    ]);
  });

  test.each(['latest', '1.2.3', '^1.2', '~1.2.3', '>=1.0.0 <2.0.0', '1.x', '2.0.0-beta.1'])('version %j is accepted', (version) => {
    expect(check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec:', '  module: dokuwiki', `  version: "${version}"`, '  node: 1'))).toEqual([]);
  });

  test.each(['banana', '1.2.3.4', 'v1..2'])('version %j is refused by semver, naming the allowed forms', (version) => {
    expect(check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec:', '  module: dokuwiki', `  version: "${version}"`, '  node: 1'))).toEqual([
      `m.yaml:6:12  /spec/version  version "${version}" is not valid: expected "latest", an exact version (1.2.3) or a semver range (^1.2, ~1.2.3, >=1.0.0 <2.0.0)`,
    ]);
  });

  test('an image without a "/" is refused with the expected form', () => {
    const out = check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec:', '  image: dokuwiki:1.0', '  node: 1'));
    expect(out).toHaveLength(1);
    expect(out[0]).toMatch(/^m\.yaml:5:10 {2}\/spec\/image {2}image: "dokuwiki:1.0" is not valid: expected a full image URL with at least one '\/'/);
  });

  test('volumes need valid names and absolute paths; each problem at its own key or value', () => {
    expect(check(lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec:', '  module: dokuwiki', '  node: 1', '  volumes:', '    "bad name": /srv', '    data: srv/data'))).toEqual([
      'm.yaml:8:5  /spec/volumes/bad name  invalid name "bad name" in /spec/volumes: expected a volume name: letters, digits, \'_\', \'.\', \'-\', starting with a letter or digit',
      'm.yaml:9:11  /spec/volumes/data  data: "srv/data" is not valid: expected an absolute path on the node (starting with /) without \'.\' or \'..\' segments or control characters',
    ]);
  });

  test('dependsOn names other instances of the manifests or of the cluster, without cycles', () => {
    const mod = (name: string, deps: string[]): string => lines(...HEAD, `metadata: {name: ${name}}`, 'spec:', '  module: webapp', '  node: 1', `  dependsOn: [${deps.join(', ')}]`);
    const docs = (...d: string[]): string => d.join('---\n');
    // Known: another manifest's Module, an instance the cluster has (NS8 made it), in any order.
    expect(check(docs(mod('webapp1', ['openldap1', 'webapp2']), mod('webapp2', [])), { knownNodes: [1], knownModules: ['openldap1'] })).toEqual([]);
    const ok = validateManifests(load(docs(mod('webapp1', ['webapp2', 'openldap1']), mod('webapp2', []))), { knownNodes: [1], knownModules: ['openldap1'] });
    expect(ok.objects.find((o) => o.object.kind === 'Module' && o.object.metadata.name === 'webapp1')!.object.spec).toMatchObject({ dependsOn: ['openldap1', 'webapp2'] });
    expect(ok.objects.find((o) => o.object.kind === 'Module' && o.object.metadata.name === 'webapp2')!.object.spec).not.toHaveProperty('dependsOn');
    expect(check(mod('webapp1', ['openldap2']), { knownNodes: [1], knownModules: ['openldap1'] })).toEqual([
      'm.yaml:7:15  /spec/dependsOn/0  "openldap2" is not a Module of these manifests nor an instance the cluster has (did you mean "openldap1"?)',
    ]);
    expect(check(mod('webapp1', ['webapp1']))).toEqual(['m.yaml:7:15  /spec/dependsOn/0  webapp1 cannot depend on itself']);
    expect(check(docs(mod('webapp1', ['webapp2']), mod('webapp2', ['webapp3']), mod('webapp3', ['webapp1'])))).toEqual([
      'm.yaml:7:15  /spec/dependsOn/0  dependency cycle: webapp1 -> webapp2 -> webapp3 -> webapp1; an instance can only be created after the ones it depends on',
      'm.yaml:15:15  /spec/dependsOn/0  dependency cycle: webapp1 -> webapp2 -> webapp3 -> webapp1; an instance can only be created after the ones it depends on',
      'm.yaml:23:15  /spec/dependsOn/0  dependency cycle: webapp1 -> webapp2 -> webapp3 -> webapp1; an instance can only be created after the ones it depends on',
    ]);
    expect(check(mod('webapp1', ['openldap1', 'openldap1']))[0]).toContain('/spec/dependsOn');
  });

  test('every problem of every document is reported at once, in file order', () => {
    const text = lines(...HEAD, 'metadata: {name: dokuwiki1}', 'spec: {module: dokuwiki, node: 0, suspend: "yes"}', '---', 'apiVersion: ns8ctl.nethserver.org/v1', 'kind: Repository', 'metadata: {name: Default}', 'spec: {url: "ftp://x", enabled: 1}');
    expect(check(text)).toEqual([
      'm.yaml:4:32  /spec/node  node: 0 is out of range; must be >= 1',
      'm.yaml:4:44  /spec/suspend  suspend: expected boolean, got string "yes"',
      'm.yaml:8:18  /metadata/name  name: "Default" is not valid: expected a repository name: lowercase letters, digits, \'.\', \'_\', \'-\', starting and ending with a letter or digit (default, nethforge)',
      'm.yaml:9:13  /spec/url  url: "ftp://x" is not valid: expected an http://, https:// or file:// URL of the repository (https://distfeed.nethserver.org/ns8/updates/)',
      'm.yaml:9:33  /spec/enabled  enabled: expected boolean, got integer 1',
    ]);
  });

  test('node flags must be unique strings', () => {
    expect(check(lines('apiVersion: ns8ctl.nethserver.org/v1', 'kind: Node', 'metadata: {name: n1}', 'spec:', '  id: 1', '  flags: [nomodules, nomodules]'))).toEqual([
      'm.yaml:6:22  /spec/flags/1  flags: "nomodules" is listed twice (items 0 and 1); items must be unique',
    ]);
  });

  test.each([
    ['Module', 'module, image, version, node, dependsOn, volumes, configuration, removalPolicy, suspend, restoreFrom, cloneFrom, updatePolicy'],
    ['Repository', 'url, enabled, testing'],
    ['Node', 'id, address, flags'],
    ['BackupDestination', 'url'],
    ['BackupSchedule', 'destination, instances, selector, schedule, retention, suspend'],
  ])('an unknown spec field of a %s lists exactly the fields of its spec type', (kind, allowed) => {
    const out = check(lines('apiVersion: ns8ctl.nethserver.org/v1', `kind: ${kind}`, 'metadata: {name: x}', 'spec:', '  bogus: 1'));
    expect(out).toContain(`m.yaml:5:3  /spec/bogus  unknown field "bogus" in /spec; allowed: ${allowed}`);
  });

  test('an empty spec points at its key and says a mapping was expected', () => {
    expect(check(lines('apiVersion: ns8ctl.nethserver.org/v1', 'kind: Node', 'metadata: {name: n1}', 'spec:'))).toEqual(['m.yaml:4:1  /spec  spec: expected a mapping, got null']);
  });

  test('a missing apiVersion names the expected value', () => {
    expect(check(lines('kind: Node', 'metadata: {name: n1}', 'spec: {id: 1}'))).toEqual(['m.yaml:1:1  /apiVersion  missing required field "apiVersion" in /: expected "ns8ctl.nethserver.org/v1"']);
  });

  test.each(['dokuwiki01', 'dokuwiki', '1dokuwiki1', 'doku wiki1'])('instance id %j is refused', (name) => {
    const out = check(lines(...HEAD, `metadata: {name: "${name}"}`, 'spec: {module: dokuwiki, node: 1}'));
    expect(out).toHaveLength(1);
    expect(out[0]).toContain(`/metadata/name  name: "${name}" is not valid: expected an NS8 instance id <module><N>`);
  });

  test('label values must be strings', () => {
    expect(check(lines(...HEAD, 'metadata:', '  name: dokuwiki1', '  labels: {tier: 3}', 'spec: {module: dokuwiki, node: 1}'))).toEqual([
      'm.yaml:5:18  /metadata/labels/tier  tier: expected string, got integer 3',
    ]);
  });
});

describe('rules beyond the schema', () => {
  test('an id that does not fit its module name says the expected form', () => {
    expect(check(moduleDoc('wiki1', 'dokuwiki'))).toEqual(['m.yaml:4:9  /metadata/name  metadata.name "wiki1" does not fit module "dokuwiki": expected dokuwiki<N>']);
  });

  test('the module name of an image URL is its last path segment without tag', () => {
    const doc = (name: string, image: string): string => lines(...HEAD, `metadata: {name: ${name}}`, `spec: {image: "${image}", node: 1}`);
    expect(check(doc('webapp1', '127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0'))).toEqual([]);
    expect(check(doc('samba12', 'ghcr.io/nethserver/samba@sha256:' + 'a'.repeat(64)))).toEqual([]);
    expect(check(doc('nethvoice-proxy1', 'ghcr.io/nethvoice/nethvoice-proxy'))).toEqual([]);
    expect(check(doc('webapp1', 'ghcr.io/x/web:1'))).toEqual(['m.yaml:3:18  /metadata/name  metadata.name "webapp1" does not fit module "web": expected web<N>']);
    expect(check(doc('app21', 'ghcr.io/x/app2:1'))).toEqual([
      'm.yaml:4:15  /spec/image  image "ghcr.io/x/app2:1" gives module name "app2", which is not a valid NS8 module name: the last path segment without tag must be lowercase letters, digits, \'-\' and \'_\', starting with a letter and not ending with a digit',
    ]);
  });

  test('a repository URL that does not parse is refused', () => {
    expect(check(lines('apiVersion: ns8ctl.nethserver.org/v1', 'kind: Repository', 'metadata: {name: r}', 'spec: {url: "https://[bad"}'))).toEqual([
      'm.yaml:4:13  /spec/url  url "https://[bad" is not a valid URL: expected an http://, https:// or file:// URL',
    ]);
  });

  test('a module on an undeclared node lists the known nodes; Node documents and cluster facts both declare', () => {
    expect(check(moduleDoc('dokuwiki1', 'dokuwiki', 3), { knownNodes: [2, 1] })).toEqual([
      'm.yaml:7:9  /spec/node  node 3 is not declared: no Node manifest has spec.id 3 and the cluster has no node 3; known nodes: 1, 2',
    ]);
    expect(check(moduleDoc('dokuwiki1', 'dokuwiki', 3) + '---\n' + nodeDoc(3), { knownNodes: [] })).toEqual([]);
    expect(check(moduleDoc('dokuwiki1', 'dokuwiki', 2), { knownNodes: [2] })).toEqual([]);
    expect(validateManifests(load(moduleDoc('dokuwiki1', 'dokuwiki', 1))).diagnostics.map(formatDiagnostic)).toEqual([
      'm.yaml:7:9  /spec/node  node 1 is not declared: no Node manifest has spec.id 1 and the cluster has no node 1; known nodes: none',
    ]);
  });
});

describe('cross-document checks over files', () => {
  test('duplicate ids across files name both files and lines', async () => {
    const root = await tree({
      'a.yaml': moduleDoc('dokuwiki1', 'dokuwiki') + '---\n' + nodeDoc(1),
      'b/c.yaml': lines('# again') + moduleDoc('dokuwiki1', 'dokuwiki') + '---\n' + nodeDoc(1, 'other'),
      'r.json': JSON.stringify([]),
    });
    const r = validateManifests(await loadManifests([root]), { knownNodes: [] });
    const a = join(root, 'a.yaml');
    const c = join(root, 'b/c.yaml');
    expect(r.diagnostics.map(formatDiagnostic)).toEqual([
      `${c}:5:9  /metadata/name  duplicate Module "dokuwiki1": already defined at ${a}:4:9; ids must be unique`,
      `${c}:15:7  /spec/id  duplicate Node id 1: already defined at ${a}:14:7; ids must be unique`,
      `${join(root, 'r.json')}:1:1  /  a manifest must be a mapping with apiVersion, kind, metadata and spec; got a list`,
    ]);
    expect(r.objects).toEqual([]);
  });

  test('load diagnostics come first in file order and validation continues past them', async () => {
    const root = await tree({ 'a.yaml': 'kind: [', 'b.yaml': moduleDoc('wiki1', 'dokuwiki') });
    const r = validateManifests(await loadManifests([join(root, 'nope'), root]), { knownNodes: [1] });
    expect(r.diagnostics.map((d) => [d.file, d.line, d.col, d.pointer])).toEqual([
      [join(root, 'nope'), 0, 0, ''],
      [join(root, 'a.yaml'), 1, 8, ''],
      [join(root, 'b.yaml'), 4, 9, '/metadata/name'],
    ]);
  });

  test('stdin documents validate with file "-"', async () => {
    const r = validateManifests(await loadManifests(['-'], { stdin: async () => moduleDoc('wiki1', 'dokuwiki') }), { knownNodes: [1] });
    expect(r.diagnostics.map(formatDiagnostic)).toEqual(['-:4:9  /metadata/name  metadata.name "wiki1" does not fit module "dokuwiki": expected dokuwiki<N>']);
  });
});

describe('normalised objects', () => {
  test('defaults are applied, fields ordered, and objects sorted by kind then id', async () => {
    const root = await tree({
      'all.yaml':
        moduleDoc('dokuwiki10', 'dokuwiki') +
        '---\n' +
        moduleDoc('dokuwiki2', 'dokuwiki') +
        '---\n' +
        lines('apiVersion: ns8ctl.nethserver.org/v1', 'kind: Repository', 'metadata: {name: default}', 'spec: {url: "https://distfeed.nethserver.org/ns8/updates/"}') +
        '---\n' +
        nodeDoc(2) +
        '---\n' +
        nodeDoc(1),
      'img.json': JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: 'webapp1' }, spec: { suspend: true, node: 2, image: 'r.example/x/webapp:1' } }),
    });
    const r = validateManifests(await loadManifests([root]));
    expect(r.diagnostics).toEqual([]);
    expect(r.objects.map((o) => `${o.object.kind}/${o.object.kind === 'Node' ? o.object.spec.id : o.object.metadata.name}`)).toEqual([
      'Node/1',
      'Node/2',
      'Repository/default',
      'Module/dokuwiki2',
      'Module/dokuwiki10',
      'Module/webapp1',
    ]);
    const byName = (n: string) => r.objects.find((o) => o.object.metadata.name === n)?.object;
    expect(byName('dokuwiki2')?.spec).toEqual({ module: 'dokuwiki', version: 'latest', node: 1, removalPolicy: 'Preserve' });
    expect(Object.keys(byName('webapp1')?.spec ?? {})).toEqual(['image', 'node', 'removalPolicy', 'suspend']);
    expect(byName('default')?.spec).toEqual({ url: 'https://distfeed.nethserver.org/ns8/updates/', enabled: true, testing: false });
    expect(r.objects[0]?.source).toEqual({ file: join(root, 'all.yaml'), doc: 4, line: 29, col: 1 });
  });

  test('assertValid returns the objects, or throws ManifestError carrying every diagnostic', () => {
    expect(assertValid(load(nodeDoc(1)))).toHaveLength(1);
    let err: unknown;
    try {
      assertValid(load(moduleDoc('wiki1', 'dokuwiki', 9)));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ManifestError);
    const diags: Diagnostic[] = (err as ManifestError).diagnostics;
    expect(diags.map((d) => d.pointer)).toEqual(['/metadata/name', '/spec/node']);
    expect((err as ManifestError).message).toContain('m.yaml:4:9  /metadata/name  metadata.name "wiki1" does not fit module "dokuwiki"');
  });
});
