import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const run = promisify(execFile);
const BIN = path.resolve('dist/src/cli/bin.js');

/** Runs the built CLI with plain node, as a user would (npm test builds it first). */
async function ns8ctl(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH, HOME: process.env.HOME, NS8CTL_OFFLINE: '1', ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

describe('the built ns8ctl command (plain node, real ESM)', () => {
  let srv: TestRedis;
  let dir: string;
  beforeAll(async () => {
    srv = await startRedis();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-smoke-'));
  });
  afterAll(async () => {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('prints help for the program and every command', async () => {
    const top = await ns8ctl(['--help']);
    expect(top.code).toBe(0);
    const cmds = ['validate', 'diff', 'apply', 'get', 'delete', 'add-module', 'remove-module', 'repo', 'search', 'createrepo', 'node-agent', 'run-action', 'publish', 'runagent', 'agent', 'sandbox', 'run', 'controller', 'suspend', 'resume', 'events'];
    for (const cmd of cmds) expect(top.stdout).toContain(cmd);
    // 21 processes: four at a time, with room for a loaded machine (each one is a full CLI start).
    for (let i = 0; i < cmds.length; i += 4) {
      const batch = cmds.slice(i, i + 4);
      const subs = await Promise.all(batch.map((cmd) => ns8ctl([cmd, '--help'])));
      subs.forEach((sub, j) => {
        expect(sub.code).toBe(0);
        expect(sub.stdout).toContain(`Usage: ns8ctl ${batch[j]}`);
      });
    }
  }, 240_000);

  it('exits 2 on usage errors', async () => {
    const r = await ns8ctl(['diff']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("required option '-f, --filename <path>'");
    const a = await ns8ctl(['apply']);
    expect(a.code).toBe(2);
    expect(a.stderr).toContain('apply needs the manifests (-f PATH) or a saved plan (--plan FILE)');
    expect((await ns8ctl(['frobnicate'])).code).toBe(2);
  });

  it('validates, applies and lists the example manifests', async () => {
    const env = { NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: path.join(dir, 'state') };
    expect((await ns8ctl(['validate', '--offline', '-f', 'manifests/'])).code).toBe(0);
    const applied = await ns8ctl(['apply', '-f', 'manifests/', '-o', 'json'], env);
    expect(applied.code).toBe(0);
    expect(JSON.parse(applied.stdout).summary.create).toBeGreaterThan(0);
    const got = await ns8ctl(['get', 'modules', '-o', 'json'], env);
    expect(JSON.parse(got.stdout).items.map((i: { metadata: { name: string } }) => i.metadata.name)).toEqual(['dokuwiki1', 'webapp1']);
    const again = await ns8ctl(['diff', '-f', 'manifests/'], env);
    expect(again.code).toBe(0);
    // Offline: the example's public repository is not contacted, and the plan says so.
    expect(again.stderr).toContain('offline mode');
  });

  it('reports errors as one JSON document with -o json', async () => {
    const r = await ns8ctl(['get', 'modules', 'nope1', '-o', 'json'], { NS8CTL_REDIS_URL: srv.url });
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toEqual({ error: 'not_found', message: expect.stringContaining('nope1') });
  });
});
