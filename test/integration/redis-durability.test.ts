/**
 * The embedded Redis keeps what ns8ctl wrote across SIGTERM and SIGKILL (append-only file,
 * fsync before acknowledging), keeps its access model (read-only `default` that cannot read
 * desired objects), keeps its files root-only, and never sends its admin password over TCP.
 * Real redis-server, real CLI.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Redis } from 'ioredis';
import { runCli } from '../support/cli.js';
import { freePort } from '../support/redis-server.js';

const SECRET = 'Sup3r-s3cret-pw';

function moduleYaml(id: string, extra = ''): string {
  return `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata: {name: ${id}}\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0\n  node: 1\n${extra}`;
}
const NODE_YAML = 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1, address: 127.0.0.1}\n';

interface Embedded {
  dir: string;
  state: string;
  port: number;
  env: NodeJS.ProcessEnv;
  file(name: string, content: string): string;
  pid(): number;
  /** Sends `signal` to the embedded redis-server and resolves once the process is gone. */
  kill(signal: NodeJS.Signals): Promise<void>;
  admin(): Redis;
  cleanup(): Promise<void>;
}

async function embedded(prepare?: (state: string) => void): Promise<Embedded> {
  const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-durable-'));
  const state = path.join(dir, 'state');
  prepare?.(state);
  const port = await freePort();
  const env = { NS8CTL_STATE_DIR: state, NS8CTL_EMBEDDED_PORT: String(port) };
  const clients: Redis[] = [];
  const pidFile = path.join(state, 'redis', 'redis.pid');
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const e: Embedded = {
    dir,
    state,
    port,
    env,
    file(name, content) {
      const f = path.join(dir, name);
      writeFileSync(f, content);
      return f;
    },
    pid: () => Number(readFileSync(pidFile, 'utf8').trim()),
    async kill(signal) {
      const pid = e.pid();
      process.kill(pid, signal);
      for (let i = 0; i < 400 && alive(pid); i++) await new Promise((r) => setTimeout(r, 25));
      expect(alive(pid)).toBe(false);
    },
    admin() {
      const password = readFileSync(path.join(state, 'redis', 'admin.password'), 'utf8').trim();
      const c = new Redis({ path: path.join(state, 'redis', 'redis.sock'), username: 'ns8ctl', password, maxRetriesPerRequest: 1, retryStrategy: () => null });
      clients.push(c);
      return c;
    },
    async cleanup() {
      for (const c of clients) c.disconnect();
      if (existsSync(pidFile)) {
        const pid = e.pid();
        if (alive(pid)) process.kill(pid, 'SIGKILL');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return e;
}

async function moduleIds(env: NodeJS.ProcessEnv): Promise<string[]> {
  const res = await runCli(['get', 'modules', '-o', 'json'], env);
  expect(res.stderr).toBe('');
  return (JSON.parse(res.stdout) as { items: { metadata: { name: string } }[] }).items.map((i) => i.metadata.name).sort();
}

describe('embedded Redis durability', () => {
  let e: Embedded;
  beforeAll(async () => {
    e = await embedded();
  });
  afterAll(async () => e.cleanup());

  it('keeps every object of a multi-object apply, and ACL users, across SIGTERM of redis-server', async () => {
    const applied = await runCli(['apply', '-f', e.file('node.yaml', NODE_YAML), '-f', e.file('a.yaml', moduleYaml('webapp1')), '-f', e.file('b.yaml', moduleYaml('webapp2'))], e.env);
    expect(applied.code).toBe(0);
    const admin = e.admin();
    await admin.call('ACL', 'SETUSER', 'module/webapp1', 'on', '>pw1', '~module/webapp1/*', '+@read');
    await admin.call('ACL', 'SAVE');
    admin.disconnect();

    await e.kill('SIGTERM');
    expect(await moduleIds(e.env)).toEqual(['webapp1', 'webapp2']);
    const after = e.admin();
    expect(await after.hget('cluster/module_node', 'webapp2')).toBe('1');
    expect(await after.smembers('ns8ctl/desired/module')).toEqual(expect.arrayContaining(['webapp1', 'webapp2']));
    expect(((await after.call('ACL', 'LIST')) as string[]).some((l) => l.startsWith('user module/webapp1 on'))).toBe(true);
    expect(readFileSync(path.join(e.state, 'redis', 'redis.log'), 'utf8')).not.toContain('CRITICAL');
  });

  it('keeps a write it acknowledged when redis-server is killed with SIGKILL right after', async () => {
    const applied = await runCli(['apply', '-f', e.file('c.yaml', moduleYaml('webapp3'))], e.env);
    expect(applied.code).toBe(0);
    await e.kill('SIGKILL');
    expect(await moduleIds(e.env)).toEqual(['webapp1', 'webapp2', 'webapp3']);
    // And one more round: the file rewritten by the previous start replays as well.
    await e.kill('SIGKILL');
    expect(await moduleIds(e.env)).toEqual(['webapp1', 'webapp2', 'webapp3']);
  });

  it('gives the default user its read-only rule again after a restart, and no write', async () => {
    await e.kill('SIGTERM');
    expect((await runCli(['get', 'modules'], e.env)).code).toBe(0);
    const anon = new Redis(e.port, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: () => null, enableReadyCheck: false });
    try {
      await expect(anon.set('cluster/x', '1')).rejects.toThrow(/NOPERM/);
      await expect(anon.hget('ns8ctl/desired/module/webapp1', 'object')).rejects.toThrow(/NOPERM/);
      expect(await anon.hget('cluster/module_node', 'webapp1')).toBe('1');
    } finally {
      anon.disconnect();
    }
    const acl = readFileSync(path.join(e.state, 'redis', 'users.acl'), 'utf8');
    expect(acl).toMatch(/^user default on nopass/m);
  });
});

describe('embedded Redis files and socket', () => {
  it('makes a pre-existing 0755 state dir and its files root-only (0700 dirs, 0600 files)', async () => {
    const e = await embedded((state) => {
      mkdirSync(path.join(state, 'redis', 'appendonlydir'), { recursive: true, mode: 0o755 });
      chmodSync(state, 0o755);
      chmodSync(path.join(state, 'redis'), 0o755);
      chmodSync(path.join(state, 'redis', 'appendonlydir'), 0o755);
      writeFileSync(path.join(state, 'redis', 'redis.log'), 'an old log\n', { mode: 0o644 });
      chmodSync(path.join(state, 'redis', 'redis.log'), 0o644);
    });
    try {
      const res = await runCli(['apply', '-f', e.file('node.yaml', NODE_YAML), '-f', e.file('m.yaml', moduleYaml('webapp1', `  configuration: {password: ${SECRET}}\n`))], e.env);
      expect(res.code).toBe(0);
      const modes: Record<string, string> = {};
      const walk = (p: string, rel: string): void => {
        const st = statSync(p);
        modes[rel] = (st.mode & 0o777).toString(8);
        if (st.isDirectory()) for (const n of readdirSync(p)) walk(path.join(p, n), `${rel}/${n}`);
      };
      walk(e.state, '.');
      const expected = Object.fromEntries(Object.keys(modes).map((k) => [k, statSync(path.join(e.state, k)).isDirectory() ? '700' : statSync(path.join(e.state, k)).isSocket() ? '700' : '600']));
      expect(modes).toEqual(expected);
      expect(Object.keys(modes)).toEqual(expect.arrayContaining(['./redis/appendonlydir', './redis/users.acl', './redis/admin.password', './redis/redis.log', './redis/redis.sock']));
      expect(Object.keys(modes).some((k) => /appendonlydir\/.*\.aof$/.test(k))).toBe(true);
    } finally {
      await e.cleanup();
    }
  });

  it('never sends the admin password to another process listening on the TCP port while the embedded Redis is down', async () => {
    const e = await embedded();
    const received: Buffer[] = [];
    const fake = net.createServer((s) => s.on('data', (b: Buffer) => received.push(b)));
    try {
      expect((await runCli(['apply', '-f', e.file('node.yaml', NODE_YAML), '-f', e.file('m.yaml', moduleYaml('webapp1'))], e.env)).code).toBe(0);
      await e.kill('SIGTERM');
      await new Promise<void>((resolve) => fake.listen(e.port, '127.0.0.1', resolve));
      const res = await runCli(['get', 'modules'], e.env);
      expect(res.code).toBe(3);
      expect(res.stderr).toContain('another process listens on its port');
      const password = readFileSync(path.join(e.state, 'redis', 'admin.password'), 'utf8').trim();
      expect(Buffer.concat(received).toString()).not.toContain(password);
      expect(Buffer.concat(received).length).toBe(0);
    } finally {
      await new Promise((r) => fake.close(r));
      await e.cleanup();
    }
  });

  it('names the admin password file when it is lost, with exit code 3', async () => {
    const e = await embedded();
    try {
      expect((await runCli(['get', 'modules'], e.env)).code).toBe(0);
      const file = path.join(e.state, 'redis', 'admin.password');
      const password = readFileSync(file, 'utf8').trim();
      unlinkSync(file);
      const res = await runCli(['get', 'modules'], e.env);
      expect(res.code).toBe(3);
      expect(res.stderr).toContain(`the admin password file ${file} is missing`);
      writeFileSync(file, password + '\n', { mode: 0o600 });
    } finally {
      await e.cleanup();
    }
  });
});

describe('secrets in desired state are not readable without credentials', () => {
  let e: Embedded;
  beforeAll(async () => {
    e = await embedded();
    const res = await runCli(['apply', '-f', e.file('node.yaml', NODE_YAML), '-f', e.file('m.yaml', moduleYaml('webapp1', `  configuration: {admin_password: ${SECRET}}\n`))], e.env);
    expect(res.code).toBe(0);
  });
  afterAll(async () => e.cleanup());

  it('refuses HGET, HGETALL and DUMP of a desired object to the default user; KEYS and SCAN show names only', async () => {
    const anon = new Redis(e.port, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: () => null, enableReadyCheck: false });
    try {
      const key = 'ns8ctl/desired/module/webapp1';
      await expect(anon.hget(key, 'object')).rejects.toThrow(/NOPERM/);
      await expect(anon.hgetall(key)).rejects.toThrow(/NOPERM/);
      await expect(anon.dumpBuffer(key)).rejects.toThrow(/NOPERM/);
      await expect(anon.smembers('ns8ctl/desired/module')).rejects.toThrow(/NOPERM/);
      await expect(anon.call('EVAL', "return redis.call('HGET', KEYS[1], 'object')", '1', key)).rejects.toThrow(/NOPERM/);
      await expect(anon.sort(key, 'BY', 'nosort', 'GET', '#')).rejects.toThrow(/NOPERM/);
      const names = [...((await anon.keys('*')) as string[]), ...((await anon.scan('0', 'COUNT', '1000'))[1] as string[])].join('\n');
      expect(names).not.toContain(SECRET);
      // Status stays readable, as in NS8.
      expect(await anon.hget('cluster/module_node', 'webapp1')).toBe('1');
      expect(await anon.exists('ns8ctl/status/module/webapp1')).toBe(0);
    } finally {
      anon.disconnect();
    }
  });

  it('still shows desired objects to ns8ctl as root, and tells a caller without credentials which ones it needs', async () => {
    const root = await runCli(['get', 'modules', '-o', 'json'], e.env);
    expect(root.code).toBe(0);
    expect(JSON.parse(root.stdout).items[0].metadata.name).toBe('webapp1');
    // Another user's state dir has no admin password: ns8ctl connects to the port as `default`.
    const other = await runCli(['get', 'modules', '-o', 'json'], { NS8CTL_STATE_DIR: path.join(e.dir, 'other-user'), NS8CTL_EMBEDDED_PORT: String(e.port) });
    expect(other.code).not.toBe(0);
    expect(other.stderr).toContain('refused SMEMBERS to the default user (no credentials)');
    expect(other.stderr).toContain('readable only with credentials');
    expect(other.stdout + other.stderr).not.toContain(SECRET);
  });
});
