/**
 * The CLI bundle's V8 code cache (src/cli/code-cache.ts): bytecode the process runs, so it is
 * read only from a private directory of the current user and only from a private, singly linked
 * regular file of that user; the bundle is used only when it is current.
 */
import { chmodSync, linkSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { codeCacheDir, commandKey, loadBundle, readTrustedCache, trustedCacheDir, writeCache, type BundlePaths } from '../../src/cli/code-cache.js';

const uid = process.geteuid!();
let root: string;

beforeEach(() => {
  root = mkdtempSync(path.join(tmpdir(), 'code-cache-'));
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

/** A private cache directory holding one private cache file. */
function privateCache(): { dir: string; file: string } {
  const dir = path.join(root, 'cache');
  mkdirSync(dir, { mode: 0o700 });
  const file = path.join(dir, 'diff-x.v8');
  writeFileSync(file, 'bytes', { mode: 0o600 });
  return { dir, file };
}

/** A fake bundle (header + CommonJS function expression) whose main returns its argument count plus `add`. */
function fakeBundle(add: number): BundlePaths {
  const dist = path.join(root, 'dist');
  mkdirSync(path.join(dist, 'cli-bundle'), { recursive: true });
  const bundle = path.join(dist, 'cli-bundle', 'ns8ctl.js');
  writeFileSync(bundle, `// ns8ctl-bundle 0123456789abcdef${add.toString(16).padStart(16, '0')}\n(function (exports, require, module, __filename, __dirname) {\n"use strict";\nexports.main = async (argv) => argv.length + ${add};\n})\n`);
  return { bundle, buildInfo: path.join(dist, '.tsbuildinfo') };
}

describe('which cache a command line uses', () => {
  test('the command name, skipping global options and their values; help when none is named', () => {
    expect(commandKey(['--redis', 'redis://x/1', 'diff', '-f', 'm/'])).toBe('diff');
    expect(commandKey(['--state-dir', '/tmp/s', 'get', 'modules'])).toBe('get');
    expect(commandKey(['--help'])).toBe('help');
    expect(commandKey([])).toBe('help');
  });

  test('help of a command has a cache of its own (it compiles little of what the command does)', () => {
    expect(commandKey(['diff', '--help'])).toBe('diff-help');
    expect(commandKey(['get', '-h'])).toBe('get-help');
  });

  test('a name that is not a plain command word becomes "other" (it is part of a file name)', () => {
    expect(commandKey(['../../etc/passwd'])).toBe('other');
    expect(commandKey(['Diff'])).toBe('other');
  });

  test('the directory is under XDG_CACHE_HOME when that is absolute, else under the home directory, else none', () => {
    expect(codeCacheDir({ XDG_CACHE_HOME: '/x/cache', HOME: '/home/u' })).toBe('/x/cache/ns8ctl/code-cache');
    expect(codeCacheDir({ XDG_CACHE_HOME: 'relative', HOME: '/home/u' })).toBe('/home/u/.cache/ns8ctl/code-cache');
    expect(codeCacheDir({}, () => '/root')).toBe('/root/.cache/ns8ctl/code-cache');
    expect(codeCacheDir({}, () => '')).toBeUndefined();
  });
});

describe('reading a cache file: only private files of the current user in a private directory', () => {
  test('a 0600 file of the current user in its 0700 directory is read', () => {
    const { file } = privateCache();
    expect(readTrustedCache(file, uid)?.toString()).toBe('bytes');
  });

  test('a file owned by another user is not read', () => {
    const { file, dir } = privateCache();
    // The directory and file belong to `uid`: for any other user both are someone else's.
    expect(trustedCacheDir(dir, uid + 1)).toBe(false);
    expect(readTrustedCache(file, uid + 1)).toBeUndefined();
  });

  test('a file others or the group may write is not read', () => {
    const { file } = privateCache();
    chmodSync(file, 0o602);
    expect(readTrustedCache(file, uid)).toBeUndefined();
    chmodSync(file, 0o620);
    expect(readTrustedCache(file, uid)).toBeUndefined();
  });

  test('nothing is read from a directory others may write into, even a private file', () => {
    const { file, dir } = privateCache();
    chmodSync(dir, 0o777);
    expect(readTrustedCache(file, uid)).toBeUndefined();
    chmodSync(dir, 0o1733);
    expect(readTrustedCache(file, uid)).toBeUndefined();
  });

  test('a symbolic link (to a private file or to a private directory) is not followed', () => {
    const { file, dir } = privateCache();
    const link = path.join(dir, 'link.v8');
    symlinkSync(file, link);
    expect(readTrustedCache(link, uid)).toBeUndefined();
    const dirLink = path.join(root, 'dir-link');
    symlinkSync(dir, dirLink);
    expect(readTrustedCache(path.join(dirLink, 'diff-x.v8'), uid)).toBeUndefined();
  });

  test('a file with a second hard link, an empty file and a missing file are not read', () => {
    const { file, dir } = privateCache();
    linkSync(file, path.join(dir, 'second-name'));
    expect(readTrustedCache(file, uid)).toBeUndefined();
    const empty = path.join(dir, 'empty.v8');
    writeFileSync(empty, '', { mode: 0o600 });
    expect(readTrustedCache(empty, uid)).toBeUndefined();
    expect(readTrustedCache(path.join(dir, 'missing.v8'), uid)).toBeUndefined();
  });
});

describe('writing a cache file', () => {
  test('creates the directory 0700 and the file 0600, atomically, and removes older caches of the same command only', () => {
    const dir = path.join(root, 'a', 'b', 'code-cache');
    expect(writeCache(dir, 'diff.old.v8', Buffer.from('old'), uid)).toBe(true);
    writeCache(dir, 'get.old.v8', Buffer.from('get'), uid);
    writeCache(dir, 'diff-help.old.v8', Buffer.from('help'), uid);
    expect(writeCache(dir, 'diff.new.v8', Buffer.from('new'), uid, 'diff.')).toBe(true);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    expect(statSync(path.join(dir, 'diff.new.v8')).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(['diff-help.old.v8', 'diff.new.v8', 'get.old.v8']);
    expect(readTrustedCache(path.join(dir, 'diff.new.v8'), uid)?.toString()).toBe('new');
  });

  test('writes nothing into a directory others may write into or that belongs to another user', () => {
    const dir = path.join(root, 'shared');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    expect(writeCache(dir, 'diff.v8', Buffer.from('x'), uid)).toBe(false);
    chmodSync(dir, 0o700);
    expect(writeCache(dir, 'diff.v8', Buffer.from('x'), uid + 1)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
    // The cache is not even serialised for a directory that cannot take it.
    chmodSync(dir, 0o777);
    let made = false;
    expect(writeCache(dir, 'diff.v8', () => ((made = true), Buffer.from('x')), uid)).toBe(false);
    expect(made).toBe(false);
  });
});

describe('loading the bundle', () => {
  const env = (): NodeJS.ProcessEnv => ({ XDG_CACHE_HOME: path.join(root, 'xdg') });

  test('runs the bundle, writes the command cache at an exit with code 0, and uses it on the next start', async () => {
    const paths = fakeBundle(100);
    let write: ((code: number) => void) | undefined;
    const first = loadBundle(['diff', '-f', 'x'], env(), paths, { uid, whenExiting: (w) => (write = w) });
    expect(first).toBeDefined();
    expect(await first!.entry.main(['a', 'b'])).toBe(102);
    expect(first!.cacheUsed).toBe(false);
    expect(path.basename(first!.cacheFile!)).toMatch(/^diff\.0123456789abcdef0000000000000064\.v\d+\.\d+\.\d+\.\w+\.v8$/);
    write!(0);
    expect(statSync(first!.cacheFile!).mode & 0o777).toBe(0o600);
    const second = loadBundle(['diff'], env(), paths, { uid, whenExiting: () => {
      throw new Error('a cache was read: nothing to write');
    } });
    expect(second!.cacheUsed).toBe(true);
    expect(await second!.entry.main([])).toBe(100);
  });

  test('a run that fails (exit code 2 or more) writes no cache', () => {
    const paths = fakeBundle(7);
    let write: ((code: number) => void) | undefined;
    const loaded = loadBundle(['get'], env(), paths, { uid, whenExiting: (w) => (write = w) });
    write!(2);
    expect(() => statSync(loaded!.cacheFile!)).toThrow();
  });

  test('a cache file of another user in the cache directory is never used', () => {
    const paths = fakeBundle(9);
    let write: ((code: number) => void) | undefined;
    const first = loadBundle(['validate'], env(), paths, { uid, whenExiting: (w) => (write = w) });
    write!(0);
    // Read as another user: the directory and file are not theirs.
    const other = loadBundle(['validate'], env(), paths, { uid: uid + 1, whenExiting: () => undefined });
    expect(other!.cacheUsed).toBe(false);
    expect(first!.cacheFile).toBe(other!.cacheFile);
  });

  test('NS8CTL_CODE_CACHE=off runs the bundle without reading or writing a cache', () => {
    const paths = fakeBundle(3);
    const loaded = loadBundle(['diff'], { ...env(), NS8CTL_CODE_CACHE: 'off' }, paths, { uid, whenExiting: () => {
      throw new Error('caching is off: nothing to write');
    } });
    expect(loaded!.cacheFile).toBeUndefined();
    expect(loaded!.cacheUsed).toBe(false);
  });

  test('help (no command, --help, a command\'s --help) runs from the compiled modules: it needs too little to gain from the bundle', () => {
    const paths = fakeBundle(2);
    for (const argv of [[], ['--help'], ['diff', '--help'], ['get', '-h']]) expect(loadBundle(argv, env(), paths, { uid })).toBeUndefined();
    expect(loadBundle(['diff'], env(), paths, { uid, whenExiting: () => undefined })).toBeDefined();
  });

  test('no bundle is used when it is missing, older than the last tsc build, not a bundle, or NS8CTL_BUNDLE=off', () => {
    const paths = fakeBundle(1);
    expect(loadBundle(['diff'], { ...env(), NS8CTL_BUNDLE: 'off' }, paths, { uid })).toBeUndefined();
    writeFileSync(paths.buildInfo, '{}');
    const later = statSync(paths.bundle).mtime.getTime() / 1000 + 10;
    utimesSync(paths.buildInfo, later, later);
    expect(loadBundle(['diff'], env(), paths, { uid })).toBeUndefined();
    rmSync(paths.buildInfo);
    writeFileSync(paths.bundle, '(function () {})\n');
    expect(loadBundle(['diff'], env(), paths, { uid })).toBeUndefined();
    rmSync(paths.bundle);
    expect(loadBundle(['diff'], env(), paths, { uid })).toBeUndefined();
  });
});
