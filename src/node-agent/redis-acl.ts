/**
 * Per-instance Redis credentials, as NS8's cluster add-module creates them (ns8-core-facts §5,
 * "Module ACL"): user `module/<id>`, write access only to `module/<id>/*` (and its task keys and
 * channels), read access to `cluster/*`, `node/*`, `module/*`, `private/agents/*`. The password is
 * random, kept in the instance's `state/agent.env`; Redis stores only its sha256.
 * Like NS8's save_acls, every change is mirrored into SET `cluster/acls` (the `ACL LIST` line, for
 * replicas to replay), saved with ACL SAVE when the server has an ACL file, and announced on
 * `cluster/event/acl-changed`.
 */
import { createHash, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';

/** SET of `ACL LIST` lines of module and node users (NS8 `cluster/acls`). */
export const CLUSTER_ACLS_KEY = 'cluster/acls';
/** NS8 channel announcing ACL changes; payload is the string `cluster/acls`. */
export const ACL_CHANGED_CHANNEL = 'cluster/event/acl-changed';

/** Redis user name of an instance. */
export function moduleAclUser(id: string): string {
  return `module/${id}`;
}

/** A new random password (160 bits, hex). */
export function generatePassword(): string {
  return randomBytes(20).toString('hex');
}

/** Hex sha256 of a password, the form Redis ACL rules (`#<hash>`) and NS8's redis_sha256 use. */
export function passwordSha256(password: string): string {
  return createHash('sha256').update(password).digest('hex');
}

/**
 * The ACL SETUSER arguments (after the user name). NS8's rule list, preceded by `reset` so a
 * re-apply drops any old password or rule and the result is exactly this.
 */
export function moduleAclRules(id: string, sha256: string): string[] {
  return [
    'reset',
    'on',
    `#${sha256}`,
    'resetkeys',
    `~module/${id}/*`,
    `~task/module/${id}/*`,
    '%R~cluster/*',
    '%R~node/*',
    '%R~module/*',
    '%R~private/agents/*',
    'resetchannels',
    `&progress/module/${id}/*`,
    `&module/${id}/event/*`,
    '+@read',
    '+@write',
    '+@transaction',
    '+@connection',
    '+publish',
    '-@admin',
  ];
}

/** Every `ACL LIST` line, keyed by user name. One round trip. */
export async function listAclUsers(redis: Redis): Promise<Map<string, string>> {
  const lines = (await redis.call('ACL', 'LIST')) as string[];
  const out = new Map<string, string>();
  for (const line of lines) {
    const m = /^user (\S+) /.exec(line);
    if (m) out.set(m[1]!, line);
  }
  return out;
}

async function syncClusterAcls(redis: Redis, user: string, line: string | undefined): Promise<void> {
  const members = await redis.smembers(CLUSTER_ACLS_KEY);
  const stale = members.filter((m) => m.startsWith(`user ${user} `) && m !== line);
  const tx = redis.multi();
  if (stale.length) tx.srem(CLUSTER_ACLS_KEY, ...stale);
  if (line) tx.sadd(CLUSTER_ACLS_KEY, line);
  tx.publish(ACL_CHANGED_CHANNEL, CLUSTER_ACLS_KEY);
  await tx.exec();
  // ACL SAVE only works when the server was started with an ACL file; without one the rules live
  // in memory and in cluster/acls, which is what NS8 replays on replicas anyway.
  await redis.call('ACL', 'SAVE').catch(() => undefined);
}

/**
 * Creates or replaces the instance's ACL user with `password`, and returns the resulting
 * `ACL LIST` line (Redis' canonical form, used to detect drift). Throws `redis_acl_failed`.
 */
export async function applyModuleAcl(redis: Redis, id: string, password: string): Promise<string> {
  const user = moduleAclUser(id);
  try {
    await redis.call('ACL', 'SETUSER', user, ...moduleAclRules(id, passwordSha256(password)));
    const line = (await listAclUsers(redis)).get(user);
    await syncClusterAcls(redis, user, line);
    return line ?? '';
  } catch (err) {
    throw new RedisError('redis_acl_failed', `${id}: cannot set Redis ACL user ${user}: ${(err as Error).message}`, { cause: err, user: false });
  }
}

/** Removes the instance's ACL user (no-op when absent). Throws `redis_acl_failed`. */
export async function deleteModuleAcl(redis: Redis, id: string): Promise<void> {
  const user = moduleAclUser(id);
  try {
    await redis.call('ACL', 'DELUSER', user);
    await syncClusterAcls(redis, user, undefined);
  } catch (err) {
    throw new RedisError('redis_acl_failed', `${id}: cannot delete Redis ACL user ${user}: ${(err as Error).message}`, { cause: err, user: false });
  }
}

/** True when the `ACL LIST` line grants exactly what `moduleAclRules` asks for with this password. */
export function aclLineMatches(line: string | undefined, id: string, password: string | undefined): boolean {
  if (!line || !password) return false;
  const sha = passwordSha256(password);
  const tokens = new Set(line.split(' '));
  const must = ['on', `#${sha}`, `~module/${id}/*`, `~task/module/${id}/*`, '%R~cluster/*', '%R~node/*', '%R~module/*', '%R~private/agents/*', `&progress/module/${id}/*`, `&module/${id}/event/*`];
  if (!must.every((t) => tokens.has(t))) return false;
  // Exactly one password, and no key, channel or extra grant beyond the rule list.
  const passwords = [...tokens].filter((t) => t.startsWith('#'));
  const patterns = [...tokens].filter((t) => /^(~|%R~|%W~|%RW~|&)/.test(t) || t === 'allkeys' || t === 'allchannels');
  return passwords.length === 1 && patterns.length === 8 && !tokens.has('nopass');
}
