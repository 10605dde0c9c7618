/**
 * Plan-time validation of `spec.configuration` against each module's configure-module schema,
 * for `validate` (every Module with a configuration) and, through the pipeline, for `diff` and
 * `apply` (the Modules a plan creates or updates): one schema lookup, one rule set.
 */
import path from 'node:path';
import type { Redis } from 'ioredis';
import { OfflineSchemaLookup, type ConfigurationSchemaLookup } from '../configuration/configuration-schema.js';
import { checkConfigurations, type ConfigurationCheck } from '../configuration/configuration-validation.js';
import { RedisError } from '../errors.js';
import { ProcessRunner, type CommandRunner } from '../host/runner.js';
import type { DesiredObject, ModuleObject } from '../manifest/types.js';
import { secretNamesOfSchema } from '../runtime/mask.js';
import { keys } from '../state/keys.js';
import { resolveStateDir } from '../state/state-dir.js';
import { locateInDocument } from './load-validate.js';

/**
 * The production schema lookup: NS8's install dirs, root's container storage through `podman`,
 * and the cache `<state-dir>/cache/configuration-schemas`; an image's answer is reused for a
 * minute (one podman check per image per plan, not per instance).
 */
export function defaultSchemaLookup(runner: CommandRunner = new ProcessRunner()): ConfigurationSchemaLookup {
  return new OfflineSchemaLookup({ runner, cacheDir: path.join(resolveStateDir(), 'cache', 'configuration-schemas'), memoMs: 60_000 });
}

/** True when some desired Module has a `spec.configuration` to check. */
export function hasConfigurations(desired: readonly DesiredObject[]): boolean {
  return desired.some((d) => d.object.kind === 'Module' && d.object.spec.configuration !== undefined);
}

/**
 * Checks every desired Module's configuration against the schema of its `spec.image`, or of the
 * image installed now (`IMAGE_URL` of `module/<id>/environment`, read when `redis` is given) for
 * a Module named by repository module. Diagnostics are located in the manifests.
 * @throws RedisError when Redis fails.
 */
export async function checkDesiredConfigurations(desired: readonly DesiredObject[], redis: Redis | undefined, lookup: ConfigurationSchemaLookup = defaultSchemaLookup()): Promise<ConfigurationCheck> {
  const modules = desired.flatMap((d) => (d.object.kind === 'Module' && d.object.spec.configuration !== undefined ? [d.object] : []));
  const running = new Map<string, string>();
  if (redis && modules.length) {
    const p = redis.pipeline();
    for (const m of modules) p.hget(keys.moduleEnvironment(m.metadata.name), 'IMAGE_URL');
    const res = (await p.exec()) ?? [];
    modules.forEach((m, i) => {
      const [err, v] = res[i] ?? [null, null];
      if (err) throw new RedisError('redis_command_failed', `reading the installed image of ${m.metadata.name}: ${err.message}`, { cause: err });
      if (typeof v === 'string' && v) running.set(m.metadata.name, v);
    });
  }
  return checkConfigurations(desired, modules.map((m) => ({ id: m.metadata.name, image: m.spec.image })), { lookup, running, locate: locateInDocument });
}

/**
 * The property names each Module's configure-module schema marks secret (`format: password`,
 * `writeOnly`, `secret: true`), for masking what `get` prints. Cheap and offline: the instance's
 * install dirs and the schema cache only (no podman), so a Module whose schema was never seen on
 * this host (not installed here, not planned here) has no entry and is masked by the name rule
 * alone. Never throws: an unreadable schema only means no extra names.
 * @param installed instance id -> the image it runs now (status `imageUrl`), when known.
 */
export async function schemaSecretNames(modules: readonly ModuleObject[], installed: ReadonlyMap<string, string>, lookup: ConfigurationSchemaLookup = cachedSchemaLookup()): Promise<Map<string, Set<string>>> {
  const out = new Map<string, Set<string>>();
  for (const m of modules) {
    if (m.spec.configuration === undefined) continue;
    const id = m.metadata.name;
    try {
      const found = await lookup.find({ id, image: m.spec.image ?? installed.get(id), installedImage: installed.get(id) });
      const names = found ? secretNamesOfSchema(found.schema) : undefined;
      if (names?.size) out.set(id, names);
    } catch {
      // An unreadable schema file: masking falls back to the name rule.
    }
  }
  return out;
}

/** The schema lookup without podman: install dirs and `<state-dir>/cache/configuration-schemas` only. */
export function cachedSchemaLookup(runner: CommandRunner = new ProcessRunner()): ConfigurationSchemaLookup {
  return new OfflineSchemaLookup({ runner, cacheDir: path.join(resolveStateDir(), 'cache', 'configuration-schemas'), useLocalImages: false });
}
