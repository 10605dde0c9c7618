/**
 * The pure middle of `ns8ctl recover`: from the instances a host runs (the node agent's records
 * and environment files) and the cluster state Redis still has, which objects to recreate and
 * which NS8 bookkeeping to restore. No I/O, no clock: the command reads, this decides, the apply
 * script writes.
 */
import { API_VERSION, type ModuleObject, type NodeObject } from '../manifest/types.js';
import { keys } from '../state/keys.js';
import type { WriteOp } from '../state/write-state.js';
import type { ClusterState } from '../state/cluster-state.js';

/** An inclusive port range. */
interface Range {
  start: number;
  end: number;
}

/** One instance as a host shows it (src/node-agent/recover-scan.ts fills it). */
export interface RecoverableInstance {
  id: string;
  rootfull: boolean;
  envFile: string;
  env?: Record<string, string>;
  node?: number;
  imageUrl?: string;
  uuid?: string;
  ports: { tcp?: Range; udp?: Range };
  volumeBases: string[];
  removing: boolean;
}

/** What Redis has beyond ClusterState that recovery compares with. */
export interface RecoveryObserved {
  state: ClusterState;
  /** Nodes the cluster knows (Node objects and NS8 node records). */
  knownNodes: readonly number[];
  /** `module/<id>/environment` per instance id (empty when missing). */
  envRedis: ReadonlyMap<string, Record<string, string>>;
  /** `ns8ctl/node/<n>/ports` per node id. */
  nodePorts: ReadonlyMap<number, Record<string, string>>;
}

/** A manifest recovery makes: the object and one line said above it. */
export interface RecoveredObject {
  id: string;
  object: ModuleObject | NodeObject;
  note: string;
}

/** What `recover` does, as data. */
export interface RecoveryPlan {
  /** Objects to apply (Nodes first, then Modules), each with its note. */
  objects: RecoveredObject[];
  /** Per recovered instance, the facts shown to the operator (no environment values). */
  instances: { id: string; node: number; image: string; uuid: string; ports: string[]; rootfull: boolean; volumeBases: string[] }[];
  /** Instances left out, with why. */
  skipped: { id: string; why: string }[];
  /**
   * Writes run in the same script as the objects, after them: the instance's uuid, its node
   * agent finalizer (the host holds something to clean up), the mirror of its environment file
   * and its port ranges (only where Redis lacks or differs from the host).
   */
  bookkeeping: WriteOp[];
  /** One line per bookkeeping write, for the operator (no values of secret variables). */
  restored: string[];
}

const fmt = (r: Range): string => `${r.start}-${r.end}`;

/**
 * Decides the recovery. An instance is recovered when Redis has no desired Module of its id, its
 * removal has not started, its image and node are known, and the node is `onlyNode` when given.
 * Its Module has `spec.image` (the installed image) and `spec.node`; configuration and volume
 * names are not on the host and are left out. A Node object is added for a node the cluster
 * does not know. Deterministic: instances in id order.
 */
export function planRecovery(instances: readonly RecoverableInstance[], observed: RecoveryObserved, opts: { onlyNode?: number } = {}): RecoveryPlan {
  const out: RecoveryPlan = { objects: [], instances: [], skipped: [], bookkeeping: [], restored: [] };
  const nodesAdded = new Set<number>();
  const known = new Set(observed.knownNodes);
  const modules: RecoveredObject[] = [];
  for (const i of [...instances].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))) {
    const skip = (why: string): void => void out.skipped.push({ id: i.id, why });
    if (observed.state.objects.has(`Module/${i.id}`)) {
      skip('already in desired state');
      continue;
    }
    if (i.removing) {
      skip('the node agent had started removing it');
      continue;
    }
    if (!i.imageUrl) {
      skip(`no IMAGE_URL in ${i.envFile} and no image in the node agent record`);
      continue;
    }
    const node = i.node ?? opts.onlyNode;
    if (node === undefined) {
      skip(`its node is unknown (no node in the record, no NODE_ID in ${i.envFile}): pass --node N`);
      continue;
    }
    if (opts.onlyNode !== undefined && node !== opts.onlyNode) {
      skip(`made on node ${node}, not on --node ${opts.onlyNode}`);
      continue;
    }
    if (!known.has(node) && !nodesAdded.has(node)) {
      nodesAdded.add(node);
      out.objects.push({ id: `node${node}`, object: { apiVersion: API_VERSION, kind: 'Node', metadata: { name: `node${node}` }, spec: { id: node } }, note: `recovered: node ${node} runs instances but the cluster had no record of it (add spec.address if other nodes reach it)` });
    }
    const ports = (['tcp', 'udp'] as const).flatMap((p) => (i.ports[p] ? [`${p} ${fmt(i.ports[p]!)}`] : []));
    modules.push({
      id: i.id,
      object: { apiVersion: API_VERSION, kind: 'Module', metadata: { name: i.id }, spec: { image: i.imageUrl, node } },
      note: `recovered from node ${node} (${i.rootfull ? 'rootfull' : 'rootless'}, ${i.imageUrl}); spec.configuration and volume names are not on the host: while spec.configuration is absent ns8ctl never runs configure-module`,
    });
    out.instances.push({ id: i.id, node, image: i.imageUrl, uuid: i.uuid ?? '', ports, rootfull: i.rootfull, volumeBases: i.volumeBases });
    bookkeepingOf(i, node, observed, out);
  }
  out.objects.push(...modules);
  return out;
}

function bookkeepingOf(i: RecoverableInstance, node: number, observed: RecoveryObserved, out: RecoveryPlan): void {
  const { state } = observed;
  if (i.uuid && state.moduleUuid.get(i.id) !== i.uuid) {
    out.bookkeeping.push({ op: 'hset', key: keys.moduleUuid(), field: i.id, value: i.uuid });
    out.restored.push(`${keys.moduleUuid()}[${i.id}] = ${i.uuid} (MODULE_UUID of the instance)`);
  }
  // The Module is created by the same script; the host holds what the agent must clean up first.
  out.bookkeeping.push({ op: 'hset', key: keys.desired('Module', i.id), field: 'finalizers', value: 'node-agent' });
  if (i.env) {
    const have = observed.envRedis.get(i.id) ?? {};
    const names = Object.keys(i.env).filter((k) => have[k] !== i.env![k]).sort();
    for (const k of names) out.bookkeeping.push({ op: 'hset', key: keys.moduleEnvironment(i.id), field: k, value: i.env[k]! });
    if (names.length) out.restored.push(`${keys.moduleEnvironment(i.id)}: ${names.length} variable(s) from ${i.envFile}`);
  }
  const table = observed.nodePorts.get(node) ?? {};
  for (const proto of ['tcp', 'udp'] as const) {
    const r = i.ports[proto];
    const field = `${i.id}/${proto}`;
    if (!r || table[field] !== undefined) continue;
    out.bookkeeping.push({ op: 'hsetnx', key: keys.nodePorts(node), field, value: fmt(r) });
    out.restored.push(`${keys.nodePorts(node)}[${field}] = ${fmt(r)}`);
  }
}
