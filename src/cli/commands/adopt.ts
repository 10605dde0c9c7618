/**
 * `ns8ctl adopt modules|repositories [NAME...] [--manifests DIR] [-o yaml|json]`: manifests for
 * what NS8 runs (made in its UI or with its own tools) that ns8ctl does not manage yet, read from
 * NS8's own keys: a Module per instance of `cluster/module_node` (its node, and the image of
 * `IMAGE_URL` in `module/<id>/environment`), a Repository per `cluster/repository/<name>`. Put
 * them in git and apply them: the plan adopts each object (`(adopting it)`) and changes nothing on
 * the nodes. Every manifest is validated before it is printed or written; with `--manifests`,
 * nothing is written when any target file exists. Read-only on Redis.
 */
import { existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import type { Redis } from 'ioredis';
import { NotFoundError, RefusedError, UsageError } from '../../errors.js';
import { parseManifestText } from '../../manifest/load.js';
import { API_VERSION, type DesiredObject, type ModuleObject, type NodeObject, type RepositoryObject } from '../../manifest/types.js';
import { validateManifests } from '../../manifest/validate.js';
import { readNodeRecords } from '../../state/read-state.js';
import { keys } from '../../state/keys.js';
import { scanNames } from '../../state/scan.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson } from '../../runtime/output.js';

export interface AdoptOptions {
  manifests?: string;
  output?: string;
}

/** An object made from what the cluster runs, for a manifest file `<id>.yaml`. */
export interface Adopted {
  id: string;
  object: ModuleObject | RepositoryObject | NodeObject;
  /** One line said above the manifest. */
  note: string;
}

/** Manifest text per object: the note as a comment, then the object as YAML. Pure. */
export function generatedManifests(found: readonly Adopted[]): { a: Adopted; text: string }[] {
  return found.map((a) => ({ a, text: `# ${a.note}\n${YAML.stringify(a.object)}` }));
}

/**
 * Validates generated manifests exactly as apply would load them (schemas, rules, Module nodes
 * among `knownNodes` or the Node objects generated with them); returns the validated objects,
 * whose source files are `<id>.yaml`.
 * @throws RefusedError `code` listing every problem: nothing may be printed or written.
 */
export function validateGenerated(texts: readonly { a: Adopted; text: string }[], knownNodes: readonly number[], code: string, what: string): DesiredObject[] {
  const files = texts.map(({ a }) => `${a.id}.yaml`);
  const loaded = texts.flatMap(({ a, text }) => parseManifestText(`${a.id}.yaml`, text).documents);
  const check = validateManifests({ documents: loaded, diagnostics: [], files }, { knownNodes: [...knownNodes] });
  if (check.diagnostics.length > 0) throw new RefusedError(code, `${what}:\n${check.diagnostics.map((d) => `  ${d.file}: ${d.message}`).join('\n')}`);
  return check.objects;
}

/**
 * Writes `<dir>/<id>.yaml` per manifest, each through a temp file and a rename; nothing at all
 * when any target exists (never overwrites).
 * @throws RefusedError `code` naming the existing files.
 */
export function writeGenerated(dir: string, texts: readonly { a: Adopted; text: string }[], code: string, advice: string): string[] {
  const files = texts.map(({ a }) => path.join(dir, `${a.id}.yaml`));
  const clash = files.filter((f) => existsSync(f));
  if (clash.length > 0) throw new RefusedError(code, `not overwriting ${clash.join(', ')} (nothing written): ${advice}`);
  mkdirSync(dir, { recursive: true });
  texts.forEach(({ text }, i) => {
    writeFileSync(`${files[i]!}.tmp`, text);
    renameSync(`${files[i]!}.tmp`, files[i]!);
  });
  return files;
}

async function adoptModules(redis: Redis, names: string[]): Promise<{ found: Adopted[]; skipped: string[] }> {
  const placement = await redis.hgetall(keys.moduleNode());
  const ids = names.length > 0 ? names : Object.keys(placement).sort();
  for (const id of names) if (!(id in placement)) throw new NotFoundError(`NS8 has no instance ${id} (not in cluster/module_node); ns8ctl adopt modules lists what it has`);
  const p = redis.pipeline();
  for (const id of ids) p.exists(keys.desired('Module', id)).hget(keys.moduleEnvironment(id), 'IMAGE_URL');
  const res = ((await p.exec()) ?? []).map(([err, v]) => {
    if (err) throw err;
    return v;
  });
  const found: Adopted[] = [];
  const skipped: string[] = [];
  ids.forEach((id, i) => {
    if (res[2 * i] === 1) return void skipped.push(`Module/${id}`);
    const image = res[2 * i + 1] as string | null;
    if (!image) throw new RefusedError('adopt_incomplete', `NS8 instance ${id} has no IMAGE_URL in module/${id}/environment: it is not fully installed; finish or remove it in NS8 first`);
    const node = Number(placement[id]);
    found.push({ id, object: { apiVersion: API_VERSION, kind: 'Module', metadata: { name: id }, spec: { image, node } }, note: `NS8 runs ${id} on node ${node} (${image}); spec.configuration is not adopted: while it is absent ns8ctl leaves the module's configuration alone` });
  });
  return { found, skipped };
}

async function adoptRepositories(redis: Redis, names: string[]): Promise<{ found: Adopted[]; skipped: string[] }> {
  const all = (await scanNames(redis, 'cluster/repository/')).sort();
  for (const n of names) if (!all.includes(n)) throw new NotFoundError(`NS8 has no repository ${n} (no cluster/repository/${n}); ns8ctl adopt repositories lists what it has`);
  const found: Adopted[] = [];
  const skipped: string[] = [];
  for (const name of names.length > 0 ? names : all) {
    if ((await redis.exists(keys.desired('Repository', name))) === 1) {
      skipped.push(`Repository/${name}`);
      continue;
    }
    const h = await redis.hgetall(keys.repository(name));
    if (!h.url) throw new RefusedError('adopt_incomplete', `NS8 repository ${name} has no url in cluster/repository/${name}`);
    found.push({ id: name, object: { apiVersion: API_VERSION, kind: 'Repository', metadata: { name }, spec: { url: h.url, enabled: h.status !== '0', testing: h.testing === '1' } }, note: `NS8 repository ${name} (${h.url})` });
  }
  return { found, skipped };
}

export async function adoptCommand(resource: string, names: string[], opts: AdoptOptions, deps: CliDeps): Promise<number> {
  const format = parseOutput(opts.output, ['yaml', 'json'], 'yaml');
  const kind = { module: 'modules', modules: 'modules', repository: 'repositories', repositories: 'repositories', repo: 'repositories' }[resource];
  if (!kind) throw new UsageError(`cannot adopt "${resource}": modules or repositories`);
  const { redis } = await deps.connect();
  const { found, skipped } = kind === 'modules' ? await adoptModules(redis, names) : await adoptRepositories(redis, names);
  for (const s of skipped) deps.stderr(`${s}: already managed by ns8ctl, skipped\n`);

  // Never hand out a manifest that would not validate.
  const texts = generatedManifests(found);
  validateGenerated(texts, await readNodeRecords(redis), 'adopt_invalid', 'these NS8 objects do not make valid manifests (nothing written)');
  if (opts.manifests) writeGenerated(opts.manifests, texts, 'adopt_file_exists', 'move them away or adopt other names');
  if (format === 'json') deps.stdout(renderJson({ items: found.map((a) => a.object), skipped, ...(opts.manifests ? { files: texts.map(({ a }) => path.join(opts.manifests!, `${a.id}.yaml`)) } : {}) }));
  else if (!opts.manifests) deps.stdout(texts.map(({ text }) => text).join('---\n'));
  if (format !== 'json') {
    const what = found.map((a) => `${a.object.kind}/${a.id}`).join(', ');
    deps.stderr(found.length === 0 ? `Nothing to adopt: ns8ctl manages every ${kind === 'modules' ? 'instance' : 'repository'} NS8 has${names.length ? ' of those named' : ''}.\n` : `${opts.manifests ? `Wrote ${found.length} manifest(s) to ${opts.manifests}` : `${found.length} manifest(s) above`}: ${what}. Review, commit, then: ns8ctl apply -f ${opts.manifests ?? 'DIR'} (the plan adopts them and changes nothing on the nodes).\n`);
  }
  return 0;
}
