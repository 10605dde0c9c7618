import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import { userStorage } from '../layout.js';
import { currentUser, paths, mkdirOwned, purposeOf, type StepHandlers } from './context.js';

/** The instance's Unix user, its home and directories, linger, its processes. */
export const userSteps: StepHandlers<'create-user' | 'chown-home' | 'add-subids' | 'create-install-dir' | 'create-volume-dirs' | 'enable-linger' | 'disable-linger' | 'kill-processes' | 'remove-user'> = {
  'create-user': async (step, ctx) => {
    const { deps, id, node } = ctx;
    const purpose = purposeOf(step);
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
  },
  'chown-home': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    const { p } = await paths(ctx);
    // A useradd killed before it finished the home leaves none, or a root-owned one with mode 0.
    await mkdirOwned(p.base, step.uid, step.gid, 0o700);
    await deps.users.chownTree(p.base, step.uid, step.gid, purpose);
    await resetPodmanDatabase(p.base);
    await deps.records.update(id, { uid: step.uid, gid: step.gid });
  },
  'add-subids': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    await deps.users.addSubids(id, purpose);
  },
  'create-install-dir': async (step, ctx) => {
    const { id } = ctx;
    const purpose = purposeOf(step);
    const { p, user } = await paths(ctx);
    if (ctx.rootfull) {
      await mkdirOwned(p.installDir, 0, 0, 0o700);
      await mkdirOwned(p.stateDir, 0, 0, 0o700);
    } else {
      if (!user) throw new Ns8ctlError('user_missing', `${purpose}: Unix user ${id} does not exist`, { user: false });
      await mkdirOwned(p.installDir, user.uid, user.gid, 0o700);
      await mkdirOwned(p.stateDir, user.uid, user.gid, 0o700);
    }
  },
  'create-volume-dirs': async (step, ctx) => {
    const { deps, id, node } = ctx;
    const purpose = purposeOf(step);
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
  },
  'enable-linger': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    const user = await currentUser(ctx);
    if (!user) throw new Ns8ctlError('user_missing', `${purpose}: Unix user ${id} does not exist`, { user: false });
    await deps.systemd.enableLinger(id, user.uid, purpose);
  },
  'disable-linger': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    const user = await currentUser(ctx);
    await deps.systemd.disableLinger(id, user?.uid ?? -1, purpose);
  },
  'kill-processes': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    await deps.users.killProcesses(id, purpose);
  },
  'remove-user': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
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
  },
};

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
