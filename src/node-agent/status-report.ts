/**
 * The Module status the node agent writes for one instance, with its conditions (Ready,
 * Progressing, Degraded and Orphaned): failed, progressing, converged (on the wanted image, or on
 * the installed one with the setback that keeps it there), orphaned. Reasons come from the error
 * code through REASONS (reasons.ts).
 */
import { Ns8ctlError } from '../errors.js';
import { EventRecorder } from '../state/events.js';
import type { NodeAgentDeps } from './deps.js';
import { orphanMessage } from './instance-decision.js';
import type { ObserveContext } from './observe.js';
import { formatRange } from './ports.js';
import { reasonOf, TERMINAL_REASONS } from './reasons.js';
import type { InstanceResult, Setback } from './result.js';
import { writeStatus } from './status.js';
import type { Condition, ImageFacts, InstanceDesired, InstanceRecord, ModuleStatus, ObservedInstance, Step } from './types.js';

export function cond(type: Condition['type'], status: Condition['status'], reason: string, message: string): Condition {
  return { type, status, reason, message };
}

/**
 * An instance this node runs whose desired object is missing: reported (condition `Orphaned`, a
 * `module-orphaned` Warning event once per transition) and left running untouched.
 */
export async function reportOrphan(id: string, rec: InstanceRecord, node: number, deps: NodeAgentDeps, shared: ObserveContext): Promise<InstanceResult> {
  const prev = shared.redis.status.get(id);
  const message = orphanMessage(id, node);
  const next: ModuleStatus = {
    id,
    node,
    observedGeneration: prev?.observedGeneration ?? 0,
    imageUrl: prev?.imageUrl || rec.imageUrl || '',
    imageDigest: prev?.imageDigest ?? '',
    ports: prev?.ports ?? {},
    units: prev?.units ?? [],
    drift: [],
    conditions: [
      cond('Ready', 'Unknown', 'Orphaned', 'not observed: the instance has no desired object'),
      cond('Progressing', 'False', 'Orphaned', 'left as it is: an orphan is neither converged nor removed'),
      cond('Degraded', 'True', 'Orphaned', message),
      cond('Orphaned', 'True', 'DesiredObjectMissing', message),
    ],
  };
  const wasOrphan = prev?.conditions.some((c) => c.type === 'Orphaned' && c.status === 'True') ?? false;
  const status = await writeStatus(deps.redis, prev, next, deps.now());
  if (!wasOrphan) {
    deps.log(`node-agent: ${id}: Orphaned: ${message}`);
    await new EventRecorder(deps.redis, { now: deps.now, log: (line) => deps.log(`node-agent: ${line}`) }).record({
      name: 'module-orphaned',
      type: 'Warning',
      object: `Module/${id}`,
      message: `Module/${id} on node ${node}: ${message}`,
      data: { module: id, node, image: next.imageUrl },
    });
  }
  return { id, outcome: 'orphaned', applied: [], drift: [], retry: false, status };
}

export async function failed(
  deps: NodeAgentDeps,
  d: InstanceDesired,
  prev: ModuleStatus | undefined,
  base: Omit<ModuleStatus, 'conditions'>,
  e: Ns8ctlError,
  step: Step | undefined,
  applied: Step[],
  drift: string[],
  blocked = false,
  setback?: Setback,
): Promise<InstanceResult> {
  const reason = reasonOf(e);
  const msg = step ? `step ${step.kind} failed: ${e.message}` : e.message;
  const status: ModuleStatus = {
    ...base,
    conditions: [cond('Ready', 'False', reason, msg), cond('Progressing', 'False', 'Failed', TERMINAL_REASONS.has(reason) ? 'waiting for a change of the Module or the image' : 'will retry with backoff'), cond('Degraded', 'True', reason, msg)],
  };
  const stored = await writeStatus(deps.redis, prev, status, deps.now());
  deps.log(`node-agent: ${d.id}: ${reason}: ${msg}`);
  return { id: d.id, outcome: blocked ? 'blocked' : 'failed', applied, drift, error: e, retry: !TERMINAL_REASONS.has(reason), status: stored, ...(setback ? { setback } : {}) };
}

/** The status written when a pass starts applying steps: Progressing, Degraded as it was. */
export function progressingStatus(base: Omit<ModuleStatus, 'conditions'>, prev: ModuleStatus | undefined, steps: readonly Step[]): ModuleStatus {
  const kinds = steps.map((s) => s.kind).join(', ');
  const degraded = prev?.conditions.find((c) => c.type === 'Degraded' && c.status === 'True');
  return {
    ...base,
    conditions: [
      cond('Ready', 'False', 'Progressing', `applying: ${kinds}`),
      cond('Progressing', 'True', 'Applying', `${steps.length} step(s): ${kinds}`),
      cond('Degraded', degraded ? 'True' : 'False', prev?.conditions.find((c) => c.type === 'Degraded')?.reason ?? 'AsExpected', degraded?.message ?? ''),
    ],
  };
}

/** What a converge pass ends with, for its report. */
export interface ConvergedPass {
  d: InstanceDesired;
  rec: InstanceRecord | undefined;
  prev: ModuleStatus | undefined;
  base: Omit<ModuleStatus, 'conditions'>;
  observed: ObservedInstance;
  applied: Step[];
  drift: string[];
  url: string;
  setback: Setback | undefined;
  systemdMissing: string | undefined;
}

/**
 * The status of an instance whose plan is empty: Ready, or not Ready with the setback that kept
 * it on its installed image, or without systemd to start its units.
 */
export async function reportConverged(r: ConvergedPass, deps: NodeAgentDeps): Promise<InstanceResult> {
  const { d, rec, prev, base, observed, applied, drift, url, setback, systemdMissing } = r;
  const id = d.id;
  const wantedUnits = observed.units.filter((u) => u.wanted).map((u) => u.name);
  let conditions: Condition[];
  if (setback) {
    // Converged, but on the installed image: not Ready, with the reason the wanted one is not used.
    const msg = `${setback.message}${systemdMissing ? `; ${systemdMissing}` : ''}`;
    const next = setback.terminal ? 'waiting for a change of the Module, the repositories or the core' : 'will retry with backoff';
    conditions = [cond('Ready', 'False', setback.reason, msg), cond('Progressing', 'False', 'Failed', `${next}; meanwhile ${url} is kept converged`), cond('Degraded', 'True', setback.reason, msg)];
    const status = await writeStatus(deps.redis, prev, { ...base, conditions }, deps.now());
    if (applied.length) deps.log(`node-agent: ${id}: converged on the installed image ${url} (${applied.length} step(s): ${applied.map((s) => s.kind).join(', ')})`);
    return { id, outcome: setback.terminal ? 'blocked' : 'failed', applied, drift, error: new Ns8ctlError(setback.code, setback.message), retry: !setback.terminal, status, setback };
  }
  if (systemdMissing) {
    const msg = `${systemdMissing}: ${wantedUnits.length ? `units ${wantedUnits.join(', ')} are installed but not started` : 'no unit to start'}`;
    conditions = [cond('Ready', 'False', 'SystemdUnavailable', msg), cond('Progressing', 'False', 'HostConverged', 'files, user, ports, environment and credentials are in place'), cond('Degraded', 'True', 'SystemdUnavailable', msg)];
  } else {
    conditions = [cond('Ready', 'True', 'Converged', 'the instance matches its Module'), cond('Progressing', 'False', 'Converged', 'nothing left to do'), cond('Degraded', 'False', 'AsExpected', '')];
  }
  // Converged on a wanted image: an earlier failed update is history.
  if (rec?.failedUpdate) await deps.records.update(id, { failedUpdate: undefined });
  const status = await writeStatus(deps.redis, prev, { ...base, conditions }, deps.now());
  if (applied.length) deps.log(`node-agent: ${id}: converged (${applied.length} step(s): ${applied.map((s) => s.kind).join(', ')})`);
  return { id, outcome: applied.length ? 'converged' : 'unchanged', applied, drift, retry: false, status };
}

export function fillBase(base: Omit<ModuleStatus, 'conditions'>, o: ObservedInstance, facts: ImageFacts): void {
  base.imageDigest = o.localImage?.digest || facts.digest;
  base.ports = { ...(o.ports.tcp ? { tcp: formatRange(o.ports.tcp) } : {}), ...(o.ports.udp ? { udp: formatRange(o.ports.udp) } : {}) };
  base.units = o.units.filter((u) => u.wanted).map((u) => ({ name: u.name, enabled: u.enabled, active: u.active ?? null }));
}
