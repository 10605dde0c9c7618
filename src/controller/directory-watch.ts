/**
 * Watches manifest paths (files or directories, recursively) with chokidar (inotify: no polling)
 * and calls `onChange` once per burst of file events, after `debounceMs` of quiet. Safe for
 * atomic saves (write a temp file, rename over the target): the rename is an event like any
 * other, and temp/hidden/backup names are ignored, so the reconcile that follows sees the new
 * content. Only *when* is reported: the reconcile re-reads everything.
 */
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';
import { Ns8ctlError } from '../errors.js';
import { MANIFEST_EXTENSIONS } from '../manifest/load.js';
import { systemClock, type Clock, type TimerHandle } from '../runtime/clock.js';

export interface DirectoryWatchOptions {
  paths: string[];
  /** Quiet time before `onChange` fires (default 100 ms). */
  debounceMs?: number;
  /** Longest a burst can postpone `onChange` (default 1 s): a file written non-stop still triggers. */
  maxWaitMs?: number;
  onChange: (changed: string[]) => void;
  onError?: (err: Error) => void;
  clock?: Clock;
}

/**
 * True for names the loader never reads and editors use for temp files: dot-files (`.x.swp`,
 * `.#x`), backups (`x~`), and files whose extension is not a manifest one. Directories, whatever
 * dots their names hold (`prod.v2`), pass; so does a path not known to be a file (`isFile` false).
 */
export function ignoredName(file: string, isFile: boolean): boolean {
  const base = path.basename(file);
  if (base.startsWith('.') || base.endsWith('~')) return true;
  if (!isFile) return false;
  return !(MANIFEST_EXTENSIONS as readonly string[]).includes(path.extname(base).toLowerCase());
}

/** See the module doc. */
export class DirectoryWatch {
  private watcher: FSWatcher | undefined;
  private timer: TimerHandle | undefined;
  private pending = new Set<string>();
  private firstAt = 0;
  private readonly clock: Clock;

  constructor(private readonly opts: DirectoryWatchOptions) {
    this.clock = opts.clock ?? systemClock;
  }

  /**
   * Starts watching; resolves once the initial scan is done (changes after that are reported).
   * @throws Ns8ctlError `watch_failed` when the paths cannot be watched.
   */
  async start(): Promise<void> {
    if (this.watcher) return;
    const roots = new Set(this.opts.paths.map((p) => path.resolve(p)));
    const watcher = watch([...roots], {
      ignoreInitial: true,
      persistent: true,
      atomic: true,
      // The loader never follows links to directories (they can loop or leave the source root): nor does the watch.
      followSymlinks: false,
      // The roots themselves are always watched, whatever their names. chokidar also asks without
      // stats (e.g. before descending into a directory): then only the name rules apply, never the
      // extension one, or a directory named `prod.v2` would never be watched.
      ignored: (p, stats) => !roots.has(path.resolve(p)) && ignoredName(p, stats?.isFile() ?? false),
    });
    this.watcher = watcher;
    watcher.on('all', (_event, p) => this.bump(p));
    await new Promise<void>((resolve, reject) => {
      watcher.once('ready', () => resolve());
      watcher.once('error', (err) => reject(new Ns8ctlError('watch_failed', `cannot watch ${[...roots].join(', ')}: ${(err as Error).message}`, { cause: err })));
    });
    watcher.on('error', (err) => this.opts.onError?.(err as Error));
  }

  private bump(p: string): void {
    if (this.pending.size === 0) this.firstAt = this.clock.now();
    this.pending.add(p);
    if (this.timer !== undefined) this.clock.clearTimer(this.timer);
    const left = this.firstAt + (this.opts.maxWaitMs ?? 1000) - this.clock.now();
    this.timer = this.clock.setTimer(() => {
      this.timer = undefined;
      const changed = [...this.pending].sort();
      this.pending = new Set();
      this.opts.onChange(changed);
    }, Math.max(0, Math.min(this.opts.debounceMs ?? 100, left)));
  }

  /** Stops watching; a pending debounced call is dropped. Idempotent. */
  async stop(): Promise<void> {
    if (this.timer !== undefined) this.clock.clearTimer(this.timer);
    this.timer = undefined;
    const w = this.watcher;
    this.watcher = undefined;
    await w?.close();
  }
}
