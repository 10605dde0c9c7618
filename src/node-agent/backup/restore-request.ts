/**
 * A recorded request to restore an installed instance's data (`ns8ctl restore <id>`): one field
 * per instance in the hash `ns8ctl/restore_requests`, a JSON object naming the destination, the
 * snapshot, whose backups (`from`, default the instance itself), who asked and when, and a request
 * id. The node agent of the instance's node carries it out on its next pass (its units stopped,
 * the snapshot restored, the units started again) and removes the field, only if it still holds
 * the request it carried out: a newer request made meanwhile is kept and runs next.
 */
import type { Redis } from 'ioredis';

/** The hash of pending restore requests, field = instance id. */
export const RESTORE_REQUESTS_KEY = 'ns8ctl/restore_requests';

export interface RestoreRequest {
  /** Request id (a UUID): the record of a carried-out request names it, so it runs once. */
  request: string;
  destination: string;
  snapshot: string;
  from: string;
  by?: string;
  at?: string;
}

/** The well-formed requests of `ids` (anything else in the hash is ignored). */
export function parseRestoreRequests(h: Record<string, string>, ids: readonly string[]): Map<string, RestoreRequest> {
  const out = new Map<string, RestoreRequest>();
  for (const id of ids) {
    const raw = h[id];
    if (!raw) continue;
    try {
      const r = JSON.parse(raw) as Partial<RestoreRequest>;
      if (typeof r.request === 'string' && typeof r.destination === 'string' && typeof r.snapshot === 'string') out.set(id, { request: r.request, destination: r.destination, snapshot: r.snapshot, from: typeof r.from === 'string' && r.from ? r.from : id, ...(r.by ? { by: r.by } : {}), ...(r.at ? { at: r.at } : {}) });
    } catch {
      // not a request ns8ctl wrote: ignored
    }
  }
  return out;
}

const CLEAR = `
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local ok, r = pcall(cjson.decode, cur)
if ok and type(r) == 'table' and r['request'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) return 1 end
return 0
`;

/** Removes the request of `id` if it is still request `request`. */
export async function clearRestoreRequest(redis: Redis, id: string, request: string): Promise<void> {
  await redis.eval(CLEAR, 1, RESTORE_REQUESTS_KEY, id, request);
}
