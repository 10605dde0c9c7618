/**
 * What every step handler gets (the instance, the node agent's dependencies) and the helpers they
 * share: the instance's user and paths as they are now, directories created already owned.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import type { NodeAgentDeps } from '../deps.js';
import type { Owner } from '../host/owner.js';
import { readUsers } from '../host/passwd.js';
import type { UnitScope } from '../host/systemd.js';
import { instancePaths } from '../layout.js';
import type { ModuleLabels } from '../labels.js';
import { ownerOf, scopeOf } from '../observe.js';
import type { InstancePaths, PasswdEntry, Step } from '../types.js';

/** What a step needs to know about its instance. */
export interface StepContext {
  deps: NodeAgentDeps;
  node: number;
  id: string;
  rootfull: boolean;
  labels?: ModuleLabels;
  imageUrl?: string;
  /** Digest `imageUrl`'s labels were read from (registry or local inspection): pins its fetch into the node cache. */
  imageDigest?: string;
  /**
   * Set by a caller that lets units settle while the next steps run (the converge pass):
   * start-units and restart-units then return after their first check, leaving the rest of the
   * stability window in `settling`, which the caller awaits (`settleUnits`) before any step that
   * is not in `SETTLE_OVERLAPS` and before it reports. Unset, they wait for the whole window.
   */
  settleInBackground?: boolean;
  settling?: UnitsSettling;
}

/** Units started by a step, still inside their stability window. */
export interface UnitsSettling {
  /** The start-units or restart-units step that started them (a failure is its failure). */
  step: Step;
  /** Resolves once the window is over: undefined when every unit stayed active, else the error. */
  done: Promise<Ns8ctlError | undefined>;
}

/**
 * Steps that may run while started units settle: they neither depend on the units having stayed
 * up nor announce the instance (a lifecycle task aborts as soon as a unit fails).
 */
export const SETTLE_OVERLAPS: ReadonlySet<Step['kind']> = new Set(['record-units', 'run-lifecycle']);

/** Waits for units still settling; throws their failure. Clears `ctx.settling`. */
export async function settleUnits(ctx: StepContext): Promise<void> {
  const s = ctx.settling;
  if (!s) return;
  delete ctx.settling;
  const err = await s.done;
  if (err) throw err;
}

export async function currentUser(ctx: StepContext): Promise<PasswdEntry | undefined> {
  return (await readUsers(ctx.deps.layout)).users.get(ctx.id);
}

export async function paths(ctx: StepContext): Promise<{ p: InstancePaths; user: PasswdEntry | undefined }> {
  const user = ctx.rootfull ? undefined : await currentUser(ctx);
  return { p: instancePaths(ctx.deps.layout, ctx.id, ctx.rootfull, user?.home), user };
}

export async function requireOwner(ctx: StepContext, what: string): Promise<{ owner: Owner; user: PasswdEntry | undefined; p: InstancePaths }> {
  const { p, user } = await paths(ctx);
  const owner = ownerOf(ctx.id, ctx.rootfull, user);
  if (!owner) throw new Ns8ctlError('user_missing', `${ctx.id}: ${what} needs Unix user ${ctx.id}, which does not exist`, { user: false });
  return { owner, user, p };
}

export async function requireScope(ctx: StepContext, what: string): Promise<UnitScope> {
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
export async function mkdirOwned(dir: string, uid: number | undefined, gid: number | undefined, mode: number): Promise<void> {
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

export const purposeOf = (step: Step): string => `${step.id}: ${step.kind}`;

/** A handler of one step kind: applies it, idempotently; throws an Ns8ctlError naming the instance. */
export type StepHandler<K extends Step['kind']> = (step: Extract<Step, { kind: K }>, ctx: StepContext) => Promise<void>;

/** Handlers of some step kinds (a concern's table); the applier merges them into one for every kind. */
export type StepHandlers<K extends Step['kind']> = { [P in K]: StepHandler<P> };
