import { mkdir, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { loadManifests, parseManifestText } from '../../src/manifest/load.js';
import { locate } from '../../src/manifest/locate.js';
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

function names(docs: { value: unknown }[]): string[] {
  return docs.map((d) => (d.value as { metadata: { name: string } }).metadata.name);
}

describe('loadManifests', () => {
  test('a directory is read recursively, manifest extensions only, dot-entries skipped, sorted by path', async () => {
    const root = await tree({
      'b.yaml': moduleDoc('b1', 'b'),
      'a.yml': moduleDoc('a1', 'a'),
      'sub/c.json': JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: 'c1' }, spec: { module: 'c', node: 1 } }),
      'a-z.yaml': moduleDoc('az1', 'az'),
      'notes.txt': 'not a manifest',
      '.hidden/d.yaml': moduleDoc('d1', 'd'),
      '.e.yaml': moduleDoc('e1', 'e'),
    });
    const r = await loadManifests([root]);
    expect(r.diagnostics).toEqual([]);
    // Byte order of the full path: "a-z.yaml" < "a.yml" < "b.yaml" < "sub/c.json".
    expect(names(r.documents)).toEqual(['az1', 'a1', 'b1', 'c1']);
    expect(r.files).toEqual([join(root, 'a-z.yaml'), join(root, 'a.yml'), join(root, 'b.yaml'), join(root, 'sub/c.json')]);
  });

  test('paths are read in the order given and a file reached twice is read once', async () => {
    const root = await tree({ 'x.yaml': moduleDoc('x1', 'x'), 'd/y.yaml': moduleDoc('y1', 'y') });
    const r = await loadManifests([join(root, 'x.yaml'), join(root, 'd'), join(root, 'x.yaml')]);
    expect(names(r.documents)).toEqual(['x1', 'y1']);
  });

  test('a file reached through a symbolic link (to it, inside the directory, or to its directory given with -f) and directly is read once', async () => {
    const root = await tree({ 'real/x.yaml': moduleDoc('x1', 'x'), 'real/sub/y.yaml': moduleDoc('y1', 'y') });
    await symlink(join(root, 'real'), join(root, 'via-dir'));
    await mkdir(join(root, 'real', 'links'));
    await symlink(join(root, 'real', 'x.yaml'), join(root, 'real', 'links', 'x-link.yaml'));
    const r = await loadManifests([join(root, 'real', 'sub', 'y.yaml'), join(root, 'via-dir'), join(root, 'real')]);
    expect(r.diagnostics).toEqual([]);
    expect(names(r.documents)).toEqual(['y1', 'x1']);
  });

  test('multi-document YAML yields one document per non-empty document with its index and start line', async () => {
    const root = await tree({ 'm.yaml': '---\n' + moduleDoc('a1', 'a') + '---\n# only a comment\n---\n' + nodeDoc(1) + '...\n' });
    const r = await loadManifests([join(root, 'm.yaml')]);
    expect(r.diagnostics).toEqual([]);
    expect(r.documents.map((d) => d.source)).toEqual([
      { file: join(root, 'm.yaml'), doc: 0, line: 2, col: 1 },
      { file: join(root, 'm.yaml'), doc: 2, line: 12, col: 1 },
    ]);
  });

  test('"-" reads standard input through the injected reader, once', async () => {
    let calls = 0;
    const r = await loadManifests(['-', '-'], {
      stdin: async () => {
        calls++;
        return moduleDoc('s1', 's');
      },
    });
    expect(calls).toBe(1);
    expect(r.documents).toHaveLength(1);
    expect(r.documents[0]?.source).toEqual({ file: '-', doc: 0, line: 1, col: 1 });
    expect(r.files).toEqual(['-']);
  });

  test('a missing path is a diagnostic naming it, and the other paths are still read', async () => {
    const root = await tree({ 'ok.yaml': moduleDoc('ok1', 'ok') });
    const missing = join(root, 'nope.yaml');
    const r = await loadManifests([missing, join(root, 'ok.yaml')]);
    expect(r.diagnostics).toEqual([{ file: missing, line: 0, col: 0, pointer: '', message: `cannot read -f ${missing}: no such file or directory` }]);
    expect(names(r.documents)).toEqual(['ok1']);
    expect(r.files).toEqual([missing, join(root, 'ok.yaml')]);
  });

  test('a directory without manifest files is a diagnostic', async () => {
    const root = await tree({ 'readme.md': '# nothing' });
    const r = await loadManifests([root]);
    expect(r.diagnostics).toHaveLength(1);
    expect(r.diagnostics[0]?.message).toBe('directory has no manifest files (*.yaml, *.yml, *.json)');
  });

  test('a YAML syntax error is a diagnostic at its line:col and only its document is dropped', async () => {
    const text = lines('kind: Module', 'metadata: {name: a1', '---', 'kind: Node');
    const r = parseManifestText('f.yaml', text);
    expect(r.diagnostics.length).toBeGreaterThanOrEqual(1);
    expect(r.diagnostics[0]).toMatchObject({ file: 'f.yaml', line: 3, col: 1, pointer: '' });
    expect(r.diagnostics[0]?.message).toMatch(/^YAML syntax error: /);
    expect(r.documents.map((d) => d.source.doc)).toEqual([1]);
  });

  test('a duplicate key is a YAML syntax error at the second key', async () => {
    const r = parseManifestText('f.yaml', lines('kind: Module', 'spec:', '  node: 1', '  node: 2'));
    expect(r.diagnostics).toEqual([{ file: 'f.yaml', line: 4, col: 3, pointer: '', message: 'YAML syntax error: Map keys must be unique' }]);
    expect(r.documents).toEqual([]);
  });

  test('JSON files are parsed with positions', async () => {
    const json = '{\n  "kind": "Module",\n  "spec": {\n    "node": "x"\n  }\n}\n';
    const r = parseManifestText('m.json', json);
    const d = r.documents[0];
    expect(d).toBeDefined();
    if (!d) return;
    expect(locate(d.doc, d.lineCounter, '/spec/node')).toEqual({ line: 4, col: 13 });
    expect(locate(d.doc, d.lineCounter, '/spec/node', 'key')).toEqual({ line: 4, col: 5 });
  });
});

describe('locate', () => {
  const text = lines('apiVersion: x', 'spec:', '  flags: [a, b]', '  volumes:', '    a/b: /srv', 'empty:');
  const d = parseManifestText('f.yaml', text).documents[0];
  if (!d) throw new Error('fixture did not parse');
  test.each([
    ['', 'value', { line: 1, col: 1 }],
    ['/spec', 'key', { line: 2, col: 1 }],
    ['/spec/flags/1', 'value', { line: 3, col: 14 }],
    ['/spec/volumes/a~1b', 'value', { line: 5, col: 10 }],
    ['/spec/volumes/a~1b', 'key', { line: 5, col: 5 }],
    ['/spec/missing', 'value', { line: 2, col: 1 }],
    ['/spec/flags/9', 'value', { line: 3, col: 3 }],
    ['/empty', 'value', { line: 6, col: 1 }],
  ] as const)('pointer %j (%s) is at %j', (pointer, mode, pos) => {
    expect(locate(d.doc, d.lineCounter, pointer, mode)).toEqual(pos);
  });
});
