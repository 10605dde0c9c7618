/**
 * Instance ids read from Redis become host paths in the node agent (records, layout, units, home
 * directories). Redis is writable by more than the controller (NS8's `default` user, a compromised
 * module), so an id is checked against the NS8 instance id rule (isValidObjectId, at most 32
 * characters of `[a-z0-9_-]` ending in a number) before the agent uses it: an invalid one is
 * skipped and reported as a `module-id-refused` Warning event (once per id per process, so a bad
 * key does not flood the event stream at every pass), never turned into a path.
 */
import type { Redis } from 'ioredis';
import { EventRecorder } from '../state/events.js';
import { isValidObjectId } from '../manifest/names.js';

/** Ids already reported by this process (bounded: a hostile index cannot grow it without limit). */
const reported = new Set<string>();
const REPORTED_MAX = 1000;

/**
 * The ids of `ids` that are valid instance ids, in their order. Each invalid one is reported
 * (Warning event `module-id-refused` on `node/<node>`, and `log`) and left out.
 * @param where what the ids were read from, for the message (`ns8ctl/desired/index/Module`).
 */
export async function validInstanceIds(redis: Redis, node: number, ids: readonly string[], where: string, log?: (line: string) => void): Promise<string[]> {
  const ok: string[] = [];
  for (const id of ids) {
    if (isValidObjectId('Module', id)) {
      ok.push(id);
      continue;
    }
    const key = `${where}\0${id}`;
    if (reported.has(key)) continue;
    if (reported.size < REPORTED_MAX) reported.add(key);
    const shown = JSON.stringify(id.slice(0, 80));
    const message = `node agent of node ${node} ignores instance id ${shown} read from ${where}: not a valid NS8 instance id (<module><N>, lowercase letters, digits, "-", "_", at most 32 characters); nothing on the host is touched for it`;
    log?.(`node-agent: ${message}`);
    await new EventRecorder(redis, log ? { log } : {}).record({ name: 'module-id-refused', type: 'Warning', object: `node/${node}`, message, data: { node, id: id.slice(0, 80), from: where } });
  }
  return ok;
}
