/**
 * kstatus-style conditions the controller reports, as pure functions (no I/O, no clock: `now` is
 * passed in). Per object: Ready, Reconciling, Stalled, Drifted, computed from the desired object,
 * the node agent's observed status and the suspension; per source the same four types, set by the
 * source reconciler. Transition times carry over while a condition's status stays the same.
 */
import type { ModuleStatus as AgentStatus } from '../node-agent/types.js';
import { maskString } from '../runtime/mask.js';
import type { ConfigurationFacts } from './configuration-reconciler.js';
import { TERMINAL_REASONS } from '../state/status-reasons.js';

export type ConditionType = 'Ready' | 'Reconciling' | 'Stalled' | 'Drifted';
export type ConditionStatus = 'True' | 'False' | 'Unknown';

export interface Condition {
  type: ConditionType;
  status: ConditionStatus;
  /** CamelCase reason (`Converged`, `ValidationFailed`, ...). */
  reason: string;
  /** One human sentence, secrets masked. */
  message: string;
  lastTransitionTime?: string;
}

/** Order conditions are listed in. */
export const CONDITION_TYPES: readonly ConditionType[] = ['Ready', 'Reconciling', 'Stalled', 'Drifted'];


export function cond(type: ConditionType, status: ConditionStatus, reason: string, message: string): Condition {
  return { type, status, reason, message: maskString(message) };
}

/** What the controller knows about one Module when it summarises it. */
export interface ModuleFacts {
  id: string;
  generation: number;
  /** Git commit the object was last written from (`` when not from git). */
  revision: string;
  /** File it was last written from. */
  source: string;
  /** Removal requested, waiting for finalizers. */
  deleting: boolean;
  node: number | undefined;
  /** The node agent's status hash, parsed; undefined when no agent reported yet. */
  agent: AgentStatus | undefined;
  /** Set while `ns8ctl suspend module <id>` holds. */
  suspended?: { reason: string; until?: string } | undefined;
  /** Set by a source reconcile that found the desired object differing from its source without healing it. */
  desiredDrift?: { source: string; message: string } | undefined;
  /** Outcome of the declarative configuration step (configuration-reconciler.ts), when it ran. */
  configuration?: ConfigurationFacts | undefined;
}

/** The summary the controller stores in `ns8ctl/conditions/module/<id>`. */
export interface ObjectSummary {
  conditions: Condition[];
  generation: number;
  /** Generation the node agent last reconciled (0 when none). */
  observedGeneration: number;
  lastAppliedRevision: string;
  source: string;
  suspended: boolean;
}

function agentCondition(s: AgentStatus | undefined, type: 'Ready' | 'Progressing' | 'Degraded'): { status: string; reason: string; message: string } | undefined {
  return s?.conditions.find((c) => c.type === type);
}

/**
 * Summarises one Module (see the module doc). Rules, first match wins for Ready/Reconciling/Stalled:
 * deleting -> Reconciling (Deleting); no agent status -> Ready Unknown (AwaitingNodeAgent);
 * agent behind the generation -> Reconciling (Progressing); agent Degraded with a terminal reason
 * -> Stalled; agent Degraded otherwise -> Reconciling (Retrying); agent Ready at this generation
 * -> Ready (Converged). Suspension turns Reconciling off (Suspended). Drifted: desired drift left
 * unhealed, else drift the agent repaired in its last pass, else False.
 */
export function summarizeModule(f: ModuleFacts): ObjectSummary {
  const a = f.agent;
  const observed = a?.observedGeneration ?? 0;
  const onNode = f.node !== undefined ? ` on node ${f.node}` : '';
  let ready: Condition;
  let reconciling: Condition;
  let stalled = cond('Stalled', 'False', 'NotStalled', 'no error needs intervention');
  const degraded = agentCondition(a, 'Degraded');
  if (f.deleting) {
    ready = cond('Ready', 'False', 'Deleting', `removal of ${f.id} requested; waiting for the node agent to clean up${onNode}`);
    reconciling = cond('Reconciling', 'True', 'Deleting', `the node agent is removing ${f.id}${onNode}`);
  } else if (!a) {
    ready = cond('Ready', 'Unknown', 'AwaitingNodeAgent', `no node agent has reported on ${f.id}${onNode} yet`);
    reconciling = cond('Reconciling', 'True', 'AwaitingNodeAgent', `generation ${f.generation} is waiting for the node agent${onNode}`);
  } else if (observed < f.generation) {
    ready = cond('Ready', 'False', 'Progressing', `the node agent has reconciled generation ${observed}, desired is ${f.generation}`);
    reconciling = cond('Reconciling', 'True', 'Progressing', `converging ${f.id} to generation ${f.generation}${onNode}`);
  } else if (degraded?.status === 'True') {
    ready = cond('Ready', 'False', degraded.reason || 'Degraded', degraded.message || `${f.id} is degraded`);
    if (TERMINAL_REASONS.has(degraded.reason)) {
      stalled = cond('Stalled', 'True', degraded.reason, `${degraded.message} (retrying cannot fix this: change the manifest)`);
      reconciling = cond('Reconciling', 'False', degraded.reason, 'stopped until the desired spec changes');
    } else {
      reconciling = cond('Reconciling', 'True', 'Retrying', `the node agent retries with backoff: ${degraded.message}`);
    }
  } else if (agentCondition(a, 'Ready')?.status === 'True') {
    ready = cond('Ready', 'True', 'Converged', `${f.id} runs generation ${f.generation}${onNode}`);
    reconciling = cond('Reconciling', 'False', 'Converged', 'nothing left to do');
  } else {
    const p = agentCondition(a, 'Progressing');
    ready = cond('Ready', 'False', p?.reason || 'Progressing', p?.message || `${f.id} is not ready yet`);
    reconciling = cond('Reconciling', 'True', p?.reason || 'Progressing', p?.message || `converging ${f.id}`);
  }
  const cf = f.configuration;
  if (cf && ready.status === 'True') {
    if (cf.failed) {
      ready = cond('Ready', 'False', 'ConfigurationFailed', `configure-module refused spec.configuration: ${cf.failed}`);
      reconciling = cond('Reconciling', 'False', 'ConfigurationFailed', 'stopped until spec.configuration (or the generation) changes');
      stalled = cond('Stalled', 'True', 'ConfigurationFailed', `${cf.failed} (retrying cannot fix this: change spec.configuration)`);
    } else if (cf.pending) {
      ready = cond('Ready', 'False', 'Configuring', cf.pending);
      reconciling = cond('Reconciling', 'True', 'Configuring', `retrying with backoff: ${cf.pending}`);
    }
  }
  if (f.suspended && !f.deleting) {
    reconciling = cond('Reconciling', 'False', 'Suspended', `suspended${f.suspended.reason ? `: ${f.suspended.reason}` : ''}${f.suspended.until ? ` (until ${f.suspended.until})` : ''}; run \`ns8ctl resume module ${f.id}\` to resume`);
  }
  let drifted = cond('Drifted', 'False', 'NoDrift', 'no drift found');
  if (f.desiredDrift) drifted = cond('Drifted', 'True', 'DesiredStateDrift', f.desiredDrift.message);
  else if (cf?.drift && cf.drift.length > 0) drifted = cond('Drifted', 'True', 'ConfigurationDrift', `live configuration of ${f.id} differs from spec.configuration (self-heal is off): ${cf.drift.join('; ')}`);
  else if (a && a.drift.length > 0) drifted = cond('Drifted', 'True', 'HostDriftRepaired', `the node agent repaired: ${a.drift.join('; ')}`);
  return {
    conditions: [ready, reconciling, stalled, drifted],
    generation: f.generation,
    observedGeneration: observed,
    lastAppliedRevision: f.revision,
    source: f.source,
    suspended: Boolean(f.suspended),
  };
}

/** The condition of a type in a list. */
export function findCondition(list: readonly Condition[] | undefined, type: ConditionType): Condition | undefined {
  return list?.find((c) => c.type === type);
}

/** Stamps `now` on conditions whose status changed since `prev`, keeps the old time otherwise. */
export function stampConditions(prev: readonly Condition[] | undefined, next: readonly Condition[], now: Date): Condition[] {
  return next.map((c) => {
    const old = findCondition(prev, c.type);
    const t = old && old.status === c.status && old.lastTransitionTime ? old.lastTransitionTime : now.toISOString();
    return { ...c, lastTransitionTime: t };
  });
}

/** True when two condition lists say the same (transition times aside). */
export function sameConditions(a: readonly Condition[] | undefined, b: readonly Condition[]): boolean {
  if (!a || a.length !== b.length) return false;
  const strip = (l: readonly Condition[]): string => JSON.stringify(l.map(({ lastTransitionTime: _t, ...c }) => c));
  return strip(a) === strip(b);
}

/** A condition that became True (or, for Ready, True or False) between two lists. */
export interface Transition {
  type: ConditionType;
  from: ConditionStatus | undefined;
  to: ConditionStatus;
  condition: Condition;
}

/** Status changes between `prev` and `next`, in CONDITION_TYPES order. */
export function transitions(prev: readonly Condition[] | undefined, next: readonly Condition[]): Transition[] {
  const out: Transition[] = [];
  for (const type of CONDITION_TYPES) {
    const n = findCondition(next, type);
    if (!n) continue;
    const p = findCondition(prev, type);
    if (p?.status !== n.status) out.push({ type, from: p?.status, to: n.status, condition: n });
  }
  return out;
}

/**
 * The event (past-tense name, type) a Module's transition deserves, or undefined for quiet ones:
 * Ready -> True `module-became-ready`; Ready True -> False `module-became-unready`; Stalled -> True
 * `module-stalled`; Drifted -> True `module-drifted`.
 */
export function moduleTransitionEvent(t: Transition): { name: string; type: 'Normal' | 'Warning' } | undefined {
  if (t.type === 'Ready' && t.to === 'True') return { name: 'module-became-ready', type: 'Normal' };
  if (t.type === 'Ready' && t.from === 'True' && t.to === 'False') return { name: 'module-became-unready', type: 'Warning' };
  if (t.type === 'Stalled' && t.to === 'True') return { name: 'module-stalled', type: 'Warning' };
  if (t.type === 'Drifted' && t.to === 'True') return { name: 'module-drifted', type: 'Warning' };
  return undefined;
}
