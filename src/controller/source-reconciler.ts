/**
 * Reconciles one source (a manifests directory, or a git branch) into desired state in Redis:
 * [git: fetch, pick the commit] -> load + validate -> pin suspended modules -> plan (the source's
 * apply set, prune per the source's settings) -> drift check -> prune safety -> atomic apply ->
 * status + events. Level-triggered: every run recomputes everything from the source.
 *
 * A bad commit (invalid manifests, refused prune) is never applied: desired state keeps the last
 * good commit, the source is Stalled with the reason, a `source-rejected` event says why, and
 * later resyncs keep desired state equal to the last good commit until a new commit arrives.
 *
 * An empty or unreadable source never prunes: a fetch or checkout failure is retried with nothing
 * written; unreadable or invalid manifests are rejected; a source that yields no object at all is
 * rejected (`SourceEmpty`) unless it has `allowEmpty` (Argo CD's allowEmpty), which lets it prune
 * its last object (more at once still trips the mass-prune guard).
 */
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { applyPlan, defaultSchemaLookup, hasWrites, loadAndValidate, resolvePlan } from '../apply/pipeline.js';
import { formatDiagnostic, ManifestError, Ns8ctlError, RefusedError, toNs8ctlError, type Diagnostic } from '../errors.js';
import type { CommandRunner } from '../host/runner.js';
import { objectKey, type DesiredObject } from '../manifest/types.js';
import { canonicalJson } from '../runtime/canonical.js';
import { maskString } from '../runtime/mask.js';
import { checkPruneSafety, isEmpty, parseKey, plan as makePlan } from '../plan/planner.js';
import type { ClusterState } from '../state/cluster-state.js';
import type { Plan } from '../plan/types.js';
import { cond, type Condition } from './conditions.js';
import type { ConfigurationSchemaLookup } from '../configuration/configuration-schema.js';
import type { EventRecorder } from '../state/events.js';
import { GitCheckout, type CommitInfo, type CommitSigner, type GitSourceSpec } from './git-checkout.js';
import { formatDuration } from '../runtime/duration.js';
import { formatLocal, windowState, type SyncWindow } from './sync-window.js';
import type { Logger } from '../runtime/log.js';
import { readSourceStatus, writeSourceStatus, type SourceStatus } from './source-status.js';
import { readSuspension, readSuspensions, type Suspension } from './suspend.js';
import type { ReconcileResult } from '../runtime/work-queue.js';
import { pathExists } from '../runtime/path-exists.js';

/** One source the controller keeps desired state equal to. */
export interface SourceSpec {
  /** Source name; also the apply set (inventory) its objects belong to. */
  name: string;
  kind: 'directory' | 'git';
  /** Directory source: the manifest paths (files or directories). */
  paths: string[];
  /** Git source settings. */
  git?: GitSourceSpec & { intervalMs: number };
  /** Delete objects of the apply set that left the source (with the prune safety rule). */
  prune: boolean;
  /** Restore desired state changed outside the source (default true); false only reports it. */
  selfHeal: boolean;
  /**
   * A source that yields no object may prune the last object it holds (a manifests directory
   * with no manifest file, a commit without the manifests path). Without it such a source is
   * rejected (`SourceEmpty`) and nothing is pruned.
   */
  allowEmpty?: boolean;
  /** New revisions are applied only while one of these is open (none: any time). */
  syncWindows?: SyncWindow[];
}

export interface SourceReconcilerDeps {
  redis: Redis;
  runner: CommandRunner;
  events: EventRecorder;
  log: Logger;
  now: () => Date;
  random?: () => number;
  /** Desired state equals the source (for the last-successful-sync metric). */
  onSynced?: (source: string, at: Date) => void;
  /** Drift found and corrected (count of objects). */
  onDriftCorrected?: (source: string, count: number) => void;
  /** Objects whose summary may have changed (drift marks): the controller requeues them. */
  onObjectsTouched?: (keys: string[]) => void;
  /** configure-module schemas for plan-time validation (default defaultSchemaLookup(runner); false: skip). */
  configurationSchemas?: ConfigurationSchemaLookup | false;
  /**
   * Objects of `keys` that another source of the same controller claims (key -> that source's
   * name): it declared them at its last load or, before its first load (or with `declaredOnly`
   * false), holds them in its apply set. See reconcile step 2.
   */
  claimedElsewhere?: (source: string, keys: readonly string[], state: ClusterState, opts: { declaredOnly: boolean }) => Map<string, string>;
  /** The object keys this source declares changed (first load included). */
  onDesiredKeysChanged?: (source: string) => void;
  /** The source wrote desired state (another source's manifests may validate now: a Node it needs). */
  onApplied?: (source: string) => void;
}

/** A new revision held back by closed sync windows. */
interface Deferral {
  what: string;
  /** Commit SHA or content digest (one event each). */
  key: string;
  nextOpen: Date;
  message: string;
}

/** Error codes that only a new commit or file change can fix. */
const TERMINAL_CODES = new Set(['manifest_invalid', 'prune_refused', 'duplicate_object', 'commit_signature_invalid', 'source_empty']);

/** Status reason of a refusal, by error code (others: `ApplyRefused`). */
const REJECT_REASONS: Readonly<Record<string, string>> = {
  prune_refused: 'PruneRefused',
  duplicate_object: 'ValidationFailed',
  source_conflict: 'SourceConflict',
  source_empty: 'SourceEmpty',
  commit_signature_invalid: 'SignatureInvalid',
};

/** The loader's diagnostic for a directory without manifest files (src/manifest/load.ts). */
const NO_MANIFEST_FILES = /^directory has no manifest files/;

/** Queue key of a source. */
export function sourceKey(name: string): string {
  return `source/${name}`;
}

/** sha256 of the canonical objects, sorted by key: equal content gives an equal digest. */
export function desiredDigest(desired: readonly DesiredObject[]): string {
  const sorted = [...desired].sort((a, b) => (objectKey(a.object) < objectKey(b.object) ? -1 : objectKey(a.object) > objectKey(b.object) ? 1 : 0));
  return createHash('sha256').update(canonicalJson(sorted.map((d) => d.object))).digest('hex');
}

/**
 * Desired objects with suspended modules pinned to what is stored: a suspended module's manifest
 * change is held back, a suspended module that is not stored yet is not created, and one that
 * left the manifests is kept (not pruned) while suspended. Pure.
 */
export function pinSuspended(desired: readonly DesiredObject[], state: ClusterState, applySet: string, suspended: ReadonlySet<string>): DesiredObject[] {
  const out: DesiredObject[] = [];
  const seen = new Set<string>();
  const pinned = (key: string): DesiredObject | undefined => {
    const stored = state.objects.get(key);
    if (!stored || stored.deleting) return undefined;
    return { object: stored.object, source: { file: stored.source, doc: 0, line: 0, col: 0 } };
  };
  for (const d of desired) {
    const key = objectKey(d.object);
    seen.add(key);
    if (d.object.kind === 'Module' && suspended.has(d.object.metadata.name)) {
      const p = pinned(key);
      if (p) out.push(p);
    } else out.push(d);
  }
  for (const key of state.inventory.get(applySet) ?? []) {
    const k = parseKey(key);
    if (!k || k.kind !== 'Module' || seen.has(key) || !suspended.has(k.id)) continue;
    const p = pinned(key);
    if (p) out.push(p);
  }
  return out;
}

function summaryText(p: Plan): string {
  const s = p.summary;
  return `${s.create} created, ${s.update} updated, ${s.delete} deleted`;
}

function shortRev(rev: string): string {
  return rev ? rev.slice(0, 12) : '';
}

/** A revision held back as rejected: the branch head that was refused, and why. */
interface Rejected {
  revision: string;
  reason: string;
  message: string;
  code: string;
}

/** What one reconcile started from. */
interface Attempt {
  prev: SourceStatus | undefined;
  base: SourceStatus;
  signal: AbortSignal;
}

/** The revision a reconcile applies and what is known about it. */
interface Revision {
  /** Commit SHA (git) or '' (directory). */
  revision: string;
  paths: string[];
  /** The branch head stays rejected while the last good commit is applied. */
  rejected: Rejected | undefined;
  commit: CommitInfo | undefined;
  signer: CommitSigner | undefined;
  /** The branch head waits for a sync window while the last applied commit is kept. */
  deferred: Deferral | undefined;
}

/** The loaded source: its objects and the cluster state read with them. */
interface Loaded {
  desired: DesiredObject[];
  state: ClusterState;
}

/** The plan of a revision. */
interface Planned {
  /** Desired objects with suspended modules pinned. */
  pinned: DesiredObject[];
  state: ClusterState;
  digest: string;
  plan: Plan;
}

/** A step that ended the reconcile with this result. */
interface Done {
  done: ReconcileResult;
}

function isDone<T extends object>(x: T | Done): x is Done {
  return 'done' in x;
}

function directoryRevision(paths: string[]): Revision {
  return { revision: '', paths, rejected: undefined, commit: undefined, signer: undefined, deferred: undefined };
}

/** The branch head when it is the commit last refused for good (a terminal error): still rejected. */
function knownRejection(prev: SourceStatus | undefined, head: string): Rejected | undefined {
  if (!prev || head !== prev.lastAttemptedRevision || head === prev.lastAppliedRevision || !TERMINAL_CODES.has(prev.lastError)) return undefined;
  const ready = prev.conditions.find((c) => c.type === 'Ready');
  return { revision: head, reason: ready?.reason ?? 'ValidationFailed', message: ready?.message ?? `commit ${shortRev(head)} was rejected`, code: prev.lastError };
}

/** Reconciles one source; keep one instance per source for the life of the controller. */
export class SourceReconciler {
  readonly key: string;
  /** `Kind/id` of the objects the source held at its last load. */
  desiredKeys = new Set<string>();
  /** True once the source loaded its manifests (desiredKeys is meaningful). */
  loaded = false;
  /** Whether the last reconcile found the source suspended. */
  suspended = false;
  private readonly git: GitCheckout | undefined;
  private lastWarnings = '';
  /** Head of the last successful fetch and when the next one is due (git sources). */
  private fetched: { head: string; nextAt: number } | undefined;
  /** A webhook (or `ns8ctl` on another replica) asked for a fetch before the interval. */
  private fetchWanted = false;
  /** The last commit whose signature was verified, and who signed it. */
  private verified: { sha: string; signer: CommitSigner } | undefined;
  /** The revision (git) or content digest last announced as waiting for a sync window. */
  private lastDeferred: string | undefined;
  /** When the first timed suspension of a module this source pinned lapses (ms since the epoch). */
  private suspensionLapseAt: number | undefined;

  constructor(
    readonly spec: SourceSpec,
    private readonly deps: SourceReconcilerDeps,
  ) {
    this.key = sourceKey(spec.name);
    this.git = spec.git ? new GitCheckout(spec.git, deps.runner) : undefined;
  }

  private baseStatus(prev: SourceStatus | undefined): SourceStatus {
    const g = this.spec.git;
    return {
      name: this.spec.name,
      kind: this.spec.kind,
      url: g ? maskString(g.url) : this.spec.paths.join(' '),
      branch: g?.branch ?? '',
      path: g?.path ?? '',
      prune: this.spec.prune,
      conditions: prev?.conditions ?? [],
      lastAppliedRevision: prev?.lastAppliedRevision ?? '',
      lastAttemptedRevision: prev?.lastAttemptedRevision ?? '',
      lastAppliedDigest: prev?.lastAppliedDigest ?? '',
      lastAppliedTime: prev?.lastAppliedTime ?? '',
      lastError: prev?.lastError ?? '',
      driftedKeys: prev?.driftedKeys ?? [],
    };
  }

  /** Asks the next reconcile to fetch even when the interval has not elapsed (webhooks). */
  requestFetch(): void {
    this.fetchWanted = true;
  }

  /**
   * Next run: when a git source's next fetch is due, or when the first timed suspension of a
   * module this source holds back lapses (a TTL expiry announces nothing), whichever comes first.
   */
  private requeue(deferred?: Deferral): ReconcileResult {
    const now = this.deps.now().getTime();
    const lapse = this.suspensionLapseAt !== undefined ? Math.max(0, this.suspensionLapseAt - now + 50) : undefined;
    const g = this.spec.git;
    let fetch: number | undefined;
    if (g) fetch = this.fetched ? Math.max(0, this.fetched.nextAt - now) : this.jitteredInterval();
    // A waiting revision is applied as soon as the window opens.
    const opens = deferred ? Math.max(0, deferred.nextOpen.getTime() - now + 50) : undefined;
    const next = Math.min(fetch ?? Infinity, lapse ?? Infinity, opens ?? Infinity);
    return Number.isFinite(next) ? { requeueAfterMs: next } : {};
  }

  private jitteredInterval(): number {
    const r = this.deps.random ?? Math.random;
    // ±10 % so that many sources (or replicas) do not poll the forge in lock step.
    return Math.round(this.spec.git!.intervalMs * (0.9 + 0.2 * r()));
  }

  /**
   * The branch head to apply. Fetches only on the first run, when the interval is due, or when a
   * webhook asked; other runs (drift repair after a Redis write, resyncs) reuse the last fetched
   * head, so a burst of drift never hammers the forge and never jumps ahead of the interval.
   */
  private async headToApply(git: GitCheckout, signal: AbortSignal): Promise<string> {
    const now = this.deps.now().getTime();
    // 20 ms of slack: a timer may fire a hair before the due time.
    if (this.fetched && !this.fetchWanted && now + 20 < this.fetched.nextAt) return this.fetched.head;
    this.fetchWanted = false;
    try {
      const head = await git.fetch(signal);
      this.fetched = { head, nextAt: now + this.jitteredInterval() };
      return head;
    } catch (err) {
      this.fetchWanted = true; // the retry (backoff) fetches again
      throw err;
    }
  }

  private async save(prev: SourceStatus | undefined, next: SourceStatus): Promise<SourceStatus> {
    return writeSourceStatus(this.deps.redis, prev, next, this.deps.now());
  }

  private relativeDiagnostics(ds: readonly Diagnostic[]): Diagnostic[] {
    const root = this.git ? this.spec.git!.cacheDir : undefined;
    return ds.map((d) => ({ ...d, file: root && path.isAbsolute(d.file) ? path.relative(root, d.file) : d.file }));
  }

  private where(revision: string): string {
    return this.git ? `commit ${shortRev(revision)}` : 'the manifests';
  }

  /**
   * One reconcile (see the module doc). Throws transient errors (Redis, git fetch, blocked
   * changes) for the queue's backoff. Terminal errors: a directory source throws them (the queue
   * parks it until a file changes); a git source reports them in status and keeps polling.
   */
  async reconcile(signal: AbortSignal): Promise<ReconcileResult> {
    const prev = await readSourceStatus(this.deps.redis, this.spec.name);
    const base = this.baseStatus(prev);
    const suspension = await readSuspension(this.deps.redis, 'source', this.spec.name);
    this.suspended = suspension !== undefined;
    if (suspension) return this.holdSuspended(prev, base, suspension);
    const a: Attempt = { prev, base, signal };
    // 1. Which revision to apply.
    const rev = this.git ? await this.pickCommit(this.git, a) : directoryRevision(this.spec.paths);
    if (isDone(rev)) return rev.done;
    if (signal.aborted) return {};
    // 2. Load and validate; a bad revision is rejected, nothing written.
    const loaded = await this.loadRevision(a, rev);
    if (isDone(loaded)) return loaded.done;
    // 3. Plan with suspended modules pinned.
    const planned = await this.planRevision(a, rev, loaded);
    if (isDone(planned)) return planned.done;
    // 4. Drift: the source did not change since the last apply, yet desired state differs.
    const drift = await this.handleDrift(a, rev, planned);
    if (drift) return drift.done;
    // 5. Blocked changes wait; everything else goes ahead.
    const applied = await this.applyChanges(a, rev, loaded.desired, planned);
    if (isDone(applied)) return applied.done;
    // 6. Status.
    return this.recordApplied(a, rev, planned, applied.plan);
  }

  /** A suspended source: status says so, nothing is read or written; runs again when the suspension lapses. */
  private async holdSuspended(prev: SourceStatus | undefined, base: SourceStatus, suspension: Suspension): Promise<ReconcileResult> {
    const ready = prev?.conditions.find((c) => c.type === 'Ready') ?? cond('Ready', 'Unknown', 'Suspended', 'never reconciled');
    await this.save(prev, {
      ...base,
      conditions: [ready, cond('Reconciling', 'False', 'Suspended', `suspended${suspension.reason ? `: ${suspension.reason}` : ''}; \`ns8ctl resume source ${this.spec.name}\` resumes`), cond('Stalled', 'False', 'Suspended', 'suspended'), this.driftCondition(base.driftedKeys)],
    });
    const until = suspension.until ? Date.parse(suspension.until) - this.deps.now().getTime() : undefined;
    const r = this.requeue();
    if (until !== undefined && until >= 0) return { requeueAfterMs: Math.min(r.requeueAfterMs ?? Infinity, until + 50) };
    return r;
  }

  /**
   * The commit to apply: the branch head, unless it was rejected before (then the last applied
   * commit, kept), waits for a sync window (idem) or fails signature verification. Checks it out.
   */
  private async pickCommit(git: GitCheckout, a: Attempt): Promise<Revision | Done> {
    const { prev, base, signal } = a;
    let head: string;
    try {
      head = await this.headToApply(git, signal);
    } catch (err) {
      if (signal.aborted) return { done: {} }; // stopping: the fetch was cancelled, not failed
      await this.failed(prev, base, 'FetchFailed', 'source-fetch-failed', toNs8ctlError(err), base.lastAttemptedRevision);
      throw err;
    }
    if (signal.aborted) return { done: {} };
    const rev: Revision = { revision: head, paths: [git.manifestsDir], rejected: knownRejection(prev, head), commit: undefined, signer: undefined, deferred: undefined };
    if (rev.rejected) {
      if (!prev?.lastAppliedRevision) return { done: this.requeue() }; // nothing good to fall back to
      rev.revision = prev.lastAppliedRevision;
    }
    // Outside the sync windows a new commit waits; the last applied one is kept (drift repair).
    if (!rev.rejected && head !== prev?.lastAppliedRevision) {
      rev.deferred = this.deferral(`commit ${shortRev(head)}`, head);
      if (rev.deferred) {
        if (!prev?.lastAppliedRevision) return { done: await this.defer(prev, base, rev.deferred) };
        rev.revision = prev.lastAppliedRevision;
      }
    }
    if (!rev.rejected && !rev.deferred && this.spec.git?.trustedKeys) {
      const verified = await this.verifyHead(git, a, head);
      if (isDone(verified)) return verified;
      rev.signer = verified.signer;
    }
    return this.checkoutRevision(git, a, rev);
  }

  /** Signed by a trusted key, or not applied (checked before its files are even checked out). */
  private async verifyHead(git: GitCheckout, a: Attempt, head: string): Promise<{ signer: CommitSigner } | Done> {
    try {
      // Once per commit: drift repair and resyncs of the same head spawn no git or gpg.
      const signer = this.verified?.sha === head ? this.verified.signer : await git.verifyCommit(head);
      this.verified = { sha: head, signer };
      return { signer };
    } catch (err) {
      const e = toNs8ctlError(err);
      if (e.code === 'commit_signature_invalid') return { done: await this.rejectOther(a.prev, a.base, head, e, await git.describe(head)) };
      await this.failed(a.prev, a.base, 'VerificationFailed', 'source-verification-failed', e, head);
      throw err;
    }
  }

  private async checkoutRevision(git: GitCheckout, a: Attempt, rev: Revision): Promise<Revision | Done> {
    try {
      await git.checkout(rev.revision);
      if (!rev.rejected) rev.commit = await git.describe(rev.revision);
      return rev;
    } catch (err) {
      // Nothing read, nothing written: a checkout that failed is never an empty source.
      if (a.signal.aborted) return { done: {} };
      await this.failed(a.prev, a.base, 'CheckoutFailed', 'source-checkout-failed', toNs8ctlError(err), rev.revision);
      throw err;
    }
  }

  /** Loads and validates the revision, refuses an empty source (unless allowed) and objects another source owns. */
  private async loadRevision(a: Attempt, rev: Revision): Promise<Loaded | Done> {
    const { prev, base, signal } = a;
    let loaded: Loaded;
    try {
      const l = await this.load(rev.paths);
      loaded = { desired: l.desired, state: l.state as ClusterState };
    } catch (err) {
      if (err instanceof ManifestError) return { done: await this.rejectInvalid(prev, base, rev.revision, err, rev.commit) };
      await this.failed(prev, base, 'ApplyFailed', 'source-apply-failed', toNs8ctlError(err), rev.revision);
      throw err;
    }
    if (loaded.desired.length === 0 && !this.spec.allowEmpty) return { done: await this.rejectOther(prev, base, rev.revision, this.emptyError(loaded.state), rev.commit) };
    const nowKeys = this.noteDesiredKeys(loaded.desired);
    if (signal.aborted) return { done: {} };
    const conflict = this.ownershipConflict(nowKeys, loaded.state);
    if (conflict) return { done: await this.rejectOther(prev, base, rev.revision, conflict, rev.commit) };
    return loaded;
  }

  /** Remembers the keys the source declares (telling the controller when they changed); returns them. */
  private noteDesiredKeys(desired: readonly DesiredObject[]): Set<string> {
    const nowKeys = new Set(desired.map((d) => objectKey(d.object)));
    const keysChanged = !this.loaded || nowKeys.size !== this.desiredKeys.size || [...nowKeys].some((k) => !this.desiredKeys.has(k));
    this.desiredKeys = nowKeys;
    this.loaded = true;
    if (keysChanged) this.deps.onDesiredKeysChanged?.(this.spec.name);
    return nowKeys;
  }

  /**
   * Several sources in one controller: an object belongs to one source (its apply set). One this
   * source declares but does not hold, while another source claims it, waits (two sources would
   * take it from each other forever): returned as the `source_conflict` refusal. One it holds but
   * no longer declares, while another source declares it, is handed over (not pruned: the other
   * source adopts it): dropped from this source's inventory in `state`.
   */
  private ownershipConflict(nowKeys: ReadonlySet<string>, state: ClusterState): Ns8ctlError | undefined {
    const name = this.spec.name;
    const ownInventory = state.inventory.get(name) ?? new Set<string>();
    const clash = this.deps.claimedElsewhere?.(name, [...nowKeys].filter((k) => !ownInventory.has(k)).sort(), state, { declaredOnly: false }) ?? new Map<string, string>();
    if (clash.size > 0) {
      const list = [...clash].map(([k, s]) => `${k} (source ${s})`);
      return new Ns8ctlError(
        'source_conflict',
        `${list.slice(0, 5).join(', ')}${list.length > 5 ? ` and ${list.length - 5} more` : ''} ${clash.size === 1 ? 'belongs' : 'belong'} to another source; an object belongs to one source (its apply set): remove it from one of them (to move it, remove it from the other source: this one then takes it over). Source ${name} applies nothing meanwhile`,
      );
    }
    const handedOver = this.deps.claimedElsewhere?.(name, [...ownInventory].filter((k) => !nowKeys.has(k)).sort(), state, { declaredOnly: true }) ?? new Map<string, string>();
    if (handedOver.size > 0) state.inventory.set(name, new Set([...ownInventory].filter((k) => !handedOver.has(k))));
    return undefined;
  }

  /** Pins suspended modules, holds changed manifests of a directory source outside its sync windows, plans and resolves images and configuration. */
  private async planRevision(a: Attempt, rev: Revision, loaded: Loaded): Promise<Planned | Done> {
    const { prev, base } = a;
    const { desired, state } = loaded;
    const pinned = pinSuspended(desired, state, this.spec.name, await this.suspendedModules(desired, state));
    const digest = desiredDigest(pinned);
    if (!this.git && prev?.lastAppliedDigest !== digest) {
      const d = this.deferral('the changed manifests', digest);
      if (d) return { done: await this.defer(prev, base, d) };
    }
    let p: Plan;
    try {
      p = makePlan(pinned, state, { applySet: this.spec.name, prune: this.spec.prune });
    } catch (err) {
      return { done: await this.rejectOther(prev, base, rev.revision, toNs8ctlError(err), rev.commit) };
    }
    // Image resolution as `ns8ctl apply` does it: unresolvable or over-limit Modules are blocked.
    // ... and spec.configuration checked against configure-module schemas: invalid rejects the revision.
    let resolved: Awaited<ReturnType<typeof resolvePlan>>;
    try {
      resolved = await resolvePlan(this.deps.redis, pinned, state, p, { configuration: this.deps.configurationSchemas ?? defaultSchemaLookup(this.deps.runner) });
    } catch (err) {
      if (err instanceof ManifestError) return { done: await this.rejectInvalid(prev, base, rev.revision, err, rev.commit) };
      throw err;
    }
    const warnings = [...resolved.warnings, ...(resolved.plan.warnings ?? [])].join('; ');
    if (warnings && warnings !== this.lastWarnings) this.deps.log.log('warn', 'plan warnings', { source: this.spec.name, warnings });
    this.lastWarnings = warnings;
    return { pinned, state, digest, plan: resolved.plan };
  }

  /** The suspended modules among those the source declares or holds; notes when the first timed suspension lapses. */
  private async suspendedModules(desired: readonly DesiredObject[], state: ClusterState): Promise<Set<string>> {
    const inventory = state.inventory.get(this.spec.name) ?? new Set<string>();
    const moduleIds = new Set<string>();
    for (const d of desired) if (d.object.kind === 'Module') moduleIds.add(d.object.metadata.name);
    for (const k of inventory) if (k.startsWith('Module/')) moduleIds.add(k.slice('Module/'.length));
    const suspended = await readSuspensions(this.deps.redis, 'module', [...moduleIds].sort());
    const untils = [...suspended.values()].map((x) => (x.until ? Date.parse(x.until) : NaN)).filter((t) => Number.isFinite(t));
    this.suspensionLapseAt = untils.length > 0 ? Math.min(...untils) : undefined;
    return new Set(suspended.keys());
  }

  /**
   * Changes while the source's content is the one last applied are drift. Without self-heal they
   * are reported (status, one event per new set) and the reconcile ends; with it they are
   * announced and the apply restores them.
   */
  private async handleDrift(a: Attempt, rev: Revision, planned: Planned): Promise<Done | undefined> {
    const { prev, base } = a;
    const { revision } = rev;
    const name = this.spec.name;
    const drift = prev && prev.lastAppliedDigest === planned.digest ? planned.plan.changes.map((c) => c.key) : [];
    if (drift.length > 0 && !this.spec.selfHeal) {
      const touched = [...new Set([...drift, ...base.driftedKeys])];
      await this.save(prev, {
        ...base,
        lastAttemptedRevision: revision,
        lastError: '',
        driftedKeys: drift,
        conditions: this.conditionsFor(rev.rejected, cond('Ready', 'False', 'Drifted', `${drift.length} object(s) differ from ${this.where(revision)}: ${drift.slice(0, 5).join(', ')}${drift.length > 5 ? ', ...' : ''} (self-heal is off)`), drift),
      });
      if (JSON.stringify(prev?.driftedKeys ?? []) !== JSON.stringify(drift)) {
        await this.deps.events.record({ name: 'source-drift-detected', type: 'Warning', object: this.key, message: `desired state of ${drift.join(', ')} was changed outside source ${name}; not restored because self-heal is off`, data: { source: name, revision, objects: drift } });
        this.deps.onObjectsTouched?.(touched);
      }
      return { done: this.requeue() };
    }
    if (drift.length > 0) {
      await this.deps.events.record({ name: 'source-drift-corrected', type: 'Warning', object: this.key, message: `desired state of ${drift.join(', ')} was changed outside source ${name}; restoring ${this.where(revision)}`, data: { source: name, revision, objects: drift } });
      this.deps.onDriftCorrected?.(name, drift.length);
    }
    return undefined;
  }

  /**
   * Applies the plan without its blocked changes, once the prune safety rule allows it. Returns
   * the applied plan (undefined when there was nothing to apply; manifests that only moved get
   * their recorded source refreshed, with no generation bump and no event).
   */
  private async applyChanges(a: Attempt, rev: Revision, desired: readonly DesiredObject[], planned: Planned): Promise<{ plan: Plan | undefined } | Done> {
    const { prev, base, signal } = a;
    const { pinned, state } = planned;
    const name = this.spec.name;
    const applyable: Plan = { ...planned.plan, blocked: [] };
    // allowEmpty: an empty source may prune the one object it holds; more at once stays refused.
    const lastObject = Boolean(this.spec.allowEmpty) && desired.length === 0 && applyable.pruneRatio.prune === 1 && applyable.pruneRatio.inventory === 1;
    try {
      checkPruneSafety(applyable, { forcePrune: lastObject });
    } catch (err) {
      return { done: await this.rejectOther(prev, base, rev.revision, toNs8ctlError(err), rev.commit) };
    }
    if (signal.aborted) return { done: {} };
    const options = { applySet: name, prune: this.spec.prune, runner: this.deps.runner, actor: `controller source ${name}` };
    if (isEmpty(applyable)) {
      if (hasWrites({ desired: pinned, state, plan: applyable })) await applyPlan({ desired: pinned, state, plan: applyable }, this.deps.redis, { ...options, forcePrune: false });
      return { plan: undefined };
    }
    await this.save(prev, { ...base, conditions: [prev?.conditions.find((c) => c.type === 'Ready') ?? cond('Ready', 'Unknown', 'Progressing', 'first reconcile'), cond('Reconciling', 'True', 'Progressing', `applying ${summaryText(applyable)} from ${this.where(rev.revision)}`), cond('Stalled', 'False', 'NotStalled', 'applying'), this.driftCondition([])] });
    let applied: Plan;
    try {
      applied = (await applyPlan({ desired: pinned, state, plan: applyable }, this.deps.redis, { ...options, forcePrune: lastObject })).plan;
    } catch (err) {
      const e = toNs8ctlError(err);
      if (TERMINAL_CODES.has(e.code)) return { done: await this.rejectOther(prev, base, rev.revision, e, rev.commit) };
      await this.failed(prev, base, 'ApplyFailed', 'source-apply-failed', e, rev.revision);
      throw err;
    }
    await this.announceApplied(rev, applied);
    this.deps.onApplied?.(name);
    return { plan: applied };
  }

  /** The `source-applied` event: what changed, from which commit, signed by whom. */
  private async announceApplied(rev: Revision, applied: Plan): Promise<void> {
    const { revision, commit, signer } = rev;
    const name = this.spec.name;
    await this.deps.events.record({
      name: 'source-applied',
      type: 'Normal',
      object: this.key,
      message: `applied ${this.where(revision)} of source ${name}: ${summaryText(applied)}${commit?.subject ? ` ("${commit.subject}" by ${commit.author})` : ''}${signer ? `, signed by ${signer.uid} (${signer.fingerprint.slice(-16)})` : ''}`,
      data: {
        source: name,
        revision,
        summary: applied.summary,
        changes: applied.changes.map((c) => `${c.action} ${c.key}`),
        ...(commit ? { author: commit.author, subject: commit.subject } : {}),
        ...(signer ? { signer: signer.uid, signerFingerprint: signer.fingerprint } : {}),
      },
    });
  }

  /**
   * Status after an apply: Ready (or Blocked, then thrown as `plan_blocked` for the backoff, with
   * one `source-apply-blocked` event per blocked episode); a rejected or waiting head stays reported.
   */
  private async recordApplied(a: Attempt, rev: Revision, planned: Planned, applied: Plan | undefined): Promise<ReconcileResult> {
    const { prev, base } = a;
    const { revision, rejected, deferred } = rev;
    const { digest, pinned } = planned;
    const { blocked } = planned.plan;
    const name = this.spec.name;
    const now = this.deps.now();
    const changedContent = !prev || prev.lastAppliedDigest !== digest || prev.lastAppliedRevision !== revision;
    const lastAppliedTime = applied || changedContent ? now.toISOString() : base.lastAppliedTime;
    const n = pinned.length;
    let ready: Condition = cond('Ready', 'True', 'Applied', `desired state matches ${this.where(revision)} (${n} object${n === 1 ? '' : 's'})`);
    if (blocked.length > 0) ready = cond('Ready', 'False', 'Blocked', `waiting: ${blocked.map((b) => b.message).join('; ')}`);
    await this.save(prev, {
      ...base,
      lastAppliedRevision: revision,
      lastAttemptedRevision: rejected ? rejected.revision : revision,
      // With changes still blocked the source is not fully applied: a later unblocked change is not drift.
      lastAppliedDigest: blocked.length > 0 ? base.lastAppliedDigest : digest,
      lastAppliedTime,
      lastError: rejected ? rejected.code : blocked.length > 0 ? 'plan_blocked' : '',
      driftedKeys: [],
      conditions: this.conditionsFor(rejected, ready, [], deferred),
    });
    if (base.driftedKeys.length > 0) this.deps.onObjectsTouched?.(base.driftedKeys);
    if (blocked.length > 0) {
      if (prev?.lastError !== 'plan_blocked') {
        await this.deps.events.record({ name: 'source-apply-blocked', type: 'Warning', object: this.key, message: `source ${name}: ${blocked.length} change(s) wait: ${blocked.map((b) => b.message).join('; ')}`, data: { source: name, revision, objects: blocked.map((b) => b.key) } });
      }
      // Retried with backoff: a removal in progress finishes on its own.
      throw new Ns8ctlError('plan_blocked', `source ${name}: ${blocked.map((b) => `${b.key}: ${b.message}`).join('; ')}`);
    }
    if (!rejected) this.deps.onSynced?.(name, now);
    if (deferred) await this.announceDeferral(deferred);
    return this.requeue(deferred);
  }

  /**
   * Loads and validates the source. With `allowEmpty`, a source whose only problem is that it
   * holds no manifest (directories without manifest files; for git, a commit without the
   * manifests path) loads as zero objects; a path that cannot be read stays an error.
   */
  private async load(paths: string[]): Promise<Awaited<ReturnType<typeof loadAndValidate>>> {
    try {
      return await loadAndValidate(paths, this.deps.redis);
    } catch (err) {
      if (!(err instanceof ManifestError) || !(await this.holdsNoManifest(err))) throw err;
      return loadAndValidate([], this.deps.redis);
    }
  }

  private async holdsNoManifest(err: ManifestError): Promise<boolean> {
    if (err.diagnostics.every((d) => NO_MANIFEST_FILES.test(d.message))) return true;
    // git: the commit checked out fine and has no manifests path (git keeps no empty directory).
    if (!this.git) return false;
    const dir = this.git.manifestsDir;
    return err.diagnostics.every((d) => d.file === dir) && !(await pathExists(dir)) && (await pathExists(path.join(this.spec.git!.cacheDir, '.git')));
  }

  /** The refusal of a source that yields no object (see `allowEmpty`). */
  private emptyError(state: ClusterState): Ns8ctlError {
    const held = state.inventory.get(this.spec.name)?.size ?? 0;
    const where = this.git ? `path ${this.spec.git!.path} of the commit` : this.spec.paths.join(', ');
    return new Ns8ctlError(
      'source_empty',
      `source ${this.spec.name} yields no object (${where}); an empty source never prunes: desired state keeps the ${held} object(s) of apply set ${this.spec.name}. ` +
        `Check the source; to remove its last object the GitOps way, allow it to be empty (--allow-empty, or the allow-empty setting of the source)`,
    );
  }

  /** Why a new revision waits (a closed sync window), or undefined when it may be applied now. */
  private deferral(what: string, key: string): Deferral | undefined {
    const windows = this.spec.syncWindows ?? [];
    const state = windowState(windows, this.deps.now());
    if (state.open) return undefined;
    const inMs = state.nextOpen.getTime() - this.deps.now().getTime();
    const message = `${what} waits for a sync window: the next opens ${formatLocal(state.nextOpen)} (in ${formatDuration(Math.max(60_000, Math.round(inMs / 60_000) * 60_000))}); windows: ${windows.map((w) => w.text).join('; ')}`;
    return { what, key, nextOpen: state.nextOpen, message };
  }

  /** A revision waits and nothing was applied before: status says so, nothing is written. */
  private async defer(prev: SourceStatus | undefined, base: SourceStatus, d: Deferral): Promise<ReconcileResult> {
    const ready = prev?.conditions.find((c) => c.type === 'Ready') ?? cond('Ready', 'False', 'OutsideSyncWindow', `nothing applied yet: ${d.message}`);
    await this.save(prev, { ...base, conditions: [ready, cond('Reconciling', 'False', 'OutsideSyncWindow', d.message), cond('Stalled', 'False', 'NotStalled', 'no error needs intervention'), this.driftCondition(base.driftedKeys)] });
    await this.announceDeferral(d);
    return this.requeue(d);
  }

  /** One `source-apply-deferred` event per waiting revision. */
  private async announceDeferral(d: Deferral): Promise<void> {
    if (this.lastDeferred === d.key) return;
    this.lastDeferred = d.key;
    await this.deps.events.record({ name: 'source-apply-deferred', type: 'Normal', object: this.key, message: `source ${this.spec.name}: ${d.message}`, data: { source: this.spec.name, waiting: d.key, nextOpen: d.nextOpen.toISOString() } });
  }

  private driftCondition(keys: readonly string[]): Condition {
    return keys.length > 0 ? cond('Drifted', 'True', 'DesiredStateDrift', `${keys.join(', ')} differ from the source`) : cond('Drifted', 'False', 'NoDrift', 'desired state matches the source');
  }

  /** Conditions after a reconcile that applied (or held) the good revision while `rejected` (if any) stays rejected. */
  private conditionsFor(rejected: { reason: string; message: string } | undefined, ready: Condition, drift: readonly string[], deferred?: Deferral): Condition[] {
    if (deferred && !rejected) return [ready, cond('Reconciling', 'False', 'OutsideSyncWindow', deferred.message), cond('Stalled', 'False', 'NotStalled', 'no error needs intervention'), this.driftCondition(drift)];
    if (rejected) {
      return [cond('Ready', 'False', rejected.reason, rejected.message), cond('Reconciling', 'False', rejected.reason, 'waiting for a new commit'), cond('Stalled', 'True', rejected.reason, rejected.message), this.driftCondition(drift)];
    }
    const reconciling = ready.reason === 'Blocked' ? cond('Reconciling', 'True', 'Blocked', 'retrying with backoff') : cond('Reconciling', 'False', 'Applied', 'nothing left to do');
    return [ready, reconciling, cond('Stalled', 'False', 'NotStalled', 'no error needs intervention'), this.driftCondition(drift)];
  }

  private async rejectInvalid(prev: SourceStatus | undefined, base: SourceStatus, revision: string, err: ManifestError, commit: CommitInfo | undefined): Promise<ReconcileResult> {
    const ds = this.relativeDiagnostics(err.diagnostics);
    const head = ds.slice(0, 3).map(formatDiagnostic).join('; ') + (ds.length > 3 ? `; and ${ds.length - 3} more` : '');
    const kept = base.lastAppliedRevision ? `desired state keeps ${this.git ? `commit ${shortRev(base.lastAppliedRevision)}` : 'the last valid manifests'}` : 'nothing was applied';
    const message = `${ds.length} problem${ds.length === 1 ? '' : 's'} in ${this.where(revision)}; ${kept}: ${head}`;
    return this.reject(prev, base, revision, 'ValidationFailed', 'source-rejected', err, message, { diagnostics: ds }, commit);
  }

  private async rejectOther(prev: SourceStatus | undefined, base: SourceStatus, revision: string, err: Ns8ctlError, commit: CommitInfo | undefined): Promise<ReconcileResult> {
    const reason = REJECT_REASONS[err.code] ?? 'ApplyRefused';
    const kept = base.lastAppliedRevision && this.git ? `; desired state keeps commit ${shortRev(base.lastAppliedRevision)}` : '';
    return this.reject(prev, base, revision, reason, err.code === 'prune_refused' || err.code === 'source_empty' ? 'source-prune-refused' : 'source-rejected', err, `${this.where(revision)}: ${err.message}${kept}`, {}, commit);
  }

  private async reject(
    prev: SourceStatus | undefined,
    base: SourceStatus,
    revision: string,
    reason: string,
    event: string,
    err: Ns8ctlError,
    message: string,
    data: Record<string, unknown>,
    commit: CommitInfo | undefined,
  ): Promise<ReconcileResult> {
    await this.save(prev, {
      ...base,
      lastAttemptedRevision: revision,
      lastError: err.code,
      conditions: [cond('Ready', 'False', reason, message), cond('Reconciling', 'False', reason, this.git ? 'waiting for a new commit' : 'waiting for the manifests to change'), cond('Stalled', 'True', reason, message), this.driftCondition(base.driftedKeys)],
    });
    const ready = prev?.conditions.find((c) => c.type === 'Ready');
    if (!(prev?.lastAttemptedRevision === revision && ready?.message === maskString(message))) {
      await this.deps.events.record({ name: event, type: 'Warning', object: this.key, message: `source ${this.spec.name}: ${message}`, data: { source: this.spec.name, revision, ...data, ...(commit ? { author: commit.author, subject: commit.subject } : {}) } });
    }
    this.deps.log.log('warn', 'source rejected', { source: this.spec.name, revision, reason, error: err.code });
    if (this.git) return this.requeue();
    // A directory source parks until its files change.
    throw err instanceof RefusedError || err instanceof ManifestError ? err : Object.assign(err, { terminal: true });
  }

  private async failed(prev: SourceStatus | undefined, base: SourceStatus, reason: string, event: string, err: Ns8ctlError, revision: string): Promise<void> {
    try {
      await this.save(prev, {
        ...base,
        lastAttemptedRevision: revision,
        lastError: err.code,
        conditions: [cond('Ready', 'False', reason, err.message), cond('Reconciling', 'True', 'Retrying', `retrying with backoff: ${err.message}`), cond('Stalled', 'False', 'NotStalled', 'transient error; retrying'), this.driftCondition(base.driftedKeys)],
      });
      if (prev?.lastError !== err.code) await this.deps.events.record({ name: event, type: 'Warning', object: this.key, message: `source ${this.spec.name}: ${err.message}`, data: { source: this.spec.name, revision, error: err.code } });
    } catch {
      // Redis itself may be what failed; the queue's retry reports it again.
    }
  }
}

