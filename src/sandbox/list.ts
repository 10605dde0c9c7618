/**
 * `ns8ctl sandbox list [-o json]`: every sandbox on this host with its nodes and registry, from
 * the containers' labels (the truth) and the sandbox records.
 */
import { UsageError } from '../errors.js';
import { renderJson, renderTable } from '../runtime/output.js';
import type { SandboxDeps } from './deps.js';
import { listContainers } from './podman-sandbox.js';
import { envCommand, leaderRedisUrlOf } from './env.js';
import { requireRoot, requireTool } from './preflight.js';
import { readAdminPassword, readRecord } from './record.js';

export interface ListOptions {
  name?: string;
  output?: string;
}

/** One sandbox in `list -o json`. */
export interface SandboxSummary {
  name: string;
  registry: string | null;
  network: string | null;
  subnet: string | null;
  nodes: { id: number; container: string; address: string; state: string; role: 'leader' | 'worker' }[];
  registryContainer: { container: string; address: string; state: string } | null;
  /** Admin Redis URL of the leader, for `NS8CTL_REDIS_URL` on the host (null when the state dir is gone). */
  leaderRedisUrl: string | null;
}

/**
 * Reads every sandbox (or one). Root only (`sandbox_needs_root`): sandboxes are rootful Podman
 * containers, and a normal user's podman would only show its own rootless ones (an empty list
 * that looks like "no sandboxes"); the Redis password is root-only too. Needs podman.
 */
export async function listSandboxes(opts: ListOptions, deps: SandboxDeps): Promise<SandboxSummary[]> {
  requireRoot(deps, 'list', "sandboxes are root's Podman containers (as another user, podman shows only that user's rootless containers), and their Redis password is root-only");
  await requireTool(deps, 'podman');
  const containers = await listContainers(deps, opts.name);
  const names = [...new Set(containers.map((c) => c.sandbox))].sort();
  const out: SandboxSummary[] = [];
  for (const name of names) {
    const rec = await readRecord(deps, name).catch(() => null);
    const mine = containers.filter((c) => c.sandbox === name);
    const reg = mine.find((c) => c.role === 'registry');
    const password = rec ? await readAdminPassword(deps, name).catch(() => null) : null;
    out.push({
      name,
      registry: rec?.registry ?? reg?.address ?? null,
      network: rec?.network ?? null,
      subnet: rec?.subnet ?? null,
      nodes: mine.filter((c) => c.role === 'node').map((c) => ({ id: c.nodeId ?? 0, container: c.name, address: c.address, state: c.state, role: c.nodeId === 1 ? 'leader' : 'worker' })),
      registryContainer: reg ? { container: reg.name, address: reg.address, state: reg.state } : null,
      leaderRedisUrl: rec && password ? leaderRedisUrlOf(rec, password) : null,
    });
  }
  return out;
}

/**
 * Renders `list` output: a table (default) followed by each sandbox's leader Redis URL and the
 * `sandbox env` line, or one JSON document `{"sandboxes": [...]}`.
 */
export function renderList(sandboxes: SandboxSummary[], output: string | undefined): string {
  const format = output ?? 'table';
  if (format === 'json') return renderJson({ sandboxes });
  if (format !== 'table') throw new UsageError(`unknown output format "${format}"; allowed: table, json`);
  if (sandboxes.length === 0) return 'no sandboxes (create one: ns8ctl sandbox create)\n';
  const rows: string[][] = [];
  for (const s of sandboxes) {
    for (const n of s.nodes) rows.push([s.name, `node${n.id}`, n.role, n.state, n.address, n.container]);
    if (s.registryContainer) rows.push([s.name, 'registry', 'registry', s.registryContainer.state, s.registryContainer.address, s.registryContainer.container]);
  }
  const footer = sandboxes.map((s) =>
    s.leaderRedisUrl
      ? `${s.name}: leader Redis ${s.leaderRedisUrl}\n  use it from this host: ${envCommand(s.name)}\n`
      : `${s.name}: no state dir (incomplete sandbox?); delete it: ns8ctl sandbox delete --name ${s.name}\n`,
  );
  return renderTable(['sandbox', 'node', 'role', 'state', 'address', 'container'], rows) + '\n' + footer.join('');
}
