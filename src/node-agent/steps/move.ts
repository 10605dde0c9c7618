import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import { EventRecorder } from '../../state/events.js';
import { keys } from '../../state/keys.js';
import { writeFileAtomic } from '../atomic-write.js';
import { StateTransfer } from '../backup/transfer.js';
import { renderEnvironment } from '../environment-file.js';
import { advanceMove, clearMove, CLONES_KEY, MOVE_SECRETS_KEY, MOVES_KEY, parseMoves, recordKey } from '../move/record.js';
import { paths, requireOwner, type StepContext, type StepHandlers } from './context.js';

/** A TCP port free on `address` now (the receiver binds it right after). */
function freePort(address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, address, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/** The record of the move (or, with `source`, the clone) bringing the instance here. */
async function currentMove(ctx: StepContext, source: string | undefined) {
  const key = source ? CLONES_KEY : MOVES_KEY;
  const raw = await ctx.deps.redis.hget(key, ctx.id);
  const mv = parseMoves(raw ? { [ctx.id]: raw } : {}, [ctx.id]).get(ctx.id);
  if (!mv || mv.to !== ctx.node || mv.source !== source) throw new Ns8ctlError('move_cancelled', `${ctx.id}: no ${source ? `clone of ${source}` : 'move'} to node ${ctx.node} is recorded any more (cancelled?)`);
  return mv;
}

/**
 * The target side of a move (`spec.node` changed): receive the source's state and volumes by
 * rsync (live pass, then a final pass with its services stopped), import its environment, and
 * complete the move once the instance runs here. NS8's clone-module does the same into a new id;
 * for a move the id, MODULE_UUID and ports demand stay. A clone (`source` set) is the same
 * transfer into a new instance: it takes the source's environment but keeps its own identity
 * (MODULE_ID, MODULE_UUID, ports, node: the values the node agent manages are written over it).
 */
export const moveSteps: StepHandlers<'receive-state' | 'finish-receive' | 'complete-move'> = {
  'receive-state': async (step, ctx) => {
    const { deps, id } = ctx;
    const mv = await currentMove(ctx, step.source);
    const vpn = await deps.redis.hgetall(keys.nodeVpn(ctx.node));
    const address = vpn.ip_address ?? '';
    if (!address) throw new Ns8ctlError('move_failed', `${id}: node ${ctx.node} has no address in ${keys.nodeVpn(ctx.node)} (ip_address): the source cannot reach a receiver here`);
    const port = await freePort(address);
    const password = randomBytes(24).toString('hex');
    await deps.redis.hset(MOVE_SECRETS_KEY, id, password);
    const { owner, p } = await requireOwner(ctx, 'receive the moved data');
    await new StateTransfer(deps.runner).startReceiver({ id, owner, rootfull: ctx.rootfull, stateDir: p.stateDir, installDir: p.installDir }, { address, port, user: id, password }, step.volumes);
    if (!(await advanceMove(deps.redis, id, mv.state, { state: 'receiving', address, port }, recordKey(mv)))) throw new Ns8ctlError('move_failed', `${id}: the ${step.source ? 'clone' : 'move'} record changed while the receiver started; it is started again next pass`);
    deps.log(`node-agent: ${id}: receiving the data of ${step.source ? `${step.source} on ` : ''}node ${step.from} on ${address}:${port}`);
  },
  'finish-receive': async (step, ctx) => {
    const { deps, id } = ctx;
    await new StateTransfer(deps.runner).stopReceiver(id);
    // The source's environment (never sent by rsync, as in NS8): its Redis mirror, taken whole;
    // the values this node manages (ids, ports, image, node) are written over it next.
    const env = await deps.redis.hgetall(keys.moduleEnvironment(step.source ?? id));
    const { p, user } = await paths(ctx);
    const file = path.join(p.stateDir, 'environment');
    if (Object.keys(env).length && !(await fs.stat(file).catch(() => undefined))) {
      await writeFileAtomic(file, renderEnvironment(id, env), { mode: 0o644, uid: user?.uid ?? 0, gid: user?.gid ?? 0 });
    }
    // The units the source's module had enabled (NS8's clone re-enables them); the node agent starts them.
    // Only the module's own units (its unit dir): the module agent's unit is the node agent's to enable.
    const mv = await currentMove(ctx, step.source);
    const own = [];
    for (const u of mv.enabled ?? []) if (await fs.stat(path.join(p.unitSourceDir, u)).catch(() => undefined)) own.push(u);
    if (user && own.length && !(await deps.systemd.missing())) await deps.systemd.enable({ kind: 'user', user: id, uid: user.uid }, own, `${id}: enable the units the module had enabled on node ${step.from}`);
    await deps.redis.hdel(MOVE_SECRETS_KEY, id);
    await deps.records.update(id, { move: { from: step.from, done: true, ...(step.source ? { source: step.source } : {}) } });
  },
  'complete-move': async (step, ctx) => {
    const { deps, id, node } = ctx;
    if (step.source) {
      // A clone: the copy runs here; its record has nothing left to clean on the source.
      const raw = await deps.redis.hget(CLONES_KEY, id);
      const mv = raw ? parseMoves({ [id]: raw }, [id]).get(id) : undefined;
      await clearMove(deps.redis, id, CLONES_KEY);
      await deps.records.update(id, { move: { from: step.from, done: true, completed: true, source: step.source } });
      await recordArrival(ctx, 'module-cloned', `${id} cloned from ${step.source} on node ${step.from} to node ${node}${mv?.downtimeMs !== undefined ? `; ${step.source}'s services were stopped ${(mv.downtimeMs / 1000).toFixed(1)} s for the final pass` : ''}`, { module: id, source: step.source, from: step.from, to: node, ...(mv?.downtimeMs !== undefined ? { downtimeMs: mv.downtimeMs } : {}) });
      return;
    }
    // No record: a crash came after `done` and the source has cleaned up since; only the bookkeeping is left.
    const raw = await deps.redis.hget(MOVES_KEY, id);
    const mv = raw ? await currentMove(ctx, undefined) : undefined;
    if (mv?.state === 'sent' && !(await advanceMove(deps.redis, id, 'sent', { state: 'done' }))) throw new Ns8ctlError('move_failed', `${id}: the move record changed before it could be completed`);
    await deps.redis.hset(keys.moduleNode(), id, String(node));
    await deps.records.update(id, { move: { from: step.from, done: true, completed: true } });
    const downtimeMs = mv?.downtimeFrom ? Math.max(0, deps.now().getTime() - mv.downtimeFrom) : undefined;
    await recordArrival(ctx, 'module-moved', `${id} moved from node ${step.from} to node ${node}${downtimeMs !== undefined ? `; services were down ${(downtimeMs / 1000).toFixed(1)} s` : ''}`, { module: id, from: step.from, to: node, ...(downtimeMs !== undefined ? { downtimeMs } : {}) });
  },
};

/** The event of a completed move or clone. */
async function recordArrival(ctx: StepContext, name: 'module-moved' | 'module-cloned', message: string, data: Record<string, unknown>): Promise<void> {
  const { deps, id } = ctx;
  await new EventRecorder(deps.redis, { now: deps.now, log: deps.log }).record({ name, type: 'Normal', object: `Module/${id}`, message, data });
}
