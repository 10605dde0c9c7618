/**
 * `ns8ctl recover [--node N] [--manifests DIR] [--dry-run] [--yes] [-o text|json]`: rebuilds
 * desired state after Redis lost it, from what this host runs: the node agent's instance records
 * and each instance's environment file give a Module per instance (its installed image, its
 * node), applied into the apply set `recovered` by the normal plan and write script, together with
 * the NS8 bookkeeping the host knows (module_node, module_uuid from MODULE_UUID, the instance
 * number sequence, module/<id>/environment, the port table). Instances desired already are left
 * alone, so a second run changes nothing. Environment values are never printed.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { ConflictError, RefusedError, UsageError } from '../../errors.js';
import { planToWrites, storedSource } from '../../apply/to-writes.js';
import { moduleNameOf, type DesiredObject } from '../../manifest/types.js';
import { defaultLayout, type HostLayout } from '../../node-agent/layout.js';
import { readHostEpoch } from '../../node-agent/desired-state-guard.js';
import { scanHostInstances, type HostEpoch, type HostEpochSource } from '../../node-agent/recover-scan.js';
import { plan as makePlan } from '../../plan/planner.js';
import { planRecovery, type RecoveryPlan } from '../../plan/recovery.js';
import { renderPlanText } from '../../plan/render.js';
import type { Plan } from '../../plan/types.js';
import { keys } from '../../state/keys.js';
import { readClusterState, readNodeRecords } from '../../state/read-state.js';
import { claimClusterEpoch } from '../../state/state-snapshot.js';
import { executeWrites } from '../../state/write-state.js';
import { knownNodesOf } from '../../apply/pipeline.js';
import type { CliDeps } from '../deps.js';
import { parseOutput, renderJson } from '../../runtime/output.js';
import { generatedManifests, validateGenerated, writeGenerated } from './adopt.js';

/** The apply set recovered objects are written into (its inventory lists them). */
export const RECOVERED_APPLY_SET = 'recovered';

export interface RecoverOptions {
  node?: string;
  manifests?: string;
  dryRun?: boolean;
  yes?: boolean;
  output?: string;
}

/** What tests and embedders may inject. */
export interface RecoverExtras {
  /** Host layout overrides (tests point the roots at temp dirs). */
  layout?: Partial<HostLayout>;
  /** Where the node agent's epoch is read (default: its file in the agent state dir). */
  epoch?: HostEpochSource;
}

interface Prepared {
  recovery: RecoveryPlan;
  desired: DesiredObject[];
  plan: Plan;
  ops: ReturnType<typeof planToWrites>;
}

/** Observes Redis, decides (planRecovery), validates the manifests and plans them as apply would. */
async function prepare(redis: Redis, instances: Awaited<ReturnType<typeof scanHostInstances>>, opts: { onlyNode?: number; manifests?: string }): Promise<Prepared> {
  const modules = instances.flatMap((i) => (i.imageUrl ? [moduleNameOf({ image: i.imageUrl })] : []));
  const nodes = [...new Set(instances.flatMap((i) => (i.node !== undefined ? [i.node] : [])).concat(opts.onlyNode ?? []))];
  const state = await readClusterState(redis, { modules, nodes: nodes.map(String) });
  const knownNodes = knownNodesOf(state, await readNodeRecords(redis));
  const p = redis.pipeline();
  for (const i of instances) p.hgetall(keys.moduleEnvironment(i.id));
  for (const n of nodes) p.hgetall(keys.nodePorts(n));
  const res = ((await p.exec()) ?? []).map(([err, v]) => {
    if (err) throw err;
    return v as Record<string, string>;
  });
  const envRedis = new Map(instances.map((i, k) => [i.id, res[k] ?? {}] as const));
  const nodePorts = new Map(nodes.map((n, k) => [n, res[instances.length + k] ?? {}] as const));
  const recovery = planRecovery(instances, { state, knownNodes, envRedis, nodePorts }, opts.onlyNode !== undefined ? { onlyNode: opts.onlyNode } : {});
  const texts = generatedManifests(recovery.objects);
  const validated = texts.length ? validateGenerated(texts, knownNodes, 'recover_invalid', 'what this host runs does not make valid manifests (nothing written)') : [];
  const fileOf = (f: string): string => (opts.manifests ? path.join(opts.manifests, f) : '(recover)');
  const desired = validated.map((d) => ({ object: d.object, source: { ...d.source, file: fileOf(d.source.file) } }));
  const plan = makePlan(desired, state, { applySet: RECOVERED_APPLY_SET, prune: false });
  if (plan.blocked.length > 0) throw new RefusedError('plan_blocked', 'nothing was written; the recovery plan has blocked changes:\n' + plan.blocked.map((b) => `  ${b.key}: ${b.message}`).join('\n'));
  const ops = [...planToWrites(plan, state, { revisionOf: () => '', sourceOf: (f) => storedSource(f) }), ...recovery.bookkeeping];
  return { recovery, desired, plan, ops };
}

function describe(r: RecoveryPlan): string {
  const lines: string[] = [];
  for (const i of r.instances) {
    const extra = [i.ports.join(', '), i.volumeBases.length ? `volume dirs under ${i.volumeBases.join(' ')}` : ''].filter(Boolean).join('; ');
    lines.push(`Module/${i.id}: node ${i.node}, ${i.image}, uuid ${i.uuid || '(none in the environment: a new one is made)'}${extra ? `; ${extra}` : ''}`);
  }
  for (const o of r.objects) if (o.object.kind === 'Node') lines.push(`Node/${o.object.spec.id}: the cluster had no record of it`);
  for (const s of r.restored) lines.push(`  restore ${s}`);
  for (const s of r.skipped) lines.push(`skipped ${s.id}: ${s.why}`);
  return lines.map((l) => l + '\n').join('');
}

/** The epoch this host's node agent works under (its epoch file), as the cluster epoch it was. */
function agentEpochSource(layout: HostLayout): HostEpochSource {
  return {
    read: async () => {
      const e = await readHostEpoch(layout);
      return e ? { id: e.id, created: e.at || new Date().toISOString() } : undefined;
    },
  };
}

/**
 * The command body. Exit 0 when recovered (or nothing to recover, or --dry-run); a refusal
 * (no --yes, files in the way, invalid manifests, blocked plan) writes nothing and exits 1.
 */
export async function recoverCommand(opts: RecoverOptions, d: CliDeps, extras: RecoverExtras = {}): Promise<number> {
  const format = parseOutput(opts.output, ['text', 'json'], 'text');
  let onlyNode: number | undefined;
  if (opts.node !== undefined) {
    if (!/^[1-9][0-9]{0,5}$/.test(opts.node)) throw new UsageError(`--node must be a node id (a positive integer), got ${JSON.stringify(opts.node)}`);
    onlyNode = Number(opts.node);
  }
  const layout = defaultLayout(extras.layout ?? {});
  const instances = await scanHostInstances(layout);
  const hostEpoch = await (extras.epoch ?? agentEpochSource(layout)).read();
  const { redis } = await d.connect();
  const write = !opts.dryRun && opts.yes === true;
  const scope = { ...(onlyNode !== undefined ? { onlyNode } : {}), ...(opts.manifests ? { manifests: opts.manifests } : {}) };
  const first = await prepare(redis, instances, scope);
  const texts = generatedManifests(first.recovery.objects);
  // Files in the way refuse before anything is written to Redis.
  const clash = write && opts.manifests ? texts.map(({ a }) => path.join(opts.manifests!, `${a.id}.yaml`)).filter((f) => existsSync(f)) : [];
  if (clash.length) throw new RefusedError('recover_file_exists', `not overwriting ${clash.join(', ')} (nothing written): move them away or recover without --manifests`);
  const written = write ? await writeRecovery(redis, first, () => prepare(redis, instances, scope), hostEpoch) : { prepared: first, attempts: 1, epoch: undefined };
  const { prepared } = written;
  const files = write && opts.manifests && prepared.recovery.objects.length ? writeGenerated(opts.manifests, generatedManifests(prepared.recovery.objects), 'recover_file_exists', 'move them away or recover without --manifests') : [];
  const r = prepared.recovery;
  const refusal = !write && !opts.dryRun && r.objects.length ? new RefusedError('confirmation_required', 'recover writes desired state only when confirmed: review the above, then run it again with --yes') : undefined;
  if (format === 'json') {
    d.stdout(
      renderJson({
        dryRun: !write,
        applySet: RECOVERED_APPLY_SET,
        items: r.objects.map((o) => o.object),
        instances: r.instances,
        restored: r.restored,
        skipped: r.skipped,
        files,
        epoch: written.epoch ?? (hostEpoch ? { id: hostEpoch.id, result: 'not-written' } : null),
        refused: refusal ? refusal.toJSON() : null,
      }),
    );
    // One JSON document on stdout: the refusal is in it, and the exit code says it.
    if (refusal) {
      d.stderr(`error: ${refusal.message}\n`);
      return 1;
    }
  } else {
    if (instances.length === 0) d.stderr(`No node agent records in ${path.join(layout.agentStateDir, 'instances')}: this host runs nothing ns8ctl made (or its node agent keeps its state elsewhere).\n`);
    d.stdout(describe(r));
    if (prepared.plan.changes.length) d.stdout(renderPlanText(prepared.plan, { color: false }));
  }
  if (!write) {
    if (format !== 'json') d.stderr(r.objects.length ? `${opts.dryRun ? 'Dry run' : 'Nothing written (recover writes only with --yes)'}: ${r.instances.length} instance(s) would be recovered into apply set "${RECOVERED_APPLY_SET}".\n` : 'Nothing to recover: every instance this host runs is in desired state.\n');
    if (refusal) throw refusal;
    return 0;
  }
  if (format !== 'json') reportWritten(d, r, written, files, opts.manifests);
  return 0;
}

/** What writeRecovery wrote: the recovery it executed, after how many attempts, and the cluster epoch claim. */
interface WrittenRecovery {
  prepared: Prepared;
  attempts: number;
  epoch: { id: string; result: 'set' | 'same' | 'other' } | undefined;
}

/**
 * Claims the host's epoch, then writes the recovery; when another writer changed desired state
 * in between (ConflictError), prepares again (`again`) and retries, five attempts at most.
 */
async function writeRecovery(redis: Redis, prepared: Prepared, again: () => Promise<Prepared>, hostEpoch: HostEpoch | undefined): Promise<WrittenRecovery> {
  let attempts = 1;
  // The epoch first: agents on this host recognise the state they worked under as soon as
  // objects appear (a crash in between leaves an epoch without objects, which agents refuse as
  // DesiredStateEmpty until recover runs again).
  const epoch = hostEpoch ? { id: hostEpoch.id, result: await claimClusterEpoch(redis, hostEpoch) } : undefined;
  for (;;) {
    try {
      await executeWrites(redis, prepared.ops);
      return { prepared, attempts, epoch };
    } catch (err) {
      if (!(err instanceof ConflictError) || attempts >= 5) throw err;
      attempts++;
      // Another writer changed desired state in between: observe and decide again.
      prepared = await again();
    }
  }
}

/** The text summary on stderr after a write: the epoch claim, what was recovered, and what to do next. */
function reportWritten(d: CliDeps, r: RecoveryPlan, { epoch, attempts }: WrittenRecovery, files: readonly string[], manifests: string | undefined): void {
  if (epoch?.result === 'set') d.stderr(`Restored the cluster epoch ${epoch.id} from this host: its node agent accepts the recovered state.\n`);
  if (epoch?.result === 'other') d.stderr(`warning: the cluster epoch in Redis is not the one this host's node agent worked under (${epoch.id}): the agent waits for an operator to accept the new desired state.\n`);
  if (r.objects.length === 0) {
    d.stderr('Nothing to recover: every instance this host runs is in desired state.\n');
    return;
  }
  const where = files.length ? `Wrote ${files.length} manifest(s) to ${manifests}. ` : '';
  d.stderr(
    `Recovered ${r.instances.length} instance(s) into apply set "${RECOVERED_APPLY_SET}"${attempts > 1 ? ` (after ${attempts - 1} retr${attempts === 2 ? 'y' : 'ies'})` : ''}. ${where}` +
      `Next: check with \`ns8ctl get modules\`, then put the manifests in git (with their spec.configuration, which the host does not have) and run \`ns8ctl apply -f DIR --applyset ${RECOVERED_APPLY_SET}\`; run recover on every other node too.\n`,
  );
}
