/**
 * Exclusive advisory file locks that interoperate with NS8: Python's `fcntl.flock` (the agent's
 * `exclusive_file_lock('.environment.lock')`) and `flock(1)` in shell steps lock the same way.
 * Node has no flock(2) binding, so the lock is held by a `flock(1)` child process: it opens the
 * lock file, takes the lock (waiting up to the timeout), prints a line, and keeps the lock until
 * we close its stdin. If this process dies, the pipe closes and the lock goes with it: a crash
 * never leaves a lock behind.
 */
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { Ns8ctlError } from '../errors.js';

export interface FileLockOptions {
  /** How long to wait for the lock (default 30 s). */
  timeoutMs?: number;
  /** Owner given to a lock file this call creates (the module user, so its own steps can open it). */
  owner?: { uid: number; gid: number };
}

/** Creates the lock file when missing (mode 0644, chowned to `owner`); never truncates it. */
async function ensureLockFile(file: string, owner: FileLockOptions['owner']): Promise<void> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(file, 'wx', 0o644);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return;
    throw new Ns8ctlError('lock_failed', `cannot create lock file ${file}: ${(err as Error).message}`, { cause: err, user: false });
  }
  try {
    if (owner) await fh.chown(owner.uid, owner.gid);
  } finally {
    await fh.close();
  }
}

/**
 * Runs `fn` while holding an exclusive flock on `lockFile` (created if missing). Releases the lock
 * when `fn` settles, whatever the outcome.
 * @throws Ns8ctlError `lock_timeout` when the lock is not free within the timeout (naming the file),
 *   `lock_failed` when flock(1) is missing or cannot open the file; `fn`'s own errors pass through.
 */
export async function withFileLock<T>(lockFile: string, fn: () => Promise<T>, opts: FileLockOptions = {}): Promise<T> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  await ensureLockFile(lockFile, opts.owner);
  // flock runs `$SHELL -c`. Never the caller's login shell: `bash -c`, given a socket on stdin
  // (Node's pipes are socket pairs) and no SHLVL, reads ~/.bashrc first, and a root .bashrc that
  // initialises a tool (a pyenv rehash waiting on its own stale lock: 60 s) held every lock up.
  const child = spawn('flock', ['--exclusive', '--conflict-exit-code', '75', '--wait', String(Math.max(timeoutMs, 1) / 1000), lockFile, '-c', 'echo locked && exec head -c1 >/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, SHELL: '/bin/sh' },
  });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => {
    child.on('close', (code) => resolve(code));
    child.on('error', (err) => {
      stderr += err.message;
      resolve(null);
    });
  });
  const acquired = await new Promise<boolean>((resolve) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      if (d.includes('locked')) resolve(true);
    });
    void exited.then(() => resolve(false));
  });
  if (!acquired) {
    const code = await exited;
    if (code === 75) {
      throw new Ns8ctlError('lock_timeout', `${lockFile} is still locked after ${timeoutMs} ms (another process, e.g. a module action, holds it); try again later`);
    }
    const hint = code === null ? ' (is util-linux flock installed?)' : '';
    throw new Ns8ctlError('lock_failed', `cannot lock ${lockFile}: ${stderr.trim() || `flock exited ${code}`}${hint}`, { user: false });
  }
  try {
    return await fn();
  } finally {
    child.stdin.end();
    await exited;
  }
}
