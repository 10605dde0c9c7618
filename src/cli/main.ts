import { createRequire } from 'node:module';
import type * as CommanderPackage from 'commander';
import type { Command as CommandType, Option as OptionType } from 'commander';
import { toNs8ctlError } from '../errors.js';
import { assertApplySetName } from '../manifest/names.js';
import { ProcessRunner } from '../host/runner.js';
import type { Connection } from '../state/connect.js';
import { resolveStateDir } from '../state/state-dir.js';
import type { CliDeps, GlobalOptions } from './deps.js';

// Command code is loaded when its command runs (ioredis, ajv, yaml cost 300+ ms to load), so
// `--help` and other areas' commands start fast.
const planCommands = () => import('./commands/plan-commands.js');
const moduleCommands = () => import('./commands/module-commands.js');
const getCommands = () => import('./commands/get.js');
import { loadExtensions, placeholderTerm, registerExtensions, type LoadedExtensions, type ProgramExtras } from './extensions.js';

// commander is CommonJS: loaded with `require`, an ES module `import` of it sends its 7 files
// through the ES module loader at every start (about 10 ms of CPU more on Node 20, measured).
// `require` gives the very module instance an `import` would (other areas import it).
const { Command, CommanderError, Help, Option } = createRequire(import.meta.url)('commander') as typeof CommanderPackage;
type Command = CommandType;
type Option = OptionType;

const VERSION = '0.1.0';

/** Collects repeated `-f` values. */
const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

/** What main() needs from the outside world; tests pass their own. */
export interface MainIO {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
  env: NodeJS.ProcessEnv;
  isTTY: boolean;
  stdin: () => Promise<string>;
  cwd: string;
}

/** Standard input, bounded (an endless producer such as /dev/zero is cut off) and strict UTF-8. */
const readStdin = async (): Promise<string> => (await import('../manifest/read-input.js')).readBoundedStdin();

/** The real process's IO. */
export function processIO(): MainIO {
  return {
    stdout: (t) => void process.stdout.write(t),
    stderr: (t) => void process.stderr.write(t),
    env: process.env,
    isTTY: Boolean(process.stdout.isTTY),
    stdin: readStdin,
    cwd: process.cwd(),
  };
}

/** Wraps a command function as a commander action that records its exit code for main(). */
type RunCommand = (fn: (d: CliDeps) => Promise<number>) => () => Promise<void>;

/**
 * Builds the command tree. Every action is a thin adapter: it calls a command function
 * (options, deps) -> exit code, and records the code for main().
 */
export function buildProgram(io: MainIO, setExitCode: (code: number) => void, connections: Connection[], extras: ProgramExtras = {}, loaded: LoadedExtensions = []): Command {
  const program = new Command('ns8ctl');
  const deps = cliDepsFactory(program, io, connections);
  const run: RunCommand = (fn) => async (): Promise<void> => setExitCode(await fn(deps()));
  configureRoot(program, io);
  registerPlanCommands(program, run);
  const get = registerObjectCommands(program, run, deps, setExitCode);
  registerStateCommands(program, run);
  registerExtensions(program, deps, setExitCode, get, extras, loaded);
  program
    .command('completion')
    .description('Print a shell completion script: source <(ns8ctl completion bash), or zsh')
    .argument('<shell>', 'bash | zsh')
    .action((shell: string) => run(async (d) => (await import('./commands/completion.js')).completionCommand(shell, program, d.stdout))());
  return program;
}

/** The deps of each command: built from the global options when it runs; one Redis connection per process, opened on first use and recorded in `connections`. */
function cliDepsFactory(program: Command, io: MainIO, connections: Connection[]): () => CliDeps {
  const runner = new ProcessRunner(1000, undefined, io.env);
  let connection: Promise<Connection> | undefined;
  return (): CliDeps => {
    const g = program.opts<GlobalOptions>();
    return {
      stdout: io.stdout,
      stderr: io.stderr,
      env: io.env,
      isTTY: io.isTTY,
      runner,
      stdin: io.stdin,
      cwd: io.cwd,
      stateDir: resolveStateDir(g.stateDir, io.env),
      connect: (o = {}) => {
        connection ??= import('../state/connect.js')
          .then(({ connectRedis }) => connectRedis({ url: g.redis, stateDir: resolveStateDir(g.stateDir, io.env), env: io.env, runner, name: 'ns8ctl', ...o }))
          .then((c) => {
            connections.push(c);
            return c;
          });
        return connection;
      },
    };
  };
}

/** Global options, output and help settings of the root command. */
function configureRoot(program: Command, io: MainIO): void {
  program
    .description('Declarative reconciler for NethServer 8 modules: manifests in, converged nodes out.')
    .version(VERSION)
    .option('--redis <url>', 'Redis URL (default: $NS8CTL_REDIS_URL, else 127.0.0.1:6379, else an embedded redis-server)')
    .option('--state-dir <dir>', 'local state directory (default: $NS8CTL_STATE_DIR or ~/.local/state/ns8ctl)')
    .configureOutput({ writeOut: io.stdout, writeErr: io.stderr })
    .configureHelp({ subcommandTerm: (cmd) => placeholderTerm(cmd) ?? new Help().subcommandTerm(cmd) })
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride();
}

// Checked as it is parsed: the name becomes a Redis key part (ns8ctl/inventory/<name>).
const applySetOption = (): Option => new Option('--applyset <name>', 'inventory name (letters, digits, ".", "_", "-"; at most 63)').default('default').argParser((v: string) => assertApplySetName(v));
const fileOption = (): Option => new Option('-f, --filename <path>', 'manifest file, directory (recursive) or - for stdin; repeatable').argParser(collect).makeOptionMandatory();

/** validate, diff, apply. */
function registerPlanCommands(program: Command, run: RunCommand): void {
  program
    .command('validate')
    .description('Check manifests against the schemas and cluster facts; prints every problem as file:line:col  /pointer  message')
    .addOption(fileOption())
    .option('-o, --output <format>', 'text or json', 'text')
    .option('--offline', 'do not read cluster facts from Redis (node records)')
    .action((opts) => run(async (d) => (await import('./commands/validate.js')).validateCommand(opts, d))());

  program
    .command('diff')
    .description('Show what apply would change. Exit 0: no changes, 1: changes, >1: error (like kubectl diff)')
    .addOption(fileOption())
    .option('--prune', 'also show deletions of inventory objects that left the manifests')
    .addOption(applySetOption())
    .option('--out <file>', 'also save the plan (the reviewed desired objects, encrypted with this host\'s plan key; mode 0600) for: ns8ctl apply --plan FILE')
    .option('--force-prune', 'with --out: allow the saved plan to prune more than half (or all) of the apply set')
    .option('--allow-empty', 'with --prune: an empty directory or file set is valid and prunes every object of the apply set')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((opts) => run(async (d) => (await planCommands()).diffCommand(opts, d))());

  program
    .command('apply')
    .description('Make desired state in Redis match the manifests, atomically; or apply a plan saved by diff --out (exit 3 when it is stale)')
    .addOption(new Option('-f, --filename <path>', 'manifest file, directory (recursive) or - for stdin; repeatable').argParser(collect))
    .option('--plan <file>', 'apply exactly this saved plan (ns8ctl diff --out), or nothing when desired state changed since')
    .option('--prune', 'delete objects of this apply set that left the manifests (data kept unless their policy says Delete)')
    .option('--force-prune', 'allow pruning more than half (or all) of the apply set')
    .option('--allow-empty', 'with --prune: an empty directory or file set is valid and prunes every object of the apply set (removing the last one)')
    .option('--dry-run', 'print the plan, write nothing')
    .addOption(applySetOption())
    .option('-o, --output <format>', 'text or json', 'text')
    .action((opts) => run(async (d) => (await planCommands()).applyCommand(opts, d))());
}

/** get (with --watch), delete, add-module, remove-module, adopt. Returns `get`, which extensions add resources to. */
function registerObjectCommands(program: Command, run: RunCommand, deps: () => CliDeps, setExitCode: (code: number) => void): Command {
  const get = program
    .command('get')
    .description('List modules, repositories, nodes (desired state with observed status) or sources (controller status)')
    .argument('<resource>', 'modules | repositories | nodes | backupdestinations | backupschedules | sources (or: get available)')
    .argument('[name]', 'one object')
    .option('-o, --output <format>', 'table, wide, json or yaml', 'table')
    .option('-w, --watch', 'after listing, print again whenever something changes (Redis notifications, no polling); Ctrl-C ends')
    .option('--show-secrets', 'print secret values (passwords, tokens, URL passwords) instead of masking them')
    .action(async (resource: string, name: string | undefined, opts: { output?: string; watch?: boolean; showSecrets?: boolean }) => {
      if (!opts.watch) return run(async (d) => (await getCommands()).getCommand(resource, name, opts, d))();
      const { watchModules } = await import('./commands/controller.js');
      const { shutdownSignal } = await import('../runtime/shutdown.js');
      const s = shutdownSignal();
      try {
        setExitCode(await watchModules({ ...deps(), signal: s.signal }, async () => (await getCommands()).getCommand(resource, name, opts, deps())));
      } finally {
        s.dispose();
      }
    });

  program
    .command('delete')
    .description('Remove one object from desired state (module data is kept unless its policy or --no-preserve says otherwise)')
    .argument('<resource>', 'module | repository | node | backupdestination | backupschedule')
    .argument('<id>', 'instance id, repository name, node id or backup destination/schedule name')
    .option('--no-preserve', 'erase the module data too')
    .option('--manifests <dir>', 'also delete <dir>/<id>.yaml')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((resource: string, id: string, opts: { preserve?: boolean; manifests?: string; output?: string }) =>
      run(async (d) => (await moduleCommands()).deleteCommand(resource, id, { noPreserve: opts.preserve === false, ...(opts.manifests ? { manifests: opts.manifests } : {}), ...(opts.output ? { output: opts.output } : {}) }, d))());

  program
    .command('add-module')
    .description('Add an instance with the next free id (NS8 add-module), optionally writing its manifest')
    .argument('<module>', 'module name (dokuwiki) or image URL (ghcr.io/nethserver/dokuwiki:1.2.3)')
    .argument('<node_id>', 'node id')
    .option('--manifests <dir>', 'write the new manifest to <dir>/<id>.yaml')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((module: string, node: string, opts) => run(async (d) => (await moduleCommands()).addModuleCommand(module, node, opts, d))());

  program
    .command('remove-module')
    .description('Remove an instance (NS8 remove-module); data is preserved unless --no-preserve')
    .argument('<id>', 'instance id')
    .option('--no-preserve', 'erase the module data too')
    .option('--manifests <dir>', 'also delete <dir>/<id>.yaml')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((id: string, opts: { preserve?: boolean; manifests?: string; output?: string }) =>
      run(async (d) => (await moduleCommands()).removeModuleCommand(id, { noPreserve: opts.preserve === false, ...(opts.manifests ? { manifests: opts.manifests } : {}), ...(opts.output ? { output: opts.output } : {}) }, d))());

  program
    .command('adopt')
    .description('Write manifests for what NS8 runs but ns8ctl does not manage yet (instances made in the NS8 UI), to take them over with apply')
    .argument('<resource>', 'modules | repositories')
    .argument('[names...]', 'only these instance ids or repository names (default: every one not managed yet)')
    .option('--manifests <dir>', 'write <dir>/<name>.yaml (refused when one exists) instead of printing')
    .option('-o, --output <format>', 'yaml or json', 'yaml')
    .action((resource: string, names: string[], opts: { manifests?: string; output?: string }) => run(async (d) => (await import('./commands/adopt.js')).adoptCommand(resource, names, opts, d))());
  return get;
}

/** recover, backup-state, restore-state. */
function registerStateCommands(program: Command, run: RunCommand): void {
  program
    .command('recover')
    .description('Rebuild desired state after Redis lost it, from what this node runs (node agent records, environment files), into apply set "recovered"')
    .option('--node <id>', 'only instances of this node (and the node of instances whose records do not say)')
    .option('--manifests <dir>', 'also write <dir>/<id>.yaml per recovered object (refused when one exists)')
    .option('--dry-run', 'print what would be recovered, write nothing')
    .option('--yes', 'write it (without --yes recover only prints)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((opts) => run(async (d) => (await import('./commands/recover.js')).recoverCommand(opts, d))());

  program
    .command('backup-state')
    .description('Save desired state, inventories and NS8 bookkeeping to one encrypted file (passphrase: --passphrase-file or $NS8CTL_STATE_PASSPHRASE)')
    .requiredOption('--out <file>', 'file to write (atomically, mode 0600)')
    .option('--passphrase-file <file>', 'read the passphrase from this file (default: $NS8CTL_STATE_PASSPHRASE)')
    .option('--allow-empty', 'write the file even when desired state has no objects')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((opts) => run(async (d) => (await import('./commands/state-backup.js')).backupStateCommand(opts, d))());

  program
    .command('restore-state')
    .description('Restore a backup-state file in one atomic write; refuses over different objects unless --force')
    .argument('<file>', 'a file written by backup-state')
    .option('--passphrase-file <file>', 'read the passphrase from this file (default: $NS8CTL_STATE_PASSPHRASE)')
    .option('--force', 'replace objects and values that differ from the file')
    .option('--dry-run', 'print what would be restored, write nothing')
    .option('--yes', 'write it (without --yes restore-state only prints)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action((file: string, opts) => run(async (d) => (await import('./commands/state-backup.js')).restoreStateCommand(file, opts, d))());
}

/**
 * Runs the CLI and returns the exit code (0 ok, 1 error or diff with changes, 2 usage).
 * Only this function decides exit codes; errors are printed once, as text or (-o json) JSON.
 */
export async function main(argv: string[], io: MainIO = processIO(), extras: ProgramExtras = {}): Promise<number> {
  let code = 0;
  const connections: Connection[] = [];
  const program = buildProgram(io, (c) => (code = c), connections, extras, await loadExtensions(argv));
  const wantsJson = argv.some((a, i) => (a === '-o' || a === '--output') && argv[i + 1] === 'json') || argv.includes('--output=json') || argv.includes('-ojson');
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version end here with exit code 0; usage errors with 2.
      code = err.exitCode === 0 ? 0 : 2;
    } else {
      const e = toNs8ctlError(err);
      // Loaded on this way out only: a command that succeeds never needs them.
      const [{ maskSecrets, maskString }, { renderJson }] = await Promise.all([import('../runtime/mask.js'), import('../runtime/output.js')]);
      // Error text may quote a URL, a Redis reply or a value: secrets in it are masked here, on every command's way out.
      if (wantsJson) io.stdout(renderJson(maskSecrets(e.toJSON())));
      io.stderr(`error: ${maskString(e.message)}\n`);
      if (!e.user && io.env.NS8CTL_DEBUG) io.stderr(`${maskString((e.cause as Error | undefined)?.stack ?? e.stack ?? '')}\n`);
      code = Math.max(e.exitCode, 1);
      // diff uses 1 for "changes": its errors must be > 1 (like kubectl diff).
      if (argv.includes('diff')) code = Math.max(code, 2);
    }
  } finally {
    for (const c of connections) c.redis.disconnect();
  }
  return code;
}
