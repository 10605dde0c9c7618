/**
 * `ns8ctl backup verify`: proves each backup can be restored. For every instance of the backup
 * index (of one destination or all, or only `--instance` ones), a throw-away instance of the same
 * image is added on the same node with `restoreFrom` naming the backed-up instance's snapshot,
 * and labelled `ns8ctl.nethserver.org/verify-of: <id>`. The command waits until it is Ready (its
 * data restored, its services running), then removes it with its data and waits until it is gone.
 * What is left is only the instance sequence NS8 also advances for any added instance. The node
 * agents do the work, so the command runs from any machine with Redis access.
 */
import type { Redis } from 'ioredis';
import { Ns8ctlError, toNs8ctlError } from '../../errors.js';
import { readIndex, type IndexEntry } from '../../node-agent/backup/catalog.js';
import { readModuleStatus, condition } from '../../node-agent/status.js';
import { parseDuration } from '../../runtime/duration.js';
import { parseOutput, renderJson, renderTable } from '../../runtime/output.js';
import { TERMINAL_REASONS } from '../../state/status-reasons.js';
import { keys } from '../../state/keys.js';
import type { CliDeps } from '../deps.js';
import { addModuleCommand, deleteCommand } from './module-commands.js';

export interface VerifyOptions {
  destination?: string;
  instance?: string[];
  timeout?: string;
  output?: string;
}

export interface VerifyOutcome {
  destination: string;
  instance: string;
  /** The throw-away instance. */
  copy?: string;
  outcome: 'verified' | 'failed';
  seconds: number;
  message?: string;
}

const VERIFY_LABEL = 'ns8ctl.nethserver.org/verify-of';
const POLL_MS = 1000;

/** Verifies every selected backup in turn; exit code 1 when one failed. */
export async function backupVerifyCommand(opts: VerifyOptions, d: CliDeps): Promise<number> {
  const output = parseOutput(opts.output, ['text', 'json'], 'text');
  const timeoutMs = parseDuration(opts.timeout ?? '15m', '--timeout');
  const { redis } = await d.connect();
  const destinations = opts.destination ? [opts.destination] : (await redis.smembers(keys.desiredIndex('BackupDestination'))).sort();
  const outcomes: VerifyOutcome[] = [];
  for (const destination of destinations) {
    for (const [instance, entry] of await readIndex(redis, destination)) {
      if (opts.instance?.length && !opts.instance.includes(instance)) continue;
      outcomes.push(await verifyOne(redis, d, destination, instance, entry, timeoutMs));
    }
  }
  if (output === 'json') d.stdout(renderJson(outcomes));
  else if (!outcomes.length) d.stdout('no backups to verify\n');
  else d.stdout(renderTable(['destination', 'instance', 'copy', 'outcome', 'seconds', 'message'], outcomes.map((o) => [o.destination, o.instance, o.copy ?? '', o.outcome, o.seconds.toFixed(0), o.message ?? ''])));
  return outcomes.some((o) => o.outcome === 'failed') ? 1 : 0;
}

/** One backup: the copy added, waited for, removed (also when it failed). */
async function verifyOne(redis: Redis, d: CliDeps, destination: string, instance: string, entry: IndexEntry, timeoutMs: number): Promise<VerifyOutcome> {
  const started = Date.now();
  const quiet: CliDeps = { ...d, stdout: () => undefined, stderr: () => undefined };
  let copy: string | undefined;
  let outcome: VerifyOutcome;
  try {
    await addModuleCommand(entry.image, String(entry.node), { output: 'json', labels: { [VERIFY_LABEL]: instance }, spec: { removalPolicy: 'Delete', restoreFrom: { destination, snapshot: 'latest', instance } }, onAdded: (id) => void (copy = id) }, quiet);
    d.stderr(`verify: ${instance} (${destination}) restored into ${copy} on node ${entry.node}...\n`);
    const ready = await waitReady(redis, copy!, started + timeoutMs);
    outcome = { destination, instance, copy: copy!, outcome: ready.ok ? 'verified' : 'failed', seconds: (Date.now() - started) / 1000, ...(ready.ok ? {} : { message: ready.message }) };
  } catch (err) {
    outcome = { destination, instance, ...(copy ? { copy } : {}), outcome: 'failed', seconds: (Date.now() - started) / 1000, message: toNs8ctlError(err).message };
  }
  if (copy) {
    try {
      await deleteCommand('module', copy, { noPreserve: true, output: 'json' }, quiet, 'backup verify');
      await waitGone(redis, copy, Date.now() + timeoutMs);
    } catch (err) {
      outcome = { ...outcome, outcome: 'failed', message: `${outcome.message ? `${outcome.message}; ` : ''}the copy ${copy} was not removed: ${toNs8ctlError(err).message}` };
    }
  }
  return outcome;
}

/** Ready=True, or the first terminal reason, or the deadline. */
async function waitReady(redis: Redis, id: string, deadline: number): Promise<{ ok: boolean; message?: string }> {
  let last = 'no status yet';
  while (Date.now() < deadline) {
    const st = await readModuleStatus(redis, id);
    const ready = condition(st, 'Ready');
    if (ready?.status === 'True') return { ok: true };
    if (ready) last = `${ready.reason}: ${ready.message}`;
    if (ready && TERMINAL_REASONS.has(ready.reason)) return { ok: false, message: last };
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  return { ok: false, message: `not Ready in time (${last})` };
}

/** Until the copy's desired object is gone (its node agent removed it from the host). */
async function waitGone(redis: Redis, id: string, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    if ((await redis.exists(keys.desired('Module', id))) === 0) return;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  throw new Ns8ctlError('verify_cleanup_timeout', `${id} was not removed in time; it is marked for removal and its node agent removes it`);
}
