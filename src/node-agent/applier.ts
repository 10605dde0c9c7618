/**
 * Apply stage: carries out one planned step on the host or in Redis. Each step is idempotent and
 * re-reads what it needs at the time it runs (users, files), so a step interrupted by a crash can
 * simply be planned and applied again. The agent's record is updated only after the effect.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError, toNs8ctlError } from '../errors.js';
import { channels, keys } from '../state/keys.js';
import { scanKeys } from '../state/scan.js';
import { writeFileAtomic } from './atomic-write.js';
import type { NodeAgentDeps } from './deps.js';
import { parseEnvironment, renderEnvironment } from './environment-file.js';
import { withFileLock } from '../host/file-lock.js';
import { claimDefaultInstance, releaseDefaultInstance } from './default-instance.js';
import { mergeEnvironment } from './module-env.js';
import { findImage } from './host/image-store.js';
import { asOwner, type Owner } from './host/owner.js';
import type { ExtractPart } from './host/podman.js';
import { readUsers } from './host/passwd.js';
import type { UnitScope } from './host/systemd.js';
import { instancePaths, userStorage } from './layout.js';
import type { ModuleLabels } from './labels.js';
import { authorizationsKey, ownerOf, readImagerootList, scopeOf } from './observe.js';
import { applyGrants } from '../agent/authorizations.js';
import { DESTROY_ATTEMPTS, OWNER_ROLE, READER_ROLE, agentEnvironment } from './planner.js';
import { runLifecycleAction } from './lifecycle.js';
import { allocatePorts, claimPorts, freePorts, portsInEnvironment, reserveForeignPorts } from './ports.js';
import { applyModuleAcl, deleteModuleAcl, generatePassword } from './redis-acl.js';
import type { InstancePaths, PasswdEntry, Step } from './types.js';
import { createHash } from 'node:crypto';

/** What a step needs to know about its instance. */
export interface StepContext {
  deps: NodeAgentDeps;
  node: number;
  id: string;
  rootfull: boolean;
  labels?: ModuleLabels;
  imageUrl?: string;
}

async function currentUser(ctx: StepContext): Promise<PasswdEntry | undefined> {
  return (await readUsers(ctx.deps.layout)).users.get(ctx.id);
}

async function paths(ctx: StepContext): Promise<{ p: InstancePaths; user: PasswdEntry | undefined }> {
  const user = ctx.rootfull ? undefined : await currentUser(ctx);
  return { p: instancePaths(ctx.deps.layout, ctx.id, ctx.rootfull, user?.home), user };
}

async function requireOwner(ctx: StepContext, what: string): Promise<{ owner: Owner; user: PasswdEntry | undefined; p: InstancePaths }> {
  const { p, user } = await paths(ctx);
  const owner = ownerOf(ctx.id, ctx.rootfull, user);
  if (!owner) throw new Ns8ctlError('user_missing', `${ctx.id}: ${what} needs Unix user ${ctx.id}, which does not exist`, { user: false });
  return { owner, user, p };
}

async function requireScope(ctx: StepContext, what: string): Promise<UnitScope> {
  const user = ctx.rootfull ? undefined : await currentUser(ctx);
  const scope = scopeOf(ctx.id, ctx.rootfull, user);
  if (!scope) throw new Ns8ctlError('user_missing', `${ctx.id}: ${what} needs Unix user ${ctx.id}, which does not exist`, { user: false });
  return scope;
}

/**
 * Makes `dir` owned by uid:gid. A new directory appears only once owned (made under a temporary
 * name, chowned, renamed into place), so a crash never leaves a root-owned 0700 directory in a
 * module user's home (its podman could not even stat `~/.config/containers`). An existing one is
 * chowned when its owner differs.
 */
async function mkdirOwned(dir: string, uid: number | undefined, gid: number | undefined, mode: number): Promise<void> {
  const owned = uid !== undefined && gid !== undefined;
  const fixOwner = async (): Promise<boolean> => {
    try {
      const st = await fs.stat(dir);
      if (owned && (st.uid !== uid || st.gid !== gid)) await fs.chown(dir, uid, gid);
      // Its owner must at least be able to enter it (useradd's home starts as mode 0).
      if ((st.mode & 0o700) !== 0o700) await fs.chmod(dir, (st.mode & 0o7777) | 0o700);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  };
  const tmp = `${dir}.ns8ctl-new`;
  await fs.rm(tmp, { recursive: true, force: true }); // left by a killed run
  if (await fixOwner()) return;
  await fs.mkdir(path.dirname(dir), { recursive: true, mode });
  await fs.mkdir(tmp, { mode });
  if (owned) await fs.chown(tmp, uid, gid);
  try {
    await fs.rename(tmp, dir);
  } catch (err) {
    // Made meanwhile by someone else (not empty): keep theirs, with the right owner.
    await fs.rm(tmp, { recursive: true, force: true });
    if (!(await fixOwner())) throw err;
  }
}

const purposeOf = (step: Step): string => `${step.id}: ${step.kind}`;

/** Applies one step. Throws an Ns8ctlError naming the instance and the step on failure. */
export async function applyStep(step: Step, ctx: StepContext): Promise<void> {
  const { deps, id, node } = ctx;
  const purpose = purposeOf(step);
  switch (step.kind) {
    case 'add-finalizer': {
      if (!(await deps.source.addFinalizer(id))) {
        throw new Ns8ctlError('module_deleting', `${id}: the Module is gone or being deleted; nothing is created for it`);
      }
      await deps.records.update(id, { node, ...(ctx.imageUrl ? { imageUrl: ctx.imageUrl } : {}) });
      return;
    }
    case 'cancel-removal':
      // A destroy-module that ran for the cancelled removal does not count for a later one.
      await deps.records.update(id, { removing: undefined, destroy: undefined });
      return;
    case 'create-user': {
      await deps.records.update(id, { node, rootfull: false });
      const kept = await fs.stat(path.join(deps.layout.homeBase, id)).catch(() => undefined);
      if (kept) await disableKeptUnits(path.join(deps.layout.homeBase, id));
      await deps.users.create(id, purpose);
      const user = await currentUser(ctx);
      if (!user) throw new Ns8ctlError('user_missing', `${purpose}: useradd succeeded but ${id} is not in ${deps.layout.passwdFile}`, { user: false });
      // A home kept from an earlier removal (data preserved) belongs to the old uid.
      const st = await fs.stat(user.home);
      if (st.uid !== user.uid) {
        await deps.users.chownTree(user.home, user.uid, user.gid, `${purpose} (home kept from before)`);
        await resetPodmanDatabase(user.home);
      }
      await deps.records.update(id, { uid: user.uid, gid: user.gid });
      return;
    }
    case 'chown-home': {
      const { p } = await paths(ctx);
      // A useradd killed before it finished the home leaves none, or a root-owned one with mode 0.
      await mkdirOwned(p.base, step.uid, step.gid, 0o700);
      await deps.users.chownTree(p.base, step.uid, step.gid, purpose);
      await resetPodmanDatabase(p.base);
      await deps.records.update(id, { uid: step.uid, gid: step.gid });
      return;
    }
    case 'add-subids':
      await deps.users.addSubids(id, purpose);
      return;
    case 'create-install-dir': {
      const { p, user } = await paths(ctx);
      if (ctx.rootfull) {
        await mkdirOwned(p.installDir, 0, 0, 0o700);
        await mkdirOwned(p.stateDir, 0, 0, 0o700);
      } else {
        if (!user) throw new Ns8ctlError('user_missing', `${purpose}: Unix user ${id} does not exist`, { user: false });
        await mkdirOwned(p.installDir, user.uid, user.gid, 0o700);
        await mkdirOwned(p.stateDir, user.uid, user.gid, 0o700);
      }
      return;
    }
    case 'create-volume-dirs': {
      const user = ctx.rootfull ? undefined : await currentUser(ctx);
      if (!ctx.rootfull && !user) throw new Ns8ctlError('user_missing', `${purpose}: Unix user ${id} does not exist`, { user: false });
      for (const base of step.bases) {
        if (!path.isAbsolute(base) || path.resolve(base) !== base.replace(/\/+$/, '') || base === '/') {
          throw new Ns8ctlError('volume_base_invalid', `${id}: volume base path ${JSON.stringify(base)} must be an absolute, normalised path other than /`);
        }
        if (!(await fs.stat(base).catch(() => undefined))?.isDirectory()) {
          throw new Ns8ctlError('volume_base_missing', `${id}: volume base path ${base} does not exist on node ${node}; mount the disk there first (NS8 accepts only known mount points)`);
        }
        await mkdirOwned(path.join(base, id), user?.uid ?? 0, user?.gid ?? 0, 0o700);
      }
      const rec = await deps.records.get(id);
      await deps.records.update(id, { volumeBases: [...new Set([...(rec?.volumeBases ?? []), ...step.bases])].sort() });
      return;
    }
    case 'enable-linger': {
      const user = await currentUser(ctx);
      if (!user) throw new Ns8ctlError('user_missing', `${purpose}: Unix user ${id} does not exist`, { user: false });
      await deps.systemd.enableLinger(id, user.uid, purpose);
      return;
    }
    case 'pull-image': {
      const { owner } = await requireOwner(ctx, 'pulling the image');
      await deps.podman.pull(owner, step.url, purpose);
      const facts = await deps.podman.inspectLocal(owner, step.url, `${purpose} (inspect)`);
      await deps.records.update(id, { image: facts, imageUrl: step.url, rootfull: ctx.rootfull });
      // The copy pulled as root only to read the labels is not needed once the user has its own.
      const rootCopy = (await deps.records.get(id))?.rootCopy;
      if (rootCopy && owner.kind === 'user') {
        await deps.podman.removeImages({ kind: 'root' }, [rootCopy], [], `${purpose} (remove the root copy)`);
        await deps.records.update(id, { rootCopy: undefined });
      }
      return;
    }
    case 'pull-service-image': {
      const { owner } = await requireOwner(ctx, 'pulling a service image');
      await deps.podman.pull(owner, step.url, purpose);
      return;
    }
    case 'extract-image':
      await extractImage(step, ctx);
      return;
    case 'allocate-ports': {
      // Instances NS8 runs here on its own keep their ports; this one keeps those it already has.
      const { reserved, dropped } = await reserveForeignPorts(deps.redis, node, id);
      if (reserved.length > 0) deps.log(`node-agent: ports of instances ns8ctl does not manage reserved on node ${node}: ${reserved.join(' ')}`);
      if (dropped.length > 0) deps.log(`node-agent: port reservations of instances NS8 removed dropped on node ${node}: ${dropped.join(' ')}`);
      const env = await deps.redis.hgetall(keys.moduleEnvironment(id));
      await allocatePorts(deps.redis, node, id, step.proto, step.demand, undefined, portsInEnvironment(env, step.proto));
      await claimPorts(deps.redis, node, id);
      return;
    }
    case 'set-ports-demand': {
      const key = step.proto === 'tcp' ? keys.tcpPortsDemand() : keys.udpPortsDemand();
      if (step.demand > 0) await deps.redis.hset(key, id, String(step.demand));
      else await deps.redis.hdel(key, id);
      return;
    }
    case 'write-environment': {
      const { p, user } = await paths(ctx);
      const file = path.join(p.stateDir, 'environment');
      const owner = { uid: user?.uid ?? 0, gid: user?.gid ?? 0 };
      // Under NS8's `.environment.lock` (the agent's set_env takes it too): re-read, merge, write.
      await withFileLock(path.join(p.stateDir, '.environment.lock'), async () => {
        const current = parseEnvironment(await fs.readFile(file, 'utf8').catch(() => ''));
        const env = { ...mergeEnvironment(current, step.managed, step.dropped), ...step.extra };
        await writeFileAtomic(file, renderEnvironment(id, env), { mode: 0o644, ...owner });
      }, { owner });
      await deps.records.update(id, { managedEnv: step.managed });
      return;
    }
    case 'mirror-environment': {
      const key = keys.moduleEnvironment(id);
      const tx = deps.redis.multi().del(key);
      if (Object.keys(step.env).length) tx.hset(key, step.env);
      await tx.exec();
      return;
    }
    case 'write-agent-env': {
      const { p, user } = await paths(ctx);
      const file = path.join(p.stateDir, 'agent.env');
      let old: Record<string, string> = {};
      try {
        old = parseEnvironment(await fs.readFile(file, 'utf8'));
      } catch {
        /* missing: a new password */
      }
      const password = old.REDIS_PASSWORD && /^[A-Za-z0-9_-]{16,}$/.test(old.REDIS_PASSWORD) ? old.REDIS_PASSWORD : generatePassword();
      const text = renderEnvironment(id, agentEnvironment(p.installDir, password, id, deps.redisAddress));
      await writeFileAtomic(file, text, { mode: 0o600, uid: user?.uid ?? 0, gid: user?.gid ?? 0 });
      return;
    }
    case 'apply-acl': {
      const { p } = await paths(ctx);
      const env = parseEnvironment(await fs.readFile(path.join(p.stateDir, 'agent.env'), 'utf8'));
      if (!env.REDIS_PASSWORD) throw new Ns8ctlError('agent_env_invalid', `${purpose}: ${path.join(p.stateDir, 'agent.env')} has no REDIS_PASSWORD`, { user: false });
      const line = await applyModuleAcl(deps.redis, id, env.REDIS_PASSWORD);
      await deps.records.update(id, { aclLine: line });
      return;
    }
    case 'set-flags': {
      const key = keys.moduleFlags(id);
      const tx = deps.redis.multi().del(key);
      if (step.flags.length) tx.sadd(key, ...step.flags);
      await tx.exec();
      return;
    }
    case 'set-authorizations': {
      const tx = deps.redis.multi().del(authorizationsKey(id));
      if (step.authorizations.length) tx.sadd(authorizationsKey(id), ...step.authorizations);
      tx.del(`module/${id}/roles/owner`).sadd(`module/${id}/roles/owner`, ...OWNER_ROLE);
      tx.del(`module/${id}/roles/reader`).sadd(`module/${id}/roles/reader`, ...READER_ROLE);
      await tx.exec();
      await applyGrants(deps.redis);
      return;
    }
    case 'set-default-instance': {
      const set = await claimDefaultInstance(deps.redis, id, node, step.module, step);
      // `<module>@node` / `<module>@cluster` grants of other instances now resolve to this one.
      if (set.length) await applyGrants(deps.redis);
      return;
    }
    case 'install-system-units': {
      const installed: Record<string, string> = { ...((await deps.records.get(id))?.systemUnits ?? {}) };
      for (const u of step.units) {
        const text = await fs.readFile(u.source, 'utf8');
        await writeFileAtomic(path.join(deps.layout.systemUnitDir, u.name), text, { mode: 0o644, uid: 0, gid: 0 });
        installed[u.name] = createHash('sha256').update(text).digest('hex');
      }
      // A template file (x@.service) may serve other instances too: keep it while one records it.
      const others = [...(await deps.records.list()).values()].filter((r) => r.id !== id);
      for (const name of step.remove) {
        if (!others.some((r) => r.systemUnits?.[name] !== undefined)) await fs.rm(path.join(deps.layout.systemUnitDir, name), { force: true });
        delete installed[name];
      }
      await deps.records.update(id, { systemUnits: installed });
      return;
    }
    case 'install-agent-unit':
      await fs.mkdir(path.dirname(step.path), { recursive: true });
      await writeFileAtomic(step.path, step.content, { mode: 0o644, uid: 0, gid: 0 });
      return;
    case 'daemon-reload':
      await deps.systemd.daemonReload(await requireScope(ctx, 'daemon-reload'), purpose);
      return;
    case 'enable-units':
      await deps.systemd.enable(await requireScope(ctx, 'enabling units'), step.units, purpose);
      return;
    case 'disable-units':
      await deps.systemd.disable(await requireScope(ctx, 'disabling units'), step.units, purpose);
      return;
    case 'start-units': {
      const scope = await requireScope(ctx, 'starting units');
      await deps.systemd.start(scope, step.units, purpose);
      await verifyActive(ctx, scope, step.units, purpose);
      return;
    }
    case 'restart-units': {
      const scope = await requireScope(ctx, 'restarting units');
      await deps.systemd.restart(scope, step.units, purpose);
      await verifyActive(ctx, scope, step.units, purpose);
      return;
    }
    case 'stop-units':
      await deps.systemd.stop(await requireScope(ctx, 'stopping units'), step.units, purpose);
      return;
    case 'record-units':
      await deps.records.update(id, { units: step.units });
      return;
    case 'publish-added':
      await deps.redis.publish(channels.moduleAdded, JSON.stringify({ module: id, node }));
      await deps.records.update(id, { announced: true });
      return;
    case 'run-lifecycle': {
      const owed = (await deps.records.get(id))?.lifecycle ?? { action: step.action, image: ctx.imageUrl ?? '' };
      try {
        const outcome = await runLifecycleAction(deps.redis, id, step.action, step.data, {
          timeoutMs: deps.lifecycleTimeoutMs,
          ...(owed.taskId ? { taskId: owed.taskId } : {}),
          onSubmit: async (taskId) => void (await deps.records.update(id, { lifecycle: { ...owed, taskId } })),
        });
        if (outcome === 'not_defined') deps.log(`node-agent: ${id}: the module has no ${step.action} action: nothing to run`);
      } catch (err) {
        // A failed task is submitted anew next time; one still queued or running is waited for.
        if (toNs8ctlError(err).code === 'lifecycle_action_failed') await deps.records.update(id, { lifecycle: { action: owed.action, image: owed.image } });
        throw err;
      }
      await deps.records.update(id, { lifecycle: undefined });
      return;
    }
    case 'remove-old-images': {
      // As NS8's 95cleanup_images: an image still in use is left (podman refuses; not an error).
      const { owner } = await requireOwner(ctx, 'removing the previous images');
      await deps.podman.removeImages(owner, step.refs, [], purpose);
      return;
    }
    // ---- removal ----
    case 'mark-removing':
      await deps.records.update(id, { removing: { ...(step.request ?? {}), removalPolicy: step.removalPolicy } });
      return;
    case 'run-destroy-module':
      await destroyModule(step, ctx);
      return;
    case 'disable-linger': {
      const user = await currentUser(ctx);
      await deps.systemd.disableLinger(id, user?.uid ?? -1, purpose);
      return;
    }
    case 'kill-processes':
      await deps.users.killProcesses(id, purpose);
      return;
    case 'remove-user': {
      const user = await currentUser(ctx);
      await deps.users.remove(id, purpose);
      // Rootless podman's runtime dirs when no systemd provides /run/user/<uid>: a later user
      // with the same uid must not inherit them.
      if (user) {
        for (const dir of [`/tmp/podman-run-${user.uid}`, `/tmp/containers-user-${user.uid}`]) {
          const st = await fs.lstat(dir).catch(() => undefined);
          if (st?.isDirectory() && st.uid === user.uid) await fs.rm(dir, { recursive: true, force: true });
        }
      }
      return;
    }
    case 'erase-data': {
      const { p } = await paths(ctx);
      const targets = [{ dir: p.base, parent: ctx.rootfull ? deps.layout.rootfullBase : deps.layout.homeBase }, ...step.volumeBases.map((b) => ({ dir: path.join(b, id), parent: b }))];
      for (const t of targets) {
        const dir = path.resolve(t.dir);
        if (path.dirname(dir) !== path.resolve(t.parent) || path.basename(dir) !== id) {
          throw new Ns8ctlError('erase_refused', `${purpose}: refusing to erase ${dir}: it is not ${path.join(t.parent, id)}`, { user: false });
        }
        await deps.users.removeTree(dir, purpose);
      }
      return;
    }
    case 'remove-images':
      await deps.podman.removeImages({ kind: 'root' }, step.refs, ctx.rootfull ? [`ns8ctl-extract-${id}`] : [], purpose);
      return;
    case 'free-ports':
      await freePorts(deps.redis, node, id);
      return;
    case 'delete-acl':
      await deleteModuleAcl(deps.redis, id);
      return;
    case 'delete-module-keys':
      await deleteModuleKeys(ctx);
      return;
    case 'remove-ui': {
      const { p } = await paths(ctx);
      await fs.rm(p.uiDir, { recursive: true, force: true });
      await fs.rm(`${p.uiDir}.ns8ctl-new`, { recursive: true, force: true });
      return;
    }
    case 'forget-record':
      await deps.records.remove(id);
      return;
    case 'publish-removed':
      await deps.redis.publish(channels.moduleRemoved, JSON.stringify({ module: id, node }));
      return;
    case 'release-finalizer':
      await deps.source.releaseFinalizer(id);
      return;
  }
}

/**
 * destroy-module before removal. A failure stops the removal (retried with backoff) until
 * DESTROY_ATTEMPTS attempts failed; then the removal goes on without it, as NS8's remove-module
 * --force does, with a warning: a module whose destroy-module is broken cannot block its removal.
 */
async function destroyModule(step: Extract<Step, { kind: 'run-destroy-module' }>, ctx: StepContext): Promise<void> {
  const { deps, id } = ctx;
  const before = (await deps.records.get(id))?.destroy ?? { attempts: 0 };
  try {
    const outcome = await runLifecycleAction(deps.redis, id, 'destroy-module', step.data, {
      timeoutMs: deps.lifecycleTimeoutMs,
      ...(before.taskId ? { taskId: before.taskId } : {}),
      onSubmit: async (taskId) => void (await deps.records.update(id, { destroy: { ...before, taskId } })),
    });
    if (outcome === 'not_defined') deps.log(`node-agent: ${id}: the module has no destroy-module action: nothing to run`);
    await deps.records.update(id, { destroy: { attempts: before.attempts + 1, done: true } });
  } catch (err) {
    const e = toNs8ctlError(err);
    const attempts = before.attempts + 1;
    const taskId = e.code === 'task_timeout' ? (await deps.records.get(id))?.destroy?.taskId : undefined;
    if (attempts >= DESTROY_ATTEMPTS) {
      deps.log(`node-agent: ${id}: destroy-module failed ${attempts} times, removing the instance without it: ${e.message}`);
      await deps.records.update(id, { destroy: { attempts, done: true } });
      return;
    }
    await deps.records.update(id, { destroy: { attempts, ...(taskId ? { taskId } : {}) } });
    throw e;
  }
}

/**
 * A home kept from an earlier removal still has the units' `.wants/` symlinks: once linger is on,
 * the user manager would start them with the old environment (old ports) before the agent has
 * written the new one. They are removed; the agent enables the units again when it starts them.
 */
async function disableKeptUnits(home: string): Promise<void> {
  const dir = path.join(home, '.config', 'systemd', 'user');
  const entries = await fs.readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isDirectory() || !/\.(wants|requires)$/.test(e.name)) continue;
    for (const link of await fs.readdir(path.join(dir, e.name), { withFileTypes: true }).catch(() => [])) {
      if (link.isSymbolicLink()) await fs.rm(path.join(dir, e.name, link.name), { force: true });
    }
  }
}

/**
 * Rootless podman keeps its runtime paths (`/tmp/podman-run-<uid>` or `/run/user/<uid>`) in its
 * database in the user's storage: after the user was recreated with another uid those paths are
 * someone else's and every podman command fails. Removing the database resets them; images (in
 * containers/storage) are kept, stale container records of the old user are dropped.
 */
async function resetPodmanDatabase(home: string): Promise<void> {
  const libpod = path.join(userStorage(home), 'libpod');
  await fs.rm(path.join(libpod, 'bolt_state.db'), { force: true });
  await fs.rm(path.join(libpod, 'db.sql'), { force: true });
}

async function verifyActive(ctx: StepContext, scope: UnitScope, units: string[], purpose: string): Promise<void> {
  // A Type=simple unit reports active at once and may fail a moment later: it must stay active
  // for about 1.5 s (then a unit restarting on failure shows as activating or failed).
  let states: Record<string, string> = {};
  for (let i = 0; i < 12; i++) {
    states = await ctx.deps.systemd.isActive(scope, units, `${purpose} (check)`);
    if (units.every((u) => states[u] === 'active') && i >= 5) return;
    if (units.some((u) => states[u] === 'failed')) break;
    await ctx.deps.delay(300);
  }
  const bad = units.filter((u) => states[u] !== 'active');
  if (!bad.length) return;
  const why = await Promise.all(bad.map((u) => ctx.deps.systemd.describe(scope, u, `${purpose} (describe)`)));
  throw new Ns8ctlError('unit_failed', `${ctx.id}: unit ${bad.join(', ')} did not start: ${why.join('; ')}`, { user: false });
}

async function deleteModuleKeys(ctx: StepContext): Promise<void> {
  const { redis } = ctx.deps;
  const id = ctx.id;
  const found = await scanKeys(redis, `module/${id}/*`);
  const tx = redis.multi();
  if (found.length) tx.del(...found);
  tx.hdel(keys.tcpPortsDemand(), id);
  tx.hdel(keys.udpPortsDemand(), id);
  tx.del(keys.moduleStatus(id));
  tx.del(authorizationsKey(id));
  // What configure-module accepted belongs to this instance: a later one with the same id is
  // configured again (also for orphans, which have no desired object whose release would drop it).
  tx.del(keys.moduleConfiguration(id));
  await tx.exec();
  // NS8's remove-module: default_instance keys naming the instance go (nothing is re-pointed).
  await releaseDefaultInstance(redis, id);
  // Grants given by or to the instance go with it.
  await applyGrants(redis);
}

/** Removes entries of an old `.imageroot.lst` that the new extraction no longer has. */
async function removeStale(ctx: StepContext, owner: Owner, installDir: string, oldList: string[], newList: string[], purpose: string): Promise<void> {
  const keep = new Set(newList);
  const stale = oldList.filter((e) => !keep.has(e) && e !== '' && !e.startsWith('/') && !e.split('/').includes('..'));
  if (!stale.length) return;
  const files = stale.filter((e) => !e.endsWith('/'));
  // Deepest directories first, so parents empty out before they are tried.
  const dirs = stale.filter((e) => e.endsWith('/')).sort((a, b) => b.split('/').length - a.split('/').length);
  // As the module user for rootless instances: the install dir is theirs, and root must not
  // follow links a module could have planted there.
  const script = 'cd "$1" && shift && for f in "$@"; do case "$f" in */) rmdir -- "$f" 2>/dev/null || true;; *) rm -f -- "$f";; esac; done';
  const { argv, opts } = asOwner(owner, ['sh', '-c', script, 'sh', installDir, ...files, ...dirs]);
  await ctx.deps.runner.run(argv, { ...opts, purpose: `${purpose} (remove files gone from the image)`, mutating: true });
}

async function extractImage(step: Extract<Step, { kind: 'extract-image' }>, ctx: StepContext): Promise<void> {
  const { deps, id } = ctx;
  const purpose = purposeOf(step);
  const { owner, user, p } = await requireOwner(ctx, 'extracting the image');
  const local = findImage(await deps.podman.listImages(owner), step.url);
  if (!local) throw new Ns8ctlError('image_not_found', `${purpose}: image ${step.url} is not present for ${owner.kind === 'root' ? 'root' : id}`, { user: false });
  const parts: ExtractPart[] = [];
  if (step.imageroot) {
    await mkdirOwned(p.installDir, user?.uid ?? 0, user?.gid ?? 0, 0o700);
    parts.push({ root: step.imageroot, dest: p.installDir, tarAsOwner: owner.kind === 'user' });
  }
  // The UI goes next to the old dir and is swapped in, as NS8's update-module does: never a half-old UI.
  const fresh = `${p.uiDir}.ns8ctl-new`;
  if (step.uiroot) {
    await fs.rm(fresh, { recursive: true, force: true });
    await fs.mkdir(fresh, { recursive: true, mode: 0o755 });
    parts.push({ root: step.uiroot, dest: fresh, tarAsOwner: false });
  }
  const results = await deps.podman.extract(owner, step.url, parts, { container: `ns8ctl-extract-${id}`, purpose });
  if (step.imageroot) {
    const entries = results[0] ?? [];
    const old = (await readImagerootList(p.installDir)) ?? [];
    await removeStale(ctx, owner, p.installDir, old, entries, purpose);
    await writeFileAtomic(path.join(p.installDir, '.imageroot.lst'), entries.map((e) => e + '\n').join(''), { mode: 0o644, uid: user?.uid ?? 0, gid: user?.gid ?? 0 });
    await deps.records.update(id, { extractedImageId: local.id, imageUrl: step.url });
  }
  if (step.uiroot) {
    await fs.rm(p.uiDir, { recursive: true, force: true });
    await fs.rename(fresh, p.uiDir);
    await deps.records.update(id, { uiImageId: local.id });
  }
}
