/**
 * Observe stage: reads what is, on the host and in Redis, without changing anything and (on an
 * unchanged node) without spawning a process: Redis in one pipeline per node, users from
 * /etc/passwd, images from container storage metadata, files and units from the file system.
 */
import { createHash } from 'node:crypto';
import { promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { RedisError } from '../errors.js';
import { keys } from '../state/keys.js';
import { parseEnvironment } from './environment-file.js';
import { findImage } from '../host/image-store.js';
import type { Owner } from './host/owner.js';
import { fileStamp } from './host/image-cache.js';
import type { PodmanHost } from './host/podman.js';
import { isStartableUnit, parseInstallSection, type SystemdHost, type UnitScope } from './host/systemd.js';
import { instancePaths, type HostLayout } from './layout.js';
import type { ModuleLabels, UnitsOwner } from './labels.js';
import { parseNodePorts, type PortRange } from './ports.js';
import { clusterDefaultInstanceKey, defaultInstanceModule, nodeDefaultInstanceKey } from './default-instance.js';
import { moduleAclUser } from './redis-acl.js';
import type { InstancePaths, InstanceRecord, ModuleStatus, ObservedInstance, PasswdEntry, UnitObservation } from './types.js';
import { parseStatus } from './status.js';
import { parseRestoreRequests, RESTORE_REQUESTS_KEY, type RestoreRequest } from './backup/restore-request.js';
import { CLONES_KEY, MOVES_KEY, parseMoves, type MoveRecord } from './move/record.js';

type Reply = [Error | null, unknown];

/** What one Redis pipeline tells about a node and a set of instances. */
export interface RedisSnapshot {
  ports: Map<string, { tcp?: PortRange; udp?: PortRange }>;
  tcpDemand: Record<string, string>;
  udpDemand: Record<string, string>;
  moduleNode: Record<string, string>;
  acl: Map<string, string>;
  env: Map<string, Record<string, string>>;
  flags: Map<string, string[]>;
  status: Map<string, ModuleStatus>;
  /** `cluster/authorizations/module/<id>` members, sorted. */
  authorizations: Map<string, string[]>;
  /** Built-in roles `module/<id>/roles/{owner,reader}` members, sorted. */
  roles: Map<string, { owner: string[]; reader: string[] }>;
  /** Default-instance keys read (`cluster/...` and `node/<node>/...` of each module asked for) -> value, null when missing. */
  defaults: Map<string, string | null>;
  /** Recorded restore requests (`ns8ctl restore`) by instance id. */
  restoreRequests: Map<string, RestoreRequest>;
  /** Move records (`ns8ctl/moves`) by instance id. */
  moves: Map<string, MoveRecord>;
  /** Every clone record (`ns8ctl/clones`) by the new instance's id: a source finds its own by `source`. */
  clones: Map<string, MoveRecord>;
}

/** NS8's SET of an instance's authorizations (label entries plus `self:selfadm`). */
export function authorizationsKey(id: string): string {
  return `cluster/authorizations/module/${id}`;
}

/**
 * Reads the node's ports, the demand hashes, ACL users, per instance its environment, flags,
 * status, authorizations and roles, and the default-instance keys of `modules` (module names):
 * one pipeline (one round trip) whatever the number of instances.
 */
export async function readRedisSnapshot(redis: Redis, node: number, ids: readonly string[], modules: readonly string[] = []): Promise<RedisSnapshot> {
  const p = redis.pipeline();
  p.hgetall(keys.nodePorts(node));
  p.hgetall(keys.tcpPortsDemand());
  p.hgetall(keys.udpPortsDemand());
  p.hgetall(keys.moduleNode());
  p.call('ACL', 'LIST');
  for (const id of ids) {
    p.hgetall(keys.moduleEnvironment(id));
    p.smembers(keys.moduleFlags(id));
    p.hgetall(keys.moduleStatus(id));
    p.smembers(authorizationsKey(id));
    p.smembers(`module/${id}/roles/owner`);
    p.smembers(`module/${id}/roles/reader`);
  }
  const defaultKeys = [...new Set(modules)].sort().flatMap((m) => [clusterDefaultInstanceKey(m), nodeDefaultInstanceKey(node, m)]);
  if (defaultKeys.length) p.mget(...defaultKeys);
  p.hgetall(RESTORE_REQUESTS_KEY);
  p.hgetall(CLONES_KEY);
  p.hgetall(MOVES_KEY);
  const res = (await p.exec()) as Reply[] | null;
  if (!res) throw new RedisError('redis_pipeline_failed', `observing node ${node}: Redis pipeline returned no replies`);
  const val = (i: number): unknown => {
    const [err, v] = res[i]!;
    if (err) throw new RedisError('redis_command_failed', `observing node ${node}: Redis refused a read: ${err.message}`, { cause: err });
    return v;
  };
  const acl = new Map<string, string>();
  for (const line of val(4) as string[]) {
    const m = /^user (\S+) /.exec(line);
    if (m) acl.set(m[1]!, line);
  }
  const snap: RedisSnapshot = {
    ports: parseNodePorts(val(0) as Record<string, string>),
    tcpDemand: val(1) as Record<string, string>,
    udpDemand: val(2) as Record<string, string>,
    moduleNode: val(3) as Record<string, string>,
    acl,
    env: new Map(),
    flags: new Map(),
    status: new Map(),
    authorizations: new Map(),
    roles: new Map(),
    defaults: new Map(),
    restoreRequests: parseRestoreRequests(val(res.length - 3) as Record<string, string>, ids),
    clones: parseMoves(val(res.length - 2) as Record<string, string>),
    moves: parseMoves(val(res.length - 1) as Record<string, string>, ids),
  };
  const per = 6;
  if (defaultKeys.length) {
    const values = val(5 + ids.length * per) as (string | null)[];
    defaultKeys.forEach((k, i) => snap.defaults.set(k, values[i] ?? null));
  }
  ids.forEach((id, i) => {
    snap.env.set(id, val(5 + i * per) as Record<string, string>);
    snap.flags.set(id, (val(6 + i * per) as string[]).sort());
    const st = parseStatus(id, val(7 + i * per) as Record<string, string>);
    if (st) snap.status.set(id, st);
    snap.authorizations.set(id, (val(8 + i * per) as string[]).sort());
    snap.roles.set(id, { owner: (val(9 + i * per) as string[]).sort(), reader: (val(10 + i * per) as string[]).sort() });
  });
  return snap;
}


/** Why a rootless user's home is unusable by the user, or undefined when it is fine. */
function homeUnusable(st: Stats | undefined, user: { uid: number; gid: number }): string | undefined {
  if (!st) return 'is missing';
  if (!st.isDirectory()) return 'is not a directory';
  if (st.uid !== user.uid || st.gid !== user.gid) return `belongs to ${st.uid}:${st.gid}`;
  if ((st.mode & 0o700) !== 0o700) return `has mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}, its owner cannot use it`;
  return undefined;
}

async function statOrUndefined(p: string): Promise<Stats | undefined> {
  try {
    return await fs.lstat(p);
  } catch {
    return undefined;
  }
}

async function readOrUndefined(p: string): Promise<string | undefined> {
  try {
    return await fs.readFile(p, 'utf8');
  } catch {
    return undefined;
  }
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Reads `.imageroot.lst` (NS8's list of extracted entries); undefined when missing. */
export async function readImagerootList(installDir: string): Promise<string[] | undefined> {
  const text = await readOrUndefined(path.join(installDir, '.imageroot.lst'));
  return text === undefined ? undefined : text.split('\n').filter(Boolean);
}

/** Everything the per-instance observer needs that is shared by the node. */
export interface ObserveContext {
  layout: HostLayout;
  podman: PodmanHost;
  systemd: SystemdHost;
  users: Map<string, PasswdEntry>;
  subids: Set<string>;
  /** Undefined when systemd runs. */
  systemdMissing: string | undefined;
  redis: RedisSnapshot;
  /** The node id (to find `node/<node>/default_instance/<module>` in the snapshot). */
  node?: number;
  /** Contents of the module agent's units (rootless agent.service, rootfull agent@.service); none: not managed. */
  agentUnits?: { rootless: string; rootfull: string };
}

/** The owner of an instance's images and processes; undefined while a rootless user is missing. */
export function ownerOf(id: string, rootfull: boolean, user: PasswdEntry | undefined): Owner | undefined {
  if (rootfull) return { kind: 'root' };
  return user ? { kind: 'user', name: id, uid: user.uid, gid: user.gid, home: user.home } : undefined;
}

/** The unit scope of an instance. */
export function scopeOf(id: string, rootfull: boolean, user: PasswdEntry | undefined): UnitScope | undefined {
  if (rootfull) return { kind: 'system' };
  return user ? { kind: 'user', user: id, uid: user.uid } : undefined;
}

/**
 * How a rootfull instance's unit file is installed and run: a template `x@.service` is installed
 * as is and run as `x@<id>.service` (the instance id as instance name, like NS8's agent@<id>);
 * any other file is installed and run as `<id>-<file>` unless its name already starts with the id.
 */
export function systemUnitNames(id: string, file: string): { file: string; name: string } {
  const tpl = /^(.+)@(\.[a-z]+)$/.exec(file);
  if (tpl) return { file, name: `${tpl[1]}@${id}${tpl[2]}` };
  const installed = file.startsWith(`${id}-`) || file.startsWith(`${id}.`) ? file : `${id}-${file}`;
  return { file: installed, name: installed };
}

/** Unit files of an instance as extracted from its image (rootfull: systemd/system, else systemd/user). */
export async function unitSourceDir(paths: InstancePaths, rootfull: boolean): Promise<string> {
  if (!rootfull) return paths.unitSourceDir;
  if (await statOrUndefined(paths.unitSourceDir)) return paths.unitSourceDir;
  return path.join(paths.installDir, 'systemd', 'user');
}

/**
 * Observes one instance. `labels` tells where to look (rootless or rootfull) and which service
 * images matter; `url` is the module image wanted.
 */
export async function observeInstance(
  ctx: ObserveContext,
  id: string,
  record: InstanceRecord | undefined,
  rootfull: boolean,
  url: string | undefined,
  labels: ModuleLabels | undefined,
  volumeBases: readonly string[] = [],
): Promise<ObservedInstance> {
  const user = ctx.users.get(id);
  const paths = instancePaths(ctx.layout, id, rootfull, user?.home);
  const owner = ownerOf(id, rootfull, user);
  const images = owner ? await ctx.podman.listImages(owner) : [];
  // The module image is in the node cache; an instance converged before the cache existed may
  // have it only in its owner's store.
  const cached = url ? await ctx.podman.cache.lookup(url) : undefined;
  const local = url ? (cached ?? findImage(images, url)) : undefined;
  const serviceImages: Record<string, boolean> = {};
  for (const svc of labels?.images ?? []) serviceImages[svc] = Boolean(findImage(images, svc));

  const [baseStat, installStat, uiStat, envText, envStat, agentText, agentStat, list] = await Promise.all([
    statOrUndefined(paths.base),
    statOrUndefined(paths.installDir),
    statOrUndefined(paths.uiDir),
    readOrUndefined(path.join(paths.stateDir, 'environment')),
    statOrUndefined(path.join(paths.stateDir, 'environment')),
    readOrUndefined(path.join(paths.stateDir, 'agent.env')),
    statOrUndefined(path.join(paths.stateDir, 'agent.env')),
    readImagerootList(paths.installDir),
  ]);

  const volumeDirs = await observeVolumeDirs(id, [...volumeBases, ...(record?.volumeBases ?? [])]);
  const missing = list ? await missingImagerootFiles(paths.installDir, list, cached?.stamps?.[labels?.imageroot ?? 'imageroot']) : [];

  const observed: ObservedInstance = {
    id,
    subids: ctx.subids.has(id),
    installDir: Boolean(installStat?.isDirectory()),
    baseExists: Boolean(baseStat),
    volumeDirs,
    serviceImages,
    imagerootIntact: Boolean(list) && missing.length === 0,
    imagerootMissing: list ? missing : ['.imageroot.lst'],
    uiPresent: Boolean(uiStat?.isDirectory()),
    envText: envText ?? '',
    ...observedRedis(ctx.redis, id),
    units: [],
  };
  if (record) observed.record = record;
  if (user) observed.user = user;
  if (user && !rootfull) {
    const why = homeUnusable(baseStat, user);
    if (why) observed.homeUnusable = why;
  }
  if (local) observed.localImage = { id: local.id, digest: local.digest };
  if (envText !== undefined) observed.envFile = parseEnvironment(envText);
  if (envStat) observed.envFileUid = envStat.uid;
  if (agentText !== undefined) observed.agentEnv = parseEnvironment(agentText);
  if (agentStat) {
    observed.agentEnvMode = agentStat.mode & 0o777;
    observed.agentEnvUid = agentStat.uid;
  }
  const aclLine = ctx.redis.acl.get(moduleAclUser(id));
  if (aclLine) observed.aclLine = aclLine;
  if (ctx.redis.moduleNode[id] !== undefined) observed.moduleNode = ctx.redis.moduleNode[id];
  const defaults = url && ctx.node !== undefined ? observedDefaults(ctx, ctx.node, url) : undefined;
  if (defaults) observed.defaultInstance = defaults;
  if (!ctx.systemdMissing && !rootfull) observed.linger = await ctx.systemd.lingerEnabled(id);
  observed.units = await observeUnits(ctx, id, paths, rootfull, user, agentText, labels?.units ?? 'agent');
  return observed;
}

/** Which `<base>/<id>` volume directories exist, per base (sorted, duplicates removed). */
async function observeVolumeDirs(id: string, bases: readonly string[]): Promise<Record<string, boolean>> {
  const out: Record<string, boolean> = {};
  for (const base of [...new Set(bases)].sort()) out[base] = Boolean((await statOrUndefined(path.join(base, id)))?.isDirectory());
  return out;
}

/**
 * Files of `.imageroot.lst` missing from the install dir, or edited there (`<file> (edited)`: its
 * size or mtime differs from the image's, when the node cache knows them); the first five.
 */
async function missingImagerootFiles(installDir: string, list: readonly string[], stamps: Record<string, string> | undefined): Promise<string[]> {
  const missing: string[] = [];
  for (const entry of list) {
    if (entry.endsWith('/') || entry.split('/').includes('..')) continue;
    const st = await statOrUndefined(path.join(installDir, entry));
    // A file of the image whose size or mtime differs from the image's was edited in place.
    const want = stamps?.[entry];
    const edited = st && want !== undefined && (!st.isFile() || fileStamp(st) !== want);
    if (!st || edited) {
      missing.push(st ? `${entry} (edited)` : entry);
      if (missing.length >= 5) break;
    }
  }
  return missing;
}

/** What the node's Redis snapshot says of the instance (environment mirror, ports, flags, grants). */
function observedRedis(redis: RedisSnapshot, id: string): Pick<ObservedInstance, 'envRedis' | 'ports' | 'flags' | 'authorizations' | 'roles' | 'portsDemand'> {
  return {
    envRedis: redis.env.get(id) ?? {},
    ports: redis.ports.get(id) ?? {},
    flags: redis.flags.get(id) ?? [],
    authorizations: redis.authorizations.get(id) ?? [],
    roles: redis.roles.get(id) ?? { owner: [], reader: [] },
    portsDemand: {
      ...(redis.tcpDemand[id] !== undefined ? { tcp: redis.tcpDemand[id] } : {}),
      ...(redis.udpDemand[id] !== undefined ? { udp: redis.udpDemand[id] } : {}),
    },
  };
}

/** NS8's default instances of the image's module, when the snapshot read them (the reconciler asks for each instance's module). */
function observedDefaults(ctx: ObserveContext, node: number, url: string): ObservedInstance['defaultInstance'] {
  const module = defaultInstanceModule(url);
  const c = ctx.redis.defaults.get(clusterDefaultInstanceKey(module));
  const n = ctx.redis.defaults.get(nodeDefaultInstanceKey(node, module));
  return c !== undefined && n !== undefined ? { module, cluster: c, node: n } : undefined;
}

/** `Type=oneshot` without `RemainAfterExit=yes`: inactive once it did its work, which is no failure. */
export function runsOnceAndExits(unitText: string): boolean {
  return /^\s*Type\s*=\s*oneshot\s*$/m.test(unitText) && !/^\s*RemainAfterExit\s*=\s*(yes|true|on|1)\s*$/im.test(unitText);
}

/**
 * A rootfull module's own system unit, by NS8's naming (ns8-crowdsec, ns8-netdata: the module's
 * create-module installs `<id>.service` or `<id>-<name>.service` in /etc/systemd/system).
 * `rootweb1` does not match `rootweb10.service`.
 */
export function isOwnSystemUnit(id: string, file: string): boolean {
  return file.startsWith(`${id}.`) || (file.startsWith(`${id}-`) && !file.includes('@'));
}

async function observeUnits(ctx: ObserveContext, id: string, paths: InstancePaths, rootfull: boolean, user: PasswdEntry | undefined, agentEnvText: string | undefined, unitsOwner: UnitsOwner): Promise<UnitObservation[]> {
  // A rootfull module that installs its own units (no ns8ctl.units=agent): they are watched where
  // the module put them, never installed by the agent.
  const installedByModule = rootfull && unitsOwner === 'module';
  const dir = installedByModule ? ctx.layout.systemUnitDir : await unitSourceDir(paths, rootfull);
  let names: string[];
  try {
    names = (await fs.readdir(dir, { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
  } catch {
    names = [];
  }
  if (installedByModule) names = names.filter((n) => isOwnSystemUnit(id, n));
  const scope = scopeOf(id, rootfull, user);
  const wantsDir = rootfull ? ctx.layout.systemUnitDir : paths.unitSourceDir;
  const out: UnitObservation[] = [];
  const unknown: UnitObservation[] = [];
  for (const file of names.filter((n) => /\.(service|socket|timer|path|target|mount)$/.test(n)).sort()) {
    const srcText = (await readOrUndefined(path.join(dir, file))) ?? '';
    const names = rootfull && !installedByModule ? systemUnitNames(id, file) : { file, name: file };
    const installedText = rootfull && !installedByModule ? await readOrUndefined(path.join(ctx.layout.systemUnitDir, names.file)) : srcText;
    const inst = parseInstallSection(srcText);
    const targets = [...inst.wantedBy.map((t) => `${t}.wants`), ...inst.requiredBy.map((t) => `${t}.requires`)];
    let enabled = targets.length > 0;
    for (const t of targets) if (!(await statOrUndefined(path.join(wantsDir, t, names.name)))) enabled = false;
    const u: UnitObservation = {
      name: names.name,
      file: names.file,
      fileHash: installedText === undefined ? '' : sha(installedText),
      wanted: inst.hasInstall && isStartableUnit(names.name),
      enabled,
      active: undefined,
    };
    if (runsOnceAndExits(srcText)) u.runsOnce = true;
    if (rootfull && !installedByModule) {
      u.source = path.join(dir, file);
      u.sourceHash = sha(srcText);
    }
    if (!ctx.systemdMissing && scope && u.wanted) {
      u.active = await ctx.systemd.activeFromCgroup(scope, names.name);
      if (u.active === undefined) unknown.push(u);
    }
    out.push(u);
  }
  // The module agent (NS8's agent.service / agent@<id>.service), run by the instance's systemd.
  if (ctx.agentUnits && !ctx.systemdMissing && scope) {
    const file = rootfull ? path.join(ctx.layout.systemUnitDir, 'agent@.service') : path.join(ctx.layout.userUnitDir, 'agent.service');
    const name = rootfull ? `agent@${id}.service` : 'agent.service';
    const installed = await readOrUndefined(file);
    const wants = path.join(rootfull ? ctx.layout.systemUnitDir : paths.unitSourceDir, rootfull ? 'multi-user.target.wants' : 'default.target.wants', name);
    const u: UnitObservation = {
      name,
      file: path.basename(file),
      fileHash: installed === undefined ? '' : sha(installed),
      wanted: true,
      enabled: Boolean(await statOrUndefined(wants)),
      active: await ctx.systemd.activeFromCgroup(scope, name),
      nodeLevel: { path: file, content: rootfull ? ctx.agentUnits.rootfull : ctx.agentUnits.rootless },
      extraHash: sha(agentEnvText ?? ''),
    };
    if (u.active === undefined) unknown.push(u);
    out.push(u);
  }
  if (unknown.length && scope) {
    const states = await ctx.systemd.isActive(
      scope,
      unknown.map((u) => u.name),
      `${id}: unit states`,
    );
    for (const u of unknown) u.active = states[u.name] === 'active';
  }
  return out;
}
