/**
 * Copies an instance's state and volumes to another instance (clone, move), as NS8's
 * `clone-module` / `transfer-state` do: the destination runs an rsync server on an allocated port
 * that writes into its own `/srv` layout, the source sends with an rsync client from its `/srv`
 * layout; a first pass while the source runs, a final pass with `--delete-after` once its
 * services are stopped. Both ends run inside their instance's user namespace, so numeric owners
 * travel as the containers see them and land on the destination user's own subordinate ids.
 *
 * Never sent (NS8's rules): `state/agent.env`, `state/environment`, `state/apitoken.cache`; the
 * module may add rsync filter rules in `etc/state-filter-rules.rsync`.
 *
 * The receiver leaves a run directory (`<runBase>/<id>`: config, secrets, pid file) while it
 * lives; `stopReceiver` kills it from its pid file and removes the directory, so a receiver whose
 * node agent was killed is cleaned up by the next pass. The rsync password is in a 0600 file and
 * in the client's environment, never on a command line.
 */
import { createConnection } from 'node:net';
import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../../errors.js';
import { INSTANCE_ID } from '../../manifest/names.js';
import type { CommandRecord, CommandRunner } from '../../host/runner.js';
import { ensureSrvVolume, runInSrv, type SrvTarget } from './srv.js';

/** Files NS8 never transfers: the destination keeps its own identity and credentials. */
export const NEVER_SENT: readonly string[] = ['/state/agent.env', '/state/environment', '/state/apitoken.cache'];

/** Where a receiver listens and how the sender authenticates. */
export interface ReceiverAddress {
  address: string;
  port: number;
  /** rsync user name (the destination id) and password. */
  user: string;
  password: string;
}

/** A running receiver: `done` settles when its rsync server exits. */
export interface Receiver extends ReceiverAddress {
  runDir: string;
  done: Promise<CommandRecord | Error>;
}

const RSYNC_TIMEOUT_MS = 6 * 60 * 60_000;

/** The rsyncd.conf of a receiver: one module `data` writing into /srv as the namespace's root, numeric ids. */
export function receiverConfig(runDir: string, user: string): string {
  checkId(user, 'rsync user');
  return [
    `pid file = ${runDir}/rsyncd.pid`,
    `lock file = ${runDir}/rsyncd.lock`,
    'use chroot = no',
    'numeric ids = yes',
    'max connections = 1',
    '[data]',
    '  path = /srv',
    '  read only = no',
    '  uid = 0',
    '  gid = 0',
    `  auth users = ${user}`,
    `  secrets file = ${runDir}/rsyncd.secrets`,
    '',
  ].join('\n');
}

/** The sender's rsync arguments for one pass (`final`: delete on the destination what the source no longer has). */
export function senderArgs(to: ReceiverAddress, opts: { final: boolean; filterFile?: string }): string[] {
  const args = ['rsync', '-aH', '--numeric-ids', '--stats'];
  if (opts.final) args.push('--delete-after');
  for (const f of NEVER_SENT) args.push(`--filter=- ${f}`);
  if (opts.filterFile) args.push(`--filter=merge ${opts.filterFile}`);
  args.push('./', `rsync://${to.user}@${to.address}:${to.port}/data/`);
  return args;
}

/** Throws unless `id` is an instance id: ids name run directories that are removed recursively. */
function checkId(id: string, what: string): string {
  if (!INSTANCE_ID.test(id) || id.length > 32) throw new Ns8ctlError('transfer_invalid', `${what} ${JSON.stringify(id)}: expected an instance id (<module><N>, e.g. dokuwiki1)`);
  return id;
}

async function pidOf(runDir: string): Promise<number | undefined> {
  const text = await fs.readFile(path.join(runDir, 'rsyncd.pid'), 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 1 ? pid : undefined;
}

/** Resolves once something accepts TCP connections on address:port, or fails after `timeoutMs`. */
async function waitListening(address: string, port: number, timeoutMs: number, done: Promise<unknown>): Promise<void> {
  let exited = false;
  void done.then(() => (exited = true));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = createConnection({ host: address, port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (exited) throw new Ns8ctlError('transfer_failed', `the rsync receiver on ${address}:${port} exited before listening`);
    if (Date.now() > deadline) throw new Ns8ctlError('transfer_failed', `the rsync receiver on ${address}:${port} is not listening after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class StateTransfer {
  constructor(
    private readonly runner: CommandRunner,
    /** Parent of receivers' run directories. */
    private readonly runBase = '/run/ns8ctl/transfer',
  ) {}

  /**
   * Starts the destination's rsync server for the source's `volumes` (created first when
   * missing) and resolves once it accepts connections. A receiver left by an earlier run for the
   * same instance is stopped first.
   */
  async startReceiver(target: SrvTarget, to: ReceiverAddress, volumes: readonly string[]): Promise<Receiver> {
    await this.stopReceiver(target.id);
    for (const v of volumes) await ensureSrvVolume(this.runner, target, v);
    const runDir = path.join(this.runBase, checkId(target.id, 'instance'));
    await fs.mkdir(this.runBase, { recursive: true, mode: 0o711 });
    await fs.mkdir(runDir, { mode: 0o700 });
    await fs.writeFile(path.join(runDir, 'rsyncd.conf'), receiverConfig(runDir, to.user), { mode: 0o600 });
    await fs.writeFile(path.join(runDir, 'rsyncd.secrets'), `${to.user}:${to.password}\n`, { mode: 0o600 });
    if (target.owner.kind === 'user') await this.runner.run(['chown', '-R', `${target.owner.uid}:${target.owner.gid}`, runDir], { purpose: `${target.id}: hand the receiver's files to the instance user`, mutating: true });
    const argv = ['rsync', '--daemon', '--no-detach', `--config=${runDir}/rsyncd.conf`, `--address=${to.address}`, `--port=${to.port}`, '--log-file=/dev/stderr'];
    const done = runInSrv(this.runner, target, argv, { allowFailure: true, timeoutMs: RSYNC_TIMEOUT_MS, purpose: `${target.id}: receive state on port ${to.port}`, mutating: true }).catch((err: unknown) => err as Error);
    try {
      await waitListening(to.address, to.port, 30_000, done);
    } catch (err) {
      await this.stopReceiver(target.id);
      const rec = await done;
      const why = rec instanceof Error ? rec.message : rec.stderr.trim().split('\n').slice(-2).join(' | ');
      throw new Ns8ctlError('transfer_failed', `${(err as Error).message}${why ? `: ${why}` : ''}`, { cause: err });
    }
    return { ...to, runDir, done };
  }

  /** True while the receiver of instance `id` runs (its pid file names a live process). */
  async receiverAlive(id: string): Promise<boolean> {
    const pid = await pidOf(path.join(this.runBase, checkId(id, 'instance')));
    if (pid === undefined) return false;
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }

  /** Stops the receiver of instance `id`, if any (also one left by a killed process), and removes its run directory. Idempotent. */
  async stopReceiver(id: string): Promise<void> {
    const runDir = path.join(this.runBase, checkId(id, 'instance'));
    const pid = await pidOf(runDir);
    if (pid !== undefined) {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // Already gone.
      }
      for (let i = 0; i < 100; i++) {
        try {
          process.kill(pid, 0);
        } catch {
          break;
        }
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    await fs.rm(runDir, { recursive: true, force: true });
  }

  /** One pass from the source to a receiver; returns rsync's statistics text. */
  async send(source: SrvTarget, to: ReceiverAddress, opts: { final: boolean }): Promise<string> {
    const filter = path.join(source.installDir, 'etc', 'state-filter-rules.rsync');
    const hasFilter = await fs.access(filter, constants.R_OK).then(() => true, () => false);
    const argv = senderArgs(to, { final: opts.final, ...(hasFilter ? { filterFile: filter } : {}) });
    const res = await runInSrv(this.runner, source, argv, { env: { RSYNC_PASSWORD: to.password }, timeoutMs: RSYNC_TIMEOUT_MS, purpose: `${source.id}: send state to ${to.address}:${to.port} (${opts.final ? 'final' : 'live'} pass)`, mutating: true });
    return res.stdout;
  }
}
