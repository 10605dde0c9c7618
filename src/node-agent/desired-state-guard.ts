/**
 * The wiped-state guard: a node agent acts (creates, updates, removes) only on desired state it
 * can trust to be the one it built its instances from.
 *
 * - `ns8ctl/cluster/epoch` (STRING JSON `{"id":"<uuid>","created":"<ISO-8601>"}`) names the
 *   lineage of desired state: written once, when desired state is first written. A Redis that
 *   lost its data loses it; a Redis rebuilt from scratch gets another one.
 * - Each node keeps the epoch id it works under in `<agentStateDir>/epoch.json`, next to its
 *   instance records (atomic write).
 *
 * `judgeDesiredState` (pure) decides; `checkDesiredState` observes, applies the verdict's
 * bookkeeping and reports: the node's HASH `ns8ctl/node/<N>/agent` (condition
 * `DesiredStateSuspect`), a `desired-state-suspect` Warning event once per transition, and a
 * log line (the caller rate-limits it). `acceptDesiredState` is the operator's confirmation
 * (`ns8ctl node-agent --node N --accept-desired-state`, and `ns8ctl recover`).
 */
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { Redis } from 'ioredis';
import { EventRecorder } from '../state/events.js';
import { Ns8ctlError, RedisError } from '../errors.js';
import { channels, keys } from '../state/keys.js';
import { writeFileAtomic } from './atomic-write.js';
import type { HostLayout } from './layout.js';

/** STRING key of the cluster epoch. */
export const CLUSTER_EPOCH_KEY = keys.clusterEpoch();

/** HASH key of a node agent's own status: `conditions` (JSON), `epoch`, `hostEpoch`. */
export function nodeAgentStatusKey(node: number): string {
  return `ns8ctl/node/${node}/agent`;
}

/** The lineage of desired state. */
export interface ClusterEpoch {
  id: string;
  created: string;
}

/** What a node keeps in `<agentStateDir>/epoch.json`. */
export interface HostEpoch {
  /** Epoch id the node's instances were built under. */
  id: string;
  /** When this file was written. */
  at: string;
  /** `adopted` (the node had no instance to lose), `accepted` (an operator confirmed). */
  how: 'adopted' | 'accepted';
  /**
   * An operator accepted desired state that holds no Module at all (instances then report
   * Orphaned); cleared once desired state holds Modules again, so a later loss is caught again.
   */
  acceptEmpty?: boolean;
}

/** Why the agent refuses to act. */
export type SuspectReason = 'EpochMissing' | 'EpochInvalid' | 'EpochUnknown' | 'EpochChanged' | 'DesiredStateEmpty';

/** What the guard observed. `epoch` is `invalid` when the key holds something else than an epoch. */
export interface GuardInput {
  node: number;
  epoch: ClusterEpoch | 'invalid' | undefined;
  host: HostEpoch | undefined;
  /** Module objects in desired state, on every node. */
  desiredModules: number;
  /** Modules desired on this node (what a node without records would create). */
  desiredHere: number;
  /** Instance records on this host. */
  records: number;
}

export type GuardVerdict =
  | {
      act: true;
      /** Write the host file with this epoch (adopted: the node has nothing to lose). */
      adopt?: ClusterEpoch;
      /** No epoch yet and this node has Modules to create: create the key first (SET NX), then adopt it. */
      createEpoch?: boolean;
      /** Desired state holds Modules again: clear `acceptEmpty`. */
      clearAcceptEmpty?: boolean;
    }
  | { act: false; reason: SuspectReason; message: string };

/** The confirmation an operator gives once desired state is checked. */
export function confirmHint(node: number): string {
  return `check it (\`ns8ctl get modules\`), restore it if it is wrong (re-apply the manifests, \`ns8ctl recover\`), then confirm with \`ns8ctl node-agent --node ${node} --accept-desired-state\``;
}

/**
 * Decides whether a node agent may act on desired state (see module doc). Pure.
 * - A node without instance records has nothing desired state could make it destroy: it adopts
 *   the current epoch (and, when there is none yet but it has Modules to create, creates it).
 * - A node with records refuses when the epoch key is missing or invalid, when it has no host
 *   epoch or a different one, or when desired state holds no Module at all (unless an operator
 *   accepted exactly that).
 */
export function judgeDesiredState(i: GuardInput): GuardVerdict {
  const hint = confirmHint(i.node);
  const has = `this host has ${i.records} instance record(s)`;
  if (i.epoch === 'invalid') return { act: false, reason: 'EpochInvalid', message: `${CLUSTER_EPOCH_KEY} does not hold a valid epoch ({"id","created"}); desired state may be damaged: ${hint}` };
  if (i.records === 0) {
    if (i.epoch) return i.host?.id === i.epoch.id ? { act: true } : { act: true, adopt: i.epoch };
    return i.desiredHere > 0 ? { act: true, createEpoch: true } : { act: true };
  }
  if (!i.epoch) {
    return { act: false, reason: 'EpochMissing', message: `${CLUSTER_EPOCH_KEY} is missing while ${has}: Redis may have lost desired state (restarted without persistence, flushed, replaced); nothing is created, updated or removed until an operator confirms: ${hint}` };
  }
  if (!i.host) {
    return { act: false, reason: 'EpochUnknown', message: `${has} but no record of the desired state it was built under (epoch.json, kept since this version); nothing is created, updated or removed until an operator confirms: ${hint}` };
  }
  if (i.host.id !== i.epoch.id) {
    return {
      act: false,
      reason: 'EpochChanged',
      message: `desired state is another one than this host's instances were built under (epoch ${i.epoch.id} created ${i.epoch.created}, the host has ${i.host.id}): Redis was wiped or replaced; nothing is created, updated or removed until an operator confirms: ${hint}`,
    };
  }
  if (i.desiredModules === 0 && !i.host.acceptEmpty) {
    return { act: false, reason: 'DesiredStateEmpty', message: `desired state holds no Module at all while ${has}: it looks wiped; nothing is created, updated or removed until an operator confirms: ${hint}` };
  }
  return i.desiredModules > 0 && i.host.acceptEmpty ? { act: true, clearAcceptEmpty: true } : { act: true };
}

/** Parses the epoch key's value: undefined when absent, `invalid` when it is not an epoch. */
export function parseEpoch(text: string | null | undefined): ClusterEpoch | 'invalid' | undefined {
  if (text === null || text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Partial<ClusterEpoch>;
    if (v && typeof v.id === 'string' && v.id !== '' && typeof v.created === 'string') return { id: v.id, created: v.created };
  } catch {
    // reported as invalid below
  }
  return 'invalid';
}

/** The host epoch file. */
export function hostEpochFile(layout: Pick<HostLayout, 'agentStateDir'>): string {
  return path.join(layout.agentStateDir, 'epoch.json');
}

/** The epoch this host works under, or undefined (no file). @throws Ns8ctlError `host_epoch_corrupt` */
export async function readHostEpoch(layout: Pick<HostLayout, 'agentStateDir'>): Promise<HostEpoch | undefined> {
  const file = hostEpochFile(layout);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Ns8ctlError('host_epoch_unreadable', `cannot read ${file}: ${(err as Error).message}`, { cause: err, user: false });
  }
  let v: Partial<HostEpoch> | undefined;
  try {
    v = JSON.parse(text) as Partial<HostEpoch>;
  } catch {
    v = undefined;
  }
  if (!v || typeof v.id !== 'string' || !v.id) {
    throw new Ns8ctlError('host_epoch_corrupt', `${file} is not a valid host epoch ({"id","at","how"}); confirm desired state with \`ns8ctl node-agent --node N --accept-desired-state\` to rewrite it`, { user: false });
  }
  return { id: v.id, at: String(v.at ?? ''), how: v.how === 'accepted' ? 'accepted' : 'adopted', ...(v.acceptEmpty ? { acceptEmpty: true } : {}) };
}

/** Writes the host epoch file atomically (root-only, like the records). */
export async function writeHostEpoch(layout: Pick<HostLayout, 'agentStateDir'>, epoch: HostEpoch): Promise<void> {
  await fs.mkdir(layout.agentStateDir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(hostEpochFile(layout), JSON.stringify(epoch, null, 1) + '\n', { mode: 0o600 });
}

/** Reads the cluster epoch. @throws RedisError */
export async function readClusterEpoch(redis: Redis): Promise<ClusterEpoch | 'invalid' | undefined> {
  try {
    return parseEpoch(await redis.get(CLUSTER_EPOCH_KEY));
  } catch (err) {
    throw new RedisError('redis_command_failed', `reading ${CLUSTER_EPOCH_KEY}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * The cluster epoch, created when missing (SET NX: the first writer wins, everyone reads the
 * same one). For writers of desired state and for an operator's confirmation.
 */
export async function ensureClusterEpoch(redis: Redis, now: Date = new Date()): Promise<ClusterEpoch> {
  const fresh: ClusterEpoch = { id: randomUUID(), created: now.toISOString() };
  await redis.set(CLUSTER_EPOCH_KEY, JSON.stringify(fresh), 'NX');
  const epoch = await readClusterEpoch(redis);
  if (!epoch || epoch === 'invalid') throw new RedisError('cluster_epoch_invalid', `${CLUSTER_EPOCH_KEY} does not hold a valid epoch ({"id","created"}); delete it to let it be created again`);
  return epoch;
}

/**
 * An operator confirms desired state as it is now: this host works under `epoch` from now on
 * (even when desired state holds no Module: its instances then report Orphaned). Crash-safe.
 */
export async function acceptDesiredState(layout: Pick<HostLayout, 'agentStateDir'>, epoch: ClusterEpoch, now: Date = new Date()): Promise<HostEpoch> {
  const host: HostEpoch = { id: epoch.id, at: now.toISOString(), how: 'accepted', acceptEmpty: true };
  await writeHostEpoch(layout, host);
  return host;
}

export interface GuardDeps {
  redis: Redis;
  layout: Pick<HostLayout, 'agentStateDir'>;
  now: () => Date;
  log: (line: string) => void;
}

/** The guard's answer for one pass. */
export type GuardResult = { act: true } | { act: false; reason: SuspectReason; message: string };

interface StoredCondition {
  type: string;
  status: string;
  reason: string;
  message: string;
  lastTransitionTime?: string;
}

/**
 * One pass of the guard (see module doc): observes (epoch key, Module count, host file), judges,
 * adopts/creates/clears as the verdict says, and reports on `ns8ctl/node/<N>/agent` (written only
 * on change) with a `desired-state-suspect` Warning event once per transition into a reason.
 */
export async function checkDesiredState(d: GuardDeps, node: number, counts: { records: number; desiredHere: number }): Promise<GuardResult> {
  const [epochText, modules, stored] = await d.redis.pipeline().get(CLUSTER_EPOCH_KEY).scard(keys.desiredIndex('Module')).hget(nodeAgentStatusKey(node), 'conditions').exec().then((res) =>
    (res ?? []).map(([err, v]) => {
      if (err) throw new RedisError('redis_command_failed', `reading the desired-state guard keys of node ${node}: ${err.message}`, { cause: err });
      return v;
    }),
  );
  let epoch = parseEpoch(epochText as string | null);
  const host = await readHostEpoch(d.layout);
  const verdict = judgeDesiredState({ node, epoch, host, desiredModules: Number(modules ?? 0), desiredHere: counts.desiredHere, records: counts.records });
  if (verdict.act) {
    if (verdict.createEpoch) epoch = await ensureClusterEpoch(d.redis, d.now());
    const adopt = verdict.adopt ?? (verdict.createEpoch && epoch && epoch !== 'invalid' ? epoch : undefined);
    if (adopt) await writeHostEpoch(d.layout, { id: adopt.id, at: d.now().toISOString(), how: 'adopted' });
    if (verdict.clearAcceptEmpty && host) await writeHostEpoch(d.layout, { id: host.id, at: host.at, how: host.how });
  }
  const result: GuardResult = verdict.act ? { act: true } : { act: false, reason: verdict.reason, message: verdict.message };
  await report(d, node, result, stored as string | null, epoch && epoch !== 'invalid' ? epoch.id : '');
  return result;
}

async function report(d: GuardDeps, node: number, r: GuardResult, storedText: string | null, epochId: string): Promise<void> {
  let prev: StoredCondition | undefined;
  try {
    prev = (JSON.parse(storedText ?? '[]') as StoredCondition[]).find((c) => c.type === 'DesiredStateSuspect');
  } catch {
    prev = undefined;
  }
  const next: StoredCondition = r.act
    ? { type: 'DesiredStateSuspect', status: 'False', reason: 'DesiredStateTrusted', message: 'desired state is the one this node works under' }
    : { type: 'DesiredStateSuspect', status: 'True', reason: r.reason, message: r.message };
  if (prev && prev.status === next.status && prev.reason === next.reason && prev.message === next.message) return;
  const stamped = { ...next, lastTransitionTime: prev && prev.status === next.status && prev.lastTransitionTime ? prev.lastTransitionTime : d.now().toISOString() };
  await d.redis.hset(nodeAgentStatusKey(node), { conditions: JSON.stringify([stamped]), epoch: epochId, updated: d.now().toISOString() });
  if (r.act) {
    if (prev?.status === 'True') d.log(`node-agent: node ${node}: desired state trusted again (${prev.reason} resolved); acting on it`);
    return;
  }
  // Once per transition into a reason (the status hash remembers it across restarts).
  if (prev?.status === 'True' && prev.reason === r.reason) return;
  await new EventRecorder(d.redis, { now: d.now, log: (line) => d.log(`node-agent: ${line}`) }).record({
    name: 'desired-state-suspect',
    type: 'Warning',
    object: `node/${node}`,
    message: `node agent of node ${node} refuses to act: ${r.message}`,
    data: { node, reason: r.reason },
  });
}

/** What `acceptDesiredStateOnHost` did. */
export interface Acceptance {
  epoch: ClusterEpoch;
  /** The host epoch before (undefined: none). */
  previous: HostEpoch | undefined;
  /** Module objects in desired state (all nodes). */
  desiredModules: number;
}

/**
 * The whole confirmation, as `ns8ctl node-agent --node N --accept-desired-state` and
 * `ns8ctl recover` run it on a node: the cluster epoch (created when missing: an operator vouches
 * for desired state as it is), written as this host's epoch, and the agents woken
 * (`desired-state-changed`). The agent acts again from its next pass.
 */
export async function acceptDesiredStateOnHost(redis: Redis, layout: Pick<HostLayout, 'agentStateDir'>, now: Date = new Date()): Promise<Acceptance> {
  let previous: HostEpoch | undefined;
  try {
    previous = await readHostEpoch(layout);
  } catch {
    previous = undefined; // a corrupt file is what the confirmation rewrites
  }
  const epoch = await ensureClusterEpoch(redis, now);
  await acceptDesiredState(layout, epoch, now);
  const desiredModules = await redis.scard(keys.desiredIndex('Module'));
  await redis.publish(channels.desiredChanged, JSON.stringify({ keys: [] })).catch(() => 0);
  return { epoch, previous, desiredModules };
}
