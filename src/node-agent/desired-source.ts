/**
 * Where the node agent reads what should run on its node, and how it holds and releases its
 * finalizer. The Redis implementation reads the desired-object hashes the declarative core writes
 * (`keys.desired('Module', id)`, index `keys.desiredIndex('Module')`) in two round trips whatever
 * the number of instances.
 */
import type { Redis } from 'ioredis';
import type { ModuleObject } from '../manifest/types.js';
import { RedisError } from '../errors.js';
import { parseStoredObject } from '../state/read-state.js';
import { keys } from '../state/keys.js';
import { validInstanceIds } from './id-guard.js';
import { parseDeletionMark } from './removal-request.js';
import { NODE_AGENT_FINALIZER, type InstanceDesired } from './types.js';

export interface DesiredSource {
  /** Modules whose `spec.node` is `node` (deleting ones included), sorted by id. */
  listForNode(node: number): Promise<InstanceDesired[]>;
  /**
   * Adds the `node-agent` finalizer before anything is created on the host. Returns false (and
   * adds nothing) when the object is gone or already being deleted.
   */
  addFinalizer(id: string): Promise<boolean>;
  /**
   * Releases the finalizer once host cleanup is done; when no finalizer is left on a deleting
   * object, the object, its NS8 bookkeeping (`cluster/module_node`, `cluster/module_uuid`) and the
   * controller's configuration record (`ns8ctl/configuration/module/<id>`) go, in one script: a
   * Module re-added with the same id starts with no configuration applied.
   */
  releaseFinalizer(id: string): Promise<void>;
}

type Reply = [Error | null, unknown];

const ADD_FINALIZER = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local del = redis.call('HGET', KEYS[1], 'deleting')
if del and del ~= '' then return 0 end
local fin = redis.call('HGET', KEYS[1], 'finalizers') or ''
for w in string.gmatch(fin, '%S+') do if w == ARGV[1] then return 1 end end
if fin == '' then fin = ARGV[1] else fin = fin .. ' ' .. ARGV[1] end
redis.call('HSET', KEYS[1], 'finalizers', fin)
return 1
`;

const RELEASE_FINALIZER = `
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local fin = redis.call('HGET', KEYS[1], 'finalizers') or ''
local rest = {}
for w in string.gmatch(fin, '%S+') do if w ~= ARGV[1] then table.insert(rest, w) end end
local del = redis.call('HGET', KEYS[1], 'deleting')
if #rest == 0 and del and del ~= '' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('DEL', KEYS[5])
  return 2
end
redis.call('HSET', KEYS[1], 'finalizers', table.concat(rest, ' '))
return 1
`;

/** Reads desired Modules from the Redis layout of src/state/keys.ts. */
export class RedisDesiredSource implements DesiredSource {
  constructor(
    private readonly redis: Redis,
    /** Injected by the lead's state module when available (`finalizeModule`); else the built-in script. */
    private readonly finalize?: (redis: Redis, id: string) => Promise<void>,
  ) {}

  async listForNode(node: number): Promise<InstanceDesired[]> {
    // Ids become host paths: an invalid one is reported and skipped (id-guard.ts).
    const ids = await validInstanceIds(this.redis, node, (await this.redis.smembers(keys.desiredIndex('Module'))).sort(), keys.desiredIndex('Module'));
    const p = this.redis.pipeline();
    for (const id of ids) p.hgetall(keys.desired('Module', id));
    p.hgetall(keys.moduleUuid());
    const res = (await p.exec()) as Reply[] | null;
    if (!res) throw new RedisError('redis_pipeline_failed', 'reading desired modules: Redis pipeline returned no replies');
    const uuids = (res[ids.length]?.[1] ?? {}) as Record<string, string>;
    const out: InstanceDesired[] = [];
    ids.forEach((id, i) => {
      const [err, h] = res[i]!;
      if (err) throw new RedisError('redis_command_failed', `reading desired module ${id}: ${err.message}`, { cause: err });
      const stored = parseStoredObject('Module', id, h as Record<string, string>);
      if (!stored || stored.object.kind !== 'Module') return;
      const spec = (stored.object as ModuleObject).spec;
      if (Number(spec.node) !== node) return;
      const labels = (stored.object as ModuleObject).metadata.labels;
      const d: InstanceDesired = { id, generation: stored.generation, spec, uuid: uuids[id] ?? '', finalizers: stored.finalizers, ...(labels ? { labels } : {}) };
      // The mark's who/when/why travel with it (older marks hold only the policy).
      const mark = stored.deleting ? (parseDeletionMark(stored.deleting) ?? { removalPolicy: 'Preserve' }) : undefined;
      if (mark) d.deleting = mark;
      out.push(d);
    });
    return out;
  }

  async addFinalizer(id: string): Promise<boolean> {
    return Number(await this.redis.eval(ADD_FINALIZER, 1, keys.desired('Module', id), NODE_AGENT_FINALIZER)) === 1;
  }

  async releaseFinalizer(id: string): Promise<void> {
    if (this.finalize) {
      await this.finalize(this.redis, id);
      return;
    }
    await this.redis.eval(RELEASE_FINALIZER, 5, keys.desired('Module', id), keys.desiredIndex('Module'), keys.moduleNode(), keys.moduleUuid(), keys.moduleConfiguration(id), NODE_AGENT_FINALIZER, id);
  }
}
