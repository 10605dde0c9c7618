/**
 * The node agent's own per-instance records (`<agentStateDir>/instances/<id>.json`, root-only):
 * what it did, written only after it happened, so a later reconcile knows "unchanged" from file
 * reads alone and a crash never makes it believe something was done that was not.
 */
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { Ns8ctlError } from '../errors.js';
import { writeFileAtomic } from './atomic-write.js';
import type { InstanceRecord } from './types.js';

const ID = /^[a-z][a-z0-9_-]{0,31}$/;

/** Reads and writes instance records under one directory. */
export class RecordStore {
  readonly dir: string;
  constructor(agentStateDir: string) {
    this.dir = path.join(agentStateDir, 'instances');
  }

  private file(id: string): string {
    if (!ID.test(id)) throw new Ns8ctlError('instance_id_invalid', `instance id ${JSON.stringify(id)} is not a valid NS8 instance id`);
    return path.join(this.dir, `${id}.json`);
  }

  /** Every record on this node, keyed by id. A corrupt file is reported, not silently dropped. */
  async list(): Promise<Map<string, InstanceRecord>> {
    let names: string[];
    try {
      names = await fs.readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return new Map();
      throw err;
    }
    const out = new Map<string, InstanceRecord>();
    await Promise.all(
      names
        .filter((n) => n.endsWith('.json') && !n.startsWith('.'))
        .map(async (n) => {
          const r = await this.get(n.slice(0, -5));
          if (r) out.set(r.id, r);
        }),
    );
    return out;
  }

  /** One record, or undefined. Throws `record_corrupt` for a file that is not JSON. */
  async get(id: string): Promise<InstanceRecord | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.file(id), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    try {
      return { ...(JSON.parse(text) as InstanceRecord), id };
    } catch (err) {
      throw new Ns8ctlError('record_corrupt', `node agent record ${this.file(id)} is not valid JSON; delete it to let the agent rebuild it`, { cause: err, user: false });
    }
  }

  /** Merges `patch` into the record (creating it) and writes it atomically; `undefined` values delete fields. */
  async update(id: string, patch: { [K in keyof InstanceRecord]?: InstanceRecord[K] | undefined }): Promise<InstanceRecord> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const cur = (await this.get(id)) ?? { id };
    const next: Record<string, unknown> = { ...cur };
    for (const [k, v] of Object.entries(patch)) {
      if (v === undefined) delete next[k];
      else next[k] = v;
    }
    next.id = id;
    await writeFileAtomic(this.file(id), JSON.stringify(next, null, 1) + '\n', { mode: 0o600 });
    return next as unknown as InstanceRecord;
  }

  /** Deletes the record (no error when absent). */
  async remove(id: string): Promise<void> {
    await fs.rm(this.file(id), { force: true });
  }
}
