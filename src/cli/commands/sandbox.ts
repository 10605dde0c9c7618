/**
 * `ns8ctl sandbox ...`: thin commander adapters over the sandbox command functions
 * (options, deps) -> result.
 */
import type { Command } from 'commander';
import type { CommandRunner } from '../../host/runner.js';
import { renderJson } from '../../runtime/output.js';
import { UsageError } from '../../errors.js';
import { createSandbox, renderCreated } from '../../sandbox/create.js';
import { deleteSandbox } from '../../sandbox/delete.js';
import { defaultSandboxDeps, type SandboxDeps } from '../../sandbox/deps.js';
import { execInNode, startNode, stopNode } from '../../sandbox/lifecycle.js';
import { listSandboxes, renderList } from '../../sandbox/list.js';
import { DEFAULT_SANDBOX_NAME, MAX_NODES } from '../../sandbox/naming.js';
import { pushImage } from '../../sandbox/push.js';
import { renderEnv, sandboxEnv } from '../../sandbox/env.js';
import { processExecStdio } from '../../host/stream-exec.js';

/**
 * What the main CLI may hand over (its stdout, stderr, env and runner; tests may give any other
 * sandbox dependency); anything missing gets the process default. `sandbox exec` shares this
 * process's stdio (`processExecStdio()`) unless `execStdio` is given.
 */
export interface SandboxCliHooks {
  deps?: () => { stdout?: (t: string) => void; stderr?: (t: string) => void; env?: NodeJS.ProcessEnv; runner?: CommandRunner } & Partial<SandboxDeps>;
  /** Receives the exit code (main() owns it); without it, a non-zero code goes to process.exitCode. */
  setExitCode?: (code: number) => void;
}

function checkOutput(value: string | undefined, allowed: string[]): string | undefined {
  if (value !== undefined && !allowed.includes(value)) throw new UsageError(`unknown output format "${value}"; allowed: ${allowed.join(', ')}`);
  return value;
}

/** What every sandbox command action uses: its deps (built when it runs) and the exit code sink. */
interface SandboxCommandContext {
  deps: () => SandboxDeps;
  setExitCode: (code: number) => void;
}

const nameOpt = ['--name <name>', 'sandbox name', DEFAULT_SANDBOX_NAME] as const;

/**
 * Adds `sandbox create|list|env|exec|stop|start|delete|push` to the program. Errors are thrown (as
 * Ns8ctlError) for main() to print; `exec` passes the command's exit code to `setExitCode`.
 */
export function registerSandboxCommands(program: Command, hooks: SandboxCliHooks = {}): void {
  const ctx: SandboxCommandContext = {
    deps: (): SandboxDeps => {
      const given: Partial<SandboxDeps> = hooks.deps?.() ?? {};
      const picked = Object.fromEntries(Object.entries(given).filter(([, v]) => v !== undefined)) as Partial<SandboxDeps>;
      // The CLI's exec is a passthrough like `podman exec`: this process's stdio, unless told otherwise.
      return defaultSandboxDeps({ execStdio: processExecStdio(), ...picked });
    },
    setExitCode: (code: number): void => {
      if (hooks.setExitCode) hooks.setExitCode(code);
      else if (code !== 0) process.exitCode = code;
    },
  };
  const sandbox = program
    .command('sandbox')
    .description('NS8 nodes as local containers with systemd, rootless Podman and Redis (like kind for Kubernetes)');
  registerSetupCommands(sandbox, ctx);
  registerNodeCommands(sandbox, ctx);
  registerDeleteAndPush(sandbox, ctx);
}

/** create, list, env. */
function registerSetupCommands(sandbox: Command, ctx: SandboxCommandContext): void {
  sandbox
    .command('create')
    .description(`Create a sandbox: N nodes (1-${MAX_NODES}), node 1 the leader (Redis master), the others read-only replicas, plus a registry`)
    .option('--nodes <n>', 'number of nodes', '1')
    .option(...nameOpt)
    .option('--retain', 'keep what was made when create fails (for debugging)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (opts: { nodes: string; name: string; retain?: boolean; output: string }) => {
      const format = checkOutput(opts.output, ['text', 'json']);
      const d = ctx.deps();
      const info = await createSandbox({ name: opts.name, nodes: opts.nodes, ...(opts.retain ? { retain: true } : {}) }, d);
      d.stdout(format === 'json' ? renderJson(info) : renderCreated(info));
      ctx.setExitCode(0);
    });

  sandbox
    .command('list')
    .description('List sandboxes, their nodes and registry')
    .option('--name <name>', 'only this sandbox')
    .option('-o, --output <format>', 'table or json (both include the leader Redis URL)', 'table')
    .action(async (opts: { name?: string; output: string }) => {
      const d = ctx.deps();
      const format = checkOutput(opts.output, ['table', 'json']);
      d.stdout(renderList(await listSandboxes({ ...(opts.name ? { name: opts.name } : {}) }, d), format));
      ctx.setExitCode(0);
    });

  sandbox
    .command('env')
    .description(`Print export NS8CTL_REDIS_URL=... (the leader's Redis, admin user) for ns8ctl on this host: eval "$(sudo ns8ctl sandbox env)"`)
    .argument('[name]', 'sandbox name (default: --name, else sandbox)')
    .option(...nameOpt)
    .option('-o, --output <format>', 'shell or json', 'shell')
    .action(async (positional: string | undefined, opts: { name: string; output: string }) => {
      const format = checkOutput(opts.output, ['shell', 'json']);
      if (positional !== undefined && opts.name !== DEFAULT_SANDBOX_NAME && positional !== opts.name) {
        throw new UsageError(`sandbox env: two names given ("${positional}" and --name ${opts.name}); give one`);
      }
      const d = ctx.deps();
      const env = await sandboxEnv({ name: positional ?? opts.name }, d);
      d.stdout(format === 'json' ? renderJson(env) : renderEnv(env));
      ctx.setExitCode(0);
    });
}

/** exec, stop, start: one node of a sandbox. */
function registerNodeCommands(sandbox: Command, ctx: SandboxCommandContext): void {
  sandbox
    .command('exec')
    .description('Run a command in a node as root, with stdin, stdout and stderr streamed (a terminal when both are one): ns8ctl sandbox exec 1 -- journalctl -f')
    .argument('<node>', 'node id (1), node1, or the container name')
    .argument('<command...>', 'command and arguments (after --)')
    .option(...nameOpt)
    .action(async (node: string, command: string[], opts: { name: string }) => {
      ctx.setExitCode(await execInNode({ name: opts.name, node, command }, ctx.deps()));
    });

  sandbox
    .command('stop')
    .description('Stop a node (clean systemd shutdown)')
    .argument('<node>', 'node id (1), node1, or the container name')
    .option(...nameOpt)
    .action(async (node: string, opts: { name: string }) => {
      const d = ctx.deps();
      const n = await stopNode({ name: opts.name, node }, d);
      d.stdout(`node ${n.nodeId} (${n.name}) stopped\n`);
      ctx.setExitCode(0);
    });

  sandbox
    .command('start')
    .description('Start a stopped node and wait for systemd (and, on a worker, for its Redis replica to catch up)')
    .argument('<node>', 'node id (1), node1, or the container name')
    .option(...nameOpt)
    .action(async (node: string, opts: { name: string }) => {
      const d = ctx.deps();
      const n = await startNode({ name: opts.name, node }, d);
      d.stdout(`node ${n.nodeId} (${n.name}) running\n`);
      ctx.setExitCode(0);
    });
}

/** delete, push. */
function registerDeleteAndPush(sandbox: Command, ctx: SandboxCommandContext): void {
  sandbox
    .command('delete')
    .description('Delete a sandbox: containers, network and state (the cached root filesystem stays)')
    .option(...nameOpt)
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (opts: { name: string; output: string }) => {
      const format = checkOutput(opts.output, ['text', 'json']);
      const d = ctx.deps();
      const res = await deleteSandbox({ name: opts.name }, d);
      if (format === 'json') d.stdout(renderJson(res));
      else d.stdout(res.containers.length === 0 && !res.network && !res.stateDir ? `sandbox "${res.name}" did not exist; nothing to delete\n` : `sandbox "${res.name}" deleted (${res.containers.length} container(s), network ${res.network ?? '-'})\n`);
      ctx.setExitCode(0);
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
      const d = ctx.deps();
      const res = await pushImage({ name: opts.name, image, ...(opts.as ? { as: opts.as } : {}) }, d);
      d.stdout(format === 'json' ? renderJson(res) : `${res.url}\n`);
      ctx.setExitCode(0);
    });
}
