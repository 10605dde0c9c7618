import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { getCommand } from '../../src/cli/commands/get.js';
import type { CliDeps } from '../../src/cli/deps.js';
import { ExecaRunner } from '../../src/host/runner.js';
import { runCli } from '../support/cli.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const node = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata:\n  name: node1\nspec:\n  id: 1\n`;
const IMAGE = '127.0.0.1:5000/ns8ctl-fixtures/webapp';

const mod = (name: string, extra = ''): string => `apiVersion: ns8ctl.nethserver.org/v1
kind: Module
metadata:
  name: ${name}
spec:
  image: ${IMAGE}:1.0.0
  node: 1
${extra}`;

describe('ns8ctl get against a real Redis: secrets', () => {
  let srv: TestRedis;
  let redis: Redis;
  let dir: string;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    srv = await startRedis();
    redis = srv.client();
  });
  afterAll(async () => {
    await srv.stop();
  });
  beforeEach(async () => {
    await redis.flushall();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-get-'));
    env = { NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: path.join(dir, '.state'), NS8CTL_CORE_VERSION: '3.21.0' };
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  async function apply(docs: Record<string, string>): Promise<void> {
    const m = path.join(dir, 'm');
    mkdirSync(m, { recursive: true });
    for (const [f, text] of Object.entries(docs)) writeFileSync(path.join(m, f), text);
    const res = await runCli(['apply', '-f', m], env);
    expect(res.stderr).toContain('Applied');
  }

  /** Runs getCommand in-process (the options main() passes), capturing stdout. */
  async function get(resource: string, name: string | undefined, opts: { output?: string; showSecrets?: boolean }): Promise<{ code: number; stdout: string }> {
    let stdout = '';
    const deps: CliDeps = {
      stdout: (t) => void (stdout += t),
      stderr: () => undefined,
      env,
      isTTY: false,
      runner: new ExecaRunner(),
      connect: async () => ({ redis, url: srv.url, embedded: false }),
      stdin: async () => '',
      cwd: dir,
    };
    const code = await getCommand(resource, name, opts, deps);
    return { code, stdout };
  }

  it('masks secret values of get -o json and -o yaml, as plans do, and shows them with showSecrets', async () => {
    await apply({ 'node.yaml': node, 'a.yaml': mod('webapp1', '  configuration:\n    admin_password: Pa55-w0rd\n    apiToken: tok-123\n    title: Hello\n    backup_url: https://u:urlpw@backup.example/\n') });
    const json = await runCli(['get', 'modules', 'webapp1', '-o', 'json'], env);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout).spec.configuration).toEqual({
      admin_password: '(sensitive value)',
      apiToken: '(sensitive value)',
      title: 'Hello',
      backup_url: 'https://u:(sensitive value)@backup.example/',
    });
    const yaml = await runCli(['get', 'modules', '-o', 'yaml'], env);
    expect(yaml.stdout).toContain('admin_password: (sensitive value)');
    for (const out of [json.stdout, yaml.stdout]) {
      expect(out).not.toContain('Pa55-w0rd');
      expect(out).not.toContain('tok-123');
      expect(out).not.toContain('urlpw');
    }
    const shown = await get('modules', 'webapp1', { output: 'json', showSecrets: true });
    expect(JSON.parse(shown.stdout).spec.configuration).toMatchObject({ admin_password: 'Pa55-w0rd', apiToken: 'tok-123', backup_url: 'https://u:urlpw@backup.example/' });
    expect((await get('modules', undefined, { output: 'yaml', showSecrets: true })).stdout).toContain('admin_password: Pa55-w0rd');
  });

  it('masks a password in a repository URL in the table and json, unless showSecrets', async () => {
    await apply({ 'r.yaml': `apiVersion: ns8ctl.nethserver.org/v1\nkind: Repository\nmetadata:\n  name: private\nspec:\n  url: https://me:repopw@repo.example/ns8/\n  enabled: false\n` });
    const table = await runCli(['get', 'repositories'], env);
    expect(table.stdout).toContain('https://me:(sensitive value)@repo.example/ns8/');
    expect(table.stdout).not.toContain('repopw');
    expect((await runCli(['get', 'repositories', '-o', 'json'], env)).stdout).not.toContain('repopw');
    expect((await get('repositories', undefined, { showSecrets: true })).stdout).toContain('https://me:repopw@repo.example/ns8/');
  });

});
