/**
 * createrepo: builds a repository's repodata.json from a directory of module directories, as
 * NS8's ns8-repomd createrepo does (metadata.json, logo.png, screenshots/, tags and labels from the
 * registry through skopeo), with the seeds' image-size rules enforced.
 */
import { readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { basename, join, resolve as resolvePath } from 'node:path';
import semver from 'semver';
import type { CommandRunner } from '../host/runner.js';
import { RepositoryError, type RepositoryProblem } from './errors.js';
import { checkPngFile } from './png.js';
import { checkRepodata, REPODATA_FILE, type RepodataPackage, type RepodataVersion } from './repodata.js';
import { parseVersion } from './semver-tags.js';

/** Required pixel sizes (seeds, "Software repositories"). */
export const LOGO_SIZE = { width: 256, height: 256 } as const;
export const SCREENSHOT_SIZE = { width: 1024, height: 768 } as const;

/**
 * Which tags become versions:
 * - `all-stable` (default): every stable version, plus the newest prerelease when it is newer than
 *   the latest stable. Keeps older versions so version ranges (`^1.2`) and step-by-step updates
 *   through `org.nethserver.min-from` keep working (NS8 needs pins.yml for that).
 * - `ns8`: exactly NS8's createrepo: the newest prerelease newer than the latest stable, and the
 *   latest stable only.
 */
export type TagPolicy = 'all-stable' | 'ns8';

export interface CreaterepoOptions {
  /** Runs skopeo. */
  runner: CommandRunner;
  /** Pass `--tls-verify=false` to skopeo when false (a plain-HTTP registry). Default true. */
  registryTlsVerify?: boolean;
  /** Default `all-stable`. */
  tagPolicy?: TagPolicy;
  /** Where to write; default `<dir>/repodata.json`. `null` returns the result without writing. */
  output?: string | null;
  /** Parallel skopeo calls (default 4). */
  concurrency?: number;
  /** Progress lines (stderr in the CLI). */
  log?: (line: string) => void;
}

export interface CreaterepoResult {
  packages: RepodataPackage[];
  /** The JSON written (compact, as NS8). */
  text: string;
  /** File written, or null. */
  output: string | null;
  /** Module directories that produced no package, with why (no semver tag, ...). */
  skipped: { dir: string; reason: string }[];
}

/** Fields createrepo computes itself; metadata.json cannot set them. */
const COMPUTED = new Set(['versions', 'logo', 'screenshots']);

/** NS8's defaults for a module directory named `dir` (ns8-repomd createrepo.py). */
export function defaultMetadata(dir: string): Omit<RepodataPackage, 'versions' | 'logo'> {
  return {
    id: dir,
    name: dir,
    description: { en: `Auto-generated description for ${dir}` },
    categories: ['unknown'],
    authors: [{ name: 'unknown', email: 'info@nethserver.org' }],
    docs: { documentation_url: 'https://docs.nethserver.org', bug_url: 'https://github.com/NethServer/dev', code_url: 'https://github.com/NethServer/' },
    source: `ghcr.io/nethserver/${dir}`,
  };
}

/**
 * Picks the tags that become versions, newest first. Tags that are not strict semantic versions
 * are dropped (as NS8).
 */
export function selectTags(tags: readonly string[], policy: TagPolicy = 'all-stable'): string[] {
  const valid = [...new Set(tags)].filter((t) => parseVersion(t) !== undefined).sort((a, b) => semver.rcompare(a, b));
  const out: string[] = [];
  let prereleaseKept = false;
  for (const t of valid) {
    const pre = (parseVersion(t)?.prerelease.length ?? 0) > 0;
    const stableSeen = out.some((k) => (parseVersion(k)?.prerelease.length ?? 0) === 0);
    if (pre) {
      if (!prereleaseKept && !stableSeen) {
        out.push(t);
        prereleaseKept = true;
      }
      continue;
    }
    out.push(t);
    if (policy === 'ns8') break;
  }
  return out;
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/** A module directory after the file checks, before the registry queries. */
interface Draft {
  dir: string;
  pkg: Omit<RepodataPackage, 'versions'>;
}

async function readDraft(root: string, dir: string, problems: RepositoryProblem[], log: (l: string) => void): Promise<Draft | undefined> {
  const base = join(root, dir);
  const metaFile = join(base, 'metadata.json');
  let meta: Record<string, unknown> = {};
  if (await exists(metaFile)) {
    try {
      const parsed: unknown = JSON.parse(await readFile(metaFile, 'utf8'));
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        problems.push({ where: metaFile, message: 'must be a JSON object' });
        return undefined;
      }
      meta = parsed as Record<string, unknown>;
    } catch (err) {
      problems.push({ where: metaFile, message: `is not valid JSON: ${(err as Error).message}` });
      return undefined;
    }
  } else {
    log(`${dir}: no metadata.json, using defaults (source ghcr.io/nethserver/${dir})`);
  }
  for (const k of Object.keys(meta)) if (COMPUTED.has(k)) log(`${dir}: metadata.json field "${k}" ignored (createrepo computes it)`);
  if (meta.id !== undefined && meta.id !== dir) {
    problems.push({ where: metaFile, message: `id ${JSON.stringify(meta.id)} must equal the directory name ${JSON.stringify(dir)} (logo and screenshot URLs are <repository>/<id>/<file>)` });
  }
  if (typeof meta.source === 'string') meta.source = meta.source.replace(/^docker:\/\//, '');
  if (typeof meta.source === 'string' && /:[^/]*$/.test(meta.source.replace(/^[^/]*\//, ''))) {
    problems.push({ where: metaFile, message: `source ${JSON.stringify(meta.source)} must not carry a tag (createrepo lists the tags itself)` });
  }
  const rest = Object.fromEntries(Object.entries(meta).filter(([k]) => !COMPUTED.has(k)));
  const pkg = { ...defaultMetadata(dir), ...rest, id: dir } as Omit<RepodataPackage, 'versions'>;

  const logoFile = join(base, 'logo.png');
  if (await exists(logoFile)) {
    const p = await checkPngFile(logoFile, LOGO_SIZE, 'logo');
    if (p) problems.push({ where: logoFile, message: p });
    pkg.logo = 'logo.png';
  } else {
    log(`${dir}: no logo.png, logo is null`);
    pkg.logo = null;
  }
  const shotsDir = join(base, 'screenshots');
  const shots: string[] = [];
  if (await exists(shotsDir)) {
    const entries = (await readdir(shotsDir, { withFileTypes: true })).filter((e) => e.isFile() && !e.name.startsWith('.')).map((e) => e.name).sort();
    for (const name of entries) {
      const file = join(shotsDir, name);
      const p = await checkPngFile(file, SCREENSHOT_SIZE, 'screenshot');
      if (p) problems.push({ where: file, message: p });
      shots.push(`screenshots/${name}`);
    }
  }
  pkg.screenshots = shots;
  return { dir, pkg };
}

async function pool<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i] as T);
    }
  });
  await Promise.all(workers);
  return out;
}

function skopeoArgs(sub: string, ref: string, tlsVerify: boolean, extra: string[] = []): string[] {
  return ['skopeo', sub, ...(tlsVerify ? [] : ['--tls-verify=false']), ...extra, `docker://${ref}`];
}

function describeFailure(err: unknown): string {
  const e = err as { code?: string; message?: string };
  return `${e.code ? `${e.code}: ` : ''}${e.message ?? String(err)}`;
}

/**
 * Builds repodata.json for the module directories under `dir` (default: the current directory).
 * For each non-hidden subdirectory, sorted: metadata.json over NS8's defaults; logo.png must be a
 * 256x256 PNG and screenshots/* 1024x768 PNGs (every problem is collected, with file and actual
 * size, before any registry is contacted); `skopeo list-tags` on `source`; tags filtered by
 * `tagPolicy`; `skopeo inspect` per kept tag for its labels. Modules with no version are skipped
 * (reported). The result is validated against schemas/repodata.schema.json, then written
 * atomically (temporary file + rename).
 * @throws RepositoryError `createrepo_invalid` (file problems: `problems` lists each),
 *   `createrepo_registry_failed` (skopeo failures, one problem per module),
 *   `createrepo_empty` (no package at all), `createrepo_output_invalid` (internal: output does not validate).
 */
export async function createrepo(dir: string = process.cwd(), opts: CreaterepoOptions): Promise<CreaterepoResult> {
  const root = resolvePath(dir);
  const log = opts.log ?? (() => undefined);
  const { dirs, drafts } = await readDrafts(root, log);
  const { jobs, inspected } = await queryRegistry(drafts, opts);
  const { packages, skipped } = assemblePackages(drafts, jobs, inspected, log);
  if (packages.length === 0) {
    throw new RepositoryError('createrepo_empty', `createrepo: no module with a published version under ${root} (${dirs.length} director${dirs.length === 1 ? 'y' : 'ies'} looked at); nothing was written`);
  }
  const final = checkRepodata(packages);
  if (final.length) {
    throw new RepositoryError('createrepo_output_invalid', `createrepo: the generated repodata does not validate:\n${final.map((p) => `  ${p.where}: ${p.message}`).join('\n')}`, { problems: final });
  }
  const text = JSON.stringify(packages);
  const output = opts.output === null ? null : resolvePath(opts.output ?? join(root, REPODATA_FILE));
  if (output) {
    const tmp = join(resolvePath(output, '..'), `.${basename(output)}.${process.pid}.tmp`);
    await writeFile(tmp, text);
    await rename(tmp, output);
  }
  return { packages, text, output, skipped };
}

/**
 * Reads every module directory's metadata and images, and validates the metadata (with no
 * versions yet, so schema problems point at metadata.json).
 * @throws RepositoryError `createrepo_invalid` listing every problem.
 */
async function readDrafts(root: string, log: (line: string) => void): Promise<{ dirs: string[]; drafts: Draft[] }> {
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch (err) {
    throw new RepositoryError('createrepo_invalid', `createrepo: cannot read directory ${root}: ${(err as Error).message}`, { cause: err });
  }
  const dirs = entries.filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name).sort();
  const problems: RepositoryProblem[] = [];
  const drafts: Draft[] = [];
  for (const d of dirs) {
    const draft = await readDraft(root, d, problems, log);
    if (draft) drafts.push(draft);
  }
  const early = checkRepodata(drafts.map((d) => ({ ...d.pkg, versions: [] })));
  for (const p of early) {
    const m = /^\/(\d+)(.*)$/.exec(p.where);
    const draft = m ? drafts[Number(m[1])] : undefined;
    problems.push({ where: draft ? `${join(root, draft.dir, 'metadata.json')} ${m?.[2] || '/'}` : p.where, message: p.message.replace(/ \(package '[^']*'\)$/, '') });
  }
  if (problems.length) {
    throw new RepositoryError(
      'createrepo_invalid',
      `createrepo: ${problems.length} problem${problems.length === 1 ? '' : 's'} in ${root}; nothing was written:\n${problems.map((p) => `  ${p.where}: ${p.message}`).join('\n')}`,
      { problems },
    );
  }
  return { dirs, drafts };
}

/** One tag of one draft to inspect. */
interface TagJob {
  d: Draft;
  /** Index of the draft. */
  i: number;
  tag: string;
}

/**
 * Lists each draft's tags (kept per the tag policy) and inspects each kept tag for its labels,
 * `concurrency` skopeo runs at a time. `inspected[k]` is the version of `jobs[k]`.
 * @throws RepositoryError `createrepo_registry_failed` with one problem per failed query.
 */
async function queryRegistry(drafts: Draft[], opts: CreaterepoOptions): Promise<{ jobs: TagJob[]; inspected: (RepodataVersion | undefined)[] }> {
  const tlsVerify = opts.registryTlsVerify ?? true;
  const policy = opts.tagPolicy ?? 'all-stable';
  const registryProblems: RepositoryProblem[] = [];
  const concurrency = opts.concurrency ?? 4;
  const tagLists = await pool(drafts, concurrency, async (d) => {
    try {
      const rec = await opts.runner.run(skopeoArgs('list-tags', d.pkg.source, tlsVerify), { purpose: `createrepo ${d.dir}: list tags of ${d.pkg.source}`, timeoutMs: 120_000 });
      const tags = (JSON.parse(rec.stdout) as { Tags?: string[] | null }).Tags ?? [];
      return selectTags(tags, policy);
    } catch (err) {
      registryProblems.push({ where: d.dir, message: `cannot list tags of ${d.pkg.source}: ${describeFailure(err)}` });
      return [];
    }
  });
  const jobs: TagJob[] = drafts.flatMap((d, i) => (tagLists[i] ?? []).map((tag) => ({ d, i, tag })));
  const inspected = await pool(jobs, concurrency, async ({ d, tag }) => {
    try {
      const rec = await opts.runner.run(skopeoArgs('inspect', `${d.pkg.source}:${tag}`, tlsVerify, ['--no-tags']), { purpose: `createrepo ${d.dir}: labels of ${d.pkg.source}:${tag}`, timeoutMs: 120_000 });
      const labels = (JSON.parse(rec.stdout) as { Labels?: Record<string, unknown> | null }).Labels ?? {};
      const strings = Object.fromEntries(Object.entries(labels).map(([k, v]) => [k, String(v)]));
      const version: RepodataVersion = { tag, testing: (parseVersion(tag)?.prerelease.length ?? 0) > 0, labels: strings };
      return version;
    } catch (err) {
      registryProblems.push({ where: d.dir, message: `cannot inspect ${d.pkg.source}:${tag}: ${describeFailure(err)}` });
      return undefined;
    }
  });
  if (registryProblems.length) {
    throw new RepositoryError(
      'createrepo_registry_failed',
      `createrepo: the registry could not be queried; nothing was written:\n${registryProblems.map((p) => `  ${p.where}: ${p.message}`).join('\n')}`,
      { problems: registryProblems },
    );
  }
  return { jobs, inspected };
}

/** The packages with their versions, in draft order; drafts without a version are skipped (and logged). */
function assemblePackages(drafts: Draft[], jobs: TagJob[], inspected: (RepodataVersion | undefined)[], log: (line: string) => void): { packages: RepodataPackage[]; skipped: CreaterepoResult['skipped'] } {
  const packages: RepodataPackage[] = [];
  const skipped: CreaterepoResult['skipped'] = [];
  drafts.forEach((d, i) => {
    const versions = jobs.map((j, k) => (j.i === i ? inspected[k] : undefined)).filter((v): v is RepodataVersion => v !== undefined);
    if (versions.length === 0) {
      skipped.push({ dir: d.dir, reason: `no semantic-version tag in ${d.pkg.source}` });
      log(`${d.dir}: skipped, no semantic-version tag in ${d.pkg.source}`);
      return;
    }
    packages.push(orderFields({ ...d.pkg, versions }));
    log(`${d.dir}: ${versions.map((v) => v.tag).join(', ')}`);
  });
  return { packages, skipped };
}

function orderFields(p: RepodataPackage): RepodataPackage {
  const { id, name, upstream_name, description, logo, screenshots, categories, authors, docs, source, versions, ...rest } = p;
  return {
    id,
    name,
    ...(upstream_name !== undefined ? { upstream_name } : {}),
    description,
    logo,
    screenshots: screenshots ?? [],
    categories,
    authors,
    docs,
    source,
    versions,
    ...rest,
  } as RepodataPackage;
}
