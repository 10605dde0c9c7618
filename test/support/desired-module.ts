/**
 * Writes a Module's desired state straight into Redis, the way `apply` leaves it, so node-agent
 * tests can set up (or change) what the agent reconciles without running the apply pipeline.
 */
import type { Redis } from 'ioredis';
import { keys } from '../../src/state/keys.js';

/** What {@link putDesiredModule} writes besides the desired object itself. */
export interface DesiredModuleOptions {
  /** The `generation` field; default 1. */
  generation?: number;
  /** The `source` field (the manifest file the object came from); default `test.yaml`. */
  source?: string;
  /** Further fields of the desired hash (e.g. `finalizers`, `deleting`), written as given. */
  fields?: Record<string, string>;
  /**
   * The module's UUID in the UUID hash. `set` overwrites; `ifAbsent` keeps a UUID already there
   * (so re-putting the same id across generations leaves it stable). Omitted: no UUID written.
   */
  uuid?: { set: string } | { ifAbsent: string };
  /** The node written to the module-node hash; omitted: that hash is left alone. */
  node?: number;
}

/**
 * Writes Module `id` with exactly `spec` (key order kept: callers put `node` where they want it)
 * as desired state: the desired hash (`object`, `generation`, `source`, `revision: ''`,
 * `applyset: 'default'`, plus `opts.fields`), the id in the Module index, and, when asked, its
 * UUID and node. All in one MULTI, so an agent already running never sees a half-written module.
 * Nothing else is touched: no status, no events, no notification.
 *
 * @throws what ioredis throws when Redis refuses or is gone.
 */
export async function putDesiredModule(redis: Redis, id: string, spec: Record<string, unknown>, opts: DesiredModuleOptions = {}): Promise<void> {
  const object = JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind: 'Module', metadata: { name: id }, spec });
  const tx = redis.multi();
  tx.hset(keys.desired('Module', id), { object, generation: String(opts.generation ?? 1), source: opts.source ?? 'test.yaml', revision: '', applyset: 'default', ...opts.fields });
  tx.sadd(keys.desiredIndex('Module'), id);
  if (opts.uuid && 'set' in opts.uuid) tx.hset(keys.moduleUuid(), id, opts.uuid.set);
  if (opts.uuid && 'ifAbsent' in opts.uuid) tx.hsetnx(keys.moduleUuid(), id, opts.uuid.ifAbsent);
  if (opts.node !== undefined) tx.hset(keys.moduleNode(), id, String(opts.node));
  const replies = await tx.exec();
  const failed = replies?.find(([err]) => err);
  if (!replies || failed) throw failed?.[0] ?? new Error(`putDesiredModule ${id}: transaction aborted`);
}

/**
 * Writes an object of another kind (`BackupDestination`, `BackupSchedule`, ...) as desired state,
 * the way `apply` leaves it: the desired hash and the kind's index, in one MULTI.
 */
export async function putDesiredObject(redis: Redis, kind: 'BackupDestination' | 'BackupSchedule', name: string, spec: Record<string, unknown>): Promise<void> {
  const object = JSON.stringify({ apiVersion: 'ns8ctl.nethserver.org/v1', kind, metadata: { name }, spec });
  await redis.multi().hset(keys.desired(kind, name), { object, generation: '1', source: 'test.yaml', revision: '', applyset: 'default' }).sadd(keys.desiredIndex(kind), name).exec();
}
