// Error paths of `ns8ctl sandbox` that a working host never takes: a host podman cannot run a node
// on, a node whose systemd never boots, pushing an image that is not in local storage, a leader
// that does not answer. Podman and skopeo are replaced by a scripted runner behind the project's
// CommandRunner interface; everything else (state dir, cache lookup, host checks on a temp tree,
// cleanup) is the real code.
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { CommandRecord, CommandRunner, RunOptions } from '../../src/host/runner.js';
import { createSandbox } from '../../src/sandbox/create.js';
import { defaultSandboxDeps, type SandboxDeps } from '../../src/sandbox/deps.js';
import { sandboxEnv } from '../../src/sandbox/env.js';
import { sandboxPaths } from '../../src/sandbox/naming.js';
import { waitForSystemd } from '../../src/sandbox/podman-sandbox.js';
import { pushImage } from '../../src/sandbox/push.js';
import { writeRecord } from '../../src/sandbox/record.js';
import { defaultRecipe, recipeHash } from '../../src/sandbox/rootfs-recipe.js';

type Answer = Partial<Pick<CommandRecord, 'exitCode' | 'stdout' | 'stderr'>>;

/** A CommandRunner that answers from `script` (argv -> answer; exit 0 and no output by default) and records every argv. */
function scriptedRunner(script: (argv: string[]) => Answer | undefined): CommandRunner & { calls: string[][] } {
  const calls: string[][] = [];
  const history: (CommandRecord & { mutating: boolean })[] = [];
  return {
    calls,
    history,
    async run(argv: string[], o?: RunOptions) {
      calls.push(argv);
      const a = script(argv) ?? {};
      const rec = { argv, exitCode: a.exitCode ?? 0, stdout: a.stdout ?? '', stderr: a.stderr ?? '', durationMs: 0, mutating: o?.mutating ?? false };
      history.push(rec);
      return rec;
    },
  };
}

/**
 * Podman on a host where the network and registry work: `node` answers the node's `podman run`,
 * `systemd` answers `systemctl is-system-running` in a node, `state` is what `podman inspect`
 * says about a node container.
 */
function fakePodman(opts: { node?: Answer; systemd?: Answer; state?: string; logs?: string }) {
  let network = false;
  return scriptedRunner((argv) => {
    const cmd = argv.join(' ');
    if (cmd === 'podman --version') return { stdout: 'podman version 4.3.1\n' };
    if (argv[1] === 'ps') return { stdout: '[]' };
    if (argv[1] === 'network' && argv[2] === 'exists') return { exitCode: network ? 0 : 1 };
    if (argv[1] === 'network' && argv[2] === 'create') network = true;
    if (argv[1] === 'network' && argv[2] === 'inspect') return { stdout: JSON.stringify([{ subnets: [{ subnet: '10.99.7.0/24' }] }]) };
    if (argv[1] === 'run' && argv.includes('--systemd=always')) return opts.node;
    if (argv[1] === 'exec' && argv.includes('is-system-running')) return opts.systemd;
    if (argv[1] === 'inspect') return { stdout: `${opts.state ?? 'running'}\n` };
    if (argv[1] === 'logs') return { stdout: opts.logs ?? '' };
    return undefined;
  });
}

describe('sandbox error paths (scripted podman and skopeo)', () => {
  let tmp: string;
  let env: NodeJS.ProcessEnv;
  let progress: string;

  /** Deps on a temp state dir, a ready (fake) cached root filesystem and an adjusted (temp) host. */
  function depsWith(runner: CommandRunner, extra: Partial<SandboxDeps> = {}): SandboxDeps {
    return defaultSandboxDeps({
      runner,
      env,
      uid: 0,
      stdout: () => undefined,
      stderr: (t) => void (progress += t),
      hostPaths: { cgroupRoot: path.join(tmp, 'cgroup'), containersConfDir: path.join(tmp, 'containers.conf.d'), tunDevice: path.join(tmp, 'tun'), procStatus: path.join(tmp, 'status') },
      ...extra,
    });
  }

  beforeEach(() => {
    tmp = mkdtempSync(path.join(tmpdir(), 'ns8ctl-sandbox-errors-'));
    env = { NS8CTL_SANDBOX_STATE: path.join(tmp, 'state'), NS8CTL_SANDBOX_CACHE: path.join(tmp, 'cache') };
    progress = '';
    const cached = path.join(tmp, 'cache', recipeHash(defaultRecipe()));
    mkdirSync(path.join(cached, 'rootfs'), { recursive: true });
    writeFileSync(path.join(cached, 'complete'), 'x\n');
    writeFileSync(path.join(tmp, 'status'), 'CapEff:\t000001ffffffffff\n'); // CAP_SYS_RESOURCE held
    writeFileSync(path.join(tmp, 'tun'), '');
    chmodSync(path.join(tmp, 'tun'), 0o666);
  });

  afterEach(() => rmSync(tmp, { recursive: true, force: true }));

  test('a host podman cannot run a node on fails with sandbox_host_unsupported naming the node, and create removes what it made', async () => {
    const runner = fakePodman({ node: { exitCode: 126, stderr: 'Error: OCI runtime error: crun: cannot set memory limit: cgroup controller not mounted\n' } });
    const err = await createSandbox({ name: 'errs', nodes: 2 }, depsWith(runner)).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'sandbox_host_unsupported',
      message: expect.stringMatching(/sandbox node 1 \(ns8ctl-errs-node1\): .*cgroup controller not mounted.*Host adjustments.*--systemd=always/s),
    });
    expect(runner.calls).toContainEqual(['podman', 'network', 'rm', '-f', 'ns8ctl-errs']);
    expect(existsSync(sandboxPaths(env, 'errs').dir)).toBe(false);
    expect(runner.calls.filter((a) => a[1] === 'run' && a.includes('--systemd=always'))).toHaveLength(1); // stops at the first node
    expect(progress).toMatch(/create failed; removing what was made/);
  });

  test('with --retain, a failed create keeps its state dir and network for debugging', async () => {
    const runner = fakePodman({ node: { exitCode: 126, stderr: 'Error: crun: no\n' } });
    await expect(createSandbox({ name: 'errs', retain: true }, depsWith(runner))).rejects.toMatchObject({ code: 'sandbox_host_unsupported' });
    expect(existsSync(sandboxPaths(env, 'errs').redisPassword)).toBe(true);
    expect(runner.calls.some((a) => a[1] === 'network' && a[2] === 'rm')).toBe(false);
  });

  test("a node whose systemd dies while booting fails create with sandbox_node_boot_failed, quoting the node's last log lines", async () => {
    const runner = fakePodman({
      systemd: { exitCode: 255, stderr: 'Error: container state improper\n' },
      state: 'exited',
      logs: 'Failed to mount cgroup at /sys/fs/cgroup/systemd: Operation not permitted\n[!!!!!!] Failed to mount API filesystems.\n',
    });
    const err = await createSandbox({ name: 'errs' }, depsWith(runner)).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'sandbox_node_boot_failed',
      message: expect.stringMatching(/ns8ctl-errs-node1 did not finish booting systemd \(last answer: Error: container state improper\).*Failed to mount API filesystems.*Host adjustments/s),
    });
    expect(runner.calls).toContainEqual(['podman', 'logs', '--tail', '15', 'ns8ctl-errs-node1']);
    expect(existsSync(sandboxPaths(env, 'errs').dir)).toBe(false);
  });

  test('a node that stays "starting" fails with sandbox_node_boot_failed once the boot timeout has passed', async () => {
    let clock = 0;
    const runner = fakePodman({ systemd: { exitCode: 1, stdout: 'starting\n' }, state: 'running', logs: 'Starting redis-server.service...\n' });
    const deps = depsWith(runner, { now: () => clock, sleep: async (ms) => void (clock += ms) });
    await expect(waitForSystemd(deps, 'ns8ctl-errs-node1', 10_000)).rejects.toMatchObject({ code: 'sandbox_node_boot_failed', message: expect.stringMatching(/last answer: starting.*Starting redis-server/s) });
    expect(clock).toBeGreaterThanOrEqual(10_000);
    expect(runner.calls.filter((a) => a.includes('is-system-running')).length).toBeGreaterThan(1); // it kept asking
  });

  describe('push', () => {
    const record = { name: 'errs', nodes: 1, network: 'ns8ctl-errs', subnet: '10.99.7.0/24', registry: '10.99.7.2:5000', addresses: { '1': '10.99.7.11' }, rootfs: '/r', recipeHash: 'h', createdAt: '' };
    /** skopeo that fails `copy` with `stderr`. */
    const skopeo = (stderr: string) => scriptedRunner((argv) => (argv[0] === 'skopeo' && argv[1] === 'copy' ? { exitCode: 1, stderr } : { stdout: 'skopeo version 1.9.3\n' }));

    test('an image that is not in local Podman storage fails with image_not_found, naming it', async () => {
      await writeRecord({ env }, record);
      // skopeo 1.9's own words for a missing image.
      const runner = skopeo('time="2026-01-01T00:00:00Z" level=fatal msg="initializing source containers-storage:[overlay@/var/lib/containers/storage+/run/containers/storage]localhost/nope:1: reference \\"[overlay@/var/lib/containers/storage+/run/containers/storage]localhost/nope:1\\" does not resolve to an image ID: identifier is not an image"\n');
      await expect(pushImage({ name: 'errs', image: 'localhost/nope:1' }, depsWith(runner))).rejects.toMatchObject({ code: 'image_not_found', message: expect.stringMatching(/"localhost\/nope:1" is not in local Podman storage.*podman images/) });
      expect(runner.calls).toContainEqual(['skopeo', 'copy', '-q', '--dest-tls-verify=false', 'containers-storage:localhost/nope:1', 'docker://10.99.7.2:5000/nope:1']);
    });

    test('a registry that does not answer fails with sandbox_push_failed, asking whether the sandbox runs', async () => {
      await writeRecord({ env }, record);
      const runner = skopeo('level=fatal msg="trying to reuse blob: pinging container registry 10.99.7.2:5000: Get \\"http://10.99.7.2:5000/v2/\\": dial tcp 10.99.7.2:5000: connect: connection refused"\n');
      await expect(pushImage({ name: 'errs', image: 'localhost/app:1' }, depsWith(runner))).rejects.toMatchObject({ code: 'sandbox_push_failed', message: expect.stringMatching(/10\.99\.7\.2:5000.*connection refused.*sandbox list/s) });
    });

    test('pushing to a sandbox that does not exist says so and how to create it', async () => {
      const runner = skopeo('');
      await expect(pushImage({ name: 'errs', image: 'localhost/app:1' }, depsWith(runner))).rejects.toMatchObject({ code: 'not_found', message: expect.stringMatching(/sandbox create --name errs/) });
      expect(runner.calls.some((a) => a[1] === 'copy')).toBe(false);
    });
  });

  test("sandbox env fails with sandbox_redis_unreachable when the leader's Redis does not answer, instead of printing a dead URL", async () => {
    await writeRecord({ env }, { name: 'errs', nodes: 1, network: 'ns8ctl-errs', subnet: '10.99.7.0/24', registry: '10.99.7.2:5000', addresses: { '1': '10.99.7.11' }, rootfs: '/r', recipeHash: 'h', createdAt: '' });
    writeFileSync(sandboxPaths(env, 'errs').redisPassword, 'pw\n', { mode: 0o600 });
    const asked: string[] = [];
    const openRedis = async (url: string): Promise<never> => {
      asked.push(url);
      throw Object.assign(new Error('connect EHOSTUNREACH 10.99.7.11:6379'), { code: 'EHOSTUNREACH' });
    };
    await expect(sandboxEnv({ name: 'errs' }, depsWith(scriptedRunner(() => undefined), { openRedis }))).rejects.toMatchObject({
      code: 'sandbox_redis_unreachable',
      message: expect.stringMatching(/node 1, 10\.99\.7\.11:6379.*EHOSTUNREACH.*sandbox start 1 --name errs/s),
    });
    expect(asked).toEqual(['redis://ns8ctl:pw@10.99.7.11:6379']);
  });

  test('sandbox env as another user than root is refused', async () => {
    await expect(sandboxEnv({ name: 'errs' }, depsWith(scriptedRunner(() => undefined), { uid: 1000 }))).rejects.toMatchObject({ code: 'sandbox_needs_root', message: expect.stringMatching(/sudo ns8ctl sandbox env/) });
  });
});
