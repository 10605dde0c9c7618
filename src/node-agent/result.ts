/**
 * What a reconcile of a node reports, per instance and for the node, and what the loop that runs
 * it passes in (instances to skip, setbacks still held).
 */
import type { Ns8ctlError } from '../errors.js';
import type { SuspectReason } from './desired-state-guard.js';
import type { ModuleStatus, Step } from './types.js';

/** What happened to one instance in a reconcile. */
export interface InstanceResult {
  id: string;
  outcome: 'unchanged' | 'converged' | 'removed' | 'failed' | 'blocked' | 'skipped' | 'suspended' | 'orphaned';
  /** Steps applied, in order. */
  applied: Step[];
  /** Drift found and repaired. */
  drift: string[];
  error?: Ns8ctlError;
  /** False for errors only a change of desired state or of the host can fix. */
  retry: boolean;
  status?: ModuleStatus;
  /**
   * Set when the wanted image could not be used (resolution failed, update refused, new image
   * unreachable) and the instance was converged on the image it runs instead.
   */
  setback?: Setback;
  /** Wall time of this instance's reconcile (ms). */
  durationMs?: number;
  /** Not created yet: these instances of `spec.dependsOn` are not Ready (the loop wakes when one changes). */
  waitingFor?: string[];
}

/**
 * Why an installed instance was converged on the image it runs rather than on the one its spec
 * asks for. `terminal`: only a change of the Module, of the repositories or of the core fixes it.
 */
export interface Setback {
  /** Error code (`version_not_found`, `update_refused`, `registry_unreachable`, ...). */
  code: string;
  /** Status reason, REASONS of the code (`ImageResolutionFailed`, `UpdateRefused`, `RegistryUnreachable`, ...). */
  reason: string;
  message: string;
  terminal: boolean;
  /** The image the spec resolved to, when resolution got that far. */
  targetImage?: string;
}

export interface NodeReconcileResult {
  node: number;
  instances: InstanceResult[];
  /**
   * Set when the node refused to act because desired state looks wiped or replaced
   * (desired-state-guard.ts): no instance was touched.
   */
  suspect?: { reason: SuspectReason; message: string };
  /** Why systemd cannot be used on this host, if it cannot. */
  systemdMissing?: string;
}

export interface ReconcileControl {
  /** Instances to leave alone this time (in backoff); `generation` of the desired object, if any. */
  skip?: (id: string, generation: number | undefined) => boolean;
  /**
   * A setback still in force for an installed instance (its recheck or backoff is not due): the
   * spec is not resolved again; the instance converges on its installed image and keeps
   * reporting the setback.
   */
  held?: (id: string, generation: number | undefined) => Setback | undefined;
  signal?: AbortSignal;
  /**
   * Whether to log the DesiredStateSuspect line of this pass (the loop rate-limits it); default:
   * always.
   */
  logSuspect?: (reason: SuspectReason) => boolean;
}
