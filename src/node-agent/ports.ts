/**
 * Per-node TCP/UDP port allocation, atomic in Redis (one Lua script per call), first-fit in
 * 20000-45000 like NS8's ports_manager (ns8-core-facts §2), but stored in Redis instead of a node
 * SQLite file: HASH `keys.nodePorts(node)`, field `<id>/<proto>` -> `start-end`. A range is stable
 * across reconciles (same demand -> same range) and updates (see allocatePorts), freed on removal,
 * and freed ranges are reused.
 * `node/<node>/{tcp,udp}_ports_sequence` is kept as the high-water mark (next port after the
 * highest range ever handed out), the key the seeds name.
 */
import type { Redis } from 'ioredis';
import { Ns8ctlError, RedisError } from '../errors.js';
import { keys } from '../state/keys.js';
import { NODE_PORT_BOUNDS, parsePortSpan, portSpanSize, type PortProtocol, type PortSpan } from '../plan/port-spans.js';

export type PortProto = PortProtocol;

/** An inclusive port range. */
export type PortRange = PortSpan;

/** NS8's allocator bounds (the plan's preflight checks moves against the same ones). */
export const PORT_RANGE_START = NODE_PORT_BOUNDS.start;
export const PORT_RANGE_END = NODE_PORT_BOUNDS.end;

const ALLOCATE_SCRIPT = `
local field = ARGV[1]
local n = tonumber(ARGV[2])
local lo = tonumber(ARGV[3])
local hi = tonumber(ARGV[4])
local suffix = '/' .. ARGV[5]
local ps, pe = string.match(ARGV[6] or '', '^(%d+)-(%d+)$')
local cur = redis.call('HGET', KEYS[1], field)
local cs, ce
if cur then
  local s, e = string.match(cur, '^(%d+)-(%d+)$')
  if s then
    cs = tonumber(s)
    ce = tonumber(e)
    if (ce - cs + 1) == n then return cur end
  end
end
if n <= 0 then
  if cur then redis.call('HDEL', KEYS[1], field) end
  return ''
end
local all = redis.call('HGETALL', KEYS[1])
local used = {}
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if f ~= field and string.sub(f, -#suffix) == suffix then
    local s, e = string.match(v, '^(%d+)-(%d+)$')
    if s then table.insert(used, {tonumber(s), tonumber(e)}) end
  end
end
local start
-- No range yet but the instance already uses one (its environment, written by NS8 or before a
-- lost record): keep its first port when the ports from there are free.
if not cs and ps then
  cs = tonumber(ps)
  ce = tonumber(pe)
end
if cs and cs >= lo then
  -- Keep the first port: shrink in place, or grow in place when the ports after it are free.
  local last = cs + n - 1
  local free = last <= hi
  for _, r in ipairs(used) do
    if r[1] <= last and cs <= r[2] then free = false break end
  end
  if free then start = cs end
end
if not start then
  table.sort(used, function(a, b) return a[1] < b[1] end)
  start = lo
  for _, r in ipairs(used) do
    if r[1] - start >= n then break end
    if r[2] + 1 > start then start = r[2] + 1 end
  end
  if start + n - 1 > hi then return redis.error_reply('PORTS_EXHAUSTED no ' .. n .. ' free ports left in ' .. lo .. '-' .. hi) end
end
local val = start .. '-' .. (start + n - 1)
redis.call('HSET', KEYS[1], field, val)
local seq = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if start + n > seq then redis.call('SET', KEYS[2], tostring(start + n)) end
return val
`;

/** Parses `start-end`; undefined for anything else. */
export const parseRange = parsePortSpan;

/** `start-end`. */
export function formatRange(r: PortRange): string {
  return `${r.start}-${r.end}`;
}

/** Number of ports in a range. */
export const rangeSize = portSpanSize;

/** Field of the node ports hash for one instance and protocol. */
export function portsField(id: string, proto: PortProto): string {
  return `${id}/${proto}`;
}

/**
 * Allocates (or returns the already allocated) range of `demand` ports for an instance. A range of
 * another size keeps its first port (TCP_PORT) whenever it can: shrunk in place, or grown in place
 * when the ports after it are free; otherwise it moves to the first gap that fits. Demand 0 frees
 * and returns undefined. Atomic: concurrent callers on any number of connections never receive
 * overlapping ranges. Throws `ports_exhausted` when no gap of `demand` ports is left in the range
 * (the instance's current range, if any, is kept). Without a range yet, `prefer` (the ports the
 * instance's environment names) is kept when free: adopting an instance NS8 made does not move it.
 */
export async function allocatePorts(
  redis: Redis,
  node: number | string,
  id: string,
  proto: PortProto,
  demand: number,
  bounds: PortRange = { start: PORT_RANGE_START, end: PORT_RANGE_END },
  /** The range the instance already uses (see portsInEnvironment), kept when free. */
  prefer?: PortRange,
): Promise<PortRange | undefined> {
  const seqKey = proto === 'tcp' ? keys.tcpPortsSequence(node) : keys.udpPortsSequence(node);
  let reply: unknown;
  try {
    reply = await redis.eval(ALLOCATE_SCRIPT, 2, keys.nodePorts(node), seqKey, portsField(id, proto), String(demand), String(bounds.start), String(bounds.end), proto, prefer ? formatRange(prefer) : '');
  } catch (err) {
    const msg = (err as Error).message;
    if (/PORTS_EXHAUSTED/.test(msg)) {
      throw new Ns8ctlError('ports_exhausted', `${id}: cannot allocate ${demand} ${proto.toUpperCase()} port(s) on node ${node}: ${msg.replace(/^.*PORTS_EXHAUSTED /, '')}`);
    }
    throw new RedisError('redis_command_failed', `${id}: port allocation on node ${node} failed in Redis: ${msg}`, { cause: err });
  }
  return parseRange(String(reply));
}

/** Frees an instance's TCP and UDP ranges on a node (no-op when none). Returns what was freed. */
export async function freePorts(redis: Redis, node: number | string, id: string): Promise<string[]> {
  const key = keys.nodePorts(node);
  const fields = [portsField(id, 'tcp'), portsField(id, 'udp')];
  const res = await redis.multi().hmget(key, ...fields).hdel(key, ...fields).exec();
  const vals = (res?.[0]?.[1] as (string | null)[] | undefined) ?? [];
  return vals.filter((v): v is string => v !== null);
}

/** All ranges of a node: instance id -> {tcp?, udp?}. One round trip. */
export async function readNodePorts(redis: Redis, node: number | string): Promise<Map<string, { tcp?: PortRange; udp?: PortRange }>> {
  return parseNodePorts(await redis.hgetall(keys.nodePorts(node)));
}

/** Parses the node ports hash (see readNodePorts). */
export function parseNodePorts(h: Record<string, string>): Map<string, { tcp?: PortRange; udp?: PortRange }> {
  const out = new Map<string, { tcp?: PortRange; udp?: PortRange }>();
  for (const [field, value] of Object.entries(h)) {
    const m = /^(.+)\/(tcp|udp)$/.exec(field);
    const r = parseRange(value);
    if (!m || !r) continue;
    const cur = out.get(m[1]!) ?? {};
    cur[m[2] as PortProto] = r;
    out.set(m[1]!, cur);
  }
  return out;
}

/**
 * The port variables NS8's node add-module writes (ns8-core-facts §2): `TCP_PORT` always (first
 * port), `TCP_PORTS_RANGE` when more than one port, `TCP_PORTS` (comma list) when at most 8 ports
 * (demand 1 included, like the real core). `UDP_*` alike.
 */
export function portEnvironment(proto: PortProto, r: PortRange | undefined): Record<string, string> {
  if (!r) return {};
  const p = proto.toUpperCase();
  const n = rangeSize(r);
  const env: Record<string, string> = { [`${p}_PORT`]: String(r.start) };
  if (n > 1) env[`${p}_PORTS_RANGE`] = formatRange(r);
  if (n <= 8) env[`${p}_PORTS`] = Array.from({ length: n }, (_, i) => String(r.start + i)).join(',');
  return env;
}

/**
 * The range an environment's port variables name (`TCP_PORTS_RANGE`, else `TCP_PORT`, widened by
 * a contiguous `TCP_PORTS`), or undefined.
 */
export function portsInEnvironment(env: Record<string, string>, proto: PortProto): PortRange | undefined {
  const p = proto.toUpperCase();
  const range = parseRange(env[`${p}_PORTS_RANGE`]);
  if (range) return range;
  const first = Number(env[`${p}_PORT`]);
  if (!Number.isInteger(first) || first < 1 || first > 65535) return undefined;
  const list = (env[`${p}_PORTS`] ?? '').split(',').map(Number);
  const contiguous = list.length > 1 && list.every((v, i) => v === first + i);
  return { start: first, end: contiguous ? first + list.length - 1 : first };
}

/**
 * Keeps the node's port table true to instances NS8 runs there without ns8ctl (made in its UI,
 * before adoption): each instance of `cluster/module_node` on `node` that has no range yet gets
 * the ports of its environment reserved under its id (HSETNX, as NS8's port migration rebuilds
 * its table from the environments) and listed in `nodeForeignPorts`, so ns8ctl never hands them
 * out twice. A reservation whose instance left `cluster/module_node` is dropped; one whose
 * instance ns8ctl takes over becomes its allocation (see claimPorts). `except` is the instance
 * being allocated for (its own ports are its `prefer`). Returns what was reserved and dropped.
 */
export async function reserveForeignPorts(redis: Redis, node: number | string, except: string): Promise<{ reserved: string[]; dropped: string[] }> {
  const [placement, table, foreign] = await Promise.all([redis.hgetall(keys.moduleNode()), redis.hgetall(keys.nodePorts(node)), redis.smembers(keys.nodeForeignPorts(node))]);
  const known = new Set(Object.keys(table).map((f) => f.replace(/\/(tcp|udp)$/, '')));
  const here = Object.entries(placement).filter(([id, n]) => n === String(node) && id !== except && !known.has(id)).map(([id]) => id).sort();
  const reserved: string[] = [];
  if (here.length > 0) {
    const p = redis.pipeline();
    for (const id of here) p.hgetall(keys.moduleEnvironment(id));
    const envs = ((await p.exec()) ?? []).map(([err, v]) => (err ? {} : (v as Record<string, string>)));
    const tx = redis.multi();
    here.forEach((id, i) => {
      for (const proto of ['tcp', 'udp'] as const) {
        const r = portsInEnvironment(envs[i] ?? {}, proto);
        if (!r) continue;
        tx.hsetnx(keys.nodePorts(node), portsField(id, proto), formatRange(r)).sadd(keys.nodeForeignPorts(node), id);
        reserved.push(`${portsField(id, proto)}=${formatRange(r)}`);
      }
    });
    if (reserved.length > 0) await tx.exec();
  }
  const gone = foreign.filter((id) => placement[id] !== String(node)).sort();
  if (gone.length > 0) {
    await redis
      .multi()
      .hdel(keys.nodePorts(node), ...gone.flatMap((id) => [portsField(id, 'tcp'), portsField(id, 'udp')]))
      .srem(keys.nodeForeignPorts(node), ...gone)
      .exec();
  }
  return { reserved, dropped: gone };
}

/** The instance's ranges are its own from now on (no longer a reservation for NS8). */
export async function claimPorts(redis: Redis, node: number | string, id: string): Promise<void> {
  await redis.srem(keys.nodeForeignPorts(node), id);
}
