/**
 * `ns8ctl backup ...`: the command group of backups. Each subcommand registers itself through its
 * own function, so adding one is adding a function and one call in registerBackupCommands.
 *
 * `backup set-password <destination>` stores the restic password of a BackupDestination in
 * `ns8ctl/secret/backup_destination/<name>` (keys.backupPassword): a key under `ns8ctl/`, which the
 * module users' Redis ACL does not cover (src/node-agent/redis-acl.ts), so only the admin and the
 * node agents read it. The password never appears in a manifest, a plan, an event, an error or
 * any output: it is read from a file or from standard input, never from the command line (`ps`
 * shows command lines to every local user).
 */
import type { Command } from 'commander';
import { RedisError, RefusedError, UsageError } from '../../errors.js';
import { assertObjectId } from '../../manifest/names.js';
import { readBoundedFile } from '../../manifest/read-input.js';
import { keys } from '../../state/keys.js';
import { renderJson, parseOutput } from '../../runtime/output.js';
import type { CliDeps } from '../deps.js';
import type { BackupListOptions, BackupRunOptions, RestoreOptions } from './backup-run.js';
import type { VerifyOptions } from './backup-verify.js';

/** Longest password accepted, in UTF-8 bytes. */
export const MAX_BACKUP_PASSWORD_BYTES = 4096;

/** The field of keys.backupPassword(name) that holds the password. */
export const BACKUP_PASSWORD_FIELD = 'password';

export interface SetPasswordOptions {
  passwordFile?: string;
  passwordStdin?: boolean;
  output?: string;
}

const invalid = (why: string): RefusedError => new RefusedError('backup_password_invalid', `the backup password is refused: ${why}; nothing was written`);

/**
 * The password in `raw` (what a file or standard input held): one trailing newline (`\n` or
 * `\r\n`, as `echo` and editors leave) is stripped; the rest must be 1 to 4096 bytes without a
 * line break or NUL. Messages never quote the value.
 * @throws RefusedError `backup_password_invalid`.
 */
export function checkBackupPassword(raw: string): string {
  const password = raw.replace(/\r?\n$/, '');
  if (password.length === 0) throw invalid('it is empty');
  const bytes = Buffer.byteLength(password, 'utf8');
  if (bytes > MAX_BACKUP_PASSWORD_BYTES) throw invalid(`it is ${bytes} bytes long; at most ${MAX_BACKUP_PASSWORD_BYTES} bytes are allowed`);
  if (/[\r\n]/.test(password)) throw invalid('it holds a line break before its end; a password is one line (only one trailing newline is stripped)');
  if (password.includes('\0')) throw invalid('it holds a NUL character');
  return password;
}

/**
 * Reads the password from `--password-file F` or `--password-stdin` (exactly one), bounded.
 * @throws UsageError when neither or both are given, or the file cannot be read;
 *   RefusedError `backup_password_invalid` (checkBackupPassword).
 */
async function readPassword(opts: SetPasswordOptions, deps: CliDeps): Promise<string> {
  if (Boolean(opts.passwordFile) === Boolean(opts.passwordStdin)) {
    throw new UsageError('give the password with exactly one of --password-file FILE and --password-stdin (never on the command line: every local user can read command lines)');
  }
  if (opts.passwordStdin) return checkBackupPassword(await deps.stdin());
  // Bounded well above the limit, so checkBackupPassword can say how long a long password is.
  const r = readBoundedFile(opts.passwordFile!, 16 * MAX_BACKUP_PASSWORD_BYTES);
  if (!r.ok) throw new UsageError(`--password-file ${JSON.stringify(opts.passwordFile)}: ${r.message}`);
  return checkBackupPassword(r.text);
}

/**
 * `ns8ctl backup set-password <destination> (--password-file F | --password-stdin)`: HSET
 * `ns8ctl/secret/backup_destination/<destination>` `password`. The destination need not be
 * applied yet (a note says so): the password can be in place before the first backup runs.
 * Prints whether it was set or replaced, never the value.
 * @throws UsageError for a bad name or options; RefusedError `backup_password_invalid`;
 *   RedisError when Redis refuses the write.
 */
export async function setPasswordCommand(destination: string, opts: SetPasswordOptions, deps: CliDeps): Promise<number> {
  assertObjectId('BackupDestination', destination);
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const password = await readPassword(opts, deps);
  const { redis } = await deps.connect();
  const key = keys.backupPassword(destination);
  let res: Array<[Error | null, unknown]> | null;
  try {
    res = await redis.multi().hexists(key, BACKUP_PASSWORD_FIELD).hset(key, BACKUP_PASSWORD_FIELD, password).exists(keys.desired('BackupDestination', destination)).exec();
  } catch (err) {
    // Redis' own message only, no cause: the command and its arguments (the password) are never quoted or logged.
    throw new RedisError('redis_command_failed', `writing ${key}: ${(err as Error).message}`);
  }
  const failed = res ? res.find(([err]) => err)?.[0]?.message : 'no reply';
  if (failed !== undefined || !res) throw new RedisError('redis_command_failed', `writing ${key}: ${failed ?? 'no reply'}`);
  const replaced = res[0]![1] === 1;
  const declared = res[2]![1] === 1;
  if (format === 'json') {
    deps.stdout(renderJson({ destination, key, password: replaced ? 'replaced' : 'set', declared }));
  } else {
    deps.stdout(`Password of backup destination ${destination} ${replaced ? 'replaced' : 'set'} (${key}).\n`);
    if (!declared) deps.stderr(`note: no BackupDestination ${destination} is in desired state yet; the password is used once one is applied.\n`);
  }
  return 0;
}

/** Registers `backup set-password` on the `backup` command group. */
export function registerSetPasswordSubcommand(backup: Command, deps: () => CliDeps, setExitCode: (code: number) => void): void {
  backup
    .command('set-password')
    .description('Store the restic password of a BackupDestination (admin and node agents only can read it; never printed)')
    .argument('<destination>', 'name of the BackupDestination')
    .option('--password-file <file>', 'read the password from this file (one trailing newline is stripped)')
    .option('--password-stdin', 'read the password from standard input (one trailing newline is stripped)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (destination: string, opts: SetPasswordOptions) => setExitCode(await setPasswordCommand(destination, opts, deps())));
}

/** Description of the `backup` command group (also the root help's summary, src/cli/extensions.ts). */
export const BACKUP_DESCRIPTION = 'Backups of module instances to BackupDestinations (restic)';

/**
 * The `backup` command group and its subcommands. Returns the group so callers (tests, other
 * registrations) can add to it.
 */
export function registerBackupCommands(program: Command, deps: () => CliDeps, setExitCode: (code: number) => void): Command {
  const backup = program.command('backup').description(BACKUP_DESCRIPTION);
  registerSetPasswordSubcommand(backup, deps, setExitCode);
  registerRunAndListSubcommands(backup, deps, setExitCode);
  return backup;
}

/** Registers `backup run` and `backup list`. */
export function registerRunAndListSubcommands(backup: Command, deps: () => CliDeps, setExitCode: (code: number) => void): void {
  backup
    .command('run')
    .description("Back up now, on this node, the instances a BackupSchedule selects here (what the schedule's timer runs; as root on the node)")
    .argument('<schedule>', 'name of the BackupSchedule')
    .option('--node <id>', "this node's id (default $NS8CTL_NODE_ID)")
    .option('--instance <id...>', 'only these instances (among those the schedule selects here)')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (schedule: string, opts: BackupRunOptions) => setExitCode(await (await import('./backup-run.js')).backupRunCommand(schedule, opts, deps())));
  backup
    .command('list')
    .description('The instances each BackupDestination holds backups of, with their last snapshot (from the backup index)')
    .option('--destination <name>', 'only this BackupDestination')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (opts: BackupListOptions) => setExitCode(await (await import('./backup-run.js')).backupListCommand(opts, deps())));
  backup
    .command('verify')
    .description('Restore the latest snapshot of each backed-up instance into a throw-away instance on its node, wait until it is Ready, remove it')
    .option('--destination <name>', 'only backups in this BackupDestination')
    .option('--instance <id...>', 'only backups of these instances')
    .option('--timeout <duration>', 'longest wait for each copy to become Ready, then to be removed', '15m')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (opts: VerifyOptions) => setExitCode(await (await import('./backup-verify.js')).backupVerifyCommand(opts, deps())));
}

/** Description of `restore` (also the root help's summary, src/cli/extensions.ts). */
export const RESTORE_DESCRIPTION = "Put an installed instance's data back from a backup snapshot (its node agent stops its services, restores, starts them)";

/** Registers the top-level `restore <id>`. */
export function registerRestoreCommand(program: Command, deps: () => CliDeps, setExitCode: (code: number) => void): void {
  program
    .command('restore')
    .description(RESTORE_DESCRIPTION)
    .argument('<id>', 'instance id')
    .option('--snapshot <id>', 'latest (default) or a snapshot id (8 to 64 hex digits)', 'latest')
    .option('--destination <name>', 'the BackupDestination holding the backups (default: the only one that has backups of it)')
    .option('--from <id>', "restore another instance's backup into this one (default: its own)")
    .option('--wait', 'wait until the node agent has carried it out')
    .option('--timeout <duration>', 'longest wait with --wait', '10m')
    .option('-o, --output <format>', 'text or json', 'text')
    .action(async (id: string, opts: RestoreOptions) => setExitCode(await (await import('./backup-run.js')).restoreCommand(id, opts, deps())));
}
