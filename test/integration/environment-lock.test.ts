/**
 * NS8's `.environment.lock`: every writer of `state/environment` (NS8's Python `agent.set_env`,
 * shell steps using flock(1), the module agent's set-env, the node agent) takes the same flock, so
 * none loses another's update. Real flock(1) processes play the module's steps.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { updateEnvironmentFile } from '../../src/agent/env-file.js';
import { withFileLock } from '../../src/host/file-lock.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyStep } from '../../src/node-agent/applier.js';
import { createNodeAgentDeps } from '../../src/node-agent/deps.js';
import { parseEnvironment } from '../../src/node-agent/environment-file.js';
import { startRedis, type TestRedis } from '../support/redis-server.js';

let dir: string;
beforeEach(async () => {
  dir = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-envlock-'));
});
afterEach(async () => {
  await fs.rm(dir, { recursive: true, force: true });
});

/** Starts `flock LOCK sh -c SCRIPT`; resolves once the script runs (it holds the lock then). */
async function holdLock(lock: string, script: string): Promise<{ child: ChildProcess; done: Promise<number | null> }> {
  const child = spawn('flock', ['--exclusive', lock, '-c', `echo held; ${script}`], { stdio: ['ignore', 'pipe', 'inherit'], detached: true });
  const done = new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
    void done.then(() => reject(new Error('flock holder exited before holding the lock')));
  });
  return { child, done };
}

describe('withFileLock', () => {
  test('waits for a holder outside this process and runs after it releases', async () => {
    const lock = path.join(dir, '.environment.lock');
    const log = path.join(dir, 'log');
    await fs.writeFile(lock, '');
    const holder = await holdLock(lock, `sleep 0.3; echo module >> ${log}`);
    await withFileLock(lock, () => fs.appendFile(log, 'ns8ctl\n'));
    expect(await fs.readFile(log, 'utf8')).toBe('module\nns8ctl\n');
    expect(await holder.done).toBe(0);
  });

  test('does not run the caller\'s $SHELL (whose startup files may hang) to hold the lock', async () => {
    // A login shell that takes a minute to start, as a .bashrc waiting on a stale lock does. A
    // process of its own (the built module), since jest's process.env is not what spawn passes on.
    const slowShell = path.join(dir, 'slow-shell');
    await fs.writeFile(slowShell, '#!/bin/sh\nsleep 60\nexec /bin/sh "$@"\n', { mode: 0o755 });
    const lockModule = pathToFileURL(path.resolve('dist/src/host/file-lock.js')).href;
    const script = `import(${JSON.stringify(lockModule)}).then((m) => m.withFileLock(${JSON.stringify(path.join(dir, '.environment.lock'))}, async () => 'ran', { timeoutMs: 5000 })).then((r) => process.stdout.write(r))`;
    const res = await new ProcessRunner().run([process.execPath, '-e', script], { env: { SHELL: slowShell }, timeoutMs: 15_000, allowFailure: true });
    expect(res).toMatchObject({ exitCode: 0, stdout: 'ran' });
  }, 20_000);

  test('gives up after the timeout with an error naming the lock file, and runs nothing', async () => {
    const lock = path.join(dir, '.environment.lock');
    const holder = await holdLock(lock, 'exec sleep 30');
    let ran = false;
    await expect(withFileLock(lock, async () => void (ran = true), { timeoutMs: 200 })).rejects.toMatchObject({ code: 'lock_timeout', message: expect.stringContaining(lock) });
    expect(ran).toBe(false);
    process.kill(-holder.child.pid!, 'SIGKILL'); // flock and its shell
    await holder.done;
  });

  test('is released when the holding process is killed (no stale lock after a crash)', async () => {
    const lock = path.join(dir, '.environment.lock');
    const mod = path.resolve('dist/src/host/file-lock.js');
    const child = spawn(process.execPath, ['--input-type=module', '-e', `const { withFileLock } = await import(${JSON.stringify(mod)}); await withFileLock(${JSON.stringify(lock)}, () => { console.log('held'); return new Promise(() => {}); });`], { stdio: ['ignore', 'pipe', 'inherit'] });
    const exited = new Promise((r) => child.on('close', r));
    await new Promise<void>((resolve) => child.stdout.on('data', (d: Buffer) => d.toString().includes('held') && resolve()));
    await expect(withFileLock(lock, async () => 'no', { timeoutMs: 100 })).rejects.toMatchObject({ code: 'lock_timeout' });
    child.kill('SIGKILL');
    await exited;
    await expect(withFileLock(lock, async () => 'yes', { timeoutMs: 10_000 })).resolves.toBe('yes');
  });

  test('creates a missing lock file owned as asked, and reports a missing directory clearly', async () => {
    const lock = path.join(dir, '.environment.lock');
    await withFileLock(lock, async () => undefined, { owner: { uid: 65534, gid: 65534 } });
    expect((await fs.stat(lock)).uid).toBe(65534);
    await expect(withFileLock(path.join(dir, 'nope', '.lock'), async () => undefined)).rejects.toMatchObject({ code: 'lock_failed', message: expect.stringContaining('nope/.lock') });
  });
});

describe('state/environment writers share .environment.lock', () => {
  test('module agent set-env and concurrent flock(1) shell writers lose no update', async () => {
    const file = path.join(dir, 'environment');
    await fs.writeFile(file, 'BASE=1\n');
    const lock = path.join(dir, '.environment.lock');
    // A shell step's read-modify-write under the lock, slow enough to overlap ours.
    const shellWriter = (i: number): Promise<number | null> =>
      new Promise((r) => {
        const c = spawn('flock', [lock, 'sh', '-c', `v=$(cat ${file}); sleep 0.02; printf '%s\\nSH${i}=x\\n' "$v" > ${file}.tmp && mv ${file}.tmp ${file}`], { stdio: 'inherit' });
        c.on('close', r);
      });
    const work: Promise<unknown>[] = [];
    for (let i = 0; i < 8; i++) {
      work.push(shellWriter(i));
      work.push(updateEnvironmentFile(file, (env) => void env.set(`AG${i}`, 'y')));
    }
    await Promise.all(work);
    const env = parseEnvironment(await fs.readFile(file, 'utf8'));
    const names = Object.keys(env).sort();
    expect(names).toEqual(['BASE', ...Array.from({ length: 8 }, (_, i) => `AG${i}`), ...Array.from({ length: 8 }, (_, i) => `SH${i}`)].sort());
  });

  describe('node agent', () => {
    let redis: TestRedis;
    beforeAll(async () => {
      redis = await startRedis();
    });
    afterAll(async () => {
      await redis.stop();
    });

    test('write-environment merges into the file as it is under the lock, keeping what a step wrote meanwhile', async () => {
      const client = redis.client();
      try {
        const deps = createNodeAgentDeps({ node: 1, layout: { rootfullBase: path.join(dir, 'nethserver'), agentStateDir: path.join(dir, 'agent') } }, { redis: client, runner: new ProcessRunner(), log: () => undefined, delay: async () => undefined });
        const stateDir = path.join(dir, 'nethserver', 'web1', 'state');
        await fs.mkdir(stateDir, { recursive: true });
        const file = path.join(stateDir, 'environment');
        // Planned from an observation where the file held OLD (agent-written, now dropped) and TCP_PORT=1.
        await fs.writeFile(file, 'OLD=1\nTCP_PORT=1\n');
        const step = { id: 'web1', reason: 'test', kind: 'write-environment' as const, env: { TCP_PORT: '20001', PREV_X: 'p' }, managed: { TCP_PORT: '20001' }, dropped: ['OLD'], extra: { PREV_X: 'p' } };
        // A module step writes while holding the lock; the node agent waits and then merges.
        const holder = await holdLock(path.join(stateDir, '.environment.lock'), `sleep 0.2; printf 'OLD=1\\nTCP_PORT=1\\nMINE=kept\\n' > ${file}`);
        await applyStep(step, { deps, node: 1, id: 'web1', rootfull: true });
        expect(await holder.done).toBe(0);
        expect(await fs.readFile(file, 'utf8')).toBe('MINE=kept\nPREV_X=p\nTCP_PORT=20001\n');
        expect(existsSync(path.join(stateDir, '.environment.lock'))).toBe(true);
      } finally {
        client.disconnect();
      }
    });
  });
});
