// Pure parts of `ns8ctl sandbox` (no podman needed): names, addresses, the apt mirror, the recipe
// hash, podman ps parsing, registry paths, node configuration, the host's Redis URL, and the
// commander wiring (with fake runners behind the project's CommandRunner interface).
import { Command } from 'commander';
import type { CommandRecord, CommandRunner, RunOptions } from '../../src/host/runner.js';
import { pickMirror } from '../../src/sandbox/apt-mirror.js';
import { registerSandboxCommands } from '../../src/cli/commands/sandbox.js';
import { renderCreated } from '../../src/sandbox/create.js';
import { envCommand, leaderRedisUrlOf, renderEnv } from '../../src/sandbox/env.js';
import { renderList } from '../../src/sandbox/list.js';
import { addressPlan, parseNodeRef, parseNodeCount, validateSandboxName } from '../../src/sandbox/naming.js';
import { renderRedisConf, renderSandboxEnv } from '../../src/sandbox/node-config.js';
import { nodeRunArgs, parsePs } from '../../src/sandbox/podman-sandbox.js';
import { targetPath } from '../../src/sandbox/push.js';
import { defaultRecipe, recipeHash } from '../../src/sandbox/rootfs-recipe.js';
import { podmanExecFlags, type ExecStdio, type StreamExec } from '../../src/host/stream-exec.js';

describe('sandbox naming and addresses', () => {
  test('nodes are named by id, nodeN or container name, and anything else is refused with the allowed forms', () => {
    expect(parseNodeRef('sandbox', '2')).toBe(2);
    expect(parseNodeRef('sandbox', 'node3')).toBe(3);
    expect(parseNodeRef('dev', 'ns8ctl-dev-node1')).toBe(1);
    expect(() => parseNodeRef('dev', 'registry')).toThrow(/use a node id \(1\), node1, or ns8ctl-dev-node1/);
    expect(() => parseNodeRef('dev', '0')).toThrow(/use a node id/);
  });

  test('names and node counts outside the allowed forms are usage errors', () => {
    expect(validateSandboxName('dev-1')).toBe('dev-1');
    expect(() => validateSandboxName('1dev')).toThrow(/starting with a letter/);
    expect(parseNodeCount(undefined)).toBe(1);
    expect(parseNodeCount('9')).toBe(9);
    expect(() => parseNodeCount('10')).toThrow(/from 1 to 9/);
    expect(() => parseNodeCount('1.5')).toThrow(/integer/);
  });

  test('the address plan puts the registry at .2 and node N at .(10+N) of the /24', () => {
    const plan = addressPlan('10.89.3.0/24');
    expect([plan.registry, plan.node(1), plan.node(9)]).toEqual(['10.89.3.2', '10.89.3.11', '10.89.3.19']);
    expect(() => addressPlan('10.89.0.0/16')).toThrow(/not a \/24/);
  });
});

describe('sandbox root filesystem recipe', () => {
  test("the Debian mirror comes from the host's apt sources, skipping security and third-party sources", () => {
    const deb822 = 'Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n';
    expect(pickMirror([{ name: 'nodesource.sources', text: 'Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\n' }, { name: 'debian.sources', text: deb822 }])).toBe('http://mirror.example/debian');
    expect(pickMirror([{ name: 'sources.list', text: '# comment\ndeb [arch=amd64] http://ftp.example/debian/ bookworm main\n' }])).toBe('http://ftp.example/debian');
    expect(pickMirror([{ name: 'x.sources', text: 'Types: deb\nURIs: http://mirror.example/debian\nEnabled: no\n' }])).toBeUndefined();
  });

  test('the recipe hash is stable and changes with any package, file or link', () => {
    const a = defaultRecipe();
    expect(recipeHash(a)).toBe(recipeHash(defaultRecipe()));
    expect(recipeHash({ ...a, packages: [...a.packages, 'vim'] })).not.toBe(recipeHash(a));
    const files = { ...a.files, 'etc/motd': { content: 'hi', mode: 0o644 } };
    expect(recipeHash({ ...a, files })).not.toBe(recipeHash(a));
    expect(recipeHash({ ...a, symlinks: { ...a.symlinks, 'usr/local/bin/runagent': '/elsewhere' } })).not.toBe(recipeHash(a));
    // NS8's agent runtime: Debian's python3 and python3-redis, the pyenv, the links into runtime/ns8.
    expect(a.packages).toEqual(expect.arrayContaining(['python3', 'python3-redis']));
    expect(a.symlinks).toMatchObject({ 'usr/local/agent/pypkg': '/opt/ns8ctl/app/runtime/ns8/pypkg', 'usr/local/bin/runagent': '/opt/ns8ctl/app/runtime/ns8/bin/runagent', 'usr/local/agent/pyenv/bin/python3': '/usr/bin/python3' });
    expect(Object.keys(a.files)).toEqual(expect.arrayContaining(['etc/nethserver/agent.env', 'etc/nethserver/core.env', 'usr/local/agent/pyenv/lib/python3.11/site-packages/ns8-pypkg.pth']));
    // Node users never share a uid or subordinate ids with the host's users (no user namespace).
    expect(a.files['etc/login.defs']?.content).toMatch(/^UID_MIN 52000$/m);
    expect(a.files['etc/login.defs']?.content).toMatch(/^SUB_UID_MIN 300000000$/m);
    expect(a.packages).toEqual(expect.arrayContaining(['podman', 'crun', 'uidmap', 'slirp4netns', 'fuse-overlayfs', 'redis-server']));
    expect(a.include).toEqual(expect.arrayContaining(['systemd', 'libpam-systemd', 'dbus-user-session']));
  });
});

describe('sandbox node configuration', () => {
  const input = { sandbox: 'dev', leaderAddress: '10.89.0.11', adminPassword: 'pw', registry: '10.89.0.2:5000' };
  test('node 1 runs the Redis master; other nodes are read-only replicas of it, authenticating as admin', () => {
    const leader = renderRedisConf({ ...input, nodeId: 1 });
    expect(leader).not.toMatch(/replicaof/);
    expect(leader).toMatch(/^aclfile /m);
    const replica = renderRedisConf({ ...input, nodeId: 2 });
    expect(replica).toMatch(/^replicaof 10\.89\.0\.11 6379$/m);
    expect(replica).toMatch(/^masteruser ns8ctl$/m);
    expect(replica).toMatch(/^replica-read-only yes$/m);
  });

  test('ns8ctl inside a node talks to the leader by default', () => {
    expect(renderSandboxEnv({ ...input, nodeId: 2 })).toMatch(/^NS8CTL_LEADER_REDIS_URL=redis:\/\/ns8ctl:pw@10\.89\.0\.11:6379$/m);
  });

  test('a node boots privileged with systemd, no task cap, a clean stop signal, the rootfs as a private overlay, and the project read-only', () => {
    const argv = nodeRunArgs({ sandbox: 'dev', nodeId: 2, address: '10.89.0.12', leaderAddress: '10.89.0.11', rootfs: '/cache/r', configDir: '/s/etc', containersDir: '/s/c', homeDir: '/s/h', registriesConf: '/s/reg.conf', projectRoot: '/p', nodeBinary: '/usr/bin/node' });
    expect(argv.join(' ')).toContain('--pids-limit -1');
    expect(argv).toEqual(expect.arrayContaining(['--privileged', '--systemd=always', '--stop-signal=SIGRTMIN+3', '/dev/net/tun', 'cluster-leader:10.89.0.11', '/p:/opt/ns8ctl/app:ro']));
    expect(argv.slice(-3)).toEqual(['--rootfs', '/cache/r:O', '/lib/systemd/systemd']);
  });
});

describe('sandbox podman and registry helpers', () => {
  test('podman ps output becomes the sandbox containers, nodes by id first, foreign containers ignored', () => {
    const ps = JSON.stringify([
      { Id: 'r', Names: ['ns8ctl-dev-registry'], State: 'running', Labels: { 'org.ns8ctl.sandbox': 'dev', 'org.ns8ctl.sandbox.role': 'registry', 'org.ns8ctl.sandbox.address': '10.89.0.2:5000' } },
      { Id: 'b', Names: ['ns8ctl-dev-node2'], State: 'exited', Labels: { 'org.ns8ctl.sandbox': 'dev', 'org.ns8ctl.sandbox.role': 'node', 'org.ns8ctl.sandbox.node-id': '2' } },
      { Id: 'a', Names: ['ns8ctl-dev-node1'], State: 'running', Labels: { 'org.ns8ctl.sandbox': 'dev', 'org.ns8ctl.sandbox.role': 'node', 'org.ns8ctl.sandbox.node-id': '1' } },
      { Id: 'x', Names: ['other'], State: 'running', Labels: null },
    ]);
    expect(parsePs(ps).map((c) => [c.name, c.nodeId, c.state])).toEqual([['ns8ctl-dev-node1', 1, 'running'], ['ns8ctl-dev-node2', 2, 'exited'], ['ns8ctl-dev-registry', undefined, 'running']]);
  });

  test('sandbox push keeps the image path and tag without its registry host', () => {
    expect(targetPath('localhost/myapp:1.0.0')).toBe('myapp:1.0.0');
    expect(targetPath('127.0.0.1:5000/ns8ctl-examples/webapp:1.0.0')).toBe('ns8ctl-examples/webapp:1.0.0');
    expect(targetPath('docker.io/library/redis')).toBe('library/redis:latest');
    expect(targetPath('team/app:2')).toBe('team/app:2');
    expect(() => targetPath('Bad Image')).toThrow(/--as NAME:TAG/);
  });
});

describe('sandbox commands in the CLI', () => {
  /** A runner that answers `podman --version` and `podman ps` as on a host with no sandboxes, recording argv. */
  function fakePodman(ps = '[]'): CommandRunner & { calls: string[][] } {
    const calls: string[][] = [];
    const history: (CommandRecord & { mutating: boolean })[] = [];
    return {
      calls,
      history,
      async run(argv: string[], _o?: RunOptions) {
        calls.push(argv);
        const rec = { argv, exitCode: 0, stdout: argv[1] === 'ps' ? ps : 'podman version 4.3.1\n', stderr: '', durationMs: 0, mutating: false };
        history.push(rec);
        return rec;
      },
    };
  }

  test('sandbox list -o json prints one JSON document', async () => {
    const runner = fakePodman();
    let out = '';
    const program = new Command('ns8ctl').exitOverride();
    registerSandboxCommands(program, { deps: () => ({ runner, stdout: (t) => void (out += t), stderr: () => undefined }), setExitCode: () => undefined });
    await program.parseAsync(['sandbox', 'list', '-o', 'json'], { from: 'user' });
    expect(JSON.parse(out)).toEqual({ sandboxes: [] });
    expect(runner.calls).toContainEqual(['podman', 'ps', '-a', '--filter', 'label=org.ns8ctl.sandbox', '--format', 'json']);
  });

  const node2 = { Id: 'b', Names: ['ns8ctl-dev-node2'], State: 'running', Labels: { 'org.ns8ctl.sandbox': 'dev', 'org.ns8ctl.sandbox.role': 'node', 'org.ns8ctl.sandbox.node-id': '2' } };

  /** A StreamExec that records what it was asked to run and answers with `code`. */
  function fakeStreamExec(code = 0): StreamExec & { calls: { argv: string[]; stdio: ExecStdio }[] } {
    const calls: { argv: string[]; stdio: ExecStdio }[] = [];
    return Object.assign(async (argv: string[], o: { stdio: ExecStdio }) => {
      calls.push({ argv, stdio: o.stdio });
      return code;
    }, { calls });
  }

  test('sandbox exec passes everything after -- to the node, options included, and its exit code through', async () => {
    const runner = fakePodman(JSON.stringify([node2]));
    const streamExec = fakeStreamExec(7);
    const codes: number[] = [];
    const program = new Command('ns8ctl').exitOverride();
    registerSandboxCommands(program, { deps: () => ({ runner, streamExec, execStdio: { mode: 'inherit', stdinIsTTY: false, stdoutIsTTY: false }, stdout: () => undefined, stderr: () => undefined }), setExitCode: (c) => void codes.push(c) });
    await program.parseAsync(['sandbox', 'exec', '--name', 'dev', '2', '--', 'ls', '-la', '--name', 'x'], { from: 'user' });
    expect(runner.calls).toContainEqual(['podman', 'ps', '-a', '--filter', 'label=org.ns8ctl.sandbox=dev', '--format', 'json']);
    expect(streamExec.calls.map((c) => c.argv)).toEqual([['podman', 'exec', '-i', 'ns8ctl-dev-node2', 'ls', '-la', '--name', 'x']]);
    expect(codes).toEqual([7]);
  });

  test("the CLI's sandbox exec shares this process's stdio unless told otherwise, even when the CLI captures its own output", async () => {
    const runner = fakePodman(JSON.stringify([node2]));
    const streamExec = fakeStreamExec();
    const program = new Command('ns8ctl').exitOverride();
    registerSandboxCommands(program, { deps: () => ({ runner, streamExec, stdout: () => undefined, stderr: () => undefined }), setExitCode: () => undefined });
    await program.parseAsync(['sandbox', 'exec', '--name', 'dev', '2', '--', 'cat'], { from: 'user' });
    expect(streamExec.calls[0]?.stdio.mode).toBe('inherit');
  });

  test('podman exec gets -i whenever the command has a stdin, and -t only when stdin and stdout are terminals', () => {
    expect(podmanExecFlags({ mode: 'inherit', stdinIsTTY: false, stdoutIsTTY: false })).toEqual(['-i']);
    expect(podmanExecFlags({ mode: 'inherit', stdinIsTTY: true, stdoutIsTTY: false })).toEqual(['-i']);
    expect(podmanExecFlags({ mode: 'inherit', stdinIsTTY: true, stdoutIsTTY: true })).toEqual(['-i', '-t']);
    expect(podmanExecFlags({ mode: 'pipe' })).toEqual([]);
    expect(podmanExecFlags({ mode: 'pipe', stdin: 'apiVersion: x\n' })).toEqual(['-i']);
  });

  test('sandbox list as another user than root is refused with the sudo line, before podman is asked', async () => {
    const runner = fakePodman();
    const program = new Command('ns8ctl').exitOverride();
    registerSandboxCommands(program, { deps: () => ({ runner, uid: 1000, stdout: () => undefined, stderr: () => undefined }), setExitCode: () => undefined });
    await expect(program.parseAsync(['sandbox', 'list'], { from: 'user' })).rejects.toMatchObject({ code: 'sandbox_needs_root', message: expect.stringMatching(/rootless.*sudo ns8ctl sandbox list/s) });
    expect(runner.calls).toEqual([]);
  });

  test('sandbox env refuses two different names', async () => {
    const program = new Command('ns8ctl').exitOverride();
    registerSandboxCommands(program, { deps: () => ({ runner: fakePodman(), stdout: () => undefined, stderr: () => undefined }), setExitCode: () => undefined });
    await expect(program.parseAsync(['sandbox', 'env', 'one', '--name', 'two'], { from: 'user' })).rejects.toMatchObject({ code: 'usage', message: expect.stringMatching(/give one/) });
  });
});

describe('pointing ns8ctl on the host at a sandbox', () => {
  const url = 'redis://ns8ctl:0a1b@10.89.4.11:6379';

  test('sandbox env prints one export line a shell can eval', () => {
    expect(renderEnv({ name: 'dev', redisUrl: url, registry: '10.89.4.2:5000' })).toBe(`export NS8CTL_REDIS_URL='${url}'\n`);
    expect(envCommand('sandbox')).toBe('eval "$(sudo ns8ctl sandbox env)"');
    expect(envCommand('dev')).toBe('eval "$(sudo ns8ctl sandbox env dev)"');
  });

  test("the leader URL carries the admin user and password and node 1's address", () => {
    expect(leaderRedisUrlOf({ addresses: { '1': '10.89.4.11', '2': '10.89.4.12' } }, '0a1b')).toBe(url);
    expect(leaderRedisUrlOf({ addresses: {} }, '0a1b')).toBeNull();
  });

  test('sandbox list shows each sandbox leader URL and the env line under the table', () => {
    const text = renderList([{ name: 'dev', registry: '10.89.4.2:5000', network: 'ns8ctl-dev', subnet: '10.89.4.0/24', nodes: [{ id: 1, container: 'ns8ctl-dev-node1', address: '10.89.4.11', state: 'running', role: 'leader' }], registryContainer: null, leaderRedisUrl: url }], 'table');
    expect(text).toContain(`dev: leader Redis ${url}`);
    expect(text).toContain('eval "$(sudo ns8ctl sandbox env dev)"');
  });

  test('create prints the leader URL and a ready-to-paste export line', () => {
    const text = renderCreated({ name: 'dev', nodes: 1, network: 'ns8ctl-dev', subnet: '10.89.4.0/24', registry: '10.89.4.2:5000', addresses: { '1': '10.89.4.11' }, rootfs: '/r', recipeHash: 'h', createdAt: '', leaderRedisUrl: url, timings: { totalS: 1, rootfsS: 0, bootS: 1, nodes: [] }, rootfsBuilt: false });
    expect(text).toMatch(new RegExp(`^  export NS8CTL_REDIS_URL='${url.replace(/[.]/g, '\\.')}'$`, 'm'));
    expect(text).toContain('eval "$(sudo ns8ctl sandbox env dev)"');
  });
});
