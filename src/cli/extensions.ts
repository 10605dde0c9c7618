import type { Command } from 'commander';
import type { ControllerExtras } from './commands/controller.js';
import type { ModuleSpec } from '../manifest/types.js';
import type { CliDeps } from './deps.js';

/** What embedders and tests may inject into the command tree. */
export interface ProgramExtras {
  /** Node agent factory, abort signal, resolver overrides for `run` / `controller`. */
  controller?: ControllerExtras;
}

/**
 * The other areas' top-level commands. Loading an area's code costs 150-450 ms (chokidar,
 * ajv, ...), so a command line loads only the area it names; `--help`, `help` and unknown commands
 * load them all. A unit test checks this table against what each area really registers.
 */
export const AREA_COMMANDS = {
  repository: ['repo', 'search', 'createrepo'],
  nodeAgent: ['node-agent'],
  controller: ['controller', 'run', 'suspend', 'resume', 'events'],
  agent: ['run-action', 'publish', 'runagent', 'agent'],
  sandbox: ['sandbox'],
  backup: ['backup', 'restore'],
} as const satisfies Record<string, readonly string[]>;

export type Area = keyof typeof AREA_COMMANDS;

/** Commands main.ts defines itself; `get` also needs the repository area (`get available`). */
const CORE: Record<string, Area[]> = { validate: [], diff: [], apply: [], delete: [], 'add-module': [], 'remove-module': [], adopt: [], recover: [], 'backup-state': [], 'restore-state': [], get: ['repository'] };

/** Global options that take a value (their value is not the command name). */
const GLOBAL_WITH_VALUE = new Set(['--redis', '--state-dir']);

/**
 * How the root help lists each area command without loading its area (which costs 150-450 ms):
 * the help term and the description, exactly as the area registers them (a unit test keeps this
 * table equal to the real registration).
 */
export const AREA_COMMAND_SUMMARIES: Record<string, { term: string; description: string }> = {
  repo: { term: 'repo', description: 'Software repositories (NS8 cluster/repository/*)' },
  search: { term: 'search [options] [text]', description: 'Search the modules offered by the enabled repositories (id, name, description, category)' },
  createrepo: { term: 'createrepo [options] [dir]', description: 'Build repodata.json from module directories (metadata.json, logo.png 256x256, screenshots/*.png 1024x768) and the registry tags' },
  'node-agent': { term: 'node-agent [options]', description: 'Reconcile the module instances placed on one node against this host (run as root on that node)' },
  controller: { term: 'controller [options]', description: 'Run the cluster controller: keep desired state equal to its sources (manifests directories, git branches), report conditions and events (until SIGTERM)' },
  run: { term: 'run [options]', description: 'Run the controller and the node agent of this node in one process (embedded Redis when none answers; until SIGTERM)' },
  suspend: { term: 'suspend [options] [resource] [name]', description: 'Suspend reconciliation of a module instance or of a whole source (no arguments: the source "default")' },
  resume: { term: 'resume [options] [resource] [name]', description: 'Resume reconciliation of a suspended module instance or source' },
  events: { term: 'events [options]', description: 'Show controller events (newest last); -w follows new ones' },
  'run-action': { term: 'run-action [options] <id> <action>', description: "Run an action of an instance's agent: submit a task, follow its progress, print its output (exit code: the task's)" },
  publish: { term: 'publish [options] <channel> <json>', description: 'Publish an event: PUBLISH <source>/event/<name> with a JSON payload' },
  runagent: { term: 'runagent [options] [command...]', description: "Run a command (or a login shell on a terminal) in an instance's agent environment, as its user" },
  agent: { term: 'agent [options]', description: "Run an instance's module agent (normally started by its agent unit)" },
  sandbox: { term: 'sandbox', description: 'NS8 nodes as local containers with systemd, rootless Podman and Redis (like kind for Kubernetes)' },
  backup: { term: 'backup', description: 'Backups of module instances to BackupDestinations (restic)' },
  restore: { term: 'restore [options] <id>', description: "Put an installed instance's data back from a backup snapshot (its node agent stops its services, restores, starts them)" },
};

/** Commands that need every area loaded (they describe the whole tree, options included). */
const NEEDS_ALL = new Set(['completion']);

/**
 * The areas `argv` needs: the named command's (`help X`: X's). The root help, no command and an
 * unknown command need none: area commands are listed from AREA_COMMAND_SUMMARIES.
 */
export function areasFor(argv: readonly string[]): Area[] {
  const all = Object.keys(AREA_COMMANDS) as Area[];
  const positional: string[] = [];
  for (let i = 0; i < argv.length && positional.length < 2; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (GLOBAL_WITH_VALUE.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    positional.push(a);
  }
  let command = positional[0];
  if (command === 'help') command = positional[1];
  if (command === undefined) return [];
  if (NEEDS_ALL.has(command)) return all;
  if (command in CORE) return CORE[command]!;
  for (const area of all) if ((AREA_COMMANDS[area] as readonly string[]).includes(command)) return [area];
  return [];
}

/** Marks a placeholder command with the help term it stands for. */
const PLACEHOLDER_TERM = Symbol('ns8ctl.placeholderTerm');

/** The help term of a placeholder area command, or undefined for a real command. */
export function placeholderTerm(cmd: Command): string | undefined {
  return (cmd as unknown as Record<symbol, string | undefined>)[PLACEHOLDER_TERM];
}

type Registrar = (program: Command, deps: () => CliDeps, setExitCode: (code: number) => void, get: Command, extras: ProgramExtras, resolveImage: (spec: ModuleSpec) => Promise<string>) => void;

const LOADERS: Record<Area, () => Promise<Registrar>> = {
  repository: async () => {
    const { registerRepositoryCommands } = await import('./commands/repository.js');
    return (program, deps, setExitCode, get) => registerRepositoryCommands(program, deps, setExitCode, get);
  },
  nodeAgent: async () => {
    const { registerNodeAgentCommand } = await import('./commands/node-agent.js');
    return (program, deps, setExitCode, _get, _extras, resolveImage) => registerNodeAgentCommand(program, deps, setExitCode, { resolveImage });
  },
  controller: async () => {
    const { registerControllerCommands } = await import('./commands/controller.js');
    return (program, deps, setExitCode, _get, extras, resolveImage) => registerControllerCommands(program, deps, setExitCode, { resolveImage, ...extras.controller });
  },
  agent: async () => {
    const { registerAgentCommands } = await import('./commands/agent.js');
    return (program, deps, setExitCode) => registerAgentCommands(program, deps, setExitCode);
  },
  sandbox: async () => {
    const { registerSandboxCommands } = await import('./commands/sandbox.js');
    return (program, deps, setExitCode) =>
      registerSandboxCommands(program, {
        deps: () => {
          const d = deps();
          return { stdout: d.stdout, stderr: d.stderr, env: d.env, runner: d.runner };
        },
        setExitCode,
      });
  },
  backup: async () => {
    const { registerBackupCommands, registerRestoreCommand } = await import('./commands/backup.js');
    return (program, deps, setExitCode) => {
      registerBackupCommands(program, deps, setExitCode);
      registerRestoreCommand(program, deps, setExitCode);
    };
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
  // Area commands not loaded appear in the root help and in "did you mean" suggestions only; a
  // command line that names one always loads its area first (areasFor), so they never run.
  const present = new Set(program.commands.map((c) => c.name()));
  for (const [name, summary] of Object.entries(AREA_COMMAND_SUMMARIES)) {
    if (present.has(name)) continue;
    const cmd = program.command(name, { hidden: false }).description(summary.description).allowUnknownOption().allowExcessArguments();
    (cmd as unknown as Record<symbol, string>)[PLACEHOLDER_TERM] = summary.term;
  }
}
