import type { Redis } from 'ioredis';
import { KINDS, type Kind, type ManifestObject, type RemovalPolicy } from '../manifest/types.js';
import { emptyState, type ClusterState, type DeletionMark, type StoredObject } from './cluster-state.js';
import { RedisError } from '../errors.js';
import { keys } from './keys.js';

/** Extra names whose NS8 keys the planner needs even when no stored object names them. */
export interface ReadScope {
  modules?: Iterable<string>;
  repositories?: Iterable<string>;
  nodes?: Iterable<string>;
  /**
   * Module instance ids whose running image is read in the same round trip (see runningImagesOf):
   * the resolution step of the plan needs it for every desired Module.
   */
  instances?: Iterable<string>;
}

/** Running images read by readClusterState: the instance ids asked for, and the image of those that have one. */
interface RunningImages {
  read: ReadonlySet<string>;
  images: ReadonlyMap<string, string>;
}

const runningImagesRead = new WeakMap<ClusterState, RunningImages>();

/**
 * The image each instance of `ids` runs now, as readClusterState read it with `scope.instances`:
 * `IMAGE_URL` of `module/<id>/environment` (what was installed), else `imageUrl` of its status
 * hash (the agent's last target); instances with neither are absent. Undefined when some id was
 * not read (the caller reads them itself).
 */
export function runningImagesOf(state: ClusterState, ids: readonly string[]): ReadonlyMap<string, string> | undefined {
  const r = runningImagesRead.get(state);
  if (!r || !ids.every((id) => r.read.has(id))) return undefined;
  return r.images;
}

/**
 * The running image of instance `id` from its `imageUrl` (status) and `IMAGE_URL` (environment)
 * replies, the environment's preferred; either reply may be a Redis error.
 * @throws RedisError `redis_command_failed` naming the instance.
 */
export function runningImageOf(id: string, fromStatus: Reply, fromEnv: Reply): string | undefined {
  for (const [err] of [fromStatus, fromEnv]) {
    if (err) throw new RedisError('redis_command_failed', `reading the running image of ${id}: ${err.message}`, { cause: err });
  }
  const s = fromStatus[1];
  const e = fromEnv[1];
  return typeof e === 'string' && e ? e : typeof s === 'string' && s ? s : undefined;
}

/** `[error, value]` of one pipelined command. */
export type Reply = [Error | null, unknown];

function replies(res: Reply[] | null): unknown[] {
  if (!res) throw new RedisError('redis_pipeline_failed', 'Redis pipeline returned no replies');
  return res.map(([err, value]) => {
    if (err) throw new RedisError('redis_command_failed', `Redis refused a read: ${err.message}`, { cause: err });
    return value;
  });
}

/**
 * Parses a `deleting` field: JSON `{removalPolicy, by?, at?, why?}` (the older `{removalPolicy}`
 * form included). Unknown or malformed parts fall back to what is safe: `Preserve`, no by/at/why.
 */
export function parseDeletionMark(kind: Kind, id: string, raw: string): DeletionMark {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (err) {
    throw new RedisError('state_corrupt', `the deletion mark of ${kind}/${id} in ${keys.desired(kind, id)} is not valid JSON`, { cause: err });
  }
  const o = (v && typeof v === 'object' ? v : {}) as Record<string, unknown>;
  const mark: DeletionMark = { removalPolicy: o.removalPolicy === 'Delete' ? 'Delete' : ('Preserve' as RemovalPolicy) };
  for (const f of ['by', 'at', 'why'] as const) if (typeof o[f] === 'string' && o[f]) mark[f] = o[f];
  return mark;
}

/** Parses one desired-object hash (see keys.desired) into a StoredObject. */
export function parseStoredObject(kind: Kind, id: string, h: Record<string, string>): StoredObject | undefined {
  if (!h.object) return undefined;
  let object: ManifestObject;
  try {
    object = JSON.parse(h.object) as ManifestObject;
  } catch (err) {
    throw new RedisError('state_corrupt', `desired object ${kind}/${id} in ${keys.desired(kind, id)} is not valid JSON`, { cause: err });
  }
  const stored: StoredObject = {
    key: `${kind}/${id}`,
    object,
    objectJson: h.object,
    generation: Number(h.generation ?? 0),
    source: h.source ?? '',
    revision: h.revision ?? '',
    applySet: h.applyset ?? '',
    finalizers: (h.finalizers ?? '').split(' ').filter(Boolean),
  };
  if (h.deleting) {
    stored.deleting = parseDeletionMark(kind, id, h.deleting);
    stored.deletingJson = h.deleting;
  }
  return stored;
}

/**
 * Observes everything the planner needs in a constant number of round trips (three pipelines,
 * whatever the number of objects): desired objects of every kind, inventories, the NS8
 * bookkeeping keys of the modules, repositories and nodes named by stored objects or `scope`, and
 * the running image of the instances of `scope.instances` (runningImagesOf).
 */
export async function readClusterState(redis: Redis, scope: ReadScope = {}): Promise<ClusterState> {
  const first = redis.pipeline();
  for (const kind of KINDS) first.smembers(keys.desiredIndex(kind));
  first.smembers(keys.inventories());
  first.hgetall(keys.moduleNode());
  first.hgetall(keys.moduleUuid());
  first.hkeys(keys.moves());
  const r1 = replies((await first.exec()) as Reply[] | null);
  const ids = KINDS.map((_, i) => (r1[i] as string[]).sort());
  const applySets = (r1[KINDS.length] as string[]).sort();
  const state = emptyState();
  for (const [f, v] of Object.entries(r1[KINDS.length + 1] as Record<string, string>)) state.moduleNode.set(f, v);
  for (const [f, v] of Object.entries(r1[KINDS.length + 2] as Record<string, string>)) state.moduleUuid.set(f, v);
  for (const f of r1[KINDS.length + 3] as string[]) state.moving.add(f);

  const second = redis.pipeline();
  KINDS.forEach((kind, i) => ids[i]!.forEach((id) => second.hgetall(keys.desired(kind, id))));
  applySets.forEach((s) => second.smembers(keys.inventory(s)));
  const r2 = replies((await second.exec()) as Reply[] | null);
  let at = 0;
  KINDS.forEach((kind, i) => {
    for (const id of ids[i]!) {
      const parsed = parseStoredObject(kind, id, r2[at++] as Record<string, string>);
      if (parsed) state.objects.set(parsed.key, parsed);
    }
  });
  for (const s of applySets) state.inventory.set(s, new Set(r2[at++] as string[]));

  // NS8 keys for every module, repository and node in play.
  const modules = new Set(scope.modules ?? []);
  const repos = new Set(scope.repositories ?? []);
  const nodes = new Set(scope.nodes ?? []);
  for (const o of state.objects.values()) {
    if (o.object.kind === 'Module') {
      const m = (o.object.spec.module ?? o.object.spec.image ?? '').split('/').pop()?.replace(/[@:].*$/, '');
      if (m) modules.add(m);
    } else if (o.object.kind === 'Repository') repos.add(o.object.metadata.name);
    else if (o.object.kind === 'Node') nodes.add(String(o.object.spec.id));
  }
  const third = redis.pipeline();
  const mods = [...modules].sort();
  const rps = [...repos].sort();
  const nds = [...nodes].sort();
  mods.forEach((m) => third.get(keys.moduleSequence(m)));
  rps.forEach((r) => third.hgetall(keys.repository(r)));
  nds.forEach((n) => {
    third.get(keys.nodeUiName(n));
    third.smembers(keys.nodeFlags(n));
  });
  const instances = [...new Set(scope.instances ?? [])];
  for (const id of instances) third.hget(keys.moduleStatus(id), 'imageUrl').hget(keys.moduleEnvironment(id), 'IMAGE_URL');
  if (mods.length + rps.length + nds.length + instances.length > 0) {
    const all = (await third.exec()) as Reply[] | null;
    const own = mods.length + rps.length + 2 * nds.length;
    const r3 = replies(all && all.slice(0, own));
    const images = new Map<string, string>();
    instances.forEach((id, i) => {
      const image = runningImageOf(id, all![own + 2 * i]!, all![own + 2 * i + 1]!);
      if (image) images.set(id, image);
    });
    runningImagesRead.set(state, { read: new Set(instances), images });
    let j = 0;
    for (const m of mods) {
      const v = r3[j++] as string | null;
      if (v !== null) state.moduleSequence.set(m, Number(v));
    }
    for (const r of rps) {
      const h = r3[j++] as Record<string, string>;
      if (Object.keys(h).length > 0) state.repositories.set(r, h);
    }
    for (const n of nds) {
      const ui = r3[j++] as string | null;
      const flags = r3[j++] as string[];
      if (ui !== null) state.nodeUiName.set(n, ui);
      if (flags.length > 0) state.nodeFlags.set(n, flags.sort());
    }
  }
  return state;
}

/**
 * Ids of nodes NS8 has records of: `cluster/node_sequence` is the highest id handed out, and a node
 * exists when `node/<id>/vpn` does (NS8's add-node writes both). Two round trips; ids above 1000
 * are not probed.
 */
export async function readNodeRecords(redis: Redis): Promise<number[]> {
  const top = Math.min(Number((await redis.get(keys.nodeSequence())) ?? 0) || 0, 1000);
  if (top < 1) return [];
  const p = redis.pipeline();
  for (let i = 1; i <= top; i++) p.exists(keys.nodeVpn(i));
  const res = replies((await p.exec()) as Reply[] | null);
  return res.flatMap((v, i) => (v === 1 ? [i + 1] : []));
}
