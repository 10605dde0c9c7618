/**
 * `ns8ctl sandbox ...`: thin commander adapters over the sandbox command functions
 * (options, deps) -> result.
 */
import type { Command } from 'commander';
import type { CommandRunner } from '../host/runner.js';
import { renderJson } from '../cli/output.js';
import { UsageError } from '../errors.js';
import { createSandbox, renderCreated } from './create.js';
import { deleteSandbox } from './delete.js';
import { defaultSandboxDeps, type SandboxDeps } from './deps.js';
import { execInNode, startNode, stopNode } from './lifecycle.js';
import { listSandboxes, renderList } from './list.js';
import { DEFAULT_SANDBOX_NAME, MAX_NODES } from './naming.js';
import { pushImage } from './push.js';

/** What the main CLI may hand over (a subset of its CliDeps); anything missing gets the process default. */
export interface SandboxCliHooks {
  deps?: () => { stdout?: (t: string) => void; stderr?: (t: string) => void; env?: NodeJS.ProcessEnv; runner?: CommandRunner };
  /** Receives the exit code (main() owns it); without it, a non-zero code goes to process.exitCode. */
  setExitCode?: (code: number) => void;
}

function checkOutput(value: string | undefined, allowed: string[]): string | undefined {
  if (value !== undefined && !allowed.includes(value)) throw new UsageError(`unknown output format "${value}"; allowed: ${allowed.join(', ')}`);
  return value;
}

/**
 * Adds `sandbox create|list|exec|stop|start|delete|push` to the program. Errors are thrown (as
 * Ns8ctlError) for main() to print; `exec` passes the command's exit code to `setExitCode`.
 */
export function registerSandboxCommands(program: Command, hooks: SandboxCliHooks = {}): void {
  const deps = (): SandboxDeps => {
    const given = hooks.deps?.() ?? {};
    const picked: Partial<SandboxDeps> = {};
    if (given.stdout) picked.stdout = given.stdout;
    if (given.stderr) picked.stderr = given.stderr;
    if (given.env) picked.env = given.env;
    if (given.runner) picked.runner = given.runner;
    return defaultSandboxDeps(picked);
  };
  const setExitCode = (code: number): void => {
    if (hooks.setExitCode) hooks.setExitCode(code);
    else if (code !== 0) process.exitCode = code;
  };
  const nameOpt = ['--name <name>', 'sandbox name', DEFAULT_SANDBOX_NAME] as const;

  const sandbox = program
    .command('sandbox')
    .description('NS8 nodes as local containers with systemd, rootless Podman and Redis (like kind for Kubernetes)');

  sandbox
    .command('create')
    .description(`Create a sandbox: N nodes (1-${MAX_NODES}), node 1 the leader (Redis master), the others read-only replicas, plus a registry`)
    .option('--nodes <n>', 'number of nodes', '1')
    .option(...nameOpt)
    .option('--retain', 'keep what was made when create fails (for debugging)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (opts: { nodes: string; name: string; retain?: boolean; output: string }) => {
      const format = checkOutput(opts.output, ['text', 'json']);
      const d = deps();
      const info = await createSandbox({ name: opts.name, nodes: opts.nodes, ...(opts.retain ? { retain: true } : {}) }, d);
      d.stdout(format === 'json' ? renderJson(info) : renderCreated(info));
      setExitCode(0);
    });

  sandbox
    .command('list')
    .description('List sandboxes, their nodes and registry')
    .option('--name <name>', 'only this sandbox')
    .option('-o, --output <format>', 'table or json', 'table')
    .action(async (opts: { name?: string; output: string }) => {
      const d = deps();
      const format = checkOutput(opts.output, ['table', 'json']);
      d.stdout(renderList(await listSandboxes({ ...(opts.name ? { name: opts.name } : {}) }, d), format));
      setExitCode(0);
    });

  sandbox
    .command('exec')
    .description('Run a command in a node as root (non-interactive): ns8ctl sandbox exec 1 -- systemctl is-system-running')
    .argument('<node>', 'node id (1), node1, or the container name')
    .argument('<command...>', 'command and arguments (after --)')
    .option(...nameOpt)
    .action(async (node: string, command: string[], opts: { name: string }) => {
      setExitCode(await execInNode({ name: opts.name, node, command }, deps()));
    });

  sandbox
    .command('stop')
    .description('Stop a node (clean systemd shutdown)')
    .argument('<node>', 'node id (1), node1, or the container name')
    .option(...nameOpt)
    .action(async (node: string, opts: { name: string }) => {
      const d = deps();
      const n = await stopNode({ name: opts.name, node }, d);
      d.stdout(`node ${n.nodeId} (${n.name}) stopped\n`);
      setExitCode(0);
    });

  sandbox
    .command('start')
    .description('Start a stopped node and wait for systemd (and, on a worker, for its Redis replica to catch up)')
    .argument('<node>', 'node id (1), node1, or the container name')
    .option(...nameOpt)
    .action(async (node: string, opts: { name: string }) => {
      const d = deps();
      const n = await startNode({ name: opts.name, node }, d);
      d.stdout(`node ${n.nodeId} (${n.name}) running\n`);
      setExitCode(0);
    });

  sandbox
    .command('delete')
    .description('Delete a sandbox: containers, network and state (the cached root filesystem stays)')
    .option(...nameOpt)
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (opts: { name: string; output: string }) => {
      const format = checkOutput(opts.output, ['text', 'json']);
      const d = deps();
      const res = await deleteSandbox({ name: opts.name }, d);
      if (format === 'json') d.stdout(renderJson(res));
      else d.stdout(res.containers.length === 0 && !res.network && !res.stateDir ? `sandbox "${res.name}" did not exist; nothing to delete\n` : `sandbox "${res.name}" deleted (${res.containers.length} container(s), network ${res.network ?? '-'})\n`);
      setExitCode(0);
    });

  sandbox
    .command('push')
    .description('Copy an image from local Podman storage into the sandbox registry; prints the URL nodes pull')
    .argument('<image>', 'local image (localhost/myapp:1.0.0)')
    .option('--as <path:tag>', 'path and tag in the sandbox registry (default: the image path without its registry)')
    .option(...nameOpt)
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (image: string, opts: { as?: string; name: string; output: string }) => {
      const format = checkOutput(opts.output, ['text', 'json']);
      const d = deps();
      const res = await pushImage({ name: opts.name, image, ...(opts.as ? { as: opts.as } : {}) }, d);
      d.stdout(format === 'json' ? renderJson(res) : `${res.url}\n`);
      setExitCode(0);
    });
}
