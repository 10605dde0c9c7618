/**
 * The node planner: a pure function (desired instance, what it asks of the host, what was
 * observed) -> ordered typed steps, each with its reason. No I/O, no clock. For an instance that
 * already matches, the plan is empty. Steps whose inputs are not known yet (the environment needs
 * the pulled image's id and the allocated ports) are left for the next round and named in
 * `waiting`; the reconciler applies a plan, observes again and re-plans until nothing is left.
 */
import type { MoveRecord } from './move/record.js';
import { createHash } from 'node:crypto';
import type { RemovalPolicy } from '../manifest/types.js';
import type { DeletionMark } from './removal-request.js';
import type { Ns8ctlError } from '../errors.js';
import { changedNames, renderEnvironment, sameEnvironment } from './environment-file.js';
import { moduleFlags, type ModuleLabels } from './labels.js';
import { managedEnvironment, mergeEnvironment } from './module-env.js';
import { rangeSize, type PortProto } from './ports.js';
import { aclLineMatches, moduleAclUser } from './redis-acl.js';
import { authorizationsToStore } from '../agent/authorizations.js';
import { NODE_AGENT_FINALIZER, type ImageFacts, type InstanceDesired, type NodeFacts, type ObservedInstance, type Step, type UnitObservation } from './types.js';

/** NS8's built-in roles of every instance: `owner` may run anything, `reader` the read actions. */
export const OWNER_ROLE = ['*'];
export const READER_ROLE = ['get-*', 'list-*', 'read-*', 'show-*'];

/**
 * What NS8 puts in an instance's agent.env (ns8-core-facts §3): PATH, PYTHONPATH, REDIS_USER,
 * REDIS_PASSWORD; plus REDIS_ADDRESS (`host:port`, NS8 has it in the node-wide agent.env) when
 * the node agent knows where its Redis is, so the module agent and its steps reach that Redis.
 */
export function agentEnvironment(installDir: string, password: string, id: string, redisAddress?: string): Record<string, string> {
  return {
    PATH: `${installDir}/bin:/usr/local/agent/pyenv/bin:/usr/local/agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
    PYTHONPATH: `${installDir}/pypkg`,
    ...(redisAddress ? { REDIS_ADDRESS: redisAddress } : {}),
    REDIS_USER: moduleAclUser(id),
    REDIS_PASSWORD: password,
  };
}

/** Volume base paths of a Module (values of spec.volumes), sorted, duplicates removed. */
export function volumeBasesOf(d: Pick<InstanceDesired, 'spec'>): string[] {
  return [...new Set(Object.values(d.spec.volumes ?? {}))].sort();
}

/** The result of planning one instance. */
export interface InstancePlan {
  steps: Step[];
  /** What later rounds will do once current steps are applied (`environment: waits for the image`). */
  waiting: string[];
  /**
   * Set when the instance cannot converge without a change of desired state or of the host; `code`
   * is an error code (its status reason comes from REASONS, reasons.ts).
   */
  blocked?: { code: string; message: string };
}

export interface ConvergeInput {
  desired: InstanceDesired;
  node: NodeFacts;
  /** The module image URL resolved for the spec. */
  imageUrl: string;
  labels: ModuleLabels;
  /** Facts of the image the labels came from (digest, id when local). */
  image: ImageFacts;
  observed: ObservedInstance;
  /** Install dir (for agent.env PATH): home/.config or /var/lib/nethserver/<id>. */
  installDir: string;
  /** The move record of the instance, when it is moving (`ns8ctl/moves`). */
  move?: MoveRecord;
  /** Move target while receiving: whether its rsync receiver still runs (a restarted agent starts it again). */
  receiverAlive?: boolean;
  /**
   * During an update: the `PREV_*` variables (previous image) written with the new image's
   * variables. Not managed: they stay in the file until the next update, as in NS8.
   */
  previousEnv?: Record<string, string>;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');

/** Unit record value: hash of the unit file and of the managed environment it was (re)started with. */
export function unitStamp(fileHash: string, envText: string): string {
  return `${fileHash}:${sha(envText)}`;
}

/** What the section planners of planConverge share: the input, the steps so far, what waits. */
interface Planning {
  i: ConvergeInput;
  id: string;
  rec: ObservedInstance['record'];
  waiting: string[];
  add: (s: Step) => void;
}

/** The environment section's result: the managed environment's text once it can be written. */
interface EnvironmentPlan {
  envText?: string;
  blocked?: InstancePlan['blocked'];
}

/**
 * Plans the steps that converge an instance (see module doc). Deterministic: the same input
 * gives the same steps in the same order.
 */
export function planConverge(i: ConvergeInput): InstancePlan {
  const { desired: d, observed: o, labels: l, node } = i;
  const id = d.id;
  const rec = o.record;
  const steps: Step[] = [];
  const waiting: string[] = [];
  const p: Planning = { i, id, rec, waiting, add: (s) => void steps.push(s) };

  if (rec?.rootfull !== undefined && rec.rootfull !== l.rootfull) {
    return {
      steps: [],
      waiting: [],
      blocked: {
        code: 'rootfull_changed',
        message: `${id} was created ${rec.rootfull ? 'rootfull' : 'rootless'} but image ${i.imageUrl} is ${l.rootfull ? 'rootfull' : 'rootless'} (org.nethserver.rootfull); an instance cannot switch in place: remove it and add a new one`,
      },
    };
  }

  if (rec?.removing) p.add({ id, kind: 'cancel-removal', reason: 'the Module is desired again: removal cancelled' });
  if (!d.finalizers.includes(NODE_AGENT_FINALIZER)) p.add({ id, kind: 'add-finalizer', reason: 'hold the Module until the node agent has cleaned the host' });
  planUserAndDirs(p);
  planImages(p);
  const portsOk = planPorts(p);
  const extracting = planExtraction(p);
  // The data of a restored instance comes first: its environment, units and create-module use it.
  if (planRestore(p, extracting)) return { steps, waiting };
  if (planMoveIn(p, extracting)) return { steps, waiting };
  const env = planEnvironment(p, portsOk);
  if (env.blocked) return { steps, waiting, blocked: env.blocked };
  planCredentials(p);
  const blocked = planFlagsAndGrants(p);
  if (blocked) return { steps, waiting, blocked };

  // ---- systemd ----
  if (node.systemdMissing) {
    // Reported by the status (Degraded: SystemdUnavailable); nothing to plan without a manager.
  } else if (extracting) {
    waiting.push('units: wait for the extraction');
  } else if (env.envText === undefined) {
    waiting.push('units: wait for the environment');
  } else {
    planUnits(id, o, l, env.envText, p.add);
  }

  // ---- NS8 lifecycle action owed by the module agent (create-module, update-module) ----
  // Once everything else is in place and the module agent runs (NS8 runs create-module last,
  // before module-added; update-module once the new image is in place).
  const owed = rec?.lifecycle;
  if (owed && owed.image === i.imageUrl && agentRunning(o) && steps.length === 0 && waiting.length === 0) {
    p.add({
      id,
      kind: 'run-lifecycle',
      action: owed.action,
      data: owed.action === 'create-module' ? { images: l.images, volumes: d.spec.volumes ?? {} } : { module_url: i.imageUrl, force: false },
      reason: `${owed.action} of ${i.imageUrl} through the module agent`,
    });
  }

  if (!rec?.announced && steps.length === 0 && waiting.length === 0) {
    p.add({ id, kind: 'publish-added', reason: 'announce cluster/event/module-added' });
  }
  if (rec?.move?.done && !rec.move.completed && steps.length === 0 && waiting.length === 0) {
    const m = rec.move;
    p.add({ id, kind: 'complete-move', from: m.from, ...(m.source ? { source: m.source } : {}), reason: m.source ? `cloned from ${m.source} on node ${m.from}: the copy runs here` : `moved from node ${m.from}: the instance runs here` });
  }
  return { steps, waiting };
}

/** The Unix user, its home, subordinate ids, install and volume dirs, linger. */
function planUserAndDirs(p: Planning): void {
  const { id, rec, add } = p;
  const { desired: d, observed: o, labels: l, node } = p.i;
  // ---- user and directories ----
  const rootless = !l.rootfull;
  if (rootless && !o.user) {
    add({ id, kind: 'create-user', reason: `Unix user ${id} does not exist`, ...(rec?.uid !== undefined ? { drift: `user ${id} removed` } : {}) });
  } else if (rootless && o.user && ((rec?.uid !== o.user.uid && o.baseExists) || o.homeUnusable)) {
    const why = o.homeUnusable ? `; the home ${o.homeUnusable}` : '';
    add({
      id,
      kind: 'chown-home',
      uid: o.user.uid,
      gid: o.user.gid,
      reason: `files in ${o.user.home} must belong to ${id} (uid ${o.user.uid}${rec?.uid !== undefined && rec.uid !== o.user.uid ? `, they were made for uid ${rec.uid}` : ''})${why}`,
      ...(o.homeUnusable && rec?.uid === o.user.uid ? { drift: `home of ${id} ${o.homeUnusable}` } : {}),
    });
  }
  // useradd gives the ranges; one killed half-way, or a hand edit, can leave a user without them.
  if (rootless && o.user && !o.subids) add({ id, kind: 'add-subids', reason: `${id} has no subuid or no subgid range (rootless podman needs both)`, ...(rec?.image ? { drift: `subordinate ids of ${id} removed` } : {}) });
  if (!o.installDir) add({ id, kind: 'create-install-dir', reason: 'install dir missing' });
  const bases = volumeBasesOf(d);
  const missingVolumes = bases.filter((b) => !o.volumeDirs[b]);
  const recordedVolumes = JSON.stringify(rec?.volumeBases ?? []) !== JSON.stringify([...new Set([...(rec?.volumeBases ?? []), ...bases])].sort());
  if (missingVolumes.length || recordedVolumes) {
    add({ id, kind: 'create-volume-dirs', bases, reason: missingVolumes.length ? `volume dirs missing: ${missingVolumes.map((b) => `${b}/${id}`).join(' ')}` : 'remember the volume dirs' });
  }
  if (rootless && !node.systemdMissing && o.linger === false) {
    add({ id, kind: 'enable-linger', reason: `session lingering of ${id} is off`, ...(rec?.units && o.user ? { drift: `linger of ${id} disabled` } : {}) });
  }

}

/** The module image and its service images, pulled by the instance's owner. */
function planImages(p: Planning): void {
  const { i, id, rec, add } = p;
  const { observed: o, labels: l } = p.i;
  // ---- images ----
  if (!o.localImage) {
    // Drift only when this very image was in place (pulled and extracted for this URL): the first
    // pull of an update's new image, which the desired state asked for, is not drift.
    const hadIt = rec?.extractedImageId !== undefined && rec.imageUrl === i.imageUrl && rec.image?.id === rec.extractedImageId && o.user;
    add({ id, kind: 'pull-image', url: i.imageUrl, reason: `image ${i.imageUrl} not present`, ...(hadIt ? { drift: `image ${i.imageUrl} removed` } : {}) });
  }
  for (const svc of l.images) {
    if (!o.serviceImages[svc]) add({ id, kind: 'pull-service-image', url: svc, reason: `service image ${svc} not present` });
  }

}

/** Port ranges and the cluster's ports demand; says per protocol whether the range is there. */
function planPorts(p: Planning): Record<PortProto, boolean> {
  const { id, add } = p;
  const { observed: o, labels: l } = p.i;
  // ---- ports ----
  // As NS8's update-module, a new image with a smaller demand (or none) frees nothing: the range
  // and TCP_PORT stay. A larger demand grows the range, keeping its first port when the next ports
  // are free (NS8 leaves that to the module, with allocate-ports; ns8ctl modules cannot call it).
  const portsOk: Record<PortProto, boolean> = { tcp: true, udp: true };
  for (const proto of ['tcp', 'udp'] as const) {
    const demand = proto === 'tcp' ? l.tcpPortsDemand : l.udpPortsDemand;
    const have = rangeSize(o.ports[proto]);
    if (have < demand) {
      portsOk[proto] = false;
      add({ id, kind: 'allocate-ports', proto, demand, reason: have === 0 ? `${demand} ${proto.toUpperCase()} port(s) demanded` : `${proto.toUpperCase()} demand is ${demand}, ${have} allocated: grow the range (its first port kept when the next ports are free)` });
    }
    const wantDemand = demand > 0 ? String(demand) : undefined;
    if (o.portsDemand[proto] !== wantDemand) add({ id, kind: 'set-ports-demand', proto, demand, reason: `cluster/${proto}_ports_demand must say ${demand}` });
  }

  return portsOk;
}

/** imageroot/ and ui/ of the image in place; true while the imageroot is (re-)extracted. */
function planExtraction(p: Planning): boolean {
  const { i, id, rec, add } = p;
  const { observed: o, labels: l } = p.i;
  // ---- extraction ----
  const imageId = o.localImage?.id;
  const rootStale = !imageId || rec?.extractedImageId !== imageId || !o.imagerootIntact;
  const uiStale = !imageId || rec?.uiImageId !== imageId || !o.uiPresent;
  const extracting = rootStale;
  if (rootStale || uiStale) {
    const drift = [
      imageId && rec?.extractedImageId === imageId && !o.imagerootIntact ? `files of ${l.imageroot}/ ${o.imagerootMissing.some((e) => e.endsWith(' (edited)')) ? 'missing or edited' : 'missing'}: ${o.imagerootMissing.join(', ')}` : '',
      imageId && rec?.uiImageId === imageId && !o.uiPresent ? 'UI dir removed' : '',
    ].filter(Boolean);
    const why = [
      rootStale ? (!imageId || rec?.extractedImageId !== imageId ? `${l.imageroot}/ of ${i.imageUrl} not extracted` : 'extracted files missing') : '',
      uiStale ? (o.uiPresent ? `${l.uiroot}/ of ${i.imageUrl} not extracted` : 'UI dir missing') : '',
    ].filter(Boolean);
    add({
      id,
      kind: 'extract-image',
      url: i.imageUrl,
      ...(rootStale ? { imageroot: l.imageroot } : {}),
      ...(uiStale ? { uiroot: l.uiroot } : {}),
      reason: why.join('; '),
      ...(drift.length ? { drift: drift.join('; ') } : {}),
    });
  }

  return extracting;
}

/**
 * A new instance's pending restore (`restoreFrom`, recorded at creation): once its user, dirs and
 * image are in place, the restore step. True while the restore is pending (the rest waits).
 */
function planRestore(p: Planning, extracting: boolean): boolean {
  const { id, rec, add, waiting } = p;
  const r = rec?.restore;
  if (!r || r.done) return false;
  const { observed: o, labels: l } = p.i;
  if (extracting || !o.installDir || (!l.rootfull && (!o.user || !o.subids)) || !o.localImage) {
    waiting.push(`restore: waits for the user, dirs and image before restoring ${r.from} from ${r.destination} (${r.snapshot})`);
    return true;
  }
  // An installed instance's services stop first (not its module agent): restic writes their files.
  const running = o.units.filter((u) => !u.nodeLevel && u.active === true).map((u) => u.name);
  if (running.length) add({ id, kind: 'stop-units', units: running, reason: `stop the services before restoring their data: ${running.join(' ')}` });
  const why = r.request ? `ns8ctl restore: snapshot ${r.snapshot} of ${r.from} from ${r.destination}` : `restoreFrom: the data of ${r.from}, snapshot ${r.snapshot} in ${r.destination}, before the instance starts`;
  add({ id, kind: 'restore-data', destination: r.destination, snapshot: r.snapshot, from: r.from, reason: why });
  return true;
}

/**
 * An instance moving here (move.ts), or a new one cloned from another instance: once its user,
 * dirs and image are in place, the receiver; once the source sent its final pass, the environment
 * imported. True while the data is not here yet (environment, units and lifecycle wait). The move
 * or clone is completed once nothing else is left to do (in planConverge's tail, `complete-move`).
 */
function planMoveIn(p: Planning, extracting: boolean): boolean {
  const { id, rec, add, waiting } = p;
  const m = rec?.move;
  if (!m || m.done) return false;
  const mv = p.i.move;
  const { observed: o, labels: l } = p.i;
  const what = m.source ? 'clone' : 'move';
  const of = m.source ? `${m.source} on node ${m.from}` : `node ${m.from}`;
  const src = m.source ? { source: m.source } : {};
  if (!mv || mv.to !== p.i.node.node || mv.source !== m.source) {
    waiting.push(`${what}: the ${what} record from ${of} is gone (cancelled?)`);
    return true;
  }
  if (extracting || !o.installDir || (!l.rootfull && (!o.user || !o.subids)) || !o.localImage) {
    waiting.push(`${what}: waits for the user, dirs and image before receiving the data of ${of}`);
    return true;
  }
  const failedLast = mv.lastError ? ` (its last attempt failed: ${mv.lastError})` : '';
  if (mv.state === 'requested') waiting.push(`${what}: waits for ${of} to list the data to send${failedLast}`);
  else if (mv.state === 'source-ready' || (mv.state === 'receiving' && p.i.receiverAlive === false)) add({ id, kind: 'receive-state', from: m.from, volumes: mv.volumes ?? [], ...src, reason: `${what} from ${of}: start the receiver for its state and volumes ${(mv.volumes ?? []).join(' ') || '(none)'}` });
  else if (mv.state === 'receiving') waiting.push(`${what}: ${of} sends its data (live pass, services stopped, final pass)${failedLast}`);
  else add({ id, kind: 'finish-receive', from: m.from, ...src, reason: `${what} from ${of}: final pass received; import its environment` });
  return true;
}

/** state/environment and its Redis mirror, once image and ports are known. */
function planEnvironment(p: Planning, portsOk: Record<PortProto, boolean>): EnvironmentPlan {
  const { i, id, rec, add, waiting } = p;
  const { desired: d, observed: o, labels: l, node } = p.i;
  // ---- environment ----
  let envText: string | undefined;
  if (!o.localImage) waiting.push('environment: waits for the image pull (IMAGE_ID, IMAGE_DIGEST)');
  else if (!portsOk.tcp || !portsOk.udp) waiting.push('environment: waits for the port allocation');
  else if (!d.uuid) waiting.push(`environment: cluster/module_uuid has no uuid for ${id} (written by apply)`);
  else {
    const digest = o.localImage.digest || i.image.digest;
    const managed = managedEnvironment({
      id,
      node: node.node,
      uuid: d.uuid,
      image: { url: i.imageUrl, id: o.localImage.id, digest, repoDigest: i.image.repoDigest && i.image.digest === digest ? i.image.repoDigest : repoDigestOf(i.imageUrl, digest) },
      serviceImages: l.images,
      ports: o.ports,
    });
    const wrote = rec?.managedEnv ?? {};
    const merged = { ...mergeEnvironment(o.envFile, managed, Object.keys(wrote)), ...(i.previousEnv ?? {}) };
    try {
      renderEnvironment(id, merged);
      // Units are restarted for changes of what the agent manages; variables the module's own
      // actions write are the module's business (its actions restart what they need).
      envText = renderEnvironment(id, managed);
    } catch (err) {
      const e = err as Ns8ctlError;
      return { blocked: { code: 'environment_value_invalid', message: e.message } };
    }
    const wantUid = p.i.labels.rootfull ? 0 : o.user?.uid;
    const recordStale = !sameEnvironment(wrote, managed);
    if (!sameEnvironment(o.envFile, merged) || (wantUid !== undefined && o.envFileUid !== wantUid) || recordStale) {
      // Drift: a value the agent wrote was changed by someone else (not: the agent wants a new value).
      const edited = o.envFile ? Object.keys(wrote).filter((n) => o.envFile![n] !== wrote[n]).sort() : [];
      add({
        id,
        kind: 'write-environment',
        env: merged,
        managed,
        dropped: Object.keys(wrote).filter((n) => !(n in managed)).sort(),
        extra: i.previousEnv ?? {},
        reason: o.envFile ? `state/environment differs: ${changedNames(o.envFile, merged).join(', ') || 'owner'}` : 'state/environment missing',
        ...(edited.length ? { drift: `environment ${edited.map((n) => `${n} ${n in o.envFile! ? `edited (was ${JSON.stringify(o.envFile![n])})` : 'deleted'}`).join(', ')}` } : !o.envFile && rec?.managedEnv ? { drift: 'state/environment deleted' } : {}),
      });
    }
    if (!sameEnvironment(o.envRedis, merged)) add({ id, kind: 'mirror-environment', env: merged, reason: `${`module/${id}/environment`} differs from state/environment` });
  }

  return envText === undefined ? {} : { envText };
}

/** state/agent.env and the Redis ACL user of the instance. */
function planCredentials(p: Planning): void {
  const { i, id, rec, add } = p;
  const { observed: o, node } = p.i;
  // ---- Redis credentials ----
  const password = o.agentEnv?.REDIS_PASSWORD ?? '';
  const wantAgent = agentEnvironment(i.installDir, password || 'x', id, node.redisAddress);
  const agentOk =
    Boolean(password) &&
    !/[\s\n]/.test(password) &&
    Object.entries(wantAgent).every(([k, v]) => k === 'REDIS_PASSWORD' || o.agentEnv?.[k] === v) &&
    (node.redisAddress !== undefined || o.agentEnv?.REDIS_ADDRESS === undefined) &&
    o.agentEnvMode === 0o600 &&
    (p.i.labels.rootfull ? o.agentEnvUid === 0 : o.agentEnvUid === o.user?.uid);
  if (!agentOk) add({ id, kind: 'write-agent-env', reason: o.agentEnv ? 'state/agent.env differs (user, path, Redis address, mode or owner)' : 'state/agent.env missing' });
  if (!agentOk || !aclLineMatches(o.aclLine, id, password)) {
    add({ id, kind: 'apply-acl', reason: o.aclLine ? `Redis ACL user module/${id} differs` : `Redis ACL user module/${id} missing`, ...(o.aclLine === undefined && rec?.aclLine ? { drift: `Redis ACL user module/${id} removed` } : {}) });
  }

}

/** module/<id>/flags, NS8's default instances, authorizations and built-in roles. */
function planFlagsAndGrants(p: Planning): InstancePlan['blocked'] {
  const { i, id, rec, add } = p;
  const { observed: o, labels: l, node } = p.i;
  // ---- flags ----
  const flags = moduleFlags(l);
  if (JSON.stringify(o.flags) !== JSON.stringify(flags)) add({ id, kind: 'set-flags', flags, reason: `module/${id}/flags must be ${flags.join(' ')}` });

  // ---- default instances (NS8 cluster add-module step 8: only the missing keys, only while the
  // instance is being added; a key emptied later, by the removal of the default instance, stays
  // empty as in NS8) ----
  const di = o.defaultInstance;
  if (di && !rec?.announced && (di.cluster === null || di.node === null)) {
    const missing = [di.cluster === null ? `cluster/default_instance/${di.module}` : '', di.node === null ? `node/${node.node}/default_instance/${di.module}` : ''].filter(Boolean);
    add({ id, kind: 'set-default-instance', module: di.module, cluster: di.cluster === null, node: di.node === null, reason: `${missing.join(' and ')} missing: ${id} becomes the default ${di.module} instance` });
  }

  // ---- authorizations and built-in roles (NS8 cluster add-module steps 16 and 18) ----
  let auths: string[];
  try {
    auths = authorizationsToStore(l.authorizations.join(' ')).sort();
  } catch (err) {
    return { code: 'image_label_invalid', message: `image ${i.imageUrl}: ${(err as Error).message}` };
  }
  if (JSON.stringify(o.authorizations) !== JSON.stringify(auths) || JSON.stringify(o.roles.owner) !== JSON.stringify(OWNER_ROLE) || JSON.stringify(o.roles.reader) !== JSON.stringify(READER_ROLE)) {
    add({ id, kind: 'set-authorizations', authorizations: auths, reason: `cluster/authorizations/module/${id} must be ${auths.join(' ')} (and the built-in roles present)` });
  }

  return undefined;
}

/** The instance's module agent unit (agent.service / agent@<id>) is running. */
function agentRunning(o: ObservedInstance): boolean {
  return o.units.some((u) => u.nodeLevel !== undefined && u.active === true);
}

/** destroy-module attempts before the removal goes on without it (as NS8's remove-module --force). */
export const DESTROY_ATTEMPTS = 3;

function repoDigestOf(url: string, digest: string): string {
  if (!digest) return '';
  const noDigest = url.replace(/@.*$/, '');
  const slash = noDigest.lastIndexOf('/');
  const colon = noDigest.lastIndexOf(':');
  return `${colon > slash ? noDigest.slice(0, colon) : noDigest}@${digest}`;
}

/** What a unit's stamp covers of its files: the unit file, plus agent.env for the module agent. */
function fileKey(u: UnitObservation): string {
  return u.extraHash ? `${u.fileHash}+${u.extraHash}` : u.fileHash;
}

function planUnits(id: string, o: ObservedInstance, l: Pick<ModuleLabels, 'rootfull' | 'units'>, envText: string, add: (s: Step) => void): void {
  const rootfull = l.rootfull;
  const rec = o.record;
  const recUnits = rec?.units ?? {};
  const agentFiles = o.units.filter((u) => u.nodeLevel && u.fileHash !== sha(u.nodeLevel.content));
  if (agentFiles.length) {
    for (const u of agentFiles) add({ id, kind: 'install-agent-unit', path: u.nodeLevel!.path, content: u.nodeLevel!.content, reason: `module agent unit ${u.nodeLevel!.path} ${u.fileHash ? 'differs' : 'missing'}` });
    add({ id, kind: 'daemon-reload', reason: 'module agent unit file changed' });
    return; // enable/start next round, with the installed file's hash
  }
  if (l.units === 'module') {
    planModuleUnits(id, o, recUnits, envText, add);
    return;
  }
  if (rootfull) {
    const install = o.units.filter((u) => u.sourceHash !== undefined && u.fileHash !== u.sourceHash).map((u) => ({ source: u.source!, name: u.file }));
    const present = new Set(o.units.filter((u) => !u.nodeLevel).map((u) => u.file));
    const remove = Object.keys(rec?.systemUnits ?? {}).filter((n) => !present.has(n));
    if (install.length || remove.length) {
      add({ id, kind: 'install-system-units', units: install, remove, reason: `system unit files to ${install.length ? `install: ${install.map((u) => u.name).join(' ')}` : ''}${remove.length ? ` remove: ${remove.join(' ')}` : ''}`.trim() });
      add({ id, kind: 'daemon-reload', reason: 'unit files changed' });
      return; // enable/start next round, with the installed files' hashes
    }
  }
  const wanted = o.units.filter((u) => u.wanted);
  const gone = Object.keys(recUnits).filter((n) => !wanted.some((u) => u.name === n));
  const fileChanged = wanted.filter((u) => recUnits[u.name] !== undefined && recUnits[u.name]!.split(':')[0] !== fileKey(u));
  const fresh = wanted.filter((u) => recUnits[u.name] === undefined);
  // A unit the agent has no stamp for but that already runs (enabled in a home kept from an
  // earlier removal and started by the user manager) runs with unknown values: restart it.
  const restart = wanted.filter((u) => (recUnits[u.name] !== undefined && recUnits[u.name] !== unitStamp(fileKey(u), envText)) || (recUnits[u.name] === undefined && u.active === true));
  const enable = wanted.filter((u) => !u.enabled);
  const start = wanted.filter((u) => !restart.includes(u) && (u.active === false || fresh.includes(u)));
  if (gone.length) add({ id, kind: 'stop-units', units: gone, reason: `units no longer in the image: ${gone.join(' ')}` });
  // Rootfull unit files arrive through install-system-units, which is followed by its own reload.
  if ((!rootfull && (fresh.length || fileChanged.length)) || gone.length) add({ id, kind: 'daemon-reload', reason: `unit files added or changed: ${[...fresh, ...fileChanged].map((u) => u.name).join(' ') || gone.join(' ')}` });
  addEnableStart(id, enable, start, recUnits, add);
  if (restart.length) add({ id, kind: 'restart-units', units: restart.map((u) => u.name), reason: `unit file or environment changed (or unknown): ${restart.map((u) => u.name).join(' ')}` });
  addRecordUnits(wanted, recUnits, envText, id, add);
}

/**
 * Units of a module that starts its own services (NS8's rule: the core enables and starts only
 * the module agent; the module's actions enable and start the rest, and its update-module.d
 * scripts restart them). The agent keeps the module agent enabled, running and restarted with
 * new credentials; reloads the user manager when extracted unit files change (as NS8's
 * update-module does); and starts a unit the module enabled that is found stopped (after a crash
 * or by hand), so the instance is Ready only while every unit the module enabled runs. It never
 * enables, stops or restarts the module's own units.
 */
function planModuleUnits(id: string, o: ObservedInstance, recUnits: Record<string, string>, envText: string, add: (s: Step) => void): void {
  const agentUnits = o.units.filter((u) => u.nodeLevel);
  const own = o.units.filter((u) => !u.nodeLevel);
  const running = [...agentUnits, ...own.filter((u) => u.wanted && u.enabled && !u.runsOnce)];
  const changedFiles = own.filter((u) => recUnits[u.name]?.split(':')[0] !== fileKey(u));
  if (changedFiles.length) add({ id, kind: 'daemon-reload', reason: `unit files added or changed: ${changedFiles.map((u) => u.name).join(' ')}` });
  const restart = agentUnits.filter((u) => recUnits[u.name] !== undefined && recUnits[u.name] !== unitStamp(fileKey(u), envText));
  const enable = agentUnits.filter((u) => !u.enabled);
  const start = running.filter((u) => !restart.includes(u) && u.active === false);
  addEnableStart(id, enable, start, recUnits, add);
  if (restart.length) add({ id, kind: 'restart-units', units: restart.map((u) => u.name), reason: `module agent credentials or unit changed: ${restart.map((u) => u.name).join(' ')}` });
  addRecordUnits(o.units, recUnits, envText, id, add);
}

function addEnableStart(id: string, enable: UnitObservation[], start: UnitObservation[], recUnits: Record<string, string>, add: (s: Step) => void): void {
  if (enable.length) {
    add({ id, kind: 'enable-units', units: enable.map((u) => u.name), reason: `units not enabled: ${enable.map((u) => u.name).join(' ')}`, ...(enable.some((u) => recUnits[u.name]) ? { drift: `units disabled: ${enable.filter((u) => recUnits[u.name]).map((u) => u.name).join(' ')}` } : {}) });
  }
  if (start.length) {
    const stopped = start.filter((u) => recUnits[u.name] !== undefined);
    add({ id, kind: 'start-units', units: start.map((u) => u.name), reason: `units not running: ${start.map((u) => u.name).join(' ')}`, ...(stopped.length ? { drift: `units stopped: ${stopped.map((u) => u.name).join(' ')}` } : {}) });
  }
}

function addRecordUnits(units: UnitObservation[], recUnits: Record<string, string>, envText: string, id: string, add: (s: Step) => void): void {
  const stamps = Object.fromEntries(units.map((u): [string, string] => [u.name, unitStamp(fileKey(u), envText)]).sort((a, b) => (a[0] < b[0] ? -1 : 1)));
  if (JSON.stringify(stamps) !== JSON.stringify(Object.fromEntries(Object.entries(recUnits).sort()))) {
    add({ id, kind: 'record-units', units: stamps, reason: 'remember unit files and environment the units run with' });
  }
}

export interface RemovalInput {
  id: string;
  policy: RemovalPolicy;
  /** Who asked for the removal, when and why (recorded with `mark-removing`). */
  request?: Omit<DeletionMark, 'removalPolicy'>;
  node: NodeFacts;
  rootfull: boolean;
  observed: ObservedInstance;
  /** True while a desired object holds the finalizer (it must be released at the end). */
  desiredPresent: boolean;
}

/**
 * Plans the removal of an instance: units stopped and disabled, linger off, processes ended,
 * user removed, data erased only with policy Delete, ports freed, ACL user and module keys removed,
 * UI dir removed, record forgotten, `module-removed` published, finalizer released. Every step is
 * idempotent, so a removal interrupted at any point resumes from the next run's observation.
 */
export function planRemoval(r: RemovalInput): InstancePlan {
  const { id, observed: o, node } = r;
  const steps: Step[] = [];
  const add = (s: Step): void => {
    steps.push(s);
  };
  const rec = o.record;
  if (rec && (!rec.removing || rec.removing.removalPolicy !== r.policy)) {
    const request = r.request && Object.keys(r.request).length ? { request: r.request } : {};
    add({ id, kind: 'mark-removing', removalPolicy: r.policy, ...request, reason: `removal requested (${r.policy === 'Delete' ? 'DATA DELETED' : 'data preserved'})` });
  }
  // NS8's remove-module runs destroy-module first, while the module agent still runs.
  if (rec && !rec.destroy?.done && !node.systemdMissing && agentRunning(o)) {
    add({ id, kind: 'run-destroy-module', data: { module_id: id, preserve_data: r.policy !== 'Delete' }, reason: `destroy-module through the module agent (attempt ${(rec.destroy?.attempts ?? 0) + 1} of ${DESTROY_ATTEMPTS})` });
  }
  if (!node.systemdMissing) {
    if (r.rootfull) {
      const units = o.units.filter((u) => u.fileHash !== '' && (u.enabled || u.active !== false)).map((u) => u.name);
      const files = [...new Set([...o.units.filter((u) => u.fileHash !== '' && !u.nodeLevel).map((u) => u.file), ...Object.keys(rec?.systemUnits ?? {})])].sort();
      if (units.length) {
        add({ id, kind: 'stop-units', units, reason: 'stop the instance units' });
        add({ id, kind: 'disable-units', units, reason: 'disable the instance units' });
      }
      if (files.length) {
        add({ id, kind: 'install-system-units', units: [], remove: files, reason: 'remove the instance unit files' });
        add({ id, kind: 'daemon-reload', reason: 'unit files removed' });
      }
    } else if (o.linger) {
      add({ id, kind: 'disable-linger', reason: `stop the user manager of ${id}` });
    }
  }
  if (!r.rootfull && o.user) {
    add({ id, kind: 'kill-processes', reason: `end the processes of ${id}` });
    add({ id, kind: 'remove-user', reason: `remove Unix user ${id}${r.policy === 'Delete' ? '' : ' (home kept)'}` });
  }
  const serviceImages = (rec?.image?.labels['org.nethserver.images'] ?? '').split(/\s+/).filter(Boolean);
  const refs = r.rootfull ? [rec?.image?.id, rec?.imageUrl, ...serviceImages, rec?.rootCopy] : [rec?.rootCopy];
  const rootRefs = [...new Set(refs.filter((x): x is string => Boolean(x)))];
  if (rootRefs.length || (r.rootfull && o.localImage)) add({ id, kind: 'remove-images', refs: rootRefs, reason: r.rootfull ? 'remove the module and service images' : 'remove the copy pulled as root to read the labels' });
  const volumeBases = Object.keys(o.volumeDirs).filter((b) => o.volumeDirs[b]);
  if (r.policy === 'Delete' && (o.baseExists || volumeBases.length)) add({ id, kind: 'erase-data', volumeBases, reason: `removalPolicy Delete: DATA DELETED (${[r.rootfull ? 'install dir' : 'home', ...volumeBases.map((b) => `${b}/${id}`)].join(', ')})` });
  if (o.uiPresent) add({ id, kind: 'remove-ui', reason: 'remove the UI dir' });
  if (o.ports.tcp || o.ports.udp) add({ id, kind: 'free-ports', reason: 'free the allocated ports' });
  if (o.aclLine) add({ id, kind: 'delete-acl', reason: `delete Redis ACL user module/${id}` });
  if (r.desiredPresent || rec || Object.keys(o.envRedis).length || o.flags.length || o.portsDemand.tcp || o.portsDemand.udp || o.authorizations.length) {
    add({ id, kind: 'delete-module-keys', reason: `delete module/${id}/*, its authorizations, ports demand and configuration record; recompute grants` });
  }
  if (rec || r.desiredPresent) add({ id, kind: 'publish-removed', reason: 'announce cluster/event/module-removed' });
  if (rec) add({ id, kind: 'forget-record', reason: 'forget the node agent record' });
  if (r.desiredPresent) add({ id, kind: 'release-finalizer', reason: 'host cleanup done: release the Module' });
  return { steps, waiting: [] };
}
