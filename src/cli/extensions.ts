import type { Command } from 'commander';
import type { ControllerExtras } from '../controller/cli.js';
import type { ModuleSpec } from '../manifest/types.js';
import type { CliDeps } from './deps.js';

/** What embedders and tests may inject into the command tree. */
export interface ProgramExtras {
  /** Node agent factory, abort signal, resolver overrides for `run` / `controller`. */
  controller?: ControllerExtras;
}

/**
 * The other areas' top-level commands. Loading an area's code costs 150-450 ms (execa, chokidar,
 * ajv, ...), so a command line loads only the area it names; `--help`, `help` and unknown commands
 * load them all. A unit test checks this table against what each area really registers.
 */
export const AREA_COMMANDS = {
  repository: ['repo', 'search', 'createrepo'],
  nodeAgent: ['node-agent'],
  controller: ['controller', 'run', 'suspend', 'resume', 'events'],
  agent: ['run-action', 'publish', 'runagent', 'agent'],
  sandbox: ['sandbox'],
} as const satisfies Record<string, readonly string[]>;

export type Area = keyof typeof AREA_COMMANDS;

/** Commands main.ts defines itself; `get` also needs the repository area (`get available`). */
const CORE: Record<string, Area[]> = { validate: [], diff: [], apply: [], delete: [], 'add-module': [], 'remove-module': [], adopt: [], get: ['repository'] };

/** Global options that take a value (their value is not the command name). */
const GLOBAL_WITH_VALUE = new Set(['--redis', '--state-dir']);

/** The areas `argv` needs: the named command's, or all when no known command is named. */
export function areasFor(argv: readonly string[]): Area[] {
  const all = Object.keys(AREA_COMMANDS) as Area[];
  let command: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (GLOBAL_WITH_VALUE.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    command = a;
    break;
  }
  if (command === undefined) return all;
  if (command in CORE) return CORE[command]!;
  for (const area of all) if ((AREA_COMMANDS[area] as readonly string[]).includes(command)) return [area];
  return all;
}

type Registrar = (program: Command, deps: () => CliDeps, setExitCode: (code: number) => void, get: Command, extras: ProgramExtras, resolveImage: (spec: ModuleSpec) => Promise<string>) => void;

const LOADERS: Record<Area, () => Promise<Registrar>> = {
  repository: async () => {
    const { registerRepositoryCommands } = await import('../repository/cli.js');
    return (program, deps, setExitCode, get) => registerRepositoryCommands(program, deps, setExitCode, get);
  },
  nodeAgent: async () => {
    const { registerNodeAgentCommand } = await import('../node-agent/cli.js');
    return (program, deps, setExitCode, _get, _extras, resolveImage) => registerNodeAgentCommand(program, deps, setExitCode, { resolveImage });
  },
  controller: async () => {
    const { registerControllerCommands } = await import('../controller/cli.js');
    return (program, deps, setExitCode, _get, extras, resolveImage) => registerControllerCommands(program, deps, setExitCode, { resolveImage, ...extras.controller });
  },
  agent: async () => {
    const { registerAgentCommands } = await import('../agent/cli.js');
    return (program, deps, setExitCode) => registerAgentCommands(program, deps, setExitCode);
  },
  sandbox: async () => {
    const { registerSandboxCommands } = await import('../sandbox/cli.js');
    return (program, deps, setExitCode) =>
      registerSandboxCommands(program, {
        deps: () => {
          const d = deps();
          return { stdout: d.stdout, stderr: d.stderr, env: d.env, runner: d.runner };
        },
        setExitCode,
      });
  },
};

/** The loaded registration code of some areas, in the order they appear in help. */
export type LoadedExtensions = Registrar[];

/** Loads the areas `argv` needs (see AREA_COMMANDS). */
export async function loadExtensions(argv: readonly string[]): Promise<LoadedExtensions> {
  const wanted = new Set(areasFor(argv));
  const order = Object.keys(AREA_COMMANDS) as Area[];
  return Promise.all(order.filter((a) => wanted.has(a)).map((a) => LOADERS[a]()));
}

/**
 * Commands of the other areas (sandbox, repositories, node agent, module agent, controller),
 * wired into the one command tree. Each area exports a `register...` function.
 */
export function registerExtensions(program: Command, deps: () => CliDeps, setExitCode: (code: number) => void, get: Command, extras: ProgramExtras, loaded: LoadedExtensions): void {
  const resolveImage = async (spec: ModuleSpec): Promise<string> => {
    const d = deps();
    const { redis } = await d.connect();
    const { makeImageResolver } = await import('../repository/image-resolver.js');
    return makeImageResolver(redis, { onWarning: (m) => d.stderr(`warning: ${m}\n`) })(spec);
  };
  for (const register of loaded) register(program, deps, setExitCode, get, extras, resolveImage);
}
