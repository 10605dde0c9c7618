/**
 * The controller area's commands end to end against a real Redis: suspend/resume, events (history
 * and -w), watchModules (the `get modules -w` engine), `run` with the real node agent loop, and a
 * real process stopping cleanly on SIGTERM.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { watchModules } from '../../src/cli/commands/controller.js';
import { controllerMain } from '../support/controller-main.js';
import { EventRecorder } from '../../src/state/events.js';
import { startLocalNodeAgent, SuspensionAwareSource } from '../../src/cli/local-node-agent.js';
import { readSourceStatus } from '../../src/controller/source-status.js';
import type { MainIO } from '../../src/cli/main.js';
import type { CliDeps } from '../../src/cli/deps.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { RedisDesiredSource } from '../../src/node-agent/desired-source.js';
import type { NodeReconcileResult } from '../../src/node-agent/reconcile.js';
import { channels } from '../../src/state/keys.js';
import { runCli } from '../support/cli.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';
import { waitFor } from '../support/wait-for.js';

const NODE = 'apiVersion: ns8ctl.nethserver.org/v1\nkind: Node\nmetadata: {name: node1}\nspec: {id: 1}\n';
const mod = (name: string, tag = '1.0.0'): string => `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${name}\nspec:\n  image: 127.0.0.1:5000/ns8ctl-examples/webapp:${tag}\n  node: 1\n`;

interface Captured {
  io: MainIO;
  out: () => string;
  err: () => string;
}
function capture(env: NodeJS.ProcessEnv): Captured {
  let out = '';
  let err = '';
  return {
    io: { stdout: (t) => void (out += t), stderr: (t) => void (err += t), env: { PATH: process.env.PATH, HOME: process.env.HOME, ...env }, isTTY: false, stdin: async () => '', cwd: process.cwd() },
    out: () => out,
    err: () => err,
  };
}

describe('controller commands', () => {
  let srv: TestRedis;
  let redis: Redis;
  let dir: string;
  let env: NodeJS.ProcessEnv;

  beforeEach(async () => {
    srv = await startRedis();
    redis = srv.client();
    dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-ctlcli-'));
    env = { NS8CTL_REDIS_URL: srv.url, NS8CTL_STATE_DIR: path.join(dir, 'state'), USER: 'ada' };
  });
  afterEach(async () => {
    await srv.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const ctl = async (args: string[], extras = {}): Promise<{ code: number; out: string; err: string }> => {
    const c = capture(env);
    const code = await controllerMain(args, c.io, extras);
    return { code, out: c.out(), err: c.err() };
  };

  it('suspends and resumes a module (with expiry) and a source, recording events', async () => {
    const m = path.join(dir, 'm');
    mkdirSync(m);
    writeFileSync(path.join(m, 'node.yaml'), NODE);
    writeFileSync(path.join(m, 'a.yaml'), mod('webapp1'));
    expect((await runCli(['apply', '-f', m], env)).code).toBe(0);
    const before = (await redis.xlen('ns8ctl/events'));
    const s = await ctl(['suspend', 'module', 'webapp1', '--for', '2h', '--reason', 'disk swap', '-o', 'json']);
    expect(s.code).toBe(0);
    const doc = JSON.parse(s.out);
    expect(doc).toMatchObject({ kind: 'module', name: 'webapp1', suspended: true, reason: 'disk swap', by: expect.stringMatching(/^ada@/) });
    expect(await redis.pttl('ns8ctl/suspend/module/webapp1')).toBeGreaterThan(7_000_000);
    expect((await ctl(['suspend'])).out).toContain('source default suspended');
    expect(await redis.exists('ns8ctl/suspend/source/default')).toBe(1);
    expect((await ctl(['resume', 'module', 'webapp1'])).out).toBe('module webapp1 resumed\n');
    const again = await ctl(['resume', 'module', 'webapp1']);
    expect(again.code).toBe(0);
    expect(again.err).toContain('was not suspended');
    expect((await ctl(['resume', 'source', 'default'])).code).toBe(0);
    const ev = await ctl(['events', '-o', 'json']);
    expect(JSON.parse(ev.out).items.slice(before).map((e: { name: string }) => e.name)).toEqual(['module-suspended', 'source-suspended', 'module-resumed', 'source-resumed']);
    const text = await ctl(['events']);
    expect(text.out).toMatch(/Module\/webapp1 {2}module-suspended {2}module webapp1 suspended by ada@\S+: disk swap for 2h/);
  });

  it('refuses to suspend a module or source that does not exist, naming the closest ones, unless --force', async () => {
    const m = path.join(dir, 'm');
    mkdirSync(m);
    writeFileSync(path.join(m, 'node.yaml'), NODE);
    for (const id of ['webapp1', 'webapp2', 'webapp13']) writeFileSync(path.join(m, `${id}.yaml`), mod(id));
    expect((await runCli(['apply', '-f', m], env)).code).toBe(0);
    const typo = await ctl(['suspend', 'module', 'wepapp1']);
    expect(typo.code).toBe(1);
    expect(typo.err).toContain('no module instance "wepapp1" in desired state; known: webapp1, webapp13, webapp2');
    expect(typo.err).toContain('--force');
    expect(await redis.exists('ns8ctl/suspend/module/wepapp1')).toBe(0);
    const source = await ctl(['suspend', 'source', 'prod']);
    expect(source.code).toBe(1);
    expect(source.err).toContain('no source "prod"');
    expect(source.err).toContain('known: default');
    // Ahead of time, on purpose.
    const forced = await ctl(['suspend', 'module', 'webapp9', '--force']);
    expect(forced.code).toBe(0);
    expect(await redis.exists('ns8ctl/suspend/module/webapp9')).toBe(1);
    expect((await ctl(['suspend', 'module', 'webapp2'])).code).toBe(0);
  });

  it('exits 2 on usage errors', async () => {
    expect((await ctl(['suspend', 'node', '1'])).code).toBe(2);
    expect((await ctl(['suspend', 'module'])).code).toBe(2);
    expect((await ctl(['suspend', 'module', 'x', '--for', 'soon'])).code).toBe(2);
    const both = await ctl(['controller', '-f', dir, '--git', 'file:///x']);
    expect(both.code).toBe(2);
    expect(both.err).toContain('--source NAME=PATH and --git NAME=URL');
    expect((await ctl(['controller', '--branch', 'main'])).code).toBe(2);
    expect((await ctl(['controller', '--log-format', 'xml'])).code).toBe(2);
    expect((await ctl(['events', '--limit', '0'])).code).toBe(2);
  });

  it('follows new events with -w until stopped, without missing one written meanwhile', async () => {
    const rec = new EventRecorder(redis);
    await rec.record({ name: 'source-applied', type: 'Normal', object: 'source/default', message: 'first' });
    const stop = new AbortController();
    const c = capture(env);
    const running = controllerMain(['events', '-w', '-o', 'json'], c.io, { signal: stop.signal });
    await waitFor('history printed', () => c.out().includes('"first"'));
    await rec.record({ name: 'module-stalled', type: 'Warning', object: 'Module/webapp1', message: 'second', data: { admin_password: 'hunter2' } });
    await waitFor('new event printed', () => c.out().includes('"second"'));
    stop.abort();
    expect(await running).toBe(0);
    const lines = c.out().trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.message)).toEqual(['first', 'second']);
    expect(c.out()).not.toContain('hunter2');
    expect(lines[1].data.admin_password).toBe('(sensitive value)');
  });

  it('re-renders modules on every relevant notification (watchModules)', async () => {
    let renders = 0;
    const stop = new AbortController();
    let out = '';
    const deps = {
      stdout: (t: string) => void (out += t),
      stderr: () => undefined,
      env,
      isTTY: false,
      runner: new ProcessRunner(),
      stdin: async () => '',
      cwd: dir,
      connect: async () => ({ redis: srv.client(), url: srv.url, embedded: false }),
      signal: stop.signal,
    } satisfies CliDeps & { signal: AbortSignal };
    const watching = watchModules(deps, async () => {
      renders++;
      out += `render ${renders}\n`;
      return 0;
    }, { debounceMs: 10 });
    await waitFor('first render', () => renders === 1);
    await waitFor('subscribed', async () => Number(((await redis.call('PUBSUB', 'NUMPAT')) as number)) > 0);
    await redis.publish(channels.moduleStatusChanged, JSON.stringify({ module: 'webapp1' }));
    await waitFor('second render', () => renders === 2);
    await redis.publish(channels.desiredChanged, JSON.stringify({ keys: ['ns8ctl/desired/module/webapp1'] }));
    await waitFor('third render', () => renders === 3);
    await redis.publish(channels.controllerEvent('source-applied'), '{}'); // not about modules
    await redis.publish(channels.moduleStatusChanged, JSON.stringify({ module: 'webapp2' }));
    await waitFor('fourth render', () => renders === 4);
    stop.abort();
    expect(await watching).toBe(0);
    expect(renders).toBe(4);
    expect(out).toBe('render 1\n\nrender 2\n\nrender 3\n\nrender 4\n');
  });

  it('`run` applies the manifests and runs the node agent loop until stopped', async () => {
    const m = path.join(dir, 'm');
    mkdirSync(m);
    writeFileSync(path.join(m, 'node.yaml'), NODE);
    const stop = new AbortController();
    const passes: NodeReconcileResult[] = [];
    const layoutRoot = path.join(dir, 'host');
    const c = capture(env);
    const running = controllerMain(['run', '-f', m, '--http-port', '0', '--node', '1', '--agent-resync', '1h'], c.io, {
      signal: stop.signal,
      nodeAgentFactory: (o, d) => startLocalNodeAgent({ ...o, layout: { agentStateDir: path.join(layoutRoot, 'agent'), homeBase: path.join(layoutRoot, 'home'), rootfullBase: path.join(layoutRoot, 'lib') }, onPass: (r) => passes.push(r) }, d),
    });
    await waitFor('source applied', async () => (await readSourceStatus(redis, 'default'))?.conditions.find((x) => x.type === 'Ready')?.status === 'True');
    await waitFor('a node agent pass', () => passes.length > 0);
    // A desired-state change wakes the agent at once (its resync is an hour).
    const before = passes.length;
    await redis.publish(channels.desiredChanged, JSON.stringify({ keys: [] }));
    await waitFor('a pass woken by the notification', () => passes.length > before);
    stop.abort();
    expect(await running).toBe(0);
    expect(c.err()).toContain('starting controller and node agent');
    expect(c.err()).toContain('controller stopped');
  });

  it('`controller` follows several named sources given on the command line, each its own apply set', async () => {
    for (const d of ['base', 'apps']) mkdirSync(path.join(dir, d));
    writeFileSync(path.join(dir, 'base', 'node.yaml'), NODE);
    writeFileSync(path.join(dir, 'apps', 'a.yaml'), mod('webapp1'));
    writeFileSync(path.join(dir, 'apps', 'b.yaml'), mod('webapp2'));
    const stop = new AbortController();
    const c = capture(env);
    const running = controllerMain(['controller', '-f', path.join(dir, 'base'), '--source', `apps=${path.join(dir, 'apps')},prune`, '--http-port', '0'], c.io, { signal: stop.signal });
    const ready = async (name: string): Promise<boolean> => (await readSourceStatus(redis, name))?.conditions.find((x) => x.type === 'Ready')?.status === 'True';
    await waitFor('both sources applied', async () => (await ready('default')) && (await ready('apps')));
    expect((await redis.smembers('ns8ctl/inventory/apps')).sort()).toEqual(['Module/webapp1', 'Module/webapp2']);
    expect(await redis.smembers('ns8ctl/inventory/default')).toEqual(['Node/1']);
    // apps has prune on, default not: a module leaving apps is pruned.
    rmSync(path.join(dir, 'apps', 'b.yaml'));
    await waitFor('webapp2 pruned by apps', async () => (await redis.exists('ns8ctl/desired/module/webapp2')) === 0);
    stop.abort();
    expect(await running).toBe(0);
    expect(c.err()).toMatch(/default: directory \S+base; apps: directory \S+apps with prune/);
  });

  it('hands suspended instances to the node agent as suspended', async () => {
    const m = path.join(dir, 'm');
    mkdirSync(m);
    writeFileSync(path.join(m, 'node.yaml'), NODE);
    writeFileSync(path.join(m, 'a.yaml'), mod('webapp1'));
    writeFileSync(path.join(m, 'b.yaml'), mod('webapp2'));
    expect((await runCli(['apply', '-f', m], env)).code).toBe(0);
    await redis.set('ns8ctl/suspend/module/webapp2', JSON.stringify({ reason: 'x', by: 't', since: '' }));
    let listed = 0;
    const src = new SuspensionAwareSource(new RedisDesiredSource(redis), redis, () => listed++);
    const list = await src.listForNode(1);
    expect(list.map((d) => [d.id, Boolean(d.spec.suspend)])).toEqual([
      ['webapp1', false],
      ['webapp2', true],
    ]);
    expect(listed).toBe(1);
  });

  it('stops a real `controller` process cleanly on SIGTERM (exit 0, lease released)', async () => {
    const bin = path.resolve('dist/src/cli/bin.js');
    if (!existsSync(bin)) throw new Error(`${bin} is missing: run \`npm run build\` first (npm test does)`);
    const m = path.join(dir, 'm');
    mkdirSync(m);
    writeFileSync(path.join(m, 'node.yaml'), NODE);
    const child = spawn(process.execPath, [bin, '--redis', srv.url, 'controller', '-f', m, '--http-port', '0'], { stdio: ['ignore', 'ignore', 'pipe'], env: { PATH: process.env.PATH, HOME: process.env.HOME, NS8CTL_STATE_DIR: path.join(dir, 'state') } });
    let err = '';
    child.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await waitFor('leading', () => err.includes('became leader'));
    await waitFor('applied', async () => (await readSourceStatus(redis, 'default'))?.lastAppliedDigest);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(err).toContain('controller stopped');
    expect(await redis.exists('ns8ctl/controller/leader')).toBe(0);
  });
});
