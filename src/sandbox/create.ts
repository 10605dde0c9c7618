/**
 * `ns8ctl sandbox create`: root filesystem (cached), network, registry, N systemd nodes, Redis
 * master on node 1 and read-only replicas elsewhere, node records in Redis.
 */
import { randomBytes } from 'node:crypto';
import { promises as fsp, existsSync } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError, RefusedError } from '../errors.js';
import type { SandboxDeps } from './deps.js';
import { DEFAULT_SANDBOX_NAME, REDIS_PORT, addressPlan, networkName, nodeContainer, parseNodeCount, registryContainer, sandboxPaths, validateSandboxName } from './naming.js';
import { adminRedisUrl, renderNodeAcl, renderRedisConf, renderRegistriesConf, renderSandboxEnv } from './node-config.js';
import { ensureNetwork, listContainers, nodeRunArgs, registryRunArgs, waitForSystemd } from './podman-sandbox.js';
import { adjustHost, requireRoot, requireTool } from './preflight.js';
import { step } from './progress.js';
import { registryAddress, writeNodeRecords, writeRecord, type SandboxRecord } from './record.js';
import { renderRegistryConfig, registryProbeUrl } from './registry-config.js';
import { ensureRootfs } from './rootfs-build.js';
import { removeSandbox } from './delete.js';
import { envCommand, renderEnv } from './env.js';

export interface CreateOptions {
  name?: string;
  nodes?: string | number;
  /** Keep what was made when create fails (for debugging), like kind's --retain. */
  retain?: boolean;
}

/** A created sandbox, as `create` prints it with `-o json`. */
export interface SandboxInfo extends SandboxRecord {
  /** Admin Redis URL of the leader (password included: root-only use). */
  leaderRedisUrl: string;
  /** Seconds: whole create, root filesystem step (0 when cached), boot (network to Redis), per node. */
  timings: { totalS: number; rootfsS: number; bootS: number; nodes: NodeBootTiming[] };
  rootfsBuilt: boolean;
}

/** How long one node took to boot, in seconds (nodes start one after another and boot in parallel). */
export interface NodeBootTiming {
  id: number;
  /** `podman run` of the node. */
  runS: number;
  /** From the end of `podman run` until systemd reported `running` (or `degraded`). */
  systemdS: number;
  /** `runS + systemdS`: from `podman run` to a booted node. */
  bootS: number;
}

/** Waits until `GET /v2/` of the registry answers 200. */
async function waitForRegistry(deps: SandboxDeps, address: string, container: string, timeoutMs = 30_000): Promise<void> {
  const deadline = deps.now() + timeoutMs;
  while (deps.now() < deadline) {
    const ok = await fetch(registryProbeUrl(address), { signal: AbortSignal.timeout(2000) }).then((r) => r.status === 200, () => false);
    if (ok) return;
    await deps.sleep(200);
  }
  const logs = await deps.runner.run(['podman', 'logs', '--tail', '10', container], { allowFailure: true });
  throw new Ns8ctlError('sandbox_registry_failed', `the sandbox registry (${container}) did not answer on http://${address}/v2/ within ${timeoutMs / 1000} s: ${(logs.stdout + logs.stderr).trim()}`);
}

/** Waits until the Redis on `address` answers as admin; returns the client. */
async function connectWithRetry(deps: SandboxDeps, url: string, what: string, timeoutMs = 60_000) {
  const deadline = deps.now() + timeoutMs;
  let lastError: unknown;
  while (deps.now() < deadline) {
    try {
      return await deps.openRedis(url);
    } catch (err) {
      lastError = err;
      await deps.sleep(300);
    }
  }
  throw new Ns8ctlError('sandbox_redis_failed', `${what}: Redis did not answer within ${timeoutMs / 1000} s: ${(lastError as Error | undefined)?.message ?? 'no answer'}`, { cause: lastError });
}

/**
 * Waits until the replica on `address` has a working link to its master and holds `key`
 * (written on the leader): proof that replication works.
 */
export async function waitForReplica(deps: SandboxDeps, address: string, password: string, key: string, timeoutMs = 60_000): Promise<void> {
  const redis = await connectWithRetry(deps, adminRedisUrl(address, password), `replica ${address}`, timeoutMs);
  try {
    const deadline = deps.now() + timeoutMs;
    while (deps.now() < deadline) {
      const info = await redis.info('replication');
      if (/master_link_status:up/.test(info) && (await redis.get(key)) !== null) return;
      await deps.sleep(200);
    }
    throw new Ns8ctlError('sandbox_replica_failed', `the Redis replica on ${address} did not catch up with the leader within ${timeoutMs / 1000} s (key ${key} missing or master link down)`);
  } finally {
    redis.disconnect();
  }
}

/** Creates a sandbox; see the module doc. Throws `sandbox_exists` when one with that name exists. */
export async function createSandbox(opts: CreateOptions, deps: SandboxDeps): Promise<SandboxInfo> {
  const started = deps.now();
  const name = validateSandboxName(opts.name ?? DEFAULT_SANDBOX_NAME);
  const nodes = parseNodeCount(opts.nodes);
  const paths = await checkCreatable(deps, name);
  await adjustHost(deps);
  const rootfsStarted = deps.now();
  const rootfs = await ensureRootfs(deps);
  const rootfsS = rootfs.built ? (deps.now() - rootfsStarted) / 1000 : 0;
  if (!existsSync(path.join(deps.projectRoot, 'dist', 'src', 'cli', 'bin.js'))) {
    deps.stderr(`sandbox: note: ${deps.projectRoot}/dist is not built, so 'ns8ctl' inside the nodes will not run until you run 'npm run build' there\n`);
  }
  try {
    const bootStarted = deps.now();
    const layout = await prepareLayout(deps, name, nodes, paths, rootfs);
    await startRegistry(deps, layout);
    const nodeTimings = await step(deps, `booting nodes: ${nodes} container${nodes > 1 ? 's' : ''} with systemd`, () => bootNodes(deps, layout));
    nodeTimings.sort((a, b) => a.id - b.id);
    await step(deps, 'starting Redis: node 1 master, other nodes read-only replicas, node records', () => startRedis(deps, layout));
    const { subnet, registry, addresses, password, leaderAddress } = layout;
    const rec: SandboxRecord = { name, nodes, network: networkName(name), subnet, registry, addresses, rootfs: rootfs.path, recipeHash: rootfs.hash, createdAt: new Date(deps.now()).toISOString() };
    await writeRecord(deps, rec);
    const totalS = (deps.now() - started) / 1000;
    return { ...rec, leaderRedisUrl: adminRedisUrl(leaderAddress, password), timings: { totalS, rootfsS, bootS: (deps.now() - bootStarted) / 1000, nodes: nodeTimings }, rootfsBuilt: rootfs.built };
  } catch (err) {
    if (!opts.retain) {
      deps.stderr(`sandbox: create failed; removing what was made (pass --retain to keep it)\n`);
      await removeSandbox(deps, name).catch(() => undefined);
    }
    throw err;
  }
}

type SandboxPaths = ReturnType<typeof sandboxPaths>;

/** Everything decided before the containers start: names, paths, network, addresses, the admin password. */
interface SandboxLayout {
  name: string;
  nodes: number;
  paths: SandboxPaths;
  rootfs: Awaited<ReturnType<typeof ensureRootfs>>;
  password: string;
  subnet: string;
  plan: ReturnType<typeof addressPlan>;
  registry: string;
  leaderAddress: string;
  /** Node id -> address. */
  addresses: Record<string, string>;
}

/** Root, podman, and no sandbox of that name yet (containers or record); returns its paths. */
async function checkCreatable(deps: SandboxDeps, name: string): Promise<SandboxPaths> {
  requireRoot(deps, 'create');
  await requireTool(deps, 'podman');
  const existing = await listContainers(deps, name);
  const paths = sandboxPaths(deps.env, name);
  if (existing.length > 0 || existsSync(paths.record)) {
    throw new RefusedError('sandbox_exists', `sandbox "${name}" already exists (${existing.length} container(s)); delete it first (ns8ctl sandbox delete --name ${name}) or pick another --name`);
  }
  return paths;
}

/** Makes the state directory, the admin password and the network; plans the addresses. */
async function prepareLayout(deps: SandboxDeps, name: string, nodes: number, paths: SandboxPaths, rootfs: SandboxLayout['rootfs']): Promise<SandboxLayout> {
  await fsp.mkdir(paths.dir, { recursive: true, mode: 0o700 });
  const password = randomBytes(24).toString('hex');
  await fsp.writeFile(paths.redisPassword, password + '\n', { mode: 0o600 });
  const subnet = await ensureNetwork(deps, name);
  const plan = addressPlan(subnet);
  const addresses: Record<string, string> = {};
  for (let id = 1; id <= nodes; id++) addresses[String(id)] = plan.node(id);
  return { name, nodes, paths, rootfs, password, subnet, plan, registry: registryAddress(plan.registry), leaderAddress: plan.node(1), addresses };
}

async function startRegistry(deps: SandboxDeps, l: SandboxLayout): Promise<void> {
  const { paths } = l;
  await fsp.mkdir(paths.registryData, { recursive: true });
  await fsp.writeFile(paths.registryConfig, renderRegistryConfig('0.0.0.0:5000', '/var/lib/docker-registry'));
  await fsp.writeFile(paths.registriesConf, renderRegistriesConf(l.registry), { mode: 0o644 });
  await deps.runner.run(registryRunArgs({ sandbox: l.name, address: l.plan.registry, rootfs: l.rootfs.path, configFile: paths.registryConfig, dataDir: paths.registryData }), {
    purpose: `sandbox ${l.name}: start registry`,
    mutating: true,
  });
}

/** Starts every node container; each node's systemd wait starts as soon as its container runs, so nodes boot in parallel. */
async function bootNodes(deps: SandboxDeps, l: SandboxLayout): Promise<NodeBootTiming[]> {
  const nodeTimings: NodeBootTiming[] = [];
  const booting: Promise<void>[] = [];
  for (let id = 1; id <= l.nodes; id++) {
    const boot = (await startNode(deps, l, id)).booted.then((t) => void nodeTimings.push(t));
    boot.catch(() => undefined); // awaited below; a later node's failure must not leave it unhandled
    booting.push(boot);
  }
  await Promise.all(booting);
  return nodeTimings;
}

/** Writes node `id`'s configuration and runs its container; `booted` waits for its systemd and gives its timing. */
async function startNode(deps: SandboxDeps, l: SandboxLayout, id: number): Promise<{ booted: Promise<NodeBootTiming> }> {
  const { name, password, registry, leaderAddress } = l;
  const address = l.plan.node(id);
  const np = l.paths.node(id);
  for (const d of [np.config, np.containers, np.home]) await fsp.mkdir(d, { recursive: true });
  const input = { sandbox: name, nodeId: id, leaderAddress, adminPassword: password, registry };
  await fsp.writeFile(path.join(np.config, 'redis.conf'), renderRedisConf(input), { mode: 0o600 });
  await fsp.writeFile(path.join(np.config, 'users.acl'), renderNodeAcl(password), { mode: 0o600 });
  await fsp.writeFile(path.join(np.config, 'admin.password'), password + '\n', { mode: 0o600 });
  await fsp.writeFile(path.join(np.config, 'sandbox.env'), renderSandboxEnv(input), { mode: 0o600 });
  await fsp.writeFile(path.join(np.config, 'node-id'), `${id}\n`, { mode: 0o644 });
  const runStarted = deps.now();
  const run = await deps.runner.run(
    nodeRunArgs({ sandbox: name, nodeId: id, address, leaderAddress, rootfs: l.rootfs.path, configDir: np.config, containersDir: np.containers, homeDir: np.home, registriesConf: l.paths.registriesConf, projectRoot: deps.projectRoot, nodeBinary: deps.nodeBinary }),
    { purpose: `sandbox ${name}: boot node ${id}`, mutating: true, allowFailure: true },
  );
  if (run.exitCode !== 0) {
    throw new Ns8ctlError('sandbox_host_unsupported', `the host cannot run sandbox node ${id} (${nodeContainer(name, id)}): ${run.stderr.trim().split('\n').slice(-3).join(' ')}. Check the host: lines above and docs/sandbox.md ("Host adjustments"); podman must be able to run privileged containers with --systemd=always`);
  }
  const ran = deps.now();
  const booted = waitForSystemd(deps, nodeContainer(name, id)).then(() => {
    const systemdS = (deps.now() - ran) / 1000;
    const runS = (ran - runStarted) / 1000;
    return { id, runS, systemdS, bootS: runS + systemdS };
  });
  booted.catch(() => undefined); // awaited by bootNodes; handled here too until it is
  return { booted };
}

/** Writes the node records on the leader, waits for every replica to have them, and for the registry. */
async function startRedis(deps: SandboxDeps, l: SandboxLayout): Promise<void> {
  const { name, nodes, addresses, password, leaderAddress } = l;
  const leader = await connectWithRetry(deps, adminRedisUrl(leaderAddress, password), `sandbox ${name} leader (node 1, ${leaderAddress}:${REDIS_PORT})`);
  try {
    await writeNodeRecords(leader, { nodes, addresses });
  } finally {
    leader.disconnect();
  }
  for (let id = 2; id <= nodes; id++) await waitForReplica(deps, addresses[String(id)] ?? '', password, `node/${nodes}/ui_name`);
  await waitForRegistry(deps, l.registry, registryContainer(name));
}

/** Human summary of a created sandbox (stdout of `create`). */
export function renderCreated(info: SandboxInfo): string {
  const lines = [`sandbox "${info.name}" is ready: ${info.nodes} node${info.nodes > 1 ? 's' : ''} on network ${info.network} (${info.subnet})`];
  for (const [id, addr] of Object.entries(info.addresses)) lines.push(`  node ${id}  ${addr}  ${nodeContainer(info.name, Number(id))}  ${id === '1' ? 'leader (Redis master)' : 'worker (Redis replica, read-only)'}`);
  lines.push(`  registry ${info.registry}  ${registryContainer(info.name)}  (plain HTTP; push with: ns8ctl sandbox push IMAGE)`);
  lines.push(`  leader Redis ${info.leaderRedisUrl}  (admin user; the default user may only read)`);
  lines.push('', 'Point ns8ctl on this host at it (or later: ' + envCommand(info.name) + '):', `  ${renderEnv({ name: info.name, redisUrl: info.leaderRedisUrl, registry: info.registry }).trim()}`);
  lines.push('  ns8ctl apply -f manifests/ && ns8ctl get modules');
  lines.push(`Try: ns8ctl sandbox exec 1 -- systemctl is-system-running   (ns8ctl runs inside nodes too: ns8ctl sandbox exec 1 -- ns8ctl get modules)`);
  return lines.join('\n') + '\n';
}
