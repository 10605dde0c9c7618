import type { Command } from 'commander';
import { registerAgentCommands } from '../agent/cli.js';
import { registerControllerCommands, type ControllerExtras } from '../controller/cli.js';
import type { ModuleSpec } from '../manifest/types.js';
import { registerNodeAgentCommand } from '../node-agent/cli.js';
import { makeImageResolver } from '../repository/image-resolver.js';
import { registerRepositoryCommands } from '../repository/cli.js';
import { registerSandboxCommands } from '../sandbox/cli.js';
import type { CliDeps } from './deps.js';

/** What embedders and tests may inject into the command tree. */
export interface ProgramExtras {
  /** Node agent factory, abort signal, resolver overrides for `run` / `controller`. */
  controller?: ControllerExtras;
}

/**
 * Commands of the other areas (sandbox, repositories, node agent, module agent, controller),
 * wired into the one command tree. Each area exports a `register...` function.
 */
export function registerExtensions(program: Command, deps: () => CliDeps, setExitCode: (code: number) => void, get: Command, extras: ProgramExtras = {}): void {
  const resolveImage = async (spec: ModuleSpec): Promise<string> => {
    const d = deps();
    const { redis } = await d.connect();
    return makeImageResolver(redis, { onWarning: (m) => d.stderr(`warning: ${m}\n`) })(spec);
  };
  registerRepositoryCommands(program, deps, setExitCode, get);
  registerNodeAgentCommand(program, deps, setExitCode, { resolveImage });
  registerControllerCommands(program, deps, setExitCode, { resolveImage, ...extras.controller });
  registerAgentCommands(program, deps, setExitCode);
  registerSandboxCommands(program, {
    deps: () => {
      const d = deps();
      return { stdout: d.stdout, stderr: d.stderr, env: d.env, runner: d.runner };
    },
    setExitCode,
  });
}
