/**
 * Repository commands: `repo refresh [NAME]`, `search [TEXT]`, `get available`, `createrepo [DIR]`.
 * Each command is a function (options, deps) -> result; rendering is separate; registration
 * adapts the CLI's deps. Only main() sets exit codes.
 */
import type { Command } from 'commander';
import type { Redis } from 'ioredis';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson, renderTable, renderYaml } from '../../runtime/output.js';
import { NotFoundError, UsageError } from '../../errors.js';
import type { CommandRunner } from '../../host/runner.js';
import type { CreaterepoResult, TagPolicy } from '../../repository/createrepo.js';
import type { AvailableCatalog } from '../../repository/image-resolver.js';

// The repository code (semver, PNG checks, fetching) loads when one of these commands runs: this
// module is also loaded by every `get`, which registers `get available` here.
const fetchCode = () => import('../../repository/fetch.js');
import type { AvailableModule } from '../../repository/resolve.js';

/** What the repository commands need; injected. */
export interface RepositoryDeps {
  connectRedis: () => Promise<Redis>;
  runner: CommandRunner;
  /** Progress and warnings (stderr in the CLI). */
  log?: (line: string) => void;
  /** Core version for min-core filtering (default readCoreVersion()). */
  coreVersion?: string;
  /** HTTP timeout per repository download. */
  timeoutMs?: number;
}

// ---- repo refresh ---------------------------------------------------------------------------

export interface RefreshRow {
  repository: string;
  enabled: boolean;
  /** The cache existed and was expired. */
  expired: boolean;
  /** Packages now cached (enabled repositories only). */
  modules?: number;
  updated?: string;
  error?: { code: string; message: string };
}

/**
 * `ns8ctl repo refresh [NAME]`: expires the repodata cache of NAME (or of every repository), then
 * downloads the metadata of the enabled ones again so errors show now.
 * @throws NotFoundError when NAME is not a configured repository; RedisError.
 */
export async function repoRefresh(opts: { name?: string | undefined }, deps: RepositoryDeps): Promise<RefreshRow[]> {
  const redis = await deps.connectRedis();
  const { getRepodata, readRepositories, refreshRepositories } = await fetchCode();
  const repos = await readRepositories(redis);
  const chosen = opts.name === undefined ? repos : repos.filter((r) => r.name === opts.name);
  if (opts.name !== undefined && chosen.length === 0) {
    throw new NotFoundError(`repository "${opts.name}" is not configured (configured: ${repos.map((r) => r.name).join(', ') || 'none'})`);
  }
  const expired = new Set(opts.name === undefined ? await refreshRepositories(redis) : await refreshRepositories(redis, opts.name));
  const rows: RefreshRow[] = [];
  for (const repo of chosen) {
    const row: RefreshRow = { repository: repo.name, enabled: repo.enabled, expired: expired.has(repo.name) };
    if (repo.enabled) {
      try {
        const snap = await getRepodata(redis, repo, deps.timeoutMs !== undefined ? { timeoutMs: deps.timeoutMs } : {});
        row.modules = snap.packages.length;
        if (snap.updated) row.updated = snap.updated;
      } catch (err) {
        const e = err as { code?: string; message?: string };
        if (e.code === undefined || e.message === undefined) throw err;
        row.error = { code: e.code, message: e.message };
      }
    }
    rows.push(row);
  }
  return rows;
}

/** Renders refresh rows as a table. */
export function renderRefresh(rows: readonly RefreshRow[]): string {
  return renderTable(
    ['repository', 'enabled', 'modules', 'updated', 'result'],
    rows.map((r) => [r.repository, String(r.enabled), r.modules === undefined ? '-' : String(r.modules), r.updated ?? '', r.error ? `error: ${r.error.code}` : r.enabled ? 'refreshed' : 'disabled (cache expired only)']),
  );
}

// ---- search / get available -------------------------------------------------------------------

/** One module in `search` / `get available` output (`-o json`). */
export interface AvailableRow {
  id: string;
  name: string;
  source: string;
  repository: string;
  latest: string | null;
  versions: string[];
  description: string;
  categories: string[];
  certificationLevel: number;
  hidden: { tag: string; reason: string; message: string }[];
  noVersionReason?: string;
}

export interface AvailableResult {
  coreVersion: string;
  modules: AvailableRow[];
  failures: { repository: string; code: string; message: string }[];
}

function toRow(m: AvailableModule): AvailableRow {
  return {
    id: m.id,
    name: m.name,
    source: m.source,
    repository: m.repository,
    latest: m.versions[0]?.tag ?? null,
    versions: m.versions.map((v) => v.tag),
    description: m.description.en ?? Object.values(m.description)[0] ?? '',
    categories: m.categories,
    certificationLevel: m.certificationLevel,
    hidden: m.hidden,
    ...(m.noVersionReason ? { noVersionReason: m.noVersionReason } : {}),
  };
}

function toResult(catalog: AvailableCatalog, modules: readonly AvailableModule[]): AvailableResult {
  return {
    coreVersion: catalog.coreVersion,
    modules: modules.map(toRow).sort((a, b) => a.id.localeCompare(b.id) || 0),
    failures: catalog.failures.map((f) => ({ repository: f.repository, code: f.error.code, message: f.error.message })),
  };
}

async function catalogOf(deps: RepositoryDeps): Promise<AvailableCatalog> {
  const redis = await deps.connectRedis();
  const { loadAvailable } = await import('../../repository/image-resolver.js');
  return loadAvailable(redis, {
    ...(deps.coreVersion !== undefined ? { coreVersion: deps.coreVersion } : {}),
    ...(deps.timeoutMs !== undefined ? { timeoutMs: deps.timeoutMs } : {}),
    ...(deps.log ? { onWarning: (m: string) => deps.log?.(`warning: ${m}`) } : {}),
  });
}

/**
 * `ns8ctl get available`: every module of the enabled repositories (NS8 priority rule applied),
 * with its offered versions newest first and the hidden ones with their reason.
 * @throws RedisError. Repository failures are in `failures` (and logged).
 */
export async function getAvailable(_opts: { output?: string | undefined }, deps: RepositoryDeps): Promise<AvailableResult> {
  const catalog = await catalogOf(deps);
  return toResult(catalog, catalog.available);
}

/**
 * `ns8ctl search [TEXT]`: like getAvailable, filtered to modules whose id, name, description (any
 * language) or categories contain TEXT (case-insensitive). No TEXT lists everything.
 */
export async function search(opts: { text?: string | undefined }, deps: RepositoryDeps): Promise<AvailableResult> {
  const catalog = await catalogOf(deps);
  const needle = (opts.text ?? '').toLowerCase();
  const hit = (m: AvailableModule): boolean =>
    needle === '' || [m.id, m.name, m.upstreamName ?? '', ...Object.values(m.description), ...m.categories].some((s) => s.toLowerCase().includes(needle));
  return toResult(catalog, catalog.available.filter(hit));
}

/** Renders available modules as a table (`wide` adds source, certification and hidden versions). */
export function renderAvailable(result: AvailableResult, wide: boolean): string {
  const cut = (s: string, n: number): string => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
  return renderTable(
    ['id', 'latest', 'versions', 'repository', ...(wide ? ['source', 'cert', 'hidden'] : []), 'description'],
    result.modules.map((m) => [
      m.id,
      m.latest ?? `(none: ${m.noVersionReason ?? 'no_app_version'})`,
      cut(m.versions.join(','), wide ? 200 : 40),
      m.repository,
      ...(wide ? [m.source, String(m.certificationLevel), m.hidden.map((h) => `${h.tag}:${h.reason}`).join(',')] : []),
      cut(m.description, 60),
    ]),
  );
}

// ---- createrepo ---------------------------------------------------------------------------------

export interface CreaterepoCommandOptions {
  dir?: string | undefined;
  /** Output file; `-` prints the JSON on stdout instead. Default `<dir>/repodata.json`. */
  output?: string | undefined;
  tlsVerify?: boolean | undefined;
  tagPolicy?: string | undefined;
}

/**
 * `ns8ctl createrepo [DIR] [-o FILE]`: see createrepo(). Returns the result (the JSON text is in
 * `text`; with `-o -` nothing is written to disk).
 * @throws UsageError for an unknown tag policy; RepositoryError from createrepo.
 */
export async function runCreaterepo(opts: CreaterepoCommandOptions, deps: RepositoryDeps): Promise<CreaterepoResult> {
  const policy = opts.tagPolicy ?? 'all-stable';
  if (policy !== 'all-stable' && policy !== 'ns8') throw new UsageError(`unknown --tag-policy "${policy}"; allowed: all-stable, ns8`);
  const { createrepo } = await import('../../repository/createrepo.js');
  return createrepo(opts.dir ?? process.cwd(), {
    runner: deps.runner,
    registryTlsVerify: opts.tlsVerify ?? true,
    tagPolicy: policy as TagPolicy,
    ...(opts.output === '-' ? { output: null } : opts.output !== undefined ? { output: opts.output } : {}),
    ...(deps.log ? { log: deps.log } : {}),
  });
}

// ---- registration -------------------------------------------------------------------------------

/** Adapts the CLI's deps to the repository commands' deps. */
export function repositoryDeps(d: CliDeps): RepositoryDeps {
  const core = d.env.NS8CTL_CORE_VERSION;
  return {
    connectRedis: async () => (await d.connect()).redis,
    runner: d.runner,
    log: (line) => d.stderr(`${line}\n`),
    ...(core ? { coreVersion: core } : {}),
  };
}

function printAvailable(result: AvailableResult, output: string | undefined, d: CliDeps): number {
  const format = parseOutput(output, ['table', 'wide', 'json', 'yaml'], 'table');
  if (format === 'json') d.stdout(renderJson(result));
  else if (format === 'yaml') d.stdout(renderYaml(result));
  else if (result.modules.length === 0) d.stderr('No modules available (are repositories configured and enabled?).\n');
  else d.stdout(renderAvailable(result, format === 'wide'));
  return result.failures.length > 0 && result.modules.length === 0 ? 1 : 0;
}

/**
 * Registers `repo refresh`, `search`, `createrepo` on `program`, and `available` under `get`
 * when given (`ns8ctl get available`). Same shape as registerExtensions(program, deps, setExitCode, get).
 */
export function registerRepositoryCommands(program: Command, deps: () => CliDeps, setExitCode: (code: number) => void, get?: Command): void {
  const repo = program.command('repo').description('Software repositories (NS8 cluster/repository/*)');
  repo
    .command('refresh')
    .description('Expire the cached repository metadata (all, or NAME) and download it again')
    .argument('[name]', 'repository name')
    .option('-o, --output <format>', 'table or json', 'table')
    .action(async (name: string | undefined, opts: { output?: string }) => {
      const d = deps();
      const format = parseOutput(opts.output, ['table', 'json'], 'table');
      const rows = await repoRefresh({ name }, repositoryDeps(d));
      if (format === 'json') d.stdout(renderJson(rows));
      else {
        d.stdout(renderRefresh(rows));
        for (const r of rows) if (r.error) d.stderr(`error: ${r.error.message}\n`);
      }
      setExitCode(rows.some((r) => r.error) ? 1 : 0);
    });

  program
    .command('search')
    .description('Search the modules offered by the enabled repositories (id, name, description, category)')
    .argument('[text]', 'text to look for (case-insensitive); none lists everything')
    .option('-o, --output <format>', 'table, wide, json or yaml', 'table')
    .action(async (text: string | undefined, opts: { output?: string }) => {
      const d = deps();
      setExitCode(printAvailable(await search({ text }, repositoryDeps(d)), opts.output, d));
    });

  if (get) {
    // No default here: `get` has its own `-o`, which commander fills when `-o` follows `available`.
    get
      .command('available')
      .description('Modules and versions offered by the enabled repositories')
      .option('-o, --output <format>', 'table, wide, json or yaml (default: table)')
      .action(async (_opts: { output?: string }, cmd: Command) => {
        const d = deps();
        const output = (cmd.optsWithGlobals() as { output?: string }).output;
        setExitCode(printAvailable(await getAvailable({ output }, repositoryDeps(d)), output, d));
      });
  }

  program
    .command('createrepo')
    .description('Build repodata.json from module directories (metadata.json, logo.png 256x256, screenshots/*.png 1024x768) and the registry tags')
    .argument('[dir]', 'directory holding one directory per module (default: current directory)')
    .option('-o, --output <file>', 'where to write (default <dir>/repodata.json; - for stdout)')
    .option('--no-tls-verify', 'talk to the registry over plain HTTP / without certificate checks (skopeo --tls-verify=false)')
    .option('--tag-policy <policy>', 'all-stable (every stable version + newest newer prerelease) or ns8 (latest stable + newest newer prerelease)', 'all-stable')
    .action(async (dir: string | undefined, opts: { output?: string; tlsVerify?: boolean; tagPolicy?: string }) => {
      const d = deps();
      const res = await runCreaterepo({ dir: dir ?? d.cwd, output: opts.output, tlsVerify: opts.tlsVerify, tagPolicy: opts.tagPolicy }, repositoryDeps(d));
      if (res.output === null) d.stdout(`${res.text}\n`);
      else d.stderr(`wrote ${res.output}: ${res.packages.length} module${res.packages.length === 1 ? '' : 's'}, ${res.packages.reduce((n, p) => n + p.versions.length, 0)} versions\n`);
      setExitCode(0);
    });
}
