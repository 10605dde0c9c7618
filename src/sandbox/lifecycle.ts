/**
 * `ns8ctl sandbox exec | stop | start`: one node at a time, named by id (`2`), `node2`, or its
 * container name.
 */
import { Ns8ctlError, NotFoundError, UsageError } from '../errors.js';
import { waitForReplica } from './create.js';
import type { SandboxDeps } from './deps.js';
import { DEFAULT_SANDBOX_NAME, nodeContainer, parseNodeRef, validateSandboxName } from './naming.js';
import { listContainers, waitForSystemd, type SandboxContainer } from './podman-sandbox.js';
import { adjustHost, requireRoot, requireTool } from './preflight.js';
import { podmanExecFlags } from '../host/stream-exec.js';
import { step } from './progress.js';
import { readAdminPassword } from './record.js';

export interface NodeOptions {
  name?: string;
  node: string;
}

async function findNode(deps: SandboxDeps, opts: NodeOptions, command: string): Promise<{ sandbox: string; node: SandboxContainer }> {
  const sandbox = validateSandboxName(opts.name ?? DEFAULT_SANDBOX_NAME);
  requireRoot(deps, command);
  await requireTool(deps, 'podman');
  const id = parseNodeRef(sandbox, opts.node);
  const containers = await listContainers(deps, sandbox);
  if (containers.length === 0) throw new NotFoundError(`sandbox "${sandbox}" does not exist; see ns8ctl sandbox list`);
  const node = containers.find((c) => c.role === 'node' && c.nodeId === id);
  if (!node) {
    const ids = containers.filter((c) => c.role === 'node').map((c) => c.nodeId).join(', ');
    throw new NotFoundError(`sandbox "${sandbox}" has no node ${id} (${nodeContainer(sandbox, id)}); its nodes are: ${ids}`);
  }
  return { sandbox, node };
}

/**
 * Runs CMD inside the node as root, streaming: with `deps.execStdio` `inherit` (the CLI) it shares
 * this process's stdin, stdout and stderr (`podman exec -i`, plus `-t` when stdin and stdout are
 * terminals, so `exec 1 -- bash` is a shell); with `pipe` its output reaches `deps.stdout` /
 * `deps.stderr` as it arrives. Resolves with the command's exit code (main() makes it the
 * process's; 128+N when killed by signal N). Refuses with `sandbox_node_stopped` when the node
 * is not running, `not_found` when the sandbox or node does not exist.
 */
export async function execInNode(opts: NodeOptions & { command: string[] }, deps: SandboxDeps): Promise<number> {
  if (opts.command.length === 0) throw new UsageError('sandbox exec needs a command after --: ns8ctl sandbox exec NODE -- CMD [ARGS...]');
  const { node } = await findNode(deps, opts, 'exec');
  if (node.state !== 'running') throw new Ns8ctlError('sandbox_node_stopped', `node ${node.nodeId} (${node.name}) is ${node.state}; start it first: ns8ctl sandbox start ${node.nodeId}`);
  return deps.streamExec(['podman', 'exec', ...podmanExecFlags(deps.execStdio), node.name, ...opts.command], { stdio: deps.execStdio, onStdout: deps.stdout, onStderr: deps.stderr });
}

/** Stops a node cleanly (systemd shutdown); idempotent. */
export async function stopNode(opts: NodeOptions, deps: SandboxDeps): Promise<SandboxContainer> {
  const { node } = await findNode(deps, opts, 'stop');
  if (node.state === 'running') {
    await step(deps, `stopping node ${node.nodeId}: ${node.name}`, () => deps.runner.run(['podman', 'stop', '-t', '30', node.name], { purpose: `sandbox: stop ${node.name}`, mutating: true, timeoutMs: 120_000 }));
  }
  return { ...node, state: 'exited' };
}

/**
 * Starts a stopped node and waits for systemd; on a worker it also waits until its Redis replica
 * is linked to the leader again (caught up). Idempotent.
 */
export async function startNode(opts: NodeOptions, deps: SandboxDeps): Promise<SandboxContainer> {
  const { sandbox, node } = await findNode(deps, opts, 'start');
  await adjustHost(deps);
  await step(deps, `starting node ${node.nodeId}: ${node.name}`, async () => {
    if (node.state !== 'running') await deps.runner.run(['podman', 'start', node.name], { purpose: `sandbox: start ${node.name}`, mutating: true });
    await waitForSystemd(deps, node.name);
    if (node.nodeId === 1) return;
    const leader = (await listContainers(deps, sandbox)).find((c) => c.role === 'node' && c.nodeId === 1);
    if (leader?.state !== 'running') {
      deps.stderr(`sandbox: node 1 (the Redis master) is not running, so node ${node.nodeId}'s replica cannot catch up until it starts\n`);
      return;
    }
    await waitForReplica(deps, node.address, await readAdminPassword(deps, sandbox), `node/${node.nodeId}/ui_name`);
  });
  return { ...node, state: 'running' };
}
