/**
 * Moving an instance between two sandbox nodes by editing `spec.node`: the NS8-layout kickweb
 * module runs on node 1 with its configuration and a file it keeps in its state; the manifest
 * says node 2. The plan records a move; node 2's agent receives the state by rsync while node 1
 * still serves, node 1 stops its services for the final pass, node 2 starts them with the same
 * MODULE_UUID, configuration and data, node 1's copy (user, home, ports) is removed, and the
 * downtime is reported in the module-moved event. Moved back while the target's agent is killed
 * -9 with its receiver running, the move completes after a restart and leaves nothing behind.
 * Moved to node 2 again while the source's agent is killed -9 in the middle of its live pass, the
 * instance keeps serving on node 1 meanwhile, and the move completes after a restart.
 */
import type { Redis } from 'ioredis';
import type { SandboxInfo } from '../../src/sandbox/create.js';
import { execInNode } from '../../src/sandbox/lifecycle.js';
import { keys } from '../../src/state/keys.js';
import { startCompatSandbox, stopCompatSandbox } from '../support/compat-sandbox.js';
import { eventually, sandboxNode } from '../support/sandbox-node.js';

const NAME = 'ns8move';
const ID = 'kickweb1';
const { deps, inNode } = sandboxNode(NAME);
let info: SandboxInfo;
let leader: Redis;
let uuid = '';

const BUILT = ['kickweb:1.0.0', 'kickweb:1.1.0', 'kickweb-httpd:1.0.0'];

async function inNode2(command: string[]): Promise<{ code: number; out: string }> {
  let out = '';
  const code = await execInNode({ name: NAME, node: '2', command }, { ...deps, execStdio: { mode: 'pipe' }, stdout: (t) => void (out += t), stderr: () => undefined });
  return { code, out };
}

async function journals(): Promise<string> {
  const n1 = (await inNode(['journalctl', '--no-pager', '-n', '40', '-u', 'ns8ctl-run', '-u', 'ns8ctl-run-again', '-u', 'ns8ctl-run-third', '-u', 'ns8ctl-kill-sender'])).out;
  const n2 = (await inNode2(['journalctl', '--no-pager', '-n', '40', '-u', 'ns8ctl-node-agent', '-u', 'ns8ctl-node-agent-slow'])).out;
  return `--- node 1 (ns8ctl run) ---\n${n1}\n--- node 2 (node agent) ---\n${n2}\n--- move record ---\n${(await leader.hget('ns8ctl/moves', ID)) ?? '(none)'}`;
}

async function writeManifest(node: number): Promise<void> {
  const text = `apiVersion: ns8ctl.nethserver.org/v1\nkind: Module\nmetadata:\n  name: ${ID}\nspec:\n  image: ${info.registry}/ns8ctl-compat/kickweb:1.0.0\n  node: ${node}\n  removalPolicy: Delete\n  configuration:\n    greeting: "Hello before the move"\n`;
  const w = await inNode(['sh', '-c', `mkdir -p /root/manifests && cat > /root/manifests/.${ID}.tmp && mv /root/manifests/.${ID}.tmp /root/manifests/${ID}.yaml`], text);
  expect(w.code).toBe(0);
}

/** The page the instance serves on its node, once it contains `text`. */
async function served(run: (c: string[]) => Promise<{ code: number; out: string }>, text: string, timeoutMs: number): Promise<string> {
  return eventually(`the page with ${JSON.stringify(text)}`, async () => {
    const port = (await leader.hget(keys.moduleEnvironment(ID), 'TCP_PORT')) ?? '';
    const r = port ? await run(['curl', '-sf', '--max-time', '3', `http://127.0.0.1:${port}/`]) : undefined;
    return r?.code === 0 && r.out.includes(text) ? r.out : undefined;
  }, { timeoutMs, everyMs: 2000, explain: journals });
}

beforeAll(async () => {
  ({ info, leader } = await startCompatSandbox(NAME, deps, { nodes: 2, only: ['kickweb', 'kickweb-httpd'], built: BUILT, buildTimeoutMs: 600_000 }));
}, 1_200_000);

afterAll(async () => {
  await stopCompatSandbox(NAME, deps, { info, leader }, BUILT);
}, 120_000);

test('kickweb1 runs on node 1 with its configuration and a file of its own in its state', async () => {
  await writeManifest(1);
  expect((await inNode(['systemd-run', '--unit=ns8ctl-run', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '5s'])).code).toBe(0);
  expect((await inNode2(['systemd-run', '--unit=ns8ctl-node-agent', '--collect', '/usr/local/bin/ns8ctl', 'node-agent', '--node', '2', '--resync', '5'])).code).toBe(0);
  await served(inNode, 'Hello before the move', 600_000);
  expect((await inNode(['runagent', '-m', ID, 'sh', '-c', 'echo "notes kept across the move" > notes.txt'])).code).toBe(0);
  uuid = (await leader.hget(keys.moduleUuid(), ID)) ?? '';
  expect(uuid).toMatch(/^[0-9a-f-]{36}$/);
}, 900_000);

test('spec.node: 2 moves it: served on node 2 with its data, configuration and MODULE_UUID; node 1 clean; downtime reported', async () => {
  expect((await inNode(['ns8ctl', 'diff', '-f', '/root/manifests'])).code).toBe(0); // in sync before the edit
  await writeManifest(2);
  const moved = await eventually('cluster/module_node says node 2 and the move record is gone', async () => {
    const node = await leader.hget(keys.moduleNode(), ID);
    const pending = await leader.hexists('ns8ctl/moves', ID);
    return node === '2' && pending === 0 ? true : undefined;
  }, { timeoutMs: 900_000, everyMs: 3000, explain: journals });
  expect(moved).toBe(true);
  await served(inNode2, 'Hello before the move', 300_000);
  expect((await inNode2(['cat', `/home/${ID}/.config/state/notes.txt`])).out).toBe('notes kept across the move\n');
  expect((await inNode2(['stat', '-c', '%U', `/home/${ID}/.config/state/notes.txt`])).out.trim()).toBe(ID);
  expect(await leader.hget(keys.moduleUuid(), ID)).toBe(uuid);
  expect(await leader.hget(keys.moduleEnvironment(ID), 'MODULE_UUID')).toBe(uuid);
  expect(await leader.hget(keys.moduleEnvironment(ID), 'NODE_ID')).toBe('2');
  // Node 1 keeps nothing of it: no user, home or ports; no receiver or password left.
  expect((await inNode(['id', ID])).code).not.toBe(0);
  expect((await inNode(['test', '-e', `/home/${ID}`])).code).not.toBe(0);
  expect(Object.keys(await leader.hgetall(keys.nodePorts(1))).filter((k) => k.startsWith(`${ID}/`))).toEqual([]);
  expect(await leader.hexists('ns8ctl/secret/move', ID)).toBe(0);
  expect((await inNode2(['test', '-e', `/run/ns8ctl/transfer/${ID}`])).code).not.toBe(0);
  const events = await inNode(['ns8ctl', 'events', '-o', 'json']);
  expect(events.out).toMatch(/module-moved/);
  expect(events.out).toMatch(/moved from node 1 to node 2; services were down [0-9.]+ s/);
}, 1_200_000);

test('moved back to node 1 while node 1\'s agent is killed -9 with its receiver running: the move completes and nothing is left behind', async () => {
  // The source (node 2) passes only every 30 s: the receiver on node 1 runs for a while before it sends.
  await inNode2(['systemctl', 'stop', 'ns8ctl-node-agent']);
  expect((await inNode2(['systemd-run', '--unit=ns8ctl-node-agent-slow', '--collect', '/usr/local/bin/ns8ctl', 'node-agent', '--node', '2', '--resync', '30'])).code).toBe(0);
  await writeManifest(1);
  await eventually('node 1 receives (its receiver runs)', async () => {
    const mv = JSON.parse((await leader.hget('ns8ctl/moves', ID)) ?? '{}') as { state?: string };
    return mv.state === 'receiving' ? true : undefined;
  }, { timeoutMs: 300_000, everyMs: 200, explain: journals });
  // kill -9 of the whole unit: the agent and the receiver it started.
  expect((await inNode(['systemctl', 'kill', '-s', 'KILL', 'ns8ctl-run'])).code).toBe(0);
  await eventually('ns8ctl run on node 1 is gone', async () => ((await inNode(['systemctl', 'is-active', 'ns8ctl-run'])).out.trim() !== 'active' ? true : undefined), { timeoutMs: 60_000 });
  expect((await inNode(['systemd-run', '--unit=ns8ctl-run-again', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '5s'])).code).toBe(0);
  await eventually('cluster/module_node says node 1 again and the move record is gone', async () => {
    const node = await leader.hget(keys.moduleNode(), ID);
    return node === '1' && (await leader.hexists('ns8ctl/moves', ID)) === 0 ? true : undefined;
  }, { timeoutMs: 600_000, everyMs: 3000, explain: journals });
  await served(inNode, 'Hello before the move', 300_000);
  expect((await inNode(['cat', `/home/${ID}/.config/state/notes.txt`])).out).toBe('notes kept across the move\n');
  // Nothing left: no receiver process or run dir on node 1, no copy on node 2, no password.
  expect((await inNode(['sh', '-c', 'pgrep -c -f "[r]sync --daemon" || true'])).out.trim()).toBe('0');
  expect((await inNode(['test', '-e', `/run/ns8ctl/transfer/${ID}`])).code).not.toBe(0);
  expect((await inNode2(['id', ID])).code).not.toBe(0);
  expect((await inNode2(['test', '-e', `/home/${ID}`])).code).not.toBe(0);
  expect(Object.keys(await leader.hgetall(keys.nodePorts(2))).filter((k) => k.startsWith(`${ID}/`))).toEqual([]);
  expect(await leader.hexists('ns8ctl/secret/move', ID)).toBe(0);
}, 1_200_000);

test('moved to node 2 again while node 1\'s agent is killed -9 in the middle of its live pass: node 1 serves meanwhile, the move completes after a restart', async () => {
  // Enough data that the live pass lasts: the agent is killed while its rsync sender runs.
  expect((await inNode(['runagent', '-m', ID, 'sh', '-c', 'head -c 200000000 /dev/urandom > bulk.bin'])).code).toBe(0);
  // A watcher on node 1 (bounded: 3000 x 0.1 s) kills the whole ns8ctl run unit, agent and sender, once the sender runs
  // ("[r]sync" so the pattern does not match the watcher's own command line).
  const watch = `for i in $(seq 3000); do if pgrep -f "[r]sync://${ID}@" >/dev/null; then systemctl kill -s KILL ns8ctl-run-again; echo killed; exit 0; fi; sleep 0.1; done; exit 1`;
  expect((await inNode(['systemd-run', '--unit=ns8ctl-kill-sender', '--collect', '--remain-after-exit', 'sh', '-c', watch])).code).toBe(0);
  await writeManifest(2);
  await eventually('the watcher killed ns8ctl run during the send', async () => ((await inNode(['systemctl', 'show', '-p', 'SubState', '-p', 'ExecMainStatus', '--value', 'ns8ctl-kill-sender'])).out.trim().split('\n').sort().join(' ') === '0 exited' && (await inNode(['systemctl', 'is-active', 'ns8ctl-run-again'])).out.trim() !== 'active' ? true : undefined), { timeoutMs: 600_000, everyMs: 1000, explain: journals });
  // Killed during the live pass: the services were never stopped, the instance still serves here.
  expect(JSON.parse((await leader.hget('ns8ctl/moves', ID)) ?? '{}')).toMatchObject({ state: 'receiving', from: 1, to: 2 });
  await served(inNode, 'Hello before the move', 60_000);
  expect((await inNode(['systemd-run', '--unit=ns8ctl-run-third', '--collect', '/usr/local/bin/ns8ctl', 'run', '-f', '/root/manifests', '--node', '1', '--no-http', '--agent-resync', '5s', '--resync', '5s'])).code).toBe(0);
  await eventually('cluster/module_node says node 2 and the move record is gone', async () => {
    const node = await leader.hget(keys.moduleNode(), ID);
    return node === '2' && (await leader.hexists('ns8ctl/moves', ID)) === 0 ? true : undefined;
  }, { timeoutMs: 600_000, everyMs: 3000, explain: journals });
  await served(inNode2, 'Hello before the move', 300_000);
  expect((await inNode2(['cat', `/home/${ID}/.config/state/notes.txt`])).out).toBe('notes kept across the move\n');
  expect((await inNode2(['stat', '-c', '%s', `/home/${ID}/.config/state/bulk.bin`])).out.trim()).toBe('200000000');
  // Nothing left on node 1: no sender, user, home or ports; no receiver on node 2; no password.
  expect((await inNode(['sh', '-c', `pgrep -c -f "[r]sync://${ID}@" || true`])).out.trim()).toBe('0');
  expect((await inNode(['id', ID])).code).not.toBe(0);
  expect((await inNode(['test', '-e', `/home/${ID}`])).code).not.toBe(0);
  expect(Object.keys(await leader.hgetall(keys.nodePorts(1))).filter((k) => k.startsWith(`${ID}/`))).toEqual([]);
  expect((await inNode2(['sh', '-c', 'pgrep -c -f "[r]sync --daemon" || true'])).out.trim()).toBe('0');
  expect(await leader.hexists('ns8ctl/secret/move', ID)).toBe(0);
}, 1_500_000);
