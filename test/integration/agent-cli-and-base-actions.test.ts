/**
 * The agent commands as the CLI runs them (run-action, publish, runagent, agent) and the base
 * actions (create-module, get-status, destroy-module) through a real agent on real Redis.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import type { Redis } from 'ioredis';
import { runAgent } from '../../src/agent/agent.js';
import { createBaseActions } from '../../src/agent/base-actions.js';
import { agentCommand, registerAgentCommands, type AgentCliDeps } from '../../src/cli/commands/agent.js';
import type { SystemdAdapter } from '../../src/agent/systemd-status.js';
import { runTask } from '../../src/agent/task-client.js';
import { ProcessRunner, type CommandRecord, type CommandRunner, type RunOptions } from '../../src/host/runner.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

let server: TestRedis;
let admin: Redis;
let root: string;
let out: string[];
let err: string[];

function step(dir: string, name: string, body: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), `#!/bin/sh\n${body}\n`);
  chmodSync(path.join(dir, name), 0o755);
}

function deps(env: NodeJS.ProcessEnv = {}): AgentCliDeps {
  return { stdout: (t) => out.push(t), stderr: (t) => err.push(t), env: { PATH: process.env.PATH, ...env }, isTTY: false, runner: new ProcessRunner(), connect: async () => ({ redis: admin }) };
}

async function cli(args: string[], env: NodeJS.ProcessEnv = {}, extras: Parameters<typeof registerAgentCommands>[3] = {}): Promise<number> {
  let code = 0;
  const program = new Command('ns8ctl').exitOverride().option('--redis <url>');
  registerAgentCommands(program, () => deps(env), (c) => (code = c), extras);
  await program.parseAsync(args, { from: 'user' });
  return code;
}

beforeAll(async () => {
  server = await startRedis();
  admin = server.client();
});
afterAll(async () => server.stop());
beforeEach(async () => {
  await admin.flushall();
  out = [];
  err = [];
  root = mkdtempSync(path.join(tmpdir(), 'agent-cli-'));
  mkdirSync(path.join(root, 'state'));
  writeFileSync(path.join(root, 'state', 'environment'), 'MODULE_ID=web1\nNODE_ID=1\n');
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

describe('ns8ctl agent + run-action', () => {
  it('runs the agent from its environment, prints action output, and exits with the task code', async () => {
    step(path.join(root, 'actions', 'hello'), '10hello', 'printf "hello %s" "$(cat)"');
    step(path.join(root, 'actions', 'broken'), '10broken', 'echo "no way" >&2; exit 3');
    const stop = new AbortController();
    const env = { AGENT_INSTALL_DIR: root, AGENT_STATE_DIR: path.join(root, 'state'), REDIS_ADDRESS: `127.0.0.1:${server.port}` };
    const running = agentCommand({ id: 'web1' }, deps(env), { processSignals: false, signal: stop.signal });
    try {
      expect(await cli(['run-action', 'web1', 'hello', '--data', '{"a":1}'])).toBe(0);
      expect(out.join('')).toBe('hello {"a":1}\n');
      out = [];
      expect(await cli(['run-action', 'module/web1', 'broken'])).toBe(3);
      expect(err.join('')).toMatch(/no way\nerror: module\/web1: action broken aborted with exit code 3/);
      expect(await cli(['run-action', 'web1', 'list-actions', '-o', 'json'])).toBe(0);
      const doc = JSON.parse(out.join(''));
      expect(doc).toMatchObject({ agent: 'module/web1', action: 'list-actions', status: 'completed', exitCode: 0 });
      expect(doc.output).toEqual(['broken', 'cancel-task', 'create-module', 'destroy-module', 'get-status', 'hello', 'list-actions', 'update-module']);
    } finally {
      stop.abort();
      expect(await running).toBe(0);
    }
  });

  it('refuses bad input before submitting anything', async () => {
    await expect(cli(['run-action', 'web1', 'hello', '--data', '{nope'])).rejects.toThrow(/--data is not valid JSON/);
    await expect(cli(['run-action', '../etc', 'hello'])).rejects.toThrow(/not an instance id/);
    expect(await admin.llen('module/web1/tasks')).toBe(0);
  });

  it('gives up after --timeout when no agent picks the task up, saying what to check', async () => {
    await expect(cli(['run-action', 'ghost1', 'anything', '--timeout', '0.3'])).rejects.toThrow(/has no result after 300 ms \(is the agent running\? it pops module\/ghost1\/tasks\)/);
  });

  it('submits without waiting with --no-wait and prints the task id', async () => {
    expect(await cli(['run-action', 'web1', 'later', '--no-wait'])).toBe(0);
    const id = out.join('').trim();
    const queued = JSON.parse((await admin.lindex('module/web1/tasks', 0)) ?? '{}');
    expect(queued).toMatchObject({ id, action: 'later', data: {}, parent: '' });
  });
});

describe('ns8ctl publish', () => {
  it('publishes JSON on an event channel and refuses anything else', async () => {
    const sub = server.client();
    const got: string[] = [];
    sub.on('message', (c: string, m: string) => got.push(`${c} ${m}`));
    await sub.subscribe('module/web1/event/configured');
    expect(await cli(['publish', 'module/web1/event/configured', '{"ok":true}'])).toBe(0);
    expect(err.join('')).toBe('published module/web1/event/configured to 1 subscriber\n');
    await expect(cli(['publish', 'module/web1/configured', '{}'])).rejects.toThrow(/not an event channel/);
    await expect(cli(['publish', 'module/web1/event/x', 'not json'])).rejects.toThrow(/payload is not valid JSON/);
    for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(got).toEqual(['module/web1/event/configured {"ok":true}']);
  });
});

describe('ns8ctl runagent', () => {
  it("runs a command in a rootfull instance's agent environment and returns its exit code", async () => {
    const base = path.join(root, 'rootfull');
    mkdirSync(path.join(base, 'promtail1', 'state'), { recursive: true });
    writeFileSync(path.join(base, 'promtail1', 'state', 'environment'), 'MODULE_ID=promtail1\n');
    writeFileSync(path.join(base, 'promtail1', 'state', 'agent.env'), 'REDIS_USER=module/promtail1\n');
    const file = path.join(root, 'seen');
    const extras = { uid: () => 0, paths: { passwdFile: path.join(root, 'no-passwd'), rootfullBase: base, globalAgentEnv: path.join(root, 'none') } };
    expect(await cli(['runagent', '-m', 'promtail1', '--', 'sh', '-c', `printf "%s %s %s" "$AGENT_ID" "$MODULE_ID" "$PWD" > ${file}`], {}, extras)).toBe(0);
    expect(readFileSync(file, 'utf8')).toBe(`module/promtail1 promtail1 ${path.join(base, 'promtail1', 'state')}`);
    expect(await cli(['runagent', '-m', 'promtail1', 'sh', '-c', 'exit 4'], {}, extras)).toBe(4);
    // the command's own -c is not runagent's --keep-cwd
    expect(await cli(['runagent', '-m', 'promtail1', 'sh', '-c', `printf "%s" "$PWD" > ${file}`], {}, extras)).toBe(0);
    expect(readFileSync(file, 'utf8')).toBe(path.join(base, 'promtail1', 'state'));
  });
});

describe('base actions', () => {
  /** Records podman commands instead of running them (no registry here); anything else runs for real. */
  class PodmanRecorder implements CommandRunner {
    readonly calls: string[][] = [];
    readonly history = [];
    private readonly real = new ProcessRunner();
    async run(argv: string[], opts?: RunOptions): Promise<CommandRecord> {
      if (argv[0] !== 'podman') return this.real.run(argv, opts);
      this.calls.push(argv);
      const exists = (argv[1] === 'image' || argv[1] === 'volume') && argv[2] === 'exists';
      const list = argv[1] === 'image' && argv[2] === 'list';
      const vols = argv[1] === 'volume' && argv[2] === 'ls';
      const stdout = list ? 'ghcr.io/x/mysql:8,402 MB,2024-01-01 00:00:00 +0000 UTC\n' : vols ? 'web-data,/home/web1/.local/share/containers/storage/volumes/web-data/_data,2024-01-02\n' : '';
      return { argv, exitCode: exists ? 1 : 0, stdout, stderr: '', durationMs: 0 };
    }
  }
  const systemd: SystemdAdapter = {
    serviceStatus: async (units, scope) => units.map((u) => ({ name: `${scope}:${u.replace(/\.service$/, '')}`, active: true, enabled: u.startsWith('web'), failed: false })),
  };

  it('create-module pulls missing service images, sets their variables, binds volumes and creates the roles', async () => {
    const runner = new PodmanRecorder();
    step(path.join(root, 'actions', 'configure-module'), '20configure', 'true');
    const agent = runAgent({ agentId: 'module/web1', installDir: root, stateDir: path.join(root, 'state'), actionsDirs: [path.join(root, 'actions')], builtins: createBaseActions(), pollSeconds: 1, log: () => undefined }, { redis: server.client(), runner, systemd });
    await agent.start();
    try {
      const volBase = path.join(root, 'srv');
      const r = await runTask(admin, 'module/web1', 'create-module', { data: { images: ['docker.io/library/mysql:8', 'ghcr.io/x/2fauth:1'], volumes: { 'web-data': volBase } } });
      expect(r).toMatchObject({ status: 'completed', exitCode: 0 });
      expect(readFileSync(path.join(root, 'state', 'environment'), 'utf8')).toBe('I2FAUTH_IMAGE=ghcr.io/x/2fauth:1\nMODULE_ID=web1\nMYSQL_IMAGE=docker.io/library/mysql:8\nNODE_ID=1\n');
      expect(await admin.hget('module/web1/environment', 'MYSQL_IMAGE')).toBe('docker.io/library/mysql:8');
      expect(runner.calls).toEqual([
        // No --ignore (Debian 12's podman 4.3 lacks it): an existing volume is checked for first.
        ['podman', 'volume', 'exists', 'web-data'],
        ['podman', 'volume', 'create', `--opt=device=${path.join(volBase, 'web1', 'web-data', '_data')}`, '--opt=type=bind', 'web-data'],
        ['podman', 'image', 'exists', 'docker.io/library/mysql:8'],
        ['podman', 'pull', 'docker.io/library/mysql:8'],
        ['podman', 'image', 'exists', 'ghcr.io/x/2fauth:1'],
        ['podman', 'pull', 'ghcr.io/x/2fauth:1'],
      ]);
      expect(existsSync(path.join(volBase, 'web1', 'web-data', '_data'))).toBe(true);
      expect((await admin.smembers('module/web1/roles/reader')).sort()).toEqual(['get-*', 'list-*', 'read-*', 'show-*']);
      expect(await admin.smembers('module/web1/roles/owner')).toEqual(['*']);
      expect(await admin.smembers('module/web1/roles/selfadm')).toEqual(['configure-module']);
      const bad = await runTask(admin, 'module/web1', 'create-module', { data: { images: 'not-a-list' } });
      expect(bad).toMatchObject({ status: 'validation-failed', exitCode: 10 });
    } finally {
      await agent.stop();
    }
  });

  it('create-module spawns no podman for a service image the storage metadata already lists (the node agent imported it), and checks the others', async () => {
    const runner = new PodmanRecorder();
    const home = path.join(root, 'home-web2');
    const store = path.join(home, '.local', 'share', 'containers', 'storage', 'vfs-images');
    mkdirSync(store, { recursive: true });
    writeFileSync(path.join(store, 'images.json'), JSON.stringify([{ id: 'a'.repeat(64), digest: `sha256:${'b'.repeat(64)}`, names: ['docker.io/library/mysql:8'] }]));
    const env = { ...process.env, HOME: home, XDG_DATA_HOME: '', XDG_CONFIG_HOME: '', CONTAINERS_STORAGE_CONF: '' };
    const agent = runAgent({ agentId: 'module/web2', installDir: root, stateDir: path.join(root, 'state2'), actionsDirs: [path.join(root, 'actions')], builtins: createBaseActions(), pollSeconds: 1, env, log: () => undefined }, { redis: server.client(), runner, systemd });
    await agent.start();
    try {
      // `mysql:8` is the name podman stores as docker.io/library/mysql:8.
      const r = await runTask(admin, 'module/web2', 'create-module', { data: { images: ['mysql:8', 'ghcr.io/x/2fauth:1'] } });
      expect(r).toMatchObject({ status: 'completed', exitCode: 0 });
      expect(runner.calls).toEqual([
        ['podman', 'image', 'exists', 'ghcr.io/x/2fauth:1'],
        ['podman', 'pull', 'ghcr.io/x/2fauth:1'],
      ]);
    } finally {
      await agent.stop();
    }
  });

  it('get-status reports services, images and volumes in NS8 shape, validated by its output schema', async () => {
    const runner = new PodmanRecorder();
    const units = path.join(root, 'systemd', 'user');
    mkdirSync(path.join(units, 'default.target.wants'), { recursive: true });
    writeFileSync(path.join(units, 'web.service'), '');
    writeFileSync(path.join(units, 'worker@.service'), '');
    writeFileSync(path.join(units, 'default.target.wants', 'worker@1.service'), '');
    writeFileSync(path.join(units, 'web.timer'), '');
    await admin.set('module/web1/ui_name', 'My web');
    await admin.set('node/1/ui_name', 'andromeda');
    const agent = runAgent({ agentId: 'module/web1', installDir: root, stateDir: path.join(root, 'state'), actionsDirs: [], builtins: createBaseActions(), pollSeconds: 1, log: () => undefined }, { redis: server.client(), runner, systemd });
    await agent.start();
    try {
      const r = await runTask(admin, 'module/web1', 'get-status');
      expect(r.exitCode).toBe(0);
      expect(JSON.parse(r.output)).toEqual({
        instance: 'web1',
        ui_name: 'My web',
        node: '1',
        node_ui_name: 'andromeda',
        services: [
          { name: 'user:web', active: true, enabled: true, failed: false },
          { name: 'user:worker@1', active: true, enabled: false, failed: false },
        ],
        images: [{ name: 'ghcr.io/x/mysql:8', size: '402 MB', created: '2024-01-01 00:00:00 +0000 UTC' }],
        volumes: [{ name: 'web-data', mount: '/home/web1/.local/share/containers/storage/volumes/web-data/_data', created: '2024-01-02' }],
      });
      const destroyed = await runTask(admin, 'module/web1', 'destroy-module', { data: { module_id: 'web1', preserve_data: true } });
      expect(destroyed).toMatchObject({ exitCode: 0, status: 'completed' });
    } finally {
      await agent.stop();
    }
  });
});
