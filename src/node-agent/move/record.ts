/**
 * The record of a move (`spec.node` changed on an existing instance): one field per instance id
 * in the hash `ns8ctl/moves`, a JSON object. Apply writes `{from, to, state: "requested"}`; the
 * two node agents then advance it, each only from the state it expects (compare-and-set):
 *
 *   requested    -> source-ready  (source node: the volumes to send are listed)
 *   source-ready -> receiving     (target node: its rsync receiver listens at address:port)
 *   receiving    -> sent          (source node: live pass, services stopped, final pass)
 *   sent         -> done          (target node: data and environment in place, instance Ready)
 *
 * and the source node removes the field once it has cleaned its copy. The receiver's password is
 * kept apart, in `ns8ctl/secret/move` (field = instance id), readable by the admin and node agents.
 *
 * A clone (a new Module with `spec.cloneFrom`) goes through the same states in its own hash,
 * `ns8ctl/clones`, keyed by the new instance's id with `source` naming the instance copied: the
 * target's node agent writes it when it creates the instance, the source's node agent sends from
 * the running source (its services stopped only for the final pass, then started again), and the
 * target removes the record once the copy runs (`done` is never stored: nothing is left to clean).
 */
import type { Redis } from 'ioredis';
import { keys } from '../../state/keys.js';

export const MOVES_KEY = keys.moves();
export const CLONES_KEY = keys.clones();
export const MOVE_SECRETS_KEY = keys.moveSecrets();

export type MoveState = 'requested' | 'source-ready' | 'receiving' | 'sent' | 'done';

export interface MoveRecord {
  from: number;
  to: number;
  state: MoveState;
  /** A clone's source instance (only in `ns8ctl/clones`): the record's own id is the new instance. */
  source?: string;
  /** Volumes of the source, as shown under /srv/volumes (source-ready and later). */
  volumes?: string[];
  /** User units the source's module enabled (its `*.wants/` links): enabled on the target too, as NS8's clone does. */
  enabled?: string[];
  /** Where the receiver listens (receiving and later). */
  address?: string;
  port?: number;
  /** When the source stopped its services for the final pass (ms since epoch). */
  downtimeFrom?: number;
  /** A clone's source: how long its services were stopped for the final pass. */
  downtimeMs?: number;
  /** The source's last failed attempt to send (shown by the target while it waits); cleared by a pass that succeeds. */
  lastError?: string;
}

/** The hash a record lives in: a clone's (it names a source) or a move's. */
export function recordKey(mv: Pick<MoveRecord, 'source'>): string {
  return mv.source ? CLONES_KEY : MOVES_KEY;
}

const STATES: readonly MoveState[] = ['requested', 'source-ready', 'receiving', 'sent', 'done'];

/** The well-formed move (or clone) records of `ids`, or of every field when `ids` is not given. */
export function parseMoves(h: Record<string, string>, ids?: readonly string[]): Map<string, MoveRecord> {
  const out = new Map<string, MoveRecord>();
  for (const id of ids ?? Object.keys(h)) {
    const raw = h[id];
    if (!raw) continue;
    try {
      const m = JSON.parse(raw) as Partial<MoveRecord>;
      if (!Number.isInteger(m.from) || !Number.isInteger(m.to) || !STATES.includes(m.state as MoveState)) continue;
      if (m.source !== undefined && (typeof m.source !== 'string' || m.source === '' || m.source === id)) continue;
      // Redis' cjson writes an empty list back as {}: lists are lists of strings, or empty.
      const list = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);
      out.set(id, { ...(m as MoveRecord), volumes: list(m.volumes), enabled: list(m.enabled) });
    } catch {
      // not a record ns8ctl wrote: ignored
    }
  }
  return out;
}

const ADVANCE = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, r = pcall(cjson.decode, cur)
if not ok or type(r) ~= 'table' or r['state'] ~= ARGV[2] then return 0 end
local patch = cjson.decode(ARGV[3])
for k, v in pairs(patch) do if v == cjson.null then r[k] = nil else r[k] = v end end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
return 1
`;

/**
 * Moves the record of `id` (in `key`: the moves' hash unless given) from state `expect` to
 * `patch.state` with `patch`'s fields; false when it was not in `expect`. A field set to null is
 * removed from the record.
 */
export async function advanceMove(redis: Redis, id: string, expect: MoveState, patch: { [K in keyof MoveRecord]?: MoveRecord[K] | null } & { state: MoveState }, key: string = MOVES_KEY): Promise<boolean> {
  return Number(await redis.eval(ADVANCE, 1, key, id, expect, JSON.stringify(patch))) === 1;
}

/** Removes the record (in `key`: the moves' hash unless given) and the receiver's password of `id`. */
export async function clearMove(redis: Redis, id: string, key: string = MOVES_KEY): Promise<void> {
  await redis.multi().hdel(key, id).hdel(MOVE_SECRETS_KEY, id).exec();
}

/** Writes a clone record for `id` unless one exists; the record then in place. */
export async function openClone(redis: Redis, id: string, rec: MoveRecord): Promise<MoveRecord> {
  await redis.hsetnx(CLONES_KEY, id, JSON.stringify(rec));
  const raw = await redis.hget(CLONES_KEY, id);
  return parseMoves(raw ? { [id]: raw } : {}, [id]).get(id) ?? rec;
}
