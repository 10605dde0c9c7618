/**
 * `spec.dependsOn`: an instance is created only once the instances it depends on (on any node)
 * are Ready.
 */
import { Ns8ctlError } from '../errors.js';
import { keys } from '../state/keys.js';
import type { NodeAgentDeps } from './deps.js';
import type { InstanceResult } from './result.js';
import { cond } from './status-report.js';
import { writeStatus } from './status.js';
import type { Condition, InstanceDesired, ModuleStatus } from './types.js';

/** An instance not created yet whose `spec.dependsOn` are not all Ready: reported, not created. */
export async function waitForDependencies(d: InstanceDesired, prev: ModuleStatus | undefined, base: Omit<ModuleStatus, 'conditions'>, deps: NodeAgentDeps): Promise<InstanceResult | undefined> {
  const waiting = await unreadyDependencies(deps.redis, d.spec.dependsOn ?? []);
  if (waiting.length === 0) return undefined;
  const message = `waits for ${waiting.map((w) => `${w.id} (${w.why})`).join(', ')} before it is created (spec.dependsOn)`;
  const status = await writeStatus(deps.redis, prev, { ...base, imageUrl: prev?.imageUrl ?? '', conditions: [cond('Ready', 'False', 'DependencyNotReady', message), cond('Progressing', 'False', 'Waiting', message), cond('Degraded', 'False', 'AsExpected', '')] }, deps.now());
  return { id: d.id, outcome: 'blocked', applied: [], drift: [], error: new Ns8ctlError('dependency_not_ready', `${d.id} ${message}`), retry: true, status, waitingFor: waiting.map((w) => w.id) };
}

/**
 * Dependencies that are not Ready, with why: an instance ns8ctl manages is ready when its status
 * says Ready=True; one NS8 runs without ns8ctl (no desired object) is ready once NS8 places it
 * (`cluster/module_node`). One pipeline.
 */
async function unreadyDependencies(redis: NodeAgentDeps['redis'], ids: readonly string[]): Promise<{ id: string; why: string }[]> {
  const p = redis.pipeline();
  for (const id of ids) p.hget(keys.moduleStatus(id), 'conditions').exists(keys.desired('Module', id)).hexists(keys.moduleNode(), id);
  const res = ((await p.exec()) ?? []).map(([err, v]) => {
    if (err) throw err;
    return v;
  });
  const out: { id: string; why: string }[] = [];
  ids.forEach((id, i) => {
    const [conditions, desired, placed] = [res[3 * i] as string | null, res[3 * i + 1] as number, res[3 * i + 2] as number];
    if (desired === 0) {
      if (placed !== 1) out.push({ id, why: 'no such instance yet' });
      return;
    }
    let ready: Condition | undefined;
    try {
      ready = (JSON.parse(conditions ?? '[]') as Condition[]).find((c) => c.type === 'Ready');
    } catch {
      ready = undefined;
    }
    if (ready?.status !== 'True') out.push({ id, why: ready ? `Ready=${ready.status}: ${ready.reason}` : 'not reconciled yet' });
  });
  return out;
}
