/**
 * The desired state as one document, for `ns8ctl backup-state` / `restore-state`: every desired
 * object's hash as it is (object, generation, source, revision, applyset, finalizers, deleting),
 * the inventories, the cluster epoch, and the NS8 and ns8ctl bookkeeping keys that go with them
 * (sequences, module_node, module_uuid, repositories, node records, module environments, port
 * tables, what configure-module last accepted). Reading it is read-only; restoring it is planned
 * here as data (planRestore, pure) and written by the one apply script (executeWrites).
 */
import type { Redis } from 'ioredis';
import { RedisError, RefusedError } from '../errors.js';
import { parseManifestText } from '../manifest/load.js';
import { KINDS, objectId, type Kind, type ManifestObject } from '../manifest/types.js';
import { validateManifests } from '../manifest/validate.js';
import { keys } from './keys.js';
import { scanKeys } from './scan.js';
import type { WriteOp } from './write-state.js';

/** STRING JSON `{"id","created"}`: the cluster epoch the node agents work under. */
export const CLUSTER_EPOCH_KEY = keys.clusterEpoch();

/** Version of the snapshot document (inside the encrypted archive). */
export const SNAPSHOT_VERSION = 1;

/** One desired object: its kind, id and every field of its hash. */
export interface SnapshotObject {
  kind: Kind;
  id: string;
  fields: Record<string, string>;
}

/** The desired state and its bookkeeping, as plain data. */
export interface StateSnapshot {
  version: typeof SNAPSHOT_VERSION;
  objects: SnapshotObject[];
  /** Apply set name -> `Kind/id` members. */
  inventories: Record<string, string[]>;
  /** Raw value of CLUSTER_EPOCH_KEY, or null. */
  epoch: string | null;
  /** STRING keys: counters (`*_sequence`, raised only) and node names. */
  strings: Record<string, string>;
  /** HASH keys, field -> value. */
  hashes: Record<string, Record<string, string>>;
  /** SET keys, sorted members. */
  sets: Record<string, string[]>;
}

/** Patterns of the keys a snapshot holds beyond desired objects and inventories, by type. */
const STRING_PATTERNS = ['cluster/module_sequence/*', 'cluster/node_sequence', 'node/*/ui_name', 'node/*/tcp_ports_sequence', 'node/*/udp_ports_sequence'];
const HASH_PATTERNS = [
  keys.moduleNode(),
  keys.moduleUuid(),
  'cluster/repository/*',
  keys.tcpPortsDemand(),
  keys.udpPortsDemand(),
  'node/*/vpn',
  'module/*/environment',
  'ns8ctl/node/*/ports',
  'ns8ctl/configuration/module/*',
  // Restic passwords: without them the snapshots cannot be read. Inside the encrypted payload only.
  keys.backupPassword('*'),
];
const SET_PATTERNS = ['node/*/flags', 'ns8ctl/node/*/foreign_ports'];
/** Of a configuration record only what configure-module accepted is kept (a pending task names a queue that a restore does not bring back). */
const CONFIGURATION_FIELDS = ['appliedHash', 'appliedGeneration', 'appliedTime', 'appliedTask'];

/**
 * Hashes the node agents rebuild from the hosts (the mirror of each environment file, port
 * allocations and demands): a restore only fills their missing fields; a value that differs is
 * the host's newer truth, kept and never a conflict.
 */
export function isHostDerivedKey(key: string): boolean {
  return /^module\/[^/]+\/environment$/.test(key) || /^ns8ctl\/node\/[^/]+\/ports$/.test(key) || key === keys.tcpPortsDemand() || key === keys.udpPortsDemand();
}

/** Counters are raised to at least the saved value, never lowered or reported as conflicts. */
export function isCounterKey(key: string): boolean {
  return /_sequence(\/[^/]+)?$/.test(key);
}

type Reply = [Error | null, unknown];

async function run(p: ReturnType<Redis['pipeline']>): Promise<unknown[]> {
  const res = (await p.exec()) as Reply[] | null;
  if (!res) throw new RedisError('redis_pipeline_failed', 'Redis pipeline returned no replies');
  return res.map(([err, v]) => {
    if (err) throw new RedisError('redis_command_failed', `Redis refused a read of the desired state: ${err.message}`, { cause: err });
    return v;
  });
}

/**
 * Reads the snapshot: desired objects of every kind (from their index sets), inventories, the
 * epoch, and the keys of STRING/HASH/SET_PATTERNS (SCAN, never KEYS). A key of another type than
 * its pattern's is left out and named in `skipped`. Not a point-in-time read: run it when no apply
 * runs (a concurrent apply may be half in it).
 * @throws RedisError when Redis refuses.
 */
export async function readStateSnapshot(redis: Redis): Promise<{ snapshot: StateSnapshot; skipped: string[] }> {
  const first = redis.pipeline();
  for (const kind of KINDS) first.smembers(keys.desiredIndex(kind));
  first.smembers(keys.inventories());
  first.get(CLUSTER_EPOCH_KEY);
  const r1 = await run(first);
  const ids = KINDS.map((_, i) => (r1[i] as string[]).sort());
  const sets = (r1[KINDS.length] as string[]).sort();
  const epoch = r1[KINDS.length + 1] as string | null;

  const byType = { string: [] as string[], hash: [] as string[], set: [] as string[] };
  const want = new Map<string, keyof typeof byType>();
  for (const [type, patterns] of [['string', STRING_PATTERNS], ['hash', HASH_PATTERNS], ['set', SET_PATTERNS]] as const) {
    for (const pattern of patterns) for (const k of await scanKeys(redis, pattern)) want.set(k, type);
  }
  const names = [...want.keys()].sort();
  const skipped: string[] = [];
  if (names.length) {
    const tp = redis.pipeline();
    for (const k of names) tp.type(k);
    (await run(tp)).forEach((t, i) => {
      const k = names[i]!;
      const expected = want.get(k)!;
      if (t === expected) byType[expected].push(k);
      else if (t !== 'none') skipped.push(`${k} (a ${String(t)}, expected a ${expected})`);
    });
  }

  const second = redis.pipeline();
  KINDS.forEach((kind, i) => ids[i]!.forEach((id) => second.hgetall(keys.desired(kind, id))));
  for (const s of sets) second.smembers(keys.inventory(s));
  for (const k of byType.string) second.get(k);
  for (const k of byType.hash) second.hgetall(k);
  for (const k of byType.set) second.smembers(k);
  const r2 = await run(second);
  let at = 0;
  const snapshot: StateSnapshot = { version: SNAPSHOT_VERSION, objects: [], inventories: {}, epoch, strings: {}, hashes: {}, sets: {} };
  KINDS.forEach((kind, i) => {
    for (const id of ids[i]!) {
      const fields = r2[at++] as Record<string, string>;
      if (fields.object !== undefined) snapshot.objects.push({ kind, id, fields });
    }
  });
  for (const s of sets) snapshot.inventories[s] = (r2[at++] as string[]).sort();
  for (const k of byType.string) {
    const v = r2[at++] as string | null;
    if (v !== null) snapshot.strings[k] = v;
  }
  for (const k of byType.hash) {
    let h = r2[at++] as Record<string, string>;
    if (k.startsWith('ns8ctl/configuration/module/')) h = Object.fromEntries(Object.entries(h).filter(([f]) => CONFIGURATION_FIELDS.includes(f)));
    if (Object.keys(h).length && (!k.startsWith('ns8ctl/configuration/module/') || h.appliedHash)) snapshot.hashes[k] = h;
  }
  for (const k of byType.set) {
    const m = (r2[at++] as string[]).sort();
    if (m.length) snapshot.sets[k] = m;
  }
  return { snapshot, skipped };
}

/** Number of things of each sort in a snapshot (the archive header shows them). */
export function snapshotCounts(s: StateSnapshot): Record<string, number> {
  const counts: Record<string, number> = {};
  const plural: Record<Kind, string> = { Module: 'modules', Repository: 'repositories', Node: 'nodes', BackupDestination: 'backup destinations', BackupSchedule: 'backup schedules' };
  for (const kind of KINDS) {
    const n = s.objects.filter((o) => o.kind === kind).length;
    // The backup kinds are counted only when there are some: a header without them reads as before.
    if (n > 0 || kind === 'Module' || kind === 'Repository' || kind === 'Node') counts[plural[kind]] = n;
  }
  counts.inventories = Object.keys(s.inventories).length;
  counts.keys = Object.keys(s.strings).length + Object.keys(s.hashes).length + Object.keys(s.sets).length + (s.epoch !== null ? 1 : 0);
  return counts;
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isStringMap = (v: unknown): v is Record<string, string> => isRecord(v) && Object.values(v).every((x) => typeof x === 'string');
const isStringList = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

/**
 * Checks a decoded snapshot: its shape, every desired object's JSON through the manifest schemas
 * and rules (the same as apply; Module nodes must be Node objects of the snapshot, node records
 * of the snapshot, or `knownNodes`), the object's kind and id matching its key, integer
 * generations and counters. `label` names the file in messages.
 * @throws RefusedError `state_snapshot_invalid` listing every problem.
 */
export function validateSnapshot(value: unknown, label: string, knownNodes: readonly number[] = []): StateSnapshot {
  const problems: string[] = [];
  if (!isRecord(value) || value.version !== SNAPSHOT_VERSION) {
    throw new RefusedError('state_snapshot_invalid', `${label}: not a version ${SNAPSHOT_VERSION} ns8ctl state snapshot`);
  }
  const v = value as Partial<Record<keyof StateSnapshot, unknown>>;
  if (!Array.isArray(v.objects)) problems.push('objects must be a list');
  if (!isRecord(v.inventories) || !Object.values(v.inventories).every(isStringList)) problems.push('inventories must map names to lists of Kind/id');
  if (v.epoch !== null && typeof v.epoch !== 'string') problems.push('epoch must be a string or null');
  if (!isStringMap(v.strings)) problems.push('strings must map keys to strings');
  if (!isRecord(v.hashes) || !Object.values(v.hashes).every(isStringMap)) problems.push('hashes must map keys to string maps');
  if (!isRecord(v.sets) || !Object.values(v.sets).every(isStringList)) problems.push('sets must map keys to lists of strings');
  if (problems.length) throw new RefusedError('state_snapshot_invalid', `${label}: ${problems.join('; ')}`);
  const s = value as unknown as StateSnapshot;
  for (const [k, n] of Object.entries(s.strings)) if (isCounterKey(k) && !/^[0-9]{1,15}$/.test(n)) problems.push(`${k}: counter ${JSON.stringify(n)} is not an integer`);

  const docs: { o: SnapshotObject; text: string }[] = [];
  s.objects.forEach((o, i) => {
    const where = `objects[${i}]`;
    if (!isRecord(o) || !(KINDS as readonly string[]).includes(o.kind as string) || typeof o.id !== 'string' || !isStringMap(o.fields) || typeof o.fields.object !== 'string') {
      problems.push(`${where}: needs kind (${KINDS.join(', ')}), id and string fields with an object`);
      return;
    }
    if (o.fields.generation !== undefined && !/^[0-9]{1,15}$/.test(o.fields.generation)) problems.push(`${o.kind}/${o.id}: generation ${JSON.stringify(o.fields.generation)} is not an integer`);
    let parsed: ManifestObject;
    try {
      parsed = JSON.parse(o.fields.object) as ManifestObject;
    } catch {
      problems.push(`${o.kind}/${o.id}: its object is not JSON`);
      return;
    }
    if (!isRecord(parsed) || parsed.kind !== o.kind || !isRecord(parsed.metadata) || !isRecord(parsed.spec) || objectId(parsed) !== o.id) {
      problems.push(`${o.kind}/${o.id}: its object is not a ${o.kind} named ${o.id}`);
      return;
    }
    docs.push({ o, text: o.fields.object });
  });
  const nodes = new Set<number>(knownNodes);
  for (const k of Object.keys(s.hashes)) {
    const m = /^node\/([1-9][0-9]*)\/vpn$/.exec(k);
    if (m) nodes.add(Number(m[1]));
  }
  const files = docs.map(({ o }) => `${label}#${o.kind}/${o.id}`);
  const loaded = docs.flatMap(({ text }, i) => parseManifestText(files[i]!, text).documents);
  const check = validateManifests({ documents: loaded, diagnostics: [], files }, { knownNodes: [...nodes] });
  for (const d of check.diagnostics) problems.push(`${d.file} ${d.pointer || '/'}: ${d.message}`);
  if (problems.length) throw new RefusedError('state_snapshot_invalid', `${label}: ${problems.length} problem(s); nothing was written:\n${problems.map((p) => `  ${p}`).join('\n')}`);
  return s;
}

/** What restoring a snapshot over the current state does. */
export interface RestorePlan {
  /** The writes, preconditions first (one per restored object: its current form). */
  ops: WriteOp[];
  /** Things that exist with another value: refused unless forced. */
  conflicts: string[];
  /** One line per thing restored. */
  changes: string[];
  /** Objects already equal (left alone). */
  unchanged: number;
}

const sameFields = (a: Record<string, string>, b: Record<string, string>): boolean => {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => b[k] === a[k]);
};

/**
 * Plans the restore of `saved` over `current` (both read or decoded snapshots). Pure.
 * - a desired object absent now is written with every saved field; one equal in every field is
 *   left alone; one whose `object` differs is a conflict (with `force`: replaced, other fields too);
 *   objects that exist only now are kept;
 * - inventory, set members: added (never removed); counters: raised to at least the saved value;
 * - other strings and hash fields: written when missing; a different value is a conflict
 *   (with `force`: replaced), except in hashes the node agents rebuild from the hosts
 *   (isHostDerivedKey), where only missing fields are written;
 * - the epoch: always the saved one (the node agents worked under it).
 * Every restored object gets an `expect` on its current form, so a concurrent apply makes the
 * whole script fail (ConflictError) instead of being overwritten.
 */
export function planRestore(saved: StateSnapshot, current: StateSnapshot, opts: { force: boolean }): RestorePlan {
  const out: RestorePlan = { ops: [], conflicts: [], changes: [], unchanged: 0 };
  const now = new Map<string, Record<string, string>>(current.objects.map((o) => [`${o.kind}/${o.id}`, o.fields]));
  const writes: WriteOp[] = [];
  for (const o of saved.objects) {
    const name = `${o.kind}/${o.id}`;
    const key = keys.desired(o.kind, o.id);
    const cur = now.get(name);
    if (cur && sameFields(cur, o.fields)) {
      out.unchanged++;
      continue;
    }
    if (cur && cur.object !== o.fields.object) {
      out.conflicts.push(`${name}: desired state has another ${o.kind} (generation ${cur.generation ?? '?'}, apply set ${cur.applyset || '-'}) than the file (generation ${o.fields.generation ?? '?'}, apply set ${o.fields.applyset || '-'})`);
      if (!opts.force) continue;
    }
    out.ops.push({ op: 'expect', key, object: cur?.object ?? '', label: name });
    const f = o.fields;
    writes.push(
      { op: 'del', key },
      { op: 'put', key, index: keys.desiredIndex(o.kind), id: o.id, object: f.object!, bump: false, source: f.source ?? '', revision: f.revision ?? '', applyset: f.applyset ?? '' },
    );
    for (const field of Object.keys(f).sort()) {
      if (!['object', 'source', 'revision', 'applyset'].includes(field)) writes.push({ op: 'hset', key, field, value: f[field]! });
    }
    out.changes.push(cur ? `${name} replaced` : `${name} restored`);
  }
  for (const [set, members] of Object.entries(saved.inventories)) {
    const have = new Set(current.inventories[set] ?? []);
    const missing = members.filter((m) => !have.has(m));
    if (!(set in current.inventories)) writes.push({ op: 'sadd', key: keys.inventories(), member: set });
    for (const m of missing) writes.push({ op: 'sadd', key: keys.inventory(set), member: m });
    if (missing.length) out.changes.push(`inventory ${set}: ${missing.length} member(s) added`);
  }
  if (saved.epoch !== null && saved.epoch !== current.epoch) {
    writes.push({ op: 'set', key: CLUSTER_EPOCH_KEY, value: saved.epoch });
    out.changes.push(current.epoch === null ? 'cluster epoch restored' : 'cluster epoch replaced by the saved one');
  }
  for (const [k, v] of Object.entries(saved.strings)) {
    const cur = current.strings[k];
    if (cur === v) continue;
    if (isCounterKey(k)) {
      if (cur !== undefined && Number(cur) >= Number(v)) continue;
      writes.push({ op: 'atleast', key: k, value: Number(v) });
      out.changes.push(`${k} raised to ${v}`);
      continue;
    }
    if (cur !== undefined) {
      out.conflicts.push(`${k}: is ${JSON.stringify(cur)}, the file says ${JSON.stringify(v)}`);
      if (!opts.force) continue;
    }
    writes.push({ op: 'set', key: k, value: v });
    out.changes.push(`${k} ${cur === undefined ? 'restored' : 'replaced'}`);
  }
  for (const [k, h] of Object.entries(saved.hashes)) {
    const cur = current.hashes[k] ?? {};
    const fields = Object.keys(h).filter((f) => cur[f] !== h[f]).sort();
    const derived = isHostDerivedKey(k);
    const differ = derived ? [] : fields.filter((f) => cur[f] !== undefined);
    // Field names only: hash values may be secrets (environments).
    if (differ.length) out.conflicts.push(`${k}: field(s) ${differ.join(', ')} differ from the file`);
    const take = opts.force && !derived ? fields : fields.filter((f) => cur[f] === undefined);
    for (const f of take) writes.push({ op: 'hset', key: k, field: f, value: h[f]! });
    if (take.length) out.changes.push(`${k}: ${take.length} field(s) restored`);
  }
  for (const [k, members] of Object.entries(saved.sets)) {
    const have = new Set(current.sets[k] ?? []);
    const missing = members.filter((m) => !have.has(m));
    for (const m of missing) writes.push({ op: 'sadd', key: k, member: m });
    if (missing.length) out.changes.push(`${k}: ${missing.length} member(s) added`);
  }
  out.ops.push(...writes);
  return out;
}

/**
 * Writes `epoch` to CLUSTER_EPOCH_KEY unless the key exists (SET NX). Returns `set`, or, when it
 * existed, `same` (same id) or `other`.
 * @throws RedisError when Redis refuses.
 */
export async function claimClusterEpoch(redis: Redis, epoch: { id: string; created: string }): Promise<'set' | 'same' | 'other'> {
  try {
    if ((await redis.set(CLUSTER_EPOCH_KEY, JSON.stringify({ id: epoch.id, created: epoch.created }), 'NX')) === 'OK') return 'set';
    const cur = await redis.get(CLUSTER_EPOCH_KEY);
    try {
      return (JSON.parse(cur ?? '') as { id?: unknown }).id === epoch.id ? 'same' : 'other';
    } catch {
      return 'other';
    }
  } catch (err) {
    throw new RedisError('redis_command_failed', `writing ${CLUSTER_EPOCH_KEY}: ${(err as Error).message}`, { cause: err });
  }
}
