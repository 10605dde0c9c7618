import { mkdtempSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync, copyFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ProcessRunner, type CommandRecord, type CommandRunner } from '../../src/host/runner.js';
import { applyHostAdjustments, planHostAdjustments, readHostFacts, CONTAINERS_DROPIN, type HostPaths } from '../../src/sandbox/host-check.js';
import { preparePodmanHost } from '../support/host-podman.js';
import { withImageBuildLock } from '../support/image-build-lock.js';

function fakeHost(opts: { controllers: string; capEff: string; tunMode: number }): { paths: HostPaths; dir: string } {
  const dir = mkdtempSync(path.join(tmpdir(), 'ns8ctl-hostcheck-'));
  mkdirSync(path.join(dir, 'cgroup', 'unified'), { recursive: true });
  writeFileSync(path.join(dir, 'cgroup', 'unified', 'cgroup.controllers'), opts.controllers);
  writeFileSync(path.join(dir, 'status'), `Name:\tnode\nCapEff:\t${opts.capEff}\n`);
  writeFileSync(path.join(dir, 'tun'), '');
  chmodSync(path.join(dir, 'tun'), opts.tunMode);
  return { dir, paths: { cgroupRoot: path.join(dir, 'cgroup'), containersConfDir: path.join(dir, 'conf.d'), tunDevice: path.join(dir, 'tun'), procStatus: path.join(dir, 'status') } };
}

describe('sandbox host adjustments', () => {
  test('a hybrid host without CAP_SYS_RESOURCE and a private tun device needs all three adjustments, each explained', async () => {
    const { paths, dir } = fakeHost({ controllers: 'hugetlb\n', capEff: '000001fffeffffff', tunMode: 0o600 });
    const facts = await readHostFacts(paths);
    expect(facts).toMatchObject({ unifiedControllers: ['hugetlb'], hasSysResource: false, tunMode: 0o600 });
    const plan = planHostAdjustments(facts);
    expect(plan.map((a) => a.id)).toEqual(['cgroup-hybrid', 'podman-ulimits', 'tun-mode']);
    for (const a of plan) expect(a.explanation).toMatch(/^host: .+; .+/);
    rmSync(dir, { recursive: true, force: true });
  });

  test('a host with full capabilities, no hybrid controllers and an open tun device needs nothing', async () => {
    const { paths, dir } = fakeHost({ controllers: '', capEff: '000001ffffffffff', tunMode: 0o666 });
    expect(planHostAdjustments(await readHostFacts(paths))).toEqual([]);
    rmSync(dir, { recursive: true, force: true });
  });

  test('when the controllers cannot be moved, runc is configured instead and a second run changes nothing', async () => {
    // A host that refuses the mount (as an unprivileged container would): the runner answers every
    // `mount` with exit 32, so the fake controllers file keeps listing hugetlb.
    const { paths, dir } = fakeHost({ controllers: 'hugetlb', capEff: '000001fffeffffff', tunMode: 0o600 });
    const lines: string[] = [];
    const history: (CommandRecord & { mutating: boolean })[] = [];
    const runner: CommandRunner = {
      history,
      async run(argv) {
        const rec = { argv, exitCode: argv[0] === 'mount' ? 32 : 0, stdout: '', stderr: 'mount: permission denied', durationMs: 0, mutating: true };
        history.push(rec);
        return rec;
      },
    };
    const applied = await applyHostAdjustments({ runner, log: (l) => lines.push(l), paths });
    expect(applied.map((a) => a.id)).toEqual(['cgroup-hybrid', 'oci-runtime-runc', 'podman-ulimits', 'tun-mode']);
    expect(lines).toHaveLength(4);
    expect(history.map((r) => r.argv.slice(0, 4))).toEqual([['mount', '-t', 'cgroup', '-o']]);
    const conf = readFileSync(path.join(paths.containersConfDir, CONTAINERS_DROPIN), 'utf8');
    expect(conf).toMatch(/default_ulimits = \[\]/);
    expect(conf).toMatch(/runtime = "runc"/);
    expect(statSync(paths.tunDevice).mode & 0o777).toBe(0o666);
    const again: string[] = [];
    expect(await applyHostAdjustments({ runner, log: (l) => again.push(l), paths })).toEqual([]);
    expect(again).toEqual([]);
    rmSync(dir, { recursive: true, force: true });
  });

  test('after preparePodmanHost, podman runs a container as root and as a useradded user', async () => {
    await preparePodmanHost();
    await preparePodmanHost();
    const runner = new ProcessRunner();
    const ctx = mkdtempSync(path.join(tmpdir(), 'ns8ctl-hostcheck-img-'));
    copyFileSync('/bin/busybox', path.join(ctx, 'busybox'));
    writeFileSync(path.join(ctx, 'Containerfile'), 'FROM scratch\nCOPY busybox /bin/busybox\n');
    const image = 'localhost/ns8ctl-test/hostcheck:latest';
    await withImageBuildLock(() => runner.run(['podman', 'build', '-q', '-t', image, ctx]));
    const root = await runner.run(['podman', 'run', '--rm', image, '/bin/busybox', 'echo', 'rootful-ok']);
    expect(root.stdout.trim()).toBe('rootful-ok');

    const user = 'ns8hostchk';
    await runner.run(['useradd', '-m', user], { allowFailure: true });
    const archive = path.join(ctx, 'image.tar');
    await runner.run(['podman', 'save', '--format', 'oci-archive', '-o', archive, image]);
    chmodSync(ctx, 0o755);
    chmodSync(archive, 0o644);
    const asUser = (cmd: string[]) => runner.run(['runuser', '-u', user, '--', ...cmd], { cwd: `/home/${user}` });
    await asUser(['podman', 'load', '-q', '-i', archive]);
    const rootless = await asUser(['podman', 'run', '--rm', image, '/bin/busybox', 'echo', 'rootless-ok']);
    expect(rootless.stdout.trim()).toBe('rootless-ok');
    await asUser(['podman', 'system', 'reset', '-f']).catch(() => undefined);
    await runner.run(['userdel', '-r', user], { allowFailure: true });
    await withImageBuildLock(() => runner.run(['podman', 'rmi', image], { allowFailure: true }));
    rmSync(ctx, { recursive: true, force: true });
  }, 120_000);
});
