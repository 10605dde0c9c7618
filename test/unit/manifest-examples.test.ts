import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { loadManifests } from '../../src/manifest/load.js';
import { validateManifests } from '../../src/manifest/validate.js';
import { formatDiagnostic } from '../../src/errors.js';

const dir = join(process.cwd(), 'manifests');

test('every file in manifests/ validates on its own with no cluster facts beyond node 1', async () => {
  const files = (await readdir(dir)).filter((f) => /\.(ya?ml|json)$/.test(f));
  expect(files.length).toBeGreaterThan(0);
  for (const f of files) {
    const r = validateManifests(await loadManifests([join(dir, f)]), { knownNodes: [1] });
    expect({ file: f, problems: r.diagnostics.map(formatDiagnostic) }).toEqual({ file: f, problems: [] });
  }
});

test('manifests/ as a directory gives a node, two repositories and the example modules', async () => {
  const r = validateManifests(await loadManifests([dir]));
  expect(r.diagnostics.map(formatDiagnostic)).toEqual([]);
  expect(r.objects.map((o) => `${o.object.kind}/${o.object.kind === 'Node' ? o.object.spec.id : o.object.metadata.name}`)).toEqual([
    'Node/1',
    'Repository/default',
    'Repository/default-testing',
    'Module/dokuwiki1',
    'Module/webapp1',
  ]);
});
