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
import { advanceMove, MOVE_SECRETS_KEY, MOVES_KEY, parseMoves } from '../move/record.js';
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

async function currentMove(ctx: StepContext) {
  const raw = await ctx.deps.redis.hget(MOVES_KEY, ctx.id);
  const mv = parseMoves(raw ? { [ctx.id]: raw } : {}, [ctx.id]).get(ctx.id);
  if (!mv || mv.to !== ctx.node) throw new Ns8ctlError('move_cancelled', `${ctx.id}: no move to node ${ctx.node} is recorded any more (cancelled?)`);
  return mv;
}

/**
 * The target side of a move (`spec.node` changed): receive the source's state and volumes by
 * rsync (live pass, then a final pass with its services stopped), import its environment, and
 * complete the move once the instance runs here. NS8's clone-module does the same into a new id;
 * here the id, MODULE_UUID and ports demand stay.
 */
export const moveSteps: StepHandlers<'receive-state' | 'finish-receive' | 'complete-move'> = {
  'receive-state': async (step, ctx) => {
    const { deps, id } = ctx;
    const mv = await currentMove(ctx);
    const vpn = await deps.redis.hgetall(keys.nodeVpn(ctx.node));
    const address = vpn.ip_address ?? '';
    if (!address) throw new Ns8ctlError('move_failed', `${id}: node ${ctx.node} has no address in ${keys.nodeVpn(ctx.node)} (ip_address): the source cannot reach a receiver here`);
    const port = await freePort(address);
    const password = randomBytes(24).toString('hex');
    await deps.redis.hset(MOVE_SECRETS_KEY, id, password);
    const { owner, p } = await requireOwner(ctx, 'receive the moved data');
    await new StateTransfer(deps.runner).startReceiver({ id, owner, rootfull: ctx.rootfull, stateDir: p.stateDir, installDir: p.installDir }, { address, port, user: id, password }, step.volumes);
    if (!(await advanceMove(deps.redis, id, mv.state, { state: 'receiving', address, port }))) throw new Ns8ctlError('move_failed', `${id}: the move record changed while the receiver started; it is started again next pass`);
    deps.log(`node-agent: ${id}: receiving the data of node ${step.from} on ${address}:${port}`);
  },
  'finish-receive': async (step, ctx) => {
    const { deps, id } = ctx;
    await new StateTransfer(deps.runner).stopReceiver(id);
    // The source's environment (never sent by rsync, as in NS8): its Redis mirror, taken whole;
    // the values this node manages (ports, image, node) are written over it next.
    const env = await deps.redis.hgetall(keys.moduleEnvironment(id));
    const { p, user } = await paths(ctx);
    const file = path.join(p.stateDir, 'environment');
    if (Object.keys(env).length && !(await fs.stat(file).catch(() => undefined))) {
      await writeFileAtomic(file, renderEnvironment(id, env), { mode: 0o644, uid: user?.uid ?? 0, gid: user?.gid ?? 0 });
    }
    // The units the source's module had enabled (NS8's clone re-enables them); the node agent starts them.
    // Only the module's own units (its unit dir): the module agent's unit is the node agent's to enable.
    const mv = await currentMove(ctx);
    const own = [];
    for (const u of mv.enabled ?? []) if (await fs.stat(path.join(p.unitSourceDir, u)).catch(() => undefined)) own.push(u);
    if (user && own.length && !(await deps.systemd.missing())) await deps.systemd.enable({ kind: 'user', user: id, uid: user.uid }, own, `${id}: enable the units the module had enabled on node ${step.from}`);
    await deps.redis.hdel(MOVE_SECRETS_KEY, id);
    await deps.records.update(id, { move: { from: step.from, done: true } });
  },
  'complete-move': async (step, ctx) => {
    const { deps, id, node } = ctx;
    // No record: a crash came after `done` and the source has cleaned up since; only the bookkeeping is left.
    const raw = await deps.redis.hget(MOVES_KEY, id);
    const mv = raw ? await currentMove(ctx) : undefined;
    if (mv?.state === 'sent' && !(await advanceMove(deps.redis, id, 'sent', { state: 'done' }))) throw new Ns8ctlError('move_failed', `${id}: the move record changed before it could be completed`);
    await deps.redis.hset(keys.moduleNode(), id, String(node));
    await deps.records.update(id, { move: { from: step.from, done: true, completed: true } });
    const downtimeMs = mv?.downtimeFrom ? Math.max(0, deps.now().getTime() - mv.downtimeFrom) : undefined;
    await new EventRecorder(deps.redis, { now: deps.now, log: deps.log }).record({
      name: 'module-moved',
      type: 'Normal',
      object: `Module/${id}`,
      message: `${id} moved from node ${step.from} to node ${node}${downtimeMs !== undefined ? `; services were down ${(downtimeMs / 1000).toFixed(1)} s` : ''}`,
      data: { module: id, from: step.from, to: node, ...(downtimeMs !== undefined ? { downtimeMs } : {}) },
    });
  },
};
