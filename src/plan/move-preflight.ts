/**
 * The preflight of moves: a changed `spec.node` of an existing Module is refused at plan time,
 * with the reason, when the target node cannot take the instance, so no move record is written
 * and no node agent starts copying. Pure: the facts (node records, module flags, node port
 * ranges, core version, image labels) are observed beforehand (src/apply/pipeline.ts) and passed
 * in. max-per-node is checked with the other placements in resolution.ts (maxPerNodeRefusals),
 * which names moves through `describeMove`. docs/plan.md ("Preflight of a move") lists the checks.
 */
import { minCoreProblem } from '../repository/resolve.js';
import { keys } from '../state/keys.js';
import { firstFreeSpan, NODE_PORT_BOUNDS, portSpansOf, portSpanSize, type PortProtocol, type PortSpan } from './port-spans.js';
import type { BlockedChange, Plan } from './types.js';

/** Image labels the preflight reads besides LABELS (resolve.ts). */
export const MOVE_LABELS = {
  rootfull: 'org.nethserver.rootfull',
  tcpPortsDemand: 'org.nethserver.tcp-ports-demand',
  udpPortsDemand: 'org.nethserver.udp-ports-demand',
} as const;

/** Stable codes of move refusals (blocked entries), listed in docs/errors.md. */
export const MOVE_CODES = {
  targetUnknown: 'move_target_unknown',
  unsupported: 'move_unsupported',
  minCore: 'move_min_core_not_met',
  ports: 'move_ports_exhausted',
  maxPerNode: 'max_per_node_exceeded',
} as const;

/** A move the plan requests: the Module's change writes `ns8ctl/moves[id] = {from, to, state: "requested"}`. */
export interface MoveRequest {
  /** `Module/<id>`. */
  key: string;
  id: string;
  from: number;
  to: number;
}

/** What the preflight knows about the cluster, observed before planning. */
export interface MoveFacts {
  /** Nodes that exist: NS8 node records, Node objects stored (not being removed) or desired. */
  knownNodes: readonly number[];
  /** `module/<id>/flags` of the moving instances (`rootfull` or `rootless`, as NS8 records them). */
  moduleFlags: ReadonlyMap<string, readonly string[]>;
  /** `ns8ctl/node/<n>/ports` of the source and target nodes, raw (field `<id>/<proto>` -> `start-end`). */
  nodePorts: ReadonlyMap<number, Readonly<Record<string, string>>>;
  /**
   * The core version `org.nethserver.min-core` is compared with. ns8ctl knows one core version
   * for the cluster (NS8CTL_CORE_VERSION, the leader's core.env, or the version it implements),
   * not one per node: every target is taken to run it.
   */
  coreVersion: string;
}

/** The moves `p` requests, from its Module changes' bookkeeping, in plan order. */
export function movesOf(p: Plan): MoveRequest[] {
  const out: MoveRequest[] = [];
  for (const c of p.changes) {
    if (c.kind !== 'Module' || c.action !== 'update') continue;
    for (const w of c.bookkeeping) {
      if (w.type !== 'hset' || w.key !== keys.moves() || w.field !== c.id) continue;
      const rec = JSON.parse(w.value) as { from?: unknown; to?: unknown };
      if (typeof rec.from === 'number' && typeof rec.to === 'number') out.push({ key: c.key, id: c.id, from: rec.from, to: rec.to });
    }
  }
  return out;
}

/** `cannot move webapp1 from node 1 to node 2`: how every refusal of a move starts. */
export function describeMove(m: Pick<MoveRequest, 'id' | 'from' | 'to'>): string {
  return `cannot move ${m.id} from node ${m.from} to node ${m.to}`;
}

/** The way back every refusal ends with: keep the instance where it runs. */
export function keepIt(m: Pick<MoveRequest, 'from'>): string {
  return `set spec.node back to ${m.from} to keep it there`;
}

/** A port demand label: a non-negative integer, else undefined (unknown). */
function demandLabel(labels: Readonly<Record<string, string>> | undefined, name: string): number | undefined {
  const raw = labels?.[name]?.trim();
  return raw !== undefined && /^\d+$/.test(raw) ? Number(raw) : undefined;
}

/**
 * Checks each move in order; a refused move is one blocked entry (with its code) and reserves
 * nothing, an admitted one reserves its ports on the target for the moves after it (two
 * instances moving to the same node compete for the same free ports). Checks, first failing wins:
 * 1. the target node exists (`move_target_unknown`);
 * 2. the instance is not rootfull: label `org.nethserver.rootfull=1`, or `rootfull` in
 *    `module/<id>/flags` (`move_unsupported`: rootfull moves are not carried out yet);
 * 3. `org.nethserver.min-core` of the image is not above `facts.coreVersion`
 *    (`move_min_core_not_met`; a label that is not a version refuses too);
 * 4. the TCP and UDP port demand (labels `org.nethserver.{tcp,udp}-ports-demand`, else the size
 *    of the range the instance holds on its source node) fits in a gap of the target's free ports
 *    in 20000-45000 (`move_ports_exhausted`). A range the instance already holds on the target
 *    (a copy left from a cancelled move) counts as free for it.
 * `labelsOf(id)` gives the labels of the image the instance resolves to; undefined when unknown
 * (then only the recorded flags and port ranges are checked). `skip`: keys already blocked.
 */
export function preflightMoves(
  moves: readonly MoveRequest[],
  labelsOf: (id: string) => Readonly<Record<string, string>> | undefined,
  facts: MoveFacts,
  skip: ReadonlySet<string> = new Set(),
): BlockedChange[] {
  const known = new Set(facts.knownNodes);
  const reserved = new Map<string, PortSpan[]>();
  const out: BlockedChange[] = [];
  for (const m of moves) {
    if (skip.has(m.key)) continue;
    const labels = labelsOf(m.id);
    const refusal = targetRefusal(m, known) ?? rootfullRefusal(m, labels, facts) ?? minCoreRefusal(m, labels, facts);
    if (refusal) {
      out.push(refusal);
      continue;
    }
    const ports = portsFit(m, labels, facts, reserved);
    if (!('spans' in ports)) {
      out.push(ports);
      continue;
    }
    for (const [proto, span] of ports.spans) reserved.set(`${m.to}/${proto}`, [...(reserved.get(`${m.to}/${proto}`) ?? []), span]);
  }
  return out;
}

function targetRefusal(m: MoveRequest, known: ReadonlySet<number>): BlockedChange | undefined {
  if (known.has(m.to)) return undefined;
  return {
    key: m.key,
    code: MOVE_CODES.targetUnknown,
    message: `${describeMove(m)}: node ${m.to} is not a known node (no Node object and no NS8 record node/${m.to}/vpn); add the node first, or ${keepIt(m)}`,
  };
}

function rootfullRefusal(m: MoveRequest, labels: Readonly<Record<string, string>> | undefined, facts: MoveFacts): BlockedChange | undefined {
  const byLabel = labels?.[MOVE_LABELS.rootfull]?.trim() === '1';
  const byFlag = facts.moduleFlags.get(m.id)?.includes('rootfull') ?? false;
  if (!byLabel && !byFlag) return undefined;
  const why = byLabel ? `its image has ${MOVE_LABELS.rootfull}=1` : `NS8 records it as rootfull (${keys.moduleFlags(m.id)})`;
  return {
    key: m.key,
    code: MOVE_CODES.unsupported,
    message: `${describeMove(m)}: ${m.id} is rootfull (${why}) and moving rootfull instances is not supported yet; ${keepIt(m)} (to run it on node ${m.to}, back it up and re-create it there with spec.restoreFrom)`,
  };
}

function minCoreRefusal(m: MoveRequest, labels: Readonly<Record<string, string>> | undefined, facts: MoveFacts): BlockedChange | undefined {
  const problem = minCoreProblem(labels, facts.coreVersion);
  if (!problem) return undefined;
  return {
    key: m.key,
    code: MOVE_CODES.minCore,
    message: `${describeMove(m)}: its image ${problem} (the cluster's core version: ns8ctl takes node ${m.to} to run it); update the core first, or ${keepIt(m)}`,
  };
}

/** The spans the instance would take on the target, or the refusal when one protocol does not fit. */
function portsFit(m: MoveRequest, labels: Readonly<Record<string, string>> | undefined, facts: MoveFacts, reserved: ReadonlyMap<string, PortSpan[]>): { spans: [PortProtocol, PortSpan][] } | BlockedChange {
  const spans: [PortProtocol, PortSpan][] = [];
  for (const proto of ['tcp', 'udp'] as const) {
    const label = proto === 'tcp' ? MOVE_LABELS.tcpPortsDemand : MOVE_LABELS.udpPortsDemand;
    const held = portSpansOf(facts.nodePorts.get(m.from) ?? {}, proto).get(m.id);
    const demand = demandLabel(labels, label) ?? portSpanSize(held);
    if (demand <= 0) continue;
    const onTarget = portSpansOf(facts.nodePorts.get(m.to) ?? {}, proto);
    onTarget.delete(m.id);
    const used = [...onTarget.values(), ...(reserved.get(`${m.to}/${proto}`) ?? [])];
    const span = firstFreeSpan(used, demand);
    if (!span) {
      const free = NODE_PORT_BOUNDS.end - NODE_PORT_BOUNDS.start + 1 - countUsed(used);
      return {
        key: m.key,
        code: MOVE_CODES.ports,
        message:
          `${describeMove(m)}: it needs ${demand} ${proto.toUpperCase()} port${demand === 1 ? '' : 's'} in a row (${demandLabel(labels, label) !== undefined ? label : `the range it holds on node ${m.from}`}) and node ${m.to} has no such gap left in ${NODE_PORT_BOUNDS.start}-${NODE_PORT_BOUNDS.end} (${Math.max(free, 0)} free in all, ${keys.nodePorts(m.to)}); ` +
          `free ports on node ${m.to} (remove instances there), choose another node, or ${keepIt(m)}`,
      };
    }
    spans.push([proto, span]);
  }
  return { spans };
}

/** Ports inside the allocator's bounds covered by `used` (overlaps counted once). */
function countUsed(used: readonly PortSpan[]): number {
  let count = 0;
  let next = NODE_PORT_BOUNDS.start;
  for (const r of [...used].sort((a, b) => a.start - b.start)) {
    const start = Math.max(r.start, next);
    const end = Math.min(r.end, NODE_PORT_BOUNDS.end);
    if (end >= start) count += end - start + 1;
    next = Math.max(next, end + 1);
  }
  return count;
}
