import { Ns8ctlError, toNs8ctlError } from '../../errors.js';
import { channels } from '../../state/keys.js';
import { runLifecycleAction } from '../lifecycle.js';
import { type StepHandlers } from './context.js';

/** Holding the Module, NS8's lifecycle actions through the module agent, module-added. */
export const lifecycleSteps: StepHandlers<'add-finalizer' | 'cancel-removal' | 'publish-added' | 'run-lifecycle'> = {
  'add-finalizer': async (_step, ctx) => {
    const { deps, id, node } = ctx;
    if (!(await deps.source.addFinalizer(id))) {
      throw new Ns8ctlError('module_deleting', `${id}: the Module is gone or being deleted; nothing is created for it`);
    }
    await deps.records.update(id, { node, ...(ctx.imageUrl ? { imageUrl: ctx.imageUrl } : {}) });
  },
  'cancel-removal': async (_step, ctx) => {
    const { deps, id } = ctx;
    // A destroy-module that ran for the cancelled removal does not count for a later one.
    await deps.records.update(id, { removing: undefined, destroy: undefined });
  },
  'publish-added': async (_step, ctx) => {
    const { deps, id, node } = ctx;
    await deps.redis.publish(channels.moduleAdded, JSON.stringify({ module: id, node }));
    await deps.records.update(id, { announced: true });
  },
  'run-lifecycle': async (step, ctx) => {
    const { deps, id } = ctx;
    const owed = (await deps.records.get(id))?.lifecycle ?? { action: step.action, image: ctx.imageUrl ?? '' };
    // Units still settling: the task's wait ends as soon as one of them fails (its module agent
    // may be the one failing), with that failure instead of a task timeout.
    const settling = ctx.settling;
    const unitsFailed = new AbortController();
    let unitError: Ns8ctlError | undefined;
    void settling?.done.then((e) => {
      if (e) {
        unitError = e;
        unitsFailed.abort();
      }
    });
    try {
      const outcome = await runLifecycleAction(deps.redis, id, step.action, step.data, {
        timeoutMs: deps.lifecycleTimeoutMs,
        ...(owed.taskId ? { taskId: owed.taskId } : {}),
        ...(settling ? { signal: unitsFailed.signal } : {}),
        onSubmit: async (taskId) => void (await deps.records.update(id, { lifecycle: { ...owed, taskId } })),
      });
      if (outcome === 'not_defined') deps.log(`node-agent: ${id}: the module has no ${step.action} action: nothing to run`);
    } catch (err) {
      if (unitError) throw unitError;
      // A failed task is submitted anew next time; one still queued or running is waited for.
      if (toNs8ctlError(err).code === 'lifecycle_action_failed') await deps.records.update(id, { lifecycle: { action: owed.action, image: owed.image } });
      throw err;
    }
    await deps.records.update(id, { lifecycle: undefined });
  },
};

