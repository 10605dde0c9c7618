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
 */
import type { Redis } from 'ioredis';
import { keys } from '../../state/keys.js';

export const MOVES_KEY = keys.moves();
export const MOVE_SECRETS_KEY = keys.moveSecrets();

export type MoveState = 'requested' | 'source-ready' | 'receiving' | 'sent' | 'done';

export interface MoveRecord {
  from: number;
  to: number;
  state: MoveState;
  /** Volumes of the source, as shown under /srv/volumes (source-ready and later). */
  volumes?: string[];
  /** User units the source's module enabled (its `*.wants/` links): enabled on the target too, as NS8's clone does. */
  enabled?: string[];
  /** Where the receiver listens (receiving and later). */
  address?: string;
  port?: number;
  /** When the source stopped its services for the final pass (ms since epoch). */
  downtimeFrom?: number;
}

const STATES: readonly MoveState[] = ['requested', 'source-ready', 'receiving', 'sent', 'done'];

/** The well-formed move records of `ids`. */
export function parseMoves(h: Record<string, string>, ids: readonly string[]): Map<string, MoveRecord> {
  const out = new Map<string, MoveRecord>();
  for (const id of ids) {
    const raw = h[id];
    if (!raw) continue;
    try {
      const m = JSON.parse(raw) as Partial<MoveRecord>;
      if (!Number.isInteger(m.from) || !Number.isInteger(m.to) || !STATES.includes(m.state as MoveState)) continue;
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
for k, v in pairs(patch) do r[k] = v end
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(r))
return 1
`;

/** Moves the record of `id` from state `expect` to `patch.state` with `patch`'s fields; false when it was not in `expect`. */
export async function advanceMove(redis: Redis, id: string, expect: MoveState, patch: Partial<MoveRecord> & { state: MoveState }): Promise<boolean> {
  return Number(await redis.eval(ADVANCE, 1, MOVES_KEY, id, expect, JSON.stringify(patch))) === 1;
}

/** Removes the record and the receiver's password of `id`. */
export async function clearMove(redis: Redis, id: string): Promise<void> {
  await redis.multi().hdel(MOVES_KEY, id).hdel(MOVE_SECRETS_KEY, id).exec();
}
