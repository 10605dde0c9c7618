import type { Redis } from 'ioredis';
import { ConflictError, RedisError } from '../errors.js';
import { channels } from './keys.js';

/**
 * One write of an apply, as data. A list of these is executed by one Lua script: every `expect`
 * precondition is checked first, and only when all hold is anything written, so an apply is
 * all-or-nothing and two concurrent applies cannot interleave or lose an update.
 */
export type WriteOp =
  /** Precondition: the `object` field of hash `key` equals `object` ('' = the hash is absent). */
  | { op: 'expect'; key: string; object: string; label: string }
  /** Create or update a desired object; `bump` increments `generation` (1 on create). */
  | { op: 'put'; key: string; index: string; id: string; object: string; bump: boolean; source: string; revision: string; applyset: string }
  /**
   * Delete a desired object: with finalizers left, only marks it `deleting` with the policy; else
   * removes the hash and its index entry, and `also` keys/fields (NS8 bookkeeping).
   */
  | { op: 'delete'; key: string; index: string; id: string; deleting: string; also: { key: string; field?: string }[] }
  | { op: 'hset'; key: string; field: string; value: string }
  | { op: 'hsetnx'; key: string; field: string; value: string }
  | { op: 'hdel'; key: string; field: string }
  | { op: 'set'; key: string; value: string }
  /** Raise an integer key to at least `value` (never lowers it). */
  | { op: 'atleast'; key: string; value: number }
  | { op: 'sadd'; key: string; member: string }
  | { op: 'srem'; key: string; member: string }
  /** Replace a set's members (deleting the key when `members` is empty). */
  | { op: 'sreplace'; key: string; members: string[] }
  | { op: 'del'; key: string };

const APPLY_SCRIPT = `
local ops = cjson.decode(ARGV[1])
for _, o in ipairs(ops) do
  if o.op == 'expect' then
    local cur = redis.call('HGET', o.key, 'object')
    if not cur then cur = '' end
    if cur ~= o.object then return 'conflict:' .. o.label end
  end
end
local changed = {}
for _, o in ipairs(ops) do
  local op = o.op
  if op == 'put' then
    local gen = tonumber(redis.call('HGET', o.key, 'generation') or '0')
    if o.bump or gen == 0 then gen = gen + 1 end
    redis.call('HSET', o.key, 'object', o.object, 'generation', tostring(gen), 'source', o.source, 'revision', o.revision, 'applyset', o.applyset)
    redis.call('HDEL', o.key, 'deleting')
    redis.call('SADD', o.index, o.id)
    table.insert(changed, o.key)
  elseif op == 'delete' then
    local fin = redis.call('HGET', o.key, 'finalizers')
    if fin and fin ~= '' then
      redis.call('HSET', o.key, 'deleting', o.deleting)
    else
      redis.call('DEL', o.key)
      redis.call('SREM', o.index, o.id)
      for _, a in ipairs(o.also) do
        if a.field then redis.call('HDEL', a.key, a.field) else redis.call('DEL', a.key) end
      end
    end
    table.insert(changed, o.key)
  elseif op == 'hset' then redis.call('HSET', o.key, o.field, o.value)
  elseif op == 'hsetnx' then redis.call('HSETNX', o.key, o.field, o.value)
  elseif op == 'hdel' then redis.call('HDEL', o.key, o.field)
  elseif op == 'set' then redis.call('SET', o.key, o.value)
  elseif op == 'atleast' then
    local cur = tonumber(redis.call('GET', o.key) or '0')
    if cur < o.value then redis.call('SET', o.key, tostring(o.value)) end
  elseif op == 'sadd' then redis.call('SADD', o.key, o.member)
  elseif op == 'srem' then redis.call('SREM', o.key, o.member)
  elseif op == 'sreplace' then
    redis.call('DEL', o.key)
    for _, m in ipairs(o.members) do redis.call('SADD', o.key, m) end
  elseif op == 'del' then redis.call('DEL', o.key)
  end
end
if #changed > 0 then
  redis.call('PUBLISH', ARGV[2], cjson.encode({keys = changed}))
end
return 'ok'
`;

/**
 * Runs the ops atomically in one round trip. Throws ConflictError when a precondition failed
 * (a concurrent apply changed an object after we read it): the caller re-reads and re-plans.
 */
export async function executeWrites(redis: Redis, ops: WriteOp[]): Promise<void> {
  if (ops.length === 0) return;
  // cjson encodes empty Lua tables as objects; keep arrays non-empty-safe by construction.
  let res: unknown;
  try {
    res = await redis.eval(APPLY_SCRIPT, 0, JSON.stringify(ops), channels.desiredChanged);
  } catch (err) {
    throw new RedisError('redis_write_failed', `Redis refused the apply script: ${(err as Error).message}`, { cause: err });
  }
  if (typeof res === 'string' && res.startsWith('conflict:')) {
    throw new ConflictError(`${res.slice('conflict:'.length)} was changed by someone else while this apply ran`);
  }
}
