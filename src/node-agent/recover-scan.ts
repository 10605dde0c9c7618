/**
 * What this host runs, read back from the node agent's own files for `ns8ctl recover`: one entry
 * per instance record (`<agentStateDir>/instances/<id>.json`) with the facts of its
 * `state/environment` file (NS8 layout: rootless `<home>/.config/state/environment`, rootfull
 * `<rootfullBase>/<id>/state/environment`). Read-only: nothing on the host is changed, no command
 * is run. Also the epoch the agent last worked under (see HostEpochSource).
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../errors.js';
import { parseEnvironment } from './environment-file.js';
import { readUsers } from './host/passwd.js';
import { instancePaths, type HostLayout } from './layout.js';
import { portsInEnvironment } from './ports.js';
import { RecordStore } from './records.js';
import type { RecoverableInstance } from '../plan/recovery.js';

/** One instance as the host shows it: see RecoverableInstance (`node` from the record, else `NODE_ID`; `imageUrl` from `IMAGE_URL`, else the record). */
export type HostInstance = RecoverableInstance;

/**
 * Reads every instance record and its environment file. A corrupt record or an unreadable
 * environment file (other than missing) fails the whole scan: recovery from half-read facts
 * would be wrong in silence. Bounded: one record and one file per instance, in id order.
 * @throws Ns8ctlError `record_corrupt` (RecordStore), `recover_scan_failed` for unreadable files.
 */
export async function scanHostInstances(layout: HostLayout): Promise<HostInstance[]> {
  const records = await new RecordStore(layout.agentStateDir).list();
  if (records.size === 0) return [];
  let users: Awaited<ReturnType<typeof readUsers>>['users'] = new Map();
  try {
    users = (await readUsers(layout)).users;
  } catch {
    // Without a user database the rootless homes are found at NS8's default place.
  }
  const out: HostInstance[] = [];
  for (const id of [...records.keys()].sort()) {
    const rec = records.get(id)!;
    const rootfull = rec.rootfull === true;
    const envFile = path.join(instancePaths(layout, id, rootfull, rootfull ? undefined : users.get(id)?.home).stateDir, 'environment');
    let env: Record<string, string> | undefined;
    try {
      env = parseEnvironment(await fs.readFile(envFile, 'utf8'));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new Ns8ctlError('recover_scan_failed', `${id}: cannot read ${envFile}: ${(err as Error).message}`, { cause: err, user: false });
      }
    }
    const nodeText = rec.node !== undefined ? String(rec.node) : env?.NODE_ID;
    const node = nodeText !== undefined && /^[1-9][0-9]*$/.test(nodeText) ? Number(nodeText) : undefined;
    const imageUrl = env?.IMAGE_URL || rec.imageUrl || undefined;
    const tcp = env ? portsInEnvironment(env, 'tcp') : undefined;
    const udp = env ? portsInEnvironment(env, 'udp') : undefined;
    out.push({
      id,
      rootfull,
      envFile,
      ...(env ? { env } : {}),
      ...(node !== undefined ? { node } : {}),
      ...(imageUrl ? { imageUrl } : {}),
      ...(env?.MODULE_UUID ? { uuid: env.MODULE_UUID } : {}),
      ports: { ...(tcp ? { tcp } : {}), ...(udp ? { udp } : {}) },
      volumeBases: [...(rec.volumeBases ?? [])].sort(),
      removing: rec.removing !== undefined,
    });
  }
  return out;
}

/** The cluster epoch a node agent worked under: `ns8ctl/cluster/epoch` as it was then. */
export interface HostEpoch {
  id: string;
  created: string;
}

/** Where recovery learns the epoch this host's agent last accepted. */
export interface HostEpochSource {
  /** The host's epoch, or undefined when the host has none (an agent without the epoch guard). */
  read(): Promise<HostEpoch | undefined>;
}

/** The node agent's epoch file, relative to its state dir (`<agentStateDir>/<HOST_EPOCH_FILE>`). */
export const HOST_EPOCH_FILE = 'cluster-epoch.json';

/**
 * Reads `<agentStateDir>/HOST_EPOCH_FILE` (JSON `{"id","created"}`).
 * @throws Ns8ctlError `host_epoch_corrupt` when the file exists but has no string `id`.
 */
export class FileHostEpochSource implements HostEpochSource {
  readonly file: string;
  constructor(layout: Pick<HostLayout, 'agentStateDir'>) {
    this.file = path.join(layout.agentStateDir, HOST_EPOCH_FILE);
  }

  async read(): Promise<HostEpoch | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new Ns8ctlError('host_epoch_corrupt', `cannot read the node agent's epoch file ${this.file}: ${(err as Error).message}`, { cause: err, user: false });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new Ns8ctlError('host_epoch_corrupt', `the node agent's epoch file ${this.file} is not JSON`, { cause: err });
    }
    const p = parsed as { id?: unknown; created?: unknown };
    if (typeof p?.id !== 'string' || p.id === '') throw new Ns8ctlError('host_epoch_corrupt', `the node agent's epoch file ${this.file} has no "id" string`);
    return { id: p.id, created: typeof p.created === 'string' ? p.created : '' };
  }
}
