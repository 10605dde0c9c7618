/**
 * ns8ctl's NS8 `agent` Python package, run by real python3 (Debian's, with python3-redis) against
 * a real redis-server with NS8's module ACL, inside real module agents (ns8ctl's) and through the
 * real task relay: what an NS8 module's actions see.
 */
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { runAgent, type AgentHandle } from '../../src/agent/agent.js';
import { applyGrants } from '../../src/agent/authorizations.js';
import { installNs8Runtime, ns8RuntimeLayout, renderCoreEnv, renderGlobalAgentEnv } from '../../src/agent/ns8-runtime.js';
import { runTask } from '../../src/agent/task-client.js';
import { startTaskRelay, type TaskRelay } from '../../src/agent/task-relay.js';
import { ProcessRunner } from '../../src/host/runner.js';
import { applyModuleAcl, generatePassword } from '../../src/node-agent/redis-acl.js';
import { useNs8AclRedis } from '../support/ns8-acl-redis.js';

const RUNTIME = path.resolve('runtime/ns8');
const PYTHON = '/usr/bin/python3';
const acl = useNs8AclRedis();
const pw = { web1: generatePassword(), bravo1: generatePassword() };

let root: string;
let nodeRoot: string;
let agents: AgentHandle[] = [];
let relay: TaskRelay | undefined;

/** PATH as NS8's agent.env orders it, under the test's node root: pyenv first, helpers last. */
function agentPath(): string {
  return `${nodeRoot}/usr/local/agent/pyenv/bin:/usr/local/bin:/usr/bin:/bin:${nodeRoot}/usr/local/agent/bin`;
}

/** The environment an instance's steps get from agent.env + state/agent.env + state/environment. */
function instanceEnv(id: keyof typeof pw, extra: Record<string, string> = {}): Record<string, string> {
  return {
    PATH: agentPath(),
    HOME: root,
    LANG: 'C.UTF-8',
    PYTHONDONTWRITEBYTECODE: '1',
    REDIS_ADDRESS: `127.0.0.1:${acl.server.port}`,
    REDIS_REPLICA_ADDRESS: `127.0.0.1:${acl.server.port}`,
    REDIS_USER: `module/${id}`,
    REDIS_PASSWORD: pw[id],
    MODULE_ID: id,
    NODE_ID: '1',
    AGENT_ID: `module/${id}`,
    AGENT_STATE_DIR: path.join(root, id, 'state'),
    AGENT_INSTALL_DIR: path.join(root, id),
    ...extra,
  };
}

/** Runs a Python snippet as an action step would run it (python3 found through PATH). */
async function python(code: string, env: Record<string, string>, input = ''): Promise<{ code: number; out: string; err: string }> {
  const r = await execa('python3', ['-c', code], { env, extendEnv: false, input, reject: false, cwd: env['AGENT_STATE_DIR'] ?? root, timeout: 60_000 });
  return { code: r.exitCode ?? -1, out: r.stdout, err: r.stderr };
}

function step(id: string, action: string, name: string, body: string): void {
  const dir = path.join(root, id, 'actions', action);
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, name), body);
  chmodSync(path.join(dir, name), 0o755);
}

async function startInstance(id: keyof typeof pw): Promise<AgentHandle> {
  const installDir = path.join(root, id);
  const agent = runAgent(
    { agentId: `module/${id}`, installDir, stateDir: path.join(installDir, 'state'), actionsDirs: [path.join(installDir, 'actions')], pollSeconds: 1, env: instanceEnv(id), log: () => undefined },
    { redis: acl.connect(`module/${id}`, pw[id], `module/${id}`), runner: new ProcessRunner() },
  );
  await agent.start();
  agents.push(agent);
  return agent;
}

function readState(id: string): string {
  return readFileSync(path.join(root, id, 'state', 'environment'), 'utf8');
}

beforeAll(async () => {
  const version = (await execa(PYTHON, ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'])).stdout.trim();
  root = mkdtempSync(path.join(tmpdir(), 'ns8-agent-python-'));
  nodeRoot = path.join(root, 'node');
  await installNs8Runtime(nodeRoot, ns8RuntimeLayout({ runtimeDir: RUNTIME, python: PYTHON, pythonVersion: version, installRoot: nodeRoot }));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});
beforeEach(async () => {
  await acl.admin.flushall();
  for (const id of Object.keys(pw) as (keyof typeof pw)[]) {
    rmSync(path.join(root, id), { recursive: true, force: true });
    mkdirSync(path.join(root, id, 'state'), { recursive: true });
    writeFileSync(path.join(root, id, 'state', 'environment'), `MODULE_ID=${id}\nOLD=1\n`);
    await applyModuleAcl(acl.admin, id, pw[id]);
  }
  await acl.admin.hset('cluster/module_node', 'web1', '1', 'bravo1', '1');
});
afterEach(async () => {
  await relay?.stop();
  relay = undefined;
  for (const a of agents) await a.stop();
  agents = [];
});

describe('the NS8 runtime layout', () => {
  it("makes `import agent` work for python3 found through agent.env's PATH, with no PYTHONPATH", async () => {
    const r = await python('import agent, agent.tasks, agent.ldapproxy, redis; print(agent.__file__)', instanceEnv('web1'));
    expect(r).toMatchObject({ code: 0 });
    // Found through the pyenv's .pth and the /usr/local/agent/pypkg link into runtime/ns8.
    expect(r.out).toBe(path.join(nodeRoot, 'usr/local/agent/pypkg/agent/__init__.py'));
    expect(realpathSync(r.out)).toBe(path.join(RUNTIME, 'pypkg', 'agent', '__init__.py'));
    expect(readlinkSync(path.join(nodeRoot, 'usr/local/bin/runagent'))).toBe(path.join(RUNTIME, 'bin', 'runagent'));
  });

  it("writes NS8's agent.env and a core.env whose CORE_IMAGE tag is the core version", () => {
    expect(readFileSync(path.join(nodeRoot, 'etc/nethserver/agent.env'), 'utf8')).toBe(renderGlobalAgentEnv());
    expect(renderGlobalAgentEnv()).toContain('PATH=/usr/local/agent/pyenv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/usr/local/agent/bin\n');
    expect(renderGlobalAgentEnv()).toContain('REDIS_ADDRESS=cluster-leader:6379\n');
    expect(renderCoreEnv({ coreVersion: '3.9.0' })).toMatch(/^CORE_IMAGE=ghcr\.io\/nethserver\/core:3\.9\.0\n/);
    expect(() => renderCoreEnv({ coreVersion: '1\nX=2' })).toThrow(/core version/);
  });
});

describe('agent environment functions in action steps', () => {
  it('set_env / unset_env in a Python step and set-env on AGENT_COMFD in a bash step reach later steps, the state file and Redis', async () => {
    step('web1', 'configure-module', '10python', `#!/usr/bin/env python3
import json, sys, agent
request = json.load(sys.stdin)
agent.set_env("GREETING", request["greeting"])
agent.mset_env({"PORT_A": 8080, "PORT_B": "8081"})
agent.unset_env("OLD")
agent.set_progress(40)
`);
    step('web1', 'configure-module', '20bash', `#!/bin/bash
echo "set-env FROM_BASH \\"$GREETING and more\\"" >&$AGENT_COMFD
`);
    step('web1', 'configure-module', '30check', `#!/usr/bin/env python3
import json, os
print(json.dumps({k: os.environ.get(k) for k in ("GREETING", "FROM_BASH", "PORT_A", "OLD")}))
`);
    await startInstance('web1');
    const r = await runTask(acl.admin, 'module/web1', 'configure-module', { data: { greeting: 'hi there' }, timeoutMs: 60_000 });
    expect(r).toMatchObject({ exitCode: 0, status: 'completed' });
    expect(JSON.parse(r.output)).toEqual({ GREETING: 'hi there', FROM_BASH: 'hi there and more', PORT_A: '8080', OLD: null });
    expect(readState('web1')).toBe('FROM_BASH=hi there and more\nGREETING=hi there\nMODULE_ID=web1\nPORT_A=8080\nPORT_B=8081\n');
    expect(await acl.admin.hgetall('module/web1/environment')).toEqual({ FROM_BASH: 'hi there and more', GREETING: 'hi there', MODULE_ID: 'web1', PORT_A: '8080', PORT_B: '8081' });
  });

  it('refuses a value with a newline and leaves the state file as it was', async () => {
    const r = await python('import agent; agent.set_env("BAD", "a\\nINJECTED=1")', instanceEnv('web1'));
    expect(r.code).not.toBe(0);
    expect(r.err).toMatch(/ValueError: .*value of BAD contains a newline/);
    expect(readState('web1')).toBe('MODULE_ID=web1\nOLD=1\n');
  });

  it('keeps every update when many processes set variables at once (the lock ns8ctl agents take too)', async () => {
    const runs = Array.from({ length: 8 }, (_, i) => python(`import agent\nfor j in range(10): agent.set_env("V${i}_%d" % j, "x")`, instanceEnv('web1')));
    expect((await Promise.all(runs)).map((r) => r.code)).toEqual(Array(8).fill(0));
    expect(readState('web1').split('\n').filter((l) => l.startsWith('V')).length).toBe(80);
  });

  it('read_envfile skips comments and lines without "=", write_envfile sorts, safe_open keeps the old file when the block fails', async () => {
    const f = path.join(root, 'web1', 'state', 'x.env');
    writeFileSync(f, '# comment\nB=2\nnot a line\nA=x=y\n');
    const r = await python(
      `import agent, json
env = agent.read_envfile(${JSON.stringify(f)})
agent.write_envfile(${JSON.stringify(f)}, {"Z": 1, **env})
try:
    with agent.safe_open(${JSON.stringify(f)}) as fh:
        fh.write("half")
        raise RuntimeError("boom")
except RuntimeError:
    pass
print(json.dumps(env))`,
      instanceEnv('web1'),
    );
    expect(r).toMatchObject({ code: 0, out: '{"B": "2", "A": "x=y"}' });
    expect(r.err).toMatch(/x\.env:3 has no '='/);
    expect(readFileSync(f, 'utf8')).toBe('A=x=y\nB=2\nZ=1\n');
  });
});

describe('agent commands and helpers', () => {
  it('set_status("validation-failed") in a Python step ends the task as validation-failed (exit code 10)', async () => {
    step('web1', 'configure-module', '10validate', `#!/usr/bin/env python3
import agent, json, sys
agent.set_status("validation-failed")
json.dump([{"field": "host", "parameter": "host", "value": "", "error": "host_empty"}], fp=sys.stdout)
`);
    step('web1', 'configure-module', '20never', '#!/bin/sh\necho reached >&2\nexit 5\n');
    await startInstance('web1');
    const r = await runTask(acl.admin, 'module/web1', 'configure-module', { data: {}, timeoutMs: 60_000 });
    expect(r).toMatchObject({ exitCode: 10, status: 'validation-failed' });
    expect(JSON.parse(r.output)).toEqual([{ field: 'host', parameter: 'host', value: '', error: 'host_empty' }]);
    expect(r.error).not.toContain('reached');
  });

  it('run_helper gives the helper its own AGENT_COMFD and maps its set-progress through get_progress_callback', async () => {
    const helper = path.join(root, 'helper.sh');
    writeFileSync(helper, '#!/bin/sh\necho "set-progress 50" >&$AGENT_COMFD\necho "to stdout"\nexit 3\n');
    chmodSync(helper, 0o755);
    // Without AGENT_COMFD (a script run by hand) agent commands go to stderr, as in NS8.
    const r = await python(`import agent\nr = agent.run_helper(${JSON.stringify(helper)}, progress_callback=agent.get_progress_callback(10, 90))\nprint(r.returncode)`, instanceEnv('web1'));
    expect(r).toMatchObject({ code: 0, out: '3' });
    expect(r.err.split('\n')).toEqual(expect.arrayContaining([`<6>${helper}`, 'to stdout', 'set-progress 50', 'set-progress 90']));
  });

  it('resolve_agent_id follows default instances; get_image_name_from_url and assert_exp behave as in NS8', async () => {
    await acl.admin.set('node/1/default_instance/traefik', 'traefik3');
    await acl.admin.set('cluster/default_instance/loki', 'loki1');
    const r = await python(
      `import agent, json, warnings
warnings.simplefilter("ignore")
print(json.dumps([agent.resolve_agent_id(s) for s in ["traefik@node", "loki@cluster", "node", "self", "2", "cluster", "web1", "nothing@node"]] +
  [agent.get_image_name_from_url(u) for u in ["ghcr.io/nethserver/samba:v1.0.0", "ghcr.io/nethserver/dokuwiki@sha256:ab12"]]))
agent.assert_exp(1 == 2, "one is not two")`,
      instanceEnv('web1'),
    );
    expect(r.code).toBe(2);
    expect(JSON.parse(r.out)).toEqual(['module/traefik3', 'module/loki1', 'node/1', 'module/web1', 'node/2', 'cluster', 'module/web1', null, 'samba', 'dokuwiki']);
    expect(r.err).toMatch(/^one is not two\n/);
  });

  it('redis_connect: read-only by default, the instance user when privileged; redis-exec / redis-get / redis-hgetall use them', async () => {
    const env = instanceEnv('web1');
    const r = await python(
      `import agent, redis
agent.redis_connect(privileged=True).hset("module/web1/data", mapping={"a": "1", "b": "2"})
try:
    agent.redis_connect().set("module/web1/x", "1")
except redis.exceptions.NoPermissionError:
    print("default user may not write")
try:
    agent.redis_connect(privileged=True).set("module/bravo1/x", "1")
except redis.exceptions.NoPermissionError:
    print("instance may not write another instance")`,
      env,
    );
    expect(r).toMatchObject({ code: 0, out: 'default user may not write\ninstance may not write another instance' });
    const run = (argv: string[], input?: string) => execa(argv[0] as string, argv.slice(1), { env, extendEnv: false, reject: false, ...(input ? { input } : {}) });
    expect((await run(['redis-hgetall', 'module/web1/data'])).stdout).toBe('a=1\nb=2');
    expect((await run(['redis-exec', 'SADD', 'module/web1/roles/mailadm', 'get-*'])).stdout).toBe('1');
    expect((await run(['redis-exec'], 'SET module/web1/k "a b"\nGET module/web1/k\n')).stdout).toBe('True\na b');
    expect((await run(['redis-get', 'module/web1/k'])).stdout).toBe('a b');
    const refused = await run(['redis-exec', 'SET', 'cluster/x', '1']);
    expect(refused.exitCode).not.toBe(0);
    expect(refused.stderr).toMatch(/NoPermissionError|NOPERM/);
  });

  it('list_service_providers, get_smarthost_settings, get_bound_domain_list and certificate_event_matches read what NS8 keys say', async () => {
    await acl.admin.hset('module/mail1/srv/tcp/imap', { host: '10.5.4.1', port: '143' });
    await acl.admin.hset('module/mail3/srv/tcp/imap', { host: '10.5.4.3', port: '143' });
    await acl.admin.hset('cluster/module_node', 'mail1', '2', 'mail3', '1');
    await acl.admin.hset('cluster/smarthost', { port: '25', host: 'smtp.example', username: 'u', password: 'p', enabled: '1', encrypt_smtp: 'none', tls_verify: '0' });
    await acl.admin.hset('cluster/module_domains', 'web1', 'ad.example ldap.example');
    const r = await python(
      `import agent, json
rdb = agent.redis_connect()
print(json.dumps([
  [(p["module_id"], p["node"], p["module_seq"]) for p in agent.list_service_providers(rdb, "imap", "tcp")],
  agent.get_smarthost_settings(rdb), agent.get_bound_domain_list(rdb),
  agent.certificate_event_matches({"node_id": 1, "names": ["*.example.org"]}, "www.example.org"),
  agent.certificate_event_matches({"node_id": 2, "names": ["www.example.org"]}, "www.example.org")]))`,
      instanceEnv('web1'),
    );
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual([
      [['mail3', '1', 3], ['mail1', '2', 1]],
      { port: 25, host: 'smtp.example', username: 'u', password: 'p', enabled: true, encrypt_smtp: 'none', tls_verify: false },
      ['ad.example', 'ldap.example'],
      true,
      false,
    ]);
  });

  it('Ldapproxy reads user domains and the local ldapproxy port', async () => {
    await acl.admin.set('node/1/default_instance/ldapproxy', 'ldapproxy1');
    await acl.admin.hset('module/ldapproxy1/data/domain_port', 'ad.example', '20004');
    await acl.admin.hset('module/samba1/srv/tcp/ldap', { domain: 'ad.example', schema: 'ad', base_dn: 'dc=ad,dc=example', bind_dn: 'ldapservice@AD', bind_password: 'pw', tls: 'off', tls_verify: 'off', host: '10.0.0.1', port: '636', node: '1' });
    await acl.admin.hset('cluster/module_domains', 'web1', 'ad.example');
    const r = await python(
      `from agent.ldapproxy import Ldapproxy
import json
lp = Ldapproxy()
print(json.dumps([lp.get_domains_list(), lp.get_domain("ad.example"), lp.get_domain("none"), lp.get_ldap_users_search_filter_clause("ad.example")]))`,
      instanceEnv('web1'),
    );
    expect(r.code).toBe(0);
    const [list, domain, none, clause] = JSON.parse(r.out) as [string[], Record<string, unknown>, null, string];
    expect(list).toEqual(['ad.example']);
    expect(domain).toMatchObject({ host: '127.0.0.1', port: '20004', schema: 'ad', location: 'internal', base_dn: 'dc=ad,dc=example', bind_dn: 'ldapservice@AD' });
    expect(none).toBeNull();
    expect(clause).toBe('(!(|(sAMAccountName=Guest)(sAMAccountName=krbtgt)(sAMAccountName=ldapservice)))');
  });
});

describe('agent.tasks between modules', () => {
  beforeEach(async () => {
    step('bravo1', 'set-route', '10set', '#!/bin/sh\nread -r input\nprintf \'{"routed_for": "%s", "input": %s}\' "$AGENT_TASK_USER" "$input"\n');
    step('web1', 'call-bravo', '10call', `#!/usr/bin/env python3
import agent, agent.tasks, json, sys
r = agent.tasks.run(agent_id=agent.resolve_agent_id("bravo@node"), action="set-route", data={"host": "a.example"})
failed = agent.tasks.runp_brief([{"agent_id": "module/bravo1", "action": "set-route"}, {"agent_id": "module/bravo1", "action": "set-route", "data": {"n": 2}}])
json.dump({"result": r, "failed": failed}, fp=sys.stdout)
`);
    await acl.admin.set('node/1/default_instance/bravo', 'bravo1');
    await acl.admin.sadd('module/bravo1/roles/routeadm', 'set-*');
    await startInstance('bravo1');
    await startInstance('web1');
    relay = startTaskRelay(acl.admin, { blockSeconds: 0.2, refreshMs: 200, pollMs: 200, log: () => undefined });
    await relay.ready;
  });

  it('is refused by the receiving agent (exit code 32) without the authorization', async () => {
    await applyGrants(acl.admin);
    const r = await runTask(acl.admin, 'module/web1', 'call-bravo', { timeoutMs: 60_000 });
    expect(r.exitCode).toBe(0);
    const out = JSON.parse(r.output) as { result: { exit_code: number; error: string; output: unknown }; failed: number };
    expect(out.result.exit_code).toBe(32);
    expect(out.result.error).toMatch(/^module_permission_denied: module\/web1 holds no role on module\/bravo1/);
    expect(out.failed).toBe(2);
    expect(r.error).toMatch(/Task module\/bravo1\/set-route run failed/);
  });

  it('runs on the other module as the calling module with the authorization, output decoded from JSON', async () => {
    await acl.admin.sadd('cluster/authorizations/module/web1', 'bravo@any:routeadm');
    await applyGrants(acl.admin);
    const r = await runTask(acl.admin, 'module/web1', 'call-bravo', { timeoutMs: 60_000 });
    expect(r).toMatchObject({ exitCode: 0 });
    expect(JSON.parse(r.output)).toEqual({ result: { output: { routed_for: 'module/web1', input: { host: 'a.example' } }, error: '', exit_code: 0 }, failed: 0 });
  });
});
