/**
 * `npm run demo` end to end on this host (root, Debian 12, podman): a sandbox node, the example
 * images in its registry, the manifests, `ns8ctl run` in node 1, a Ready instance answering HTTP;
 * an edit of the manifest on the host converges; a second run changes nothing; `--down` leaves
 * nothing behind. Uses the built CLI inside the node (CI builds before testing) and the shared
 * cached node root filesystem of the other sandbox tests.
 */
import { existsSync, promises as fsp } from 'node:fs';
import path from 'node:path';
import { NOTHING_CHANGED, downDemo, runDemo, type DemoResult } from '../../src/demo/demo.js';
import { main as cliMain, processIO } from '../../src/cli/main.js';
import { sandboxEnv } from '../../src/sandbox/env.js';
import { sandboxPaths } from '../../src/sandbox/naming.js';
import { readRecord } from '../../src/sandbox/record.js';
import { useDemoSandbox } from '../support/demo-sandbox.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'demotest';
let out = '';
const { runner, demoDir, deps } = useDemoSandbox(NAME, 'ns8ctl-demo-test-', (t) => void (out += t));
let first: DemoResult;
let registry = '';

async function getModules(url: string): Promise<string> {
  let text = '';
  await cliMain(['get', 'modules'], { ...processIO(), stdout: (t) => void (text += t), stderr: (t) => void (text += t), env: { ...process.env, NS8CTL_REDIS_URL: url }, isTTY: false });
  return text;
}

describe('npm run demo', () => {
  test('brings up a sandbox node where the example web app is Ready and answers HTTP, and shows it', async () => {
    first = await runDemo({ name: NAME }, deps);
    registry = (await readRecord(deps, NAME)).registry;
    expect(first.http).toEqual([{ id: 'webapp1', port: expect.stringMatching(/^\d+$/), body: expect.stringContaining('webapp-httpd 1.0.0') }]);
    expect(first.changes).toEqual(expect.arrayContaining([expect.stringMatching(/^created sandbox "demotest"/), expect.stringMatching(/^built and pushed 7 example images/), expect.stringMatching(/^started the loop/)]));
    expect(out).toMatch(/\$ ns8ctl get modules -o wide\nNAME\s+MODULE.*\nwebapp1\s+webapp\s+1\.0\.0\s+1\s+1\s+Ready\s/);
    expect(out).toMatch(/module-became-ready\s+webapp1/);
    expect(out).toContain(`sudoedit ${demoDir}/manifests/webapp1.yaml`);
    expect(out).toContain('left out manifests/dokuwiki1.yaml: needs the internet');
    // The images were pushed, and no local copy is left in the host's storage.
    expect((await runner.run(['podman', 'images', '-q', '--filter', `reference=${registry}/ns8ctl-examples/*`])).stdout.trim()).toBe('');
  }, 900_000 /* a cold node root filesystem takes 5-6 minutes under load */);

  test('an edit of the manifest on the host converges through the loop in the node', async () => {
    const file = path.join(first.manifestsDir, 'webapp1.yaml');
    const text = await fsp.readFile(file, 'utf8');
    expect(text).toContain(`image: ${registry}/ns8ctl-examples/webapp:1.0.0`);
    // Saved as editors do: a whole new file renamed over the old one.
    await fsp.writeFile(`${file}.new`, text.replace('webapp:1.0.0', 'webapp:1.1.0'));
    await fsp.rename(`${file}.new`, file);
    const { redisUrl } = await sandboxEnv({ name: NAME }, deps);
    const table = await eventually('webapp1 1.1.0 Ready', async () => {
      const t = await getModules(redisUrl);
      return /webapp1\s+webapp\s+1\.1\.0\s+1\s+2\s+Ready/.test(t) ? t : undefined;
    }, { timeoutMs: 180_000, everyMs: 1000 });
    expect(table).toMatch(/webapp1\s+webapp\s+1\.1\.0/);
  }, 240_000);

  test('a second run finds everything in place, changes nothing and keeps the edit', async () => {
    const { inNode } = sandboxNode(NAME);
    const loopRun = async (): Promise<string> => (await inNode(['systemctl', 'show', '-p', 'InvocationID', 'ns8ctl-demo'])).out.trim();
    const loopBefore = await loopRun();
    expect(loopBefore).toMatch(/^InvocationID=[0-9a-f]{32}$/);
    out = '';
    const before = runner.history.length;
    const again = await runDemo({ name: NAME }, deps);
    // The loop kept running: not restarted, not started twice.
    expect(await loopRun()).toBe(loopBefore);
    expect(again.changes).toEqual([]);
    expect(out).toContain(NOTHING_CHANGED);
    expect(out).toContain('reusing sandbox "demotest"');
    expect(out).toContain('all 7 example images are in the sandbox registry already');
    expect(out).toContain('kept webapp1.yaml');
    expect(runner.history.slice(before).filter((r) => r.mutating)).toEqual([]);
    expect(again.http[0]?.body).toContain('webapp-httpd 1.0.0');
    expect(out).toMatch(/webapp1\s+webapp\s+1\.1\.0\s+1\s+2\s+Ready/);
  }, 300_000);

  test('--down removes the sandbox, its network, its state and the demo dir', async () => {
    const state = sandboxPaths(deps.env, NAME).dir;
    const down = await downDemo({ name: NAME }, deps);
    expect(down.containers.sort()).toEqual([`ns8ctl-${NAME}-node1`, `ns8ctl-${NAME}-registry`]);
    expect((await runner.run(['podman', 'ps', '-a', '-q', '--filter', `label=org.ns8ctl.sandbox=${NAME}`])).stdout.trim()).toBe('');
    expect((await runner.run(['podman', 'network', 'exists', `ns8ctl-${NAME}`], { allowFailure: true })).exitCode).not.toBe(0);
    expect((await runner.run(['podman', 'images', '-q', '--filter', `reference=${registry}/ns8ctl-examples/*`])).stdout.trim()).toBe('');
    expect(existsSync(state)).toBe(false);
    expect(existsSync(demoDir)).toBe(false);
    // Idempotent, like sandbox delete.
    expect(await downDemo({ name: NAME }, deps)).toEqual({ containers: [], network: null, images: [], removedDirs: [] });
  }, 120_000);
});
