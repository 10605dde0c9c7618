/**
 * Sources from the command line of `ns8ctl controller` / `ns8ctl run`. One controller follows any
 * number of sources, each with its own name (= its apply set):
 * - `-f PATH` (repeatable) and `--git URL`: the unnamed source, called `--source-name` (default
 *   `default`), as before; only one of the two, since both would be the same source;
 * - `--source NAME=PATH[,SETTING...]` (repeatable; the same NAME again adds a path): a manifests
 *   directory (or file) source;
 * - `--git NAME=URL[,SETTING...]` (repeatable): a git source.
 * SETTINGs after a comma: `prune`, `no-prune`, `self-heal`, `no-self-heal`, `allow-empty`,
 * `no-allow-empty`, and for git
 * `branch=B`, `path=P`, `interval=D`, `cache-dir=DIR`, `trusted-keys=F`. `--branch`, `--path`,
 * `--interval`, `--trusted-keys`, `--prune`, `--allow-empty` and `--no-self-heal` are the defaults of every source; `--cache-dir` is only for a
 * single git source (each git source's cache clone defaults to `<state-dir>/git/<name>`).
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from '../errors.js';
import { parseDuration } from '../runtime/duration.js';
import { validBranchName } from './git-checkout.js';
import type { SourceSpec } from './source-reconciler.js';

/** The source flags, as commander parses them. */
export interface SourceFlags {
  filename?: string[];
  source?: string[];
  git?: string | string[];
  sourceName?: string;
  branch?: string;
  path?: string;
  interval?: string;
  prune?: boolean;
  selfHeal?: boolean;
  allowEmpty?: boolean;
  cacheDir?: string;
  trustedKeys?: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
/** `NAME=rest`, where NAME cannot be the start of a URL or path (no ':', '/', leading '.'). */
const NAMED = /^([A-Za-z0-9][A-Za-z0-9._-]{0,62})=(.+)$/s;
const FLAGS = ['prune', 'no-prune', 'self-heal', 'no-self-heal', 'allow-empty', 'no-allow-empty'] as const;
const GIT_KEYS = ['branch', 'path', 'interval', 'cache-dir', 'trusted-keys'] as const;

/** Checks a source name (it is also the apply set and a Redis key part). @throws UsageError */
export function checkSourceName(name: string, flag: string): string {
  if (!NAME.test(name)) throw new UsageError(`${flag} ${JSON.stringify(name)}: a source name uses letters, digits, '.', '_' and '-' (at most 63, starting with a letter or digit)`);
  return name;
}

interface Settings {
  prune?: boolean;
  selfHeal?: boolean;
  allowEmpty?: boolean;
  branch?: string;
  path?: string;
  interval?: string;
  cacheDir?: string;
  trustedKeys?: string;
}

/**
 * Splits `NAME=LOCATION[,SETTING...]`: trailing pieces that are settings are taken off; any other
 * piece stays part of the location (URLs and paths may hold commas). A trailing `key=value` with
 * an unknown key is an error (a typo would otherwise end up in the URL).
 */
function splitNamed(value: string, flag: string, git: boolean): { name: string; location: string; settings: Settings } {
  const m = NAMED.exec(value);
  if (!m) throw new UsageError(`${flag} ${JSON.stringify(value)}: expected NAME=${git ? 'URL' : 'PATH'}`);
  const name = checkSourceName(m[1]!, flag);
  const pieces = m[2]!.split(',');
  const settings: Settings = {};
  const allowed = git ? [...FLAGS, ...GIT_KEYS.map((k) => `${k}=`)] : [...FLAGS];
  while (pieces.length > 1) {
    const last = pieces[pieces.length - 1]!;
    const eq = last.indexOf('=');
    const key = eq >= 0 ? last.slice(0, eq) : last;
    const val = eq >= 0 ? last.slice(eq + 1) : undefined;
    const isFlag = (FLAGS as readonly string[]).includes(key) && val === undefined;
    const isGitKey = (GIT_KEYS as readonly string[]).includes(key) && val !== undefined;
    if (!isFlag && !isGitKey) {
      if (/^[a-z][a-z-]*=/.test(last)) throw new UsageError(`${flag} ${name}=...: unknown setting ${JSON.stringify(key)}; settings after a comma: ${allowed.join(', ')}`);
      break;
    }
    if (isGitKey && !git) throw new UsageError(`${flag} ${name}=...: ${key}= is a git setting (use --git ${name}=URL,${key}=...); a directory source takes: ${FLAGS.join(', ')}`);
    if (!val && isGitKey) throw new UsageError(`${flag} ${name}=...: ${key}= needs a value`);
    pieces.pop();
    if (key === 'prune' || key === 'no-prune') settings.prune ??= key === 'prune';
    else if (key === 'self-heal' || key === 'no-self-heal') settings.selfHeal ??= key === 'self-heal';
    else if (key === 'allow-empty' || key === 'no-allow-empty') settings.allowEmpty ??= key === 'allow-empty';
    else if (key === 'branch') settings.branch ??= val ?? '';
    else if (key === 'path') settings.path ??= val ?? '';
    else if (key === 'interval') settings.interval ??= val ?? '';
    else if (key === 'trusted-keys') settings.trustedKeys ??= val ?? '';
    else settings.cacheDir ??= val ?? '';
  }
  const location = pieces.join(',');
  if (!location) throw new UsageError(`${flag} ${name}=: the ${git ? 'URL' : 'path'} is empty`);
  return { name, location, settings };
}

/**
 * Builds the source list from the flags (paths resolved against `cwd`, git caches under
 * `stateDir`), in the order given.
 * @throws UsageError for a bad name, value or combination: unnamed -f with unnamed --git, two
 *   unnamed --git, a name given twice (across kinds), git settings without a git source,
 *   --cache-dir with several git sources, two git sources sharing a cache clone, `-` (stdin).
 */
export function buildSources(opts: SourceFlags, deps: { stateDir: string; cwd: string }): SourceSpec[] {
  const files = opts.filename ?? [];
  const gits = opts.git === undefined ? [] : Array.isArray(opts.git) ? opts.git : [opts.git];
  const unnamedGits = gits.filter((g) => !NAMED.test(g));
  const defaultName = checkSourceName(opts.sourceName ?? 'default', '--source-name');
  if (files.length > 0 && unnamedGits.length > 0) {
    throw new UsageError(`-f and --git without a name would both be source ${JSON.stringify(defaultName)}; to follow both, name them: --source NAME=PATH and --git NAME=URL (one controller follows any number of sources)`);
  }
  if (unnamedGits.length > 1) throw new UsageError('several --git URL without a name: name each source, e.g. --git prod=URL --git lab=URL');
  if ([...files, ...(opts.source ?? [])].some((f) => f === '-' || f.endsWith('=-'))) throw new UsageError('-f - (stdin) cannot be watched: give a file or a directory');
  const defaults: SourceDefaults = { prune: Boolean(opts.prune), selfHeal: opts.selfHeal !== false, allowEmpty: Boolean(opts.allowEmpty) };
  const origin = new Map<string, string>();
  const claim = (name: string, how: string): void => {
    const was = origin.get(name);
    if (was) throw new UsageError(`source ${JSON.stringify(name)} is given twice (${was} and ${how}): each source needs its own name, which is also its apply set`);
    origin.set(name, how);
  };
  const sources: SourceSpec[] = [];
  if (files.length > 0) {
    claim(defaultName, '-f');
    sources.push({ name: defaultName, kind: 'directory', paths: files.map((f) => path.resolve(deps.cwd, f)), prune: defaults.prune, selfHeal: defaults.selfHeal, ...allowEmptyField(defaults.allowEmpty) });
  }
  sources.push(...directorySources(opts.source ?? [], defaults, deps.cwd, claim));
  sources.push(...gitSources(gits, defaultName, opts, defaults, deps, claim));
  return sources;
}

/** The global settings, which a source's own settings override. */
interface SourceDefaults {
  prune: boolean;
  selfHeal: boolean;
  allowEmpty: boolean;
}

/** Only set when true: a source spec without it reads as false. */
function allowEmptyField(v: boolean): { allowEmpty?: true } {
  return v ? { allowEmpty: true } : {};
}

/** `--source NAME=PATH[,settings]` values, in order; the same name again adds a path to that source. */
function directorySources(values: readonly string[], defaults: SourceDefaults, cwd: string, claim: (name: string, how: string) => void): SourceSpec[] {
  const sources: SourceSpec[] = [];
  const dirs = new Map<string, { spec: SourceSpec; settings: Settings }>();
  for (const value of values) {
    const { name, location, settings } = splitNamed(value, '--source', false);
    const seen = dirs.get(name);
    if (seen) {
      addSourcePath(seen, name, settings, path.resolve(cwd, location));
      continue;
    }
    claim(name, `--source ${name}=...`);
    const spec: SourceSpec = {
      name,
      kind: 'directory',
      paths: [path.resolve(cwd, location)],
      prune: settings.prune ?? defaults.prune,
      selfHeal: settings.selfHeal ?? defaults.selfHeal,
      ...allowEmptyField(settings.allowEmpty ?? defaults.allowEmpty),
    };
    dirs.set(name, { spec, settings });
    sources.push(spec);
  }
  return sources;
}

/** Adds a path to a directory source named again; its settings must not contradict the first ones. */
function addSourcePath(seen: { spec: SourceSpec; settings: Settings }, name: string, settings: Settings, resolved: string): void {
  for (const k of ['prune', 'selfHeal', 'allowEmpty'] as const) {
    if (settings[k] !== undefined && seen.settings[k] !== undefined && settings[k] !== seen.settings[k]) throw new UsageError(`--source ${name}=...: contradictory settings for source ${name}`);
    if (settings[k] !== undefined) seen.settings[k] = settings[k];
  }
  if (settings.prune !== undefined) seen.spec.prune = settings.prune;
  if (settings.selfHeal !== undefined) seen.spec.selfHeal = settings.selfHeal;
  if (settings.allowEmpty !== undefined) {
    if (settings.allowEmpty) seen.spec.allowEmpty = true;
    else delete seen.spec.allowEmpty;
  }
  seen.spec.paths.push(resolved);
}

/** A `--git` value: the source name (the default one when unnamed), URL and own settings. */
interface GitFlag {
  name: string;
  url: string;
  settings: Settings;
  named: boolean;
}

/** The git sources: unnamed `--git URL` first, then `--git NAME=URL[,settings]` in order; no two share a cache clone. */
function gitSources(gits: readonly string[], defaultName: string, opts: SourceFlags, defaults: SourceDefaults, deps: { stateDir: string; cwd: string }, claim: (name: string, how: string) => void): SourceSpec[] {
  const gitFlags: GitFlag[] = [];
  for (const url of gits.filter((g) => !NAMED.test(g))) gitFlags.push({ name: defaultName, url, settings: {}, named: false });
  for (const value of gits.filter((g) => NAMED.test(g))) {
    const { name, location, settings } = splitNamed(value, '--git', true);
    gitFlags.push({ name, url: location, settings, named: true });
  }
  if (gitFlags.length === 0 && (opts.branch || opts.path || opts.interval || opts.trustedKeys)) throw new UsageError('--branch, --path, --interval and --trusted-keys need --git URL');
  if (gitFlags.length > 1 && opts.cacheDir) throw new UsageError('--cache-dir is for a single git source; with several, give each its own: --git NAME=URL,cache-dir=DIR (default <state-dir>/git/NAME)');
  const caches = new Map<string, string>();
  return gitFlags.map((g) => {
    claim(g.name, g.named ? `--git ${g.name}=...` : '--git');
    return gitSource(g, opts, defaults, deps, caches);
  });
}

/**
 * One git source: its settings over the global flags, each checked (branch name, relative path,
 * interval >= 1s, a cache clone not in `caches` (cache dir -> source, updated), trusted keys exist).
 */
function gitSource(g: GitFlag, opts: SourceFlags, defaults: SourceDefaults, deps: { stateDir: string; cwd: string }, caches: Map<string, string>): SourceSpec {
  const flag = (k: keyof Settings, global: string): string => (g.settings[k] !== undefined ? `--git ${g.name}=...,${global}=` : `--${global}`);
  const branch = g.settings.branch ?? opts.branch ?? 'main';
  if (!validBranchName(branch)) throw new UsageError(`${flag('branch', 'branch')} ${JSON.stringify(branch)} is not a valid branch name`);
  const sub = g.settings.path ?? opts.path ?? '.';
  if (path.isAbsolute(sub) || sub.split(/[\\/]/).includes('..')) throw new UsageError(`${flag('path', 'path')} ${JSON.stringify(sub)} must be relative and stay inside the repository`);
  const intervalMs = parseDuration(g.settings.interval ?? opts.interval ?? '1m', flag('interval', 'interval'));
  if (intervalMs < 1000) throw new UsageError(`${flag('interval', 'interval')}: the git poll interval of source ${g.name} must be at least 1s`);
  const cacheDir = path.resolve(deps.cwd, g.settings.cacheDir ?? opts.cacheDir ?? path.join(deps.stateDir, 'git', g.name));
  const other = caches.get(cacheDir);
  if (other) throw new UsageError(`git sources ${other} and ${g.name} would share the cache clone ${cacheDir}: give one another cache-dir=`);
  caches.set(cacheDir, g.name);
  const keys = g.settings.trustedKeys ?? opts.trustedKeys;
  const trustedKeys = keys ? path.resolve(deps.cwd, keys) : undefined;
  if (trustedKeys && !existsSync(trustedKeys)) throw new UsageError(`${flag('trustedKeys', 'trusted-keys')} ${JSON.stringify(keys)}: no such file or directory (give the OpenPGP public keys of who may sign commits of source ${g.name})`);
  return {
    name: g.name,
    kind: 'git',
    paths: [],
    prune: g.settings.prune ?? defaults.prune,
    selfHeal: g.settings.selfHeal ?? defaults.selfHeal,
    ...allowEmptyField(g.settings.allowEmpty ?? defaults.allowEmpty),
    git: { url: g.url, branch, path: sub, cacheDir, intervalMs, ...(trustedKeys ? { trustedKeys } : {}) },
  };
}
