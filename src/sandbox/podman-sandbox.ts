/**
 * The Podman side of a sandbox: the network, node and registry containers, and finding them again
 * by label. Argument builders are pure; everything else runs through the CommandRunner.
 */
import { Ns8ctlError } from '../errors.js';
import type { SandboxDeps } from './deps.js';
import { LABELS, NODE_APP_DIR, NODE_CONFIG_DIR, NODE_NODE_BINARY, REGISTRY_PORT, networkName, nodeContainer, nodeHostname, registryContainer } from './naming.js';

/** One container of a sandbox, as `podman ps` reports it. */
export interface SandboxContainer {
  name: string;
  id: string;
  sandbox: string;
  role: 'node' | 'registry';
  /** Node id (nodes only). */
  nodeId?: number;
  /** Address on the sandbox network. */
  address: string;
  /** `running`, `exited`, `created`, ... */
  state: string;
}

/** What `podman run` needs to boot one node. */
export interface NodeRunSpec {
  sandbox: string;
  nodeId: number;
  address: string;
  leaderAddress: string;
  rootfs: string;
  configDir: string;
  containersDir: string;
  homeDir: string;
  registriesConf: string;
  projectRoot: string;
  nodeBinary: string;
}

const ADDRESS_LABEL = 'org.ns8ctl.sandbox.address';

/**
 * argv of `podman run` for a node: privileged, systemd as PID 1 (clean shutdown on SIGRTMIN+3), the
 * cached root filesystem as a private overlay (`:O`), a fixed address, `cluster-leader` in
 * /etc/hosts (NS8's name for the leader), per-node config read-only at /etc/ns8ctl, nested
 * container storage and homes on disk (not on the overlay), and the project plus the node binary
 * read-only at /opt/ns8ctl. The MAC address is fixed too (`nodeMac`): with a new one at each
 * `podman start`, the host kept the old one in its neighbour cache and could not reach a
 * restarted node (its Redis included) for about 40 s. No task limit, as on a real node.
 */
export function nodeRunArgs(s: NodeRunSpec): string[] {
  return [
    'podman', 'run', '-d',
    '--name', nodeContainer(s.sandbox, s.nodeId),
    '--hostname', nodeHostname(s.nodeId),
    '--network', networkName(s.sandbox),
    '--ip', s.address,
    '--mac-address', nodeMac(s.address),
    '--add-host', `cluster-leader:${s.leaderAddress}`,
    '--privileged',
    '--systemd=always',
    // A node is a whole machine: podman's default cap of 2048 tasks per container (threads
    // included) was reached at about 45 instances (each a module agent, podman, conmon and a user
    // manager), and every spawn then failed with EAGAIN.
    '--pids-limit', '-1',
    '--device', '/dev/net/tun',
    '--stop-signal=SIGRTMIN+3',
    '--stop-timeout', '30',
    '--label', `${LABELS.sandbox}=${s.sandbox}`,
    '--label', `${LABELS.role}=node`,
    '--label', `${LABELS.nodeId}=${s.nodeId}`,
    '--label', `${ADDRESS_LABEL}=${s.address}`,
    '-v', `${s.configDir}:${NODE_CONFIG_DIR}:ro`,
    '-v', `${s.registriesConf}:/etc/containers/registries.conf.d/ns8ctl-sandbox.conf:ro`,
    '-v', `${s.containersDir}:/var/lib/containers`,
    '-v', `${s.homeDir}:/home`,
    '-v', `${s.projectRoot}:${NODE_APP_DIR}:ro`,
    '-v', `${s.nodeBinary}:${NODE_NODE_BINARY}:ro`,
    '--rootfs', `${s.rootfs}:O`,
    '/lib/systemd/systemd',
  ];
}

/** Pure: a locally administered, unicast MAC address derived from a node's IPv4 address (`02:00:` + its 4 bytes). */
export function nodeMac(address: string): string {
  const bytes = address.split('.').map((b) => Number(b).toString(16).padStart(2, '0'));
  return ['02', '00', ...bytes].join(':');
}

/** argv of `podman run` for the registry: Debian's docker-registry from the node root filesystem. */
export function registryRunArgs(s: { sandbox: string; address: string; rootfs: string; configFile: string; dataDir: string }): string[] {
  return [
    'podman', 'run', '-d',
    '--name', registryContainer(s.sandbox),
    '--network', networkName(s.sandbox),
    '--ip', s.address,
    '--stop-timeout', '5',
    '--label', `${LABELS.sandbox}=${s.sandbox}`,
    '--label', `${LABELS.role}=registry`,
    '--label', `${ADDRESS_LABEL}=${s.address}:${REGISTRY_PORT}`,
    '-v', `${s.configFile}:/etc/docker/registry/config.yml:ro`,
    '-v', `${s.dataDir}:/var/lib/docker-registry`,
    '--rootfs', `${s.rootfs}:O`,
    '/usr/bin/docker-registry', 'serve', '/etc/docker/registry/config.yml',
  ];
}

interface PsEntry {
  Id: string;
  Names: string[];
  State: string;
  Labels: Record<string, string> | null;
}

/** Pure: turns `podman ps -a --format json` output into sandbox containers (others are ignored). */
export function parsePs(json: string): SandboxContainer[] {
  const entries = (JSON.parse(json || '[]') as PsEntry[] | null) ?? [];
  const out: SandboxContainer[] = [];
  for (const e of entries) {
    const l = e.Labels ?? {};
    const sandbox = l[LABELS.sandbox];
    const role = l[LABELS.role];
    if (!sandbox || (role !== 'node' && role !== 'registry')) continue;
    const c: SandboxContainer = { name: e.Names[0] ?? e.Id, id: e.Id, sandbox, role, address: l[ADDRESS_LABEL] ?? '', state: e.State };
    if (role === 'node') c.nodeId = Number(l[LABELS.nodeId]);
    out.push(c);
  }
  return out.sort((a, b) => a.sandbox.localeCompare(b.sandbox) || (a.role === b.role ? (a.nodeId ?? 0) - (b.nodeId ?? 0) : a.role === 'node' ? -1 : 1));
}

/** Every container of one sandbox (or of all sandboxes), nodes first by id, then the registry. */
export async function listContainers(deps: Pick<SandboxDeps, 'runner'>, sandbox?: string): Promise<SandboxContainer[]> {
  const filter = sandbox ? `label=${LABELS.sandbox}=${sandbox}` : `label=${LABELS.sandbox}`;
  const res = await deps.runner.run(['podman', 'ps', '-a', '--filter', filter, '--format', 'json'], { purpose: 'sandbox: list containers' });
  return parsePs(res.stdout);
}

/** Creates the sandbox network (or reuses it) and returns its IPv4 /24 subnet. */
export async function ensureNetwork(deps: Pick<SandboxDeps, 'runner'>, sandbox: string): Promise<string> {
  const name = networkName(sandbox);
  const exists = await deps.runner.run(['podman', 'network', 'exists', name], { allowFailure: true });
  if (exists.exitCode !== 0) {
    await deps.runner.run(['podman', 'network', 'create', '--label', `${LABELS.sandbox}=${sandbox}`, name], { purpose: `sandbox ${sandbox}: create network ${name}`, mutating: true });
  }
  return networkSubnet(deps, sandbox);
}

/** The IPv4 subnet of the sandbox network (`10.89.1.0/24`). */
export async function networkSubnet(deps: Pick<SandboxDeps, 'runner'>, sandbox: string): Promise<string> {
  const name = networkName(sandbox);
  const res = await deps.runner.run(['podman', 'network', 'inspect', name, '--format', 'json'], { purpose: `sandbox ${sandbox}: inspect network ${name}` });
  const nets = JSON.parse(res.stdout) as { subnets?: { subnet: string }[] }[];
  const subnet = nets[0]?.subnets?.map((s) => s.subnet).find((s) => /^\d+\.\d+\.\d+\.\d+\/\d+$/.test(s));
  if (!subnet) throw new Ns8ctlError('sandbox_network_invalid', `podman network ${name} has no IPv4 subnet; delete it (podman network rm ${name}) and create the sandbox again`);
  return subnet;
}

/**
 * Waits until systemd inside the node finished booting (`running`, or `degraded` with the failed
 * units named on stderr). Fails with `sandbox_node_boot_failed` after `timeoutMs`, including the
 * container's last log lines and what to check.
 */
export async function waitForSystemd(deps: Pick<SandboxDeps, 'runner' | 'stderr' | 'now' | 'sleep'>, container: string, timeoutMs = 120_000): Promise<void> {
  const deadline = deps.now() + timeoutMs;
  let last = '';
  while (deps.now() < deadline) {
    const res = await deps.runner.run(['podman', 'exec', container, 'systemctl', 'is-system-running', '--wait'], { allowFailure: true, timeoutMs: Math.max(1000, deadline - deps.now()) });
    last = (res.stdout + res.stderr).trim();
    if (/^running/m.test(res.stdout)) return;
    if (/^degraded/m.test(res.stdout)) {
      const failed = await deps.runner.run(['podman', 'exec', container, 'systemctl', '--failed', '--no-legend', '--plain'], { allowFailure: true });
      deps.stderr(`sandbox: ${container} booted degraded; failed units: ${failed.stdout.trim().split('\n').map((l) => l.split(/\s+/)[0]).join(', ') || '?'}\n`);
      return;
    }
    const state = await deps.runner.run(['podman', 'inspect', container, '--format', '{{.State.Status}}'], { allowFailure: true });
    if (state.stdout.trim() !== 'running') break;
    await deps.sleep(500);
  }
  const logs = await deps.runner.run(['podman', 'logs', '--tail', '15', container], { allowFailure: true });
  throw new Ns8ctlError(
    'sandbox_node_boot_failed',
    `sandbox node ${container} did not finish booting systemd (last answer: ${last || 'none'}). Its last log lines:\n${(logs.stdout + logs.stderr).trim()}\n` +
      `The host may not be able to run systemd containers: see the host: lines above and docs/sandbox.md ("Host adjustments").`,
  );
}
