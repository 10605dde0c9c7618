// Testing manifests against a sandbox from the host, as a kind user would: create, `sandbox env`,
// `ns8ctl apply -f` and `get modules` on the host with only NS8CTL_REDIS_URL set, and `sandbox exec`
// as a passthrough (stdin piped in, output streamed, exit code kept). One 1-node sandbox of its own.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { execa } from 'execa';
import { ProcessRunner } from '../../src/host/runner.js';
import type { SandboxInfo } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { defaultSandboxDeps } from '../../src/sandbox/deps.js';
import { execInNode } from '../../src/sandbox/lifecycle.js';
import { pushImage } from '../../src/sandbox/push.js';
import { runCli } from '../support/cli.js';

const NAME = 'hostaccess';
const deps = defaultSandboxDeps({ runner: new ProcessRunner(), stdout: () => undefined, stderr: () => undefined });
const bin = path.join(deps.projectRoot, 'dist', 'src', 'cli', 'bin.js');

/** The built CLI as a separate process (stdin, stdout and stderr are pipes, as in a shell pipeline). */
const ns8ctl = (args: string[], input = '') => execa(process.execPath, [bin, ...args], { input, reject: false, timeout: 120_000 });

const moduleManifest = (id: string, registry: string): string =>
  `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${id}\nspec:\n  image: ${registry}/ns8ctl-examples/webapp:1.0.0\n  node: 1\n`;

describe('a sandbox used from the host', () => {
  let info: SandboxInfo;
  let dir: string;
  let hostEnv: NodeJS.ProcessEnv;

  beforeAll(async () => {
    await deleteSandbox({ name: NAME }, deps); // a previous run killed half-way
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-sandbox-host-'));
    const created = await runCli(['sandbox', 'create', '--name', NAME, '-o', 'json']);
    if (created.code !== 0) throw new Error(`sandbox create failed:\n${created.stderr}`);
    info = JSON.parse(created.stdout) as SandboxInfo;
  }, 900_000);

  afterAll(async () => {
    await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  test('sandbox env prints an export line a shell can eval, with the URL that create and list report', async () => {
    const env = await runCli(['sandbox', 'env', NAME]);
    expect(env.code).toBe(0);
    const url = /^export NS8CTL_REDIS_URL='(redis:\/\/ns8ctl:[0-9a-f]+@[0-9.]+:6379)'\n$/.exec(env.stdout)?.[1];
    expect(url).toBe(info.leaderRedisUrl);
    const evaluated = await execa('bash', ['-c', `eval "$1"; printf %s "$NS8CTL_REDIS_URL"`, 'bash', env.stdout]);
    expect(evaluated.stdout).toBe(url);
    const listed = JSON.parse((await runCli(['sandbox', 'list', '--name', NAME, '-o', 'json'])).stdout) as { sandboxes: { leaderRedisUrl: string }[] };
    expect(listed.sandboxes.map((s) => s.leaderRedisUrl)).toEqual([url]);
    expect((await runCli(['sandbox', 'list', '--name', NAME])).stdout).toContain(`${NAME}: leader Redis ${url}`);
    hostEnv = { NS8CTL_REDIS_URL: url, NS8CTL_STATE_DIR: path.join(dir, 'state') };
  });

  test('apply -f and get modules on the host reach the sandbox leader as its admin user, and the node sees the same', async () => {
    writeFileSync(path.join(dir, 'webapp1.yaml'), moduleManifest('webapp1', info.registry));
    const applied = await runCli(['apply', '-f', dir], hostEnv);
    expect({ code: applied.code, stderr: applied.stderr }).toMatchObject({ code: 0 });
    expect(applied.stdout).toMatch(/Module\/webapp1 \(create\)/);
    expect((await runCli(['get', 'modules'], hostEnv)).stdout).toMatch(/^webapp1\s+webapp\s+1\.0\.0\s+1\s/m);
    let out = '';
    const code = await execInNode({ name: NAME, node: '1', command: ['ns8ctl', 'get', 'modules'] }, { ...deps, stdout: (t) => void (out += t) });
    expect(code).toBe(0);
    expect(out).toMatch(/^webapp1\s/m);
  }, 120_000);

  test('sandbox exec feeds piped stdin to the command: ns8ctl apply -f - inside node 1', async () => {
    const res = await ns8ctl(['sandbox', 'exec', '--name', NAME, '1', '--', 'ns8ctl', 'apply', '-f', '-'], moduleManifest('webapp2', info.registry));
    expect(res.stderr).not.toMatch(/error/i);
    expect(res.exitCode).toBe(0);
    expect(res.stdout).toMatch(/Module\/webapp2 \(create\)/);
    expect((await runCli(['get', 'modules'], hostEnv)).stdout).toMatch(/^webapp2\s/m);
  }, 120_000);

  test("sandbox exec keeps the command's stdout, stderr and exit code apart", async () => {
    const res = await ns8ctl(['sandbox', 'exec', '--name', NAME, '1', '--', 'sh', '-c', 'cat; echo to-stderr >&2; exit 7'], 'from-stdin\n');
    expect([res.exitCode, res.stdout, res.stderr]).toEqual([7, 'from-stdin', 'to-stderr']);
  }, 60_000);

  test('sandbox exec streams output while the command runs (it answers a prompt it has not finished)', async () => {
    const stdin = new PassThrough();
    let out = '';
    const code = await execInNode(
      { name: NAME, node: '1', command: ['sh', '-c', 'echo ready; read answer; echo "got $answer"'] },
      {
        ...deps,
        execStdio: { mode: 'pipe', stdin },
        stdout: (t) => {
          out += t;
          // Only answerable if "ready" arrived before the command ended: a buffered exec would hang here.
          if (out.includes('ready') && !stdin.writableEnded) stdin.end('go\n');
        },
      },
    );
    expect([code, out]).toEqual([0, 'ready\ngot go\n']);
  }, 60_000);

  test('create reports how long each node took to boot', () => {
    expect(info.timings.nodes.map((n) => n.id)).toEqual([1]);
    const [node] = info.timings.nodes;
    expect(node?.runS).toBeGreaterThan(0);
    expect(node?.bootS).toBeCloseTo((node?.runS ?? 0) + (node?.systemdS ?? 0), 6);
  });

  test('push of an image that is not in local storage fails with image_not_found (real skopeo)', async () => {
    await expect(pushImage({ name: NAME, image: 'localhost/ns8ctl-test-no-such-image:1' }, deps)).rejects.toMatchObject({ code: 'image_not_found' });
  }, 60_000);
});
