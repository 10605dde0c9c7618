import { keys } from '../../state/keys.js';
import { allocatePorts, claimPorts, freePorts, portsInEnvironment, reserveForeignPorts } from '../ports.js';
import { type StepHandlers } from './context.js';

/** TCP/UDP port ranges (NS8's node port allocation) and the cluster's ports demand. */
export const portsSteps: StepHandlers<'allocate-ports' | 'set-ports-demand' | 'free-ports'> = {
  'allocate-ports': async (step, ctx) => {
    const { deps, id, node } = ctx;
    // Instances NS8 runs here on its own keep their ports; this one keeps those it already has.
    const { reserved, dropped } = await reserveForeignPorts(deps.redis, node, id);
    if (reserved.length > 0) deps.log(`node-agent: ports of instances ns8ctl does not manage reserved on node ${node}: ${reserved.join(' ')}`);
    if (dropped.length > 0) deps.log(`node-agent: port reservations of instances NS8 removed dropped on node ${node}: ${dropped.join(' ')}`);
    const env = await deps.redis.hgetall(keys.moduleEnvironment(id));
    await allocatePorts(deps.redis, node, id, step.proto, step.demand, undefined, portsInEnvironment(env, step.proto));
    await claimPorts(deps.redis, node, id);
  },
  'set-ports-demand': async (step, ctx) => {
    const { deps, id } = ctx;
    const key = step.proto === 'tcp' ? keys.tcpPortsDemand() : keys.udpPortsDemand();
    if (step.demand > 0) await deps.redis.hset(key, id, String(step.demand));
    else await deps.redis.hdel(key, id);
  },
  'free-ports': async (_step, ctx) => {
    const { deps, id, node } = ctx;
    await freePorts(deps.redis, node, id);
  },
};

