import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ProcessRunner } from '../../src/host/runner.js';
import { ensureExampleImages, type ExampleImages } from '../support/example-images.js';
import { preparePodmanHost } from '../support/host-podman.js';
import { freePort } from '../support/redis-server.js';
import { startRegistry, type TestRegistry } from '../support/registry.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

const runner = new ProcessRunner();

async function labelsOf(url: string): Promise<Record<string, string>> {
  const res = await runner.run(['skopeo', 'inspect', '--tls-verify=false', `docker://${url}`]);
  return (JSON.parse(res.stdout) as { Labels: Record<string, string> }).Labels;
}

/** Files under a path inside an image, listed from `podman export` (as NS8's extract-image reads them). */
async function filesIn(url: string, prefix: string): Promise<string[]> {
  await runner.run(['podman', 'pull', '-q', '--tls-verify=false', url]);
  const created = await runner.run(['podman', 'create', url, '/bin/busybox', 'true']);
  const id = created.stdout.trim();
  try {
    // podman 4.3 cannot export to a pipe ("open /dev/stdout: no such device"): use a file.
    const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-export-'));
    await runner.run(['podman', 'export', '-o', path.join(dir, 'fs.tar'), id]);
    const list = await runner.run(['tar', '-tf', path.join(dir, 'fs.tar')]);
    rmSync(dir, { recursive: true, force: true });
    return list.stdout.split('\n').filter((f) => f.startsWith(prefix) && !f.endsWith('/')).sort();
  } finally {
    await runner.run(['podman', 'rm', '-f', id], { allowFailure: true });
  }
}

describe('example module images', () => {
  let registry: TestRegistry;
  let images: ExampleImages;

  beforeAll(async () => {
    await preparePodmanHost();
    registry = await startRegistry();
    images = await ensureExampleImages(registry.address);
  }, 300_000);

  afterAll(async () => {
    const refs = Object.values(images?.byName ?? {}).flatMap((tags) => Object.values(tags));
    await withImageBuildLock(() => runner.run(['podman', 'rmi', '--ignore', ...refs], { allowFailure: true }));
    await registry?.stop();
  });

  test('every tag of every example image is in the registry', async () => {
    for (const [name, tags] of Object.entries({ webapp: ['1.0.0', '1.1.0', '2.0.0'], 'webapp-httpd': ['1.0.0', '2.0.0'], 'rootfull-demo': ['1.0.0', '1.1.0'] })) {
      const res = await runner.run(['skopeo', 'list-tags', '--tls-verify=false', `docker://${registry.address}/ns8ctl-examples/${name}`]);
      expect((JSON.parse(res.stdout) as { Tags: string[] }).Tags.sort()).toEqual(tags);
    }
  });

  test('the webapp module images carry the NS8 labels, naming the service image in this registry', async () => {
    const v1 = await labelsOf(images.webapp['1.0.0']);
    expect(v1).toMatchObject({
      'org.nethserver.tcp-ports-demand': '1',
      'org.nethserver.images': `${registry.address}/ns8ctl-examples/webapp-httpd:1.0.0`,
      'org.nethserver.rootfull': '0',
      'org.nethserver.authorizations': 'traefik@any:routeadm',
      'org.nethserver.flags': 'no_data_backup',
      'org.nethserver.min-core': '0.0.1',
    });
    expect(v1['org.nethserver.min-from']).toBeUndefined();
    const v2 = await labelsOf(images.webapp['2.0.0']);
    expect(v2['org.nethserver.min-from']).toBe('1.1.0');
    expect(v2['org.nethserver.images']).toBe(`${registry.address}/ns8ctl-examples/webapp-httpd:2.0.0`);
  });

  test('the rootfull example is rootfull, demands two ports and allows one instance per node', async () => {
    for (const url of Object.values(images.rootfullDemo)) {
      expect(await labelsOf(url)).toMatchObject({ 'org.nethserver.rootfull': '1', 'org.nethserver.tcp-ports-demand': '2', 'org.nethserver.max-per-node': '1' });
    }
  });

  test('webapp versions differ in files: bin/old-tool exists in 1.0.0 only, the unit and actions in all', async () => {
    const v100 = await filesIn(images.webapp['1.0.0'], 'imageroot/');
    const v110 = await filesIn(images.webapp['1.1.0'], 'imageroot/');
    expect(v100).toContain('imageroot/bin/old-tool');
    expect(v110).not.toContain('imageroot/bin/old-tool');
    expect(v110).toContain('imageroot/bin/new-tool');
    for (const files of [v100, v110]) {
      expect(files).toEqual(expect.arrayContaining([
        'imageroot/systemd/user/webapp.service',
        'imageroot/actions/configure-module/validate-input.json',
        'imageroot/actions/configure-module/20configure',
        'imageroot/actions/get-configuration/20read',
        'imageroot/etc/version',
      ]));
    }
    expect(await filesIn(images.webapp['1.0.0'], 'ui/')).toEqual(['ui/index.html', 'ui/metadata.json']);
  }, 120_000);

  test('the service image answers HTTP with its version when run with podman', async () => {
    const port = await freePort();
    const name = `ns8ctl-example-httpd-${port}`;
    await runner.run(['podman', 'run', '-d', '--rm', '--tls-verify=false', '--name', name, '-p', `127.0.0.1:${port}:8080`, images.webappHttpd['1.0.0'], '/bin/busybox', 'httpd', '-f', '-p', '8080', '-h', '/www']);
    try {
      let body = '';
      for (let i = 0; i < 50 && !body; i++) {
        body = await fetch(`http://127.0.0.1:${port}/`).then((r) => (r.ok ? r.text() : ''), () => '');
        if (!body) await new Promise((r) => setTimeout(r, 100));
      }
      expect(body).toContain('webapp-httpd 1.0.0');
    } finally {
      await runner.run(['podman', 'rm', '-f', '-t', '0', name], { allowFailure: true });
    }
  }, 120_000);
});
