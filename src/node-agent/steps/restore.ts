import { Ns8ctlError } from '../../errors.js';
import { EventRecorder } from '../../state/events.js';
import { keys } from '../../state/keys.js';
import { clearRestoreRequest } from '../backup/restore-request.js';
import { readDestination, readIndexEntry } from '../backup/catalog.js';
import { ResticBackups } from '../backup/engine.js';
import { requireOwner, type StepHandlers } from './context.js';

/**
 * `restoreFrom` on a new instance, as NS8's restore-module: the snapshot's state and volumes are
 * written into the instance before it starts. MODULE_UUID is kept (the instance takes the uuid
 * of the backed-up one) unless another live instance holds it, as NS8 does.
 */
export const restoreSteps: StepHandlers<'restore-data'> = {
  'restore-data': async (step, ctx) => {
    const { deps, id } = ctx;
    const dest = await readDestination(deps.redis, step.destination);
    const entry = await readIndexEntry(deps.redis, step.destination, step.from);
    if (!entry) throw new Ns8ctlError('restore_source_missing', `${id}: restoreFrom: ${step.from} was never backed up to ${step.destination} (no entry in its backup index)`);
    const { owner, p } = await requireOwner(ctx, 'restore');
    const uuids = await deps.redis.hgetall(keys.moduleUuid());
    const held = Object.entries(uuids).some(([other, uuid]) => other !== id && uuid === entry.uuid);
    if (!held && uuids[id] !== entry.uuid) await deps.redis.hset(keys.moduleUuid(), id, entry.uuid);
    const target = { id, owner, rootfull: ctx.rootfull, stateDir: p.stateDir, installDir: p.installDir, uuid: entry.uuid, imageUrl: entry.image };
    const chosen = await new ResticBackups(deps.runner).restore(target, { url: dest.url }, dest.password, step.snapshot);
    const rec = await deps.records.get(id);
    await deps.records.update(id, { restore: { destination: step.destination, snapshot: step.snapshot, from: step.from, ...(rec?.restore ?? {}), done: true, restoredSnapshot: chosen.id } });
    if (rec?.restore?.request) await clearRestoreRequest(deps.redis, id, rec.restore.request);
    deps.log(`node-agent: ${id}: restored snapshot ${chosen.shortId} of ${step.from} from ${step.destination}`);
    await new EventRecorder(deps.redis, { now: deps.now, log: deps.log }).record({ name: 'instance-restored', type: 'Normal', object: `Module/${id}`, message: `${id}: data restored from snapshot ${chosen.shortId} of ${step.from} in ${step.destination}`, data: { destination: step.destination, snapshot: chosen.id, from: step.from } });
  },
};
