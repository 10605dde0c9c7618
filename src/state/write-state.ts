import { randomUUID } from 'node:crypto';
import type { Redis } from 'ioredis';
import { ConflictError, RedisError } from '../errors.js';
import { channels, keys } from './keys.js';

/**
 * One write of an apply, as data. A list of these is executed by one Lua script in three phases:
 * every precondition (`expect`, `expect-value`) is checked, then every input is validated (key
 * types, integer fields), and only when both hold is anything written. So a write is
 * all-or-nothing, two concurrent writers cannot interleave or lose an update, and a wrong-typed
 * key makes the whole write fail before its first change instead of half-way.
 *
 * Every writer of desired state (apply, saved plans, `delete`, `remove-module`, `add-module`, the
 * controller's sources) goes through this one script.
 */
export type WriteOp =
  /**
   * Precondition on one desired object, `label` (`Kind/id`) naming it in conflicts. The `object`
   * field of hash `key` equals `object` ('' = the hash is absent); when given, its `applyset` and
   * `deleting` fields equal these ('' = absent), and the apply sets whose inventory lists `member`
   * are exactly `inventories` (sorted).
   */
  | { op: 'expect'; key: string; object: string; label: string; applyset?: string; deleting?: string; member?: string; inventories?: string[] }
  /** Precondition: STRING `key` holds `value` ('' = absent), e.g. a sequence an id was taken from. */
  | { op: 'expect-value'; key: string; value: string; label: string }
  /** Create or update a desired object; `bump` increments `generation` (1 on create). */
  | { op: 'put'; key: string; index: string; id: string; object: string; bump: boolean; source: string; revision: string; applyset: string }
  /**
   * Delete a desired object: with finalizers left, only marks it `deleting` (the JSON deletion
   * mark); else removes the hash and its index entry, and `also` keys/fields (NS8 bookkeeping).
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

/**
 * Phase 1 returns `conflict` + a JSON description of the first precondition that failed (with
 * what the other writer left); phase 2 returns `invalid` + a message; nothing is written before
 * both passed. ARGV: ops JSON, change channel, epoch key, epoch value, inventories key, inventory
 * key prefix. Deterministic: the epoch's uuid and time come from the caller.
 */
const APPLY_SCRIPT = `
local ops = cjson.decode(ARGV[1])
local INVS, INVP = ARGV[5], ARGV[6]
local function ktype(k) return redis.call('TYPE', k)['ok'] end
local function hfield(k, f)
  if ktype(k) ~= 'hash' then return '' end
  return redis.call('HGET', k, f) or ''
end
local function members_of(member)
  local out = {}
  if ktype(INVS) ~= 'set' then return '' end
  for _, s in ipairs(redis.call('SMEMBERS', INVS)) do
    local ik = INVP .. s
    if ktype(ik) == 'set' and redis.call('SISMEMBER', ik, member) == 1 then table.insert(out, s) end
  end
  table.sort(out)
  return table.concat(out, '\\n')
end
local function conflict(o, field, expected, actual)
  return {'conflict', cjson.encode({label = o.label, field = field, expected = expected, actual = actual,
    applyset = hfield(o.key, 'applyset'), source = hfield(o.key, 'source'), generation = hfield(o.key, 'generation'),
    deleting = hfield(o.key, 'deleting')})}
end
-- Phase 1: preconditions.
for _, o in ipairs(ops) do
  if o.op == 'expect' then
    local t = ktype(o.key)
    if t ~= 'none' and t ~= 'hash' then return {'invalid', o.key .. ' is a ' .. t .. ', not a hash (desired object ' .. o.label .. ')'} end
    local cur = hfield(o.key, 'object')
    if cur ~= o.object then return conflict(o, 'object', o.object, cur) end
    if o.applyset ~= nil then
      local a = hfield(o.key, 'applyset')
      if a ~= o.applyset then return conflict(o, 'applyset', o.applyset, a) end
    end
    if o.deleting ~= nil then
      local d = hfield(o.key, 'deleting')
      if d ~= o.deleting then return conflict(o, 'deleting', o.deleting, d) end
    end
    if o.member ~= nil then
      local want = {}
      for _, s in ipairs(o.inventories or {}) do table.insert(want, s) end
      table.sort(want)
      local w = table.concat(want, '\\n')
      local have = members_of(o.member)
      if have ~= w then return conflict(o, 'inventories', w, have) end
    end
  elseif o.op == 'expect-value' then
    local t = ktype(o.key)
    if t ~= 'none' and t ~= 'string' then return {'invalid', o.key .. ' is a ' .. t .. ', not a string'} end
    local cur = redis.call('GET', o.key) or ''
    if cur ~= o.value then return {'conflict', cjson.encode({label = o.label, field = 'value', key = o.key, expected = o.value, actual = cur})} end
  end
end
-- Phase 2: every input valid before the first write.
local function need(k, want, what)
  if type(k) ~= 'string' or k == '' then return 'an op has no key' end
  local t = ktype(k)
  if t ~= 'none' and t ~= want then return k .. ' is a ' .. t .. ', not a ' .. want .. ' (' .. what .. ')' end
  return nil
end
local function isint(v) return type(v) == 'string' and string.match(v, '^%-?%d+$') ~= nil end
local known = {expect=1, ['expect-value']=1, put=1, delete=1, hset=1, hsetnx=1, hdel=1, set=1, atleast=1, sadd=1, srem=1, sreplace=1, del=1}
for i, o in ipairs(ops) do
  local op = o.op
  local e = nil
  if not known[op] then return {'invalid', 'op ' .. i .. ' has the unknown kind ' .. tostring(op)} end
  if op == 'put' then
    e = need(o.key, 'hash', 'desired object') or need(o.index, 'set', 'desired index')
    if not e then
      local g = hfield(o.key, 'generation')
      if g ~= '' and not isint(g) then e = o.key .. ' has generation ' .. g .. ', not an integer' end
    end
  elseif op == 'delete' then
    e = need(o.key, 'hash', 'desired object') or need(o.index, 'set', 'desired index')
    if not e then
      for _, a in ipairs(o.also) do
        if a.field then e = need(a.key, 'hash', 'bookkeeping of ' .. o.key) end
        if e then break end
      end
    end
  elseif op == 'hset' or op == 'hsetnx' or op == 'hdel' then e = need(o.key, 'hash', op)
  elseif op == 'set' then e = need(o.key, 'string', 'set')
  elseif op == 'atleast' then
    e = need(o.key, 'string', 'sequence')
    if not e then
      local cur = redis.call('GET', o.key)
      if cur and not isint(cur) then e = o.key .. ' holds ' .. cur .. ', not an integer' end
      if type(o.value) ~= 'number' then e = 'the value for ' .. o.key .. ' is not a number' end
    end
  elseif op == 'sadd' or op == 'srem' or op == 'sreplace' then e = need(o.key, 'set', op)
  end
  if e then return {'invalid', e} end
end
-- Phase 3: the writes.
local changed = {}
local wrote = false
for _, o in ipairs(ops) do
  local op = o.op
  if op ~= 'expect' and op ~= 'expect-value' then wrote = true end
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
    if cur < o.value then redis.call('SET', o.key, string.format('%d', o.value)) end
  elseif op == 'sadd' then redis.call('SADD', o.key, o.member)
  elseif op == 'srem' then redis.call('SREM', o.key, o.member)
  elseif op == 'sreplace' then
    redis.call('DEL', o.key)
    for _, m in ipairs(o.members) do redis.call('SADD', o.key, m) end
  elseif op == 'del' then redis.call('DEL', o.key)
  end
end
if wrote then redis.call('SET', ARGV[3], ARGV[4], 'NX') end
if #changed > 0 then
  redis.call('PUBLISH', ARGV[2], cjson.encode({keys = changed}))
end
return {'ok', ''}
`;

/** What a failed precondition found: the field that differs and what the other writer left. */
export interface WriteConflict {
  /** `Kind/id` of the object (or the sequence's label). */
  label: string;
  /** `object`, `applyset`, `deleting`, `inventories` (apply sets listing it) or `value` (a STRING key). */
  field: 'object' | 'applyset' | 'deleting' | 'inventories' | 'value';
  expected: string;
  actual: string;
  /** The object's hash now ('' when absent). */
  applyset?: string;
  source?: string;
  generation?: string;
  deleting?: string;
  /** For `value`: the STRING key. */
  key?: string;
}

/** A precondition of a write failed: another writer changed what it depended on. Nothing was written. */
export class WriteConflictError extends ConflictError {
  constructor(readonly conflict: WriteConflict) {
    super(describeConflict(conflict));
  }
}

/** `by`/`at`/`why` of a deletion mark, shown in messages ('' parts left out). */
export function describeDeletionMark(raw: string): string {
  try {
    const d = JSON.parse(raw) as { removalPolicy?: string; by?: string; at?: string; why?: string };
    const parts = [d.by ? `by ${d.by}` : '', d.at ? `at ${d.at}` : '', d.why ? `(${d.why})` : ''].filter(Boolean);
    return `marked for deletion${parts.length ? ' ' + parts.join(' ') : ''}`;
  } catch {
    return 'marked for deletion';
  }
}

/** One sentence: what the other writer did to the object, naming it (no spec values: they may be secret). */
export function describeConflict(c: WriteConflict): string {
  return `${c.label} ${conflictWhat(c)} while this write was being made; nothing was written`;
}

/** The verb part of describeConflict: `was created by another writer (apply set x, ...)`. */
export function conflictWhat(c: WriteConflict): string {
  const where = [c.applyset ? `apply set ${c.applyset}` : '', c.source ? `source ${c.source}` : '', c.generation ? `generation ${c.generation}` : ''].filter(Boolean).join(', ');
  let what: string;
  switch (c.field) {
    case 'object':
      what = c.expected === '' ? `was created by another writer (${where})` : c.actual === '' ? 'was deleted by another writer' : `was changed by another writer (now ${where})`;
      break;
    case 'applyset':
      what = `was taken over by another writer: its apply set is now ${JSON.stringify(c.actual)} (was ${JSON.stringify(c.expected)})`;
      break;
    case 'deleting':
      what = c.actual ? `was ${describeDeletionMark(c.actual)}` : 'had its deletion mark changed by another writer';
      break;
    case 'inventories': {
      const list = (s: string): string => (s ? s.split('\n').join(', ') : 'none');
      what = `changed apply set membership: now listed by ${list(c.actual)} (was ${list(c.expected)})`;
      break;
    }
    case 'value':
      what = `could not take its id: ${c.key ?? 'the sequence'} moved from ${c.expected || 'absent'} to ${c.actual || 'absent'} (another writer took an id)`;
      break;
  }
  return what;
}

/** Options of `executeWrites`. */
export interface WriteOptions {
  /**
   * Value for `ns8ctl/cluster/epoch` (JSON `{id, created}`), set only if the key is absent when
   * the script writes anything. Default: a new uuid4 and now.
   */
  epoch?: string;
}

/** The value of a new cluster epoch: a uuid4 and the creation time. */
export function newEpoch(now: Date = new Date(), id: string = randomUUID()): string {
  return JSON.stringify({ id, created: now.toISOString() });
}

/**
 * Runs the ops atomically in one round trip.
 * @throws WriteConflictError (a ConflictError) when a precondition failed: a concurrent writer
 *   changed an object after we read it; the message names the object and what the other writer
 *   did. The caller re-reads and re-plans, or reports it.
 * @throws RedisError `state_invalid` when a key the write needs holds the wrong type or a
 *   non-integer where an integer is needed (nothing written); `redis_write_failed` when Redis
 *   refuses the script.
 */
export async function executeWrites(redis: Redis, ops: WriteOp[], opts: WriteOptions = {}): Promise<void> {
  if (ops.length === 0) return;
  let res: unknown;
  try {
    res = await redis.eval(APPLY_SCRIPT, 0, JSON.stringify(ops), channels.desiredChanged, keys.clusterEpoch(), opts.epoch ?? newEpoch(), keys.inventories(), keys.inventory(''));
  } catch (err) {
    throw new RedisError('redis_write_failed', `Redis refused the apply script (nothing was written): ${(err as Error).message}`, { cause: err });
  }
  const [status, detail] = Array.isArray(res) ? (res as [string, string]) : ['', ''];
  if (status === 'ok') return;
  if (status === 'conflict') throw new WriteConflictError(JSON.parse(detail) as WriteConflict);
  if (status === 'invalid') throw new RedisError('state_invalid', `nothing was written: ${detail}; fix or delete that key, then try again`, { user: true });
  throw new RedisError('redis_write_failed', `the apply script gave an unexpected answer: ${JSON.stringify(res)}`);
}
