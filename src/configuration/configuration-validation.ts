/**
 * Plan-time validation of `spec.configuration`: every Module the plan creates or updates and that
 * has a configuration is checked against its instance's configure-module input schema, found
 * offline (configuration-schema.ts). Problems become Diagnostics (`file:line:col /spec/configuration/x
 * message`); a Module whose schema cannot be found gets a plan warning instead.
 */
import type { Diagnostic } from '../errors.js';
import { validateConfiguration } from './configuration.js';
import { secretNamesOfSchema } from '../runtime/mask.js';
import type { DesiredObject, ModuleObject } from '../manifest/types.js';
import type { Plan } from '../plan/types.js';
import type { ConfigurationSchemaLookup } from './configuration-schema.js';

/** Base of every configuration pointer. */
export const CONFIGURATION_POINTER = '/spec/configuration';

/** Maps a pointer inside a desired object's document to its position (from the loaded YAML). */
export type DocumentLocator = (d: DesiredObject, pointer: string, mode: 'value' | 'key') => { file: string; line: number; col: number };

/** Fallback locator: the document start recorded in the object's source. */
export const documentStart: DocumentLocator = (d) => ({ file: d.source.file, line: d.source.line, col: d.source.col });

/** What checkPlannedConfigurations found. */
export interface ConfigurationCheck {
  diagnostics: Diagnostic[];
  warnings: string[];
  /** Instances checked against a schema, with where the schema came from. */
  checked: { id: string; origin: string }[];
  /** Per instance checked: the property names its schema marks secret (secretNamesOfSchema), sorted; absent when none. */
  secretNames: Map<string, string[]>;
}

/**
 * `plan` with each Module change carrying the secret property names its schema marks
 * (`check.secretNames`), so every rendering of the plan masks them. Pure; the plan is not mutated.
 */
export function withSecretNames(plan: Plan, check: Pick<ConfigurationCheck, 'secretNames'>): Plan {
  if (check.secretNames.size === 0) return plan;
  return {
    ...plan,
    changes: plan.changes.map((c) => {
      const names = c.kind === 'Module' ? check.secretNames.get(c.id) : undefined;
      return names?.length ? { ...c, secretNames: [...new Set([...(c.secretNames ?? []), ...names])].sort() } : c;
    }),
  };
}

/** One Module whose configuration is checked, and the image whose schema applies. */
export interface ConfigurationTarget {
  id: string;
  /** Full image URL the instance will run, when known (resolved, or spec.image). */
  image?: string | undefined;
}

/**
 * Checks the configuration of every Module that `plan` creates or updates (see the module doc).
 * `running` maps instance ids to the image installed now. Never throws for invalid configuration;
 * rethrows lookup failures (a schema file that is not JSON).
 */
export async function checkPlannedConfigurations(
  desired: readonly DesiredObject[],
  plan: Plan,
  opts: { lookup: ConfigurationSchemaLookup; running?: ReadonlyMap<string, string> | undefined; locate?: DocumentLocator },
): Promise<ConfigurationCheck> {
  const byId = new Map<string, DesiredObject<ModuleObject>>();
  for (const d of desired) if (d.object.kind === 'Module') byId.set(d.object.metadata.name, d as DesiredObject<ModuleObject>);
  const targets: ConfigurationTarget[] = [];
  for (const c of plan.changes) {
    if (c.kind !== 'Module' || c.action === 'delete') continue;
    targets.push({ id: c.id, image: c.resolved?.image ?? byId.get(c.id)?.object.spec.image });
  }
  return checkConfigurations(desired, targets, opts);
}

/**
 * Checks the configuration of the `targets` Modules of `desired` against the configure-module
 * schema of their image (or, when unknown, of the image installed now, `running`), as
 * checkPlannedConfigurations does for a plan's changes; `validate` checks every Module this way.
 * Never throws for invalid configuration; rethrows lookup failures.
 */
export async function checkConfigurations(
  desired: readonly DesiredObject[],
  targets: readonly ConfigurationTarget[],
  opts: { lookup: ConfigurationSchemaLookup; running?: ReadonlyMap<string, string> | undefined; locate?: DocumentLocator },
): Promise<ConfigurationCheck> {
  const out: ConfigurationCheck = { diagnostics: [], warnings: [], checked: [], secretNames: new Map() };
  const locate = opts.locate ?? documentStart;
  const byId = new Map<string, DesiredObject<ModuleObject>>();
  for (const d of desired) if (d.object.kind === 'Module') byId.set(d.object.metadata.name, d as DesiredObject<ModuleObject>);
  for (const t of targets) {
    const d = byId.get(t.id);
    const config = d?.object.spec.configuration;
    if (!d || config === undefined) continue;
    const image = t.image;
    const found = await opts.lookup.find({ id: t.id, image, installedImage: opts.running?.get(t.id) });
    if (!found) {
      out.warnings.push(
        `Module/${t.id}: spec.configuration not validated at plan time: no configure-module schema found offline for ${image ?? `module ${d.object.spec.module ?? '?'} (image not resolved)`} (not installed on this host, not in local container storage, not cached); configure-module checks it when it runs`,
      );
      continue;
    }
    out.checked.push({ id: t.id, origin: found.origin });
    const secret = [...secretNamesOfSchema(found.schema)].sort();
    if (secret.length) out.secretNames.set(t.id, secret);
    for (const p of validateConfiguration(config, found.schema, { basePointer: CONFIGURATION_POINTER, origin: found.origin })) {
      const mode = /is not allowed/.test(p.message) ? 'key' : 'value';
      const pos = locate(d, p.pointer, mode);
      out.diagnostics.push({ file: pos.file, line: pos.line, col: pos.col, pointer: p.pointer, message: `${p.message} (configure-module schema of ${t.id}: ${found.origin})` });
    }
  }
  out.diagnostics.sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line || a.col - b.col));
  return out;
}
