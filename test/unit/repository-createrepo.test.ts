import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommandFailedError } from '../../src/errors.js';
import type { CommandRecord, CommandRunner, RunOptions } from '../../src/host/runner.js';
import { createrepo, selectTags } from '../../src/repository/createrepo.js';
import { RepositoryError } from '../../src/repository/errors.js';
import { checkRepodata } from '../../src/repository/repodata.js';
import { JPEG_HEAD, makePng } from '../fixtures/repodata/png.js';
import { rejectionOf } from '../support/caught.js';

/** A registry seen through skopeo: source -> tag -> labels. Records every argv. */
class FakeSkopeo implements CommandRunner {
  readonly history: (CommandRecord & { mutating: boolean })[] = [];
  constructor(private readonly images: Record<string, Record<string, Record<string, string>>>) {}
  async run(argv: string[], _opts?: RunOptions): Promise<CommandRecord> {
    const ref = (argv[argv.length - 1] ?? '').replace(/^docker:\/\//, '');
    const record = (stdout: string): CommandRecord => {
      const r = { argv, exitCode: 0, stdout, stderr: '', durationMs: 0 };
      this.history.push({ ...r, mutating: false });
      return r;
    };
    if (argv[1] === 'list-tags') {
      const tags = this.images[ref];
      if (!tags) throw new CommandFailedError('image_not_found', `skopeo: ${ref}: manifest unknown`, { argv, exitCode: 1, stderr: 'manifest unknown' });
      return record(JSON.stringify({ Repository: ref, Tags: Object.keys(tags) }));
    }
    if (argv[1] === 'inspect') {
      const i = ref.lastIndexOf(':');
      const labels = this.images[ref.slice(0, i)]?.[ref.slice(i + 1)];
      if (!labels) throw new CommandFailedError('image_not_found', `skopeo: ${ref}: manifest unknown`, { argv, exitCode: 1, stderr: 'manifest unknown' });
      return record(JSON.stringify({ Name: ref.slice(0, i), Labels: labels }));
    }
    throw new Error(`unexpected command ${argv.join(' ')}`);
  }
}

const meta = (source: string, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({
    name: 'Web App',
    description: { en: 'Example' },
    categories: ['collaboration'],
    authors: [{ name: 'Tests', email: 't@example.org' }],
    docs: { documentation_url: 'https://d.example.org', bug_url: 'https://b.example.org', code_url: 'https://c.example.org' },
    source,
    ...extra,
  });

const failure = (p: Promise<unknown>): Promise<RepositoryError> => rejectionOf(RepositoryError, p);

describe('selectTags', () => {
  const tags = ['latest', '1.0.0', '2.0.0', '1.1.0', '2.1.0-rc.2', '2.1.0-rc.1', '1.5.0-beta.1', 'v3.0.0'];

  it('keeps every stable version plus the newest prerelease newer than the latest stable (all-stable)', () => {
    expect(selectTags(tags)).toEqual(['2.1.0-rc.2', '2.0.0', '1.1.0', '1.0.0']);
  });

  it('keeps only the newest newer prerelease and the latest stable under the ns8 policy', () => {
    expect(selectTags(tags, 'ns8')).toEqual(['2.1.0-rc.2', '2.0.0']);
  });

  it('keeps no prerelease older than the latest stable', () => {
    expect(selectTags(['1.0.0', '0.9.0-rc.1'], 'ns8')).toEqual(['1.0.0']);
    expect(selectTags(['1.0.0-rc.1'], 'ns8')).toEqual(['1.0.0-rc.1']);
  });
});

describe('createrepo', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'ns8ctl-createrepo-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  function moduleDir(name: string, files: Record<string, string | Buffer>): void {
    for (const [rel, content] of Object.entries(files)) {
      const p = join(root, name, rel);
      mkdirSync(join(p, '..'), { recursive: true });
      writeFileSync(p, content);
    }
  }

  it('writes a repodata.json that validates, with versions newest first and their labels', async () => {
    moduleDir('webapp', { 'metadata.json': meta('reg.test:5000/ex/webapp'), 'logo.png': makePng(256, 256), 'screenshots/b.png': makePng(1024, 768), 'screenshots/a.png': makePng(1024, 768) });
    moduleDir('bare', { 'metadata.json': meta('reg.test:5000/ex/bare', { name: 'Bare' }) });
    const runner = new FakeSkopeo({
      'reg.test:5000/ex/webapp': { '1.0.0': { 'org.nethserver.rootfull': '0' }, '2.0.0': { 'org.nethserver.min-from': '1.1.0' }, '1.1.0': {}, latest: {} },
      'reg.test:5000/ex/bare': { '0.1.0': {} },
    });
    const res = await createrepo(root, { runner, registryTlsVerify: false });
    expect(res.output).toBe(join(root, 'repodata.json'));
    const written = JSON.parse(readFileSync(join(root, 'repodata.json'), 'utf8')) as unknown;
    expect(checkRepodata(written)).toEqual([]);
    expect(written).toEqual(res.packages);
    expect(res.packages.map((p) => p.id)).toEqual(['bare', 'webapp']);
    const webapp = res.packages[1];
    expect(webapp).toMatchObject({ id: 'webapp', name: 'Web App', logo: 'logo.png', screenshots: ['screenshots/a.png', 'screenshots/b.png'], source: 'reg.test:5000/ex/webapp' });
    expect(webapp?.versions).toEqual([
      { tag: '2.0.0', testing: false, labels: { 'org.nethserver.min-from': '1.1.0' } },
      { tag: '1.1.0', testing: false, labels: {} },
      { tag: '1.0.0', testing: false, labels: { 'org.nethserver.rootfull': '0' } },
    ]);
    expect(res.packages[0]).toMatchObject({ logo: null, screenshots: [] });
    expect(runner.history.every((h) => h.argv.includes('--tls-verify=false'))).toBe(true);
    expect(runner.history.filter((h) => h.argv[1] === 'inspect').map((h) => h.argv.at(-1)).sort()).toEqual(
      ['docker://reg.test:5000/ex/bare:0.1.0', 'docker://reg.test:5000/ex/webapp:1.0.0', 'docker://reg.test:5000/ex/webapp:1.1.0', 'docker://reg.test:5000/ex/webapp:2.0.0'],
    );
  });

  it('uses NS8 defaults without metadata.json and skips hidden directories', async () => {
    moduleDir('dokuwiki', { 'logo.png': makePng(256, 256) });
    moduleDir('.git', { HEAD: 'ref' });
    const runner = new FakeSkopeo({ 'ghcr.io/nethserver/dokuwiki': { '1.0.0': {} } });
    const res = await createrepo(root, { runner, output: null });
    expect(res.output).toBeNull();
    expect(res.packages).toEqual([
      expect.objectContaining({ id: 'dokuwiki', name: 'dokuwiki', source: 'ghcr.io/nethserver/dokuwiki', categories: ['unknown'], description: { en: 'Auto-generated description for dokuwiki' } }),
    ]);
    expect(runner.history.every((h) => !h.argv.includes('--tls-verify=false'))).toBe(true);
  });

  it('reports every file problem with file and actual size before contacting any registry', async () => {
    moduleDir('webapp', { 'metadata.json': meta('reg.test/ex/webapp'), 'logo.png': makePng(300, 200), 'screenshots/s1.png': JPEG_HEAD, 'screenshots/s2.png': makePng(800, 600) });
    moduleDir('other', { 'metadata.json': meta('reg.test/ex/other', { id: 'something-else' }) });
    moduleDir('broken', { 'metadata.json': '{ "name": ' });
    moduleDir('tagged', { 'metadata.json': meta('reg.test/ex/tagged:1.0.0') });
    const runner = new FakeSkopeo({});
    const e = await failure(createrepo(root, { runner }));
    expect(e.code).toBe('createrepo_invalid');
    expect(e.problems).toEqual(
      expect.arrayContaining([
        { where: join(root, 'webapp/logo.png'), message: 'logo is 300x200 pixels; it must be 256x256' },
        { where: join(root, 'webapp/screenshots/s1.png'), message: 'screenshot is a JPEG image, not a PNG; a 1024x768 PNG is required' },
        { where: join(root, 'webapp/screenshots/s2.png'), message: 'screenshot is 800x600 pixels; it must be 1024x768' },
        { where: join(root, 'other/metadata.json'), message: expect.stringContaining('id "something-else" must equal the directory name "other"') },
        { where: join(root, 'broken/metadata.json'), message: expect.stringContaining('is not valid JSON') },
        { where: join(root, 'tagged/metadata.json'), message: expect.stringContaining('must not carry a tag') },
      ]),
    );
    expect(e.message).toContain('nothing was written');
    expect(runner.history).toEqual([]);
  });

  it('points schema problems of metadata.json at the file and field', async () => {
    moduleDir('webapp', { 'metadata.json': meta('reg.test/ex/webapp', { categories: 'web' }) });
    const e = await failure(createrepo(root, { runner: new FakeSkopeo({}) }));
    expect(e.problems).toEqual([{ where: `${join(root, 'webapp/metadata.json')} /categories`, message: 'must be array' }]);
  });

  it('skips a module with no semantic-version tag and fails when no module is left', async () => {
    moduleDir('webapp', { 'metadata.json': meta('reg.test/ex/webapp') });
    const e = await failure(createrepo(root, { runner: new FakeSkopeo({ 'reg.test/ex/webapp': { latest: {}, dev: {} } }) }));
    expect(e.code).toBe('createrepo_empty');
  });

  it('names the module and the image when the registry fails, and writes nothing', async () => {
    moduleDir('webapp', { 'metadata.json': meta('reg.test/ex/webapp') });
    moduleDir('ghost', { 'metadata.json': meta('reg.test/ex/ghost') });
    const e = await failure(createrepo(root, { runner: new FakeSkopeo({ 'reg.test/ex/webapp': { '1.0.0': {} } }) }));
    expect(e.code).toBe('createrepo_registry_failed');
    expect(e.problems).toEqual([{ where: 'ghost', message: expect.stringContaining('cannot list tags of reg.test/ex/ghost: image_not_found') }]);
    expect(() => readFileSync(join(root, 'repodata.json'))).toThrow();
  });
});
