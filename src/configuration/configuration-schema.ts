/**
 * Finds a Module instance's configure-module input schema
 * (`actions/configure-module/validate-input.json`) offline, for plan-time validation of
 * `spec.configuration` and for normalising get-configuration output. Never contacts a registry.
 * Where it looks, first hit wins:
 *
 * 1. the instance's install dir (`<homeBase>/<id>/.config` rootless, `<rootfullBase>/<id>`
 *    rootfull), when the node agent already extracted it and the image installed there is the
 *    image the plan targets (or the target is not known);
 * 2. the image in local container storage (`podman image exists`): the one file is copied out
 *    with `podman create` + `podman cp` + `podman rm`, and kept in the cache;
 * 3. the cache (`<cacheDir>/<sha256 of the image URL>.json`), filled by step 2 earlier.
 *
 * Nothing found: undefined (the caller warns; it is not an error).
 */
import { createHash, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ns8ctlError } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import { readJsonFile } from './schema-validation.js';

/** Relative path of the schema inside an install dir or an image's imageroot. */
export const CONFIGURE_SCHEMA_PATH = path.join('actions', 'configure-module', 'validate-input.json');

/** A schema and where it came from (shown in diagnostics and warnings). */
export interface FoundSchema {
  schema: unknown;
  /** `/home/webapp1/.config/actions/configure-module/validate-input.json`, `image ghcr.io/x/y:1 (local storage)`, ... */
  origin: string;
}

/** What a schema is wanted for. */
export interface SchemaQuery {
  /** Instance id (`webapp1`). */
  id: string;
  /** Image the plan targets; undefined when it is not known at plan time. */
  image?: string | undefined;
  /** Image installed now (module environment IMAGE_URL or the node agent's status imageUrl). */
  installedImage?: string | undefined;
}

/** Looks a schema up; an injectable seam (tests, `false` to turn plan-time checks off). */
export interface ConfigurationSchemaLookup {
  /**
   * The schema, or undefined when none can be found offline.
   * @throws Ns8ctlError `configuration_schema_unreadable` when a schema exists but is not JSON.
   */
  find(q: SchemaQuery): Promise<FoundSchema | undefined>;
}

export interface OfflineSchemaLookupOptions {
  runner: CommandRunner;
  /** Parent of rootless homes (default /home). */
  homeBase?: string;
  /** Parent of rootfull install dirs (default /var/lib/nethserver). */
  rootfullBase?: string;
  /** Cache of schemas copied out of local images; omitted: no cache. */
  cacheDir?: string;
  /** Remember each image's answer this long (ms); 0 or omitted: ask every time. */
  memoMs?: number;
  /** Look in local container storage (default true). */
  useLocalImages?: boolean;
}

interface CacheEntry {
  image: string;
  /** The schema, or null when the image has none. */
  schema: unknown;
}

/** Sha256 file name of an image's cache entry. */
export function schemaCacheFile(cacheDir: string, image: string): string {
  return path.join(cacheDir, `${createHash('sha256').update(image).digest('hex')}.json`);
}

/** See the module doc. */
export class OfflineSchemaLookup implements ConfigurationSchemaLookup {
  /**
   * Image answers remembered for `memoMs` (option): a plan of 1,000 instances of 3 images then asks
   * podman 3 times, not 1,000. Off (0) unless asked for.
   */
  private readonly byImage = new Map<string, { at: number; found: Promise<FoundSchema | undefined> }>();

  constructor(private readonly opts: OfflineSchemaLookupOptions) {}

  async find(q: SchemaQuery): Promise<FoundSchema | undefined> {
    const sameImage = q.image === undefined || q.installedImage === undefined || q.image === q.installedImage;
    if (sameImage) {
      for (const dir of this.installDirs(q.id)) {
        const schema = await this.readDir(dir, q.id);
        if (schema !== undefined) return { schema, origin: path.join(dir, CONFIGURE_SCHEMA_PATH) };
      }
    }
    if (q.image === undefined) return undefined;
    const image = q.image;
    const memoMs = this.opts.memoMs ?? 0;
    if (memoMs <= 0) return this.fromImage(q.id, image);
    const now = Date.now();
    const hit = this.byImage.get(image);
    if (hit && now - hit.at < memoMs) return hit.found;
    const found = this.fromImage(q.id, image);
    this.byImage.set(image, { at: now, found });
    return found;
  }

  private async fromImage(id: string, image: string): Promise<FoundSchema | undefined> {
    if (this.opts.useLocalImages !== false) {
      const local = await this.fromLocalImage(id, image);
      if (local) return local.schema === null ? undefined : { schema: local.schema, origin: `image ${image} (local storage)` };
    }
    const cached = await this.readCache(image);
    if (cached) return cached.schema === null ? undefined : { schema: cached.schema, origin: `image ${image} (cache ${schemaCacheFile(this.opts.cacheDir ?? '', image)})` };
    return undefined;
  }

  private installDirs(id: string): string[] {
    return [path.join(this.opts.homeBase ?? '/home', id, '.config'), path.join(this.opts.rootfullBase ?? '/var/lib/nethserver', id)];
  }

  private async readDir(dir: string, id: string): Promise<unknown> {
    try {
      return await readConfigureModuleSchema(dir);
    } catch (err) {
      throw new Ns8ctlError('configuration_schema_unreadable', `${id}: ${path.join(dir, CONFIGURE_SCHEMA_PATH)} is not a readable JSON schema: ${(err as Error).message}`, { cause: err });
    }
  }

  private async readCache(image: string): Promise<CacheEntry | undefined> {
    if (!this.opts.cacheDir) return undefined;
    try {
      const e = JSON.parse(await fs.readFile(schemaCacheFile(this.opts.cacheDir, image), 'utf8')) as CacheEntry;
      return e && e.image === image ? e : undefined;
    } catch {
      return undefined;
    }
  }

  private async writeCache(entry: CacheEntry): Promise<void> {
    if (!this.opts.cacheDir) return;
    try {
      await fs.mkdir(this.opts.cacheDir, { recursive: true, mode: 0o700 });
      const file = schemaCacheFile(this.opts.cacheDir, entry.image);
      const tmp = `${file}.${process.pid}.tmp`;
      await fs.writeFile(tmp, JSON.stringify(entry), { mode: 0o600 });
      await fs.rename(tmp, file);
    } catch {
      // A cache that cannot be written only costs a later copy.
    }
  }

  /** Copies the schema out of a locally stored image; undefined when the image is not local. */
  private async fromLocalImage(id: string, image: string): Promise<CacheEntry | undefined> {
    const { runner } = this.opts;
    const exists = await runner.run(['podman', 'image', 'exists', image], { allowFailure: true, purpose: `${id}: is ${image} in local storage`, timeoutMs: 60_000 });
    if (exists.exitCode !== 0) return undefined;
    const container = `ns8ctl-schema-${randomBytes(4).toString('hex')}`;
    const dir = await fs.mkdtemp(path.join(tmpdir(), 'ns8ctl-schema-'));
    try {
      const created = await runner.run(['podman', 'create', '--name', container, '--entrypoint=/', image], { allowFailure: true, purpose: `${id}: read the configure-module schema of ${image}`, timeoutMs: 120_000 });
      if (created.exitCode !== 0) return undefined;
      const out = path.join(dir, 'validate-input.json');
      const cp = await runner.run(['podman', 'cp', `${container}:/imageroot/${CONFIGURE_SCHEMA_PATH}`, out], { allowFailure: true, purpose: `${id}: copy the configure-module schema out of ${image}`, timeoutMs: 120_000 });
      let entry: CacheEntry;
      if (cp.exitCode !== 0) {
        if (!/no such file|not found|does not exist/i.test(cp.stderr)) return undefined;
        entry = { image, schema: null };
      } else {
        const text = await fs.readFile(out, 'utf8');
        try {
          entry = { image, schema: JSON.parse(text) as unknown };
        } catch (err) {
          throw new Ns8ctlError('configuration_schema_unreadable', `${id}: ${CONFIGURE_SCHEMA_PATH} in image ${image} is not JSON: ${(err as Error).message}`, { cause: err });
        }
      }
      await this.writeCache(entry);
      return entry;
    } finally {
      await runner.run(['podman', 'rm', '-f', container], { allowFailure: true, purpose: `${id}: remove the schema copy container`, timeoutMs: 60_000 });
      await fs.rm(dir, { recursive: true, force: true });
    }
  }
}

/**
 * Reads `actions/configure-module/validate-input.json` under `root` (an install dir, or an
 * imageroot extracted from the image for offline validation at plan time). Undefined when the
 * module has no such schema; AgentError `schema_unreadable` when it exists but is not JSON.
 */
export async function readConfigureModuleSchema(root: string): Promise<unknown> {
  const file = path.join(root, 'actions', 'configure-module', 'validate-input.json');
  try {
    await fs.access(file);
  } catch {
    return undefined;
  }
  return readJsonFile(file);
}
