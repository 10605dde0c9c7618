/**
 * `ns8ctl backup-state --out FILE` and `ns8ctl restore-state FILE [--force] [--dry-run] [--yes]`:
 * the desired state and its bookkeeping (src/state/state-snapshot.ts) in one encrypted file
 * (src/state/state-archive.ts), and back. The passphrase comes from `--passphrase-file` or
 * NS8CTL_STATE_PASSPHRASE, never from the command line. A restore validates every object like
 * apply does and writes everything in one atomic script, or nothing.
 */
import { promises as fs } from 'node:fs';
import { ConflictError, RefusedError, UsageError } from '../../errors.js';
import { writeFileAtomic } from '../../node-agent/atomic-write.js';
import { MAX_ARCHIVE_BYTES, decryptArchive, encryptArchive, readArchiveHeader, resolvePassphrase } from '../../state/state-archive.js';
import { planRestore, readStateSnapshot, snapshotCounts, validateSnapshot } from '../../state/state-snapshot.js';
import { readNodeRecords } from '../../state/read-state.js';
import { executeWrites } from '../../state/write-state.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson } from '../../runtime/output.js';

export interface BackupStateOptions {
  out?: string;
  passphraseFile?: string;
  /** Write a backup even when desired state has no objects (it would replace a useful one). */
  allowEmpty?: boolean;
  output?: string;
}

export interface RestoreStateOptions {
  passphraseFile?: string;
  force?: boolean;
  dryRun?: boolean;
  yes?: boolean;
  output?: string;
}

const countsText = (c: Record<string, number>): string =>
  Object.entries(c)
    .map(([k, v]) => `${v} ${k}`)
    .join(', ');

/**
 * Writes the encrypted backup to `--out` atomically, mode 0600. Refuses an empty desired state
 * unless `--allow-empty` (a backup job running after Redis lost its data must not replace the
 * last good file with an empty one).
 */
export async function backupStateCommand(opts: BackupStateOptions, d: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  if (!opts.out) throw new UsageError('backup-state needs --out FILE');
  const passphrase = await resolvePassphrase(opts.passphraseFile, d.env);
  const { redis } = await d.connect();
  const { snapshot, skipped } = await readStateSnapshot(redis);
  for (const s of skipped) d.stderr(`warning: left out ${s}\n`);
  if (snapshot.objects.length === 0 && !opts.allowEmpty) {
    throw new RefusedError('backup_empty', `desired state has no objects: not writing ${opts.out} (it may replace a good backup; after a loss, use restore-state or recover). Pass --allow-empty to write it anyway`);
  }
  const counts = snapshotCounts(snapshot);
  const created = new Date();
  const bytes = await encryptArchive(snapshot, passphrase, { created, counts });
  await writeFileAtomic(opts.out, bytes, { mode: 0o600 });
  if (format === 'json') d.stdout(renderJson({ file: opts.out, created: created.toISOString(), counts, bytes: bytes.length }));
  else d.stderr(`Saved the desired state to ${opts.out} (${countsText(counts)}; encrypted, mode 0600). Keep the passphrase apart from the file. Restore with: ns8ctl restore-state ${opts.out}\n`);
  return 0;
}

/**
 * Restores a backup. Over an empty desired state everything is written; over existing, different
 * objects or NS8 values it refuses listing them, unless `--force`. Without `--yes` (or with
 * `--dry-run`) it prints what it would do and writes nothing.
 */
export async function restoreStateCommand(file: string, opts: RestoreStateOptions, d: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  const passphrase = await resolvePassphrase(opts.passphraseFile, d.env);
  let bytes: Buffer;
  try {
    const st = await fs.stat(file);
    if (st.size > MAX_ARCHIVE_BYTES) throw new RefusedError('state_archive_invalid', `${file} is ${st.size} bytes, more than a state backup may be (${MAX_ARCHIVE_BYTES})`);
    bytes = await fs.readFile(file);
  } catch (err) {
    if (err instanceof RefusedError) throw err;
    throw new UsageError(`cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  readArchiveHeader(bytes, file);
  const { header, payload } = await decryptArchive(bytes, passphrase, file);
  const { redis } = await d.connect();
  const saved = validateSnapshot(payload, file, await readNodeRecords(redis));
  const { snapshot: current } = await readStateSnapshot(redis);
  const plan = planRestore(saved, current, { force: Boolean(opts.force) });
  // A refusal is decided before printing: with -o json it is part of the one document.
  let refusal: RefusedError | undefined;
  if (plan.conflicts.length > 0 && !opts.force) {
    refusal = new RefusedError('restore_conflicts', `desired state has ${plan.conflicts.length} thing(s) that differ from ${file} (listed above); nothing was written. Restore over them with --force, or remove them first`);
  } else if (plan.ops.length > 0 && !opts.dryRun && !opts.yes) {
    refusal = new RefusedError('confirmation_required', 'restore-state writes desired state only when confirmed: review the above, then run it again with --yes');
  }
  const write = !opts.dryRun && !refusal && plan.ops.length > 0;

  if (format === 'json') {
    d.stdout(renderJson({ file, created: header.created, counts: header.counts, changes: plan.changes, conflicts: plan.conflicts, unchanged: plan.unchanged, forced: Boolean(opts.force), dryRun: Boolean(opts.dryRun), written: write, refused: refusal ? refusal.toJSON() : null }));
    if (refusal) {
      d.stderr(`error: ${refusal.message}\n`);
      return 1;
    }
  } else {
    d.stdout(`Backup ${file}: made ${header.created}, ${countsText(header.counts)}.\n`);
    for (const c of plan.changes) d.stdout(`  ${c}\n`);
    for (const c of plan.conflicts) d.stdout(`  conflict: ${c}${opts.force ? ' (replaced: --force)' : ''}\n`);
    if (plan.unchanged) d.stdout(`  ${plan.unchanged} object(s) already equal\n`);
    if (refusal) throw refusal;
  }
  if (plan.ops.length === 0) {
    if (format !== 'json') d.stderr('Nothing to restore: desired state already has everything the file holds.\n');
    return 0;
  }
  if (opts.dryRun) {
    if (format !== 'json') d.stderr('Dry run: nothing was written.\n');
    return 0;
  }
  try {
    await executeWrites(redis, plan.ops);
  } catch (err) {
    if (err instanceof ConflictError) throw new ConflictError(`${err.message}; nothing was restored: run restore-state again`);
    throw err;
  }
  if (format !== 'json') d.stderr(`Restored ${plan.changes.length} item(s) from ${file} in one write. The controller and node agents pick them up now.\n`);
  return 0;
}
