/**
 * Issue 6 end to end in a sandbox node: a Module that names `module: webapp` and a version range
 * (no image URL) is resolved by the node agent through a software repository. The repository is
 * real: the example images are published (pushed tag by tag) to the sandbox registry under
 * `repoupd/webapp`, `ns8ctl createrepo` makes its repodata.json from that registry, and a tiny
 * HTTP server inside node 1 serves it; `ns8ctl repo refresh` expires the Redis cache. The
 * instance is installed at 1.0.0, refused 2.0.0 by its min-from (keeps running 1.0.0), updated to
 * 1.1.0 when 1.1.0 is published inside its range, then to 2.0.0, and to a prerelease
 * (2.1.0-rc.1, built here with buildah from 2.0.0) only once the Repository has `testing: true`;
 * a 2.1.0 whose service cannot start is rolled back to the prerelease.
 * Uses the built CLI inside the node (CI builds before testing; locally run `npm run build` first).
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { createSandbox, type SandboxInfo } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { adminRedisUrl } from '../../src/sandbox/node-config.js';
import { readAdminPassword } from '../../src/sandbox/record.js';
import { keys } from '../../src/state/keys.js';
import { runCli } from '../support/cli.js';
import { ensureExampleImages, type ExampleImages } from '../support/example-images.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';
import { makePng } from '../fixtures/repodata/png.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

const NAME = 'repoupd';
const ID = 'webapp1';
const REPO = 'examples';
/** Where the repodata server listens inside node 1 (its own network namespace). */
const REPO_URL = 'http://127.0.0.1:8099/';
const RC = '2.1.0-rc.1';
const { deps, runner, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let images: ExampleImages;
let leader: Redis;
/** Host directory createrepo walks: webapp/{metadata.json,logo.png,screenshots/}. */
let repoDir = '';
/** `<registry>/repoupd/webapp`: the module's source in the repository. */
let source = '';

/** The repodata server: files under /root/repo, 404 otherwise; `?view=latest` is ignored. */
const SERVER = `const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
http.createServer((req, res) => {
  const file = path.join('/root/repo', path.normalize(new URL(req.url, 'http://x').pathname));
  fs.readFile(file, (err, data) => {
    if (err) { res.statusCode = 404; res.end(); return; }
    res.setHeader('content-type', 'application/json');
    res.end(data);
  });
}).listen(8099, '127.0.0.1');
`;

async function must(what: string, command: string[], input?: string): Promise<string> {
  const r = await inNode(command, input);
  if (r.code !== 0) throw new Error(`${what}: ${command.join(' ')} exited ${r.code}:\n${r.out}\n${r.err}`);
  return r.out;
}

const repositoryDoc = (testing: boolean): string =>
  `apiVersion: ns8ctl.nethserver.org/v1\nkind: Repository\nmetadata:\n  name: ${REPO}\nspec:\n  url: ${REPO_URL}\n  enabled: true\n  testing: ${testing}\n`;
const moduleDoc = (version: string): string =>
  `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${ID}\nspec:\n  module: webapp\n  version: "${version}"\n  node: 1\n`;

/** Writes the two manifests into /root/manifests of node 1. */
async function writeManifests(version: string, testing = false): Promise<void> {
  await must('write manifests', ['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/all.yaml`], `${repositoryDoc(testing)}---\n${moduleDoc(version)}`);
}

async function apply(version: string, testing = false): Promise<void> {
  await writeManifests(version, testing);
  await must('apply', ['ns8ctl', 'apply', '-f', '/root/manifests/']);
}

const diff = (): Promise<{ code: number; out: string; err: string }> => inNode(['ns8ctl', 'diff', '-f', '/root/manifests/']);

/** `ns8ctl node-agent --once`; `expectCode` 1 when an instance is refused (blocked). */
async function agentOnce(expectCode = 0): Promise<string> {
  const res = await inNode(['ns8ctl', 'node-agent', '--node', '1', '--once']);
  if (res.code !== expectCode) throw new Error(`node-agent --once exited ${res.code} (expected ${expectCode}):\n${res.out}\n${res.err}`);
  return res.out;
}

/**
 * Publishes webapp tags: pushes the example image of each to `<registry>/repoupd/webapp`, runs the real `ns8ctl createrepo` against the registry, installs the
 * result where the node's server serves it, and (unless `refresh: false`, before the Repository
 * is applied) expires the cache with `ns8ctl repo refresh`.
 */
async function publish(tags: (keyof ExampleImages['webapp'])[], opts: { refresh?: boolean } = {}): Promise<unknown[]> {
  for (const tag of tags) {
    const src = images.webapp[tag];
    await runner.run(['skopeo', 'copy', '-q', '--src-tls-verify=false', '--dest-tls-verify=false', `docker://${src}`, `docker://${source}:${tag}`], { purpose: `publish webapp ${tag}`, timeoutMs: 120_000 });
  }
  const made = await runCli(['createrepo', repoDir, '--no-tls-verify']);
  if (made.code !== 0) throw new Error(`ns8ctl createrepo exited ${made.code}:\n${made.stdout}\n${made.stderr}`);
  const text = readFileSync(join(repoDir, 'repodata.json'), 'utf8');
  await must('install repodata.json', ['sh', '-c', 'mkdir -p /root/repo && cat > /root/repo/.repodata.tmp && mv /root/repo/.repodata.tmp /root/repo/repodata.json'], text);
  if (opts.refresh !== false) await must('repo refresh', ['ns8ctl', 'repo', 'refresh', REPO]);
  return JSON.parse(text) as unknown[];
}

/**
 * Builds and pushes `<source>:<tag>` with buildah from webapp 2.0.0: `files` (paths under
 * imageroot/) replaced, the version label set.
 */
async function derive(tag: string, files: Record<string, string>): Promise<void> {
  const base = images.webapp['2.0.0'];
  const ctr = `${NAME}-build`;
  const work = mkdtempSync(join(tmpdir(), 'ns8ctl-repoupd-build-'));
  try {
    await runner.run(['buildah', 'rm', ctr], { allowFailure: true });
    await runner.run(['buildah', 'from', '-q', '--tls-verify=false', '--name', ctr, `docker://${base}`], { purpose: 'buildah from webapp 2.0.0', timeoutMs: 120_000 });
    for (const [rel, text] of Object.entries(files)) {
      const local = join(work, rel.replaceAll('/', '_'));
      writeFileSync(local, text);
      await runner.run(['buildah', 'copy', ctr, local, `/imageroot/${rel}`], { purpose: `set imageroot/${rel}` });
    }
    await runner.run(['buildah', 'config', '--label', `org.opencontainers.image.version=${tag}`, ctr], { purpose: `label webapp ${tag}` });
    await runner.run(['buildah', 'commit', '-q', '--tls-verify=false', ctr, `docker://${source}:${tag}`], { purpose: `push webapp ${tag}`, timeoutMs: 120_000 });
  } finally {
    await runner.run(['buildah', 'rm', ctr], { allowFailure: true });
    await withImageBuildLock(() => runner.run(['podman', 'rmi', '--ignore', base], { allowFailure: true }));
    rmSync(work, { recursive: true, force: true });
  }
}

async function page(port: string, want: string): Promise<string> {
  return eventually(`'${want}' on 127.0.0.1:${port}`, async () => {
    const r = await inNode(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`]);
    return r.code === 0 && r.out.includes(want) ? r.out : undefined;
  });
}

const env = (): Promise<Record<string, string>> => leader.hgetall(keys.moduleEnvironment(ID));
const status = (): Promise<Record<string, string>> => leader.hgetall(keys.moduleStatus(ID));
const ready = async (): Promise<{ status: string; reason: string; message: string } | undefined> =>
  (JSON.parse((await status()).conditions ?? '[]') as { type: string; status: string; reason: string; message: string }[]).find((c) => c.type === 'Ready');
const userctl = (...args: string[]) => inNode(['systemctl', '--user', '-M', `${ID}@`, ...args]);
const invocation = async (): Promise<string> => (await userctl('show', '-p', 'InvocationID', 'webapp.service')).out.trim();
const homeFile = (rel: string) => inNode(['cat', `/home/${ID}/.config/${rel}`]);
/** Images in the module user's own (rootless) storage. */
const userImages = async (): Promise<string[]> =>
  (await must('list user images', ['runuser', '-u', ID, '--', 'sh', '-c', `cd && XDG_RUNTIME_DIR=/run/user/$(id -u) podman images --format '{{.Repository}}:{{.Tag}}'`])).split('\n').filter(Boolean);

beforeAll(async () => {
  const pkg = JSON.parse(readFileSync(`${deps.projectRoot}/package.json`, 'utf8')) as { version: string };
  await deleteSandbox({ name: NAME }, deps);
  info = await createSandbox({ name: NAME, nodes: 1 }, deps);
  images = await ensureExampleImages(info.registry);
  source = `${info.registry}/repoupd/webapp`;
  leader = new Redis(adminRedisUrl(info.addresses['1'] ?? '', await readAdminPassword(deps, NAME)), { maxRetriesPerRequest: 1 });
  const v = await inNode(['ns8ctl', '--version']);
  if (v.out.trim() !== pkg.version) throw new Error(`ns8ctl is not built for the sandbox (run npm run build): ${v.out} ${v.err}`);
  repoDir = mkdtempSync(join(tmpdir(), 'ns8ctl-repoupd-'));
  mkdirSync(join(repoDir, 'webapp', 'screenshots'), { recursive: true });
  writeFileSync(
    join(repoDir, 'webapp', 'metadata.json'),
    JSON.stringify({
      name: 'Web App',
      description: { en: 'ns8ctl example module' },
      categories: ['example'],
      authors: [{ name: 'ns8ctl', email: 'ns8ctl@example.org' }],
      docs: { documentation_url: 'https://example.org/docs', bug_url: 'https://example.org/bugs', code_url: 'https://example.org/code' },
      source,
    }),
  );
  writeFileSync(join(repoDir, 'webapp', 'logo.png'), makePng(256, 256));
  writeFileSync(join(repoDir, 'webapp', 'screenshots', 'main.png'), makePng(1024, 768));
  await must('write the repodata server', ['sh', '-c', 'mkdir -p /root/repo && cat > /root/repo-server.js'], SERVER);
  await must('start the repodata server', ['systemd-run', '--unit=repoupd-http', '--collect', '/opt/ns8ctl/bin/node', '/root/repo-server.js']);
  await eventually('the repodata server answers', async () => {
    const r = await inNode(['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '3', `${REPO_URL}repodata.json`]);
    return r.out.trim() === '404' ? true : undefined;
  });
}, 900_000);

afterAll(async () => {
  leader?.disconnect();
  if (repoDir) rmSync(repoDir, { recursive: true, force: true });
  // NS8CTL_KEEP_SANDBOX=1 keeps the node for a look after a failure.
  if (!process.env.NS8CTL_KEEP_SANDBOX) await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
}, 120_000);

describe('updates through a software repository in a sandbox node', () => {
  let port = '';

  test('module: webapp, version ^1.0 resolves through the repository to the only published version', async () => {
    const repodata = await publish(['1.0.0'], { refresh: false });
    expect(repodata).toMatchObject([{ id: 'webapp', source, versions: [{ tag: '1.0.0', testing: false }] }]);
    await writeManifests('^1.0');
    const planned = await diff();
    expect(planned.out).toContain(`# resolves to ${source}:1.0.0 (repository ${REPO})`);
    // A repository only planned is downloaded without touching the cache of its name.
    expect(await leader.exists(keys.repositoryCache(REPO))).toBe(0);
    await apply('^1.0');
    expect(await leader.hgetall(keys.repository(REPO))).toMatchObject({ url: REPO_URL, status: '1', testing: '0' });
    await agentOnce();
    const e = await env();
    expect(e.IMAGE_URL).toBe(`${source}:1.0.0`);
    expect(e.WEBAPP_HTTPD_IMAGE).toBe(images.webappHttpd['1.0.0']);
    port = e.TCP_PORT ?? '';
    expect(port).toMatch(/^\d+$/);
    await page(port, 'webapp-httpd 1.0.0');
    expect((await homeFile('etc/version')).out.trim()).toBe('1.0.0');
    expect((await status()).imageUrl).toBe(`${source}:1.0.0`);
    expect(await ready()).toMatchObject({ status: 'True' });
    // The node agent read the repository through the cache, as NS8 keeps it.
    expect(await leader.ttl(keys.repositoryCache(REPO))).toBeGreaterThan(3000);
  }, 300_000);

  test('a version whose min-from the running one does not satisfy is refused; the instance keeps running', async () => {
    await publish(['2.0.0']);
    // 2.0.0 is outside ^1.0: nothing to do.
    expect(await agentOnce()).toMatch(new RegExp(`${ID}\\s+unchanged`));
    await writeManifests('^2.0');
    const planned = await diff();
    expect(planned.out).toContain('↑ Module/webapp1 update 1.0.0 -> 2.0.0 (refused)');
    expect(planned.out).toContain('2.0.0 can only update instances running >= 1.1.0 (org.nethserver.min-from)');
    await apply('^2.0');
    const before = await invocation();
    const out = await agentOnce(1);
    expect(out).toMatch(new RegExp(`${ID}\\s+blocked`));
    expect(await ready()).toMatchObject({ status: 'False', reason: 'UpdateRefused', message: expect.stringMatching(/min_from_not_met.*1\.1\.0.*keeps running .*webapp:1\.0\.0/) });
    const s = await status();
    expect(s.imageUrl).toBe(`${source}:1.0.0`);
    expect(s.targetImage).toBe(`${source}:2.0.0`);
    expect((await env()).IMAGE_URL).toBe(`${source}:1.0.0`);
    expect(await invocation()).toBe(before);
    expect((await userctl('is-active', 'webapp.service')).out.trim()).toBe('active');
    expect((await homeFile('etc/version')).out.trim()).toBe('1.0.0');
    await page(port, 'webapp-httpd 1.0.0');
    // Back inside ^1.0 the refusal is gone.
    await apply('^1.0');
    expect(await agentOnce()).toMatch(new RegExp(`${ID}\\s+unchanged`));
    expect(await ready()).toMatchObject({ status: 'True' });
    expect((await status()).targetImage).toBeUndefined();
  }, 300_000);

  test('a new release inside the range is installed: new image, PREV_ variables, files re-extracted, unit restarted', async () => {
    await publish(['1.1.0']);
    const planned = await diff();
    expect(planned.code).toBe(0);
    expect(planned.out).toContain('↑ Module/webapp1 update 1.0.0 -> 1.1.0');
    const before = await invocation();
    await agentOnce();
    const e = await env();
    expect(e).toMatchObject({ IMAGE_URL: `${source}:1.1.0`, PREV_IMAGE_URL: `${source}:1.0.0`, WEBAPP_HTTPD_IMAGE: images.webappHttpd['1.0.0'], PREV_WEBAPP_HTTPD_IMAGE: images.webappHttpd['1.0.0'], TCP_PORT: port });
    expect(await invocation()).not.toBe(before);
    expect((await homeFile('etc/version')).out.trim()).toBe('1.1.0');
    expect((await inNode(['test', '-e', `/home/${ID}/.config/bin/old-tool`])).code).not.toBe(0);
    expect((await inNode(['test', '-e', `/home/${ID}/.config/bin/new-tool`])).code).toBe(0);
    expect((await homeFile('state/environment')).out).toContain(`IMAGE_URL=${source}:1.1.0`);
    await page(port, 'webapp-httpd 1.0.0');
    expect(await ready()).toMatchObject({ status: 'True' });
    expect((await status()).imageUrl).toBe(`${source}:1.1.0`);
    const left = await userImages();
    expect(left).toContain(images.webappHttpd['1.0.0']);
    expect(left).not.toContain(`${source}:1.0.0`);
    expect((await diff()).out).not.toContain('↑');
  }, 300_000);

  test('from 1.1.0 the min-from of 2.0.0 is met: the new service image is served', async () => {
    await apply('^2.0');
    await agentOnce();
    const e = await env();
    expect(e).toMatchObject({ IMAGE_URL: `${source}:2.0.0`, PREV_IMAGE_URL: `${source}:1.1.0`, WEBAPP_HTTPD_IMAGE: images.webappHttpd['2.0.0'], PREV_WEBAPP_HTTPD_IMAGE: images.webappHttpd['1.0.0'] });
    await page(port, 'webapp-httpd 2.0.0');
    expect((await inNode(['test', '-e', `/home/${ID}/.config/etc/webapp-v2.conf`])).code).toBe(0);
    const left = await userImages();
    expect(left).toContain(images.webappHttpd['2.0.0']);
    expect(left).not.toContain(`${source}:1.1.0`);
    expect(left).not.toContain(images.webappHttpd['1.0.0']);
    // Root's store held copies pulled only to read labels (no skopeo in the node): none is left.
    expect(await must('root images', ['podman', 'images', '--format', '{{.Repository}}:{{.Tag}}'])).not.toContain('repoupd/webapp');
    expect(await ready()).toMatchObject({ status: 'True' });
  }, 300_000);

  test('a prerelease is picked only once the Repository has testing: true', async () => {
    // 2.1.0-rc.1: 2.0.0 with its own version file and label.
    await derive(RC, { 'etc/version': `${RC}\n` });
    const repodata = (await publish([])) as { versions: { tag: string; testing: boolean }[] }[];
    expect(repodata[0]?.versions.map((v) => `${v.tag}:${v.testing}`)).toEqual([`${RC}:true`, '2.0.0:false', '1.1.0:false', '1.0.0:false']);
    // testing: false hides the prerelease: ^2.0 stays on 2.0.0.
    expect((await diff()).out).not.toContain('↑');
    expect(await agentOnce()).toMatch(new RegExp(`${ID}\\s+unchanged`));
    expect((await env()).IMAGE_URL).toBe(`${source}:2.0.0`);
    await writeManifests('^2.0', true);
    expect((await diff()).out).toContain(`↑ Module/webapp1 update 2.0.0 -> ${RC}`);
    await apply('^2.0', true);
    expect((await leader.hgetall(keys.repository(REPO))).testing).toBe('1');
    await agentOnce();
    expect(await env()).toMatchObject({ IMAGE_URL: `${source}:${RC}`, PREV_IMAGE_URL: `${source}:2.0.0` });
    expect((await homeFile('etc/version')).out.trim()).toBe(RC);
    await page(port, 'webapp-httpd 2.0.0');
    expect(await ready()).toMatchObject({ status: 'True' });
  }, 300_000);

  test('a release whose service does not start is rolled back: previous files, environment and running unit, UpdateFailed', async () => {
    // 2.1.0: its unit exits at once (systemd restarts it on failure, in vain).
    const unit = readFileSync(join(deps.projectRoot, 'examples', 'modules', 'webapp', 'imageroot', 'systemd', 'user', 'webapp.service'), 'utf8').replace(/^ExecStart=.*$/m, 'ExecStart=/bin/false');
    await derive('2.1.0', { 'etc/version': '2.1.0\n', 'systemd/user/webapp.service': unit });
    await publish([]);
    expect((await diff()).out).toContain(`↑ Module/webapp1 update ${RC} -> 2.1.0`);
    const out = await agentOnce(1);
    expect(out).toMatch(new RegExp(`${ID}\\s+blocked`));
    expect(await ready()).toMatchObject({ status: 'False', reason: 'UpdateFailed', message: expect.stringMatching(new RegExp(`update .*:${RC} -> .*:2\\.1\\.0 failed at step (re)?start-units: .*webapp\\.service did not start.*rolled back to .*:${RC.replaceAll('.', '\\.')}`)) });
    expect(await status()).toMatchObject({ imageUrl: `${source}:${RC}`, targetImage: `${source}:2.1.0` });
    // Really back: the environment, the files (unit file included) and the running service of RC.
    expect((await env()).IMAGE_URL).toBe(`${source}:${RC}`);
    expect((await homeFile('state/environment')).out).toContain(`IMAGE_URL=${source}:${RC}`);
    expect((await homeFile('etc/version')).out.trim()).toBe(RC);
    expect((await homeFile('systemd/user/webapp.service')).out).not.toContain('/bin/false');
    await eventually('webapp.service active again', async () => ((await userctl('is-active', 'webapp.service')).out.trim() === 'active' ? true : undefined));
    await page(port, 'webapp-httpd 2.0.0');
    // Not tried again for this generation: the next pass leaves it as it is.
    const before = await invocation();
    expect(await agentOnce(1)).toMatch(new RegExp(`${ID}\\s+blocked`));
    expect(await invocation()).toBe(before);
  }, 300_000);
});
