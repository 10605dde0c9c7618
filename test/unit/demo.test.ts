/**
 * The demo's pure parts (arguments, manifests adjusted to a sandbox, readiness, image list) and
 * its refusals before it touches anything (not root, not Debian, no podman), each one line.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { CommandFailedError } from '../../src/errors.js';
import type { CommandRecord, CommandRunner, RunOptions } from '../../src/host/runner.js';
import { defaultDemoDeps, demoMain } from '../../src/demo/cli.js';
import type { DemoDeps } from '../../src/demo/demo.js';
import { DEMO_MANIFESTS, adjustManifest, exampleImagePaths, loopUnitFile, namesSourceRegistry, nextSteps, parseDemoArgs, readinessOf } from '../../src/demo/plan.js';
import { parseManifestText } from '../../src/manifest/load.js';
import { validateManifests } from '../../src/manifest/validate.js';

const root = path.resolve(import.meta.dirname, '..', '..');
const sandbox = { registry: '10.89.7.2:5000', nodeAddress: '10.89.7.11' };

/** podman is there, but listing containers fails (a broken storage, say). */
class BrokenPodmanRunner implements CommandRunner {
  readonly history: (CommandRecord & { mutating: boolean })[] = [];
  async run(argv: string[], _opts?: RunOptions): Promise<CommandRecord> {
    const ok = argv[1] === '--version';
    const r = { argv, exitCode: ok ? 0 : 125, stdout: ok ? 'podman version 4.3.1\n' : '', stderr: ok ? '' : 'Error: database is locked', durationMs: 0 };
    this.history.push({ ...r, mutating: false });
    if (!ok) throw new CommandFailedError('command_failed', `${argv.join(' ')} exited 125: Error: database is locked`, { argv, exitCode: 125, stderr: r.stderr });
    return r;
  }
}

/** Answers every command as if it were missing from PATH, and records what was asked. */
class NoToolsRunner implements CommandRunner {
  readonly history: (CommandRecord & { mutating: boolean })[] = [];
  async run(argv: string[], _opts?: RunOptions): Promise<CommandRecord> {
    const r = { argv, exitCode: null, stdout: '', stderr: `spawn ${argv[0] ?? ''} ENOENT`, durationMs: 0 };
    this.history.push({ ...r, mutating: false });
    return r;
  }
}

function fakeDeps(over: Partial<DemoDeps>): { deps: DemoDeps; out: () => string; err: () => string; runner: CommandRunner; dir: string } {
  let out = '';
  let err = '';
  const dir = mkdtempSync(path.join(tmpdir(), 'demo-unit-'));
  const runner = over.runner ?? new NoToolsRunner();
  const marker = path.join(dir, 'debian_version');
  writeFileSync(marker, '12.8\n');
  const deps = defaultDemoDeps({ runner, uid: 0, stdout: (t) => void (out += t), stderr: (t) => void (err += t), demoDir: path.join(dir, 'demo'), debianMarker: marker, ...over });
  return { deps, out: () => out, err: () => err, runner, dir };
}

describe('demo arguments', () => {
  test('no arguments run the demo in the sandbox "demo"', () => {
    expect(parseDemoArgs([])).toEqual({ down: false, help: false, name: 'demo' });
  });
  test('--down and --name are read in both forms', () => {
    expect(parseDemoArgs(['--down', '--name', 'try'])).toEqual({ down: true, help: false, name: 'try' });
    expect(parseDemoArgs(['--name=x1'])).toMatchObject({ name: 'x1' });
  });
  test('an unknown argument is a usage error naming the allowed ones', () => {
    expect(() => parseDemoArgs(['--up'])).toThrow(/unknown argument "--up"; allowed: --down, --name NAME, --help/);
    expect(() => parseDemoArgs(['--name'])).toThrow(/--name needs a value/);
  });
});

describe('demo manifests', () => {
  test("the repository's manifests, adjusted to a sandbox, name its registry and node address and validate", () => {
    const docs = DEMO_MANIFESTS.map((f) => {
      const text = adjustManifest(readFileSync(path.join(root, 'manifests', f), 'utf8'), sandbox);
      expect(namesSourceRegistry(text)).toBe(false);
      return parseManifestText(`/m/${f}`, text);
    });
    const result = validateManifests({ documents: docs.flatMap((d) => d.documents), diagnostics: docs.flatMap((d) => d.diagnostics), files: [] });
    expect(result.diagnostics).toEqual([]);
    const byKind = Object.fromEntries(result.objects.map((o) => [o.object.kind, o.object.spec as unknown]));
    expect(byKind.Module).toMatchObject({ image: '10.89.7.2:5000/ns8ctl-examples/webapp:1.0.0', node: 1 });
    expect(byKind.Node).toMatchObject({ id: 1, address: '10.89.7.11' });
  });

  test('comments are kept and a header says who wrote the file', () => {
    const text = adjustManifest('# mine\nspec:\n  image: 127.0.0.1:5000/a/b:1\n', sandbox);
    expect(text).toBe('# Written by `npm run demo` for its sandbox: edit and save, and the controller in node 1 applies it.\n# mine\nspec:\n  image: 10.89.7.2:5000/a/b:1\n');
  });

  test('an image of another registry is left alone, and the check says it still names the loopback one', () => {
    expect(namesSourceRegistry(adjustManifest('spec:\n  image: ghcr.io/x/y:1\n', sandbox))).toBe(false);
    expect(namesSourceRegistry('spec:\n  url: http://127.0.0.1:5000/\n')).toBe(true);
  });

  test('the example images are every name and tag under versions/, sorted', () => {
    expect(exampleImagePaths({ webapp: ['2.0.0', '1.0.0'], 'webapp-httpd': ['1.0.0'] })).toEqual(['ns8ctl-examples/webapp:1.0.0', 'ns8ctl-examples/webapp:2.0.0', 'ns8ctl-examples/webapp-httpd:1.0.0']);
  });
});

describe('readiness', () => {
  test('no status yet, not Ready with the reason, and Ready', () => {
    expect(readinessOf({})).toEqual({ ready: false, summary: 'no status yet (the controller and node agent are starting)' });
    expect(readinessOf({ conditions: JSON.stringify([{ type: 'Ready', status: 'False', reason: 'Progressing', message: 'pulling' }]) })).toEqual({ ready: false, summary: 'not Ready (Progressing: pulling)' });
    expect(readinessOf({ conditions: JSON.stringify([{ type: 'Synced', status: 'True' }, { type: 'Ready', status: 'True' }]) })).toEqual({ ready: true, summary: 'Ready' });
  });
  test('a value that is not JSON reads as no status', () => {
    expect(readinessOf({ conditions: '{"type":' }).ready).toBe(false);
  });
});

describe('next steps', () => {
  test('name the manifest to edit, how to watch it converge, and --down', () => {
    const text = nextSteps({ cli: 'node /p/dist/src/cli/bin.js', name: 'demo', manifestsDir: '/var/lib/ns8ctl/demo/manifests', down: 'sudo npm run demo -- --down' });
    expect(text).toContain('sudoedit /var/lib/ns8ctl/demo/manifests/webapp1.yaml');
    expect(text).toContain('sandbox env demo');
    expect(text).toContain('ns8ctl events -w');
    expect(text).toContain('sudo npm run demo -- --down');
  });
});

describe('the loop unit', () => {
  test('is enabled at boot, starts after the node\'s Redis, restarts on failure and runs the given command', () => {
    const text = loopUnitFile(['/usr/local/bin/ns8ctl', 'run', '--node', '1'], '/var/lib/ns8ctl');
    expect(text).toContain('\nExecStart=/usr/local/bin/ns8ctl run --node 1\n');
    expect(text).toContain('\nEnvironment=NS8CTL_STATE_DIR=/var/lib/ns8ctl\n');
    expect(text).toContain('\nAfter=network-online.target redis-server.service\n');
    expect(text).toContain('\nRestart=on-failure\n');
    expect(text).toMatch(/\[Install\]\nWantedBy=multi-user\.target\n$/);
  });
});

describe('the demo refuses, in one line, before touching anything', () => {
  test('not root: says to run it with sudo', async () => {
    const f = fakeDeps({ uid: 1000 });
    expect(await demoMain([], f.deps)).toBe(1);
    expect(f.err()).toBe('demo: error: the demo must run as root (it runs a sandbox node: privileged Podman containers with systemd): sudo npm run demo\n');
    expect(f.runner.history).toEqual([]);
    rmSync(f.dir, { recursive: true, force: true });
  });

  test('not Debian: names what it looked for', async () => {
    const f = fakeDeps({});
    f.deps.debianMarker = path.join(f.dir, 'nope');
    expect(await demoMain([], f.deps)).toBe(1);
    expect(f.err().split('\n')).toEqual([expect.stringMatching(/^demo: error: the demo runs on Debian 12 \(no .*nope here\)/), '']);
    rmSync(f.dir, { recursive: true, force: true });
  });

  test('no podman: gives the apt-get line, and --down refuses the same way', async () => {
    const f = fakeDeps({});
    expect(await demoMain([], f.deps)).toBe(1);
    expect(f.err()).toMatch(/^demo: error: podman is not installed, and ns8ctl sandbox needs it. Install it: apt-get install podman[^\n]*\n$/);
    expect(await demoMain(['--down'], f.deps)).toBe(1);
    expect(f.runner.history.map((r) => r.argv[0])).toEqual(['podman', 'podman']);
    rmSync(f.dir, { recursive: true, force: true });
  });

  test('a wrong argument exits 2', async () => {
    const f = fakeDeps({});
    expect(await demoMain(['--bogus'], f.deps)).toBe(2);
    expect(f.err()).toMatch(/unknown argument "--bogus"/);
    rmSync(f.dir, { recursive: true, force: true });
  });
});

describe('a failed step', () => {
  test('says which step failed, what to do and where the log is, and the log has the commands run', async () => {
    const f = fakeDeps({ runner: new BrokenPodmanRunner() });
    expect(await demoMain(['--name', 'try'], f.deps)).toBe(1);
    const log = path.join(f.deps.demoDir, 'demo.log');
    expect(f.err().split('\n').slice(-4)).toEqual([
      'demo: step 1/6 (sandbox "try" with 1 node) failed: podman ps -a --filter label=org.ns8ctl.sandbox=try --format json exited 125: Error: database is locked',
      '  what to do: check the lines above; remove a broken sandbox with: sudo npm run demo -- --down --name try; then run the demo again',
      `  log: ${log}`,
      '',
    ]);
    expect(readFileSync(log, 'utf8')).toContain('  ran: podman ps -a --filter label=org.ns8ctl.sandbox=try --format json -> exit 125: Error: database is locked');
    rmSync(f.dir, { recursive: true, force: true });
  });
});
