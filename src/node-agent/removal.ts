/**
 * Removal of an instance from its node, on an explicit request only (a deleted Module, a removal
 * request for an orphan): planned by planRemoval, applied step by step, reported in status.
 */
import path from 'node:path';
import { toNs8ctlError } from '../errors.js';
import { EventRecorder } from '../state/events.js';
import { applyStep, type StepContext } from './applier.js';
import type { NodeAgentDeps } from './deps.js';
import type { RemovalOrigin } from './instance-decision.js';
import { parseModuleLabels, type ModuleLabels } from './labels.js';
import { observeInstance, readRedisSnapshot, type ObserveContext } from './observe.js';
import { planRemoval } from './planner.js';
import { StateTransfer } from './backup/transfer.js';
import { clearMove, CLONES_KEY } from './move/record.js';
import { clearRemovalRequest, describeRequest, policyText, type DeletionMark } from './removal-request.js';
import type { InstanceResult } from './result.js';
import { cond } from './status-report.js';
import { writeStatus } from './status.js';
import type { InstanceDesired, InstanceRecord, ModuleStatus, Step } from './types.js';
import { pathExists } from '../runtime/path-exists.js';

/**
 * Removes an instance on an explicit request (`mark`, see instance-decision.ts). The request is
 * on the host record before anything is removed, so an interrupted removal resumes without its
 * desired object. The first pass of a removal logs, reports (status Removing) and records a
 * `module-removing` event naming who asked, when and why.
 */
export async function removeInstance(
  id: string,
  d: InstanceDesired | undefined,
  rec: InstanceRecord | undefined,
  mark: DeletionMark,
  origin: RemovalOrigin,
  node: number,
  deps: NodeAgentDeps,
  shared: ObserveContext,
): Promise<InstanceResult> {
  const policy = mark.removalPolicy;
  const starting = !rec?.removing || rec.removing.removalPolicy !== policy;
  if (origin === 'removal-request' && rec) {
    // The host record carries the request from now on (a crash resumes from it); the key goes.
    rec = await deps.records.update(id, { removing: mark });
    await clearRemovalRequest(deps.redis, id);
  }
  // A clone being made: its receiver stops and its record goes (the source stops sending).
  if (shared.redis.clones.has(id)) {
    await new StateTransfer(deps.runner).stopReceiver(id);
    await clearMove(deps.redis, id, CLONES_KEY);
  }
  const user = shared.users.get(id);
  const rootfull = rec?.rootfull ?? (!user && (await pathExists(path.join(deps.layout.rootfullBase, id))));
  let labels: ModuleLabels | undefined;
  try {
    labels = rec?.image ? parseModuleLabels(rec.image.labels, rec.image.url) : undefined;
  } catch {
    labels = undefined;
  }
  const observed = await observeInstance(shared, id, rec, rootfull, rec?.imageUrl, labels);
  const { removalPolicy: _p, ...request } = mark;
  const plan = planRemoval({ id, policy, request, node: { node, ...(shared.systemdMissing ? { systemdMissing: shared.systemdMissing } : {}) }, rootfull, observed, desiredPresent: Boolean(d) });
  if (!plan.steps.length) return { id, outcome: 'unchanged', applied: [], drift: [], retry: false };
  const stepCtx: StepContext = { deps, node, id, rootfull, ...(labels ? { labels } : {}), ...(rec?.imageUrl ? { imageUrl: rec.imageUrl } : {}) };
  const prev = shared.redis.status.get(id);
  const base: Omit<ModuleStatus, 'conditions'> = { id, node, observedGeneration: d?.generation ?? prev?.observedGeneration ?? 0, imageUrl: rec?.imageUrl ?? '', imageDigest: prev?.imageDigest ?? '', ports: prev?.ports ?? {}, units: prev?.units ?? [], drift: [] };
  const what = `removing (${policyText(policy)}), ${describeRequest(mark)}`;
  if (starting || origin === 'removal-request') await announceRemoval(id, node, mark, what, deps);
  await writeStatus(deps.redis, prev, { ...base, conditions: [cond('Ready', 'False', 'Removing', what), cond('Progressing', 'True', 'Removing', plan.steps.map((s) => s.kind).join(', ')), cond('Degraded', 'False', 'AsExpected', '')] }, deps.now());
  const applied: Step[] = [];
  for (const step of plan.steps) {
    try {
      await applyStep(step, stepCtx);
      applied.push(step);
    } catch (err) {
      const e = toNs8ctlError(err);
      const msg = `removal step ${step.kind} failed: ${e.message} (${describeRequest(mark)})`;
      deps.log(`node-agent: ${id}: ${msg}`);
      const cur = (await readRedisSnapshot(deps.redis, node, [id])).status.get(id);
      await writeStatus(deps.redis, cur, { ...base, conditions: [cond('Ready', 'False', 'RemovalFailed', msg), cond('Progressing', 'False', 'Failed', 'will retry with backoff'), cond('Degraded', 'True', 'RemovalFailed', msg)] }, deps.now());
      return { id, outcome: 'failed', applied, drift: [], error: e, retry: true };
    }
  }
  deps.log(`node-agent: ${id}: removed (${policy === 'Delete' ? 'data deleted' : 'data preserved'}; ${applied.length} step(s); ${describeRequest(mark)})`);
  return { id, outcome: 'removed', applied, drift: [], retry: false };
}

/** The first pass of a removal: one log line and a `module-removing` event with who/when/why. */
async function announceRemoval(id: string, node: number, mark: DeletionMark, what: string, deps: NodeAgentDeps): Promise<void> {
  deps.log(`node-agent: ${id}: ${what}`);
  await new EventRecorder(deps.redis, { now: deps.now, log: (line) => deps.log(`node-agent: ${line}`) }).record({
    name: 'module-removing',
    type: mark.removalPolicy === 'Delete' ? 'Warning' : 'Normal',
    object: `Module/${id}`,
    message: `Module/${id} on node ${node}: ${what}`,
    data: { module: id, node, removalPolicy: mark.removalPolicy, ...(mark.by ? { by: mark.by } : {}), ...(mark.at ? { at: mark.at } : {}), ...(mark.why ? { why: mark.why } : {}) },
  });
}
