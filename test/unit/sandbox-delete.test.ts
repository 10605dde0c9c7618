/**
 * Removing a sandbox whose nodes outlast podman's wait after SIGKILL (a node running many
 * instances): one more removal of the containers still there, which must succeed. Over a runner
 * that answers podman as the host did (src/sandbox/delete.ts).
 */
import { describe, expect, test } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CommandFailedError } from '../../src/errors.js';
import type { CommandRecord, CommandRunner, RunOptions } from '../../src/host/runner.js';
import { removeSandbox } from '../../src/sandbox/delete.js';
import { defaultSandboxDeps } from '../../src/sandbox/deps.js';

/** Answers `podman ps` with two nodes and `podman rm` with the exit codes given, in turn. */
class PodmanAnswers implements CommandRunner {
  readonly history: (CommandRecord & { mutating: boolean })[] = [];
  constructor(private readonly rmExits: number[]) {}
  async run(argv: string[], opts: RunOptions = {}): Promise<CommandRecord> {
    const rm = argv[1] === 'rm';
    const exitCode = rm ? (this.rmExits.shift() ?? 0) : argv[1] === 'network' ? 1 : 0;
    const stdout = argv[1] === 'ps' ? JSON.stringify(['1', '2'].map((n) => ({ Id: `id${n}`, Names: [`ns8ctl-big-node${n}`], State: 'running', Labels: { 'org.ns8ctl.sandbox': 'big', 'org.ns8ctl.sandbox.role': 'node', 'org.ns8ctl.sandbox.node-id': n } }))) : '';
    const stderr = rm && exitCode ? 'Error: cannot remove container id1 as it could not be stopped: given PIDs did not die within timeout' : '';
    const rec: CommandRecord = { argv, exitCode, stdout, stderr, durationMs: 0 };
    this.history.push({ ...rec, mutating: Boolean(opts.mutating) });
    if (exitCode !== 0 && !opts.allowFailure) throw new CommandFailedError('command_failed', `${argv.join(' ')} exited ${exitCode}: ${stderr}`, { argv, exitCode, stderr });
    return rec;
  }
}

describe('removing a sandbox', () => {
  const state = mkdtempSync(path.join(tmpdir(), 'ns8ctl-sandbox-delete-'));
  afterAll(() => rmSync(state, { recursive: true, force: true }));
  const depsWith = (runner: CommandRunner) => defaultSandboxDeps({ runner, env: { ...process.env, NS8CTL_SANDBOX_STATE: state }, stdout: () => undefined, stderr: () => undefined });

  test('when podman gives up waiting for a node to stop, the containers still there are removed once more, and the sandbox is gone', async () => {
    const runner = new PodmanAnswers([125, 0]);
    const r = await removeSandbox(depsWith(runner), 'big');
    expect(r.containers).toEqual(['ns8ctl-big-node1', 'ns8ctl-big-node2']);
    const rms = runner.history.filter((c) => c.argv[1] === 'rm').map((c) => c.argv.join(' '));
    expect(rms).toEqual(['podman rm -f -t 10 id1 id2', 'podman rm -f --ignore -t 0 id1 id2']);
  });

  test('a second failure is not hidden: the removal fails with podman\'s error', async () => {
    await expect(removeSandbox(depsWith(new PodmanAnswers([125, 125])), 'big')).rejects.toMatchObject({ message: expect.stringContaining('could not be stopped') });
  });

  test('a removal that works at once is not repeated', async () => {
    const runner = new PodmanAnswers([0]);
    await removeSandbox(depsWith(runner), 'big');
    expect(runner.history.filter((c) => c.argv[1] === 'rm')).toHaveLength(1);
  });
});
