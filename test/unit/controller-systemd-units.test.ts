import { readFileSync } from 'node:fs';
import path from 'node:path';
import { controllerMain } from '../support/controller-main.js';
import { GIT_COMMAND_TIMEOUT_MS } from '../../src/controller/git-checkout.js';

const UNITS = path.resolve('contrib/systemd');

function execStart(unit: string): string[] {
  const text = readFileSync(path.join(UNITS, unit), 'utf8');
  const line = text.split('\n').find((l) => l.startsWith('ExecStart='));
  if (!line) throw new Error(`${unit} has no ExecStart`);
  return line.slice('ExecStart='.length).split(/\s+/).filter((w) => w && !w.startsWith('$'));
}

describe('systemd units in contrib/systemd', () => {
  it.each([
    ['ns8ctl-controller.service', 'controller'],
    ['ns8ctl.service', 'run'],
  ])('%s starts `ns8ctl %s` with options the command accepts', async (unit, command) => {
    const [bin, ...args] = execStart(unit);
    expect(bin).toBe('/usr/local/bin/ns8ctl');
    expect(args[0]).toBe(command);
    let out = '';
    const code = await controllerMain([command, '--help'], { stdout: (t) => void (out += t), stderr: (t) => void (out += t), env: {}, isTTY: false, stdin: async () => '', cwd: process.cwd() });
    expect(code).toBe(0);
    expect(out).toContain(`Usage: ns8ctl ${command}`);
    const flags = args.filter((a) => a.startsWith('--'));
    expect(flags.length).toBeGreaterThan(0);
    for (const flag of flags) expect(out).toContain(`${flag} `);
  });

  it('runs every long-running process with a clean SIGTERM stop, restart on failure and a persistent state dir', () => {
    for (const unit of ['ns8ctl-controller.service', 'ns8ctl.service', 'ns8ctl-node-agent@.service']) {
      const text = readFileSync(path.join(UNITS, unit), 'utf8');
      expect(text).toMatch(/^KillSignal=SIGTERM$/m);
      expect(text).toMatch(/^Restart=always$/m);
      expect(text).toMatch(/^StateDirectory=ns8ctl$/m);
      expect(text).toMatch(/^Environment=NS8CTL_STATE_DIR=\/var\/lib\/ns8ctl$/m);
      expect(text).toMatch(/^WantedBy=multi-user.target$/m);
    }
    expect(execStart('ns8ctl-node-agent@.service')).toEqual(['/usr/local/bin/ns8ctl', 'node-agent', '--node', '%i']);
  });

  it('gives the controller more stop time than its longest step (a git command in flight) takes', () => {
    const text = readFileSync(path.join(UNITS, 'ns8ctl-controller.service'), 'utf8');
    const stopSec = Number(/^TimeoutStopSec=(\d+)$/m.exec(text)?.[1]);
    expect(stopSec * 1000).toBeGreaterThanOrEqual(GIT_COMMAND_TIMEOUT_MS + 20_000);
  });
});
