import path from 'node:path';
import { Ns8ctlError, toNs8ctlError } from '../../errors.js';
import { channels, keys } from '../../state/keys.js';
import { scanKeys } from '../../state/scan.js';
import { releaseDefaultInstance } from '../default-instance.js';
import { authorizationsKey } from '../observe.js';
import { applyGrants } from '../../agent/authorizations.js';
import { DESTROY_ATTEMPTS } from '../planner.js';
import { runLifecycleAction } from '../lifecycle.js';
import type { Step } from '../types.js';
import { paths, purposeOf, type StepContext, type StepHandlers } from './context.js';

/** Removal: the recorded request, destroy-module, data, Redis keys, record, finalizer. */
export const removalSteps: StepHandlers<'mark-removing' | 'run-destroy-module' | 'erase-data' | 'delete-module-keys' | 'forget-record' | 'publish-removed' | 'release-finalizer'> = {
  'mark-removing': async (step, ctx) => {
    const { deps, id } = ctx;
    await deps.records.update(id, { removing: { ...(step.request ?? {}), removalPolicy: step.removalPolicy } });
  },
  'run-destroy-module': async (step, ctx) => {
    await destroyModule(step, ctx);
  },
  'erase-data': async (step, ctx) => {
    const { deps, id } = ctx;
    const purpose = purposeOf(step);
    const { p } = await paths(ctx);
    const targets = [{ dir: p.base, parent: ctx.rootfull ? deps.layout.rootfullBase : deps.layout.homeBase }, ...step.volumeBases.map((b) => ({ dir: path.join(b, id), parent: b }))];
    for (const t of targets) {
      const dir = path.resolve(t.dir);
      if (path.dirname(dir) !== path.resolve(t.parent) || path.basename(dir) !== id) {
        throw new Ns8ctlError('erase_refused', `${purpose}: refusing to erase ${dir}: it is not ${path.join(t.parent, id)}`, { user: false });
      }
      await deps.users.removeTree(dir, purpose);
    }
    if (ctx.rootfull) await removeRootfullVolumes(ctx, purpose);
  },
  'delete-module-keys': async (_step, ctx) => {
    await deleteModuleKeys(ctx);
  },
  'forget-record': async (_step, ctx) => {
    const { deps, id } = ctx;
    await deps.records.remove(id);
  },
  'publish-removed': async (_step, ctx) => {
    const { deps, id, node } = ctx;
    await deps.redis.publish(channels.moduleRemoved, JSON.stringify({ module: id, node }));
  },
  'release-finalizer': async (_step, ctx) => {
    const { deps, id } = ctx;
    await deps.source.releaseFinalizer(id);
  },
};

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

/**
 * NS8's remove-module without preserve: the podman volumes of a rootfull instance, named
 * `<id>-<name>` by NS8's convention (ns8-core PR #307), are removed with its data.
 */
async function removeRootfullVolumes(ctx: StepContext, purpose: string): Promise<void> {
  const listed = await ctx.deps.runner.run(['podman', 'volume', 'ls', '--format', '{{.Name}}'], { purpose: `${purpose} (list volumes)` });
  const mine = new RegExp(`^${ctx.id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-\\w+$`);
  const volumes = listed.stdout.split('\n').map((l) => l.trim()).filter((v) => mine.test(v));
  if (volumes.length) await ctx.deps.runner.run(['podman', 'volume', 'rm', '--force', ...volumes], { purpose: `${purpose} (remove volumes ${volumes.join(' ')})`, mutating: true });
}

