/**
 * Per-node files ns8ctl mounts read-only at /etc/ns8ctl inside each node, and the registries.conf
 * drop-in shared by all nodes. Pure renderers.
 */
import { ADMIN_USER, DEFAULT_USER_LOADING_RULE, DEFAULT_USER_RULE, renderAclFile } from '../state/embedded-redis.js';
import { NODE_CONFIG_DIR, REDIS_PORT } from './naming.js';

/** Unix socket of a node's Redis (root reaches it as admin, before `default` may read). */
export const NODE_REDIS_SOCKET = '/run/redis/redis-server.sock';
/** Script (in every node's root filesystem) that arranges the ACL file around a Redis start. */
export const NODE_REDIS_ACL_SCRIPT = '/usr/local/sbin/ns8ctl-redis-acl';

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
 * `default` user may do: read only, the seeds' model) and on a root-only Unix socket,
 * append-only persistence with an fsync before each write is acknowledged (replicas too, so a
 * restarted replica has the data before it resyncs), keyspace notifications for hashes. Nodes
 * other than 1 are read-only replicas of node 1, authenticating as the admin user.
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
    `unixsocket ${NODE_REDIS_SOCKET}`,
    'unixsocketperm 700',
    'appendonly yes',
    'appendfsync always',
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

/**
 * users.acl a node starts with: `default` with the loading rule (switched off, allowed all: the
 * append-only file replays), the `ns8ctl` admin user with the sandbox password.
 * `renderRedisAclScript` gives `default` its read-only rule once the data is loaded.
 */
export function renderNodeAcl(adminPassword: string): string {
  return renderAclFile(adminPassword);
}

const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * The script a node's redis-server.service runs around each start (as root), the sandbox's form
 * of `startEmbeddedRedis` + `applyDefaultUserRule`:
 * - `prepare` (ExecStartPre): installs the node's redis.conf, the first ACL file, and sets the
 *   ACL file's `default` line to the loading rule (an earlier `ACL SAVE` wrote the read-only one,
 *   which would make Redis 7.0 refuse every MULTI/EXEC of the append-only file on replay);
 * - `apply` (ExecStartPost): waits (at most 120 s) until `loading:0`, then sets the read-only
 *   rule and runs `ACL SAVE`, as admin over the root-only Unix socket.
 */
export function renderRedisAclScript(): string {
  return `#!/bin/sh
# Written by ns8ctl sandbox: arranges /etc/redis/users.acl around each start of redis-server.
set -eu
acl=/etc/redis/users.acl
case "\${1:-}" in
prepare)
  install -o redis -g redis -m 0600 ${NODE_CONFIG_DIR}/redis.conf /etc/redis/ns8ctl.conf
  [ -e "$acl" ] || install -o redis -g redis -m 0600 ${NODE_CONFIG_DIR}/users.acl "$acl"
  tmp=$(mktemp /etc/redis/.users.acl.XXXXXX)
  { echo ${shq(DEFAULT_USER_LOADING_RULE)}; grep -v '^user default ' "$acl" || true; } >"$tmp"
  chown redis:redis "$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$acl"
  chmod 0700 /var/lib/redis
  ;;
apply)
  REDISCLI_AUTH=$(cat ${NODE_CONFIG_DIR}/admin.password)
  export REDISCLI_AUTH
  cli() { redis-cli --no-auth-warning -s ${NODE_REDIS_SOCKET} --user ${ADMIN_USER} "$@"; }
  i=0
  until cli INFO persistence 2>/dev/null | tr -d '\\r' | grep -qx 'loading:0'; do
    i=$((i + 1))
    if [ "$i" -ge 1200 ]; then echo "ns8ctl-redis-acl: redis-server did not finish loading within 120 s" >&2; exit 1; fi
    sleep 0.1
  done
  out=$(cli ACL SETUSER default reset ${DEFAULT_USER_RULE.map(shq).join(' ')})
  [ "$out" = OK ] || { echo "ns8ctl-redis-acl: ACL SETUSER default: $out" >&2; exit 1; }
  out=$(cli ACL SAVE)
  [ "$out" = OK ] || { echo "ns8ctl-redis-acl: ACL SAVE: $out" >&2; exit 1; }
  ;;
*)
  echo "usage: $0 prepare|apply" >&2
  exit 2
  ;;
esac
`;
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
