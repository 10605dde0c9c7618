/**
 * `ns8ctl runagent -m <id> CMD` with a real rootless instance user (useradd): the command runs as
 * that user, in the state directory, with agent.env and state/environment loaded, AGENT_* set and
 * the instance's bin/ first on PATH, as NS8's runagent does. The built CLI is run as a real process.
 */
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const BIN = path.resolve('dist/src/cli/bin.js');
const ID = `runagt${process.pid % 100000}1`;
const HOME = `/home/${ID}`;

beforeAll(async () => {
  await run('userdel', ['-r', '-f', ID]).catch(() => undefined);
  await run('useradd', ['-m', '-d', HOME, '-s', '/bin/sh', ID]);
  const cfg = path.join(HOME, '.config');
  await fs.mkdir(path.join(cfg, 'state'), { recursive: true });
  await fs.mkdir(path.join(cfg, 'bin'), { recursive: true });
  await fs.writeFile(path.join(cfg, 'state', 'environment'), 'TCP_PORT=20042\nMODULE_ID=' + ID + '\n');
  await fs.writeFile(path.join(cfg, 'state', 'agent.env'), `REDIS_USER=module/${ID}\nREDIS_PASSWORD=pw\n`, { mode: 0o600 });
  await fs.writeFile(path.join(cfg, 'bin', 'whereami'), '#!/bin/sh\necho "bin of $MODULE_ID"\n', { mode: 0o755 });
  await run('chown', ['-R', `${ID}:${ID}`, HOME]);
}, 60_000);

afterAll(async () => {
  await run('userdel', ['-r', '-f', ID]).catch(() => undefined);
});

test('runs the command as the instance user in its agent environment', async () => {
  const script = 'id -un; pwd; echo "$TCP_PORT $AGENT_ID $REDIS_USER"; echo "$AGENT_STATE_DIR"; echo "$XDG_RUNTIME_DIR"; whereami; echo "$HOME"';
  const { stdout } = await run(process.execPath, [BIN, 'runagent', '-m', ID, 'sh', '-c', script], { env: { PATH: process.env.PATH, HOME: '/root' } });
  const uid = (await run('id', ['-u', ID])).stdout.trim();
  expect(stdout.split('\n')).toEqual([ID, `${HOME}/.config/state`, `20042 module/${ID} module/${ID}`, `${HOME}/.config/state`, `/run/user/${uid}`, `bin of ${ID}`, HOME, '']);
});

test('passes the command exit code through and refuses an unknown instance clearly', async () => {
  const failed = await run(process.execPath, [BIN, 'runagent', '-m', ID, 'sh', '-c', 'exit 7']).then(() => 0, (e: { code?: number }) => e.code);
  expect(failed).toBe(7);
  const unknown = await run(process.execPath, [BIN, 'runagent', '-m', 'nosuchthing9', 'true']).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code?: number; stderr?: string }) => ({ code: e.code, stderr: e.stderr ?? '' }),
  );
  expect(unknown.code).not.toBe(0);
  expect(unknown.stderr).toContain('instance nosuchthing9 not found on this node');
});
