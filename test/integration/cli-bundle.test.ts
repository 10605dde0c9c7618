/**
 * The CLI bundle (scripts/bundle-cli.mjs) as the bin runs it: built from a copy of dist/ in a
 * temporary project, it behaves as the compiled modules do, finds files relative to each
 * compiled module's own location, loads no package file at start for --help, validate and diff,
 * and is left aside once tsc has built after it.
 */
import { execFile, execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { startRedis, type TestRedis } from '../support/redis-server.js';

const run = promisify(execFile);
const ROOT = path.resolve('.');
const MANIFESTS = path.join(ROOT, 'manifests');

let proj: string;
let bin: string;
let srv: TestRedis;

/** Runs the temporary project's bin with plain node; `cache` is its XDG_CACHE_HOME. */
async function ns8ctl(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [bin, ...args], { env: { PATH: process.env.PATH, HOME: proj, NS8CTL_OFFLINE: '1', NS8CTL_STATE_DIR: path.join(proj, 'state'), ...env } });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

const cacheFiles = (xdg: string): string[] => {
  try {
    return readdirSync(path.join(xdg, 'ns8ctl', 'code-cache')).sort();
  } catch {
    return [];
  }
};

beforeAll(async () => {
  proj = mkdtempSync(path.join(tmpdir(), 'ns8ctl-bundle-'));
  cpSync(path.join(ROOT, 'dist'), path.join(proj, 'dist'), { recursive: true, filter: (src) => !src.includes(`${path.sep}cli-bundle`) });
  for (const d of ['node_modules', 'schemas', 'runtime']) symlinkSync(path.join(ROOT, d), path.join(proj, d));
  cpSync(path.join(ROOT, 'package.json'), path.join(proj, 'package.json'));
  execFileSync(process.execPath, [path.join(ROOT, 'scripts', 'bundle-cli.mjs'), '--dist', path.join(proj, 'dist')], { stdio: 'pipe' });
  bin = path.join(proj, 'dist', 'src', 'cli', 'bin.js');
  srv = await startRedis();
  const applied = await ns8ctl(['--redis', srv.url, 'apply', '-f', MANIFESTS], { NS8CTL_BUNDLE: 'off' });
  expect(applied.code).toBe(0);
}, 120_000);

afterAll(async () => {
  await srv?.stop();
  rmSync(proj, { recursive: true, force: true });
});

describe('the bundled CLI', () => {
  test('validate and the no-op diff print exactly what the compiled modules print, and leave a code cache per command', async () => {
    const xdg = path.join(proj, 'xdg-same');
    for (const args of [['validate', '-f', MANIFESTS, '--offline'], ['--redis', srv.url, 'diff', '-f', MANIFESTS], ['--redis', srv.url, 'get', 'modules', '-o', 'json']]) {
      const modules = await ns8ctl(args, { NS8CTL_BUNDLE: 'off', XDG_CACHE_HOME: xdg });
      const bundled = await ns8ctl(args, { XDG_CACHE_HOME: xdg });
      const cached = await ns8ctl(args, { XDG_CACHE_HOME: xdg });
      expect(modules.code).toBe(0);
      expect(bundled).toEqual(modules);
      expect(cached).toEqual(modules);
    }
    expect(cacheFiles(xdg).map((f) => f.split('.')[0])).toEqual(['diff', 'get', 'validate']);
  }, 120_000);

  test('a saved plan made and applied by the bundled CLI: the packages it imports on the way load from node_modules, without a warning', async () => {
    const xdg = path.join(proj, 'xdg-plan');
    const db = `${srv.url}/3`;
    const planFile = path.join(proj, 'saved.plan');
    const made = await ns8ctl(['--redis', db, 'diff', '-f', MANIFESTS, '--out', planFile], { XDG_CACHE_HOME: xdg, NODE_DEBUG: 'module' });
    expect(made.code).toBe(1);
    // It was the bundle that ran (the compiled modules load commander from node_modules).
    expect(made.stderr).not.toMatch(/ load "[^"]*node_modules\/commander\//);
    const applied = await ns8ctl(['--redis', db, 'apply', '--plan', planFile], { XDG_CACHE_HOME: xdg, NODE_DEBUG: 'module' });
    expect(applied.code).toBe(0);
    expect(applied.stderr).toContain('Applied the saved plan');
    // The saved plan's objects are re-validated from YAML text: the yaml package, required on the way.
    expect(applied.stderr).toMatch(/ load "[^"]*node_modules\/yaml\//);
    expect(applied.stderr).not.toMatch(/Warning/);
    expect((await ns8ctl(['--redis', db, 'diff', '-f', MANIFESTS], { XDG_CACHE_HOME: xdg })).code).toBe(0);
  }, 120_000);

  test('files are found from each compiled module\'s own location under dist/src, not from the bundle\'s', async () => {
    // Without schemas/ the error names the file the schema lookup started from.
    const bare = mkdtempSync(path.join(tmpdir(), 'ns8ctl-bundle-bare-'));
    try {
      cpSync(path.join(proj, 'dist'), path.join(bare, 'dist'), { recursive: true });
      // No tsc record: the copy's bundle is current whatever order the copy wrote files in.
      rmSync(path.join(bare, 'dist', '.tsbuildinfo'), { force: true });
      symlinkSync(path.join(ROOT, 'node_modules'), path.join(bare, 'node_modules'));
      const r = await run(process.execPath, [path.join(bare, 'dist', 'src', 'cli', 'bin.js'), 'validate', '-f', MANIFESTS, '--offline'], {
        env: { PATH: process.env.PATH, HOME: bare, XDG_CACHE_HOME: path.join(bare, 'xdg'), NODE_DEBUG: 'module' },
      }).then(
        () => ({ stderr: '', code: 0 }),
        (e: { stderr: string; code: number }) => e,
      );
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`not found above ${path.join(bare, 'dist', 'src', 'manifest', 'schemas.js')}`);
      // The bundle ran (the compiled modules would have loaded commander from node_modules).
      expect(r.stderr).not.toMatch(/ load "[^"]*node_modules\/commander\//);
    } finally {
      rmSync(bare, { recursive: true, force: true });
    }
  }, 60_000);

  test('validate, get and the no-op diff load no package file at start: the bundle holds what they need', async () => {
    const xdg = path.join(proj, 'xdg-loads');
    for (const args of [['validate', '-f', MANIFESTS, '--offline'], ['--redis', srv.url, 'get', 'modules'], ['--redis', srv.url, 'diff', '-f', MANIFESTS]]) {
      const r = await ns8ctl(args, { NODE_DEBUG: 'module', XDG_CACHE_HOME: xdg });
      expect(r.code).toBe(0);
      expect(r.stderr.split('\n').filter((l) => / load "\//.test(l))).toEqual([]);
      // The compiled modules, for comparison, load commander's files (and more) from node_modules.
      const m = await ns8ctl(args, { NODE_DEBUG: 'module', XDG_CACHE_HOME: xdg, NS8CTL_BUNDLE: 'off' });
      expect(m.stderr).toMatch(/ load "[^"]*node_modules\/commander\//);
    }
  }, 120_000);

  test('once tsc has built after the bundle, the bin runs the compiled modules instead', async () => {
    const xdg = path.join(proj, 'xdg-stale');
    const info = path.join(proj, 'dist', '.tsbuildinfo');
    const validate = ['validate', '-f', MANIFESTS, '--offline'];
    writeFileSync(info, '{}');
    const later = Date.now() / 1000 + 60;
    utimesSync(info, later, later);
    try {
      const r = await ns8ctl(validate, { XDG_CACHE_HOME: xdg, NODE_DEBUG: 'module' });
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('valid');
      expect(r.stderr).toMatch(/ load "[^"]*node_modules\/commander\//);
      expect(cacheFiles(xdg)).toEqual([]);
    } finally {
      rmSync(info);
    }
    const fresh = await ns8ctl(validate, { XDG_CACHE_HOME: xdg });
    expect(fresh.code).toBe(0);
    expect(cacheFiles(xdg).map((f) => f.split('.')[0])).toEqual(['validate']);
  }, 60_000);

  test('help runs from the compiled modules and leaves no cache', async () => {
    const xdg = path.join(proj, 'xdg-help');
    for (const args of [['--help'], ['diff', '--help']]) {
      const r = await ns8ctl(args, { XDG_CACHE_HOME: xdg, NODE_DEBUG: 'module' });
      expect(r.code).toBe(0);
      expect(r.stdout).toContain('Usage: ns8ctl');
      expect(r.stderr).toMatch(/ load "[^"]*node_modules\/commander\//);
    }
    expect(cacheFiles(xdg)).toEqual([]);
  }, 60_000);

  test('a cache directory others may write into is neither read nor written', async () => {
    const xdg = path.join(proj, 'xdg-shared');
    mkdirSync(path.join(xdg, 'ns8ctl', 'code-cache'), { recursive: true, mode: 0o777 });
    execFileSync('chmod', ['0777', path.join(xdg, 'ns8ctl', 'code-cache')]);
    const r = await ns8ctl(['validate', '-f', MANIFESTS, '--offline'], { XDG_CACHE_HOME: xdg });
    expect(r.code).toBe(0);
    expect(cacheFiles(xdg)).toEqual([]);
  }, 60_000);
});
