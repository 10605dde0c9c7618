/**
 * NS8's agent runtime in a sandbox node (real systemd, a real rootless instance user): Python
 * actions find `agent` through agent.env's PATH, reach the leader's Redis through the
 * `cluster-leader` name and the local replica, and `runagent` works from a root shell, from the
 * instance user and from the `ExecStartPre=` of the instance's own user unit, as NS8 modules'
 * units call it.
 */
import { createSandbox } from '../../src/sandbox/create.js';
import { deleteSandbox } from '../../src/sandbox/delete.js';
import { sandboxNode } from '../support/sandbox-node.js';

const NAME = 'ns8rt';
const ID = 'probe1';
const { deps, inNode } = sandboxNode(NAME);

/** Runs a bash script in node 1; fails the test with its output unless it exits 0. */
async function sh(script: string): Promise<string> {
  const r = await inNode(['bash', '-c', script]);
  if (r.code !== 0) throw new Error(`exit ${r.code}\n${r.out}\n${r.err}`);
  return r.out;
}

beforeAll(async () => {
  await deleteSandbox({ name: NAME }, deps);
  await createSandbox({ name: NAME, nodes: 1 }, deps);
  // A rootless instance as NS8's add-module leaves it: user, linger, state/agent.env, state/environment,
  // and a module command in <install dir>/bin (as kickstart's discover-smarthost).
  await sh(`set -e
useradd -m -s /sbin/nologin ${ID}
loginctl enable-linger ${ID}
c=/home/${ID}/.config
mkdir -p $c/state $c/bin $c/systemd/user
printf 'REDIS_USER=module/${ID}\\nREDIS_PASSWORD=unused\\nPATH=%s/bin:/usr/local/agent/pyenv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/usr/local/agent/bin\\nPYTHONPATH=%s/pypkg\\n' $c $c > $c/state/agent.env
printf 'MODULE_ID=${ID}\\nNODE_ID=1\\n' > $c/state/environment
cat > $c/bin/discover <<'EOF'
#!/usr/bin/env python3
import agent, os, sys
print("discover", os.environ["MODULE_ID"], os.environ["AGENT_ID"], agent.redis_connect().get("node/1/ui_name"), os.getcwd(), sys.executable)
EOF
chmod +x $c/bin/discover
printf '[Service]\\nType=oneshot\\nEnvironmentFile=%%E/state/environment\\nWorkingDirectory=%%E/state\\nExecStartPre=runagent discover\\nExecStart=/bin/sh -c "runagent discover > discovered.txt"\\n' > $c/systemd/user/probe.service
chown -R ${ID}: $c
for i in $(seq 1 60); do [ -d /run/user/$(id -u ${ID}) ] && break; sleep 0.5; done`);
}, 900_000);

afterAll(async () => {
  if (!process.env.NS8CTL_KEEP_SANDBOX) await deleteSandbox({ name: NAME }, deps).catch(() => undefined);
}, 120_000);

describe("NS8's agent runtime in a sandbox node", () => {
  test("python3 on agent.env's PATH is the NS8 pyenv and imports agent, which reaches the leader and the local replica", async () => {
    const out = await sh(`set -a; . /etc/nethserver/agent.env; set +a
command -v python3
python3 -c 'import agent, agent.tasks, agent.ldapproxy; print(agent.__file__); print(agent.redis_connect().get("node/1/ui_name")); print(agent.redis_connect(use_replica=True).ping())'`);
    expect(out.trim().split('\n')).toEqual(['/usr/local/agent/pyenv/bin/python3', '/usr/local/agent/pypkg/agent/__init__.py', 'node1', 'True']);
  }, 120_000);

  test('runagent -m runs a module command as the instance user in its state dir; the user itself needs no -m; root must name one', async () => {
    const expected = `discover ${ID} module/${ID} node1 /home/${ID}/.config/state /usr/local/agent/pyenv/bin/python3`;
    expect((await sh(`runagent -m ${ID} discover`)).trim()).toBe(expected);
    expect((await sh(`runagent -m ${ID} sh -c 'echo $(id -un) $XDG_RUNTIME_DIR'`)).trim()).toMatch(new RegExp(`^${ID} /run/user/\\d+$`));
    expect((await sh(`runuser -u ${ID} -- runagent discover`)).trim()).toBe(expected);
    const bare = await inNode(['runagent', 'true']);
    expect(bare.code).toBe(2);
    expect(bare.err).toMatch(/as root, name the instance/);
  }, 120_000);

  test("runagent works in the ExecStartPre= and ExecStart= of the instance's user unit", async () => {
    await sh(`systemctl --user -M ${ID}@ daemon-reload && systemctl --user -M ${ID}@ start probe.service`);
    expect((await sh(`cat /home/${ID}/.config/state/discovered.txt`)).trim()).toBe(`discover ${ID} module/${ID} node1 /home/${ID}/.config/state /usr/local/agent/pyenv/bin/python3`);
  }, 120_000);
});
