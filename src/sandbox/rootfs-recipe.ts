/**
 * The recipe of a sandbox node's root filesystem: what debootstrap and apt install and which files
 * ns8ctl adds. Pure data; its hash keys the cache, so changing anything here rebuilds once.
 */
import { createHash } from 'node:crypto';
import { ns8RuntimeLayout } from '../agent/ns8-runtime.js';
import { nodePodmanFiles } from './host-check.js';
import { NODE_APP_DIR, NODE_CONFIG_DIR, NODE_NODE_BINARY } from './naming.js';
import { NODE_REDIS_ACL_SCRIPT, renderRedisAclScript } from './node-config.js';

/** Python of the recipe's Debian suite (bookworm): the NS8 pyenv's site-packages path names it. */
const NODE_PYTHON_VERSION = '3.11';

/** Everything that determines the content of the cached root filesystem. */
export interface RootfsRecipe {
  /** Bumped when the build procedure itself changes. */
  version: number;
  suite: string;
  variant: string;
  /** Packages debootstrap installs (systemd as PID 1 and working user managers need these). */
  include: string[];
  /** Packages apt installs afterwards, `--no-install-recommends` (podman via --include fails on a virtual package). */
  packages: string[];
  /** Files written into the root filesystem: path (relative to /) -> content. */
  files: Record<string, { content: string; mode: number }>;
  /** Symbolic links made in the root filesystem: path (relative to /) -> target. */
  symlinks: Record<string, string>;
}

/** The `ns8ctl` command inside nodes: runs the host's build with the host's node binary. */
export function renderNodeWrapper(): string {
  return `#!/bin/sh
# ns8ctl inside a sandbox node: the host's build, bind-mounted read-only at ${NODE_APP_DIR},
# run with the host's node binary (Debian 12's nodejs is 18; ns8ctl needs >= 20).
# Root gets the sandbox settings (node id, leader Redis URL with the admin password).
if [ -r ${NODE_CONFIG_DIR}/sandbox.env ]; then
  . ${NODE_CONFIG_DIR}/sandbox.env
  export NS8CTL_NODE_ID NS8CTL_SANDBOX NS8CTL_LEADER_REDIS_URL NS8CTL_LOCAL_REDIS_URL
  : "\${NS8CTL_REDIS_URL:=$NS8CTL_LEADER_REDIS_URL}"
  export NS8CTL_REDIS_URL
fi
if [ ! -f ${NODE_APP_DIR}/dist/src/cli/bin.js ]; then
  echo "ns8ctl: ${NODE_APP_DIR}/dist/src/cli/bin.js is missing: run 'npm run build' in the project on the host" >&2
  exit 127
fi
exec ${NODE_NODE_BINARY} ${NODE_APP_DIR}/dist/src/cli/bin.js "$@"
`;
}

/**
 * systemd drop-in for Debian's redis-server.service: use the per-node configuration ns8ctl mounts
 * at /etc/ns8ctl (copied to /etc/redis first, owned by redis, since it holds the replication
 * password), and the ACL file there (writable by redis for ACL SAVE), arranged around each start
 * by `renderRedisAclScript` (before: loading rule for `default`; after loading: read-only rule).
 */
export function renderRedisDropin(): string {
  return `# Written by ns8ctl sandbox: Redis as a sandbox node runs it (leader: master, others: replicas).
[Unit]
ConditionPathExists=${NODE_CONFIG_DIR}/redis.conf

[Service]
ExecStartPre=+${NODE_REDIS_ACL_SCRIPT} prepare
ExecStart=
ExecStart=/usr/bin/redis-server /etc/redis/ns8ctl.conf --supervised systemd --daemonize no
ExecStartPost=+${NODE_REDIS_ACL_SCRIPT} apply
`;
}

/**
 * Debian 12's /etc/login.defs with other uid, gid and subordinate id ranges. Sandbox nodes share
 * the host's uids (no user namespace): a node's instance user with the host test user's uid
 * would be killed by that test's `killall -u` (seen: a node's user manager SIGKILLed mid-test).
 * Nodes take 52000-59999 and subordinate ids from 300000000; the host keeps Debian's 1000+ and
 * 100000+.
 */
export function renderLoginDefs(): string {
  return `# ns8ctl sandbox node: Debian 12's values, with uid/gid and subordinate id ranges of its own
MAIL_DIR /var/mail
FAILLOG_ENAB yes
LOG_UNKFAIL_ENAB no
LOG_OK_LOGINS no
SYSLOG_SU_ENAB yes
SYSLOG_SG_ENAB yes
FTMP_FILE /var/log/btmp
SU_NAME su
HUSHLOGIN_FILE .hushlogin
ENV_SUPATH PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ENV_PATH PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games
TTYGROUP tty
TTYPERM 0600
ERASECHAR 0177
KILLCHAR 025
UMASK 022
PASS_MAX_DAYS 99999
PASS_MIN_DAYS 0
PASS_WARN_AGE 7
UID_MIN 52000
UID_MAX 59999
GID_MIN 52000
GID_MAX 59999
SUB_UID_MIN 300000000
SUB_UID_MAX 600100000
SUB_UID_COUNT 65536
SUB_GID_MIN 300000000
SUB_GID_MAX 600100000
SUB_GID_COUNT 65536
LOGIN_RETRIES 5
LOGIN_TIMEOUT 60
CHFN_RESTRICT rwh
DEFAULT_HOME yes
USERGROUPS_ENAB yes
ENCRYPT_METHOD SHA512
NONEXISTENT /nonexistent
PREVENT_NO_AUTH superuser
`;
}

/**
 * The one recipe ns8ctl uses: Debian 12 + systemd + podman + crun + uidmap + slirp4netns + redis,
 * catatonit (the pause binary `podman pod create` builds its infra image from; podman recommends
 * it, so NS8 nodes have it, and modules with a pod unit such as ns8-nextcloud need it),
 * and NS8's agent runtime (python3 + python3-redis, /usr/local/agent, runagent, agent.env and
 * core.env: src/agent/ns8-runtime.ts) linked to `runtime/ns8` of the bind-mounted project, so a
 * change there needs no rebuild.
 */
export function defaultRecipe(): RootfsRecipe {
  const files: RootfsRecipe['files'] = {};
  files['etc/login.defs'] = { content: renderLoginDefs(), mode: 0o644 };
  for (const [p, content] of Object.entries(nodePodmanFiles())) files[p] = { content, mode: 0o644 };
  files['usr/local/bin/ns8ctl'] = { content: renderNodeWrapper(), mode: 0o755 };
  files['etc/systemd/system/redis-server.service.d/ns8ctl.conf'] = { content: renderRedisDropin(), mode: 0o644 };
  files[NODE_REDIS_ACL_SCRIPT.slice(1)] = { content: renderRedisAclScript(), mode: 0o755 };
  // Each node gets its own machine id at boot (systemd makes a transient one for an empty file).
  files['etc/machine-id'] = { content: '', mode: 0o444 };
  // Nothing in a node should try to reach the internet on its own.
  files['etc/systemd/system/apt-daily.timer'] = { content: '', mode: 0o644 };
  files['etc/systemd/system/apt-daily-upgrade.timer'] = { content: '', mode: 0o644 };
  const ns8 = ns8RuntimeLayout({ runtimeDir: `${NODE_APP_DIR}/runtime/ns8`, pythonVersion: NODE_PYTHON_VERSION });
  Object.assign(files, ns8.files);
  return {
    version: 2,
    suite: 'bookworm',
    variant: 'minbase',
    include: ['systemd', 'systemd-sysv', 'dbus', 'dbus-user-session', 'libpam-systemd', 'passwd', 'procps'],
    packages: ['podman', 'crun', 'uidmap', 'slirp4netns', 'fuse-overlayfs', 'redis-server', 'docker-registry', 'libstdc++6', 'iproute2', 'curl', 'ca-certificates', 'tar', 'python3', 'python3-redis', 'catatonit', 'restic', 'rsync', 'skopeo'],
    files,
    symlinks: ns8.symlinks,
  };
}

/** Stable hash of a recipe (16 hex chars): the cache key. */
export function recipeHash(recipe: RootfsRecipe): string {
  const canonical = JSON.stringify(recipe, Object.keys(recipe).sort());
  const files = Object.keys(recipe.files)
    .sort()
    .map((k) => `${k}\0${recipe.files[k]?.mode}\0${recipe.files[k]?.content}`)
    .join('\0');
  const links = Object.keys(recipe.symlinks)
    .sort()
    .map((k) => `${k}\0${recipe.symlinks[k]}`)
    .join('\0');
  return createHash('sha256').update(canonical).update('\0').update(files).update('\0').update(links).digest('hex').slice(0, 16);
}
