/**
 * The CLI bundle and its V8 code cache: how `ns8ctl` starts without compiling its code.
 *
 * `scripts/bundle-cli.mjs` (run after `tsc`) writes the CLI and the packages it loads at start into
 * one script, `dist/cli-bundle/ns8ctl.js`, a function expression taking CommonJS' arguments. The
 * bin (`dist/src/cli/bin.js`) compiles it with `vm.Script`, handing V8 the code cache a previous
 * run of the same command wrote (the bytecode of every function that run compiled), so a start
 * deserialises that bytecode instead of resolving, reading and compiling about a hundred modules.
 *
 * The cache is bytecode the process will run, so it is trusted exactly like the code: it is read
 * only from a per-user directory (`$XDG_CACHE_HOME/ns8ctl/code-cache`, else
 * `~/.cache/ns8ctl/code-cache`) that the current user owns and nobody else can write into, and
 * only from a regular file (never through a symbolic link) that the current user owns, that has
 * one link and that nobody else can write. Anything else is ignored (and never overwritten): the
 * command then compiles its code as it would without a cache. V8 itself refuses a cache made by
 * another V8 version, other flags or another source (`cachedDataRejected`); the file name also
 * carries the bundle's content hash, the Node version and the architecture.
 *
 * A cache is written (atomically: a new 0600 file renamed into place) at the exit of a run that
 * had none, or whose cache V8 refused, and that ended with exit code 0 or 1 (`diff` with changes):
 * a run that failed early would cache little of what the command needs. Caches of older bundles
 * for the same command are removed then. Writing never fails a command.
 *
 * When the bundle is missing, or older than the last `tsc` build (`dist/.tsbuildinfo` newer than
 * it: compiled code changed after it was bundled), the bin imports the compiled ES modules
 * instead, exactly as before bundling; so does help (`--help`, `<command> --help`, no command),
 * which needs too little of the CLI to gain from the bundle. `NS8CTL_BUNDLE=off` forces that;
 * `NS8CTL_CODE_CACHE=off` keeps the bundle but neither reads nor writes a cache.
 */
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import vm from 'node:vm';

/** A cache file larger than this is not read (nor written): the CLI's is a few megabytes. */
export const MAX_CODE_CACHE_BYTES = 64 * 1024 * 1024;

/** First line of the bundle: `// ns8ctl-bundle <hash>` (the hash names its caches). */
const BUNDLE_HEADER = /^\/\/ ns8ctl-bundle ([0-9a-f]{16,64})\n/;

/** Global options that take a value (skipped when finding the command name). */
const VALUE_OPTIONS = new Set(['--redis', '--state-dir']);

/** What the CLI entry of the bundle exports. */
export interface CliEntry {
  main: (argv: string[]) => Promise<number>;
}

/**
 * The cache directory of the user running the command: `$XDG_CACHE_HOME/ns8ctl/code-cache` when
 * XDG_CACHE_HOME is an absolute path, else `<home>/.cache/ns8ctl/code-cache`; undefined when no
 * home directory is known.
 */
export function codeCacheDir(env: NodeJS.ProcessEnv, home: () => string = homedir): string | undefined {
  const xdg = env.XDG_CACHE_HOME;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'ns8ctl', 'code-cache');
  let h = env.HOME;
  if (!h) {
    try {
      h = home();
    } catch {
      return undefined;
    }
  }
  return h && path.isAbsolute(h) ? path.join(h, '.cache', 'ns8ctl', 'code-cache') : undefined;
}

/**
 * Which cache a command line uses: its command name (`diff`, `get`, `node-agent`), with `-help`
 * when it asks for help (`diff --help` compiles little of what `diff` does), `help` when it names
 * none. Only letters, digits and `-` (the name becomes part of a file name); anything else is
 * `other`.
 */
export function commandKey(argv: readonly string[]): string {
  const help = argv.includes('--help') || argv.includes('-h');
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (VALUE_OPTIONS.has(a)) {
      i++;
      continue;
    }
    if (a.startsWith('-')) continue;
    if (!/^[a-z][a-z0-9-]{0,39}$/.test(a)) return 'other';
    return help ? `${a}-help` : a;
  }
  return 'help';
}

/** True when `st` is owned by `uid` and nobody else (group, others) may write it. */
const ownedAndPrivate = (st: { uid: number; mode: number }, uid: number): boolean => st.uid === uid && (st.mode & 0o022) === 0;

/**
 * True when `dir` is a directory (not a symbolic link to one) owned by `uid` that no other user
 * may write into: only then may a file in it be trusted or written.
 */
export function trustedCacheDir(dir: string, uid: number): boolean {
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && ownedAndPrivate(st, uid);
  } catch {
    return false;
  }
}

/**
 * The bytes of the cache file `file`, or undefined unless its directory passes
 * `trustedCacheDir` and the file is a regular file (opened without following a symbolic link)
 * with one link, owned by `uid`, writable by nobody else, and at most MAX_CODE_CACHE_BYTES.
 * Checks are made on the opened file (fstat), so a file swapped in after the check is not read.
 */
export function readTrustedCache(file: string, uid: number): Buffer | undefined {
  if (!trustedCacheDir(path.dirname(file), uid)) return undefined;
  let fd: number;
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.nlink !== 1 || !ownedAndPrivate(st, uid) || st.size === 0 || st.size > MAX_CODE_CACHE_BYTES) return undefined;
    const buf = Buffer.allocUnsafe(st.size);
    let got = 0;
    while (got < st.size) {
      const n = readSync(fd, buf, got, st.size - got, got);
      if (n === 0) return undefined;
      got += n;
    }
    return buf;
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes `content` (or what it returns, called only when `dir` is usable) as the cache file
 * `name` in `dir` (created 0700 with its parents when missing),
 * atomically: a new 0600 file, then renamed over `name`. Removes the other files of `dir` whose
 * names start with `stalePrefix` (caches of older bundles for the same command). Writes nothing
 * when `dir` is not trusted (`trustedCacheDir`) or `data` is too large. Never throws.
 */
export function writeCache(dir: string, name: string, content: Buffer | (() => Buffer), uid: number, stalePrefix?: string): boolean {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (!trustedCacheDir(dir, uid)) return false;
    // Made only once the directory is known to be usable: serialising the cache costs milliseconds.
    const data = typeof content === 'function' ? content() : content;
    if (data.length === 0 || data.length > MAX_CODE_CACHE_BYTES) return false;
    const target = path.join(dir, name);
    const tmp = `${target}.${process.pid}.tmp`;
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      let put = 0;
      while (put < data.length) put += writeSync(fd, data, put, data.length - put);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, target);
    if (stalePrefix !== undefined) {
      for (const entry of readdirSync(dir)) {
        if (entry !== name && entry.startsWith(stalePrefix)) rmSync(path.join(dir, entry), { force: true });
      }
    }
    return true;
  } catch {
    return false;
  }
}

/** Where the bundle is, relative to this module (`dist/src/cli/` -> `dist/cli-bundle/`). */
export interface BundlePaths {
  bundle: string;
  /** tsc's build record: newer than the bundle means compiled code changed after bundling. */
  buildInfo: string;
}

/** The bundle and build record of the installation this module belongs to. */
export function defaultBundlePaths(moduleUrl: string): BundlePaths {
  const distDir = path.resolve(path.dirname(fileURLToPath(moduleUrl)), '..', '..');
  return { bundle: path.join(distDir, 'cli-bundle', 'ns8ctl.js'), buildInfo: path.join(distDir, '.tsbuildinfo') };
}

/** True when the bundle exists and no tsc build happened after it was written. */
export function bundleIsCurrent(paths: BundlePaths): boolean {
  let bundleTime: number;
  try {
    bundleTime = statSync(paths.bundle).mtimeMs;
  } catch {
    return false;
  }
  try {
    return statSync(paths.buildInfo).mtimeMs <= bundleTime;
  } catch {
    return true;
  }
}

/** How a bundle was loaded (for tests and `NS8CTL_DEBUG`). */
export interface LoadedBundle {
  entry: CliEntry;
  /** The cache file used or to be written, when caching is on and a cache directory is known. */
  cacheFile?: string;
  /** True when V8 accepted the cache read. */
  cacheUsed: boolean;
}

/**
 * Compiles and runs the bundle at `paths.bundle`, with the code cache of `argv`'s command when
 * one is trusted (owned by `opts.uid`, default the effective uid), and arranges (`opts.whenExiting`,
 * default the process' `exit` event, with its exit code) for the cache to be written when it was
 * missing or refused (see the module comment). Returns undefined for help requests (see
 * commandKey), when the bundle is missing, stale or not a bundle (no header), or with
 * `NS8CTL_BUNDLE=off`: the caller then imports the compiled modules.
 * Errors thrown by the bundle's own top level propagate (they would be bugs of the CLI).
 */
export function loadBundle(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  paths: BundlePaths,
  opts: { uid?: number; whenExiting?: (write: (exitCode: number) => void) => void } = {},
): LoadedBundle | undefined {
  const uid = opts.uid ?? process.geteuid?.() ?? -1;
  const key = commandKey(argv);
  // Help (`--help`, `diff --help`, no command) needs main and commander only: as compiled modules
  // that is 18 small files, which start about 10 ms sooner than the 1.4 MB bundle (21 rounds).
  if (key === 'help' || key.endsWith('-help')) return undefined;
  if (env.NS8CTL_BUNDLE === 'off' || !bundleIsCurrent(paths)) return undefined;
  let source: string;
  try {
    // The bundle is ASCII (esbuild `charset: 'ascii'`): latin1 decodes it without a UTF-8 pass.
    source = readFileSync(paths.bundle, 'latin1');
  } catch {
    return undefined;
  }
  const header = BUNDLE_HEADER.exec(source);
  if (!header) return undefined;
  const dir = env.NS8CTL_CODE_CACHE === 'off' || uid < 0 ? undefined : codeCacheDir(env);
  // `<command>.<bundle hash>.<node version>.<arch>.v8`: a command name holds no dot, so `<command>.` names its caches only.
  const prefix = `${key}.`;
  const name = `${prefix}${header[1]}.${process.version}.${process.arch}.v8`;
  const cacheFile = dir === undefined ? undefined : path.join(dir, name);
  const cachedData = cacheFile === undefined ? undefined : readTrustedCache(cacheFile, uid);
  // No importModuleDynamically: the bundle holds no import() (scripts/bundle-cli.mjs).
  const script = new vm.Script(source, { filename: paths.bundle, ...(cachedData ? { cachedData } : {}) });
  const cacheUsed = cachedData !== undefined && !script.cachedDataRejected;
  const wrapper = script.runInThisContext() as (exports: object, require: NodeJS.Require, module: { exports: object }, filename: string, dirname: string) => void;
  const module = { exports: {} as Partial<CliEntry> };
  wrapper.call(module.exports, module.exports, createRequire(paths.bundle), module, paths.bundle, path.dirname(paths.bundle));
  if (typeof module.exports.main !== 'function') return undefined;
  if (dir !== undefined && cacheFile !== undefined && !cacheUsed) {
    const whenExiting = opts.whenExiting ?? ((write: (exitCode: number) => void): void => void process.once('exit', write));
    whenExiting((code) => {
      if (code === 0 || code === 1) writeCache(dir, name, () => script.createCachedData(), uid, prefix);
    });
  }
  return { entry: module.exports as CliEntry, cacheUsed, ...(cacheFile !== undefined ? { cacheFile } : {}) };
}
