import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { runCli } from '../support/cli.js';
import { freePort } from '../support/redis-server.js';

describe('embedded redis-server (no Redis URL given)', () => {
  let dir: string;
  let port: number;
  let env: NodeJS.ProcessEnv;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-embedded-'));
    port = await freePort();
    env = { NS8CTL_STATE_DIR: path.join(dir, 'state'), NS8CTL_EMBEDDED_PORT: String(port) };
    writeFileSync(path.join(dir, 'node.yaml'), 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n');
  });
  afterAll(async () => {
    const password = readFileSync(path.join(dir, 'state', 'redis', 'admin.password'), 'utf8').trim();
    const admin = new Redis({ path: path.join(dir, 'state', 'redis', 'redis.sock'), username: 'ns8ctl', password, maxRetriesPerRequest: 1, retryStrategy: () => null });
    await admin.shutdown('NOSAVE').catch(() => undefined);
    admin.disconnect();
    rmSync(dir, { recursive: true, force: true });
  });

  it('starts one with persistence and a root-only admin password, then reuses it', async () => {
    const first = await runCli(['apply', '-f', path.join(dir, 'node.yaml')], env);
    expect(first.code).toBe(0);
    const pidFile = path.join(dir, 'state', 'redis', 'redis.pid');
    const pid = readFileSync(pidFile, 'utf8').trim();
    expect(statSync(path.join(dir, 'state', 'redis', 'admin.password')).mode & 0o777).toBe(0o600);
    const second = await runCli(['get', 'nodes', '-o', 'json'], env);
    expect(JSON.parse(second.stdout).items).toHaveLength(1);
    expect(readFileSync(pidFile, 'utf8').trim()).toBe(pid);
    expect(statSync(path.join(dir, 'state', 'redis', 'appendonlydir')).isDirectory()).toBe(true);
  });

  it('follows the seeds access model: the default user reads NS8 keys but cannot write, nor read desired objects', async () => {
    const anon = new Redis(port, '127.0.0.1', { maxRetriesPerRequest: 1, enableReadyCheck: false });
    expect(await anon.get('node/1/ui_name')).toBe('node1');
    await expect(anon.smembers('ns8ctl/desired/node')).rejects.toThrow(/NOPERM/);
    await expect(anon.set('cluster/x', '1')).rejects.toThrow(/NOPERM/);
    anon.disconnect();
  });

  it('says how to install redis-server when it is missing', async () => {
    const other = await freePort();
    const res = await runCli(['get', 'nodes'], { NS8CTL_STATE_DIR: path.join(dir, 'state2'), NS8CTL_EMBEDDED_PORT: String(other), PATH: '/nonexistent' });
    expect(res.code).toBe(3);
    expect(res.stderr).toContain('apt-get install redis-server');
  });
});
