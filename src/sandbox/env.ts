/**
 * `ns8ctl sandbox env [NAME]`: what a shell on the host needs to point ns8ctl at a sandbox (like
 * `kind export kubeconfig`): `export NS8CTL_REDIS_URL=...`, the leader's Redis with the sandbox's
 * admin credentials in the URL. Host commands authenticate with that user and password
 * (the `default` user of a sandbox Redis may only read).
 */
import { Ns8ctlError } from '../errors.js';
import type { SandboxDeps } from './deps.js';
import { DEFAULT_SANDBOX_NAME, REDIS_PORT, validateSandboxName } from './naming.js';
import { adminRedisUrl } from './node-config.js';
import { requireRoot } from './preflight.js';
import { readAdminPassword, readRecord } from './record.js';

export interface EnvOptions {
  name?: string;
}

/** What `sandbox env -o json` prints. */
export interface SandboxEnv {
  name: string;
  /** Admin URL of the leader's Redis (node 1), reachable from the host. */
  redisUrl: string;
  /** `host:port` of the sandbox registry. */
  registry: string;
}

/** Pure: a single-quoted shell word (the URL is hex and dots, but quote anyway). */
function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** Pure: the lines `sandbox env` prints, ready for `eval "$(sudo ns8ctl sandbox env)"`. */
export function renderEnv(env: SandboxEnv): string {
  return `export NS8CTL_REDIS_URL=${shellQuote(env.redisUrl)}\n`;
}

/** Pure: the command that prints a sandbox's environment (`eval "$(sudo ns8ctl sandbox env NAME)"`). */
export function envCommand(name: string): string {
  return `eval "$(sudo ns8ctl sandbox env${name === DEFAULT_SANDBOX_NAME ? '' : ` ${name}`})"`;
}

/**
 * Pure: the leader's admin Redis URL from a sandbox record and its admin password, or null when
 * the record names no node 1.
 */
export function leaderRedisUrlOf(rec: { addresses: Record<string, string> }, password: string): string | null {
  const leader = rec.addresses['1'];
  return leader ? adminRedisUrl(leader, password) : null;
}

/**
 * Reads a sandbox's leader URL and checks that it answers from here with the admin credentials
 * (PING as the admin user), so what it prints works. Root only (`sandbox_needs_root`: the
 * password file is 0600). Fails with `not_found` when the sandbox does not exist, and with
 * `sandbox_redis_unreachable` (naming the address and `sandbox start 1`) when node 1's Redis
 * does not answer.
 */
export async function sandboxEnv(opts: EnvOptions, deps: SandboxDeps): Promise<SandboxEnv> {
  const name = validateSandboxName(opts.name ?? DEFAULT_SANDBOX_NAME);
  requireRoot(deps, 'env', 'the Redis admin password is in a root-only file');
  const rec = await readRecord(deps, name);
  const redisUrl = leaderRedisUrlOf(rec, await readAdminPassword(deps, name));
  if (!redisUrl) throw new Ns8ctlError('sandbox_record_invalid', `sandbox "${name}": its record has no address for node 1; delete it and create it again (ns8ctl sandbox delete --name ${name})`);
  try {
    const redis = await deps.openRedis(redisUrl);
    await redis.quit().catch(() => redis.disconnect());
  } catch (err) {
    throw new Ns8ctlError(
      'sandbox_redis_unreachable',
      `sandbox "${name}": the leader's Redis (node 1, ${rec.addresses['1'] ?? '?'}:${REDIS_PORT}) does not answer from this host as the admin user: ${(err as Error).message}. Is node 1 running? See ns8ctl sandbox list --name ${name}; start it with ns8ctl sandbox start 1 --name ${name}`,
      { cause: err },
    );
  }
  return { name, redisUrl, registry: rec.registry };
}
