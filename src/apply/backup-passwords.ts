/**
 * The plan's reminder about backup passwords: a desired BackupDestination whose password was never
 * stored (`ns8ctl backup set-password`) cannot be backed up to or restored from. Only whether the
 * key has the field is read (HEXISTS), never the value.
 */
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import type { DesiredObject } from '../manifest/types.js';
import type { Plan } from '../plan/types.js';
import { keys } from '../state/keys.js';

/**
 * `plan` with one warning per desired BackupDestination that has no stored password; `plan`
 * itself when all have one (or there are none). One round trip.
 * @throws RedisError when Redis refuses the read.
 */
export async function withBackupPasswordWarnings(redis: Redis, desired: readonly DesiredObject[], plan: Plan): Promise<Plan> {
  const names = desired.flatMap((d) => (d.object.kind === 'BackupDestination' ? [d.object.metadata.name] : []));
  if (names.length === 0) return plan;
  const p = redis.pipeline();
  for (const n of names) p.hexists(keys.backupPassword(n), 'password');
  const res = (await p.exec()) ?? [];
  const missing = names.filter((n, i) => {
    const [err, value] = res[i] ?? [null, 0];
    if (err) throw new RedisError('redis_command_failed', `reading whether ${keys.backupPassword(n)} is set: ${err.message}`);
    return value !== 1;
  });
  if (missing.length === 0) return plan;
  const warnings = missing.map((n) => `BackupDestination ${n} has no password yet: backups to it and restores from it wait until \`ns8ctl backup set-password ${n} --password-file FILE\``);
  return { ...plan, warnings: [...(plan.warnings ?? []), ...warnings] };
}
