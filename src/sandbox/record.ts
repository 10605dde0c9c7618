/**
 * The sandbox record (`<state>/<name>/sandbox.json`) and the node records written into the
 * sandbox's Redis (NS8's keys for a node).
 */
import { promises as fsp } from 'node:fs';
import { NotFoundError } from '../errors.js';
import { keys } from '../state/keys.js';
import type { SandboxDeps, SandboxRedis } from './deps.js';
import { REGISTRY_PORT, sandboxPaths } from './naming.js';

/** What `create` records about a sandbox; `list`, `push`, `start` read it back. */
export interface SandboxRecord {
  name: string;
  nodes: number;
  network: string;
  subnet: string;
  /** `host:port` of the sandbox registry, reachable from the host and from every node. */
  registry: string;
  /** Node id -> address on the sandbox network. */
  addresses: Record<string, string>;
  rootfs: string;
  recipeHash: string;
  createdAt: string;
}

/** NS8 node keys not (yet) in src/state/keys.ts, kept here so the sandbox writes them in one place. */
export const nodeRecordKeys = {
  /** HASH: NS8's per-node VPN record; the sandbox fills `ip_address` and `endpoint` with the node address. */
  vpn: (node: number | string): string => `node/${node}/vpn`,
  /** STRING (INT): last node id handed out (NS8 `cluster/node_sequence`). */
  nodeSequence: (): string => 'cluster/node_sequence',
} as const;

/** Writes the record atomically. */
export async function writeRecord(deps: Pick<SandboxDeps, 'env'>, rec: SandboxRecord): Promise<void> {
  const p = sandboxPaths(deps.env, rec.name);
  await fsp.mkdir(p.dir, { recursive: true });
  await fsp.writeFile(`${p.record}.tmp`, JSON.stringify(rec, null, 2) + '\n');
  await fsp.rename(`${p.record}.tmp`, p.record);
}

/** Reads the record; NotFoundError naming the sandbox (and `sandbox list`) when there is none. */
export async function readRecord(deps: Pick<SandboxDeps, 'env'>, name: string): Promise<SandboxRecord> {
  const p = sandboxPaths(deps.env, name);
  const text = await fsp.readFile(p.record, 'utf8').catch(() => null);
  if (text === null) throw new NotFoundError(`sandbox "${name}" does not exist (no ${p.record}); see ns8ctl sandbox list, or create it: ns8ctl sandbox create --name ${name}`);
  return JSON.parse(text) as SandboxRecord;
}

/** Reads the sandbox Redis admin password. */
export async function readAdminPassword(deps: Pick<SandboxDeps, 'env'>, name: string): Promise<string> {
  return (await fsp.readFile(sandboxPaths(deps.env, name).redisPassword, 'utf8')).trim();
}

/**
 * Writes the node records on the leader: `node/<id>/ui_name`, `node/<id>/vpn` {ip_address,
 * endpoint}, and `cluster/node_sequence` = highest id. Idempotent.
 */
export async function writeNodeRecords(redis: SandboxRedis, rec: Pick<SandboxRecord, 'nodes' | 'addresses'>): Promise<void> {
  for (let id = 1; id <= rec.nodes; id++) {
    const address = rec.addresses[String(id)] ?? '';
    await redis.set(keys.nodeUiName(id), `node${id}`);
    await redis.hset(nodeRecordKeys.vpn(id), { ip_address: address, endpoint: address, public_key: '', destinations: '' });
  }
  await redis.set(nodeRecordKeys.nodeSequence(), String(rec.nodes));
}

/** `host:port` of the registry for a sandbox address plan. */
export const registryAddress = (ip: string): string => `${ip}:${REGISTRY_PORT}`;
