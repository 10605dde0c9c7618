/**
 * Per-node files ns8ctl mounts read-only at /etc/ns8ctl inside each node, and the registries.conf
 * drop-in shared by all nodes. Pure renderers.
 */
import { ADMIN_USER, renderAclFile } from '../state/embedded-redis.js';
import { REDIS_PORT } from './naming.js';

/** What a node needs to know about itself and its sandbox. */
export interface NodeConfigInput {
  sandbox: string;
  nodeId: number;
  /** Node 1's address: Redis master. */
  leaderAddress: string;
  adminPassword: string;
  /** `host:port` of the sandbox registry. */
  registry: string;
}

/**
 * redis.conf of a node: listens on every address of the node (the ACL file restricts what the
 * `default` user may do: read only, the seeds' model), append-only persistence, keyspace
 * notifications for hashes. Nodes other than 1 are read-only replicas of node 1, authenticating
 * as the admin user.
 */
export function renderRedisConf(input: NodeConfigInput): string {
  const lines = [
    '# Written by ns8ctl sandbox.',
    'bind 0.0.0.0',
    `port ${REDIS_PORT}`,
    'protected-mode no',
    'dir /var/lib/redis',
    'logfile ""',
    'pidfile /run/redis/redis-server.pid',
    'appendonly yes',
    'save ""',
    'aclfile /etc/redis/users.acl',
    'notify-keyspace-events Kh',
    // Replicas sync at once (Redis waits 5 s by default to batch replicas into one transfer).
    'repl-diskless-sync-delay 0',
  ];
  if (input.nodeId !== 1) {
    lines.push(`replicaof ${input.leaderAddress} ${REDIS_PORT}`, `masteruser ${ADMIN_USER}`, `masterauth ${input.adminPassword}`, 'replica-read-only yes');
  }
  return lines.join('\n') + '\n';
}

/** users.acl: `default` read-only (NS8's rule), the `ns8ctl` admin user with the sandbox password. */
export function renderNodeAcl(adminPassword: string): string {
  return renderAclFile(adminPassword);
}

/** Redis URL with the admin credentials. */
export function adminRedisUrl(address: string, password: string): string {
  return `redis://${ADMIN_USER}:${encodeURIComponent(password)}@${address}:${REDIS_PORT}`;
}

/** Shell-sourced settings for root inside the node (the `ns8ctl` wrapper reads them). Mode 0600. */
export function renderSandboxEnv(input: NodeConfigInput): string {
  return [
    `NS8CTL_SANDBOX=${input.sandbox}`,
    `NS8CTL_NODE_ID=${input.nodeId}`,
    `NS8CTL_LEADER_REDIS_URL=${adminRedisUrl(input.leaderAddress, input.adminPassword)}`,
    `NS8CTL_LOCAL_REDIS_URL=${adminRedisUrl('127.0.0.1', input.adminPassword)}`,
    `NS8CTL_SANDBOX_REGISTRY=${input.registry}`,
    '',
  ].join('\n');
}

/** containers-registries.conf drop-in: the sandbox registry speaks plain HTTP. */
export function renderRegistriesConf(registry: string): string {
  return `# Written by ns8ctl sandbox: the sandbox registry is plain HTTP.\n[[registry]]\nlocation = "${registry}"\ninsecure = true\n`;
}
