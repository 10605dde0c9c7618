/**
 * Crash-safe file replacement: write a temp file next to the target (created exclusively, so an
 * existing file or symlink is never followed), fsync it, set owner and mode, rename over the
 * target, fsync the directory. A reader sees the old or the new content, never a mix; a kill -9
 * leaves at most a stray `.<name>.ns8ctl-tmp-*` file, which the next write removes.
 */
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../errors.js';

export interface AtomicWriteOptions {
  /** File mode (default 0644). */
  mode?: number;
  /** Owner to set; both or neither (default: leave as created, i.e. the agent's user). */
  uid?: number;
  gid?: number;
}

/** Replaces `file` with `content` atomically (see module doc). Throws `file_write_failed`. */
export async function writeFileAtomic(file: string, content: string | Buffer, opts: AtomicWriteOptions = {}): Promise<void> {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const tmp = path.join(dir, `.${base}.ns8ctl-tmp-${randomBytes(6).toString('hex')}`);
  try {
    await removeStaleTemps(dir, base);
    const fh = await fs.open(tmp, 'wx', opts.mode ?? 0o644);
    try {
      await fh.writeFile(content);
      if (opts.uid !== undefined && opts.gid !== undefined) await fh.chown(opts.uid, opts.gid);
      await fh.chmod(opts.mode ?? 0o644);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.rename(tmp, file);
    const dh = await fs.open(dir, 'r');
    try {
      await dh.sync();
    } finally {
      await dh.close();
    }
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw new Ns8ctlError('file_write_failed', `cannot write ${file}: ${(err as Error).message}`, { cause: err, user: false });
  }
}

async function removeStaleTemps(dir: string, base: string): Promise<void> {
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return;
  }
  const prefix = `.${base}.ns8ctl-tmp-`;
  await Promise.all(names.filter((n) => n.startsWith(prefix)).map((n) => fs.rm(path.join(dir, n), { force: true })));
}
