/**
 * Names, labels, paths and addresses of one sandbox: pure functions, so every command derives the
 * same names from the sandbox name and node id (like kind's `<cluster>-control-plane`).
 */
import path from 'node:path';
import { UsageError } from '../errors.js';

/** Name used when `--name` is not given. */
export const DEFAULT_SANDBOX_NAME = 'sandbox';
/** Most nodes one sandbox may have (addresses .11 to .(10+N) of a /24). */
export const MAX_NODES = 9;
/** Port of the sandbox registry on its container address. */
export const REGISTRY_PORT = 5000;
/** Port of Redis on every node. */
export const REDIS_PORT = 6379;
/** Where the project (dist/, node_modules/, schemas/) and the node binary appear inside nodes. */
export const NODE_APP_DIR = '/opt/ns8ctl/app';
export const NODE_NODE_BINARY = '/opt/ns8ctl/bin/node';
/** Per-node configuration directory inside a node (read-only bind mount). */
export const NODE_CONFIG_DIR = '/etc/ns8ctl';

/** Container labels: `podman ps --filter label=...` finds everything a sandbox owns. */
export const LABELS = {
  sandbox: 'org.ns8ctl.sandbox',
  role: 'org.ns8ctl.sandbox.role',
  nodeId: 'org.ns8ctl.sandbox.node-id',
} as const;

/** Checks a sandbox name: lower-case letters, digits and `-`, starting with a letter, max 30. */
export function validateSandboxName(name: string): string {
  if (!/^[a-z][a-z0-9-]{0,29}$/.test(name)) {
    throw new UsageError(`invalid sandbox name "${name}": use 1-30 lower-case letters, digits or "-", starting with a letter`);
  }
  return name;
}

/** Checks `--nodes`: an integer from 1 to {@link MAX_NODES}. */
export function parseNodeCount(value: string | number | undefined): number {
  const n = value === undefined ? 1 : Number(value);
  if (!Number.isInteger(n) || n < 1 || n > MAX_NODES) throw new UsageError(`invalid --nodes "${String(value)}": an integer from 1 to ${MAX_NODES}`);
  return n;
}

export const networkName = (sandbox: string): string => `ns8ctl-${sandbox}`;
export const nodeContainer = (sandbox: string, id: number): string => `ns8ctl-${sandbox}-node${id}`;
export const registryContainer = (sandbox: string): string => `ns8ctl-${sandbox}-registry`;
export const nodeHostname = (id: number): string => `node${id}`;

/**
 * Parses a NODE argument: `2`, `node2`, or the container name `ns8ctl-<sandbox>-node2`.
 * Returns the node id; throws a UsageError naming the allowed forms.
 */
export function parseNodeRef(sandbox: string, ref: string): number {
  const prefix = `ns8ctl-${sandbox}-node`;
  const digits = ref.startsWith(prefix) ? ref.slice(prefix.length) : ref.startsWith('node') ? ref.slice(4) : ref;
  const id = /^[1-9][0-9]*$/.test(digits) ? Number(digits) : NaN;
  if (!Number.isInteger(id)) throw new UsageError(`invalid node "${ref}": use a node id (1), node1, or ${prefix}1`);
  return id;
}

/** Address plan inside the sandbox network's /24: gateway .1, registry .2, node N at .(10+N). */
export function addressPlan(subnet: string): { prefix: string; registry: string; node: (id: number) => string } {
  const m = /^(\d+)\.(\d+)\.(\d+)\.0\/24$/.exec(subnet);
  if (!m) throw new UsageError(`sandbox network subnet "${subnet}" is not a /24 ending in .0 (podman network create gave something unexpected)`);
  const prefix = `${m[1]}.${m[2]}.${m[3]}`;
  return { prefix, registry: `${prefix}.2`, node: (id: number) => `${prefix}.${10 + id}` };
}

/** Where the sandbox keeps its state (`NS8CTL_SANDBOX_STATE`, default /var/lib/ns8ctl/sandbox). */
export function stateRoot(env: NodeJS.ProcessEnv): string {
  return path.resolve(env.NS8CTL_SANDBOX_STATE || '/var/lib/ns8ctl/sandbox');
}

/** Where root filesystems are cached (`NS8CTL_SANDBOX_CACHE`, default /var/cache/ns8ctl/sandbox). */
export function cacheRoot(env: NodeJS.ProcessEnv): string {
  return path.resolve(env.NS8CTL_SANDBOX_CACHE || '/var/cache/ns8ctl/sandbox');
}

/** Files and directories of one sandbox under the state root. */
export function sandboxPaths(env: NodeJS.ProcessEnv, sandbox: string) {
  const dir = path.join(stateRoot(env), sandbox);
  return {
    dir,
    /** JSON {@link SandboxRecord}. */
    record: path.join(dir, 'sandbox.json'),
    /** Admin password of the sandbox Redis (0600). */
    redisPassword: path.join(dir, 'redis-admin.password'),
    registryConfig: path.join(dir, 'registry', 'config.yml'),
    registryData: path.join(dir, 'registry', 'data'),
    /** containers-registries.conf drop-in shared by all nodes (the sandbox registry is plain HTTP). */
    registriesConf: path.join(dir, 'registries.conf'),
    node: (id: number) => {
      const n = path.join(dir, `node${id}`);
      return { dir: n, config: path.join(n, 'etc'), containers: path.join(n, 'containers'), home: path.join(n, 'home') };
    },
  };
}
