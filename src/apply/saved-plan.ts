/**
 * Saved plans (Terraform's `plan -out` / `apply PLANFILE`): `ns8ctl diff --out FILE` stores the
 * reviewed desired objects, the options of the plan, and a fingerprint of every desired object the
 * plan read (stored JSON, apply set, deletion mark, inventory membership). `ns8ctl apply --plan
 * FILE` never takes writes from the file: it checks the fingerprint against desired state now (any
 * change: the plan is stale, exit 3, nothing written), validates the objects again, re-plans them
 * with the same planner, refuses unless that plan makes exactly the reviewed changes, prints it
 * and writes it through the one write script with its preconditions. So an edited plan file can
 * do no more than `ns8ctl apply` of manifests could: no raw Redis writes, no bypassing finalizers
 * or validation. The desired objects (secret values included) are sealed with AES-256-GCM under
 * a key only this host holds (`<state-dir>/plan.key`, 0600), so the file shows no secret in clear
 * and an edited object cannot be decrypted; the file is written 0600 too.
 */
import { createCipheriv, createDecipheriv, createHash, createHmac, randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { ConflictError, ManifestError, Ns8ctlError } from '../errors.js';
import { parseManifestText } from '../manifest/load.js';
import { moduleNameOf, objectKey, type DesiredObject, type ManifestObject, type ModuleSpec, type SourceRef } from '../manifest/types.js';
import { validateManifests } from '../manifest/validate.js';
import { canonicalJson } from '../runtime/canonical.js';
import { plan as makePlan } from '../plan/planner.js';
import type { ClusterState } from '../state/cluster-state.js';
import type { Plan } from '../plan/types.js';
import { readClusterState, readNodeRecords } from '../state/read-state.js';
import { conflictWhat, executeWrites, newEpoch, type WriteConflict, type WriteOp } from '../state/write-state.js';
import { knownBackupDestinationsOf } from './load-validate.js';
import { checkApplicable, knownModulesOf, knownNodesOf, resolvePlan, type PreparedPlan, type ResolveOptions } from './pipeline.js';
import { expectOp, findSourceRefreshes, planToWrites, sourceRefreshWrites, storedSource } from './to-writes.js';

export const SAVED_PLAN_KIND = 'SavedPlan';
const API_VERSION = 'ns8ctl.nethserver.org/v1';
/** Format of the file: 2 stores sealed desired objects (1 stored raw writes and is refused). */
const FORMAT = 2;
/** The host key's file in the state directory. */
export const PLAN_KEY_FILE = 'plan.key';

/** The desired objects of a plan, encrypted with the host's plan key (AES-256-GCM). */
export interface SealedObjects {
  alg: 'aes-256-gcm';
  /** base64 of the 12-byte IV, the 16-byte tag and the ciphertext of the JSON array. */
  iv: string;
  tag: string;
  data: string;
}

/**
 * The host's plan key, `<stateDir>/plan.key` (64 hex digits), made (0600, in a directory made
 * 0700) when `create` and absent. Concurrent makers agree: the first file written wins.
 * @throws Ns8ctlError `plan_key_missing` when absent and not `create`; `plan_key_invalid`.
 */
export async function loadPlanKey(stateDir: string, create: boolean): Promise<Buffer> {
  const file = path.join(stateDir, PLAN_KEY_FILE);
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const text = (await fs.readFile(file, 'utf8')).trim();
      if (!/^[0-9a-f]{64}$/.test(text)) throw new Ns8ctlError('plan_key_invalid', `${file} is not a plan key (64 hex digits); delete it to make a new one (plans saved with it can no longer be applied)`, { user: true });
      return Buffer.from(text, 'hex');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (!create) throw new Ns8ctlError('plan_key_missing', `this host has no plan key (${file}): the plan was saved on another host or state directory, and can only be applied there`, { user: true });
    }
    await fs.mkdir(stateDir, { recursive: true, mode: 0o700 });
    try {
      await fs.writeFile(file, randomBytes(32).toString('hex') + '\n', { mode: 0o600, flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }
  throw new Ns8ctlError('plan_key_missing', `cannot make the plan key ${file}`, { user: true });
}

/** Encrypts `desired` with `key` (a new random IV each time). */
export function sealObjects(desired: readonly DesiredObject[], key: Buffer): SealedObjects {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  const data = Buffer.concat([cipher.update(JSON.stringify(desired), 'utf8'), cipher.final()]);
  return { alg: 'aes-256-gcm', iv: iv.toString('base64'), tag: cipher.getAuthTag().toString('base64'), data: data.toString('base64') };
}

/**
 * Decrypts sealed desired objects.
 * @throws Ns8ctlError `saved_plan_invalid` when they do not decrypt with `key` (edited, or sealed
 *   under another host's key) or are not a list of objects.
 */
export function unsealObjects(sealed: SealedObjects, key: Buffer, file: string): DesiredObject[] {
  let text: string;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(sealed.iv, 'base64'));
    decipher.setAuthTag(Buffer.from(sealed.tag, 'base64'));
    text = Buffer.concat([decipher.update(Buffer.from(sealed.data, 'base64')), decipher.final()]).toString('utf8');
  } catch (err) {
    throw new Ns8ctlError('saved_plan_invalid', `${file}: its desired objects do not decrypt with this host's plan key (the file was edited, or saved on another host); make a new plan with: ns8ctl diff -f PATH --out ${file}`, { cause: err, user: true });
  }
  const v = JSON.parse(text) as unknown;
  if (!Array.isArray(v) || !v.every((d) => isRecord(d) && isRecord(d.object) && isSource(d.source))) {
    throw new Ns8ctlError('saved_plan_invalid', `${file}: its desired objects are not a list of {object, source}`, { user: true });
  }
  return v as DesiredObject[];
}
/** Exit code of `apply --plan` when desired state changed since the plan was made. */
export const STALE_PLAN_EXIT_CODE = 3;

/** What the plan read of one desired object (see expectOp): any change makes the plan stale. */
export interface ObjectFingerprint {
  /** `Kind/id`. */
  key: string;
  /** HMAC-SHA256 (plan key, hex) of the stored `object` JSON ('' when absent): the JSON may hold secrets. */
  objectSha256: string;
  applyset: string;
  deleting: string;
  inventories: string[];
}

export interface SavedPlan {
  apiVersion: typeof API_VERSION;
  kind: typeof SAVED_PLAN_KIND;
  format: typeof FORMAT;
  createdAt: string;
  applySet: string;
  prune: boolean;
  /** The saved plan may prune more than half of the apply set (`diff --out --force-prune`). */
  forcePrune: boolean;
  /** The reviewed desired objects, with the file and document each came from, sealed (sealObjects). */
  desired: SealedObjects;
  /** Git commit of each source file when the plan was made ('' when none). */
  revisions: Record<string, string>;
  /** Every desired object the plan depends on, as it was read. */
  preconditions: ObjectFingerprint[];
  /** The plan as `diff -o json` prints it (secrets masked). */
  plan: Record<string, unknown>;
  /** The plan as `diff` printed it (masked, no colour). */
  text: string;
  /** How many objects the plan changes (0: applying it only checks that nothing moved). */
  changes: number;
  /** HMAC of the reviewed changes (changeDigest): the re-made plan must have the same. */
  changeDigest: string;
  /** sha256 of the canonical document without this field: a damaged file is refused. */
  digest: string;
}

const FIELDS = ['apiVersion', 'kind', 'format', 'createdAt', 'applySet', 'prune', 'forcePrune', 'desired', 'revisions', 'preconditions', 'plan', 'text', 'changes', 'changeDigest', 'digest'] as const;

/** sha256 of the canonical plan document without its digest. */
const digestOf = (saved: Record<string, unknown>): string => {
  const { digest: _ignored, ...rest } = saved;
  return createHash('sha256').update(canonicalJson(rest)).digest('hex');
};

/**
 * HMAC-SHA256 (under the plan key: the objects hold secrets, which a bare hash would expose to a
 * dictionary attack) of what a plan changes in desired state: per change its action, object, new
 * object, whether the spec changes, inventory moves and data policy, plus the apply set and prune
 * flag. NS8 bookkeeping is left out: the planner derives it from the same objects and state.
 */
export function changeDigest(plan: Plan, key: Buffer): string {
  const view = {
    applySet: plan.applySet,
    prune: plan.prune,
    changes: plan.changes.map((c) => ({ action: c.action, key: c.key, after: c.after ?? null, specChanged: c.specChanged, inventory: c.inventory, dataPolicy: c.dataPolicy ?? null })),
  };
  return createHmac('sha256', key).update(canonicalJson(view)).digest('hex');
}

/** The keys a plan depends on: its desired objects, the apply set's inventory (prune), its changes. */
function dependedKeys(desired: readonly DesiredObject[], state: ClusterState, applySet: string, plan?: Plan): string[] {
  const out = new Set<string>(desired.map((d) => objectKey(d.object)));
  for (const k of state.inventory.get(applySet) ?? []) out.add(k);
  for (const c of plan?.changes ?? []) out.add(c.key);
  return [...out].sort();
}

function fingerprint(state: ClusterState, key: string, planKey: Buffer): ObjectFingerprint {
  const e = expectOp(state, key) as Extract<WriteOp, { op: 'expect' }>;
  const objectSha256 = e.object === '' ? '' : createHmac('sha256', planKey).update(e.object).digest('hex');
  return { key, objectSha256, applyset: e.applyset ?? '', deleting: e.deleting ?? '', inventories: e.inventories ?? [] };
}

/**
 * The saved form of `prepared` (desired objects sealed with `key`, options, the fingerprint of
 * everything the plan read). `render` gives the masked text and JSON of the plan. Pure but for
 * the random IV.
 */
export function makeSavedPlan(
  prepared: PreparedPlan,
  opts: { applySet: string; prune: boolean; forcePrune?: boolean; key: Buffer; revisionOf: (file: string) => string; now: Date; render: (plan: Plan) => { text: string; json: Record<string, unknown> } },
): SavedPlan {
  const { plan, state, desired } = prepared;
  const revisions: Record<string, string> = {};
  for (const d of desired) revisions[d.source.file] = opts.revisionOf(d.source.file);
  const shown = opts.render(plan);
  const doc = {
    apiVersion: API_VERSION,
    kind: SAVED_PLAN_KIND,
    format: FORMAT,
    createdAt: opts.now.toISOString(),
    applySet: opts.applySet,
    prune: opts.prune,
    forcePrune: Boolean(opts.forcePrune),
    desired: sealObjects(desired.map((d) => ({ object: d.object, source: d.source })), opts.key),
    revisions,
    preconditions: dependedKeys(desired, state, opts.applySet, plan).map((k) => fingerprint(state, k, opts.key)),
    plan: shown.json,
    text: shown.text,
    changes: plan.changes.length,
    changeDigest: changeDigest(plan, opts.key),
  } as const;
  return { ...doc, digest: digestOf(doc as unknown as Record<string, unknown>) };
}

/** Writes the plan file atomically, mode 0600 (it holds secrets in clear). */
export async function writeSavedPlan(file: string, saved: SavedPlan): Promise<void> {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    await fs.writeFile(tmp, JSON.stringify(saved, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
    await fs.rename(tmp, file);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw new Ns8ctlError('saved_plan_write_failed', `cannot write the plan to ${file}: ${(err as Error).message}`, { cause: err, user: true });
  }
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isSource = (v: unknown): v is SourceRef => isRecord(v) && typeof v.file === 'string' && typeof v.doc === 'number' && typeof v.line === 'number' && typeof v.col === 'number';
const isFingerprint = (v: unknown): v is ObjectFingerprint =>
  isRecord(v) && ['key', 'objectSha256', 'applyset', 'deleting'].every((f) => typeof v[f] === 'string') && Array.isArray(v.inventories) && v.inventories.every((s) => typeof s === 'string');

/**
 * Reads and checks a plan file: its shape (exactly the fields of a SavedPlan: a file carrying
 * writes, such as format 1's `ops`, is refused) and its digest.
 * @throws Ns8ctlError `saved_plan_invalid` naming the file and what is wrong.
 */
export async function readSavedPlan(file: string): Promise<SavedPlan> {
  const bad = (why: string): Ns8ctlError => new Ns8ctlError('saved_plan_invalid', `${file}: ${why}; make a new plan with: ns8ctl diff -f PATH --out ${file}`, { user: true });
  let text: string;
  try {
    const st = await fs.stat(file);
    if (!st.isFile()) throw bad('not a regular file');
    if (st.size > 64 * 1024 * 1024) throw bad(`too large (${st.size} bytes) for a saved plan`);
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof Ns8ctlError) throw err;
    throw new Ns8ctlError('saved_plan_invalid', `cannot read the plan ${file}: ${(err as Error).message}`, { cause: err, user: true });
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw bad('not a saved plan (not JSON)');
  }
  if (!isRecord(v) || v.kind !== SAVED_PLAN_KIND || v.apiVersion !== API_VERSION) throw bad(`not a saved plan (kind must be ${SAVED_PLAN_KIND}, apiVersion ${API_VERSION})`);
  if (v.format !== FORMAT || 'ops' in v) throw bad(`a saved plan of format ${FORMAT} holds the reviewed desired objects, not Redis writes (this file ${'ops' in v ? 'carries writes (ops)' : `has format ${JSON.stringify(v.format ?? 1)}`}), and is refused`);
  const extra = Object.keys(v).filter((k) => !(FIELDS as readonly string[]).includes(k));
  if (extra.length) throw bad(`unknown field${extra.length > 1 ? 's' : ''} ${extra.map((k) => JSON.stringify(k)).join(', ')} (a saved plan has only ${FIELDS.join(', ')})`);
  const ok =
    typeof v.applySet === 'string' && typeof v.prune === 'boolean' && typeof v.forcePrune === 'boolean' && typeof v.createdAt === 'string' && typeof v.text === 'string' &&
    typeof v.changes === 'number' && typeof v.changeDigest === 'string' && typeof v.digest === 'string' && isRecord(v.plan) && isRecord(v.revisions) &&
    Object.values(v.revisions).every((r) => typeof r === 'string' && /^[0-9a-f]{0,64}$/.test(r)) &&
    isRecord(v.desired) && v.desired.alg === 'aes-256-gcm' && ['iv', 'tag', 'data'].every((f) => typeof (v.desired as Record<string, unknown>)[f] === 'string') &&
    Array.isArray(v.preconditions) && v.preconditions.every(isFingerprint);
  if (!ok) throw bad('the saved plan is incomplete or has fields of the wrong type');
  if (digestOf(v) !== v.digest) throw bad('the saved plan does not match its digest (the file was damaged or edited)');
  return v as unknown as SavedPlan;
}

function staleError(saved: SavedPlan, what: string, cause?: unknown): Ns8ctlError {
  return new Ns8ctlError('plan_stale', `the saved plan is stale: ${what} since the plan was made (${saved.createdAt}); nothing was written. Make a new plan (ns8ctl diff -f PATH --out FILE), review it, and apply that one`, {
    cause,
    user: true,
    exitCode: STALE_PLAN_EXIT_CODE,
  });
}

/** What changed between a saved fingerprint and the object now, as a WriteConflict sentence part. */
function compareFingerprint(saved: ObjectFingerprint, now: ObjectFingerprint, state: ClusterState): string | undefined {
  const stored = state.objects.get(saved.key);
  const base = { label: saved.key, applyset: now.applyset, source: stored?.source ?? '', generation: stored ? String(stored.generation) : '', deleting: now.deleting };
  let c: WriteConflict | undefined;
  if (saved.objectSha256 !== now.objectSha256) c = { ...base, field: 'object', expected: saved.objectSha256, actual: now.objectSha256 };
  else if (saved.applyset !== now.applyset) c = { ...base, field: 'applyset', expected: saved.applyset, actual: now.applyset };
  else if (saved.deleting !== now.deleting) c = { ...base, field: 'deleting', expected: saved.deleting, actual: now.deleting };
  else if (saved.inventories.join('\n') !== now.inventories.join('\n')) c = { ...base, field: 'inventories', expected: saved.inventories.join('\n'), actual: now.inventories.join('\n') };
  return c ? `${saved.key} changed in desired state (it ${conflictWhat(c)})` : undefined;
}

/** Result of applySavedPlan: the plan re-made from the file's objects, which is what was written. */
export interface SavedPlanResult {
  plan: Plan;
  /** `Kind/id` of unchanged objects whose stored source was updated, sorted. */
  sourcesUpdated: string[];
}

/**
 * Applies a saved plan: decrypts its desired objects with the host key `opts.key`, checks what it
 * read against desired state now, validates its desired
 * objects (schemas and cluster facts, as apply does), re-plans them (planner, image resolution,
 * configuration schemas, prune safety with the plan's own --force-prune), requires the same changes
 * as were reviewed (changeDigest), then writes them atomically with preconditions on every object
 * it read. Deletion marks carry `identity`.
 * @throws Ns8ctlError `plan_stale` (exit 3) naming the object that changed since the plan was made;
 *   ManifestError when a desired object of the file is invalid; Ns8ctlError `saved_plan_mismatch`
 *   when the objects do not give the reviewed changes. Nothing is written in every case.
 */
export async function applySavedPlan(
  saved: SavedPlan,
  redis: Redis,
  opts: ResolveOptions & { key: Buffer; file?: string; actor?: string; now?: Date },
): Promise<SavedPlanResult> {
  const file = opts.file ?? 'the saved plan';
  const objects = unsealObjects(saved.desired, opts.key, file);
  const scope = {
    modules: objects.flatMap((d) => {
      if (d.object?.kind !== 'Module') return [];
      try {
        return [moduleNameOf(d.object.spec as ModuleSpec)];
      } catch {
        return []; // validation reports it
      }
    }),
    repositories: objects.flatMap((d) => (d.object?.kind === 'Repository' ? [String(d.object.metadata?.name)] : [])),
    nodes: objects.flatMap((d) => (d.object?.kind === 'Node' ? [String((d.object.spec as { id?: unknown })?.id)] : d.object?.kind === 'Module' ? [String((d.object.spec as { node?: unknown })?.node)] : [])),
  };
  const state = await readClusterState(redis, scope);

  // 1. Stale: anything the plan read moved, or the apply set gained a member.
  const savedKeys = new Map(saved.preconditions.map((p) => [p.key, p] as const));
  for (const key of dependedKeys([], state, saved.applySet)) {
    if (!savedKeys.has(key)) throw staleError(saved, `${key} joined apply set ${saved.applySet} in desired state`);
  }
  for (const p of saved.preconditions) {
    const why = compareFingerprint(p, fingerprint(state, p.key, opts.key), state);
    if (why) throw staleError(saved, why);
  }

  // 2. The same validation as apply: the objects are loaded back from YAML text.
  const yamlFile = `${file} (desired objects)`;
  // The yaml package loads here, not at startup: diff and apply without a saved plan never need it.
  const { default: YAML } = await import('yaml');
  const text = objects.map((d) => YAML.stringify(d.object)).join('---\n');
  const parsed = parseManifestText(yamlFile, text);
  const result = validateManifests({ ...parsed, files: [yamlFile] }, { knownNodes: knownNodesOf(state, await readNodeRecords(redis)), knownModules: knownModulesOf(state), knownBackupDestinations: knownBackupDestinationsOf(state) });
  if (result.diagnostics.length > 0) throw new ManifestError(result.diagnostics);
  const sources = new Map(objects.map((d) => [objectKey(d.object as ManifestObject), d.source] as const));
  const desired: DesiredObject[] = result.objects.map((d) => ({ object: d.object, source: sources.get(objectKey(d.object)) ?? d.source }));

  // 3. The same planner; the same changes as were reviewed, or nothing.
  const base = makePlan(desired, state, { applySet: saved.applySet, prune: saved.prune });
  const { plan } = await resolvePlan(redis, desired, state, base, opts);
  checkApplicable(plan, { forcePrune: saved.forcePrune });
  if (changeDigest(plan, opts.key) !== saved.changeDigest) {
    throw new Ns8ctlError('saved_plan_mismatch', `${file}: its desired objects do not give the changes that were reviewed (the file was edited, or the images resolve differently now); nothing was written. Make a new plan (ns8ctl diff -f PATH --out FILE), review it, and apply that one`, { user: true });
  }

  // 4. One atomic write, with a precondition on every object the plan read.
  const revisionOf = (f: string): string => saved.revisions[f] ?? '';
  const refreshes = findSourceRefreshes(desired, plan, state);
  const at = opts.now ?? new Date();
  const writes = [...planToWrites(plan, state, { revisionOf, sourceOf: storedSource, now: at, ...(opts.actor !== undefined ? { actor: opts.actor } : {}) }), ...sourceRefreshWrites(refreshes, state, revisionOf)];
  const ops = [...saved.preconditions.map((p) => expectOp(state, p.key)), ...writes];
  try {
    await executeWrites(redis, ops, { epoch: newEpoch(at) });
  } catch (err) {
    if (!(err instanceof ConflictError)) throw err;
    throw staleError(saved, err.message.replace(/ while this write was being made; nothing was written$/, ''), err);
  }
  return { plan, sourcesUpdated: refreshes.map((r) => r.key) };
}
