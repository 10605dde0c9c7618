/**
 * The one door to external commands, with real processes: records, known-error mapping, input,
 * and cancellation by an AbortSignal (a stopping controller does not wait for a slow git).
 */
import { ExecaRunner } from '../../src/host/runner.js';

describe('ExecaRunner', () => {
  test('records argv, exit code and output, and feeds input on stdin', async () => {
    const runner = new ExecaRunner();
    const r = await runner.run(['sh', '-c', 'cat; echo err >&2; exit 3'], { input: 'hello', allowFailure: true, purpose: 'test: echo' });
    expect(r).toMatchObject({ argv: ['sh', '-c', 'cat; echo err >&2; exit 3'], exitCode: 3, stdout: 'hello', stderr: 'err\n', purpose: 'test: echo' });
    expect(runner.history).toHaveLength(1);
  });

  test('maps a known stderr to its error code and names the purpose', async () => {
    const runner = new ExecaRunner();
    await expect(runner.run(['sh', '-c', 'echo "Error: image not known" >&2; exit 125'], { purpose: 'web1: pull image' })).rejects.toMatchObject({
      code: 'image_not_found',
      message: expect.stringContaining('web1: pull image'),
    });
    await expect(runner.run(['no-such-command-ns8ctl'])).rejects.toMatchObject({ code: 'command_missing' });
  });

  test('an aborted signal kills the running command', async () => {
    const runner = new ExecaRunner();
    const ac = new AbortController();
    const running = runner.run(['sleep', '120'], { signal: ac.signal });
    setTimeout(() => ac.abort(), 100);
    await expect(running).rejects.toMatchObject({ code: 'command_failed', message: expect.stringContaining('was cancelled') });
    expect(runner.history.at(-1)?.exitCode).not.toBe(0);
  });
});
