/**
 * The image an instance converges on: the one its spec resolves to, checked as an update of the
 * installed one (update rules, rootless vs rootfull), with its labels; or, when it cannot be used,
 * the installed image and the setback that says why.
 */
import { Ns8ctlError, toNs8ctlError } from '../errors.js';
import { checkUpdate } from '../repository/resolve.js';
import type { NodeAgentDeps } from './deps.js';
import { findImage } from '../host/image-store.js';
import type { Owner } from './host/owner.js';
import { parseModuleLabels, type ModuleLabels } from './labels.js';
import { ownerOf, type ObserveContext } from './observe.js';
import { reasonOf, reasonOfCode, TERMINAL_REASONS } from './reasons.js';
import type { InstanceResult, ReconcileControl, Setback } from './result.js';
import { failed } from './status-report.js';
import type { ImageFacts, InstanceDesired, InstanceRecord, ModuleStatus } from './types.js';
import { previousImageEnvironment } from './update.js';

/** The image a spec asks for, ready to converge on, or why it cannot be used. */
type Wanted =
  | { ok: true; url: string; facts: ImageFacts; labels: ModuleLabels; updateFrom?: string; previousEnv?: Record<string, string> }
  | { ok: false; error: Ns8ctlError; setback: Setback; blocked: boolean };

/**
 * Resolves the spec, reads the image's labels and, when it is another image than the installed
 * one, checks the update (min-from, min-core, module name, downgrade; and rootless vs
 * rootfull, which an instance cannot switch). A setback still held by the loop is returned as is,
 * without resolving. Never throws for the instance's own failures.
 */
async function wantedImage(
  d: InstanceDesired,
  rec: InstanceRecord | undefined,
  installed: string | undefined,
  deps: NodeAgentDeps,
  shared: ObserveContext,
  control: ReconcileControl,
  holdFinalizer: (url: string) => Promise<void>,
): Promise<Wanted> {
  const id = d.id;
  const held = installed ? control.held?.(id, d.generation) : undefined;
  if (held) return { ok: false, error: new Ns8ctlError(held.code, held.message), setback: held, blocked: held.terminal };
  let url: string | undefined;
  const refuse = (code: string, message: string): Wanted => ({ ok: false, error: new Ns8ctlError(code, message), setback: { code, reason: reasonOfCode(code), message, terminal: true, targetImage: url! }, blocked: true });
  try {
    url = await deps.resolveImage(d.spec);
    const failedUpdate = rec?.failedUpdate;
    if (failedUpdate && failedUpdate.image === url && failedUpdate.generation === d.generation && installed === failedUpdate.from) {
      return refuse('update_failed', failedUpdate.message);
    }
    const facts = await imageFacts(deps, id, url, rec, () => holdFinalizer(url!), localOwner(id, rec, shared));
    const labels = parseModuleLabels(facts.labels, url);
    const updateFrom = installed && installed !== url ? installed : undefined;
    if (!updateFrom) return { ok: true, url, facts, labels };
    if (rec?.rootfull !== undefined && rec.rootfull !== labels.rootfull) {
      return refuse('rootfull_changed', `update refused: ${id} runs ${rec.rootfull ? 'rootfull' : 'rootless'} but ${url} is ${labels.rootfull ? 'rootfull' : 'rootless'} (org.nethserver.rootfull); an instance cannot switch in place: remove it and add a new one; the instance keeps running ${updateFrom}`);
    }
    // min-from / min-core / module name / downgrade. Refused: the wanted image is not used.
    const check = checkUpdate({ id, image: updateFrom }, { image: url, labels: facts.labels }, { coreVersion: await deps.coreVersion() });
    if (!check.ok) return refuse('update_refused', `update refused (${check.code}): ${check.message}; the instance keeps running ${updateFrom}`);
    const oldEnv = { ...(shared.redis.env.get(id) ?? {}), ...(rec?.managedEnv ?? {}) };
    const previousEnv = previousImageEnvironment(oldEnv, labels.images);
    deps.log(`node-agent: ${id}: updating ${updateFrom} -> ${url} (${check.kind})`);
    return { ok: true, url, facts, labels, updateFrom, previousEnv };
  } catch (err) {
    const e = toNs8ctlError(err);
    const reason = reasonOf(e);
    return { ok: false, error: e, blocked: false, setback: { code: e.code, reason, message: e.message, terminal: TERMINAL_REASONS.has(reason), ...(url && url !== installed ? { targetImage: url } : {}) } };
  }
}

/** The image store of an instance that exists already (its user's, or root's), for label reads. */
export function localOwner(id: string, rec: InstanceRecord | undefined, shared: ObserveContext): Owner | undefined {
  return rec?.rootfull === undefined ? undefined : ownerOf(id, rec.rootfull, shared.users.get(id));
}

/**
 * Labels of the wanted image: from the record when it is the same image, else inspected (local
 * root store, then the registry with skopeo). Without skopeo on the node, the image is pulled as
 * root to read them, as NS8's cluster add-module does, after `hold` put the finalizer and the
 * record in place (that copy is something the agent created); it is recorded as `rootCopy`, removed
 * at once for a rootless image (the user pulls its own), otherwise kept as the rootfull instance's
 * image and removed with the instance or when the next read replaces it.
 */
export async function imageFacts(deps: NodeAgentDeps, id: string, url: string, rec: InstanceRecord | undefined, hold: () => Promise<void>, owner?: Owner): Promise<ImageFacts> {
  if (rec?.image && rec.image.url === url) return rec.image;
  // The node cache next: a rollback reads the image it came from without its registry.
  const cached = await deps.podman.cache.lookup(url);
  if (cached) return { url, id: cached.id, digest: cached.digest, repoDigest: cached.repoDigest, labels: cached.labels };
  // The instance's own store first (a rollback reads the image it came from, registry or not).
  if (owner?.kind === 'user' && findImage(await deps.podman.listImages(owner), url)) return deps.podman.inspectLocal(owner, url, `${id}: inspect ${url}`);
  const rootImages = await deps.podman.listImages({ kind: 'root' });
  if (findImage(rootImages, url)) return deps.podman.inspectLocal({ kind: 'root' }, url, `${id}: inspect ${url}`);
  try {
    return await deps.podman.inspectRemote(url, `${id}: inspect ${url} in its registry`);
  } catch (err) {
    if (toNs8ctlError(err).code !== 'command_missing') throw err;
  }
  await hold();
  // A copy left by an earlier read (a refused update, a crash) is never the one in use: drop it
  // before recording the new one, so no root copy outlives its record.
  const stale = (await deps.records.get(id))?.rootCopy;
  if (stale && stale !== url && stale !== rec?.imageUrl) await deps.podman.removeImages({ kind: 'root' }, [stale], [], `${id}: remove ${stale}, pulled as root earlier to read its labels`);
  await deps.records.update(id, { rootCopy: url });
  await deps.podman.pull({ kind: 'root' }, url, `${id}: pull ${url} as root to read its labels (no skopeo on this node)`);
  const facts = await deps.podman.inspectLocal({ kind: 'root' }, url, `${id}: inspect ${url}`);
  if ((facts.labels['org.nethserver.rootfull'] ?? '0').trim() !== '1') {
    // Rootless: the module user pulls its own copy; root's was only for the labels.
    await deps.podman.removeImages({ kind: 'root' }, [url], [], `${id}: remove ${url}, pulled as root only to read its labels`);
    await deps.records.update(id, { rootCopy: undefined });
  }
  return facts;
}

/** The image a converge pass works on: the wanted one, or the installed one with a setback. */
export type ChosenImage =
  | { result: InstanceResult }
  | { url: string; facts: ImageFacts; labels: ModuleLabels; updateFrom?: string; previousEnv?: Record<string, string>; setback?: Setback; rec: InstanceRecord | undefined };

/**
 * Chooses the image to converge on (sets `base.imageUrl` and `targetImage`): the wanted one; when
 * it cannot be used, the installed one (drift repair, credentials and units go on) with the
 * setback that says why; with nothing installed to fall back on, a failed result.
 */
export async function chooseImage(
  d: InstanceDesired,
  rec: InstanceRecord | undefined,
  installed: string | undefined,
  prev: ModuleStatus | undefined,
  base: Omit<ModuleStatus, 'conditions'>,
  deps: NodeAgentDeps,
  shared: ObserveContext,
  control: ReconcileControl,
  holdFinalizer: (url: string) => Promise<void>,
): Promise<ChosenImage> {
  const id = d.id;
  const wanted = await wantedImage(d, rec, installed, deps, shared, control, holdFinalizer);
  if (wanted.ok) {
    const { url, facts, labels, updateFrom, previousEnv } = wanted;
    base.imageUrl = updateFrom ?? url;
    if (updateFrom) base.targetImage = url;
    // A new update (another image or generation) starts from where the rollback left the instance.
    if (updateFrom && rec?.failedUpdate) rec = await deps.records.update(id, { failedUpdate: undefined });
    return { url, facts, labels, ...(updateFrom ? { updateFrom } : {}), ...(previousEnv ? { previousEnv } : {}), rec };
  }
  if (!installed) {
    // Nothing installed to fall back on: report and wait.
    return { result: await failed(deps, d, prev, { ...base, imageUrl: wanted.setback.targetImage ?? prev?.imageUrl ?? '', imageDigest: prev?.imageDigest ?? '' }, wanted.error, undefined, [], [], wanted.blocked) };
  }
  // The wanted image cannot be used: the instance keeps converging on the one it runs (drift
  // repair, credentials, units) and reports why it is not on the wanted one.
  const setback = wanted.setback;
  base.imageUrl = installed;
  if (setback.targetImage && setback.targetImage !== installed) base.targetImage = setback.targetImage;
  try {
    const facts = await imageFacts(deps, id, installed, rec, () => holdFinalizer(installed), localOwner(id, rec, shared));
    return { url: installed, facts, labels: parseModuleLabels(facts.labels, installed), setback, rec };
  } catch (err) {
    deps.log(`node-agent: ${id}: the installed image ${installed} cannot be read either: ${toNs8ctlError(err).message}`);
    return { result: await failed(deps, d, prev, { ...base, imageDigest: prev?.imageDigest ?? '' }, wanted.error, undefined, [], [], wanted.blocked) };
  }
}
