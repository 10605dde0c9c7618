/**
 * The one door to external commands, with real processes: records, known-error mapping, input,
 * and cancellation by an AbortSignal (a stopping controller does not wait for a slow git).
 */
import { ProcessRunner } from '../../src/host/runner.js';
import { spawnCollect } from '../../src/host/spawn-collect.js';

describe('ProcessRunner', () => {
  test('records argv, exit code and output, and feeds input on stdin', async () => {
    const runner = new ProcessRunner();
    const r = await runner.run(['sh', '-c', 'cat; echo err >&2; exit 3'], { input: 'hello', allowFailure: true, purpose: 'test: echo' });
    expect(r).toMatchObject({ argv: ['sh', '-c', 'cat; echo err >&2; exit 3'], exitCode: 3, stdout: 'hello', stderr: 'err\n', purpose: 'test: echo' });
    expect(runner.history).toHaveLength(1);
  });

  test('maps a known stderr to its error code and names the purpose', async () => {
    const runner = new ProcessRunner();
    await expect(runner.run(['sh', '-c', 'echo "Error: image not known" >&2; exit 125'], { purpose: 'web1: pull image' })).rejects.toMatchObject({
      code: 'image_not_found',
      message: expect.stringContaining('web1: pull image'),
    });
    await expect(runner.run(['no-such-command-ns8ctl'])).rejects.toMatchObject({ code: 'command_missing' });
  });

  test('an aborted signal kills the running command', async () => {
    const runner = new ProcessRunner();
    const ac = new AbortController();
    const running = runner.run(['sleep', '120'], { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await expect(running).rejects.toMatchObject({ code: 'command_failed', message: expect.stringContaining('was cancelled') });
    expect(runner.history.at(-1)?.exitCode).not.toBe(0);
  });

  test('a command past its timeout is killed, and one that ignores SIGTERM is killed with SIGKILL', async () => {
    const runner = new ProcessRunner();
    await expect(runner.run(['sleep', '120'], { timeoutMs: 100 })).rejects.toMatchObject({ message: expect.stringContaining('timed out') });
    const t0 = Date.now();
    const r = await spawnCollect('sh', ['-c', 'trap "" TERM; echo ready; sleep 30 & wait'], { env: process.env, timeoutMs: 200 });
    expect(r).toMatchObject({ timedOut: true, signal: 'SIGKILL', exitCode: null });
    expect(r.stdout.toString()).toBe('ready\n');
    expect(Date.now() - t0).toBeLessThan(20_000);
  }, 30_000);

  test('binary output stays byte-exact; the environment is the base one plus the command\'s', async () => {
    const bytes = Buffer.from([0, 255, 10, 13, 128, 1]);
    const runner = new ProcessRunner(10, undefined, { PATH: process.env.PATH, ONLY_BASE: 'b' });
    const bin = await runner.run(['cat'], { input: bytes, binary: true });
    expect(bin.stdoutBuffer?.equals(bytes)).toBe(true);
    const env = await runner.run(['sh', '-c', 'echo "$ONLY_BASE $ADDED ${HOME:-nohome}"'], { env: { ADDED: 'a' } });
    expect(env.stdout).toBe('b a nohome\n');
  });

  test('output past the limit kills the command instead of filling memory', async () => {
    const r = await spawnCollect('sh', ['-c', 'yes'], { env: process.env, timeoutMs: 30_000, maxOutputBytes: 64 * 1024 });
    expect(r.outputTooLarge).toBe(true);
    expect(r.stdout.length).toBeLessThanOrEqual(64 * 1024);
    expect(r.exitCode).not.toBe(0);
  });

  test('a command that cannot start resolves with the reason, and an already aborted signal runs nothing', async () => {
    const r = await spawnCollect('/nonexistent/ns8ctl-no-such-file', [], { env: process.env, timeoutMs: 1000 });
    expect(r.exitCode).toBeNull();
    expect(r.error?.message).toMatch(/ENOENT/);
    const ac = new AbortController();
    ac.abort();
    expect(await spawnCollect('sh', ['-c', 'exit 0'], { env: process.env, timeoutMs: 1000, signal: ac.signal })).toMatchObject({ cancelled: true, exitCode: null });
  });
});
